"""The check every gradient makes of its incoming ``dy``: an internal module of `vgg_np.backward`.

The checks of the forward arguments are the kernels' own (`vgg_np.ops._checks`), so that a
kernel and its gradient refuse the same inputs with the same messages.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from numpy.typing import ArrayLike, NDArray

from vgg_np.ops._checks import float_array

__all__ = ["check_dy"]


def check_dy(
    dy: ArrayLike, expected: tuple, dtype: npt.DTypeLike, what: str = "the output's shape"
) -> NDArray[np.floating]:
    """Check the incoming gradient against the forward output's shape; cast it to `dtype`."""
    dy = float_array("dy", dy)
    if dy.shape != expected:
        raise ValueError(f"`dy` must have {what} {expected}, got {dy.shape}")
    return dy.astype(dtype, copy=False)
