"""Conformance vectors: the float64 oracle's answers, written for implementations in any language.

`write_vectors` writes one directory per test case, in the layout of ONNX's backend tests,
which every ONNX runtime's test runner reads::

    OUT_DIR/index.json                      every case: what it computes, shapes, tolerance
    OUT_DIR/<case>/case.json                the same entry for this case alone
    OUT_DIR/<case>/model.onnx               the case as an ONNX graph (with ``onnx`` only)
    OUT_DIR/<case>/test_data_set_0/input_0.pb, input_1.pb, ..., output_0.pb

Without the ``onnx`` package (or with ``encoding="npy"``) the arrays are ``.npy`` files of
the same names and there is no ``model.onnx``; ``case.json`` says what to compute.

The cases cover each kernel (convolution padding forms, odd and non-square sizes,
strides; max-pooling with floors, overlaps, negative inputs and ties; dense; ReLU;
softmax with overflowing logits; flatten; dropout with its mask given) and each layer of a
VGG16, every layer's input being the previous layer's exact output rounded to float32.

Every array is in ONNX's layout: activations NCHW, convolution weights OIHW, dense
kernels ``(in, out)`` as ONNX ``Gemm`` takes them (an NHWC implementation transposes
activations by ``(0, 2, 3, 1)`` and kernels by ``(2, 3, 1, 0)``; fc1's rows then follow the
C, H, W order of an NCHW flatten). Inputs are float32 numbers; the expected outputs are
computed from them in float64 (by the loop definitions ``*_naive`` for the small kernel
cases) and rounded to float32, so they are the best float32 answer there is. Each case
states its tolerance for a float32 implementation as ONNX's ``rtol`` and ``atol``
(``|actual - expected| <= atol + rtol * |expected|``) and the rule it came from.

This module sits above `vgg_np.model` in the package map (it reads weight files through
it) and below the command line (``vgg-np vectors``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from vgg_np import __version__, ops
from vgg_np.config import VGGConfig
from vgg_np.formats.layouts import chw_rows_to_hwc, hwc_rows_to_chw, hwio_to_oihw, oihw_to_hwio
from vgg_np.model import VGG

__all__ = [
    "ENCODINGS",
    "KERNEL_OF_OP",
    "NARROW_VGG16",
    "Case",
    "CaseResult",
    "VectorsReport",
    "evaluate",
    "kernel_cases",
    "load_case",
    "run_vectors",
    "write_vectors",
]

#: How the arrays are stored: ONNX TensorProto ``.pb`` files beside a ``model.onnx``, or
#: ``.npy`` files; ``"auto"`` picks ONNX when the ``onnx`` package is installed.
ENCODINGS = ("auto", "onnx", "npy")

#: VGG16's topology at an eighth of its widths on 32x32 inputs: every layer kind, in seconds.
NARROW_VGG16 = VGGConfig(
    "vgg16-narrow",
    ((8, 8), (16, 16), (32,) * 3, (64,) * 3, (64,) * 3),
    fc=(64, 64),
    default_size=32,
)

# A float32 sum of products, against the exact value, relative to the sum of the absolute
# values of its terms: tests/conftest.py measured 2.1e-7 (about 2 eps) for vgg_np's GEMMs;
# Winograd F(4x4, 3x3), which a fast implementation may use, reached 2.0e-6 of a similar
# scale (max |x| times the kernel's sum of |taps|). 1e-5 accepts any summation order or
# fast algorithm; a bug (a flipped or transposed kernel, a wrong pad, a lost bias) is off
# by a sizeable fraction of the output itself (tests/test_vectors.py breaks some on purpose).
DOT_TOL = 1e-5
# exp, a sum and a division, each a few ulps in float32, on probabilities in [0, 1];
# the relative part lets a fast exp (a few ulps more) through.
SOFTMAX_TOL = {"rtol": 1e-5, "atol": 1e-6}
# x / (1 - rate) against x * float32(1 / (1 - rate)): one rounding each, at most 2 ulps.
DROPOUT_RTOL = 4 * float(np.finfo(np.float32).eps)

_OPSET = 13  # Softmax over the last axis alone since opset 13


def _nhwc(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)


def _nchw(x: np.ndarray) -> np.ndarray:
    return x.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)


def _padding(pads: list[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    top, left, bottom, right = pads  # ONNX order: all the starts, then all the ends
    return (top, bottom), (left, right)


@dataclass
class Case:
    """One conformance case: an ONNX-style operation, its arrays and its tolerance.

    Attributes
    ----------
    name : str
        Directory name, e.g. ``"conv2d_same_stride2"``.
    kernel : str
        What it tests: ``conv2d``, ``max_pool2d``, ``dense``, ``relu``, ``softmax``,
        ``flatten``, ``dropout``, or ``layer`` for a layer of a whole network.
    op : str
        The ONNX operator it is: ``Conv``, ``MaxPool``, ``Gemm``, ``Relu``, ``Softmax``,
        ``Flatten``, ``Dropout`` (with its mask given as an input).
    attributes : dict
        The operator's attributes (ONNX names), plus ``activation`` ("Relu" or None).
    inputs, outputs : dict
        Name -> array, in order (``input_0``, ``input_1``, ...).
    rtol, atol : float
        Tolerance for a float32 implementation.
    description : str
        What the case checks, and the rule its tolerance comes from.

    Examples
    --------
    >>> case = next(c for c in kernel_cases() if c.name == "conv2d_arange_valid")
    >>> case.op, case.outputs["y"][0, 0]
    ('Conv', array([[45., 54.],
           [81., 90.]], dtype=float32))
    """

    name: str
    kernel: str
    op: str
    attributes: dict
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    rtol: float = 0.0
    atol: float = 0.0
    description: str = ""

    def spec(self) -> dict:
        """Return the JSON description of the case (no array values); see the class example."""
        arrays = [
            {"name": k, "file": f"input_{i}", "shape": list(v.shape), "dtype": v.dtype.name}
            for i, (k, v) in enumerate(self.inputs.items())
        ]
        results = [
            {"name": k, "file": f"output_{i}", "shape": list(v.shape), "dtype": v.dtype.name}
            for i, (k, v) in enumerate(self.outputs.items())
        ]
        return {
            "name": self.name,
            "kernel": self.kernel,
            "op": self.op,
            "attributes": self.attributes,
            "inputs": arrays,
            "outputs": results,
            "rtol": self.rtol,
            "atol": self.atol,
            "description": self.description,
        }


# ---------------------------------------------------------------------------------------
# Evaluating a case with vgg_np's kernels: the oracle (naive, float64) and the check.
# ---------------------------------------------------------------------------------------


def evaluate(
    op: str, attributes: dict, inputs: dict[str, np.ndarray], *, naive: bool = False
) -> NDArray[np.floating]:
    """Compute a case with vgg_np's kernels, converting ONNX's layout at the boundary.

    Parameters
    ----------
    op : str
        The case's ONNX operator (`Case.op`).
    attributes : dict
        `Case.attributes`.
    inputs : dict
        Name -> array as stored in the case (NCHW, OIHW); computed in their dtype.
    naive : bool, default False
        Use the loop definitions (``conv2d_naive``, ...) instead of the fast kernels.
        Dropout then applies the stored mask; otherwise it redraws it with
        `vgg_np.ops.dropout` from the case's seed, so the check covers vgg_np's mask too.

    Returns
    -------
    ndarray
        The case's single output, in ONNX's layout.

    Raises
    ------
    ValueError
        For an operator no case uses.

    Examples
    --------
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)                 # (N, C, H, W)
    >>> attrs = {"kernel_shape": [2, 2], "strides": [2, 2], "pads": [0, 0, 0, 0]}
    >>> evaluate("MaxPool", attrs, {"x": x})[0, 0]
    array([[ 5.,  7.],
           [13., 15.]])
    """
    x = inputs["x"]
    if op == "Conv":
        conv = ops.conv2d_naive if naive else ops.conv2d
        kernel = oihw_to_hwio(inputs["w"])  # (O, C, KH, KW) -> (KH, KW, C, O)
        y = conv(
            _nhwc(x),
            kernel,
            inputs.get("b"),
            strides=tuple(attributes["strides"]),
            padding=_padding(attributes["pads"]),
        )
        y = _nchw(y)
    elif op == "MaxPool":
        pool = ops.max_pool2d_naive if naive else ops.max_pool2d
        y = _nchw(
            pool(
                _nhwc(x),
                tuple(attributes["kernel_shape"]),
                strides=tuple(attributes["strides"]),
                padding=_padding(attributes["pads"]),
            )
        )
    elif op == "Gemm":
        y = (ops.dense_naive if naive else ops.dense)(x, inputs["w"], inputs.get("b"))
    elif op == "Relu":
        y = ops.relu(x)
    elif op == "Softmax":
        # The stable form is the definition (the naive one overflows). x - max(x) may
        # overflow to -inf on a row spanning more than float32's range: its exp, 0, is right.
        with np.errstate(over="ignore"):
            y = ops.softmax(x, axis=-1)
    elif op == "Flatten":
        y = ops.flatten(x)  # on NCHW: C, H, W order, as ONNX's Flatten
    elif op == "Dropout":
        rate = attributes["ratio"]
        if naive:
            y = np.where(inputs["mask"], x / (1.0 - rate), 0.0).astype(x.dtype)
        else:
            rng = np.random.default_rng(attributes["seed"])
            y = ops.dropout(x, rate, training=True, rng=rng)
    else:
        raise ValueError(f"`op` must be one of the cases' operators, got {op!r}")
    return ops.relu(y) if attributes.get("activation") == "Relu" else y


def _finish(case: Case, *, naive: bool = True) -> Case:
    """Compute the expected output in float64 and the case's tolerance; return the case."""
    exact = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in case.inputs.items()}
    y = evaluate(case.op, case.attributes, exact, naive=naive)
    case.outputs = {"y": y.astype(np.float32)}
    if case.op in ("Conv", "Gemm"):
        # The float32 error of each output scales with sum |x * w| + |b| (see DOT_TOL).
        magnitudes = {k: np.abs(v) for k, v in exact.items()}
        attrs = {**case.attributes, "activation": None}
        scale = evaluate(case.op, attrs, magnitudes)
        case.rtol, case.atol = 0.0, float(DOT_TOL * scale.max())
        rule = f"atol = {DOT_TOL:g} * max(sum |x * w| + |b|) over the outputs"
    elif case.op == "Softmax":
        case.rtol, case.atol = SOFTMAX_TOL["rtol"], SOFTMAX_TOL["atol"]
        rule = "a few float32 ulps of exp, sum and division"
    elif case.op == "Dropout":
        case.rtol, case.atol = DROPOUT_RTOL, 0.0
        rule = "x / (1 - ratio) rounded once or twice"
    else:
        case.rtol = case.atol = 0.0
        rule = "exact: a maximum or a copy does not round"
    case.description += f" Tolerance: {rule}."
    return case


