"""Reader and writer of ``.safetensors`` files, in NumPy alone.

The format is an 8-byte little-endian header length, a JSON header
``{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...}`` with an
optional ``"__metadata__"`` object of strings, and the raw little-endian data. It holds
no code and no checksum. Every declared size and offset is checked against the file
before anything is read; tensors are *copied* out of the file when the model asks for
them (so the file may change later without changing a loaded model), and a file changed
while it is being read is an error. vgg_np records the weights' provenance in
``__metadata__`` (`vgg_np.formats.contract.Provenance.record`).

(The `safetensors` package reads and writes the same files; the tests use it as a
cross-check.)
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import math
import os
import struct
from collections.abc import Iterator, Mapping
from typing import BinaryIO

import numpy as np

from vgg_np._files import atomic_write
from vgg_np.formats._common import (
    FileFormatError,
    LazyArray,
    bytes_to_array,
    fingerprint,
    flatten_pairs,
    open_regular,
    read_exactly,
)
from vgg_np.formats.architecture_record import RECORD_KEY, from_record, to_record
from vgg_np.formats.contract import Family, Provenance, WeightSource
from vgg_np.formats.torchvision import (
    LAYOUT_NAMES,
    check_torchvision,
    conv_names,
    flat_tensors,
    to_state_dict,
)

#: Largest JSON header accepted (the format's own reference reader uses 100 MB).
MAX_HEADER = 100_000_000

_DTYPES: dict[str, np.dtype] = {
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),  # read as bits, widened to float32 below
}
_NAMES = {np.dtype("<f2"): "F16", np.dtype("<f4"): "F32", np.dtype("<f8"): "F64"}


def _bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    # A bfloat16 is the upper half of a float32.
    return (bits.astype(np.uint32) << 16).view(np.float32)


#: A checked header entry: (dtype name, shape, begin, end) of one tensor's bytes.
_Entry = tuple[str, tuple[int, ...], int, int]


def _entry(name: str, entry: object, data_size: int, where: str) -> _Entry:
    """Check one tensor's header entry: (dtype name, shape, begin, end)."""
    where = f"{where} tensor {name!r}"
    try:
        if not isinstance(entry, dict):
            raise TypeError("not a JSON object")
        kind = entry["dtype"]
        dtype = _DTYPES[kind]
        shape = tuple(int(s) for s in entry["shape"])
        begin, end = (int(o) for o in entry["data_offsets"])
    except (KeyError, TypeError, ValueError):
        dtype_name = entry.get("dtype") if isinstance(entry, dict) else None
        raise FileFormatError(
            f"{where}: needs dtype (F16, F32, F64 or BF16; got {dtype_name!r}), shape and "
            f"data_offsets, got {entry!r}"[:400]
        ) from None
    if min(shape, default=0) < 0 or not 0 <= begin <= end <= data_size:
        raise FileFormatError(
            f"{where}: offsets {begin}..{end} outside the {data_size:,} data bytes"
        )
    if math.prod(shape) * dtype.itemsize != end - begin:
        raise FileFormatError(
            f"{where}: shape {shape} of {kind} does not fill {end - begin:,} bytes"
        )
    return kind, shape, begin, end


def _is_bn_counter(name: str, entry: object, data_size: int) -> bool:
    """Tell a BatchNorm's ``num_batches_tracked`` (one int64, a count, skipped: not a weight)."""
    if not name.endswith(".num_batches_tracked") or not isinstance(entry, dict):
        return False
    offsets = entry.get("data_offsets")
    return (
        entry.get("dtype") == "I64"
        and entry.get("shape") == []
        and isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
        and 0 <= offsets[0]
        and offsets[0] + 8 == offsets[1] <= data_size
    )


