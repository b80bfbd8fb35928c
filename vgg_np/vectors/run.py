"""Running the cases against another implementation, one function per kernel or layer.

`run_vectors` converts each case to the implementation's layout, calls its function,
converts the result back and compares it with the case's tolerance; a `VectorsReport`
is the table, one `CaseResult` per case.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from vgg_np.formats.layouts import chw_rows_to_hwc, oihw_to_hwio
from vgg_np.vectors.cases import Case, _nchw, _nhwc, _padding
from vgg_np.vectors.files import _read_cases

__all__ = ["KERNEL_OF_OP", "CaseResult", "VectorsReport", "run_vectors"]

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
    x, b = case.inputs["x"], case.inputs.get("b")
    attrs = case.attributes
    if case.op == "Conv":
        w = case.inputs["w"]
        w = oihw_to_hwio(w) if nhwc else w  # (O, C, KH, KW) -> (KH, KW, C, O)
        return [x, w, b], {"strides": tuple(attrs["strides"]), "padding": _padding(attrs["pads"])}
    if case.op == "MaxPool":
        spatial = {"strides": tuple(attrs["strides"]), "padding": _padding(attrs["pads"])}
        return [x, tuple(attrs["kernel_shape"])], spatial
    if case.op == "Gemm":
        w = case.inputs["w"]
        if nhwc and chw is not None and x.shape[1] == int(np.prod(chw)):
            # after a flatten: an NHWC implementation flattened H, W, C (fc1's rows too)
            c, h, w_ = chw
            x = x.reshape(-1, c, h, w_).transpose(0, 2, 3, 1).reshape(len(x), -1)
            w = chw_rows_to_hwc(w, chw)
        return [x, w, b], {}
    if case.op == "Dropout":
        return [x, case.inputs["mask"], attrs["ratio"]], {}
    return [x], {}


def _run_case(
    case: Case,
    function: Callable[..., ArrayLike],
    relu: Callable[[np.ndarray], ArrayLike] | None,
    nhwc: bool,
    chw: tuple[int, int, int] | None,
) -> np.ndarray:
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

    >>> from vgg_np import VGG, ops
    >>> from vgg_np.vectors import NARROW_VGG16, kernel_cases, layer_cases
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
