"""Adapters: run another VGG by its own names, check its weights, compare it with vgg_np.

Each adapter takes the reference weights from a file the user names (or
``weights="imagenet"``), never only from the thing under test. When the artifact carries
weights of its own (a torch module's state dict, a Keras model's layers, an ONNX graph's
initializers), `vgg_np.weight_diff.diff_weights` compares them with the reference tensor
by tensor first and names, for each one that differs, the transform that would make them
equal (transposed, flipped, swapped channels, scaled, fc1's flatten order...).

The activations are captured by the artifact's own names: a torch module's by its module
names (a map inferred from its module tree, `torch_layer_names`), a Keras model's by its
layer names, an ONNX graph's by its node outputs. `vgg_np.compare.compare_activations`
then compares them row by row.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from vgg_np import hub
from vgg_np.architecture import infer_architecture
from vgg_np.compare import DEFAULT_TOLERANCE, Comparison, compare_activations
from vgg_np.formats.layouts import chw_rows_to_hwc, dense_names, linear_to_dense, oihw_to_hwio
from vgg_np.model import VGG
from vgg_np.weight_diff import diff_weights

if TYPE_CHECKING:
    # The optional frameworks are not type-checked here (pyproject.toml): their objects
    # are Any to the checker; the names say what is meant.
    import keras
    import torch

__all__ = ["Tap", "compare_keras", "compare_onnx", "compare_torch", "name_map", "torch_layer_names"]

# ---------------------------------------------------------------------------------------
# The reference, and what is said about it
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# Name maps: the artifact's modules or layers named as vgg_np's, from their order
# ---------------------------------------------------------------------------------------

# What a module or layer class is, by its class name (torch and Keras alike).
_KINDS = {
    "Conv2d": "conv", "Conv2D": "conv", "Linear": "dense", "Dense": "dense",
    "MaxPool2d": "pool", "MaxPooling2D": "pool", "AdaptiveAvgPool2d": "adaptive_avg",
    "Flatten": "flatten", "BatchNorm2d": "batch_norm", "BatchNormalization": "batch_norm",
    "ReLU": "activation", "Activation": "activation", "Softmax": "activation",
}  # fmt: skip


@dataclass(frozen=True)
class Tap:
    """Where a vgg_np layer's output is read in another implementation.

    Attributes
    ----------
    name : str
        The module, layer or tensor whose output (or input) equals the layer's output.
    owner : str
        The module or layer holding the weights ('' for layers without any).
    from_input : bool
        Read the input of `name` (``flatten``: the first dense layer's input).

    Examples
    --------
    >>> Tap("classifier.0", from_input=True).key
    'classifier.0:input'
    """

    name: str
    owner: str = ""
    from_input: bool = False

    @property
    def key(self) -> str:
        """The name the captured array is stored under; see the class example."""
        return f"{self.name}:input" if self.from_input else self.name


def name_map(leaves: Iterable[tuple[str, str]]) -> dict[str, Tap]:
    """Name another implementation's layers as vgg_np's, from their kinds and order.

    A convolution or dense layer's output is read after the activation right behind it
    (a torch ``ReLU`` module, a Keras ``Activation``), as vgg_np's layers include theirs;
    dropout is skipped; a pool closes a block; ``flatten`` without a layer of its own is
    the first dense layer's input; the last dense layer is ``predictions``.

    Parameters
    ----------
    leaves : iterable of (name, class name)
        The layers in the order they run, e.g. a torch module's leaf modules.

    Returns
    -------
    dict
        vgg_np layer name -> `Tap`.

    Examples
    --------
    >>> leaves = [("features.0", "Conv2d"), ("features.1", "ReLU"), ("features.2", "MaxPool2d"),
    ...           ("classifier.0", "Linear"), ("classifier.1", "ReLU"),
    ...           ("classifier.2", "Dropout"), ("classifier.3", "Linear")]
    >>> taps = name_map(leaves)
    >>> taps["block1_conv1"]
    Tap(name='features.1', owner='features.0', from_input=False)
    >>> taps["flatten"].key, taps["predictions"].name
    ('classifier.0:input', 'classifier.3')
    """
    groups: list[list] = []  # [kind, owner, output]
    for name, cls in leaves:
        kind = _KINDS.get(cls)
        if kind == "activation" and groups:
            groups[-1][2] = name
        elif kind not in (None, "activation"):
            groups.append([kind, name, name])
    n_dense = sum(kind == "dense" for kind, *_ in groups)
    dense = iter(dense_names(n_dense))
    taps: dict[str, Tap] = {}
    block, conv = 1, 0
    for kind, owner, output in groups:
        if kind == "conv":
            conv += 1
            taps[f"block{block}_conv{conv}"] = Tap(output, owner)
        elif kind == "batch_norm" and conv:
            taps[f"block{block}_conv{conv}_bn"] = Tap(output, owner)
        elif kind == "pool":
            taps[f"block{block}_pool"] = Tap(output)
            block, conv = block + 1, 0
        elif kind in ("adaptive_avg", "flatten"):
            taps["avgpool" if kind == "adaptive_avg" else "flatten"] = Tap(output)
        elif kind == "dense":
            taps.setdefault("flatten", Tap(owner, from_input=True))
            taps[next(dense)] = Tap(output, owner)
    return taps


def _named(taps: dict[str, Tap], names: Mapping[str, str] | None) -> dict[str, Tap]:
    """Put the user's `names` (vgg_np layer -> their name) over the inferred taps."""
    for layer, name in (names or {}).items():
        taps[layer] = Tap(name, taps[layer].owner if layer in taps else "")
    return taps


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


def _unhooked_relus(model: VGG, taps: dict[str, Tap]) -> list[str]:
    """Say which torch layers are read before their ReLU: no ReLU module follows them."""
    known = {layer.name: layer for layer in model.layers}
    unactivated = [
        tap.key
        for layer, tap in taps.items()
        if tap.name == tap.owner and layer in known and known[layer].activation == "relu"
        and known[layer].kind in ("conv", "dense") and model.batch_norm is None
    ]  # fmt: skip
    if not unactivated:
        return []
    return [
        f"no ReLU module after {', '.join(unactivated[:4])}{', ...' * (len(unactivated) > 4)}: "
        "read before any ReLU (a ReLU called as a function cannot be hooked), so a "
        "'missing ReLU' there may be only that; name the ReLU modules with `names=`"
    ]


def _fc1_rows(tensors: dict[str, tuple[np.ndarray, ...]]) -> None:
    """Reorder the first dense kernel's rows from an NCHW flatten's C, H, W to H, W, C."""
    convs = [name for name in tensors if re.fullmatch(r"block\d+_conv\d+", name)]
    first = next((name for name in ("fc1", "predictions") if name in tensors), None)
    channels = tensors[convs[-1]][0].shape[-1] if convs else 0
    if first is None or channels == 0:
        return
    kernel, *rest = tensors[first]
    side = round(np.sqrt(kernel.shape[0] / channels))
    if side * side * channels == kernel.shape[0]:  # else no square grid: left for the diff
        tensors[first] = (chw_rows_to_hwc(kernel, (channels, side, side)), *rest)


# ---------------------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------------------


def torch_layer_names(module: torch.nn.Module) -> dict[str, Tap]:
    """Infer which module of a torch VGG outputs each vgg_np layer (see `name_map`).

    Works on torchvision's tree (``features.N``, ``avgpool``, ``classifier.N``), on a
    plain ``nn.Sequential`` and on any tree whose leaf modules are registered in the
    order they run.

    Parameters
    ----------
    module : torch.nn.Module

    Returns
    -------
    dict
        vgg_np layer name -> `Tap` (module names).

    Examples
    --------
    Needs torch; ``tests/crosscheck/test_adapters.py`` runs it on torchvision's tree:

    >>> torch_layer_names(torchvision_vgg16)["block1_conv1"].name  # doctest: +SKIP
    'features.1'
    """
    return name_map(
        (name, type(child).__name__)
        for name, child in module.named_modules()
        if name and next(child.children(), None) is None
    )


def _torch_weights(
    module: torch.nn.Module, taps: dict[str, Tap]
) -> dict[str, tuple[np.ndarray, ...]]:
    """Read the module's weights in vgg_np's layout, by the layers that own them."""
    named = dict(module.named_modules())
    tensors: dict[str, tuple[np.ndarray, ...]] = {}
    for layer, tap in taps.items():
        owner = named.get(tap.owner)
        if owner is None or getattr(owner, "weight", None) is None:
            continue

        def array(name: str, owner: torch.nn.Module = owner) -> np.ndarray:
            value = getattr(owner, name, None)
            if value is None:  # bias=False: zeros, which the diff names "zeroed"
                return np.zeros(owner.weight.shape[0], np.float32)
            copied: np.ndarray = value.detach().cpu().numpy().copy()
            return copied

        weight = array("weight")
        if weight.ndim == 4:
            tensors[layer] = (oihw_to_hwio(weight), array("bias"))
        elif weight.ndim == 2:
            tensors[layer] = (linear_to_dense(weight), array("bias"))
        else:
            tensors[layer] = tuple(map(array, ("weight", "bias", "running_mean", "running_var")))
    _fc1_rows(tensors)  # torch flattens NCHW
    return tensors


def _training_notes(module: torch.nn.Module, run: Callable[[], torch.Tensor]) -> list[str]:
    """Say when dropout or batch norm runs in training mode (and whether that shows)."""
    import torch

    kinds = (torch.nn.modules.dropout._DropoutNd, torch.nn.modules.batchnorm._BatchNorm)
    training: dict[str, list[str]] = {}  # class name -> the modules in training mode
    for name, m in module.named_modules():
        if m.training and isinstance(m, kinds):
            training.setdefault(type(m).__name__, []).append(name)
    if not training:
        return []
    first, second = run(), run()
    differ = first.shape != second.shape or not torch.equal(first, second)
    what = "; ".join(
        f"{len(names)} {cls}: {', '.join(names[:3])}{', ...' * (len(names) > 3)}"
        for cls, names in training.items()
    )
    said = "outputs differ between two identical calls" if differ else "batch statistics used"
    return [
        f"dropout/BN in training mode: {said} ({what}); vgg_np compares inference: call "
        "module.eval() first (vgg_np left your module as it was)"
    ]


def _run_torch(
    module: torch.nn.Module, x_nchw: np.ndarray, taps: dict[str, Tap]
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Run `module` with forward hooks on `taps`; leave its buffers and torch's RNG as they were."""
    import torch

    named = dict(module.named_modules())
    unknown = sorted({tap.name for tap in taps.values()} - set(named))
    if unknown:
        raise ValueError(f"`names` names modules the module does not have: {unknown}")
    outputs: dict[str, np.ndarray] = {}

    def keep(tap: Tap) -> Callable[[torch.nn.Module, tuple, torch.Tensor], None]:
        def hook(_module: torch.nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            value = inputs[0] if tap.from_input else output
            outputs[tap.key] = value.detach().cpu().numpy().copy()  # before an in-place ReLU

        return hook

    dtype = next(module.parameters(), torch.empty(0)).dtype  # a float64 module takes float64
    batch = torch.from_numpy(np.ascontiguousarray(x_nchw, dtype=np.float32)).to(dtype)
    buffers = {name: b.clone() for name, b in module.named_buffers()}  # BN running stats
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            notes = _training_notes(module, lambda: module(batch))
            hooks = [named[tap.name].register_forward_hook(keep(tap)) for tap in taps.values()]
            try:
                module(batch)
            finally:
                for hook in hooks:
                    hook.remove()
    finally:
        with torch.no_grad():
            for name, b in module.named_buffers():
                b.copy_(buffers[name])
    return outputs, notes


def compare_torch(
    module: torch.nn.Module,
    x: ArrayLike,
    *,
    weights: str | os.PathLike | None = None,
    oracle: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    layers: Iterable[str] | None = None,
    names: Mapping[str, str] | None = None,
    layout: str | None = None,
) -> Comparison:
    """Compare a live torch VGG module with vgg_np, layer by layer, by its module names.

    vgg_np runs the reference weights (`weights`); the module's own weights are first
    diffed against them tensor by tensor (`diff_weights`) and each difference is named.
    The module runs as it is, under ``torch.no_grad``: when dropout or batch norm is in
    training mode a note says so (vgg_np never calls ``module.eval()``); its training
    flags, buffers and torch's random state are left as they were.

    Parameters
    ----------
    module : torch.nn.Module
        A VGG: torchvision's tree (``features``, ``avgpool``, ``classifier``), a plain
        ``nn.Sequential``, or any tree whose leaves are registered in running order.
    x : array_like, shape (N, 3, H, W) or (N, H, W, 3)
        The preprocessed input; an NHWC batch (as `vgg_np.streams.ImageStream` yields)
        is transposed for the module. A note says which layout was assumed.
    weights : str or os.PathLike or "imagenet", optional
        The reference. Without it vgg_np runs the module's own weights, and the
        comparison says loudly that loading bugs cannot show.
    oracle : bool, default False
        Run vgg_np in float64.
    tolerance : float, default 1e-5
    layers : iterable of str, optional
        As for `compare_activations`; default every layer of the reference (flatten and
        torchvision's avgpool when the module has them): one the module lacks fails.
    names : mapping, optional
        vgg_np layer name -> module name, over the inferred map (`torch_layer_names`).
    layout : {"NCHW", "NHWC"}, optional
        The layout of `x` when its shape cannot tell (3 x 3 pictures).

    Returns
    -------
    Comparison

    Raises
    ------
    ValueError
        For an `x` that is no batch of 3-channel pictures or whose layout is ambiguous,
        `names` naming modules the module lacks, or a reference that does not load.

    Examples
    --------
    Needs torch; ``tests/crosscheck/test_adapters.py`` runs it on tiny modules:

    >>> print(compare_torch(model, x, weights="vgg16.pth"))  # doctest: +SKIP
    """
    taps = _named(torch_layer_names(module), names)
    yours = _torch_weights(module, taps)
    model, notes = _reference(weights, yours, "torchvision", oracle=oracle, activation=None)
    x_nhwc, assumed = _layouts(x, 3, layout)
    notes.append(
        f"input read as {assumed}" + ("; given to the module as NCHW" * (assumed == "NHWC"))
    )
    outputs, training = _run_torch(module, x_nhwc.transpose(0, 3, 1, 2), taps)  # -> (N, C, H, W)
    notes += _unhooked_relus(model, taps)
    return _compare(model, x_nhwc, outputs, taps, layers, tolerance, [*training, *notes])


# ---------------------------------------------------------------------------------------
# Keras
# ---------------------------------------------------------------------------------------


def _keras_model(model_or_path: keras.Model | str | os.PathLike) -> keras.Model:
    """Return the Keras model, loaded when given a path (``.keras``, a whole-model ``.h5``)."""
    import keras

    if isinstance(model_or_path, (str, os.PathLike)):
        if not os.path.isfile(model_or_path):
            raise ValueError(f"`model_or_path`: {os.fspath(model_or_path)!r} is not a file")
        return keras.models.load_model(os.fspath(model_or_path), compile=False)
    if not isinstance(model_or_path, keras.Model):
        raise TypeError(
            f"`model_or_path` must be a keras.Model or a path, got {type(model_or_path).__name__}"
        )
    return model_or_path


def compare_keras(
    model_or_path: keras.Model | str | os.PathLike,
    x: ArrayLike,
    *,
    weights: str | os.PathLike | None = None,
    oracle: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    layers: Iterable[str] | None = None,
    names: Mapping[str, str] | None = None,
    layout: str | None = None,
) -> Comparison:
    """Compare a Keras VGG with vgg_np, layer by layer, by its layer names.

    Its layers are named as vgg_np's from their kinds and order (`name_map`: Keras
    Applications' names come out unchanged), its weights are diffed against the
    reference's (`diff_weights`), and one probe model returns every layer's output. The
    reference's output kind follows the model's last activation (softmax or logits).

    Parameters
    ----------
    model_or_path : keras.Model or str or os.PathLike
        A channels-last VGG, or its ``.keras`` / whole-model ``.h5`` file.
    x : array_like, shape (N, H, W, 3) or (N, 3, H, W)
        The preprocessed input; an NCHW batch is transposed for the model.
    weights, oracle, tolerance, layers, names, layout
        As for `compare_torch` (`names`: vgg_np layer -> Keras layer name).

    Returns
    -------
    Comparison

    Raises
    ------
    ValueError, TypeError
        For a path that is no file, an object that is no Keras model, a model nesting
        models (a base under a head of one's own), or `x` as for `compare_torch`.

    Examples
    --------
    Needs keras; ``tests/crosscheck/test_adapters.py`` runs it on tiny models:

    >>> print(compare_keras("my_vgg16.keras", x, weights="vgg16.h5"))  # doctest: +SKIP
    """
    import keras

    net = _keras_model(model_or_path)
    nested = [layer.name for layer in net.layers if isinstance(layer, keras.Model)]
    if nested:  # their layers are not the outer model's: the order would pair them wrongly
        raise ValueError(
            f"`model_or_path`: the layers {nested} are models of their own; compare the VGG "
            f"inside (model.get_layer({nested[0]!r}))"
        )
    taps = _named(name_map((layer.name, type(layer).__name__) for layer in net.layers), names)
    yours = {
        layer: tuple(np.asarray(w) for w in net.get_layer(tap.owner).get_weights())
        for layer, tap in taps.items()
        if tap.owner and net.get_layer(tap.owner).get_weights()
    }
    last = net.layers[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", None)
    activation = "softmax" if activation == "softmax" or type(last).__name__ == "Softmax" else None
    shape = tuple(net.input_shape[1:])  # (H, W, C)
    model, notes = _reference(
        weights, yours, "keras", oracle=oracle, activation=activation, input_shape=shape
    )
    x_nhwc, assumed = _layouts(x, 3, layout)
    notes.append(f"input read as {assumed}; the model's output taken as {activation or 'logits'}")
    keys = {tap.key: tap.name for tap in taps.values()}
    inputs = net.inputs[0] if len(net.inputs) == 1 else net.inputs  # as `x` is given
    probe = keras.Model(inputs, [net.get_layer(name).output for name in keys.values()])
    arrays = probe(x_nhwc.astype(np.float32), training=False)
    outputs = {key: keras.ops.convert_to_numpy(a) for key, a in zip(keys, arrays, strict=True)}
    return _compare(model, x_nhwc, outputs, taps, layers, tolerance, notes)


# ---------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------


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
