"""What a comparison with another implementation finds: one row per layer, and the verdict.

`vgg_np.compare` fills these; they print as the table ``vgg-np compare`` shows and turn
into its ``--json`` object. `passed`, `first_divergence`, `verdict`, `wrong_alone` and
`causes` are all attributes or properties (``verdict()`` also still works).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vgg_np.diagnose import Cause

__all__ = ["Comparison", "LayerComparison", "Verdict"]


@dataclass(frozen=True)
class LayerComparison:
    """One row of a `Comparison`.

    Attributes
    ----------
    max_abs, max_rel : float
        Chained: the other side's output against vgg_np's forward pass from the input
        (inf when the shapes differ).
    alone : float or None
        Max relative error of the layer recomputed by vgg_np from the other side's own
        input to it; None when it could not be (no input of the right shape).
    problem : str
        Why the row could not be compared value by value (a shape mismatch), or how
        it was compared (probabilities after softmax); empty otherwise.

    Examples
    --------
    >>> row = LayerComparison("fc1", "classifier.1", (4096,), "-", 0.02, 1e-3, 1e-5)
    >>> row.passed
    False
    >>> LayerComparison("fc1", "fc1", (16,), "-", 0.0, 0.0, 1e-5, alone=0.5).passed
    False
    """

    name: str
    source_name: str
    shape: tuple
    layout: str
    max_abs: float
    max_rel: float
    tolerance: float
    alone: float | None = None
    problem: str = ""

    @property
    def passed_alone(self) -> bool:
        """Whether the layer, fed the other side's own input, agrees (True when not run).

        See the class example.
        """
        return self.alone is None or bool(self.alone <= self.tolerance)

    @property
    def passed(self) -> bool:
        """Within tolerance chained and alone (NaN fails); see the class example."""
        return bool(self.max_rel <= self.tolerance) and self.passed_alone


class Verdict(str):
    """`Comparison.verdict`: a string, still callable as it was when it was a method.

    Examples
    --------
    >>> v = Verdict("all 3 layers agree within tolerance")
    >>> v == v() == "all 3 layers agree within tolerance"
    True
    """

    __slots__ = ()

    def __call__(self) -> str:
        """Return the verdict as a plain string: the old method's call."""
        return str(self)


