"""A live Keras VGG (or its ``.keras`` / ``.h5`` file) compared with vgg_np by its layer names.

One probe model returns every layer's output; keras is imported only when a model is compared.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from vgg_np.adapters.reference import _compare, _layouts, _reference
from vgg_np.adapters.taps import _named, name_map
from vgg_np.compare import DEFAULT_TOLERANCE, Comparison

if TYPE_CHECKING:
    # keras is not type-checked here (pyproject.toml): its objects are Any to the checker.
    import keras


def _keras_model(model_or_path: keras.Model | str | os.PathLike) -> keras.Model:
    """Return the Keras model, loaded when given a path (``.keras``, a whole-model ``.h5``)."""
    import keras

    if isinstance(model_or_path, (str, os.PathLike)):
        if not os.path.isfile(model_or_path):
            raise ValueError(f"`model_or_path`: {os.fspath(model_or_path)!r} is not a file")
        return keras.models.load_model(os.fspath(model_or_path), compile=False)
    if not isinstance(model_or_path, keras.Model):
        raise TypeError(
            f"`model_or_path` must be a keras.Model or a path, got {type(model_or_path).__name__}"
        )
    return model_or_path


def compare_keras(
    model_or_path: keras.Model | str | os.PathLike,
    x: ArrayLike,
    *,
    weights: str | os.PathLike | None = None,
    oracle: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    layers: Iterable[str] | None = None,
    names: Mapping[str, str] | None = None,
    layout: str | None = None,
) -> Comparison:
    """Compare a Keras VGG with vgg_np, layer by layer, by its layer names.

    Its layers are named as vgg_np's from their kinds and order (`name_map`: Keras
    Applications' names come out unchanged), its weights are diffed against the
    reference's (`diff_weights`), and one probe model returns every layer's output. The
    reference's output kind follows the model's last activation (softmax or logits).

    Parameters
    ----------
    model_or_path : keras.Model or str or os.PathLike
        A channels-last VGG, or its ``.keras`` / whole-model ``.h5`` file.
    x : array_like, shape (N, H, W, 3) or (N, 3, H, W)
        The preprocessed input; an NCHW batch is transposed for the model.
    weights, oracle, tolerance, layers, names, layout
        As for `compare_torch` (`names`: vgg_np layer -> Keras layer name).

    Returns
    -------
    Comparison

    Raises
    ------
    ValueError, TypeError
        For a path that is no file, an object that is no Keras model, a model nesting
        models (a base under a head of one's own), or `x` as for `compare_torch`.

    Examples
    --------
    Needs keras; ``tests/crosscheck/test_adapters.py`` runs it on tiny models:

    >>> print(compare_keras("my_vgg16.keras", x, weights="vgg16.h5"))  # doctest: +SKIP
    """
    import keras

    net = _keras_model(model_or_path)
    nested = [layer.name for layer in net.layers if isinstance(layer, keras.Model)]
    if nested:  # their layers are not the outer model's: the order would pair them wrongly
        raise ValueError(
            f"`model_or_path`: the layers {nested} are models of their own; compare the VGG "
            f"inside (model.get_layer({nested[0]!r}))"
        )
    taps = _named(name_map((layer.name, type(layer).__name__) for layer in net.layers), names)
    yours = {
        layer: tuple(np.asarray(w) for w in net.get_layer(tap.owner).get_weights())
        for layer, tap in taps.items()
        if tap.owner and net.get_layer(tap.owner).get_weights()
    }
    last = net.layers[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", None)
    activation = "softmax" if activation == "softmax" or type(last).__name__ == "Softmax" else None
    shape = tuple(net.input_shape[1:])  # (H, W, C)
    model, notes = _reference(
        weights, yours, "keras", oracle=oracle, activation=activation, input_shape=shape
    )
    x_nhwc, assumed = _layouts(x, 3, layout)
    notes.append(f"input read as {assumed}; the model's output taken as {activation or 'logits'}")
    keys = {tap.key: tap.name for tap in taps.values()}
    inputs = net.inputs[0] if len(net.inputs) == 1 else net.inputs  # as `x` is given
    probe = keras.Model(inputs, [net.get_layer(name).output for name in keys.values()])
    arrays = probe(x_nhwc.astype(np.float32), training=False)
    outputs = {key: keras.ops.convert_to_numpy(a) for key, a in zip(keys, arrays, strict=True)}
    return _compare(model, x_nhwc, outputs, taps, layers, tolerance, notes)
