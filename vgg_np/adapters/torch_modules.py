"""A live torch VGG compared with vgg_np by its module names (`compare_torch`).

Its modules are named as vgg_np's layers (`torch_layer_names`), its weights read in
vgg_np's layout and diffed against the reference, and forward hooks capture each layer's
output. torch is imported only when a module is compared.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike

from vgg_np.adapters.reference import _compare, _layouts, _reference
from vgg_np.adapters.taps import Tap, _named, name_map
from vgg_np.compare import DEFAULT_TOLERANCE, Comparison
from vgg_np.formats.layouts import chw_rows_to_hwc, linear_to_dense, oihw_to_hwio
from vgg_np.model import VGG

if TYPE_CHECKING:
    # torch is not type-checked here (pyproject.toml): its objects are Any to the checker.
    import torch


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
