"""The reference an artifact is compared with, the input's layout, and the comparison itself.

The reference weights come from a file the user names (or ``weights="imagenet"``); without
one, vgg_np runs the artifact's own weights and every comparison says so loudly. The
captured outputs are compared by `vgg_np.compare.compare_activations` under vgg_np's names.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Mapping

import numpy as np
from numpy.typing import ArrayLike

from vgg_np import hub
from vgg_np.adapters.taps import Tap
from vgg_np.architecture import infer_architecture
from vgg_np.compare import Comparison, compare_activations
from vgg_np.model import VGG
from vgg_np.weight_diff import diff_weights


def _reference(
    weights: str | os.PathLike | None,
    yours: Mapping[str, tuple[np.ndarray, ...]],
    family: str,
    *,
    oracle: bool,
    activation: str | None,
    own: VGG | None = None,
    input_shape: tuple[int, int, int] | None = None,
    plan: str | os.PathLike | None = None,
) -> tuple[VGG, list[str]]:
    """Return (reference model, notes): from `weights`, or, loudly, from the artifact.

    `own` is the artifact read as a vgg_np model already (an ONNX file), if it was;
    `input_shape` (H, W, C) the artifact's, when its classifier needs one; `plan` the
    reference's engine plan (`VGG`'s ``plan``).
    """
    dtype = "float64" if oracle else "float32"
    loud = (
        "REFERENCE FROM THE ARTIFACT UNDER TEST: no `weights=` given, so vgg_np runs the "
        "artifact's own weights and a weight-loading bug (a transposed kernel...) cannot "
        "show; pass weights=<the file you loaded> or weights='imagenet'"
    )
    if weights is None and own is not None:
        model, notes = own, [loud]
    elif weights is None:
        changes: dict[str, object] = {"classifier_activation": activation, "dtype": dtype}
        changes |= {"input_shape": input_shape} if input_shape is not None else {}
        network = infer_architecture(yours, {}, family).replace(**changes)
        model = VGG(**network.arguments(), seed=0, plan=plan)
        model.set_weights(yours, source="the artifact's own weights")
        notes = [loud]
    else:
        if isinstance(weights, str) and weights == "imagenet":
            network = infer_architecture(yours, {}, family)
            weights = hub.resolve(
                network.config.name,
                network.include_top,
                batch_norm=network.batch_norm is not None,
            )
        model = VGG.from_file(weights, dtype=dtype, classifier_activation=activation, plan=plan)
        diff = diff_weights(model.weights, yours)
        notes = [f"reference weights: {os.fspath(weights)}", *diff.lines()]
    return model, notes


def _layouts(x: ArrayLike, channels: int, layout: str | None) -> tuple[np.ndarray, str]:
    """Return (x as NHWC, the layout assumed for it): NCHW and NHWC batches are both read."""
    batch = np.asarray(x)
    if layout not in (None, "NHWC", "NCHW"):
        raise ValueError(f"`layout` must be None, 'NHWC' or 'NCHW', got {layout!r}")
    if batch.ndim != 4:
        raise ValueError(f"`x` must be a 4-D batch (N, H, W, C) or (N, C, H, W), got {batch.shape}")
    if layout is None:
        fits = [n for n, axis in (("NHWC", 3), ("NCHW", 1)) if batch.shape[axis] == channels]
        if len(fits) != 1:
            raise ValueError(
                f"`x` of shape {batch.shape} is {' and '.join(fits) or 'neither NHWC nor NCHW'} "
                f"with {channels} channels: pass layout='NHWC' or layout='NCHW'"
            )
        layout = fits[0]
    # (N, C, H, W) -> (N, H, W, C) where needed
    nhwc = batch if layout == "NHWC" else batch.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(nhwc), layout


def _compare(
    model: VGG,
    x_nhwc: np.ndarray,
    outputs: Mapping[str, np.ndarray],
    taps: dict[str, Tap],
    layers: Iterable[str] | None,
    tolerance: float,
    notes: list[str],
) -> Comparison:
    """Run compare_activations on the captured outputs; the notes are said first.

    The arrays are handed over under vgg_np's names, so that no other implementation's
    naming convention (torchvision's module numbers) can pair a layer with the wrong
    array; each row then shows the artifact's own name.
    """
    known = {layer.name: layer for layer in model.layers}
    strangers = [
        f"{layer} ({tap.key})"
        for layer, tap in taps.items()
        if layer not in known and re.fullmatch(r"block\d+_(conv\d+|pool)|fc\d+|predictions", layer)
    ]
    if strangers:  # its layers counted from its modules do not fit the reference's
        raise ValueError(
            f"the artifact's layers, counted from its modules, include {', '.join(strangers[:4])}, "
            f"which {model.config.name} does not have: pooling or activations called as "
            "functions leave no module to count; name the modules with `names=`"
        )
    by_layer = {layer: outputs[tap.key] for layer, tap in taps.items() if tap.key in outputs}
    # Every layer of the reference, but the reshapes an implementation may do without a
    # layer of its own (flatten; torchvision's avgpool, the identity at 224x224).
    optional = ("flatten", "adaptive_avg")
    order = [n.name for n in model.layers if n.kind not in optional or n.name in taps]
    wanted = order if layers is None else list(layers)
    result = compare_activations(model, x_nhwc, by_layer, tolerance=tolerance, layers=wanted)
    rows = tuple(dataclasses.replace(row, source_name=taps[row.name].key) for row in result.rows)
    return dataclasses.replace(result, rows=rows, notes=(*notes, *result.notes))