# ---------------------------------------------------------------------------------------
# The kernel cases
# ---------------------------------------------------------------------------------------


def _spatial(window, strides, padding, size) -> dict:
    """ONNX attributes of a convolution or pooling window, explicit pads included."""
    (top, bottom), (left, right) = ops.resolve_padding(padding, size, window, strides)
    pads = [top, left, bottom, right]
    return {"kernel_shape": list(window), "strides": list(strides), "pads": pads}


def _conv(name, text, x, w, b=None, strides=(1, 1), padding="same", activation=None) -> Case:
    """Return a Conv case; `x` is (N, C, H, W), `w` (O, C, KH, KW)."""
    attrs = {**_spatial(w.shape[2:], strides, padding, x.shape[2:]), "activation": activation}
    inputs = {"x": x, "w": w} if b is None else {"x": x, "w": w, "b": b}
    text += f" Padding {padding!r}: pads (top, left, bottom, right) = {attrs['pads']}."
    return Case(name, "conv2d", "Conv", attrs, inputs, description=text)


def _pool(name, text, x, window, strides=None, padding="valid") -> Case:
    attrs = _spatial(window, strides or window, padding, x.shape[2:])
    text += " Padded positions never win (they count as -inf)."
    return Case(name, "max_pool2d", "MaxPool", attrs, {"x": x}, description=text)


