"""How a `VGG` runs: its input checked, then the reference forward or the lowered engine.

The model (`vgg_np.model`) is what a network is and its weights; this module is the
bookkeeping between the user's layer names and what actually runs. The engine runs the
lowered plan (`vgg_np.engine.lowering.lower`: batch norms folded, dropout gone), so a user layer
the plan merged away is computed here, alone, by the reference forward; a layer that is the
identity shares its step with the layer before it, and each gets its own copy.
"""

from __future__ import annotations

import collections
from collections.abc import Collection

import numpy as np
from numpy.typing import ArrayLike

from vgg_np import formats
from vgg_np.config import MIN_SIZE, _fmt_shape
from vgg_np.engine import Engine
from vgg_np.engine.lowering import Plan
from vgg_np.formats.torchvision import TIMM_SIDE
from vgg_np.layers import Layer, forward
from vgg_np.network import Network


def prepare_input(
    x: ArrayLike, network: Network, family: formats.Family | None, cast: bool = True
) -> np.ndarray:
    """Return `x` as ``(N, H, W, C)`` (cast to the network's dtype), or refuse it.

    Parameters
    ----------
    x : array_like
        The user's images, in the network's data format.
    network : vgg_np.network.Network
    family : formats.Family or None
        The family of the file the weights were loaded from: timm's VGG refuses inputs
        whose last feature map is larger than its ``pre_logits`` convolution.
    cast : bool, default True
        False: a view of `x`, not copied (`VGG.predict` casts one batch at a time).

    Raises
    ------
    TypeError
        If `x` is not floating point.
    ValueError
        If `x` is not 4-D or does not fit the network's input shape.
    """
    x = np.asarray(x)
    if x.dtype.kind != "f":
        raise TypeError(
            f"`x` must be floating point, got dtype {x.dtype}; images go through "
            "vgg_np.preprocess_input first"
        )
    layout = "(N, C, H, W)" if network.data_format == "channels_first" else "(N, H, W, C)"
    if x.ndim != 4:
        raise ValueError(f"`x` must be 4-D {layout}, got shape {x.shape}")
    if network.data_format == "channels_first":
        x = x.transpose(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
    expected = network.input_shape
    if x.shape[3] != expected[2] or any(
        e is not None and s != e for s, e in zip(x.shape[1:3], expected[:2], strict=True)
    ):
        raise ValueError(
            f"`x` of shape {x.shape} (as N, H, W, C) does not fit input shape "
            f"{_fmt_shape(expected)}"
        )
    if min(x.shape[1:3]) < MIN_SIZE:
        raise ValueError(f"`x` height and width must be at least {MIN_SIZE}, got {x.shape}")
    side = max(x.shape[1:3]) >> len(network.config.blocks)  # the last feature map's
    if side > TIMM_SIDE and family == formats.Family.TIMM:
        raise ValueError(
            f"`x` of shape {x.shape} gives a {side}-pixel feature map: timm's VGG then "
            f"slides its {TIMM_SIDE}x{TIMM_SIDE} pre_logits convolution and averages, "
            f"which vgg_np does not represent; use inputs below {(TIMM_SIDE + 1) << 5}"
        )
    return x.astype(network.dtype, copy=False) if cast else x


def run(
    layers: tuple[Layer, ...],
    weights: dict[str, tuple[np.ndarray, ...]],
    x: np.ndarray,
    keep: bool | Collection[str],
    lowered: tuple[Plan, Engine] | None,
) -> list[tuple[str, np.ndarray]]:
    """Return [(user layer name, output)] from the engine, or the reference forward pass.

    Parameters
    ----------
    layers, weights
        The model's layer table and weights (`VGG.layers`, `VGG.weights`).
    x : ndarray, shape (N, H, W, C)
        Prepared input (`prepare_input`).
    keep : bool or collection of str
        False: only the last output; True: every layer's; names: those layers' at least
        (the engine stops after the deepest of them; the reference forward runs to the end
        and gives the last layer's too). In layer order; every output is a new array.
    lowered : (Plan, Engine) or None
        The lowered plan and its engine; None runs `vgg_np.layers.forward`.
    """
    names = [layer.name for layer in layers]
    wanted = set(names) if keep is True else set(keep or ())
    if lowered is None:
        outputs = []

        def record(layer: Layer, values: dict) -> None:
            if layer.name in wanted or layer is layers[-1]:
                outputs.append((layer.name, values["output"]))

        forward(layers, weights, x, hook=record)
        return outputs
    if not wanted:  # the engine runs large batches in slices
        return [(names[-1], lowered[1].predict(x))]
    own = engine_outputs(layers, weights, lowered, x, wanted)
    # A user layer that is the identity (dropout) shares its step: each gets its own copy.
    copies = collections.Counter(id(own[name]) for name in names if name in wanted)
    result = []
    for name in names:
        if name in wanted:
            copies[id(own[name])] -= 1
            result.append((name, own[name].copy() if copies[id(own[name])] else own[name]))
    return result


def engine_outputs(
    layers: tuple[Layer, ...],
    weights: dict[str, tuple[np.ndarray, ...]],
    lowered: tuple[Plan, Engine],
    x: np.ndarray,
    wanted: set[str],
) -> dict[str, np.ndarray]:
    """Return the outputs of the user layers `wanted` (and perhaps others) by the engine.

    A layer the plan merged away (a convolution folded with its batch norm) is
    computed alone, by the reference forward, from the plan's output of the layer
    before it: the layers the plan keeps stay as accurate as the folded network (a
    float32 batch norm run after its float32 convolution magnifies the convolution's
    rounding where a channel is nearly constant).
    """
    plan, engine = lowered
    names = [layer.name for layer in layers]
    # A run of merged layers (a dense, a dropout, then the activation fused into the
    # dense) is computed from the nearest layer before it that the plan keeps.
    merged = set()
    for i, name in enumerate(names):
        if name in wanted and name not in plan.names:
            while i >= 0 and names[i] not in plan.names and i not in merged:
                merged.add(i)
                i -= 1
    before = {names[i - 1] for i in merged if i > 0 and names[i - 1] in plan.names}
    answered = {name for name in wanted | before if name in plan.names}
    found = engine.outputs(x, {plan.names[name] for name in answered}) if answered else {}
    own = {name: found[plan.names[name]] for name in answered}
    for i in sorted(merged):
        layer = layers[i]
        given = x if i == 0 else own[names[i - 1]]
        # One image at a time: the result does not depend on the batch (as the engine's).
        own[layer.name] = np.concatenate(
            [forward([layer], weights, given[i : i + 1]) for i in range(len(given))]
        )  # (N, ...)
    return own
