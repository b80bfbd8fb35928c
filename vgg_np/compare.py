"""Compare another VGG implementation with vgg_np, layer by layer, and name where it diverges.

Give it the other implementation's activations (an ``.npz`` keyed by Keras layer names,
torchvision module names or ONNX tensor names, NCHW or NHWC); `vgg_np.adapters` runs live
models (a torch module, a Keras model, an ONNX file run by onnxruntime) for it. vgg_np runs
the same weights on the same input, in float32 or, as the oracle, in float64, and reports per
layer the shape, the layout it detected, the max absolute and relative errors, and whether
they are within tolerance.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from vgg_np.formats import torchvision
from vgg_np.model import VGG
from vgg_np.ops import softmax

__all__ = [
    "Comparison",
    "LayerComparison",
    "compare_activations",
    "compare_keras",  # noqa: F822 (in vgg_np.adapters, see __getattr__)
    "compare_onnx",  # noqa: F822 (in vgg_np.adapters, see __getattr__)
    "compare_torch",  # noqa: F822 (in vgg_np.adapters, see __getattr__)
]

#: Default tolerance on max |error| / max |vgg_np|. vgg_np float32 and float64 differ
#: from Keras float32 by at most 4.9e-6 on full-size VGG16 (docs/verification.md).
DEFAULT_TOLERANCE = 1e-5


@dataclass(frozen=True)
class LayerComparison:
    """One row of a `Comparison`.

    Examples
    --------
    >>> row = LayerComparison("fc1", "classifier.1", (4096,), "-", 0.02, 1e-3, 1e-5)
    >>> row.passed
    False
    """

    name: str
    source_name: str
    shape: tuple
    layout: str
    max_abs: float
    max_rel: float
    tolerance: float

    @property
    def passed(self) -> bool:
        """Whether the relative error is within tolerance (NaN fails); see the class example."""
        return bool(self.max_rel <= self.tolerance)


@dataclass(frozen=True)
class Comparison:
    """Per-layer errors of another implementation against vgg_np.

    A comparison passes only when every layer asked for was compared and agrees: a
    layer missing from the other side's output fails it, so a dump that matches 1 of
    22 layers cannot pass by accident.

    Attributes
    ----------
    rows : tuple of LayerComparison
        The compared layers, in model order.
    oracle_dtype : str
        vgg_np's dtype ("float64" for the oracle).
    missing : tuple of str
        Layers asked for but absent from the other implementation's output.
    notes : tuple of str
        What vgg_np recognised about a failure (e.g. probabilities against logits).

    Examples
    --------
    >>> ok = LayerComparison("block1_conv1", "features.1", (224, 224, 64), "NCHW", 1e-6, 3e-7, 1e-5)
    >>> bad = LayerComparison("fc1", "classifier.1", (4096,), "-", 0.02, 1e-3, 1e-5)
    >>> result = Comparison((ok, bad), "float64", ())
    >>> result.passed, result.first_divergence
    (False, 'fc1')
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
    def passed(self) -> bool:
        """True when every layer asked for was compared and agrees; see the class example."""
        return self.first_divergence is None and not self.missing

    def verdict(self) -> str:
        """One line: what passed or the first reason it failed; see the class example."""
        if self.first_divergence is not None:
            return f"first diverging layer: {self.first_divergence}"
        if self.missing:
            return f"FAIL: only {self.compared}/{self.requested} layers compared"
        return f"all {self.compared} layers agree within tolerance"

    def to_dict(self) -> dict:
        """Return the comparison as JSON-ready data (non-finite errors become None).

        Examples
        --------
        >>> row = LayerComparison("fc1", "fc1", (4,), "-", float("nan"), float("nan"), 1e-5)
        >>> Comparison((row,), "float32", ("fc2",)).to_dict()["layers"][0]["max_rel"] is None
        True
        """

        def number(value: float) -> float | None:
            return value if np.isfinite(value) else None

        layers = [
            {"name": r.name, "source_name": r.source_name, "shape": list(r.shape),
             "layout": r.layout, "max_abs": number(r.max_abs), "max_rel": number(r.max_rel),
             "tolerance": r.tolerance, "passed": r.passed}
            for r in self.rows
        ]  # fmt: skip
        return {
            "passed": self.passed,
            "oracle_dtype": self.oracle_dtype,
            "compared": self.compared,
            "requested": self.requested,
            "missing": list(self.missing),
            "first_divergence": self.first_divergence,
            "notes": list(self.notes),
            "verdict": self.verdict(),
            "layers": layers,
        }

    def __str__(self) -> str:
        first = self.first_divergence
        lines = [
            f"compared with vgg_np in {self.oracle_dtype}; error = max |other - vgg_np|, "
            "relative to max |vgg_np|",
            f"{'layer':<14}{'as':<26}{'shape':<18}{'layout':<7}{'max abs':>10}"
            f"{'max rel':>10}{'tol':>8}  result",
        ]
        for r in self.rows:
            status = "ok" if r.passed else "FAIL"
            if r.name == first:
                status += "  <-- first divergence"
            lines.append(
                f"{r.name:<14}{r.source_name[:25]:<26}{'x'.join(map(str, r.shape)):<18}"
                f"{r.layout:<7}{r.max_abs:>10.2e}{r.max_rel:>10.2e}{r.tolerance:>8.0e}  {status}"
            )
        lines.append(f"{self.compared}/{self.requested} layers compared")
        if self.missing:
            lines.append(f"not in the other implementation's output: {', '.join(self.missing)}")
        lines += [f"note: {note}" for note in self.notes]
        lines.append(self.verdict())
        return "\n".join(lines)