def _dense(name, text, x, w, b=None, activation=None) -> Case:
    inputs = {"x": x, "w": w} if b is None else {"x": x, "w": w, "b": b}
    return Case(name, "dense", "Gemm", {"activation": activation}, inputs, description=text)


def _dropout(name, text, x, rate, seed) -> Case:
    # The mask vgg_np.ops.dropout draws from this seed (ones in, so every kept value is
    # nonzero): the case gives it, so an implementation with its own RNG can be checked.
    kept = ops.dropout(np.ones(x.shape), rate, training=True, rng=np.random.default_rng(seed))
    text += (
        f" y = x * mask / (1 - ratio); the mask is what vgg_np.ops.dropout(x, {rate}, "
        f"training=True, rng=np.random.default_rng({seed})) keeps."
    )
    attrs = {"ratio": rate, "seed": seed}
    return Case(name, "dropout", "Dropout", attrs, {"x": x, "mask": kept != 0}, description=text)


def kernel_cases(seed: int = 0) -> list[Case]:
    """Return the cases for each kernel, expected outputs from the loop definitions.

    Parameters
    ----------
    seed : int, default 0
        Seed of the random inputs.

    Returns
    -------
    list of Case

    Examples
    --------
    >>> from collections import Counter
    >>> Counter(case.kernel for case in kernel_cases())["max_pool2d"]
    6
    """
    rng = np.random.default_rng(seed)

    def r(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    arange = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)  # (N, C, H, W)
    ones = np.ones((1, 1, 3, 3), np.float32)  # (O, C, KH, KW)
    ties = rng.integers(-1, 2, (2, 3, 6, 8)).astype(np.float32)
    specials = [[-2.5, -0.0, 0.0, 1e-38, -1e-38, 3e38, -np.inf, np.inf]]
    overflow = [[1000, 0, -1000, 5], [89, 88, 0, -89], [-1000, -1000, -1000, -999],
                [3e38, 3e38, 0, -3e38], [-np.inf, 0, 0, 1]]  # fmt: skip
    cases = [
        _conv("conv2d_arange_valid", "The docs' example: 45 54 / 81 90.", arange, ones,
              padding="valid"),
        _conv("conv2d_same_3x3", "VGG's convolution, a non-square batch of 2.",
              r(2, 3, 9, 10), r(4, 3, 3, 3), r(4)),
        _conv("conv2d_valid_4x5_kernel", "A non-square kernel: swapped KH, KW show.",
              r(1, 3, 9, 10), r(5, 3, 4, 5), r(5), padding="valid"),
        _conv("conv2d_same_even_kernel", "'same' with even kernels: the odd pad goes after.",
              r(1, 2, 8, 7), r(3, 2, 4, 2), r(3)),
        _conv("conv2d_same_stride2", "'same' with stride 2: output ceil(size / 2).",
              r(1, 3, 10, 9), r(4, 3, 3, 3), r(4), strides=(2, 2)),
        _conv("conv2d_valid_stride_2x3", "Different strides along H and W.",
              r(2, 2, 11, 13), r(3, 2, 3, 3), r(3), strides=(2, 3), padding="valid"),
        _conv("conv2d_explicit_pads", "Asymmetric explicit padding, no bias.",
              r(1, 2, 6, 7), r(2, 2, 3, 3), padding=((2, 0), (1, 3))),
        _conv("conv2d_1x1", "A 1x1 convolution: a dense layer at every pixel.",
              r(2, 8, 5, 6), r(6, 8, 1, 1), r(6)),
        _conv("conv2d_kernel_covers_input", "The window is the whole image: a 1x1 output.",
              r(1, 3, 5, 5), r(2, 3, 5, 5), r(2), padding="valid"),
        _conv("conv2d_relu", "A VGG convolution layer: convolution, bias, ReLU.",
              r(1, 4, 7, 6), r(5, 4, 3, 3), r(5), activation="Relu"),
        _pool("max_pool2d_arange_2x2", "The docs' example: 5 7 / 13 15.", arange, (2, 2)),
        _pool("max_pool2d_odd_size", "An odd size: the last row and column are dropped.",
              r(2, 3, 7, 9), (2, 2)),
        _pool("max_pool2d_3x3_stride2", "Overlapping windows.", r(1, 2, 9, 9), (3, 3), (2, 2)),
        _pool("max_pool2d_same_negative", "All inputs negative: a zero pad would win.",
              -np.abs(r(1, 2, 5, 6)), (3, 3), (1, 1), "same"),
        _pool("max_pool2d_ties", "Values in {-1, 0, 1}: most windows hold tied maxima.",
              ties, (2, 2)),
        _pool("max_pool2d_3x2_stride_2x1", "A non-square window and strides.",
              r(1, 2, 7, 6), (3, 2), (2, 1)),
        _dense("dense_bias", "x @ w + b, the kernel stored (in, out).", r(3, 7), r(7, 5), r(5)),
        _dense("dense_no_bias", "x @ w without a bias.", r(2, 9), r(9, 4)),
        _dense("dense_relu", "A hidden VGG dense layer: x @ w + b, then ReLU.",
               r(4, 33), r(33, 17), r(17), activation="Relu"),
        Case("relu_special_values", "relu", "Relu", {}, {"x": np.array(specials, np.float32)},
             description="Negatives, signed zeros, tiny and huge values, infinities."),
        Case("relu_random", "relu", "Relu", {}, {"x": r(2, 3, 4, 5)},
             description="max(x, 0) elementwise."),
        Case("softmax_random", "softmax", "Softmax", {"axis": -1}, {"x": r(3, 10)},
             description="Each row sums to 1."),
        Case("softmax_overflow", "softmax", "Softmax", {"axis": -1},
             {"x": np.array(overflow, np.float32)},
             description="Logits whose exp overflows or underflows in float32, and -inf: "
             "the textbook formula gives NaN; subtracting each row's maximum does not."),
        Case("softmax_shifted", "softmax", "Softmax", {"axis": -1},
             {"x": r(2, 6) + np.float32(1e4)},
             description="Rows shifted by 1e4: exp(x) alone is infinite."),
        Case("flatten_nchw", "flatten", "Flatten", {"axis": 1},
             {"x": np.arange(48, dtype=np.float32).reshape(2, 3, 2, 4)},
             description="Flatten of NCHW activations: C, then H, then W (ONNX, PyTorch); "
             "an NHWC implementation transposes to NCHW first."),
        _dropout("dropout_half", "Inverted dropout, ratio 0.5.", r(4, 16), 0.5, 1),
        _dropout("dropout_quarter", "Ratio 0.25: 1 / 0.75 is no float32 number.",
                 r(3, 5, 7), 0.25, 2),
        _dropout("dropout_nothing_dropped", "Ratio 0: the identity, as at inference.",
                 r(2, 8), 0.0, 3),
    ]  # fmt: skip
    return [_finish(case) for case in cases]