@dataclass(frozen=True)
class Comparison:
    """Per-layer errors of another implementation against vgg_np.

    A comparison passes only when every layer asked for was compared and agrees: a
    layer missing from the other side's output fails it, so a dump that matches 1 of
    22 layers cannot pass by accident.

    Attributes
    ----------
    rows : tuple of LayerComparison
        The compared layers, in model order (the input first, when pictures were given).
    oracle_dtype : str
        vgg_np's dtype ("float64" for the oracle).
    missing : tuple of str
        Layers asked for but absent from the other implementation's output.
    notes : tuple of str
        What vgg_np recognised (probabilities against logits, the layout assumed, ...).
    layout : str
        How the other side's 4-D arrays were read: "NHWC" or "NCHW" ("" when none).
    causes : tuple of Cause
        The usual bugs (`vgg_np.diagnose`) that reproduce failing layers.

    Examples
    --------
    >>> ok = LayerComparison("block1_conv1", "features.1", (224, 224, 64), "NCHW", 1e-6, 3e-7, 1e-5)
    >>> bad = LayerComparison("fc1", "classifier.1", (4096,), "-", 0.02, 1e-3, 1e-5)
    >>> result = Comparison((ok, bad), "float64", ())
    >>> result.passed, result.first_divergence, result.verdict
    (False, 'fc1', 'first diverging layer: fc1')
    >>> print(str(result).splitlines()[-1])
    first diverging layer: fc1
    >>> partial = Comparison((ok,), "float64", ("block1_conv2",))
    >>> partial.passed, partial.compared, partial.requested
    (False, 1, 2)
    >>> print(str(partial).splitlines()[-1])
    FAIL: only 1/2 layers compared
    """

    rows: tuple[LayerComparison, ...]
    oracle_dtype: str
    missing: tuple[str, ...]
    notes: tuple[str, ...] = ()
    layout: str = ""
    causes: tuple[Cause, ...] = ()

    @property
    def compared(self) -> int:
        """How many layers were compared; see the `Comparison` example."""
        return len(self.rows)

    @property
    def requested(self) -> int:
        """How many layers were asked for (compared + missing); see the class example."""
        return len(self.rows) + len(self.missing)

    @property
    def first_divergence(self) -> str | None:
        """Name of the first layer whose error exceeds the tolerance, or None.

        See the `Comparison` example.
        """
        return next((r.name for r in self.rows if not r.passed), None)

    @property
    def wrong_alone(self) -> tuple[str, ...]:
        """The layers that disagree even when fed the other side's own input to them.

        See the example of `compare_activations`.
        """
        return tuple(r.name for r in self.rows if not r.passed_alone)

    @property
    def passed(self) -> bool:
        """True when every layer asked for was compared and agrees; see the class example."""
        return self.first_divergence is None and not self.missing

    @property
    def verdict(self) -> Verdict:
        """One line: what passed or the first reason it failed; see the class example.

        A property, like `passed` and `first_divergence`; ``verdict()`` still works.
        """
        if self.first_divergence is not None:
            return Verdict(f"first diverging layer: {self.first_divergence}")
        if self.missing:
            return Verdict(f"FAIL: only {self.compared}/{self.requested} layers compared")
        return Verdict(f"all {self.compared} layers agree within tolerance")

    def to_dict(self) -> dict:
        """Return the comparison as JSON-ready data (non-finite errors become None).

        Examples
        --------
        >>> row = LayerComparison("fc1", "fc1", (4,), "-", float("nan"), float("nan"), 1e-5)
        >>> Comparison((row,), "float32", ("fc2",)).to_dict()["layers"][0]["max_rel"] is None
        True
        """

        def number(value: float | None) -> float | None:
            return value if value is not None and np.isfinite(value) else None

        layers = [
            {"name": r.name, "source_name": r.source_name, "shape": list(r.shape),
             "layout": r.layout, "max_abs": number(r.max_abs), "max_rel": number(r.max_rel),
             "alone": number(r.alone), "tolerance": r.tolerance, "passed": r.passed,
             "problem": r.problem}
            for r in self.rows
        ]  # fmt: skip
        return {
            "passed": self.passed,
            "oracle_dtype": self.oracle_dtype,
            "layout": self.layout,
            "compared": self.compared,
            "requested": self.requested,
            "missing": list(self.missing),
            "first_divergence": self.first_divergence,
            "wrong_alone": list(self.wrong_alone),
            "causes": [cause.to_dict() for cause in self.causes],
            "notes": list(self.notes),
            "verdict": str(self.verdict),
            "layers": layers,
        }

    def __str__(self) -> str:
        first = self.first_divergence
        # 14 columns hold VGG16's names; longer ones (block1_conv1_bn) widen the column
        wide = max([14, *(len(r.name) + 2 for r in self.rows)])
        lines = [
            f"compared with vgg_np in {self.oracle_dtype}; error = max |other - vgg_np|, "
            "relative to max |vgg_np|; alone = the layer fed your own input to it",
            f"{'layer':<{wide}}{'as':<26}{'shape':<18}{'layout':<7}{'max abs':>10}"
            f"{'max rel':>10}{'alone':>10}{'tol':>8}  result",
        ]
        for r in self.rows:
            status = "ok" if r.passed else "FAIL"
            if r.name == first:
                status += "  <-- first divergence"
            if r.problem:
                status += f"  ({r.problem})"
            alone = "-" if r.alone is None else f"{r.alone:.2e}"
            lines.append(
                f"{r.name:<{wide}}{r.source_name[:25]:<26}{'x'.join(map(str, r.shape)):<18}"
                f"{r.layout:<7}{r.max_abs:>10.2e}{r.max_rel:>10.2e}{alone:>10}"
                f"{r.tolerance:>8.0e}  {status}"
            )
        lines.append(f"{self.compared}/{self.requested} layers compared")
        if self.missing:
            lines.append(f"not in the other implementation's output: {', '.join(self.missing)}")
        lines += [f"note: {note}" for note in self.notes]
        if self.wrong_alone:
            lines.append(f"wrong even fed your own input: {', '.join(self.wrong_alone)}")
        lines += [f"likely cause: {cause}" for cause in self.causes]
        lines.append(self.verdict)
        return "\n".join(lines)
