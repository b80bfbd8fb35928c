"""vgg_np's native format: an uncompressed ``.npz`` of ``<layer>/kernel``, ``<layer>/bias``.

Every member is a plain ``.npy`` (never a pickle), plus one ``__provenance__.npy``, a
JSON string saying where the weights came from (`vgg_np.formats.contract.Provenance`).

Reading checks every ``.npy`` header against the member's size (and a compressed
member's size against its stored size) before anything is allocated, and returns lazy
tensors. A tensor is *copied* out of the file when the model asks for it, and the zip's
CRC-32 of the member is checked on the way: a file overwritten later cannot change a
loaded model, a file truncated later cannot crash it, and a flipped bit is an error.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import IO, cast

import numpy as np

from vgg_np import _files
from vgg_np.formats._common import (
    CHUNK,
    FileFormatError,
    LazyArray,
    bytes_to_array,
    check_zip,
    flatten_pairs,
    open_regular,
    pair_flat,
    read_exactly,
    stored_member_offset,
)
from vgg_np.formats.architecture_record import from_record, to_record
from vgg_np.formats.contract import Family, Provenance, WeightSource

PROVENANCE_KEY = "__provenance__"
ARCHITECTURE_KEY = "__architecture__"
#: Largest provenance entry read (it is a few hundred bytes).
MAX_RECORD = 1 << 16
DESCRIPTION = "npz (vgg_np)"


@dataclass
class _Header:
    """A member's ``.npy`` header and where its data starts."""

    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype
    header_len: int  # bytes of the .npy header, before the data
    data_offset: int  # in the file (stored members) or in the member (compressed ones)
    crc: int  # CRC-32 of the member's bytes before the data (stored members)