# ---------------------------------------------------------------------------------------
# The cases of a whole network, layer by layer
# ---------------------------------------------------------------------------------------


def layer_cases(model: VGG, seed: int = 0) -> list[Case]:
    """Return one case per layer of `model`, each fed the previous one's exact output.

    The input is a uniform draw in [-128, 128) (the range of caffe-preprocessed pixels) of
    the model's input size (its default size when the size is free). The expected output
    of each layer is computed in float64 from its float32 input, and rounded; that rounded
    output is the next layer's input. ``predictions`` is written as logits (softmax has
    cases of its own).

    Parameters
    ----------
    model : VGG
        With or without the top.
    seed : int, default 0
        Seed of the input.

    Returns
    -------
    list of Case

    Raises
    ------
    ValueError
        For a layer no ONNX operator here expresses (an adaptive pool that is not the
        identity, a global pooling).

    Examples
    --------
    >>> model = VGG(NARROW_VGG16, classes=10, seed=0)
    >>> [case.name for case in layer_cases(model)][-3:]
    ['layer_fc1', 'layer_fc2', 'layer_predictions']
    """
    h, w, c = model.input_shape
    size = model.config.default_size
    shape = (1, c, h or size, w or size)
    x = np.random.default_rng(seed).uniform(-128, 128, shape).astype(np.float32)  # (N, C, H, W)
    weights = model.weights
    cases = []
    chw = None  # (C, H, W) of what flatten flattened: fc1's rows follow it
    for layer in model.layers:
        name = f"layer_{layer.name}"
        if layer.kind == "conv":
            kernel, bias = (np.asarray(a, np.float32) for a in weights[layer.name])
            text = f"{layer.name}: 3x3 convolution, bias, ReLU."
            case = _conv(name, text, x, hwio_to_oihw(kernel), bias, activation="Relu")
        elif layer.kind == "pool":
            case = _pool(name, f"{layer.name}: 2x2 max-pool, stride 2.", x, (2, 2))
        elif layer.kind == "flatten":
            chw = x.shape[1:]
            text = "flatten of NCHW: C, H, W order (fc1's rows follow it)."
            case = Case(name, "layer", "Flatten", {"axis": 1}, {"x": x}, description=text)
        elif layer.kind == "dense":
            kernel, bias = (np.asarray(a, np.float32) for a in weights[layer.name])
            if layer.name == "fc1":
                # The case flattens NCHW, so fc1's rows go from Keras's H, W, C to C, H, W.
                kernel = hwc_rows_to_chw(kernel, (chw[1], chw[2], chw[0]))
            relu = layer.activation == "relu"
            text = f"{layer.name}: x @ w + b{', then ReLU' if relu else ' (logits)'}."
            case = _dense(name, text, x, kernel, bias, "Relu" if relu else None)
        elif layer.kind == "adaptive_avg" and x.shape[2:] == (layer.units, layer.units):
            continue  # torchvision's pool to the size it already has: the identity
        else:
            raise ValueError(
                f"layer {layer.name} ({layer.kind}) has no conformance case: vectors cover "
                "convolutions, 2x2 max-pools, flatten and dense layers"
            )
        case.kernel = "layer"
        cases.append(_finish(case, naive=False))  # full-size layers: the fast float64 kernels
        x = case.outputs["y"]
    return cases


