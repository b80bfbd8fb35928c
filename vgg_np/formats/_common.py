"""What every reader of weight files shares: safe opening, lazy tensors, limits, writing.

A weights file is untrusted input. The helpers here make each reader follow the same
rules: only regular files are opened (a FIFO would block forever); every declared size is
checked against what the file holds *before* anything is decompressed or allocated;
tensors are read (copied, never memory-mapped) only when the model asks, so a file changed
on disk later cannot change a loaded model; and any failure while reading becomes one
`FileFormatError` naming the user's file.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import BinaryIO, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from vgg_np import _files

#: A member may decompress to at most this many times its stored size ...
MAX_EXPANSION = 100
#: ... or to this many bytes, whichever is larger (small text members compress well).
SMALL_MEMBER = 1 << 20
#: Largest tensor a reader computes instead of reading (ONNX ``ConstantOfShape``): VGG's
#: largest tensor, fc1, is 411 MB in float32 (VGG16 and VGG19).
MAX_COMPUTED_BYTES = 1 << 30
#: Largest total a weights file may declare across all its tensors (2 GiB), checked before
#: any tensor is read or computed: VGG19 with its top holds 575 MB in float32 (1.15 GB in
#: float64), so only a hostile or foreign file needs more.
MAX_TOTAL_BYTES = 1 << 31
#: Bytes read per call when copying a tensor out of a file (1 MiB: the CRC-32 then
#: runs on bytes still in cache; measured 0.57 s for 553 MB against 0.73 s with 16 MiB).
CHUNK = 1 << 20


T = TypeVar("T")

_LOCAL_HEADER = struct.Struct("<4s22xHH")  # a zip member's signature, ..., name and extra lengths


class FileFormatError(ValueError):
    """A weights file is malformed, truncated, hostile or not what it claims to be.

    A `ValueError`; its message names the user's file.

    Examples
    --------
    >>> try:
    ...     with reading("'w.npz'"):
    ...         [][1]
    ... except ValueError as error:
    ...     print(error)
    'w.npz' is damaged or not a weights file vgg_np can read (IndexError: list index out of range)
    """


@contextlib.contextmanager
def reading(where: str) -> Iterator[None]:
    """Turn any failure while parsing `where` into one `FileFormatError` naming it.

    Parsers of damaged or crafted files fail in many ways (IndexError, OverflowError,
    RecursionError, h5py's OSError ...); the user gets one error type that names the file.
    `ImportError` (a missing optional package) and `MemoryError` pass through unchanged.
    """
    try:
        yield
    except (FileFormatError, ImportError, MemoryError):
        raise
    except Exception as error:
        raise FileFormatError(
            f"{where} is damaged or not a weights file vgg_np can read "
            f"({type(error).__name__}: {error})"
        ) from error


def check_regular(path: str | os.PathLike) -> os.stat_result:
    """Return the status of `path`, refusing anything but a regular file (`_files.check_regular`).

    Raises
    ------
    FileFormatError
        For a directory, FIFO, socket or device (reading a FIFO would wait forever).
    OSError
        If `path` does not exist or cannot be examined.
    """
    try:
        return _files.check_regular(path, "weights file")
    except _files.NotARegularFile as error:
        raise FileFormatError(str(error)) from None


def open_regular(path: str | os.PathLike) -> io.BufferedReader:
    """Open a regular file for reading without ever blocking on a FIFO (`_files.open_regular`)."""
    try:
        return _files.open_regular(path, "weights file")
    except _files.NotARegularFile as error:
        raise FileFormatError(str(error)) from None


def fingerprint(f: BinaryIO) -> tuple[int, int]:
    """Size and modification time of an open file: they change when it is rewritten."""
    status = os.fstat(f.fileno())
    return status.st_size, status.st_mtime_ns


def check_expansion(declared: int, stored: int, where: str) -> None:
    """Refuse data that would expand far beyond its stored size (a decompression bomb)."""
    if declared > max(SMALL_MEMBER, MAX_EXPANSION * stored):
        raise FileFormatError(
            f"{where}: declares {declared:,} bytes from {stored:,} stored bytes, more than "
            f"{MAX_EXPANSION}x: refused as a possible decompression bomb"
        )


class Shaped(Protocol):
    """A tensor known by shape and dtype: an array, a `LazyArray`, an h5py dataset."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> np.dtype: ...


S = TypeVar("S", bound=Shaped)


def declared_bytes(array: Shaped) -> int:
    """Bytes an array-like (lazy tensor, h5py dataset, array) takes once read."""
    return math.prod(int(s) for s in array.shape) * np.dtype(array.dtype).itemsize


def check_total(
    tensors: Mapping[str, tuple[Shaped, ...]], where: str, limit: int = MAX_TOTAL_BYTES
) -> int:
    """Return the bytes all of a file's tensors would take, refusing more than `limit`.

    Called once per file, before any tensor is read, copied or computed: a file whose
    tensors each pass their own checks may still declare more than memory holds.

    Examples
    --------
    >>> big = LazyArray((1 << 20, 1 << 10), np.float32, lambda: None)
    >>> check_total({"fc1": (big, big), "fc2": (big,)}, "'w.onnx'")
    Traceback (most recent call last):
    ...
    vgg_np.formats._common.FileFormatError: 'w.onnx': its tensors take 12,884,901,888 bytes in
    all, more than the 2,147,483,648 any VGG weights file may (fc1 4,294,967,296 each, ...)
    """
    sizes = {name: [declared_bytes(a) for a in arrays] for name, arrays in tensors.items()}
    total = sum(sum(each) for each in sizes.values())
    if total > limit:
        largest = sorted(sizes, key=lambda name: -max(sizes[name], default=0))[:3]
        listed = ", ".join(f"{name} {max(sizes[name]):,} each" for name in largest)
        raise FileFormatError(
            f"{where}: its tensors take {total:,} bytes in all, more than the {limit:,} any VGG "
            f"weights file may ({listed}, ...)"
        )
    return total


def check_zip(zf: zipfile.ZipFile, where: str) -> None:
    """Check every member of a zip against its stored size before anything is extracted."""
    for info in zf.infolist():
        if info.compress_type != zipfile.ZIP_STORED:
            check_expansion(info.file_size, info.compress_size, f"{where} member {info.filename!r}")
        elif info.file_size != info.compress_size:
            raise FileFormatError(f"{where} member {info.filename!r}: inconsistent sizes")


def verify_zip_crcs(zf: zipfile.ZipFile, where: str) -> None:
    """Read every member of a checked zip (see `check_zip`) to the end: zipfile checks CRC-32."""
    for info in zf.infolist():
        with zf.open(info) as member:
            while member.read(CHUNK):
                pass


def stored_member_offset(f: BinaryIO, info: zipfile.ZipInfo) -> int:
    """Where an uncompressed zip member's data start in the file (after its local header)."""
    f.seek(info.header_offset)
    signature, name_len, extra_len = _LOCAL_HEADER.unpack(f.read(_LOCAL_HEADER.size))
    if signature != b"PK\x03\x04":
        raise FileFormatError(f"damaged zip entry {info.filename!r}")
    return info.header_offset + _LOCAL_HEADER.size + int(name_len) + int(extra_len)


def read_exactly(
    f: io.BufferedReader, offset: int, nbytes: int, crc: int | None = None
) -> tuple[np.ndarray, int]:
    """Read `nbytes` at `offset` into a new byte array; return it and the running CRC-32.

    `crc` is the CRC-32 of whatever precedes these bytes in their checksummed unit (a zip
    member's ``.npy`` header); None skips the checksum.
    """
    out = np.empty(nbytes, np.uint8)
    view = out.data  # a memoryview (NumPy's stubs give ndarray a buffer only on Python 3.12+)
    f.seek(offset)
    done = 0
    while done < nbytes:
        got = f.readinto(view[done : done + CHUNK])
        if not got:
            raise FileFormatError(f"ends {nbytes - done:,} bytes early (truncated)")
        if crc is not None:
            crc = zlib.crc32(view[done : done + got], crc)
        done += got
    return out, crc if crc is not None else 0


def bytes_to_array(data: np.ndarray, dtype: np.dtype, shape: tuple, fortran: bool) -> np.ndarray:
    """View raw bytes as an array of `dtype` and `shape` (C or Fortran order), no copy."""
    return data.view(dtype).reshape(shape, order="F" if fortran else "C")


class LazyArray:
    """A tensor known by shape and dtype, read (or computed) only when NumPy asks for it.

    Readers return these so that a model can check every shape before any tensor is read,
    converted or allocated. Reading copies the data into a C-ordered array: it never
    aliases the file.
    A failure while reading raises `FileFormatError` naming `where`.

    Examples
    --------
    >>> lazy = LazyArray((2, 3), np.float32, lambda: np.ones((2, 3), np.float32), "demo")
    >>> lazy
    LazyArray(shape=(2, 3), dtype=float32)
    >>> np.asarray(lazy).sum()
    np.float32(6.0)
    """

    def __init__(
        self,
        shape: tuple[int, ...],
        dtype: npt.DTypeLike,
        read: Callable[[], npt.ArrayLike],
        where: str = "",
    ):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self._read = read
        self.where = where

    @property
    def ndim(self) -> int:
        """Number of axes."""
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes the tensor takes once read."""
        return int(np.prod(self.shape, dtype=object)) * self.dtype.itemsize

    def __array__(self, dtype: npt.DTypeLike | None = None, copy: bool | None = None) -> np.ndarray:
        with reading(self.where or "a weights file"):
            # C order whatever the file's layout: the same weights then give the model the
            # same bits (BLAS sums in another order over a transposed view).
            # (np.ascontiguousarray would make a 0-d tensor 1-d.)
            array = np.asarray(self._read(), order="C")
        if array.shape != self.shape:  # a reader bug, not a user error
            raise AssertionError(f"lazy array read {array.shape}, declared {self.shape}")
        return array if dtype is None else array.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"LazyArray(shape={self.shape}, dtype={self.dtype})"


def lazy(array: np.ndarray, where: str) -> LazyArray:
    """Wrap an array-like that has ``shape`` and ``dtype`` (an in-memory array) as lazy."""
    return LazyArray(array.shape, array.dtype, lambda: np.asarray(array), where)


def split_kernel_bias(layer: str, arrays: Sequence[S], where: str) -> tuple[S, S]:
    """Tell a layer's kernel (2-D or more) from its bias (1-D) by their ranks."""
    kernels = [a for a in arrays if len(a.shape) >= 2]
    biases = [a for a in arrays if len(a.shape) == 1]
    if len(arrays) != 2 or len(kernels) != 1 or len(biases) != 1:
        shapes = [tuple(a.shape) for a in arrays]
        raise FileFormatError(
            f"{where}: layer {layer!r} should hold a kernel and a bias, got shapes {shapes}"
        )
    return kernels[0], biases[0]


#: How vgg_np names a layer's two tensors in flat files (npz, Keras-layout safetensors).
SUFFIXES = ("/kernel", "/bias")
#: A batch norm's four tensors in flat files (Keras's variable names).
BN_SUFFIXES = ("/gamma", "/beta", "/moving_mean", "/moving_variance")
_ALL_SUFFIXES = SUFFIXES + BN_SUFFIXES


def flatten_pairs(weights: Mapping[str, tuple]) -> dict[str, np.ndarray]:
    """``{layer: (kernel, bias)}`` -> ``{"layer/kernel": kernel, "layer/bias": bias}``.

    A batch norm's four tensors are ``layer/gamma``, ``/beta``, ``/moving_mean``,
    ``/moving_variance``.
    """
    return {
        f"{layer}{suffix}": np.asarray(array)
        for layer, tensors in weights.items()
        for suffix, array in zip(
            SUFFIXES if len(tensors) == 2 else BN_SUFFIXES, tensors, strict=True
        )
    }


def pair_flat(arrays: Mapping[str, object], where: str) -> dict[str, tuple]:
    """Group flat tensors back by layer (the inverse of `flatten_pairs`), strictly."""
    bad = sorted(k for k in arrays if not k.endswith(_ALL_SUFFIXES))
    if bad:
        raise FileFormatError(
            f"{where}: keys must be '<layer>/kernel' or '<layer>/bias' (a batch norm's "
            f"'<layer>/gamma', '/beta', '/moving_mean', '/moving_variance'), got {bad}"
        )
    pairs = []
    for layer in dict.fromkeys(k.rsplit("/", 1)[0] for k in arrays):
        suffixes = BN_SUFFIXES if f"{layer}/moving_mean" in arrays else SUFFIXES
        missing = [s for s in suffixes if f"{layer}{s}" not in arrays]
        stray = [s for s in _ALL_SUFFIXES if s not in suffixes and f"{layer}{s}" in arrays]
        if missing or stray:
            raise FileFormatError(
                f"{where}: layer {layer!r} has no {' or '.join(missing) or '-'}"
                + (f" but {', '.join(stray)}" if stray else "")
            )
        pairs.append((layer, tuple(arrays[f"{layer}{s}"] for s in suffixes)))
    return check_unique(pairs, where)


def check_unique(pairs: Iterable[tuple[str, T]], where: str) -> dict[str, T]:
    """Build a dict from (name, value) pairs, refusing a layer name seen twice."""
    result: dict[str, T] = {}
    for name, value in pairs:
        if name in result:
            raise FileFormatError(f"{where}: layer {name!r} appears twice")
        result[name] = value
    return result
