"""Reader and writer of ``.safetensors`` files, in NumPy alone.

The format is an 8-byte little-endian header length, a JSON header
``{name: {"dtype": "F32", "shape": [...], "data_offsets": [begin, end]}, ...}`` and the
raw little-endian data. It holds no code. Every declared size is checked against the
file before anything is mapped; tensors are memory-mapped. (The `safetensors` package
reads and writes the same files; the tests use it as a cross-check.)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import struct
from collections.abc import Iterator, Mapping

import numpy as np

from vgg_np.formats._common import LazyArray, atomic_write

#: Largest JSON header accepted (the format's own reference reader uses 100 MB).
MAX_HEADER = 100_000_000

_DTYPES = {
    "F16": np.dtype("<f2"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "BF16": np.dtype("<u2"),  # read as bits, widened to float32 below
}
_NAMES = {np.dtype("<f2"): "F16", np.dtype("<f4"): "F32", np.dtype("<f8"): "F64"}


def _bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    # A bfloat16 is the upper half of a float32.
    return (bits.astype(np.uint32) << 16).view(np.float32)


def read_header(path: str) -> tuple[dict, int]:
    """Return the checked header of a safetensors file and where its data starts."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{path!r}: too short for a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > min(MAX_HEADER, size - 8):
            raise ValueError(
                f"{path!r}: header declares {length:,} bytes but the file has {size - 8:,}"
            )
        try:
            header = json.loads(f.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path!r}: damaged safetensors header: {error}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path!r}: the safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    start, data_size = 8 + length, size - 8 - length
    for name, entry in header.items():
        where = f"{path!r} tensor {name!r}"
        try:
            dtype = _DTYPES[entry["dtype"]]
            shape = tuple(int(s) for s in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f"{where}: needs dtype (F16, F32, F64 or BF16), shape and data_offsets, "
                f"got {entry!r}"
            ) from None
        if min(shape, default=0) < 0 or not 0 <= begin <= end <= data_size:
            raise ValueError(
                f"{where}: offsets {begin}..{end} outside the {data_size:,} data bytes"
            )
        if math.prod(shape) * dtype.itemsize != end - begin:
            raise ValueError(
                f"{where}: shape {shape} of {entry['dtype']} does not fill {end - begin:,} bytes"
            )
    return header, start


@contextlib.contextmanager
def open_safetensors(path: str | os.PathLike) -> Iterator[dict[str, LazyArray]]:
    """Open a safetensors file: yield ``{name: LazyArray}`` backed by memory maps."""
    path = os.fspath(path)
    header, start = read_header(path)

    def reader(entry):
        dtype, shape = _DTYPES[entry["dtype"]], tuple(entry["shape"])
        begin, end = entry["data_offsets"]

        def read():
            if end == begin:
                return np.zeros(shape, dtype)
            mapped = np.memmap(path, dtype=dtype, mode="r", offset=start + begin, shape=shape)
            return _bfloat16_to_float32(mapped) if entry["dtype"] == "BF16" else mapped

        out_dtype = np.float32 if entry["dtype"] == "BF16" else dtype
        return LazyArray(shape, out_dtype, read)

    yield {name: reader(entry) for name, entry in header.items()}


def write_safetensors(path: str | os.PathLike, tensors: Mapping[str, np.ndarray]) -> None:
    """Write ``{name: array}`` (float16/32/64) as a safetensors file, atomically."""
    path = os.fspath(path)
    header, offset, arrays = {}, 0, []
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
            f.write(array.tobytes())