# ---------------------------------------------------------------------------------------
# Writing and reading
# ---------------------------------------------------------------------------------------


def _onnx_model(case: Case):
    """Build the case as an ONNX graph: its inputs are the case's inputs, in order."""
    from onnx import TensorProto, helper, numpy_helper

    def value(name: str, array: np.ndarray):
        elem = helper.np_dtype_to_tensor_dtype(array.dtype)
        return helper.make_tensor_value_info(name, elem, list(array.shape))

    attrs = {k: v for k, v in case.attributes.items() if k not in ("activation", "seed")}
    names = list(case.inputs)
    initializers, nodes = [], []
    out = "y" if case.attributes.get("activation") is None else "pre_activation"
    if case.op == "Dropout":
        scale = np.asarray(1.0 / (1.0 - attrs["ratio"]), np.float32)
        initializers.append(numpy_helper.from_array(scale, "scale"))
        nodes += [
            helper.make_node("Cast", ["mask"], ["keep"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["x", "keep"], ["kept"]),
            helper.make_node("Mul", ["kept", "scale"], [out]),
        ]
    elif case.op == "Gemm" and "b" not in case.inputs:
        nodes.append(helper.make_node("MatMul", names, [out]))
    else:
        nodes.append(helper.make_node(case.op, names, [out], **attrs))
    if out != "y":
        nodes.append(helper.make_node("Relu", [out], ["y"]))
    graph = helper.make_graph(
        nodes,
        case.name,
        [value(k, v) for k, v in case.inputs.items()],
        [value(k, v) for k, v in case.outputs.items()],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)])
    model.ir_version = 8  # read by onnxruntime 1.14 and later
    return model


def _resolve_encoding(encoding: str) -> str:
    if encoding not in ENCODINGS:
        raise ValueError(f"`encoding` must be one of {ENCODINGS}, got {encoding!r}")
    try:
        import onnx  # noqa: F401
    except ImportError:
        if encoding == "onnx":
            raise ImportError(
                "encoding='onnx' needs the `onnx` package (pip install onnx); "
                "encoding='npy' writes the same cases as .npy files"
            ) from None
        return "npy"
    return "onnx" if encoding == "auto" else encoding


def _write_case(case: Case, directory: pathlib.Path, encoding: str) -> None:
    data = directory / "test_data_set_0"
    data.mkdir(parents=True)
    for kind, arrays in (("input", case.inputs), ("output", case.outputs)):
        for i, (name, array) in enumerate(arrays.items()):
            if encoding == "onnx":
                from onnx import numpy_helper

                tensor = numpy_helper.from_array(array, name)  # named as the graph's input
                (data / f"{kind}_{i}.pb").write_bytes(tensor.SerializeToString())
            else:
                np.save(data / f"{kind}_{i}.npy", array)
    if encoding == "onnx":
        import onnx

        model = _onnx_model(case)
        onnx.checker.check_model(model)
        onnx.save(model, directory / "model.onnx")
    (directory / "case.json").write_text(json.dumps(case.spec(), indent=1) + "\n")


