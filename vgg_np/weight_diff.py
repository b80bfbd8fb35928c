"""Weights checked on their own: tensor by tensor against a reference, each difference named.

`diff_weights` compares the weights another implementation holds (in vgg_np's layout)
with the reference's and explains each tensor that differs by the first of `TRANSFORMS`
that makes them equal: transposed, flipped, channels reversed, swapped or permuted, fc1's
flatten order, zeroed, scaled. The transforms are a table (data), each a small function
of the reference tensor; `vgg_np.adapters` runs the diff before every comparison.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from vgg_np.diagnose import relative_error
from vgg_np.formats.layouts import chw_rows_to_hwc, hwc_rows_to_chw

__all__ = ["TRANSFORMS", "WEIGHT_RTOL", "TensorDiff", "Transform", "WeightDiff", "diff_weights"]

#: Largest max |yours - reference| / max |reference| for two tensors to count as equal:
#: the same float32 numbers after any layout conversion differ by 0; a float16 copy of
#: them by up to 4.9e-4 (and fails, as it should: its activations differ too).
WEIGHT_RTOL = 1e-6

# What each tensor of a layer is called, by how many it has.
_TENSOR_NAMES = {2: ("kernel", "bias"), 4: ("gamma", "beta", "moving_mean", "moving_variance")}

#: A transform's function: ``(reference, yours, channels) -> (candidate, detail) or None``.
Apply = Callable[[np.ndarray, np.ndarray, int], "tuple[np.ndarray, str] | None"]


def _fixed(function: Callable[[np.ndarray], np.ndarray]) -> Apply:
    """Make a transform without a parameter: `function` of the reference tensor."""
    return lambda reference, _yours, _channels: (function(reference), "")


def _permuted(axis: int) -> Apply:
    """Make a transform reordering the reference's slices along `axis` to match yours."""

    def apply(
        reference: np.ndarray, yours: np.ndarray, _channels: int
    ) -> tuple[np.ndarray, str] | None:
        if reference.shape != yours.shape or reference.shape[axis] < 2:
            return None
        # A random projection of each slice is its signature: equal slices sort alike.
        ref_rows = np.moveaxis(reference, axis, 0).reshape(reference.shape[axis], -1)
        your_rows = np.moveaxis(yours, axis, 0).reshape(yours.shape[axis], -1)
        probe = np.random.default_rng(0).standard_normal(ref_rows.shape[1])
        order = np.empty(ref_rows.shape[0], int)
        order[np.argsort(your_rows @ probe)] = np.argsort(ref_rows @ probe)
        if np.array_equal(order, np.arange(order.size)):
            return None
        shown = ", ".join(map(str, order[:8])) + (", ..." if order.size > 8 else "")
        return np.take(reference, order, axis=axis), f" (yours[i] = reference[{shown}])"

    return apply


def _scaled(
    reference: np.ndarray, yours: np.ndarray, _channels: int
) -> tuple[np.ndarray, str] | None:
    """Scale the reference by the one factor that fits yours best (least squares)."""
    if reference.shape != yours.shape:
        return None
    reference64 = reference.astype(np.float64)  # sums of millions of products
    norm = float(np.vdot(reference64, reference64))
    if norm == 0.0:
        return None
    factor = float(np.vdot(reference64, yours.astype(np.float64))) / norm
    return reference * factor, f" by {factor:.6g}"


def _flatten_order(to_chw: bool) -> Apply:
    """fc1's rows reordered between H, W, C and C, H, W (an NHWC against an NCHW flatten)."""

    def apply(
        reference: np.ndarray, _yours: np.ndarray, channels: int
    ) -> tuple[np.ndarray, str] | None:
        side = round(np.sqrt(reference.shape[0] / channels)) if channels else 0
        if side < 2 or side * side * channels != reference.shape[0]:
            return None
        convert = hwc_rows_to_chw if to_chw else chw_rows_to_hwc
        grid = (side, side, channels) if to_chw else (channels, side, side)
        return convert(reference, grid), ""

    return apply


