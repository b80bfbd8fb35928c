"""The conformance cases and their oracle: each kernel's, and each layer's of a network.

A `Case` is an ONNX operator with its inputs, its expected output (computed from the
float32 inputs in float64 by `evaluate`, the loop definitions for the small kernel cases,
then rounded to float32) and the tolerance a float32 implementation gets, with the rule it
comes from. `kernel_cases` covers each kernel's forms; `layer_cases` each layer of a VGG.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from vgg_np import ops
from vgg_np.config import VGGConfig
from vgg_np.formats.layouts import hwc_rows_to_chw, hwio_to_oihw, oihw_to_hwio
from vgg_np.model import VGG

__all__ = ["NARROW_VGG16", "Case", "evaluate", "kernel_cases", "layer_cases"]

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
# by a sizeable fraction of the output itself (tests/vectors/test_vectors.py breaks some on
# purpose).
DOT_TOL = 1e-5
# exp, a sum and a division, each a few ulps in float32, on probabilities in [0, 1];
# the relative part lets a fast exp (a few ulps more) through.
SOFTMAX_TOL = {"rtol": 1e-5, "atol": 1e-6}
# x / (1 - rate) against x * float32(1 / (1 - rate)): one rounding each, at most 2 ulps.
DROPOUT_RTOL = 4 * float(np.finfo(np.float32).eps)


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


def _spatial(
    window: tuple[int, int],
    strides: tuple[int, int],
    padding: ops.Padding,
    size: tuple[int, int],
) -> dict:
    """ONNX attributes of a convolution or pooling window, explicit pads included."""
    (top, bottom), (left, right) = ops.resolve_padding(padding, size, window, strides)
    pads = [top, left, bottom, right]
    return {"kernel_shape": list(window), "strides": list(strides), "pads": pads}


def _conv(
    name: str,
    text: str,
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    strides: tuple[int, int] = (1, 1),
    padding: ops.Padding = "same",
    activation: str | None = None,
) -> Case:
    """Return a Conv case; `x` is (N, C, H, W), `w` (O, C, KH, KW)."""
    attrs = {**_spatial(w.shape[2:], strides, padding, x.shape[2:]), "activation": activation}
    inputs = {"x": x, "w": w} if b is None else {"x": x, "w": w, "b": b}
    text += f" Padding {padding!r}: pads (top, left, bottom, right) = {attrs['pads']}."
    return Case(name, "conv2d", "Conv", attrs, inputs, description=text)


def _pool(
    name: str,
    text: str,
    x: np.ndarray,
    window: tuple[int, int],
    strides: tuple[int, int] | None = None,
    padding: ops.Padding = "valid",
) -> Case:
    attrs = _spatial(window, strides or window, padding, x.shape[2:])
    text += " Padded positions never win (they count as -inf)."
    return Case(name, "max_pool2d", "MaxPool", attrs, {"x": x}, description=text)


def _dense(
    name: str,
    text: str,
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray | None = None,
    activation: str | None = None,
) -> Case:
    inputs = {"x": x, "w": w} if b is None else {"x": x, "w": w, "b": b}
    return Case(name, "dense", "Gemm", {"activation": activation}, inputs, description=text)


def _dropout(name: str, text: str, x: np.ndarray, rate: float, seed: int) -> Case:
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

    ties = rng.integers(-1, 2, (2, 3, 6, 8)).astype(np.float32)
    # One generator, drawn in this order: convolutions, pools, then the other kernels.
    cases = [*_conv_cases(r), *_pool_cases(r, ties), *_other_cases(r)]
    return [_finish(case) for case in cases]


def _conv_cases(r: Callable[..., np.ndarray]) -> list[Case]:
    """Return the convolution cases; `r(*shape)` draws float32 inputs."""
    arange = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)  # (N, C, H, W)
    ones = np.ones((1, 1, 3, 3), np.float32)  # (O, C, KH, KW)
    return [
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
    ]  # fmt: skip


def _pool_cases(r: Callable[..., np.ndarray], ties: np.ndarray) -> list[Case]:
    """Return the max-pooling cases; `ties` holds values in {-1, 0, 1}."""
    arange = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)  # (N, C, H, W)
    return [
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
    ]  # fmt: skip


def _other_cases(r: Callable[..., np.ndarray]) -> list[Case]:
    """Return the cases of dense, ReLU, softmax, flatten and dropout."""
    specials = [[-2.5, -0.0, 0.0, 1e-38, -1e-38, 3e38, -np.inf, np.inf]]
    overflow = [[1000, 0, -1000, 5], [89, 88, 0, -89], [-1000, -1000, -1000, -999],
                [3e38, 3e38, 0, -3e38], [-np.inf, 0, 0, 1]]  # fmt: skip
    return [
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
            if layer.name == "fc1" and chw is not None:
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