def write_vectors(
    out_dir: str | os.PathLike,
    *,
    weights: str | os.PathLike | None = None,
    config: VGGConfig | str = "vgg16",
    seed: int = 0,
    encoding: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> list[Case]:
    """Write every kernel case and one case per layer of a VGG16 under `out_dir`.

    Parameters
    ----------
    out_dir : str or os.PathLike
        A new or empty directory (a stale case left from an earlier run would be read
        as current, so a non-empty directory is refused).
    weights : str or os.PathLike, optional
        A weights file of any format vgg_np reads; its network gives the layer cases.
        Without it, `config` with seeded He-normal weights.
    config : VGGConfig or str, default "vgg16"
        The network without `weights`; `NARROW_VGG16` writes all 22 layers in a second.
    seed : int, default 0
        Seed of the weights and of every input.
    encoding : {"auto", "onnx", "npy"}, default "auto"
        See `ENCODINGS`.
    progress : callable, optional
        Called with each case's name as it is written.

    Returns
    -------
    list of Case
        What was written, in the order of ``index.json``.

    Raises
    ------
    ValueError
        If `out_dir` is a file or a non-empty directory, or `encoding` is unknown.
    ImportError
        For ``encoding="onnx"`` without the ``onnx`` package.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     cases = write_vectors(tmp, config=NARROW_VGG16, encoding="npy")
    ...     index = json.loads((pathlib.Path(tmp) / "index.json").read_text())
    >>> len(cases) == len(index["cases"]), index["encoding"], index["cases"][0]["name"]
    (True, 'npy', 'conv2d_arange_valid')
    """
    out = pathlib.Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"{out}: `out_dir` must be a new or empty directory")
    encoding = _resolve_encoding(encoding)
    if weights is not None:
        model = VGG.from_file(weights, classifier_activation=None)
    else:
        model = VGG(
            config,
            classes=10 if config is NARROW_VGG16 else 1000,
            seed=seed,
            classifier_activation=None,
        )
    cases = kernel_cases(seed) + layer_cases(model, seed)
    out.mkdir(parents=True, exist_ok=True)
    for case in cases:
        _write_case(case, out / case.name, encoding)
        if progress is not None:
            progress(case.name)
    index = {
        "generator": f"vgg_np {__version__} (vgg_np.vectors)",
        "encoding": encoding,
        "layout": "ONNX: activations NCHW, conv weights OIHW, dense kernels (in, out)",
        "tolerance": "|actual - expected| <= atol + rtol * |expected|, per case",
        "network": {
            "name": model.config.name,
            "weights": str(weights) if weights else f"He-normal, seed {seed}",
        },
        "cases": [case.spec() for case in cases],
    }
    (out / "index.json").write_text(json.dumps(index, indent=1) + "\n")
    return cases


def load_case(directory: str | os.PathLike) -> tuple[dict, dict, dict]:
    """Read a written case: its ``case.json``, its inputs and its expected outputs.

    Parameters
    ----------
    directory : str or os.PathLike
        One case's directory (``OUT_DIR/<case>``), in either encoding.

    Returns
    -------
    spec : dict
        ``case.json``.
    inputs, outputs : dict
        Name -> array, in the case's order.

    Raises
    ------
    ImportError
        For ``.pb`` files without the ``onnx`` package.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = write_vectors(tmp, config=NARROW_VGG16, encoding="npy")
    ...     spec, inputs, outputs = load_case(pathlib.Path(tmp) / "max_pool2d_arange_2x2")
    >>> spec["op"], outputs["y"][0, 0].tolist()
    ('MaxPool', [[5.0, 7.0], [13.0, 15.0]])
    """
    directory = pathlib.Path(directory)
    spec = json.loads((directory / "case.json").read_text())
    data = directory / "test_data_set_0"

    def read(entry: dict) -> np.ndarray:
        if (data / f"{entry['file']}.npy").exists():
            return np.load(data / f"{entry['file']}.npy", allow_pickle=False)
        from onnx import TensorProto, numpy_helper

        tensor = TensorProto()
        tensor.ParseFromString((data / f"{entry['file']}.pb").read_bytes())
        return numpy_helper.to_array(tensor)

    inputs = {e["name"]: read(e) for e in spec["inputs"]}
    outputs = {e["name"]: read(e) for e in spec["outputs"]}
    return spec, inputs, outputs


# ---------------------------------------------------------------------------------------
# Running the cases against another implementation, one function per kernel or layer
# ---------------------------------------------------------------------------------------

#: The function each operator's cases call, and the arguments it gets (``x`` in the
#: implementation's layout): ``conv2d(x, w, b, strides=, padding=)`` (``w`` HWIO for NHWC,
#: OIHW for NCHW; ``padding`` ``((top, bottom), (left, right))``), ``max_pool2d(x, window,
#: strides=, padding=)``, ``dense(x, w, b)`` (``w`` ``(in, out)``), ``relu(x)``,
#: ``softmax(x)`` (last axis), ``flatten(x)`` (in the layout's own order) and
#: ``dropout(x, mask, rate)``; vgg_np's `vgg_np.ops` have these signatures.
KERNEL_OF_OP = {
    "Conv": "conv2d", "MaxPool": "max_pool2d", "Gemm": "dense", "Relu": "relu",
    "Softmax": "softmax", "Flatten": "flatten", "Dropout": "dropout",
}  # fmt: skip


@dataclass(frozen=True)
class CaseResult:
    """One case run by `run_vectors`.

    Attributes
    ----------
    name, kernel : str
        The case, and the function that ran it (a key of the user's mapping).
    shape : tuple
        The expected output's shape (ONNX layout).
    max_abs : float
        max |actual - expected|.
    worst : float
        ``max |actual - expected| / (atol + rtol * |expected|)``: at most 1 passes.
    error : str
        Why the case did not run or could not be compared ('' when it was).

    Examples
    --------
    >>> CaseResult("relu_random", "relu", (2, 3), 0.0, 0.0).passed
    True
    >>> CaseResult("relu_random", "relu", (2, 3), error="raised ValueError()").passed
    False
    """

    name: str
    kernel: str
    shape: tuple
    max_abs: float = float("nan")
    worst: float = float("nan")
    error: str = ""

    @property
    def passed(self) -> bool:
        """Within the case's tolerance (NaN, errors, wrong shapes fail); see the class example."""
        return not self.error and bool(self.worst <= 1.0)


