"""vgg_np's native format: an uncompressed ``.npz`` of ``<layer>/kernel``, ``<layer>/bias``.

Every member is a plain ``.npy`` (never a pickle). Stored (uncompressed) members are
memory-mapped instead of read, so loading a 553 MB VGG16 costs no copy until the model
converts each array to its dtype. Every header is checked against the member's size
before anything is mapped or allocated.
"""

from __future__ import annotations

import contextlib
import math
import os
import struct
import zipfile
from collections.abc import Iterator, Mapping

import numpy as np

from vgg_np.formats._common import atomic_write, flatten_pairs, pair_flat

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length


def _read_header(fp, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as error:  # NumPy's header parser raises many types on garbage
        raise ValueError(f"{where}: damaged .npy header: {error}") from None
    if dtype.hasobject:
        raise ValueError(f"{where}: holds Python objects (a pickle); refused")
    return shape, fortran, dtype


def _member(path: str, zf: zipfile.ZipFile, fp, info: zipfile.ZipInfo) -> np.ndarray:
    where = f"{path!r} member {info.filename!r}"
    if info.compress_type == zipfile.ZIP_STORED:
        fp.seek(info.header_offset)
        signature, name_len, extra_len = _LOCAL_HEADER.unpack(fp.read(_LOCAL_HEADER.size))
        if signature != b"PK\x03\x04":
            raise ValueError(f"{where}: damaged zip entry")
        start = info.header_offset + _LOCAL_HEADER.size + name_len + extra_len
        fp.seek(start)
        shape, fortran, dtype = _read_header(fp, where)
        header_len = fp.tell() - start
    else:
        with zf.open(info) as member:
            shape, fortran, dtype = _read_header(member, where)
            header_len = member.tell()
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes != info.file_size - header_len:
        raise ValueError(
            f"{where}: header declares shape {shape} of {dtype} ({nbytes:,} bytes) but "
            f"the member holds {info.file_size - header_len:,} bytes (truncated or damaged)"
        )
    order = "F" if fortran else "C"
    if info.compress_type == zipfile.ZIP_STORED:
        if nbytes == 0:
            return np.empty(shape, dtype, order=order)
        return np.memmap(path, dtype=dtype, mode="r", offset=fp.tell(), shape=shape, order=order)
    with zf.open(info) as member:
        return np.lib.format.read_array(member, allow_pickle=False)


@contextlib.contextmanager
def open_npz(path: str | os.PathLike) -> Iterator[dict]:
    """Open a vgg_np ``.npz``; yield the canonical mapping of (memory-mapped) arrays."""
    path = os.fspath(path)
    with open(path, "rb") as fp:
        try:
            with zipfile.ZipFile(fp) as zf:
                arrays = {}
                for info in zf.infolist():
                    key = info.filename.removesuffix(".npy")
                    arrays[key] = _member(path, zf, fp, info)
        except (zipfile.BadZipFile, EOFError, struct.error, OSError) as error:
            # OSError: a damaged directory can send seek() before the start of the file.
            raise ValueError(f"{path!r}: damaged .npz: {error}") from None
    yield pair_flat(arrays, repr(path))


def write_npz(path: str | os.PathLike, weights: Mapping[str, tuple]) -> None:
    """Write ``{layer: (kernel, bias)}`` as an uncompressed ``.npz``, atomically.

    The file is written beside `path` and renamed over it only when complete, so an
    existing file is never left half-written. No ``.npz`` suffix is added.

    Parameters
    ----------
    path : str or os.PathLike
    weights : mapping
        Layer name -> (kernel, bias).

    Raises
    ------
    OSError
        If the directory is not writable.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = pathlib.Path(tmp) / "w.npz"
    ...     write_npz(path, {"fc1": (np.ones((2, 3)), np.zeros(3))})
    ...     sorted(np.load(path, allow_pickle=False).files)
    ['fc1/bias', 'fc1/kernel']
    """
    with atomic_write(path) as f:
        np.savez(f, **flatten_pairs(weights))