def read_header(f: BinaryIO, size: int, where: str) -> tuple[dict[str, _Entry], dict, int]:
    """Return the checked tensor entries, the metadata and where the data starts."""
    head = f.read(8)
    if len(head) < 8:
        raise FileFormatError(f"{where}: too short for a safetensors file")
    (length,) = struct.unpack("<Q", head)
    if length > min(MAX_HEADER, size - 8):
        raise FileFormatError(
            f"{where}: header declares {length:,} bytes but the file has {size - 8:,}"
        )
    try:
        header = json.loads(f.read(length))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise FileFormatError(f"{where}: damaged safetensors header: {error}") from None
    if not isinstance(header, dict):
        raise FileFormatError(f"{where}: the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict):
        raise FileFormatError(f"{where}: its __metadata__ is not a JSON object")
    data_size = size - 8 - length
    entries = {
        name: _entry(name, entry, data_size, where)
        for name, entry in header.items()
        if not _is_bn_counter(name, entry, data_size)
    }
    spans = sorted((begin, end) for _, _, begin, end in entries.values() if end > begin)
    if any(a_end > b_begin for (_, a_end), (b_begin, _) in itertools.pairwise(spans)):
        raise FileFormatError(f"{where}: tensors overlap in the data")
    return entries, metadata, 8 + length


def _lazy(
    f: io.BufferedReader,
    name: str,
    entry: _Entry,
    start: int,
    opened: tuple[int, int],
    where: str,
) -> LazyArray:
    kind, shape, begin, end = entry

    def read() -> np.ndarray:
        data, _ = read_exactly(f, start + begin, end - begin)
        if fingerprint(f) != opened:  # no checksum here: at least notice a change
            raise FileFormatError("the file changed while it was being read")
        array = bytes_to_array(data, _DTYPES[kind], shape, fortran=False)
        return _bfloat16_to_float32(array) if kind == "BF16" else array

    dtype = np.float32 if kind == "BF16" else _DTYPES[kind]
    return LazyArray(shape, dtype, read, f"{where} tensor {name!r}")


@contextlib.contextmanager
def _open(path: str | os.PathLike, where: str) -> Iterator[tuple[dict[str, LazyArray], dict]]:
    """Yield a safetensors file's lazy tensors by name, and its metadata."""
    with open_regular(path) as f:
        opened = fingerprint(f)
        entries, metadata, start = read_header(f, os.fstat(f.fileno()).st_size, where)
        yield (
            {name: _lazy(f, name, e, start, opened, where) for name, e in entries.items()},
            metadata,
        )


@contextlib.contextmanager
def open_safetensors(path: str | os.PathLike) -> Iterator[dict[str, LazyArray]]:
    """Open a safetensors file: yield ``{name: LazyArray}`` under the file's own names."""
    with _open(path, repr(os.fspath(path))) as (tensors, _):
        yield tensors


@contextlib.contextmanager
def open_source(path: str | os.PathLike, where: str) -> Iterator[WeightSource]:
    """Open a safetensors file: yield its lazy canonical tensors and provenance.

    Tensors named ``<layer>/kernel`` are vgg_np's Keras layout; anything else is read
    as a torchvision state dict.
    """
    with _open(path, where) as (state, metadata):
        tensors, layout = flat_tensors(state, where)
        description = f"safetensors ({LAYOUT_NAMES[layout]})"
        provenance = Provenance.from_record(metadata, description, where) or _implied(
            description, layout
        )
        info = from_record(metadata[RECORD_KEY], where) if RECORD_KEY in metadata else {}
        yield WeightSource(tensors, provenance, info, path=where, layout=layout)


def _implied(description: str, layout: str) -> Provenance:
    if layout in ("torchvision", "timm"):
        return Provenance.implied(
            description,
            Family(layout),
            f"implied by {layout}'s state-dict names (no provenance recorded)",
        )
    return Provenance(
        description,
        Family.UNKNOWN,
        evidence="no provenance recorded, and vgg_np's Keras-layout names fit any family",
    )


def write_safetensors(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write ``{name: array}`` (float16/32/64) as a safetensors file, atomically."""
    path = os.fspath(path)
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset, arrays = 0, []
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        little = array.dtype.newbyteorder("<")
        if little not in _NAMES:
            raise TypeError(
                f"tensor {name!r}: safetensors holds float16/32/64 here, got {array.dtype}"
            )
        array = array.astype(little, copy=False)
        header[name] = {
            "dtype": _NAMES[little],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
        arrays.append(array)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # align the data to 8 bytes, as the format recommends
    with atomic_write(path) as f:
        f.write(struct.pack("<Q", len(text)) + text)
        for array in arrays:
            f.write(array.data)  # no tobytes() copy of a 400 MB tensor


def write_weights(
    path: str | os.PathLike,
    weights: Mapping[str, tuple],
    provenance: Provenance,
    layout: str | None,
    info: Mapping | None = None,
) -> str:
    """Write canonical weights in vgg_np's Keras layout or torchvision's; say which.

    `layout` is ``"keras"`` or ``"torchvision"`` (None: torchvision's, the default).

    The Keras layout records the architecture (a head, batch norm's epsilon) in the
    metadata; torchvision's layout holds batch norms but no head of one's own.
    """
    if layout == "keras":
        metadata = provenance.record()
        if (architecture := to_record(info or {})) is not None:
            metadata[RECORD_KEY] = architecture
        write_safetensors(path, flatten_pairs(weights), metadata)
        return "safetensors (Keras layout)"
    dense = check_torchvision(info or {}, path)
    state = to_state_dict(weights, conv_names(weights), dense)
    write_safetensors(path, state, provenance.record())
    return "safetensors (torchvision layout)"
