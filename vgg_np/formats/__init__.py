"""Weight files: one reader per format, all giving the same canonical mapping.

The canonical mapping is ``{Keras layer name: (kernel, bias)}`` in Keras layout (HWIO
convolution kernels, ``(in, out)`` dense kernels). Readers return *lazy* arrays (h5py
datasets, memory maps) so that the model can check every shape before reading a byte.
Nothing here runs a forward pass.

Formats are detected from the file's content, not its name.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass

from vgg_np.formats import keras_files, npz

__all__ = ["WeightSource", "detect_format", "open_weights", "write_npz"]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")

write_npz = npz.write_npz


@dataclass
class WeightSource:
    """An open weights file.

    Attributes
    ----------
    format : str
        What was read, e.g. ``"keras-h5 (Keras Applications layout)"``.
    tensors : dict
        Keras layer name -> (kernel, bias), lazy until converted with ``np.asarray``.
    """

    format: str
    tensors: dict


def detect_format(path: str | os.PathLike) -> str:
    """Name the format of a weights file from its first bytes and structure.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    {"hdf5", "keras-zip", "npz"}

    Raises
    ------
    ValueError
        If the content is not a supported format.
    OSError
        If the file cannot be read.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> import numpy as np
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = pathlib.Path(tmp) / "weights.bin"  # the name does not matter
    ...     write_npz(path, {"fc1": (np.ones((2, 3), np.float32), np.zeros(3, np.float32))})
    ...     detect_format(path)
    'npz'
    """
    path = os.fspath(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if head == HDF5_SIGNATURE:
        return "hdf5"
    if head[:4] in ZIP_SIGNATURES:
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile as error:
            raise ValueError(f"{path!r} starts like a zip file but is damaged: {error}") from None
        if keras_files.KERAS_ZIP_MEMBER in names:
            return "keras-zip"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        raise ValueError(
            f"{path!r} is a zip file but neither a .keras model nor a .npz of weights "
            f"(members: {names[:5]})"
        )
    raise ValueError(
        f"unknown weights format: {path!r} starts with {head!r}; supported are Keras HDF5 "
        "(.h5, .weights.h5), Keras .keras zips and vgg_np .npz"
    )


@contextlib.contextmanager
def open_weights(path: str | os.PathLike) -> Iterator[WeightSource]:
    """Open a weights file of any supported format; its tensors stay readable inside.

    Parameters
    ----------
    path : str or os.PathLike

    Yields
    ------
    WeightSource

    Raises
    ------
    ValueError
        If the format is unknown or the file is damaged or inconsistent.
    OSError
        If the file cannot be read.
    """
    kind = detect_format(path)
    if kind == "npz":
        with npz.open_npz(path) as tensors:
            yield WeightSource("npz (vgg_np)", tensors)
    elif kind == "keras-zip":
        with keras_files.open_keras_zip(path) as (name, tensors):
            yield WeightSource(name, tensors)
    else:
        with keras_files.open_keras_h5(path) as (name, tensors):
            yield WeightSource(name, tensors)
