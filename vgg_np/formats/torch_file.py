"""PyTorch ``.pth`` / ``.pt`` state dicts, read only through ``torch.load(weights_only=True)``.

A ``.pth`` file is a pickle, and unpickling runs code. vgg_np never unpickles by itself:
it asks PyTorch's restricted loader, which accepts tensors and plain containers only.
Without PyTorch installed, convert the file to ``.safetensors`` elsewhere.

``torch.load`` does not check the CRC-32 of the zip members it reads, nor their sizes:
vgg_np checks both first (one extra read of the file). vgg_np records the weights'
provenance in the state dict's ``_metadata`` (where PyTorch keeps per-module versions),
so ``model.load_state_dict`` still takes the file as it is.
"""

from __future__ import annotations

import collections
import contextlib
import os
import zipfile
from collections.abc import Iterator, Mapping

import numpy as np

from vgg_np._files import atomic_write
from vgg_np.formats._common import (
    FileFormatError,
    check_regular,
    check_zip,
    verify_zip_crcs,
)
from vgg_np.formats.contract import Family, Provenance, WeightSource
from vgg_np.formats.torchvision import (
    LAYOUT_NAMES,
    check_torchvision,
    conv_names,
    flat_tensors,
    to_state_dict,
)

#: The key of vgg_np's provenance record in a state dict's ``_metadata``.
METADATA_KEY = "vgg_np.provenance"


def _torch():
    try:
        import torch
    except ImportError:
        raise ImportError(
            "PyTorch files need torch (pip install torch==2.13.0); convert them to "
            ".safetensors elsewhere, or write .safetensors instead"
        ) from None
    return torch


def _to_numpy(torch, name: str, tensor, where: str) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:  # NumPy has no bfloat16: widen it, exactly
        tensor = tensor.float()
    if not tensor.dtype.is_floating_point:
        raise FileFormatError(
            f"{where} tensor {name!r}: weights must be floating point, got {tensor.dtype}"
        )
    return tensor.detach().cpu().numpy()


def load_state_dict(path: str | os.PathLike, where: str | None = None) -> tuple[dict, dict]:
    """Return the tensors of a PyTorch checkpoint as NumPy arrays, and its vgg_np record.

    Raises
    ------
    ImportError
        If PyTorch is not installed.
    FileFormatError
        If the file is damaged or not a loadable state dict (anything but tensors).
    """
    where = where or repr(os.fspath(path))
    torch = _torch()
    check_regular(path)
    if zipfile.is_zipfile(path):  # torch.save's format since PyTorch 1.6
        with zipfile.ZipFile(path) as zf:
            check_zip(zf, where)
            verify_zip_crcs(zf, where)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for refused or damaged pickles
        raise FileFormatError(f"{where}: not a loadable PyTorch state dict: {error}") from None
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise FileFormatError(f"{where}: expected a dict of tensors (a state dict)")
    record = (getattr(state, "_metadata", None) or {}).get(METADATA_KEY, {})
    if not isinstance(record, Mapping):
        raise FileFormatError(f"{where}: damaged vgg_np provenance record")
    # A BatchNorm's num_batches_tracked is a count, not a weight: skipped.
    counters = {k for k, v in state.items() if k.endswith(".num_batches_tracked") and v.ndim == 0}
    tensors = {k: _to_numpy(torch, k, v, where) for k, v in state.items() if k not in counters}
    return tensors, dict(record)


@contextlib.contextmanager
def open_torch(path: str | os.PathLike, where: str | None = None) -> Iterator[WeightSource]:
    """Open a PyTorch state dict: yield its lazy canonical tensors and provenance."""
    where = where or repr(os.fspath(path))
    state, record = load_state_dict(path, where)
    tensors, layout = flat_tensors(state, where)
    description = f"pytorch ({LAYOUT_NAMES[layout]})"
    provenance = Provenance.from_record(record, description, where)
    if provenance is None and layout in ("torchvision", "timm"):
        provenance = Provenance.implied(
            description, Family(layout), f"implied by a PyTorch file in {layout}'s layout"
        )
    yield WeightSource(
        tensors,
        provenance or Provenance(description, Family.UNKNOWN, evidence="no provenance recorded"),
        path=where,
        layout=layout,
    )


def write_torch(
    path: str | os.PathLike,
    weights: Mapping[str, tuple],
    provenance: Provenance,
    info: Mapping | None = None,
):
    """Write canonical weights as a torchvision state dict with ``torch.save``, atomically."""
    check_torchvision(info or {}, path)
    torch = _torch()
    state = collections.OrderedDict(
        (k, torch.from_numpy(np.ascontiguousarray(v)))
        for k, v in to_state_dict(weights, conv_names(weights)).items()
    )
    state._metadata = {METADATA_KEY: provenance.record()}  # as nn.Module.state_dict() does
    with atomic_write(path) as f:
        try:
            torch.save(state, f)
        except RuntimeError as error:
            # torch.save reports a failed write (a full disk, SIGINT) as its own
            # RuntimeError when it closes the archive: raise what really happened.
            if isinstance(error.__context__, (OSError, KeyboardInterrupt)):
                raise error.__context__ from None
            raise
    return "pytorch (torchvision layout)"