@dataclass(frozen=True)
class Transform:
    """A way a correct tensor is commonly mangled while loading: one row of `TRANSFORMS`.

    Attributes
    ----------
    name : str
        Said of your tensor: "yours = the reference <name>".
    ranks : tuple of int
        The tensor ranks it applies to: 4 for convolution kernels (HWIO), 2 for dense
        kernels ``(in, out)``, 1 for biases and batch-norm vectors.
    apply : callable
        ``(reference, yours, channels) -> (candidate, detail) or None``: the reference
        transformed (``channels``: those of the last convolution, for fc1's grid).

    Examples
    --------
    >>> flip = next(t for t in TRANSFORMS if t.name.startswith("flipped ("))
    >>> kernel = np.arange(4.0).reshape(2, 2, 1, 1)  # (KH, KW, C, O)
    >>> flip.apply(kernel, kernel, 0)[0][..., 0, 0]
    array([[3., 2.],
           [1., 0.]])
    """

    name: str
    ranks: tuple[int, ...]
    apply: Apply


_FLATTEN_ORDER = (
    "with fc1's rows in the other flatten order (C, H, W against H, W, C: a kernel moved "
    "between an NCHW and an NHWC network unreordered)"
)

#: The candidate transforms, tried in this order; the first that makes the reference
#: equal to yours names the difference. HWIO kernels are ``(KH, KW, C, O)``.
TRANSFORMS: tuple[Transform, ...] = (
    Transform("transposed (KH and KW swapped)", (4,),
              _fixed(lambda k: k.transpose(1, 0, 2, 3))),  # (KH, KW, C, O) -> (KW, KH, C, O)
    Transform("flipped (rotated 180 degrees: a true convolution, not cross-correlation)", (4,),
              _fixed(lambda k: k[::-1, ::-1])),
    Transform("flipped vertically (KH reversed)", (4,), _fixed(lambda k: k[::-1])),
    Transform("flipped horizontally (KW reversed)", (4,), _fixed(lambda k: k[:, ::-1])),
    Transform("with input channels reversed (RGB <-> BGR on the first convolution)", (4,),
              _fixed(lambda k: k[:, :, ::-1])),
    Transform("with input and output channels swapped (OIHW read as IOHW)", (4,),
              _fixed(lambda k: k.transpose(0, 1, 3, 2))),  # (KH, KW, C, O) -> (KH, KW, O, C)
    Transform("transposed ((out, in) read as (in, out))", (2,), _fixed(lambda k: k.T)),
    # Either way round it is one bug: an fc1 kernel moved between an NCHW flatten
    # (C, H, W: PyTorch, ONNX, Theano) and an NHWC one (H, W, C: Keras) without reordering.
    Transform(_FLATTEN_ORDER, (2,), _flatten_order(to_chw=True)),
    Transform(_FLATTEN_ORDER, (2,), _flatten_order(to_chw=False)),
    Transform("with output channels permuted", (4, 2, 1), _permuted(-1)),
    Transform("with input channels permuted", (4,), _permuted(2)),
    Transform("with input rows permuted", (2,), _permuted(0)),
    Transform("zeroed (missing)", (4, 2, 1), _fixed(np.zeros_like)),
    Transform("scaled", (4, 2, 1), _scaled),
)  # fmt: skip


def _explain(reference: np.ndarray, yours: np.ndarray, channels: int) -> str | None:
    """Name the first transform of `TRANSFORMS` that turns the reference into yours, or None."""
    for transform in TRANSFORMS:
        if reference.ndim not in transform.ranks:
            continue
        found = transform.apply(reference, yours, channels)
        if found is None or found[0].shape != yours.shape:
            continue
        candidate, detail = found
        if relative_error(yours, candidate) <= WEIGHT_RTOL:
            return transform.name + detail
    return None


@dataclass(frozen=True)
class TensorDiff:
    """One tensor of the artifact against the reference.

    Attributes
    ----------
    layer, tensor : str
        E.g. ``"block1_conv1"``, ``"kernel"``.
    shape, reference_shape : tuple
        Yours and the reference's, both in vgg_np's (Keras) layout.
    max_rel : float
        max |yours - reference| / max |reference|; inf when the shapes differ.
    explanation : str or None
        The transform that makes them equal (`TRANSFORMS`), or None.

    Examples
    --------
    >>> row = TensorDiff("fc1", "bias", (4,), (4,), 1.0, "zeroed (missing)")
    >>> row.equal, row.describe()
    (False, 'fc1 bias: yours = the reference zeroed (missing)')
    """

    layer: str
    tensor: str
    shape: tuple
    reference_shape: tuple
    max_rel: float
    explanation: str | None = None

    @property
    def equal(self) -> bool:
        """Whether the tensors agree within `WEIGHT_RTOL`; see the class example."""
        return bool(self.max_rel <= WEIGHT_RTOL)

    def describe(self) -> str:
        """Return one line naming the difference; see the class example."""
        what = f"{self.layer} {self.tensor}"
        if self.explanation:
            return f"{what}: yours = the reference {self.explanation}"
        if self.shape != self.reference_shape:
            return f"{what}: shape {self.shape}, the reference's {self.reference_shape}"
        return f"{what}: differs (max rel {self.max_rel:.2e}); no candidate transform explains it"


