"""The usual bugs of a VGG implementation, as data: recompute a layer each wrong way.

When another implementation's layer disagrees with vgg_np, `diagnose` recomputes that
layer from the other implementation's *own* input to it, once per entry of `USUAL_BUGS`
that applies to the layer's kind (a flipped kernel, average pooling, a missing ReLU, ...),
and names the entry that reproduces the other implementation's output, with its error.
`diagnose_input` does the same for the input tensor against vgg_np's own preprocessing of
the raw pictures (`INPUT_BUGS`: swapped channels, a wrong mean or scale, a one-pixel
shift). `vgg_np.compare` calls both; each entry is documented in
``docs/verify-your-implementation.md``.

A new usual bug is one more row of a table: its key, the layer kinds it applies to, what
it is, what it means, and how to recompute the layer that way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from vgg_np import ops
from vgg_np.formats.layouts import chw_rows_to_hwc, hwc_rows_to_chw
from vgg_np.layers import ACTIVATIONS, KINDS, Layer
from vgg_np.preprocess import (
    CAFFE_BGR_MEAN,
    MODES,
    TORCH_RGB_MEAN,
    TORCH_RGB_STD,
    preprocess_input,
)

__all__ = [
    "INPUT_BUGS",
    "USUAL_BUGS",
    "Cause",
    "UsualBug",
    "diagnose",
    "diagnose_input",
    "relative_error",
]

#: Relative error within which a float16 recomputation counts as reproducing a layer:
#: float16 keeps 11 significant bits (rounding 4.9e-4), and accumulating a few hundred
#: terms in it loses a few more.
FLOAT16_SLACK = 1e-2


@dataclass(frozen=True)
class Situation:
    """What a recomputation may use: the layer, its weights, the other side's values.

    Attributes
    ----------
    layer : Layer
        The layer (for the input: a pseudo-layer of kind ``"input"``).
    params : tuple or None
        The layer's tensors from vgg_np's weights (Keras layout).
    x : ndarray
        The other implementation's own input to the layer, NHWC, in the compute dtype;
        for the input row, the raw RGB pixels (N, H, W, 3) as floats.
    theirs : ndarray
        The other implementation's output of the layer, NHWC.
    flat_hwc : tuple of int or None
        (H, W, C) of the feature map a dense layer's input was flattened from, when the
        layer is the first dense layer; else None.
    last : bool
        The layer is the network's output layer.
    mode : str
        The preprocessing mode expected (the input row only).

    Examples
    --------
    >>> s = Situation(Layer("p", "pool"), None, np.ones((1, 2, 2, 1)), np.ones((1, 1, 1, 1)))
    >>> USUAL_BUGS[7].recompute(s).shape  # average pooling
    (1, 1, 1, 1)
    """

    layer: Layer
    params: tuple | None
    x: np.ndarray
    theirs: np.ndarray
    flat_hwc: tuple[int, int, int] | None = None
    last: bool = False
    mode: str = "caffe"


@dataclass(frozen=True)
class UsualBug:
    """One usual bug: one row of `USUAL_BUGS` or `INPUT_BUGS`.

    Attributes
    ----------
    key : str
        A short stable name (``"flipped_kernel"``), as in the JSON output.
    kinds : tuple of str
        The layer kinds (`vgg_np.layers.KINDS` keys, or ``"input"``) it applies to.
    what : str
        The bug as a noun phrase: "block4_conv2 matches {what}".
    meaning : str
        What it says about the implementation.
    recompute : callable
        ``Situation -> ndarray or None``: the layer's output computed that wrong way
        from the other side's own input, None where the bug cannot apply.
    slack : float
        Relative error within which the recomputation reproduces the output, when
        larger than the comparison's tolerance (reduced precision).

    Examples
    --------
    >>> [bug.key for bug in USUAL_BUGS if "pool" in bug.kinds]
    ['average_pooling']
    """

    key: str
    kinds: tuple[str, ...]
    what: str
    meaning: str
    recompute: Callable[[Situation], np.ndarray | None]
    slack: float = 0.0


@dataclass(frozen=True)
class Cause:
    """A usual bug that reproduces a layer's output, with its error.

    Examples
    --------
    >>> print(Cause("block4_conv2", "flipped_kernel", "a flipped kernel",
    ...             "it computes a true convolution", 2e-7))
    block4_conv2 matches a flipped kernel to 2e-07: it computes a true convolution
    """

    layer: str
    key: str
    what: str
    meaning: str
    error: float

    def __str__(self) -> str:
        return f"{self.layer} matches {self.what} to {self.error:.0e}: {self.meaning}"

    def to_dict(self) -> dict:
        """Return JSON-ready fields, and the sentence under ``"text"``; see the class example."""
        return {"layer": self.layer, "key": self.key, "error": self.error, "text": str(self)}


# -- recomputations of one layer ------------------------------------------------------------


def _params(s: Situation) -> tuple:
    """Return the layer's tensors: the bugs that read them apply to kinds that have them."""
    assert s.params is not None, f"{s.layer.name} ({s.layer.kind}) has no tensors"
    return s.params


