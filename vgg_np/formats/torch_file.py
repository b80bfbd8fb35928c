"""PyTorch ``.pth`` / ``.pt`` state dicts, read and written in NumPy alone (no torch).

A ``.pth`` written by ``torch.save`` (PyTorch 1.6 and later) is an uncompressed zip:
``<prefix>/data.pkl``, a pickle of the state dict in which every tensor is a call
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` and every storage a
persistent id ``("storage", torch.FloatStorage, key, location, numel)``; the storage's raw
little-endian bytes are the member ``<prefix>/data/<key>``; ``byteorder`` and ``version``
members say how to read them.

Unpickling runs code, so this reader never lets the pickle call anything of its own: it
answers the pickle's requests for globals from a short table (an ``OrderedDict``, the
tensor and parameter rebuilders, the storage types) of stand-ins that only *record* what
the file declares, and refuses every other global, naming it. This is the subset of what
``torch.load(weights_only=True)`` accepts that a state dict needs. Before that, the
pickle's opcodes are walked without running them (`pickletools.genops`), so that no
length or memo index it declares can make the unpickler allocate. Every tensor's declared
storage size, offset, sizes and strides are then checked against its zip member (Python
integers: no overflow) before a byte is read; the data are copied out of the file, with
the zip's CRC-32 checked, only when the model asks for a tensor. Files in PyTorch's
pre-1.6 format (a bare pickle) are refused: re-save them with a current ``torch.save``.

vgg_np records the weights' provenance (and a trained model's class names, as its
architecture record's ``labels``) in the state dict's ``_metadata`` (where PyTorch keeps
per-module versions), so ``model.load_state_dict`` still takes the file as it is.
"""

from __future__ import annotations

import collections
import contextlib
import io
import math
import os
import pickle
import pickletools
import struct
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple

import numpy as np