@dataclass(frozen=True)
class VectorsReport:
    """Every case run against an implementation: `str()` is the table.

    A report passes when at least one case ran and none failed; cases without a
    function are listed as not run (and counted), never as passed.

    Examples
    --------
    >>> ok = CaseResult("relu_random", "relu", (2, 3), 0.0, 0.0)
    >>> report = VectorsReport((ok,), skipped=("dense_bias",), layout="NHWC")
    >>> report.passed, str(report).splitlines()[-2:]
    (True, ['not run (1, no function): dense_bias', 'PASS'])
    """

    rows: tuple[CaseResult, ...]
    skipped: tuple[str, ...]
    layout: str

    @property
    def failed(self) -> tuple[CaseResult, ...]:
        """The rows that failed; see the class example."""
        return tuple(row for row in self.rows if not row.passed)

    @property
    def passed(self) -> bool:
        """True when some case ran and every case that ran passed; see the class example."""
        return bool(self.rows) and not self.failed

    def __str__(self) -> str:
        lines = [
            f"conformance cases, arrays given to you as {self.layout}; worst = max |error| / "
            "(atol + rtol |expected|), at most 1 passes",
            f"{'case':<34}{'function':<12}{'shape':<16}{'max abs':>10}{'worst':>10}  result",
        ]
        for r in self.rows:
            shape = "x".join(map(str, r.shape))
            status = "ok" if r.passed else f"FAIL {r.error}".rstrip()
            lines.append(
                f"{r.name:<34}{r.kernel:<12}{shape:<16}{r.max_abs:>10.2e}{r.worst:>10.2e}  {status}"
            )
        lines.append(f"{len(self.rows) - len(self.failed)}/{len(self.rows)} cases passed")
        if self.skipped:
            lines.append(f"not run ({len(self.skipped)}, no function): {', '.join(self.skipped)}")
        verdict = "PASS" if self.passed else "FAIL"
        if not self.rows:
            verdict += ": no case ran"
        elif self.failed:
            verdict += f": first failing case {self.failed[0].name}"
        return "\n".join([*lines, verdict])


def _case_arguments(case: Case, nhwc: bool, chw: tuple | None) -> tuple[list, dict]:
    """Return the case's inputs as the implementation's function takes them."""
    x, w, b = case.inputs["x"], case.inputs.get("w"), case.inputs.get("b")
    attrs = case.attributes
    if case.op == "Conv":
        w = oihw_to_hwio(w) if nhwc else w  # (O, C, KH, KW) -> (KH, KW, C, O)
        return [x, w, b], {"strides": tuple(attrs["strides"]), "padding": _padding(attrs["pads"])}
    if case.op == "MaxPool":
        spatial = {"strides": tuple(attrs["strides"]), "padding": _padding(attrs["pads"])}
        return [x, tuple(attrs["kernel_shape"])], spatial
    if case.op == "Gemm":
        if nhwc and chw is not None and x.shape[1] == int(np.prod(chw)):
            # after a flatten: an NHWC implementation flattened H, W, C (fc1's rows too)
            c, h, w_ = chw
            x = x.reshape(-1, c, h, w_).transpose(0, 2, 3, 1).reshape(len(x), -1)
            w = chw_rows_to_hwc(w, chw)
        return [x, w, b], {}
    if case.op == "Dropout":
        return [x, case.inputs["mask"], attrs["ratio"]], {}
    return [x], {}


def _run_case(case: Case, function, relu, nhwc: bool, chw) -> np.ndarray:
    """Run one case through the user's function; the result in ONNX's layout."""
    args, kwargs = _case_arguments(case, nhwc, chw)
    four_d = nhwc and args[0].ndim == 4
    if four_d:
        args[0] = _nhwc(args[0])
    with np.errstate(over="ignore", invalid="ignore"):  # overflow cases: the result is judged
        y = np.asarray(function(*args, **kwargs))
        if relu is not None:
            y = np.asarray(relu(y))
    if four_d and y.ndim == 4:
        y = _nchw(y)
    elif four_d and case.op == "Flatten" and y.shape == (len(args[0]), args[0][0].size):
        # only a (N, H*W*C) result is reordered: another shape is a failing row as it is
        n, h, w, c = args[0].shape
        y = y.reshape(n, h, w, c).transpose(0, 3, 1, 2).reshape(n, -1)  # H, W, C -> C, H, W
    return y


def _check(case: Case, actual: np.ndarray) -> CaseResult:
    """Compare `actual` with the case's expected output and tolerance."""
    expected = case.outputs["y"]
    row = CaseResult(case.name, "", expected.shape)
    if actual.shape != expected.shape:
        return dataclasses.replace(row, error=f"shape {actual.shape}, expected {expected.shape}")
    with np.errstate(invalid="ignore", divide="ignore"):  # infinities and NaN, judged below
        error = np.abs(actual.astype(np.float64) - expected)
        error[np.isinf(expected) & (actual == expected)] = 0.0  # an infinity where one is due
        allowed = case.atol + case.rtol * np.nan_to_num(np.abs(expected.astype(np.float64)))
        ratio = np.where(error == 0, 0.0, error / allowed)
    nan = np.isnan(ratio)
    ratio[nan] = np.inf
    max_abs = float(np.max(error)) if error.size else 0.0  # NaN shows as NaN
    return dataclasses.replace(
        row, max_abs=max_abs, worst=float(ratio.max()) if ratio.size else 0.0
    )


