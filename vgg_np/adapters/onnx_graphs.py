"""An ONNX VGG run by onnxruntime and compared with vgg_np by its node outputs.

vgg_np's ONNX reader names each layer's output tensor; onnx and onnxruntime are imported
only when a graph is compared.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import numpy as np
from numpy.typing import ArrayLike

from vgg_np.adapters.reference import _compare, _layouts, _reference
from vgg_np.adapters.taps import Tap
from vgg_np.compare import DEFAULT_TOLERANCE, Comparison
from vgg_np.model import VGG


def compare_onnx(
    path: str | os.PathLike,
    x: ArrayLike,
    *,
    weights: str | os.PathLike | None = None,
    oracle: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    layers: Iterable[str] | None = None,
    names: Mapping[str, str] | None = None,
    layout: str | None = None,
    plan: str | os.PathLike | None = None,
) -> Comparison:
    """Run an ONNX VGG with onnxruntime and compare each layer's node output with vgg_np.

    vgg_np's ONNX reader names each layer's output tensor in the graph; those are added
    to the graph's outputs, so onnxruntime returns them. The graph's initializers are
    diffed against the reference's weights first (`diff_weights`).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.onnx`` file.
    x : array_like
        The preprocessed input, NCHW or NHWC: given to the graph in its own layout.
    weights : str or os.PathLike or "imagenet", optional
        The reference. Without it vgg_np runs the graph's own initializers, and the
        comparison says loudly that loading bugs cannot show.
    oracle, tolerance, layout
        As for `compare_torch`.
    layers : iterable of str, optional
        As for `compare_activations`; default every layer of the reference (one the
        graph lacks fails the comparison).
    names : mapping, optional
        vgg_np layer name -> tensor name in the graph, over those the reader found.
    plan : {"default", "measure"} or path, optional
        How vgg_np's engine runs the reference (`VGG`'s ``plan``).

    Returns
    -------
    Comparison

    Examples
    --------
    Needs onnx and onnxruntime; ``tests/crosscheck/test_compare.py`` runs it:

    >>> print(compare_onnx("vgg16.onnx", x, weights="vgg16.pth", oracle=True))  # doctest: +SKIP
    """
    import onnx
    import onnxruntime

    dtype = "float64" if oracle else "float32"
    graph = VGG.from_file(path, dtype=dtype, data_format="channels_last", plan=plan)
    tensor_names = {**graph.weights_info["tensor_names"], **(names or {})}
    taps = {layer: Tap(tensor) for layer, tensor in tensor_names.items()}
    activation = graph.classifier_activation if graph.include_top else None
    model, notes = _reference(
        weights, graph.weights, "keras", oracle=oracle, activation=activation, own=graph,
        plan=plan,
    )  # fmt: skip
    proto = onnx.load(os.fspath(path))
    present = {o.name for o in proto.graph.output}
    for tensor in tensor_names.values():
        if tensor not in present:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    session = onnxruntime.InferenceSession(
        proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    x_nhwc, assumed = _layouts(x, 3, layout)
    channels_first = graph.weights_info.get("input_layout", "NCHW") == "NCHW"
    feed = x_nhwc.transpose(0, 3, 1, 2) if channels_first else x_nhwc  # -> (N, C, H, W)
    notes.append(
        f"input read as {assumed}; given to the graph as {'NCHW' if channels_first else 'NHWC'}"
    )
    wanted = list(tensor_names.values())
    run = session.run(wanted, {session.get_inputs()[0].name: feed.astype(np.float32)})
    outputs = dict(zip(wanted, run, strict=True))
    return _compare(model, x_nhwc, outputs, taps, layers, tolerance, notes)