def _parse_npy_header(fp: IO[bytes], where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as error:  # NumPy's header parser raises many types on garbage
        raise FileFormatError(f"{where}: damaged .npy header: {error}") from None
    if dtype.hasobject:
        raise FileFormatError(f"{where}: holds Python objects (a pickle); refused")
    return shape, fortran, dtype


def _stored_header(fp: io.BufferedReader, info: zipfile.ZipInfo, where: str) -> _Header:
    try:
        start = stored_member_offset(fp, info)
    except FileFormatError:
        raise FileFormatError(f"{where}: damaged zip entry") from None
    fp.seek(start)
    shape, fortran, dtype = _parse_npy_header(fp, where)
    header_len = fp.tell() - start
    fp.seek(start)
    crc = zlib.crc32(fp.read(header_len))
    return _Header(shape, fortran, dtype, header_len, start + header_len, crc)


def _compressed_header(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> _Header:
    with zf.open(info) as member:
        shape, fortran, dtype = _parse_npy_header(member, where)
        return _Header(shape, fortran, dtype, member.tell(), member.tell(), 0)


def _read_stored(
    fp: io.BufferedReader, info: zipfile.ZipInfo, header: _Header, nbytes: int, where: str
) -> np.ndarray:
    data, crc = read_exactly(fp, header.data_offset, nbytes, header.crc)
    if crc != info.CRC:
        raise FileFormatError(f"{where}: CRC-32 mismatch: the member is damaged or was changed")
    return bytes_to_array(data, header.dtype, header.shape, header.fortran)


def _read_compressed(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, header: _Header, nbytes: int
) -> np.ndarray:
    data = np.empty(nbytes, np.uint8)
    view = data.data  # a memoryview (NumPy's stubs give ndarray a buffer only on Python 3.12+)
    # Opened for reading, a member is a zipfile.ZipExtFile, which has readinto; typeshed
    # types what `open` returns in any mode as IO[bytes].
    with cast(zipfile.ZipExtFile, zf.open(info)) as member:
        member.read(header.data_offset)
        done = 0
        while done < nbytes:
            got = member.readinto(view[done : done + CHUNK])
            if not got:
                raise FileFormatError("the member ends early")
            done += got
        member.read(1)  # reaching the end makes zipfile check the CRC-32
    return bytes_to_array(data, header.dtype, header.shape, header.fortran)


def _member(
    fp: io.BufferedReader, zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str
) -> LazyArray:
    """Return a lazy tensor for one member, after checking its header against its size."""
    if info.compress_type == zipfile.ZIP_STORED:
        header = _stored_header(fp, info, where)
    else:
        header = _compressed_header(zf, info, where)
    data_len = info.file_size - header.header_len
    nbytes = math.prod(header.shape) * header.dtype.itemsize
    if nbytes != data_len:
        raise FileFormatError(
            f"{where}: header declares shape {header.shape} of {header.dtype} "
            f"({nbytes:,} bytes) but the member holds {data_len:,} bytes (truncated or damaged)"
        )
    if info.compress_type == zipfile.ZIP_STORED:
        return LazyArray(
            header.shape, header.dtype, lambda: _read_stored(fp, info, header, nbytes, where), where
        )
    return LazyArray(
        header.shape, header.dtype, lambda: _read_compressed(zf, info, header, nbytes), where
    )


def _text(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> str:
    """Read a record entry: a 0-d unicode array (JSON), size-capped."""
    if info.file_size > MAX_RECORD:
        raise FileFormatError(f"{where}: its {info.filename} entry is too large")
    with zf.open(info) as member:
        text = np.lib.format.read_array(member, allow_pickle=False)
    if text.dtype.kind != "U" or text.ndim != 0:
        raise FileFormatError(f"{where}: its {info.filename} entry is not a string")
    return str(text)


def _record(zf: zipfile.ZipFile, info: zipfile.ZipInfo, where: str) -> dict:
    """Read the provenance entry: a 0-d unicode array holding a JSON object."""
    record = json.loads(_text(zf, info, where))
    if not isinstance(record, dict):
        raise FileFormatError(f"{where}: its provenance entry is not a JSON object")
    return record


@contextlib.contextmanager
def open_npz(path: str | os.PathLike, where: str | None = None) -> Iterator[WeightSource]:
    """Open a vgg_np ``.npz``; yield its lazy canonical tensors and provenance."""
    where = where or repr(os.fspath(path))
    with open_regular(path) as fp, zipfile.ZipFile(fp) as zf:
        check_zip(zf, where)  # declared sizes against stored sizes, before decompressing
        arrays, record, architecture = {}, {}, {}
        for info in zf.infolist():
            key = info.filename.removesuffix(".npy")
            if key == PROVENANCE_KEY:
                record = _record(zf, info, where)
            elif key == ARCHITECTURE_KEY:
                architecture = from_record(_text(zf, info, where), where)
            else:
                arrays[key] = _member(fp, zf, info, f"{where} member {info.filename!r}")
        provenance = Provenance.from_record(record, DESCRIPTION, where) or Provenance(
            DESCRIPTION,
            Family.UNKNOWN,
            evidence="no provenance recorded, and vgg_np's .npz layout fits weights of any family",
        )
        yield WeightSource(pair_flat(arrays, where), provenance, architecture, path=where)


def write_npz(
    path: str | os.PathLike,
    weights: Mapping[str, tuple],
    *,
    provenance: Provenance | None = None,
    info: Mapping | None = None,
) -> None:
    """Write ``{layer: (kernel, bias)}`` as an uncompressed ``.npz``, atomically.

    The file is written beside `path` and renamed over it only when complete, so an
    existing file is never left half-written. No ``.npz`` suffix is added.

    Parameters
    ----------
    path : str or os.PathLike
    weights : mapping
        Layer name -> (kernel, bias).
    provenance : Provenance, optional
        Where the weights came from, recorded in a ``__provenance__`` entry; None records
        an unknown family (see `vgg_np.formats.contract.choose_preprocessing`).
    info : mapping, optional
        The architecture a reader found (``head``, ``batch_norm_eps``), recorded in an
        ``__architecture__`` entry (`vgg_np.formats.architecture_record`).

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
    ['__provenance__', 'fc1/bias', 'fc1/kernel']
    """
    provenance = provenance or Provenance("weights of unknown origin", Family.UNKNOWN)
    records = {PROVENANCE_KEY: np.array(json.dumps(provenance.record()))}
    if (architecture := to_record(info or {})) is not None:
        records[ARCHITECTURE_KEY] = np.array(architecture)
    with _files.atomic_write(path) as f:
        np.savez(f, allow_pickle=False, **flatten_pairs(weights), **records)


def _npy(fp: io.BufferedReader, where: str) -> np.ndarray:
    """Read a whole ``.npy`` file after checking its header against the file's size."""
    shape, fortran, dtype = _parse_npy_header(fp, where)
    start = fp.tell()
    nbytes = math.prod(shape) * dtype.itemsize
    held = os.fstat(fp.fileno()).st_size - start
    if nbytes != held:
        raise FileFormatError(
            f"{where}: header declares shape {shape} of {dtype} ({nbytes:,} bytes) but the "
            f"file holds {held:,} bytes (truncated or damaged)"
        )
    data, _ = read_exactly(fp, start, nbytes)
    return bytes_to_array(data, dtype, shape, fortran)


def read_arrays(
    path: str | os.PathLike, what: str = "activations dump", npy_name: str = "input"
) -> dict[str, np.ndarray]:
    """Read every array of a ``.npz`` (or the one of a ``.npy``), as untrusted input.

    The file must be a regular file; each member's header is checked against its size,
    and a compressed member may expand at most as much as a weights file's
    (`vgg_np.formats._common.check_expansion`), before anything is decompressed or
    allocated. Only real floating-point arrays are accepted: activations and inputs are
    real numbers, so a complex, integer, bool or string array is refused, naming it.

    Parameters
    ----------
    path : str or os.PathLike
    what : str
        What the file is, for messages (``"activations dump"``).
    npy_name : str, default "input"
        The key of a ``.npy`` file's array.

    Returns
    -------
    dict
        Name -> array, in the file's order.

    Raises
    ------
    ValueError
        For a file that is not a regular file, is damaged, a decompression bomb, or holds
        an array that is not real floating-point; the message names the file.
    OSError
        If the file cannot be opened.

    Examples
    --------
    >>> import tempfile
    >>> tmp = tempfile.mkdtemp()
    >>> np.savez_compressed(f"{tmp}/a.npz", fc1=np.ones((1, 4), np.float32))
    >>> {k: v.shape for k, v in read_arrays(f"{tmp}/a.npz").items()}
    {'fc1': (1, 4)}
    >>> np.savez(f"{tmp}/b.npz", fc1=np.ones((1, 4), np.complex64))
    >>> read_arrays(f"{tmp}/b.npz")
    Traceback (most recent call last):
    ...
    vgg_np.formats._common.FileFormatError: '.../b.npz' array 'fc1' holds complex64 values: an
    activations dump must hold real floating-point numbers
    """
    where = repr(os.fspath(path))
    try:
        with _files.open_regular(path, what) as fp:
            if fp.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):
                fp.seek(0)
                arrays = {npy_name: _npy(fp, where)}
            else:
                fp.seek(0)
                with zipfile.ZipFile(fp) as zf:
                    check_zip(zf, where)  # declared sizes, before decompressing anything
                    arrays = {
                        info.filename.removesuffix(".npy"): np.asarray(
                            _member(fp, zf, info, f"{where} member {info.filename!r}")
                        )
                        for info in zf.infolist()
                    }
    except (FileFormatError, _files.NotARegularFile, MemoryError):
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        if isinstance(error, OSError) and error.filename:
            raise
        raise FileFormatError(f"{where}: not a readable .npy or .npz file ({error})") from None
    for name, array in arrays.items():
        if array.dtype.kind != "f":
            raise FileFormatError(
                f"{where} array {name!r} holds {array.dtype} values: an {what} must hold real "
                "floating-point numbers"
            )
    return arrays
