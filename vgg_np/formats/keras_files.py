"""Readers of the weight files Keras users have, all through HDF5 attributes.

Layouts (each written by Keras, or by h5py and loaded back by Keras, in the tests' reference
maker, tests/reference/make_keras_reference.py):

- Keras Applications files (``vgg16_weights_tf_dim_ordering_tf_kernels.h5``): root
  attribute ``layer_names``; each layer group has ``weight_names`` such as
  ``block1_conv1_W_1:0`` naming datasets in that group.
- tf_keras / Keras 2 ``save_weights("x.h5")``: the same, with ``weight_names`` like
  ``block1_conv1/kernel:0`` (a nested path), plus ``backend`` and ``keras_version``.
- Keras 3 (and tf_keras) ``model.save("x.h5")``: the same tree under ``model_weights``.
- Keras 3 ``save_weights("x.weights.h5")``: ``layers/<class name>[_k]/vars/{0,1}``, the
  real layer name in the ``name`` attribute of ``vars``.
- Keras 3 ``.keras``: a zip holding ``model.weights.h5`` in the previous layout.

Large attributes may be split by Keras into ``layer_names0``, ``layer_names1``, ...;
values may be ``bytes`` or ``str``; an empty float array means "no weights".
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator

import h5py
import numpy as np

from vgg_np.formats._common import atomic_write, check_unique, split_kernel_bias
from vgg_np.formats.theano import read_theano

KERAS_ZIP_MEMBER = "model.weights.h5"


def _strings(attrs: h5py.AttributeManager, key: str) -> list[str] | None:
    """Read a list-of-strings attribute, joining Keras's ``key0``, ``key1``, ... chunks."""
    if key in attrs:
        chunks = [attrs[key]]
    elif f"{key}0" in attrs:
        chunks, k = [], 0
        while f"{key}{k}" in attrs:
            chunks.append(attrs[f"{key}{k}"])
            k += 1
    else:
        return None
    values = []
    for chunk in chunks:
        for value in np.atleast_1d(np.asarray(chunk)):
            if isinstance(value, bytes):
                values.append(value.decode("utf8"))
            elif isinstance(value, str):
                values.append(value)
            # anything else (an empty float array) means "no entries"
    return values


def _legacy_layers(root: h5py.Group, where: str) -> dict:
    """Layers of the ``layer_names`` / ``weight_names`` layouts (all but .weights.h5)."""
    names = _strings(root.attrs, "layer_names")
    pairs = []
    for layer in names:
        if layer not in root:
            raise ValueError(f"{where}: layer {layer!r} is listed but has no group")
        group = root[layer]
        weight_names = _strings(group.attrs, "weight_names") or []
        if not weight_names:
            continue
        missing = [w for w in weight_names if not isinstance(group.get(w), h5py.Dataset)]
        if missing:
            raise ValueError(f"{where}: layer {layer!r} lists weights it lacks: {missing}")
        pairs.append((layer, split_kernel_bias(layer, [group[w] for w in weight_names])))
    return check_unique(pairs, where)


def _natural_key(key: str) -> tuple[str, int]:
    """Sort ``conv2d``, ``conv2d_1``, ..., ``conv2d_10`` by their counter (Keras's order)."""
    stem, _, counter = key.rpartition("_")
    return (stem, int(counter)) if stem and counter.isdigit() else (key, -1)


def _keras3_layers(layers: h5py.Group, where: str) -> list[tuple[str, tuple]]:
    """Layers of a Keras 3 ``.weights.h5``: map each ``vars`` group by its name attribute."""
    pairs = []
    for key in sorted(layers, key=_natural_key):
        group = layers[key]
        if "layers" in group:  # a nested model: its layers are named inside
            pairs += _keras3_layers(group["layers"], where)
        if "vars" not in group or not len(group["vars"]):
            continue
        variables = group["vars"]
        name = variables.attrs.get("name", key)
        name = name.decode("utf8") if isinstance(name, bytes) else str(name)
        # Variables are numbered 0, 1, ... in creation order: HDF5 lists "10" before "2".
        arrays = [variables[k] for k in sorted(variables, key=int)]
        if not all(isinstance(a, h5py.Dataset) for a in arrays):
            raise ValueError(f"{where}: the variables of layer {name!r} are not all datasets")
        pairs.append((name, split_kernel_bias(name, arrays)))
    return pairs