@dataclass(frozen=True)
class WeightDiff:
    """The artifact's weights against the reference's, tensor by tensor.

    Attributes
    ----------
    rows : tuple of TensorDiff
        Every tensor present on both sides, in layer order.
    missing, extra : tuple of str
        Layers of the reference absent from the artifact, and the reverse.

    Examples
    --------
    >>> same = TensorDiff("fc1", "kernel", (8, 4), (8, 4), 0.0)
    >>> diff = WeightDiff((same,), missing=("fc2",))
    >>> diff.passed, diff.lines()
    (False, ['weights: 1/1 tensors equal to the reference', 'weights: not in yours: fc2'])
    """

    rows: tuple[TensorDiff, ...]
    missing: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()

    @property
    def differing(self) -> tuple[TensorDiff, ...]:
        """The rows that are not equal; see the class example."""
        return tuple(row for row in self.rows if not row.equal)

    @property
    def passed(self) -> bool:
        """True when all tensors are equal, no layer missing or extra; see the class example."""
        return not self.differing and not self.missing and not self.extra

    def lines(self) -> list[str]:
        """Return the summary line, then one line per difference; see the class example."""
        equal = len(self.rows) - len(self.differing)
        lines = [f"weights: {equal}/{len(self.rows)} tensors equal to the reference"]
        lines += [row.describe() for row in self.differing]
        if self.missing:
            lines.append(f"weights: not in yours: {', '.join(self.missing)}")
        if self.extra:
            lines.append(f"weights: not in the reference: {', '.join(self.extra)}")
        return lines

    def __str__(self) -> str:
        return "\n".join(self.lines())


def diff_weights(
    reference: Mapping[str, tuple[ArrayLike, ...]], yours: Mapping[str, tuple[ArrayLike, ...]]
) -> WeightDiff:
    """Compare weights tensor by tensor and name the transform behind each difference.

    Parameters
    ----------
    reference, yours : mapping
        Keras layer name -> (kernel, bias) (or a batch norm's four vectors), both in
        vgg_np's layout: HWIO kernels, dense kernels ``(in, out)``, fc1's rows in H, W, C
        order (what `vgg_np.VGG.weights` gives, and the adapters' readers produce).

    Returns
    -------
    WeightDiff
        Each differing tensor explained by the first of `TRANSFORMS` that reproduces it.

    Examples
    --------
    >>> k = np.arange(3 * 3 * 3 * 4, dtype=np.float32).reshape(3, 3, 3, 4)  # (KH, KW, C, O)
    >>> b = np.arange(4.0)
    >>> ref = {"block1_conv1": (k, b)}
    >>> print(diff_weights(ref, {"block1_conv1": (k.transpose(1, 0, 2, 3), b * 2)}))
    weights: 0/2 tensors equal to the reference
    block1_conv1 kernel: yours = the reference transposed (KH and KW swapped)
    block1_conv1 bias: yours = the reference scaled by 2
    """
    convs = [name for name in reference if np.ndim(reference[name][0]) == 4]
    channels = np.shape(reference[convs[-1]][0])[-1] if convs else 0
    rows = []
    for layer, tensors in reference.items():
        if layer not in yours:
            continue
        names = _TENSOR_NAMES.get(len(tensors), tuple(map(str, range(len(tensors)))))
        for name, ref, mine in zip(names, tensors, yours[layer], strict=False):
            ref, mine = np.asarray(ref), np.asarray(mine)  # float32: VGG16's fc1 is 411 MB
            error = relative_error(mine, ref)
            explanation = None if error <= WEIGHT_RTOL else _explain(ref, mine, channels)
            rows.append(TensorDiff(layer, name, mine.shape, ref.shape, error, explanation))
    missing = tuple(name for name in reference if name not in yours)
    extra = tuple(name for name in yours if name not in reference)
    return WeightDiff(tuple(rows), missing, extra)
