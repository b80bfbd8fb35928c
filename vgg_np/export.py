"""A whole model to the files other frameworks open: its architecture with its weights.

`vgg_np.formats.write_weights` writes tensors and what a reader said about them. Some
files hold more: a ``.keras`` archive or an ``.h5`` of layout ``"model"`` is a whole Keras
model (`vgg_np.formats.keras_writer`), which ``keras.models.load_model`` builds; a
torchvision state dict must know the order of a head's dense layers and that a flatten
sees a square map. Here a model, or the network a file describes
(`vgg_np.architecture.describe_source`, as `VGG.from_file` reads it), gives the writers
its layer table and input shape:

- `save` writes a `VGG` in any format, its architecture, provenance and class names
  included; `check` says beforehand whether a format can hold it (``vgg-np train``
  asks before training, not after);
- `convert` reads any weights file and writes it in any format (`vgg-np convert`).

What one writes, vgg_np reads back as the same network, and the framework the format
belongs to computes the same outputs (tests/crosscheck/test_export.py).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from vgg_np import formats
from vgg_np.architecture import describe_source
from vgg_np.formats.keras_writer import NeedsArchitecture, keras_layers
from vgg_np.formats.torchvision import check_torchvision
from vgg_np.model import VGG
from vgg_np.network import Network

__all__ = ["WHOLE_MODEL_SUFFIXES", "architecture_info", "check", "convert", "save"]

#: The formats that hold a whole model: its layers, not only tensors named by layer.
WHOLE_MODEL_SUFFIXES = {
    ".keras": "Keras", ".h5": "Keras", ".hdf5": "Keras", ".pth": "torchvision", ".pt": "torchvision"
}  # fmt: skip


def architecture_info(network: Network) -> dict:
    """Say what writers need to know of a network beyond its tensors (`WeightSource.info`).

    Examples
    --------
    >>> from vgg_np.network import describe
    >>> info = architecture_info(describe("vgg11", include_top=False, pooling="avg"))
    >>> info["input_shape"], info["layers"][-1].kind, info["head"]
    ((None, None, 3), 'global_avg', None)
    """
    info = {
        "layers": network.layers,
        "input_shape": network.input_shape,
        "head": network.head,
        "name": network.config.name,
    }
    return info | ({} if network.batch_norm is None else {"batch_norm_eps": network.batch_norm})


def check(model: VGG, path: str | os.PathLike) -> None:
    """Refuse, before any work, a model that the format `path`'s extension names cannot hold.

    `save` would refuse it too, but only once the weights exist: a training run asks
    first. Formats that hold tensors by layer name (``.npz``, ``.safetensors``) hold
    every model.

    Raises
    ------
    ValueError
        Naming `path` and why: an unknown extension, a layer Keras cannot compute (an
        adaptive pool that is not the identity), a head torchvision's classifier does
        not fit, a flatten of a map that is not square (torchvision), a batch norm
        epsilon other than PyTorch's.

    Examples
    --------
    >>> from vgg_np import VGGConfig
    >>> from vgg_np.model import Layer
    >>> tiny = VGGConfig("tiny", ((4,), (4,), (8,), (8,), (8,)), default_size=32)
    >>> head = (Layer("gap", "global_max"), Layer("out", "dense", 3, "sigmoid"))
    >>> model = VGG(tiny, input_shape=(32, 32, 3), head=head, seed=0)
    >>> check(model, "m.keras")
    >>> check(model, "m.pth")
    Traceback (most recent call last):
    ...
    ValueError: 'm.pth': torchvision's layout cannot hold a head of gap (global_max, None), \
out (dense, sigmoid): ...
    """
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    known = [s for f in formats.FORMATS if f.write for s in f.suffixes]
    if suffix not in known:
        raise ValueError(
            f"cannot tell the format to write from {os.fspath(path)!r}: use {', '.join(known)}"
        )
    info = architecture_info(model.network)
    if WHOLE_MODEL_SUFFIXES.get(suffix) == "Keras":
        try:
            keras_layers(info["layers"], tuple(info["input_shape"]))
        except ValueError as error:
            raise ValueError(f"{os.fspath(path)!r}: {error}") from None
    elif WHOLE_MODEL_SUFFIXES.get(suffix) == "torchvision":
        check_torchvision(info, path)


def save(
    model: VGG,
    path: str | os.PathLike,
    *,
    layout: str | None = None,
    provenance: formats.Provenance | None = None,
    labels: Sequence[str] | None = None,
) -> str:
    """Write a model in the format `path`'s extension names, its architecture included.

    Parameters
    ----------
    model : VGG
    path : str or os.PathLike
        Any suffix of `vgg_np.formats.write_weights`: ``.keras`` and ``.h5`` (layout
        ``"model"``) are whole Keras models that ``keras.models.load_model`` opens.
    layout : str, optional
        As `vgg_np.formats.write_weights` takes it.
    provenance : Provenance, optional
        Where the weights came from; default ``model.weights_provenance``. The model's
        input size is recorded in it.
    labels : sequence of str, optional
        The class names of the outputs, in order; default those the model's file
        recorded (``model.weights_info["labels"]``). Every format but Keras
        Applications' ``.h5`` and torchvision-layout ``.safetensors`` records them.

    Returns
    -------
    str
        What was written.

    Raises
    ------
    ValueError
        If the format cannot hold the model (a head in torchvision's layout that its
        classifier does not fit, an adaptive pool Keras cannot compute...), naming it.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> from vgg_np import VGGConfig
    >>> tiny = VGGConfig("tiny", ((4,), (4,), (8,), (8,), (8,)), fc=(16,), default_size=32)
    >>> model = VGG(tiny, input_shape=(64, 32, 3), classes=3, seed=0)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     print(save(model, pathlib.Path(tmp) / "tiny.keras", labels=("a", "b", "c")))
    ...     again = VGG.from_file(pathlib.Path(tmp) / "tiny.keras")
    keras-zip (.keras, whole model)
    >>> again.input_shape, again.layers == model.layers, again.weights_info["labels"]
    ((64, 32, 3), True, ('a', 'b', 'c'))
    """
    provenance = provenance or model.weights_provenance
    h, w, _ = model.input_shape
    if h and w:  # the input size the weights were made for travels with them
        provenance = dataclasses.replace(provenance, input_size=(h, w))
    info = architecture_info(model.network)
    labels = model.weights_info.get("labels") if labels is None else tuple(labels)
    if labels:
        info["labels"] = labels
    return formats.write_weights(
        path, model.weights, layout=layout, provenance=provenance, info=info
    )


def convert(
    source: str | os.PathLike,
    target: str | os.PathLike,
    *,
    layout: str | None = None,
    theano_flip: bool = True,
) -> tuple[formats.WeightSource, str]:
    """Convert a weights file to the format `target`'s extension names, network included.

    The network the file describes (as `VGG.from_file` reads it) goes to the writer, so
    a whole Keras model (``.keras``, ``.h5``) computes what ``VGG.from_file(source)``
    computes. A file whose tensors make no whole network (a few layers' weights) still
    converts to the formats that hold tensors alone. Every tensor is read before `target`
    is written, so `target` may be `source`.

    Parameters
    ----------
    source, target : str or os.PathLike
    layout : str, optional
        As `vgg_np.formats.write_weights` takes it.
    theano_flip : bool, default True
        For Theano-era Keras sources (see `vgg_np.formats.open_weights`).

    Returns
    -------
    source : WeightSource
        What was read (its tensors are no longer readable).
    written : str
        What was written.

    Raises
    ------
    ValueError
        If the source cannot be read, or the target format cannot hold what it holds.

    Examples
    --------
    >>> import tempfile
    >>> from vgg_np.model import Layer, VGGConfig
    >>> tiny = VGGConfig("tiny", ((4,), (4,), (8,), (8,), (8,)), default_size=32)
    >>> head = (Layer("gap", "global_max"), Layer("out", "dense", 3, "sigmoid"))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     VGG(tiny, head=head, seed=0).save_weights(f"{tmp}/w.npz")
    ...     read, written = convert(f"{tmp}/w.npz", f"{tmp}/w.h5")
    ...     VGG.from_file(f"{tmp}/w.h5").head == head
    True
    >>> read.format, written
    ('npz (vgg_np)', 'keras-h5 (model.save layout, whole model)')
    """
    with formats.open_weights(source, theano_flip=theano_flip) as opened:
        try:
            network, why = describe_source(opened), None
        except ValueError as error:  # tensors that make no whole network
            network, why = None, error
        weights = {name: tuple(map(np.asarray, t)) for name, t in opened.tensors.items()}
    info = {**opened.info, **(architecture_info(network) if network else {})}
    try:
        written = formats.write_weights(
            target, weights, layout=layout, provenance=opened.provenance, info=info
        )
    except NeedsArchitecture as error:
        raise ValueError(f"{error}; {opened.path} describes no whole network: {why}") from None
    return opened, written