def read_keras_h5(f: h5py.File, where: str, *, theano_flip: bool = True) -> tuple[str, dict]:
    """Return (format description, canonical lazy mapping) of an open Keras HDF5 file."""
    if "nb_layers" in f.attrs:
        kind = "flipped kernels" if theano_flip else "kernels taken as stored"
        tensors = read_theano(f, where, flip=theano_flip)
        return f"keras-h5 (Keras 0.x/1.x Theano layout, {kind})", tensors
    if "model_weights" in f and _strings(f["model_weights"].attrs, "layer_names") is not None:
        return "keras-h5 (model.save layout, model_weights/)", _legacy_layers(
            f["model_weights"], where
        )
    if _strings(f.attrs, "layer_names") is not None:
        kind = "save_weights layout" if "keras_version" in f.attrs else "Keras Applications layout"
        return f"keras-h5 ({kind})", _legacy_layers(f, where)
    if "layers" in f:
        pairs = _keras3_layers(f["layers"], where)
        return "keras-weights-h5 (Keras 3 .weights.h5)", check_unique(pairs, where)
    raise ValueError(
        f"{where} is an HDF5 file but not a Keras weights file: no `layer_names` attribute, "
        "no `model_weights` or `layers` group"
    )


@contextlib.contextmanager
def open_keras_h5(
    path: str | os.PathLike, *, theano_flip: bool = True
) -> Iterator[tuple[str, dict]]:
    """Open a Keras HDF5 weights file; its datasets are readable inside the block."""
    where = repr(os.fspath(path))
    try:
        f = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(
            f"{where} cannot be read as HDF5 (damaged or truncated?): {error}"
        ) from None
    with f:
        try:
            result = read_keras_h5(f, where, theano_flip=theano_flip)
        except (KeyError, RuntimeError, OSError) as error:  # h5py on a damaged file
            raise ValueError(f"{where} is damaged: {error}") from None
        yield result


@contextlib.contextmanager
def open_keras_zip(path: str | os.PathLike) -> Iterator[tuple[str, dict]]:
    """Open a Keras 3 ``.keras`` zip through the ``model.weights.h5`` it holds."""
    with zipfile.ZipFile(path) as zf, tempfile.TemporaryDirectory() as tmp:
        # h5py needs random access: extract the member rather than seek in the zip stream.
        extracted = os.path.join(tmp, KERAS_ZIP_MEMBER)
        try:
            with zf.open(KERAS_ZIP_MEMBER) as member, open(extracted, "wb") as out:
                shutil.copyfileobj(member, out, length=1 << 24)
        except (zipfile.BadZipFile, EOFError, OSError) as error:
            raise ValueError(f"{os.fspath(path)!r}: damaged .keras archive: {error}") from None
        with open_keras_h5(extracted) as (name, tensors):
            yield f"keras-zip (.keras, {name})", tensors


def write_keras_h5(
    path: str | os.PathLike,
    weights: dict,
    *,
    layer_names: list[str] | None = None,
    naming: str = "applications",
) -> None:
    """Write weights in the Keras Applications layout, or tf_keras's ``save_weights`` one.

    Parameters
    ----------
    path : str or os.PathLike
    weights : dict
        Keras layer name -> (kernel, bias).
    layer_names : list of str, optional
        Every layer of the model in order, parameterless ones included (they get an empty
        ``weight_names``, as Keras writes them); defaults to the keys of `weights`.
    naming : {"applications", "tf_keras"}
        ``block1_conv1_W_1:0`` dataset names in the layer group, or ``kernel:0`` names
        nested as ``block1_conv1/block1_conv1/kernel:0`` with ``backend`` and
        ``keras_version`` attributes.
    """
    if naming not in ("applications", "tf_keras"):
        raise ValueError(f"`naming` must be 'applications' or 'tf_keras', got {naming!r}")
    layer_names = list(weights) if layer_names is None else layer_names
    with atomic_write(path) as out, h5py.File(out, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in layer_names])
        if naming == "tf_keras":
            f.attrs["backend"] = b"tensorflow"
            f.attrs["keras_version"] = b"2.15.0"
        for name in layer_names:
            group = f.create_group(name)
            if name not in weights:
                group.attrs["weight_names"] = np.array([])  # "no weights", as Keras writes
                continue
            if naming == "tf_keras":
                keys = [f"{name}/kernel:0", f"{name}/bias:0"]
            else:
                keys = [f"{name}_W_1:0", f"{name}_b_1:0"]
            group.attrs["weight_names"] = np.array([k.encode() for k in keys])
            for key, array in zip(keys, weights[name], strict=True):
                group.create_dataset(key, data=np.asarray(array))
