"""PyTorch ``.pth`` / ``.pt`` state dicts, read only through ``torch.load(weights_only=True)``.

A ``.pth`` file is a pickle, and unpickling runs code. vgg_np never unpickles by itself:
it asks PyTorch's restricted loader, which accepts tensors and plain containers only.
Without PyTorch installed, convert the file to ``.safetensors`` elsewhere.
"""

from __future__ import annotations

import os

import numpy as np


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Return the tensors of a PyTorch checkpoint as NumPy arrays.

    Raises
    ------
    ImportError
        If PyTorch is not installed.
    ValueError
        If the file is not a loadable state dict (or holds anything but tensors).
    """
    try:
        import torch
    except ImportError:
        raise ImportError(
            f"reading the PyTorch file {os.fspath(path)!r} needs torch "
            "(pip install torch==2.13.0), or convert it to .safetensors"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for refused or damaged pickles
        raise ValueError(
            f"{os.fspath(path)!r}: not a loadable PyTorch state dict: {error}"
        ) from None
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{os.fspath(path)!r}: expected a dict of tensors (a state dict)")
    return {k: v.detach().cpu().numpy() for k, v in state.items()}


def save_state_dict(path: str | os.PathLike, state: dict[str, np.ndarray]) -> None:
    """Write a state dict of NumPy arrays with ``torch.save`` (needs torch)."""
    try:
        import torch
    except ImportError:
        raise ImportError(
            "writing PyTorch files needs torch (pip install torch==2.13.0); "
            "write .safetensors instead"
        ) from None
    torch.save(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, os.fspath(path)
    )
