"""Compare another VGG implementation with vgg_np, layer by layer, and name where it diverges.

Give it the other implementation's activations (an ``.npz`` keyed by Keras layer names,
torchvision module names or ONNX tensor names, NCHW or NHWC); `vgg_np.adapters` runs live
models (a torch module, a Keras model, an ONNX file run by onnxruntime) for it. vgg_np runs
the same weights on the same input, in float32 or, as the oracle, in float64, and reports
per layer the shape, the layout it detected, the max absolute and relative errors, and
whether they are within tolerance.

Each layer is compared twice: *chained* (vgg_np's own forward pass from the input) and
*alone* (vgg_np recomputes the layer from the other implementation's own input to it), so
that one bug neither hides nor causes the next. Given the raw pictures, vgg_np preprocesses
them itself and compares the other side's input tensor as the first row. At a failing
layer, the usual bugs (`vgg_np.diagnose`) are tried and the one that reproduces the other
side's output is named.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from vgg_np.comparison import Comparison, LayerComparison, Verdict
from vgg_np.diagnose import Cause, diagnose, diagnose_input
from vgg_np.formats import Preprocessing, choose_preprocessing, torchvision
from vgg_np.layers import forward
from vgg_np.model import VGG
from vgg_np.ops import softmax
from vgg_np.preprocess import load_image, preprocess_input
from vgg_np.streams import input_size

__all__ = [
    "Comparison",
    "LayerComparison",
    "Verdict",
    "compare_activations",
    "compare_keras",  # noqa: F822 (in vgg_np.adapters, see __getattr__)
    "compare_onnx",  # noqa: F822 (in vgg_np.adapters, see __getattr__)
    "compare_torch",  # noqa: F822 (in vgg_np.adapters, see __getattr__)
]

#: Default tolerance on max |error| / max |vgg_np|. vgg_np float32 and float64 differ
#: from Keras float32 by at most 4.9e-6 on full-size VGG16 (docs/verification.md).
DEFAULT_TOLERANCE = 1e-5


def source_names(model: VGG, extra: Mapping[str, str] | None = None) -> dict[str, list[str]]:
    """Names another implementation may give each layer's output: Keras's, torchvision's.

    Torchvision names are those of the ReLU after each convolution or hidden linear layer
    (torchvision's convolution modules output values before their ReLU).
    """
    modules = torchvision.module_names(
        model.config.conv_names(), len(model.config.fc) + 1, model.batch_norm is not None
    )
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
    """(max |theirs - mine|, that over max |mine|): vgg_np's usual error figures.

    inf when the shapes differ: a shape mismatch is a failing row, not an error.
    """
    if np.shape(theirs) != np.shape(mine):
        return float("inf"), float("inf")
    error = np.abs(np.asarray(theirs, np.float64) - mine)
    max_abs = float(np.max(error)) if error.size else 0.0
    scale = float(np.max(np.abs(mine))) if mine.size else 0.0
    return max_abs, max_abs / (scale or 1.0)


def _is_distribution(y: np.ndarray) -> bool:
    """Whether every row of `y` looks like softmax output: >= 0 and summing to 1."""
    y = np.asarray(y, np.float64)
    # 1e-3: float16 probabilities over 1000 classes still sum to 1 within it.
    return y.ndim == 2 and bool(np.all(y >= 0) and np.allclose(y.sum(axis=1), 1.0, atol=1e-3))


#: Probabilities below this are taken as vanished (float32 keeps full precision above it).
_VANISHED = 1e-30


def _as_declared(
    model: VGG, theirs: np.ndarray, mine: np.ndarray
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Bring the output layer's two sides to the same quantity: (theirs, mine, note).

    A dump of probabilities where vgg_np gives logits (or the reverse) is compared after
    softmax, and the note says so; a softmax over the wrong axis is left for the diagnosis.
    """
    name = model.layers[-1].name
    theirs_p, mine_p = _is_distribution(theirs), model.layers[-1].activation == "softmax"
    if theirs.shape != mine.shape or theirs_p == mine_p:
        return theirs, mine, None
    if theirs_p:
        note = f"{name}: your output holds probabilities, vgg_np's logits: compared after softmax"
        mine = np.asarray(mine, np.float64)
        # Compared as log-probabilities, relative to the logits' scale: a probability of
        # 1e-9 off by a factor of 2 is a logit off by 0.7, which |p - q| <= 1e-5 would hide.
        # Below _VANISHED both sides hold no information (float32 underflows): equal.
        log_theirs = np.log(np.maximum(np.asarray(theirs, np.float64), _VANISHED))
        log_mine = np.log(np.maximum(softmax(mine), _VANISHED))
        saturated = int(np.sum(np.sum(theirs > _VANISHED, axis=1) < min(2, theirs.shape[1])))
        if saturated:
            note += (
                f"; in {saturated} of {len(theirs)} images one class holds all the probability, "
                "so the other classes' logits cannot be checked there: dump logits"
            )
        return mine + (log_theirs - log_mine), mine, note
    note = f"{name}: your output holds logits, vgg_np's probabilities: compared after softmax"
    return softmax(np.asarray(theirs, np.float64)), mine, note


def _optional_layers(model: VGG, ours: Mapping[str, np.ndarray]) -> set[str]:
    """Layers an implementation of this architecture may lack without being wrong.

    ``flatten`` (a reshape, no torchvision module), dropout (the identity at inference)
    and an adaptive average pool that is the identity at this input size (torchvision's
    ``avgpool`` at 224x224, which a Keras-layout implementation does not have).
    """
    optional, before = set(), None
    for layer in model.layers:
        identity_pool = (
            layer.kind == "adaptive_avg"
            and before is not None
            and ours[layer.name].shape == ours[before].shape
        )
        if layer.kind in ("flatten", "dropout") or identity_pool:
            optional.add(layer.name)
        before = layer.name if layer.name in ours else before
    return optional


def _requested_layers(
    model: VGG, layers: Iterable[str] | None, optional: set[str]
) -> tuple[list[str], set[str]]:
    """Return the layers to compare and those of them that may be absent.

    By default all of the model's, the `optional` ones only when present. Layers named
    explicitly in `layers` must all be present.
    """
    names = [layer.name for layer in model.layers]
    if layers is None:
        return names, optional
    asked = list(layers)
    unknown = [name for name in asked if name not in names]
    if unknown or not asked:
        raise ValueError(
            f"`layers` must name layers of {model.config.name} ({', '.join(names)}), "
            f"got {unknown or asked}"
        )
    return [name for name in names if name in asked], set()


def _refuse_a_subset(model: VGG, reference: Mapping, candidates: dict) -> None:
    """Refuse when the other side has layers vgg_np did not read: never a silent subset."""
    unread = model.weights_info.get("unread_ops")  # an ONNX graph's nodes after the base
    if unread:
        raise ValueError(
            f"vgg_np read only part of the network ({model.weights_info.get('note')}); "
            f"comparing that part would leave the rest ({', '.join(unread)}) unchecked"
        )
    known = {source for layer in model.layers for source in candidates.get(layer.name, [])}
    modules = torchvision.module_names(
        model.config.conv_names(), len(model.config.fc) + 1, model.batch_norm is not None
    )
    vgg_names = {"flatten", "fc1", "fc2", "predictions", *modules.values()}
    extra = sorted(name for name in reference if name in vgg_names and name not in known)
    if extra:
        raise ValueError(
            f"the other implementation's output holds layers the weights' network does not "
            f"have ({', '.join(extra)}): compare with weights of the whole network"
        )


def _to_nhwc(theirs: np.ndarray, mine: np.ndarray, layout: str) -> np.ndarray:
    """Return the other side's array in vgg_np's layout: by `layout`, or a guess if none fits.

    A shape that fits neither layout (a bug changed it) is read NCHW when its second
    axis has vgg_np's channel count and its last does not, so the diagnosis can still
    look at it.
    """
    guess_nchw = theirs.ndim == 4 and theirs.shape[1] == mine.shape[3] != theirs.shape[3]
    if layout.startswith("NCHW") or (not layout and guess_nchw):
        return theirs.transpose(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
    return theirs


def _real(values: ArrayLike, source: str) -> np.ndarray:
    """`values` as an array of real floating-point numbers, else a ValueError naming `source`.

    A complex dump would be compared by its magnitude and pass with any imaginary part;
    integers and booleans are not activations (weights files are held to the same rule).
    """
    array = np.asarray(values)
    if array.dtype.kind != "f":
        raise ValueError(
            f"`reference` {source!r} holds {array.dtype} values: activations must be real "
            "floating-point numbers (float16, float32 or float64)"
        )
    return array


def _read(
    ours: dict[str, np.ndarray],
    reference: Mapping[str, ArrayLike],
    candidates: dict[str, list[str]],
    model: VGG,
) -> tuple[dict[str, tuple[str, str, np.ndarray]], str]:
    """Each layer the other side holds: name -> (source name, layout, NHWC array).

    The layout is "" when the shape fits neither NHWC nor NCHW; a shape such as
    (N, 8, 8, 8) reads both ways and follows the layers whose shape is telling.
    """
    found = {}
    for layer in model.layers:
        source = next((s for s in candidates.get(layer.name, []) if s in reference), None)
        if source is not None and layer.name in ours:  # the engine keeps no dropout output
            theirs = _real(reference[source], source)
            found[layer.name] = (source, theirs, _layouts(theirs.shape, ours[layer.name].shape))
    telling = [next(iter(f)) for _, _, f in found.values() if len(f) == 1 and f != {"-"}]
    usual = max(("NHWC", "NCHW"), key=telling.count) if telling else ""
    read = {}
    for name, (source, theirs, fits) in found.items():
        layout = next(iter(fits)) if len(fits) == 1 else (f"{usual or 'NHWC'}?" if fits else "")
        theirs = _to_nhwc(theirs, ours[name], layout)
        if name == "flatten" and usual == "NCHW" and fits:
            # An NCHW implementation flattens C, H, W: reorder to vgg_np's H, W, C.
            n, h, w, c = ours[_flatten_input(model)].shape
            theirs = theirs.reshape(n, c, h, w).transpose(0, 2, 3, 1).reshape(n, -1)
            layout = "NCHW"
        read[name] = (source, layout, theirs)
    return read, usual


def _alone(
    model: VGG,
    start: np.ndarray,
    read: dict[str, tuple[str, str, np.ndarray]],
    ours: dict[str, np.ndarray],
    tolerance: float,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Run each layer on the other side's own input to it.

    Returns the relative error of each layer so run, and the input of each layer that
    fails (kept for the diagnosis; the others are let go as the walk goes on). Where the
    other side lacks a layer, or its output cannot feed the next layer, the walk goes on
    from vgg_np's own value, so one bug does not hide or cause the next.
    """
    weights, last = model.weights, model.layers[-1].name
    errors, failing, x = {}, {}, np.asarray(start, model.dtype)
    for layer in model.layers:
        try:
            y = forward([layer], weights, x)
        except ValueError:  # their input to it does not fit the layer: not run alone
            y = None
        if layer.name not in read:
            x = y if y is not None else ours.get(layer.name, x)
            continue
        theirs = np.asarray(read[layer.name][2], model.dtype)
        if y is not None:
            pair = _as_declared(model, theirs, y)[:2] if layer.name == last else (theirs, y)
            errors[layer.name] = _errors(*pair)[1]
            if not errors[layer.name] <= tolerance:  # NaN fails too
                failing[layer.name] = x
        usable = y is not None or theirs.shape == ours[layer.name].shape
        x = theirs if usable else ours[layer.name]
    return errors, failing


def _shape_problem(theirs: np.ndarray, mine: np.ndarray) -> str:
    """Say how the shapes differ (the batch size too, when it does)."""
    first = 0 if theirs.shape[:1] != mine.shape[:1] else 1
    return (
        f"shape {'x'.join(map(str, theirs.shape[first:]))} where vgg_np has "
        f"{'x'.join(map(str, mine.shape[first:]))}"
    )


def _row(
    model: VGG,
    name: str,
    read: dict[str, tuple[str, str, np.ndarray]],
    mine: np.ndarray,
    alone: dict[str, float],
    tolerance: float,
    notes: list[str],
) -> LayerComparison:
    """Compare one layer chained; `alone` is its error fed the other side's own input."""
    source, layout, theirs = read[name]
    problem = ""
    if theirs.shape != mine.shape:
        problem = _shape_problem(theirs, mine)
    elif name == model.layers[-1].name:
        theirs, mine, note = _as_declared(model, theirs, mine)
        if note:
            notes.append(note)
            problem = "compared as probabilities"
    max_abs, max_rel = _errors(theirs, mine)
    return LayerComparison(name, source, mine.shape[1:], layout or "?", max_abs, max_rel,
                           tolerance, alone.get(name), problem)  # fmt: skip


def _pictures(
    model: VGG,
    images: Sequence[str | os.PathLike],
    preprocess: str | None,
    resize: str | None,
    x: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, Preprocessing]:
    """vgg_np's own decoding of the raw pictures: (RGB pixels, preprocessed input, mode).

    The pictures are brought to the model's input size; a model that takes any size
    (torchvision's, with its adaptive pool) takes the size of the other side's input `x`.
    """
    paths = [os.fspath(p) for p in images]
    if not paths:
        raise ValueError("`images` is empty: give the pictures the input was made from")
    prep = choose_preprocessing(model.weights_provenance, preprocess=preprocess, resize=resize)
    size = input_size(model)
    if None in model.input_shape[:2] and x is not None and np.ndim(x) == 4:
        h, w = np.shape(x)[1:3]
        size = h if h == w else (h, w)
    pixels = np.stack([load_image(p, size=size, resize=prep.resize) for p in paths])
    return pixels, preprocess_input(pixels, prep.mode), prep  # (N, H, W, 3)


def _user_input(model: VGG, x: ArrayLike | None) -> tuple[np.ndarray | None, str]:
    """Return the other side's input in NHWC, and the layout it was given in."""
    if x is None:
        return None, ""
    given = np.asarray(x)
    channels = model.input_shape[2]
    if given.ndim == 4 and given.shape[1] == channels and given.shape[3] != channels:
        return given.transpose(0, 2, 3, 1), "NCHW"  # (N, C, H, W) -> (N, H, W, C)
    if given.ndim >= 1 and given.shape[0] == 0:
        raise ValueError(f"`x` holds no image: shape {given.shape}, an empty batch")
    return given, "NHWC"


def _diagnoses(
    model: VGG,
    failing: dict[str, np.ndarray],
    read: dict[str, tuple[str, str, np.ndarray]],
    ours: dict[str, np.ndarray],
    tolerance: float,
) -> list[Cause]:
    """Name the usual bug behind each layer that is wrong fed the other side's own input."""
    weights, names = model.weights, [layer.name for layer in model.layers]
    flat_hwc, fc1 = None, None
    if "flatten" in names:  # the first dense layer's rows follow the flatten order
        flat_hwc = ours[_flatten_input(model)].shape[1:]  # (H, W, C)
        after = model.layers[names.index("flatten") + 1 :]
        fc1 = next((layer.name for layer in after if layer.kind == "dense"), None)
    causes = []
    for name, x in failing.items():
        layer = model.layers[names.index(name)]
        theirs = np.asarray(read[name][2], np.float64)
        cause = diagnose(
            layer, weights.get(name), x, theirs, tolerance=tolerance,
            last=layer is model.layers[-1], flat_hwc=flat_hwc if name == fc1 else None,
        )  # fmt: skip
        if cause is not None:
            causes.append(cause)
    return causes


def compare_activations(
    model: VGG,
    x: ArrayLike | None,
    reference: Mapping[str, ArrayLike],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    aliases: Mapping[str, str] | None = None,
    layers: Iterable[str] | None = None,
    images: Sequence[str | os.PathLike] | None = None,
    preprocess: str | None = None,
    resize: str | None = None,
) -> Comparison:
    """Run `model` on `x` and compare every layer with `reference`, chained and alone.

    Parameters
    ----------
    model : VGG
        vgg_np's network with the same weights (``dtype="float64"`` for the oracle).
    x : array_like, shape (N, H, W, 3) or (N, 3, H, W), or None
        The preprocessed input the other implementation was given; NCHW is detected.
        May be None when `images` is given (the input row is then not compared).
    reference : mapping
        The other implementation's outputs, keyed by Keras layer name, torchvision module
        name (``features.1``, ``classifier.4``, ...) or a name given in `aliases`.
    tolerance : float, default 1e-5
        Largest accepted max |error| / max |vgg_np| per layer.
    aliases : mapping, optional
        Keras layer name -> the other implementation's name (e.g. ONNX tensor names).
    layers : iterable of str, optional
        The layers that must be compared (Keras names). Default: all of the model's;
        ``flatten`` (a reshape), dropout and an ``avgpool`` that is the identity at this
        size may be absent (an implementation in Keras's layout has no ``avgpool``).
        Any other layer asked for and missing from `reference` fails the comparison.
    images : sequence of paths, optional
        The raw pictures `x` was made from, in batch order. vgg_np decodes and
        preprocesses them itself (`preprocess`, else by the weights' provenance), runs
        on that, and compares `x` with it as the first row (``input``), naming the
        usual preprocessing bug when one reproduces `x`.
    preprocess : {"caffe", "torch", "tf"}, optional
        With `images`: the preprocessing mode (default: what the weights say).
    resize : {"keras", "torchvision"}, optional
        With `images`: how pictures are brought to the input size (default: the weights').

    Returns
    -------
    Comparison
        Chained and alone errors per layer; the output layer compared as probabilities
        when the other side holds them and vgg_np logits (or the reverse), with a note;
        shape mismatches as failing rows; the likely cause of each failing layer.

    Raises
    ------
    ValueError
        If `x` holds no image, `layers` names a layer the model does not have, no layer
        of `reference` can be matched, or `reference` holds layers the weights'
        network lacks (e.g. a classifier where the file had none).

    Examples
    --------
    >>> from vgg_np.config import VGGConfig
    >>> tiny = VGGConfig("tiny", ((4,), (4,), (8,), (8,), (8,)), fc=(16,), default_size=32)
    >>> model = VGG(tiny, classes=3, seed=0)
    >>> x = np.ones((1, 32, 32, 3), np.float32)
    >>> other = model.activations(x)
    >>> other["fc1"] = other["fc1"] * 1.01  # fc1 1% off, but not the layer after it
    >>> result = compare_activations(model, x, other)
    >>> result.first_divergence, result.wrong_alone  # predictions fed that fc1 differs too
    ('fc1', ('fc1', 'predictions'))
    >>> del other["block1_pool"]
    >>> compare_activations(model, x, other, layers=["block1_conv1", "block1_pool"]).verdict
    'FAIL: only 1/2 layers compared'
    """
    if model.data_format != "channels_last":
        raise ValueError("compare with a channels_last model: layouts are matched per layer")
    given, x_layout = _user_input(model, x)
    rows, notes, causes = [], [], []
    if images is None:
        if given is None:
            raise ValueError("`x` is None: give the other side's input, or the `images`")
        run_x = given
    else:
        pixels, run_x, prep = _pictures(model, images, preprocess, resize, given)
        notes.append(f"input: {len(pixels)} pictures preprocessed by vgg_np: {prep.mode} "
                     f"mode, {prep.resize} resize ({prep.reason})")  # fmt: skip
        if given is not None:
            problem = _shape_problem(given, run_x) if given.shape != run_x.shape else ""
            errors = _errors(given, run_x)
            rows.append(LayerComparison("input", "input", run_x.shape[1:], x_layout, *errors,
                                        tolerance, None, problem))  # fmt: skip
            if not rows[0].passed:
                cause = diagnose_input(pixels, given, prep.mode, tolerance=tolerance)
                causes += [cause] if cause else []
    ours = model.activations(run_x)
    wanted, optional = _requested_layers(model, layers, _optional_layers(model, ours))
    candidates = source_names(model, aliases)
    _refuse_a_subset(model, reference, candidates)
    read, layout = _read(ours, reference, candidates, model)
    if not read:
        raise ValueError(
            f"none of the reference's arrays ({', '.join(list(reference)[:6])}) names a layer of "
            f"{model.config.name}; use Keras layer names (block1_conv1, ...) or torchvision "
            "module names (features.1, ...)"
        )
    alone, failing = _alone(model, given if given is not None else run_x, read, ours, tolerance)
    rows += [
        _row(model, name, read, ours[name], alone, tolerance, notes)
        for name in wanted
        if name in read
    ]
    missing = [name for name in wanted if name not in read and name not in optional]
    if layout:
        notes.append(f"your 4-D arrays read as {layout} (by the layers whose shape tells)")
    causes += _diagnoses(model, {n: failing[n] for n in wanted if n in failing}, read, ours,
                         tolerance)  # fmt: skip
    return Comparison(
        tuple(rows), model.dtype.name, tuple(missing), tuple(notes), layout, tuple(causes)
    )


# compare_torch and compare_onnx live in vgg_np.adapters (below this module in the map, as
# it builds on compare_activations); they are still importable from here, on first use.
_MOVED = {"compare_onnx", "compare_torch", "compare_keras"}


def __getattr__(name: str) -> Any:  # a function of vgg_np.adapters (Any: not imported here)
    if name not in _MOVED:
        raise AttributeError(f"module 'vgg_np.compare' has no attribute {name!r}")
    return getattr(importlib.import_module("vgg_np.adapters"), name)