def _activate(s: Situation, z: np.ndarray) -> np.ndarray:
    return ACTIVATIONS[s.layer.activation].forward(z)


def _conv(
    s: Situation,
    kernel: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    *,
    padding: str = "same",
    x: np.ndarray | None = None,
) -> np.ndarray:
    k, b = _params(s)
    z = ops.conv2d(
        s.x if x is None else x,
        k if kernel is None else kernel,
        b if bias is None else bias,
        padding=padding,
    )  # (N, H, W, O)
    return _activate(s, z)


def _dense(
    s: Situation, kernel: np.ndarray | None = None, bias: np.ndarray | None = None
) -> np.ndarray:
    k, b = _params(s)
    z = ops.dense(s.x, k if kernel is None else kernel, b if bias is None else bias)  # (N, O)
    return _activate(s, z)


def _without_relu(s: Situation) -> np.ndarray | None:
    if s.layer.activation != "relu":
        return None
    return KINDS[s.layer.kind].forward(s.layer, s.params, s.x)


def _bias_twice(s: Situation) -> np.ndarray:
    run = _conv if s.layer.kind == "conv" else _dense
    return run(s, bias=2 * _params(s)[1])


def _no_bias(s: Situation) -> np.ndarray:
    run = _conv if s.layer.kind == "conv" else _dense
    return run(s, bias=np.zeros_like(_params(s)[1]))


def _float16(s: Situation) -> np.ndarray | None:
    """Round operands and result to float16, the sum exact.

    That is float16 arithmetic's result within its rounding, whatever the order of the
    other side's sums.
    """
    with np.errstate(over="ignore"):  # beyond float16's range: not float16 numbers
        if not np.array_equal(s.theirs, s.theirs.astype(np.float16)):
            return None  # float16 arithmetic gives float16 numbers
        params = tuple(p.astype(np.float16).astype(np.float64) for p in _params(s))
        y = KINDS[s.layer.kind].forward(s.layer, params, s.x.astype(np.float16).astype(np.float64))
        return _activate(s, y).astype(np.float16).astype(s.x.dtype)