from vgg_np._files import atomic_write
from vgg_np.formats._common import (
    FileFormatError,
    LazyArray,
    check_zip,
    open_regular,
    read_exactly,
    reading,
    stored_member_offset,
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

#: The key of vgg_np's provenance record in a state dict's ``_metadata``.
METADATA_KEY = "vgg_np.provenance"
#: Largest ``data.pkl`` read: a VGG state dict's pickle is about 5 KB.
MAX_PICKLE = 1 << 24
#: torch.save aligns every storage's data to this many bytes in the file.
ALIGNMENT = 64

#: PyTorch's storage types: (NumPy dtype of the little-endian bytes, torch's dtype name).
#: bfloat16 is read as its bits and widened to float32 (exactly); integer, boolean and
#: complex storages are known so that the error can name them, never loaded as weights.
STORAGES = {
    "HalfStorage": ("<f2", "float16"),
    "FloatStorage": ("<f4", "float32"),
    "DoubleStorage": ("<f8", "float64"),
    "BFloat16Storage": ("<u2", "bfloat16"),
    "LongStorage": ("<i8", "int64"),
    "IntStorage": ("<i4", "int32"),
    "ShortStorage": ("<i2", "int16"),
    "CharStorage": ("i1", "int8"),
    "ByteStorage": ("u1", "uint8"),
    "BoolStorage": ("?", "bool"),
    "ComplexFloatStorage": ("<c8", "complex64"),
    "ComplexDoubleStorage": ("<c16", "complex128"),
}
_FLOATS = ("float16", "float32", "float64", "bfloat16")
#: The storage type the writer names for each dtype it writes.
_WRITTEN = {np.dtype(STORAGES[k][0]): k for k in ("HalfStorage", "FloatStorage", "DoubleStorage")}


class _StorageType:
    """What the pickle gets for ``torch.FloatStorage`` &c.: a name, not callable."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name


class _Storage:
    """One storage the pickle declares: its key (the zip member), type and element count."""

    __slots__ = ("key", "kind", "numel")

    def __init__(self, key: str, kind: str, numel: int):
        self.key, self.kind, self.numel = key, kind, numel


class _Tensor:
    """What ``_rebuild_tensor_v2`` records: nothing is checked or read yet (hence `object`)."""

    __slots__ = ("offset", "size", "storage", "stride")

    def __init__(self, storage: object, offset: object, size: object, stride: object):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


class _Checked(NamedTuple):
    """A `_Tensor` checked against the zip member of its storage (`_layout`)."""

    storage: _Storage
    dtype: np.dtype
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(
    storage: object, offset: object, size: object, stride: object, *_flags: object
) -> _Tensor:
    # requires_grad, backward hooks and Python metadata change nothing a weight holds.
    return _Tensor(storage, offset, size, stride)


def _rebuild_parameter(data: object, *_flags: object) -> object:
    return data


#: Every global a state dict's pickle may name, and what it gets instead.
GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in STORAGES},
}


class _StateDictUnpickler(pickle.Unpickler):
    """An unpickler whose every global comes from `GLOBALS`: it records, never runs, code."""

    def __init__(self, data: bytes, where: str):
        super().__init__(io.BytesIO(data))
        self.where = where
        self.storages: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> object:
        try:
            return GLOBALS[module, name]
        except (KeyError, TypeError):
            raise FileFormatError(
                f"{self.where}: not a loadable PyTorch state dict: its pickle asks for "
                f"{module}.{name}, which a state dict never needs (vgg_np reads tensors and "
                "plain containers, and runs nothing from a file)"[:500]
            ) from None

    def persistent_load(self, pid: object) -> _Storage:
        if not (
            type(pid) is tuple
            and len(pid) == 5
            and pid[0] == "storage"
            and type(pid[1]) is _StorageType
            and type(pid[2]) is str
            and type(pid[3]) is str
            and type(pid[4]) is int
            and pid[4] >= 0
        ):
            raise FileFormatError(f"{self.where}: a storage reference is malformed: {pid!r}"[:300])
        storage = self.storages.setdefault(pid[2], _Storage(pid[2], pid[1].name, pid[4]))
        if (storage.kind, storage.numel) != (pid[1].name, pid[4]):
            raise FileFormatError(
                f"{self.where}: storage {pid[2]!r} is declared twice, differently"[:300]
            )
        return storage


def _check_opcodes(data: bytes, where: str) -> None:
    """Walk the pickle's opcodes without running them; refuse what would exhaust memory.

    Python's unpickler sizes its memo by the largest index a ``PUT`` names and allocates
    a length field's bytes before it reads them: 30 bytes asking for index 2**31 or a
    2**40-byte string would take all memory. `pickletools.genops` checks every length
    against the bytes that are there, and no index may exceed the pickle's size (torch
    numbers them 0, 1, 2 ...).
    """
    with warnings.catch_warnings():  # a text STRING's odd escape: refused or harmless
        warnings.simplefilter("ignore", DeprecationWarning)
        operations = list(pickletools.genops(data))
    for opcode, argument, position in operations:
        if opcode.name not in ("PUT", "BINPUT", "LONG_BINPUT"):
            continue
        if not isinstance(argument, int) or argument > len(data):
            raise FileFormatError(
                f"{where}: not a loadable PyTorch state dict: its pickle stores memo entry "
                f"{argument} at byte {position}, beyond its {len(data):,} bytes"
            )


def _archive(zf: zipfile.ZipFile, where: str) -> str:
    """Return the one top-level folder that holds ``data.pkl`` (torch.save's record prefix)."""
    pickles = [n for n in zf.namelist() if n.count("/") == 1 and n.endswith("/data.pkl")]
    if len(pickles) != 1:
        raise FileFormatError(
            f"{where}: not a loadable PyTorch state dict: expected one '<name>/data.pkl' "
            f"member, found {len(pickles)}"
        )
    return pickles[0].split("/")[0]


def _small_member(zf: zipfile.ZipFile, name: str, limit: int, where: str) -> bytes | None:
    try:
        info = zf.getinfo(name)
    except KeyError:
        return None
    if info.file_size > limit:
        raise FileFormatError(f"{where}: member {name!r} holds {info.file_size:,} bytes, too many")
    return zf.read(info)


def _unwrap(state: object, where: str) -> dict[str, _Tensor]:
    """Return the state dict itself: checkpoints often wrap it."""
    for key in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(type(v) is _Tensor for v in state.values()):
        raise FileFormatError(f"{where}: expected a dict of tensors (a state dict)")
    if not all(type(k) is str for k in state):
        raise FileFormatError(f"{where}: a state dict's keys must be strings")
    return state


def _check_ints(values: object, what: str, where: str) -> tuple[int, ...]:
    if type(values) is not tuple or not all(type(v) is int and v >= 0 for v in values):
        raise FileFormatError(f"{where}: its {what} must be non-negative integers, got {values!r}")
    return values


def _layout(tensor: _Tensor, storage: _Storage, info: zipfile.ZipInfo, where: str) -> _Checked:
    """Check a tensor's storage, offset, sizes and strides against its member."""
    offset = tensor.offset
    if type(offset) is not int or offset < 0:
        raise FileFormatError(f"{where}: its storage offset is malformed")
    size = _check_ints(tensor.size, "sizes", where)
    stride = _check_ints(tensor.stride, "strides", where)
    if len(size) != len(stride):
        raise FileFormatError(f"{where}: {len(size)} sizes but {len(stride)} strides")
    dtype = np.dtype(STORAGES[storage.kind][0])
    if info.compress_type != zipfile.ZIP_STORED:
        raise FileFormatError(f"{where}: its storage is compressed (torch.save never does)")
    if storage.numel * dtype.itemsize != info.file_size:
        raise FileFormatError(
            f"{where}: storage {storage.key!r} declares {storage.numel:,} elements of "
            f"{STORAGES[storage.kind][1]} but its member holds {info.file_size:,} bytes"
        )
    # The last element a view reaches (Python integers: a huge declaration cannot wrap).
    last = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if (math.prod(size) and last >= storage.numel) or offset > storage.numel:
        raise FileFormatError(
            f"{where}: sizes {size}, strides {stride} from offset {offset} reach "
            f"beyond the {storage.numel:,} elements of storage {storage.key!r}"
        )
    return _Checked(storage, dtype, offset, size, stride)


def _reader(
    fp: io.BufferedReader, info: zipfile.ZipInfo, tensor: _Checked, where: str
) -> Callable[[], np.ndarray]:
    """Return a function that copies one tensor out of the file, checking the CRC-32."""
    dtype = tensor.dtype

    def read() -> np.ndarray:
        data, crc = read_exactly(fp, stored_member_offset(fp, info), info.file_size, 0)
        if crc != info.CRC:
            raise FileFormatError(f"{where}: CRC-32 mismatch: the storage is damaged or changed")
        items = data.view(dtype)[tensor.offset :]
        strides = tuple(s * dtype.itemsize for s in tensor.stride)
        # A view of the fresh buffer, bounds checked by `_layout`; LazyArray copies it if
        # it is not C-contiguous (a transposed or overlapping view).
        array = np.lib.stride_tricks.as_strided(items, tensor.size, strides)
        if STORAGES[tensor.storage.kind][1] == "bfloat16":  # the upper half of a float32
            return (array.astype(np.uint32) << 16).view(np.float32)
        return array

    return read


def _lazy_tensors(
    fp: io.BufferedReader,
    zf: zipfile.ZipFile,
    prefix: str,
    state: Mapping[str, _Tensor],
    where: str,
) -> dict[str, LazyArray]:
    """Check every tensor against the zip; return them lazy, without BatchNorm's counters."""
    tensors = {}
    for name, tensor in state.items():
        at = f"{where} tensor {name!r}"
        storage = tensor.storage
        if type(storage) is not _Storage:
            raise FileFormatError(f"{at}: its storage is not a storage reference")
        try:
            info = zf.getinfo(f"{prefix}/data/{storage.key}")
        except KeyError:
            raise FileFormatError(f"{at}: its storage has no member in the zip") from None
        checked = _layout(tensor, storage, info, at)
        kind = STORAGES[storage.kind][1]
        if kind not in _FLOATS:
            # A BatchNorm's num_batches_tracked is a count, not a weight: skipped.
            if name.endswith(".num_batches_tracked") and checked.size == () and kind == "int64":
                continue
            raise FileFormatError(f"{at}: weights must be floating point, got torch.{kind}")
        tensors[name] = LazyArray(
            checked.size,
            np.float32 if kind == "bfloat16" else checked.dtype,
            _reader(fp, info, checked, at),
            at,
        )
    return tensors


def _record(state: object, where: str) -> dict[str, str]:
    metadata = getattr(state, "_metadata", None) or {}
    record = metadata.get(METADATA_KEY, {}) if isinstance(metadata, Mapping) else None
    if not isinstance(record, Mapping) or not all(type(v) is str for v in record.values()):
        raise FileFormatError(f"{where}: damaged vgg_np provenance record")
    return dict(record)


@contextlib.contextmanager
def read_state_dict(
    path: str | os.PathLike, where: str | None = None
) -> Iterator[tuple[dict[str, LazyArray], dict[str, str]]]:
    """Open a PyTorch state dict: yield ``{name: LazyArray}`` and its vgg_np record.

    Nothing in the file is executed, and PyTorch is not needed. The file stays open while
    the context is: tensors are read (and their CRC-32 checked) when NumPy asks for them.

    Raises
    ------
    FileFormatError
        If the file is damaged, in PyTorch's pre-1.6 format, or holds anything but tensors
        in plain containers (the message names the refused global).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "w.pth"
    >>> write_state_dict(path, {"fc.weight": np.eye(2, dtype=np.float32)})
    >>> with read_state_dict(path) as (tensors, record):
    ...     np.asarray(tensors["fc.weight"])
    array([[1., 0.],
           [0., 1.]], dtype=float32)
    """
    where = where or repr(os.fspath(path))
    with open_regular(path) as fp:
        if not zipfile.is_zipfile(fp):
            raise FileFormatError(
                f"{where}: not a zip: a PyTorch file older than 1.6 (a bare pickle) or a "
                "damaged one; re-save it with a current torch.save"
            )
        with zipfile.ZipFile(fp) as zf, reading(where):
            check_zip(zf, where)  # declared sizes against stored sizes, before reading
            prefix = _archive(zf, where)
            order = _small_member(zf, f"{prefix}/byteorder", 16, where)
            if order not in (None, b"little"):
                raise FileFormatError(f"{where}: byte order {order!r}: only little-endian")
            data = _small_member(zf, f"{prefix}/data.pkl", MAX_PICKLE, where)
            assert data is not None, "_archive found this member"
            _check_opcodes(data, where)
            state = _unwrap(_StateDictUnpickler(data, where).load(), where)
            tensors = _lazy_tensors(fp, zf, prefix, state, where)
            record = _record(state, where)
        yield tensors, record


@contextlib.contextmanager
def open_torch(path: str | os.PathLike, where: str | None = None) -> Iterator[WeightSource]:
    """Open a PyTorch state dict: yield its lazy canonical tensors and provenance."""
    where = where or repr(os.fspath(path))
    with read_state_dict(path, where) as (state, record):
        tensors, layout = flat_tensors(state, where)
        description = f"pytorch ({LAYOUT_NAMES[layout]})"
        provenance = Provenance.from_record(record, description, where)
        if provenance is None and layout in ("torchvision", "timm"):
            provenance = Provenance.implied(
                description, Family(layout), f"implied by a PyTorch file in {layout}'s layout"
            )
        labels = from_record(record[RECORD_KEY], where) if RECORD_KEY in record else {}
        yield WeightSource(
            tensors,
            provenance
            or Provenance(description, Family.UNKNOWN, evidence="no provenance recorded"),
            {"labels": labels["labels"]} if "labels" in labels else {},
            path=where,
            layout=layout,
        )


# ---------------------------------------------------------------------------------------
# Writing: the zip torch.save writes, with a pickle spelled out opcode by opcode
# ---------------------------------------------------------------------------------------


def _plain(value: object) -> bytes:
    """Pickle opcodes for plain data (dicts, strings, ints), no memo, no PROTO or STOP."""
    pickler_output = io.BytesIO()
    pickler = pickle.Pickler(pickler_output, protocol=2)
    pickler.fast = True  # no memo: the opcodes can be spliced into another pickle
    pickler.dump(value)
    return pickler_output.getvalue()[2:-1]


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _tensor_pickle(key: str, array: np.ndarray) -> bytes:
    """``_rebuild_tensor_v2(storage, 0, shape, strides, False, OrderedDict())`` for `array`."""
    strides = tuple(s // array.itemsize for s in array.strides)  # elements, C order
    storage_id = (
        b"(" + _plain("storage") + _global("torch", _WRITTEN[array.dtype])
        + _plain(key) + _plain("cpu") + _plain(array.size) + b"tQ"
    )  # fmt: skip
    hooks = _global("collections", "OrderedDict") + b")R"
    arguments = storage_id + _plain(0) + _plain(array.shape) + _plain(strides) + b"\x89" + hooks
    return _global("torch._utils", "_rebuild_tensor_v2") + b"(" + arguments + b"tR"


def state_dict_pickle(arrays: Mapping[str, np.ndarray], metadata: Mapping) -> bytes:
    """Return the ``data.pkl`` torch.save writes for an ``OrderedDict`` of tensors.

    Storage ``i`` (the zip member ``data/i``) holds the ``i``-th array.
    """
    items = b"".join(
        _plain(name) + _tensor_pickle(str(i), array)
        for i, (name, array) in enumerate(arrays.items())
    )
    state = _plain({"_metadata": dict(metadata)})
    ordered = _global("collections", "OrderedDict") + b")R"
    return b"\x80\x02" + ordered + b"(" + items + b"u" + state + b"b."


def _aligned(zf: zipfile.ZipFile, name: str) -> zipfile.ZipInfo:
    """Return a member whose data start on an `ALIGNMENT` boundary, padded as torch.save pads."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    assert zf.fp is not None, "the zip is open for writing"
    start = zf.fp.tell() + 30 + len(name.encode()) + 4  # local header, name, pad field header
    padding = -start % ALIGNMENT
    info.extra = struct.pack("<2sH", b"FB", padding) + b"Z" * padding
    return info


def write_state_dict(
    path: str | os.PathLike, arrays: Mapping[str, np.ndarray], metadata: Mapping | None = None
) -> None:
    """Write ``{name: array}`` (float16/32/64) as ``torch.save`` would, atomically, without torch.

    Examples
    --------
    >>> import tempfile, pathlib, zipfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "w.pth"
    >>> write_state_dict(path, {"fc.bias": np.zeros(3, np.float32)})
    >>> zipfile.ZipFile(path).namelist()  # doctest: +NORMALIZE_WHITESPACE
    ['archive/data.pkl', 'archive/.format_version', 'archive/.storage_alignment',
     'archive/byteorder', 'archive/data/0', 'archive/version']
    """
    # C order, little-endian (np.ascontiguousarray would make a 0-d array 1-d).
    arrays = {name: np.asarray(a, order="C") for name, a in arrays.items()}
    arrays = {name: a.astype(a.dtype.newbyteorder("<"), copy=False) for name, a in arrays.items()}
    for name, array in arrays.items():
        if array.dtype not in _WRITTEN:
            raise TypeError(f"tensor {name!r}: a .pth holds float16/32/64 here, got {array.dtype}")
    pickled = state_dict_pickle(arrays, metadata or {})
    with atomic_write(path) as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
        for name, data in (
            ("data.pkl", pickled),
            (".format_version", b"1"),
            (".storage_alignment", str(ALIGNMENT).encode()),
            ("byteorder", b"little"),
        ):
            zf.writestr(_aligned(zf, f"archive/{name}"), data)
        for i, array in enumerate(arrays.values()):
            # .data: the bytes as a memoryview, not copied (C order, made so above).
            zf.writestr(_aligned(zf, f"archive/data/{i}"), array.reshape(-1).view(np.uint8).data)
        zf.writestr(_aligned(zf, "archive/version"), b"3\n")


def write_torch(
    path: str | os.PathLike,
    weights: Mapping[str, tuple],
    provenance: Provenance,
    info: Mapping | None = None,
) -> str:
    """Write canonical weights as a torchvision state dict (as ``torch.save`` does), atomically."""
    dense = check_torchvision(info or {}, path)
    state = to_state_dict(weights, conv_names(weights), dense)
    record = provenance.record()
    # A trained model's class names ride beside the provenance (torch ignores the entry).
    if (labels := to_record({"labels": (info or {}).get("labels")})) is not None:
        record[RECORD_KEY] = labels
    write_state_dict(path, state, {METADATA_KEY: record})
    return "pytorch (torchvision layout)"