def _read_cases(source) -> Iterator[Case]:
    """Yield the cases given, or a `write_vectors` directory's in its index's order.

    One at a time: full-size VGG16's weigh 650 MB.
    """
    if not isinstance(source, (str, os.PathLike)):
        yield from source
        return
    root = pathlib.Path(source)
    index = root / "index.json"
    if not index.is_file():
        raise ValueError(f"`source`: {root} holds no index.json (write it with `vgg-np vectors`)")
    try:
        entries = json.loads(index.read_text())["cases"]
        for entry in entries:
            name = entry["name"]
            if not isinstance(name, str) or pathlib.Path(name).name != name or name in ("", ".."):
                raise ValueError(f"the case name {name!r} is not a directory of {root}")
            spec, inputs, outputs = load_case(root / name)
            fields = ("name", "kernel", "op", "attributes")
            tolerance = {key: spec[key] for key in ("rtol", "atol", "description")}
            case = Case(*(spec[key] for key in fields), inputs, outputs, **tolerance)
            yield case
    except (OSError, ValueError, KeyError, TypeError, ImportError) as error:
        # json, numpy and onnx raise their own kinds for a damaged file: one line for all
        raise ValueError(f"{index}: a damaged or incomplete set of cases: {error!r}") from None


def run_vectors(
    source: str | os.PathLike | list[Case],
    functions: dict[str, Callable],
    *,
    layout: str = "NHWC",
) -> VectorsReport:
    """Run every conformance case through an implementation given as one function per kernel.

    For implementations in any language or framework: wrap each kernel (or a whole
    layer) as a Python function on NumPy arrays. vgg_np converts each case to your
    layout (activations, convolution kernels, and fc1's rows after a flatten), calls
    your function, converts its result back and compares it with the case's tolerance.
    A function that raises, returns the wrong shape or NaN is a failing row: the table
    always completes.

    Parameters
    ----------
    source : str or os.PathLike or list of Case
        A directory written by `write_vectors` (``vgg-np vectors``), or cases.
    functions : dict
        Kernel name (see `KERNEL_OF_OP`: ``conv2d``, ``max_pool2d``, ``dense``, ``relu``,
        ``softmax``, ``flatten``, ``dropout``) -> function; a layer's name
        (``block1_conv1``) or a case's name may be given to run that case alone: it then
        gets its kernel's arguments and returns the output activation included. Cases
        with a ReLU call ``functions["relu"]`` after their kernel.
    layout : {"NHWC", "NCHW"}, default "NHWC"
        The layout your functions take: NHWC activations with HWIO kernels, or ONNX's.

    Returns
    -------
    VectorsReport

    Raises
    ------
    ValueError
        For another `layout`, or a directory without an ``index.json``.

    Examples
    --------
    vgg_np's own kernels pass; a max-pool that averages does not:

    >>> impl = {"conv2d": ops.conv2d, "max_pool2d": ops.max_pool2d, "dense": ops.dense,
    ...         "relu": ops.relu, "softmax": ops.softmax, "flatten": ops.flatten,
    ...         "dropout": lambda x, mask, rate: x * mask / (1 - rate)}
    >>> cases = kernel_cases() + layer_cases(VGG(NARROW_VGG16, classes=10, seed=0))
    >>> run_vectors(cases, impl).passed
    True
    >>> def avg_pool(x, window, strides, padding):
    ...     return ops.adaptive_avg_pool2d(x, (x.shape[1] // 2, x.shape[2] // 2))
    >>> report = run_vectors(cases, {**impl, "max_pool2d": avg_pool})
    >>> print(str(report).splitlines()[-1])
    FAIL: first failing case max_pool2d_arange_2x2
    """
    if layout not in ("NHWC", "NCHW"):
        raise ValueError(f"`layout` must be 'NHWC' or 'NCHW', got {layout!r}")
    rows, skipped, chw = [], [], None
    for case in _read_cases(source):
        kernel = KERNEL_OF_OP.get(case.op, case.op)
        own = next(
            (k for k in (case.name, case.name.removeprefix("layer_")) if k in functions), None
        )
        relu = functions.get("relu") if own is None and case.attributes.get("activation") else None
        function = functions.get(own or kernel)
        if function is None or (case.attributes.get("activation") and own is None and relu is None):
            skipped.append(case.name)
            continue
        try:
            actual = _run_case(case, function, relu, layout == "NHWC", chw)
        except Exception as error:  # the user's code: its failure is a row, not a crash
            row = CaseResult(case.name, "", case.outputs["y"].shape, error=f"raised {error!r}")
        else:
            row = _check(case, actual)
        rows.append(dataclasses.replace(row, kernel=own or kernel))
        chw = case.inputs["x"].shape[1:] if case.op == "Flatten" else None
    return VectorsReport(tuple(rows), tuple(skipped), layout)