def _average_pool(s: Situation) -> np.ndarray:
    n, h, w, c = s.x.shape
    x = s.x[:, : h // 2 * 2, : w // 2 * 2]
    pooled: np.ndarray = x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    return pooled  # (N, H/2, W/2, C)


def _fc1_rows(
    reorder: Callable[[np.ndarray, tuple[int, int, int]], np.ndarray],
) -> Callable[[Situation], np.ndarray | None]:
    def recompute(s: Situation) -> np.ndarray | None:
        if s.flat_hwc is None:
            return None
        return _dense(s, kernel=reorder(_params(s)[0], s.flat_hwc))

    return recompute


def _flatten_chw(s: Situation) -> np.ndarray | None:
    if s.x.ndim != 4:
        return None
    return s.x.transpose(0, 3, 1, 2).reshape(len(s.x), -1)  # (N, C*H*W)


def _dropout_on(s: Situation) -> np.ndarray | None:
    """Where the other side zeroed units that should be positive, and scaled the rest."""
    y = KINDS[s.layer.kind].forward(s.layer, s.params, s.x)
    y = _activate(s, y)
    if s.theirs.shape != y.shape:
        return None
    dropped = (s.theirs == 0) & (y > 0)
    kept = s.theirs != 0
    if not dropped.any() or not kept.any():
        return None
    scale = float(np.sum(s.theirs[kept] * y[kept]) / max(np.sum(y[kept] ** 2), 1e-300))
    return np.where(kept, y * scale, 0.0)


def _softmax_batch_axis(s: Situation) -> np.ndarray | None:
    if not s.last or s.layer.kind != "dense":
        return None
    return ops.softmax(ops.dense(s.x, *_params(s)), axis=0)  # each column sums to 1


#: The usual bugs inside the network, tried in this order at a failing layer.
USUAL_BUGS: tuple[UsualBug, ...] = (
    UsualBug(
        "flipped_kernel", ("conv",), "a flipped kernel",
        "your implementation computes a true convolution (the kernel turned by 180 degrees), "
        "where VGG's layers compute a cross-correlation",
        lambda s: _conv(s, kernel=_params(s)[0][::-1, ::-1]),
    ),
    UsualBug(
        "transposed_kernel", ("conv",), "a transposed kernel",
        "your kernel's height and width axes are swapped (KH, KW read as KW, KH)",
        lambda s: _conv(s, kernel=_params(s)[0].transpose(1, 0, 2, 3)),
    ),
    UsualBug(
        "swapped_channels", ("conv",), "swapped input channels",
        "your layer reads its input channels in reverse order (RGB for BGR at the first layer)",
        lambda s: _conv(s, kernel=_params(s)[0][:, :, ::-1]),
    ),
    UsualBug(
        "valid_padding", ("conv",), "'valid' padding",
        "your convolution pads nothing, so the map shrinks by 2; VGG pads by 1 ('same')",
        lambda s: _conv(s, padding="valid"),
    ),
    UsualBug(
        "missing_relu", ("conv", "dense"), "the layer without its ReLU",
        "your layer's ReLU is missing", _without_relu,
    ),
    UsualBug(
        "bias_twice", ("conv", "dense"), "the bias added twice",
        "your layer adds its bias twice", _bias_twice,
    ),
    UsualBug(
        "missing_bias", ("conv", "dense"), "the layer without its bias",
        "your layer adds no bias", _no_bias,
    ),
    UsualBug(
        "average_pooling", ("pool",), "average pooling",
        "your pooling averages each 2x2 window; VGG takes its maximum", _average_pool,
    ),
    UsualBug(
        "flatten_chw_rows", ("dense",), "the kernel's rows in C, H, W order",
        "your flatten is H, W, C (NHWC) but your fc1 kernel's rows are in C, H, W order "
        "(PyTorch's), or the reverse: permute the rows of fc1 or flatten in the other order",
        _fc1_rows(hwc_rows_to_chw),
    ),
    UsualBug(
        "flatten_hwc_rows", ("dense",), "the kernel's rows in H, W, C order, read as C, H, W",
        "your fc1 kernel's rows follow the other flatten order than your flatten's: permute "
        "the rows of fc1 (vgg_np.formats.layouts.chw_rows_to_hwc)",
        _fc1_rows(chw_rows_to_hwc),
    ),
    UsualBug(
        "flatten_chw", ("flatten",), "a C, H, W flatten",
        "your flatten runs over C, then H, then W (NCHW order) where Keras's runs over "
        "H, W, C; harmless only if fc1's rows are permuted to match",
        _flatten_chw,
    ),
    UsualBug(
        "dropout_on", ("dense",), "dropout left on",
        "dropout is on at inference: units are zeroed at random and the others scaled up "
        "(call eval() / training=False)",
        _dropout_on,
    ),
    UsualBug(
        "softmax_axis", ("dense",), "a softmax over the batch axis",
        "your softmax runs over axis 0, so each column (class) sums to 1 over the batch "
        "instead of each row (image) over the classes",
        _softmax_batch_axis,
    ),
    UsualBug(
        "float16", ("conv", "dense"), "float16 arithmetic",
        "your layer computes in float16 (reduced precision): its outputs are float16 "
        "numbers within float16 rounding of the exact result",
        _float16, FLOAT16_SLACK,
    ),
)  # fmt: skip


# -- the input: preprocessing of the raw pictures ------------------------------------------


def _mean_of(mode: str) -> np.ndarray:
    """Return what `mode` subtracts, in its own units and channel order."""
    if mode == "caffe":
        return np.array(CAFFE_BGR_MEAN)
    if mode == "torch":
        mean: np.ndarray = np.array(TORCH_RGB_MEAN) / np.array(TORCH_RGB_STD)  # in stds
        return mean
    return np.ones(3)


def _shifted(dy: int, dx: int) -> Callable[[Situation], np.ndarray]:
    """Move the expected input by (dy, dx) pixels; the rows it uncovers come from theirs."""

    def recompute(s: Situation) -> np.ndarray:
        expected = preprocess_input(s.x, s.mode).astype(np.float64)
        moved = s.theirs.astype(np.float64, copy=True)
        h, w = expected.shape[1:3]
        target = (slice(None), slice(max(dy, 0), h + min(dy, 0)), slice(max(dx, 0), w + min(dx, 0)))
        source = (
            slice(None),
            slice(max(-dy, 0), h + min(-dy, 0)),
            slice(max(-dx, 0), w + min(-dx, 0)),
        )
        moved[target] = expected[source]
        return moved

    return recompute


def _other_mode(mode: str) -> UsualBug:
    return UsualBug(
        f"{mode}_preprocessing", ("input",), f"{mode} preprocessing",
        f"your input was preprocessed the {mode!r} way (its mean, scale and channel order)",
        lambda s: None if s.mode == mode else preprocess_input(s.x, mode),
    )  # fmt: skip


#: The usual preprocessing bugs, tried on the input row against the raw pictures.
INPUT_BUGS: tuple[UsualBug, ...] = (
    UsualBug(
        "swapped_channels", ("input",), "the expected preprocessing of the pictures in BGR",
        "channels look swapped: RGB where BGR is expected, or the reverse",
        lambda s: preprocess_input(s.x[..., ::-1], s.mode),
    ),
    UsualBug(
        "swapped_after", ("input",), "the expected preprocessing with its channels reversed",
        "channels look swapped: each channel has its own mean subtracted, in the reverse "
        "channel order",
        lambda s: preprocess_input(s.x, s.mode)[..., ::-1],
    ),
    UsualBug(
        "no_mean", ("input",), "the expected preprocessing without the mean subtracted",
        "the mean was not subtracted",
        lambda s: preprocess_input(s.x, s.mode) + _mean_of(s.mode),
    ),
    UsualBug(
        "mean_reversed", ("input",), "the mean subtracted in the reverse channel order",
        "the mean was subtracted in R, G, B order where the channels are B, G, R (or the reverse)",
        lambda s: preprocess_input(s.x, s.mode) + _mean_of(s.mode) - _mean_of(s.mode)[::-1],
    ),
    UsualBug(
        "scaled_pixels", ("input",), "the expected preprocessing of pixels scaled to [0, 1]",
        "your pixels were divided by 255 before the mode's own scaling",
        lambda s: preprocess_input(s.x / 255.0, s.mode),
    ),
    *(_other_mode(mode) for mode in MODES),
    *(
        UsualBug(
            f"shifted_{name}", ("input",), f"the expected input moved one pixel {name}",
            f"your crop or resize is off by one pixel (the picture sits one pixel {name})",
            _shifted(dy, dx),
        )
        for name, dy, dx in (("down", 1, 0), ("up", -1, 0), ("right", 0, 1), ("left", 0, -1))
    ),
)  # fmt: skip


# -- choosing ------------------------------------------------------------------------------


def relative_error(actual: ArrayLike, exact: ArrayLike) -> float:
    """Return max |actual - exact| / max |exact|: the error figure quoted across vgg_np.

    The scale is that of `exact` (the reference), 1 where it is all zeros or empty; inf
    when the shapes differ (a mismatch is never a small error). Computed in the wider of
    the two floating dtypes (float64 for integers): float32 weights of 400 MB are not
    copied to float64; cast one side to float64 for a float64 figure.

    Parameters
    ----------
    actual, exact : array_like
        The values checked and the reference they are checked against.

    Returns
    -------
    float

    Examples
    --------
    >>> relative_error([1.0, -2.0, 3.5], [1.0, -2.0, 4.0])
    0.125
    >>> relative_error(np.zeros(3), np.zeros(2))
    inf
    """
    actual, exact = _floating(actual), _floating(exact)
    if actual.shape != exact.shape:
        return float("inf")
    error = float(np.max(np.abs(actual - exact), initial=0.0))
    return error / (float(np.max(np.abs(exact), initial=0.0)) or 1.0)


def _floating(x: ArrayLike) -> np.ndarray:
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


def _best(situation: Situation, bugs: Sequence[UsualBug], tolerance: float) -> Cause | None:
    """Return the bug whose recomputation is closest to the other side's output, if close."""
    found = None
    for bug in bugs:
        if situation.layer.kind not in bug.kinds:
            continue
        try:
            candidate = bug.recompute(situation)
        except ValueError:  # the layer cannot be computed that way on this input
            continue
        if candidate is None:
            continue
        error = relative_error(np.asarray(situation.theirs, np.float64), candidate)
        if error <= max(tolerance, bug.slack) and (found is None or error < found.error):
            found = Cause(situation.layer.name, bug.key, bug.what, bug.meaning, error)
    return found


def diagnose(
    layer: Layer,
    params: tuple | None,
    x: NDArray[np.floating],
    theirs: NDArray[np.floating],
    *,
    tolerance: float,
    flat_hwc: tuple[int, int, int] | None = None,
    last: bool = False,
) -> Cause | None:
    """Name the usual bug that reproduces another implementation's output of one layer.

    Parameters
    ----------
    layer : Layer
        The failing layer.
    params : tuple or None
        Its tensors (Keras layout), in the dtype to compute in (float64: the oracle).
    x : ndarray
        The other implementation's own input to the layer, NHWC.
    theirs : ndarray
        The other implementation's output of the layer, NHWC.
    tolerance : float
        Largest relative error at which a recomputation counts as reproducing it.
    flat_hwc : tuple of int, optional
        (H, W, C) of the map the layer's input was flattened from (the first dense layer).
    last : bool, default False
        The layer is the network's output.

    Returns
    -------
    Cause or None
        The entry of `USUAL_BUGS` with the smallest error within tolerance, or None when
        none reproduces the output.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> kernel, bias = rng.standard_normal((3, 3, 2, 4)), np.zeros(4)
    >>> x = rng.standard_normal((1, 6, 5, 2))
    >>> theirs = ops.relu(ops.conv2d(x, kernel[::-1, ::-1], bias))  # a true convolution
    >>> diagnose(Layer("conv", "conv", 4, "relu"), (kernel, bias), x, theirs, tolerance=1e-5).key
    'flipped_kernel'
    """
    situation = Situation(layer, params, np.asarray(x), np.asarray(theirs), flat_hwc, last)
    return _best(situation, USUAL_BUGS, tolerance)


def diagnose_input(
    pixels: NDArray, theirs: NDArray[np.floating], mode: str, *, tolerance: float
) -> Cause | None:
    """Name the usual preprocessing bug that turns `pixels` into the other side's input.

    Parameters
    ----------
    pixels : ndarray, shape (N, H, W, 3)
        The raw pictures, RGB in [0, 255], as vgg_np decoded and resized them.
    theirs : ndarray, shape (N, H, W, 3)
        The other implementation's input tensor, NHWC.
    mode : {"caffe", "torch", "tf"}
        The preprocessing the weights expect.
    tolerance : float

    Returns
    -------
    Cause or None
        The entry of `INPUT_BUGS` closest to `theirs`, if within tolerance.

    Examples
    --------
    >>> pixels = np.random.default_rng(0).integers(0, 256, (1, 4, 4, 3)).astype(np.uint8)
    >>> rgb = preprocess_input(pixels[..., ::-1])  # caffe's mean, but the channels left RGB
    >>> print(diagnose_input(pixels, rgb, "caffe", tolerance=1e-5).meaning)
    channels look swapped: RGB where BGR is expected, or the reverse
    """
    situation = Situation(
        Layer("input", "input"), None, np.asarray(pixels, np.float64), np.asarray(theirs),
        mode=mode,
    )  # fmt: skip
    return _best(situation, INPUT_BUGS, tolerance)