def source_names(model: VGG, extra: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Names another implementation may give each layer's output: Keras's, torchvision's.

    Torchvision names are those of the ReLU after each convolution or hidden linear layer
    (torchvision's convolution modules output values before their ReLU).
    """
    modules = torchvision.module_names(model.config.conv_names(), len(model.config.fc) + 1)
    names = {layer.name: [layer.name] for layer in model.layers}
    for keras_name, torch_name in modules.items():
        names.setdefault(keras_name, []).append(torch_name)
    for keras_name, other in (extra or {}).items():
        names.setdefault(keras_name, []).append(other)
    return names


def _layouts(shape: tuple, expected: tuple) -> set[str]:
    """Which layouts make an array of `shape` fit vgg_np's NHWC `expected` shape."""
    if len(expected) != 4:
        return {"-"} if shape == expected else set()
    n, h, w, c = expected
    return {
        layout
        for layout, fits in (("NHWC", shape == expected), ("NCHW", shape == (n, c, h, w)))
        if fits
    }


def _flatten_input(model: VGG) -> str:
    """Name of the layer whose output `flatten` flattens."""
    names = [layer.name for layer in model.layers]
    return names[names.index("flatten") - 1]


def _errors(theirs: np.ndarray, mine: np.ndarray) -> tuple[float, float]:
    """(max |theirs - mine|, that over max |mine|): vgg_np's usual error figures."""
    error = np.abs(np.asarray(theirs, np.float64) - mine)
    max_abs = float(np.max(error)) if error.size else 0.0
    scale = float(np.max(np.abs(mine))) if mine.size else 0.0
    return max_abs, max_abs / (scale or 1.0)


def _is_distribution(y: np.ndarray) -> bool:
    """Whether every row of `y` looks like softmax output: >= 0 and summing to 1."""
    y = np.asarray(y, np.float64)
    # 1e-3: float16 probabilities over 1000 classes still sum to 1 within it.
    return y.ndim == 2 and bool(np.all(y >= 0) and np.allclose(y.sum(axis=1), 1.0, atol=1e-3))


def _softmax_mismatch(name: str, theirs: np.ndarray, mine: np.ndarray, tolerance: float):
    """Say so when one side holds probabilities and the other logits, else None."""
    theirs_p, mine_p = _is_distribution(theirs), _is_distribution(mine)
    if theirs_p == mine_p:
        return None
    theirs64, mine64 = np.asarray(theirs, np.float64), np.asarray(mine, np.float64)
    if theirs_p:
        what = "probabilities (softmax applied) where vgg_np gives logits"
        _, error = _errors(theirs64, softmax(mine64))
    else:
        what = "logits where vgg_np gives probabilities (softmax applied)"
        _, error = _errors(softmax(theirs64), mine64)
    agree = "they agree" if error <= tolerance else "they still disagree"
    return (
        f"{name}: the other implementation's output holds {what}; after softmax {agree} "
        f"(max rel {error:.1e}); compare the same quantity on both sides"
    )


def _requested_layers(model: VGG, layers) -> tuple[list[str], set[str]]:
    """Return the layers to compare and those of them that may be absent.

    By default all of the model's, and ``flatten`` (a reshape without arithmetic, which
    torchvision has no module for) may be absent: a wrong flatten order shows at fc1.
    Layers named explicitly in `layers` must all be present.
    """
    names = [layer.name for layer in model.layers]
    if layers is None:
        return names, {layer.name for layer in model.layers if layer.kind == "flatten"}
    layers = list(layers)
    unknown = [name for name in layers if name not in names]
    if unknown or not layers:
        raise ValueError(
            f"`layers` must name layers of {model.config.name} ({', '.join(names)}), "
            f"got {unknown or layers}"
        )
    return [name for name in names if name in layers], set()


def _match(ours: dict, reference: Mapping, candidates: dict, wanted: list[str]):
    """Pair each wanted layer with the reference array naming it: (matched, absent)."""
    matched, absent = [], []
    for name in wanted:
        source = next((s for s in candidates.get(name, []) if s in reference), None)
        if source is None:
            absent.append(name)
            continue
        mine, theirs = ours[name], np.asarray(reference[source])
        fits = _layouts(theirs.shape, mine.shape)
        if not fits:
            raise ValueError(
                f"{name} ({source!r}): shape {theirs.shape} fits neither NHWC {mine.shape} nor NCHW"
            )
        matched.append((name, source, theirs, mine, fits))
    return matched, absent


def compare_activations(
    model: VGG,
    x: ArrayLike,
    reference: Mapping[str, ArrayLike],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    aliases: Mapping[str, str] | None = None,
    layers: Iterable[str] | None = None,
) -> Comparison:
    """Run `model` on `x` and compare every layer with `reference`.

    Parameters
    ----------
    model : VGG
        vgg_np's network with the same weights (``dtype="float64"`` for the oracle).
    x : array_like, shape (N, H, W, 3) or (N, 3, H, W)
        The preprocessed input the other implementation was given; NCHW is detected.
    reference : mapping
        The other implementation's outputs, keyed by Keras layer name, torchvision module
        name (``features.1``, ``classifier.4``, ...) or a name given in `aliases`.
    tolerance : float, default 1e-5
        Largest accepted max |error| / max |vgg_np| per layer.
    aliases : mapping, optional
        Keras layer name -> the other implementation's name (e.g. ONNX tensor names).
    layers : iterable of str, optional
        The layers that must be compared (Keras names). Default: all of the model's;
        ``flatten``, a reshape without arithmetic (torchvision has no module for it), is
        compared when `reference` holds it. Any layer asked for and missing from
        `reference` fails the comparison.

    Returns
    -------
    Comparison
        With a note when the last layer holds probabilities on one side and logits on
        the other.

    Raises
    ------
    ValueError
        If `x` holds no image, `layers` names a layer the model does not have, no layer
        of `reference` can be matched, or a matched array has a shape that fits neither
        NHWC nor NCHW.

    Examples
    --------
    >>> from vgg_np.config import VGGConfig
    >>> tiny = VGGConfig("tiny", ((4,), (4,), (8,), (8,), (8,)), fc=(16,), default_size=32)
    >>> model = VGG(tiny, classes=3, seed=0)
    >>> x = np.ones((1, 32, 32, 3), np.float32)
    >>> other = model.activations(x)
    >>> other["fc1"] = other["fc1"] * 1.01  # a 1% error from fc1 on
    >>> compare_activations(model, x, other).first_divergence
    'fc1'
    >>> del other["block1_pool"]
    >>> compare_activations(model, x, other, layers=["block1_conv1", "block1_pool"]).verdict()
    'FAIL: only 1/2 layers compared'
    """
    if model.data_format != "channels_last":
        raise ValueError("compare with a channels_last model: layouts are matched per layer")
    x = np.asarray(x)
    if x.ndim == 4 and x.shape[1] == model.input_shape[2] and x.shape[3] != model.input_shape[2]:
        x = x.transpose(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
    if x.ndim >= 1 and x.shape[0] == 0:
        raise ValueError(f"`x` holds no image: shape {x.shape}, an empty batch")
    wanted, optional = _requested_layers(model, layers)
    ours = model.activations(x)
    matched, absent = _match(ours, reference, source_names(model, aliases), wanted)
    missing = [name for name in absent if name not in optional]
    if not matched:
        raise ValueError(
            f"none of the reference's arrays ({', '.join(list(reference)[:6])}) names a layer of "
            f"{model.config.name}; use Keras layer names (block1_conv1, ...) or torchvision "
            "module names (features.1, ...)"
        )
    # A shape like (N, 8, 8, 8) reads both ways: follow the layers whose shape is telling.
    telling = [next(iter(f)) for *_, f in matched if len(f) == 1 and f != {"-"}]
    usual = max(("NHWC", "NCHW"), key=telling.count)
    rows, notes = [], []
    for name, source, theirs, mine, fits in matched:
        layout = next(iter(fits)) if len(fits) == 1 else f"{usual}?"
        if layout.startswith("NCHW"):
            theirs = theirs.transpose(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        elif name == "flatten" and usual == "NCHW":
            # An NCHW implementation flattens C, H, W: reorder to vgg_np's H, W, C.
            n, h, w, c = ours[_flatten_input(model)].shape
            theirs = theirs.reshape(n, c, h, w).transpose(0, 2, 3, 1).reshape(n, -1)
            layout = "NCHW"
        max_abs, max_rel = _errors(theirs, mine)
        row = LayerComparison(name, source, mine.shape[1:], layout, max_abs, max_rel, tolerance)
        rows.append(row)
        if not row.passed and name == model.layers[-1].name:
            notes.append(_softmax_mismatch(name, theirs, mine, tolerance))
    return Comparison(tuple(rows), model.dtype.name, tuple(missing), tuple(filter(None, notes)))


# compare_torch and compare_onnx live in vgg_np.adapters (below this module in the map, as
# it builds on compare_activations); they are still importable from here, on first use.
_MOVED = {"compare_onnx", "compare_torch", "compare_keras"}


def __getattr__(name: str):
    if name not in _MOVED:
        raise AttributeError(f"module 'vgg_np.compare' has no attribute {name!r}")
    return getattr(importlib.import_module("vgg_np.adapters"), name)
