"""Opening HDF5 weight files safely: no indirection, no data beyond what the file holds.

HDF5 can make a dataset read bytes from another file (external raw storage), assemble
it from other files (virtual datasets) or point elsewhere through soft and external
links. A weights file has no business doing any of that, and following them would pull
arbitrary local files into a model: `open_hdf5` refuses such files outright, before any
layout reader looks at them. Each dataset's declared size is checked against the bytes
it stores (`dataset`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import h5py
import numpy as np

from vgg_np.formats._common import FileFormatError, LazyArray, check_expansion, check_regular


def _indirection(f: h5py.File, name: str, link: object) -> str | None:
    """Say what is wrong with one link of the file, or None."""
    if not isinstance(link, h5py.HardLink):
        return f"{name!r} is a {type(link).__name__}; links to other objects or files are refused"
    obj = f[name]
    if not isinstance(obj, h5py.Dataset):
        return None
    plist = obj.id.get_create_plist()
    if plist.get_external_count():
        return f"dataset {name!r} keeps its data in another file (external storage); refused"
    if plist.get_layout() == h5py.h5d.VIRTUAL:
        return f"dataset {name!r} is virtual (assembled from other files); refused"
    return None


def check_no_indirection(f: h5py.File, where: str) -> None:
    """Refuse soft and external links, external storage and virtual datasets anywhere."""
    # The visit stops at the first non-None return; raising inside it confuses h5py.
    problem = f.visititems_links(lambda name, link: _indirection(f, name, link))
    if problem is not None:
        raise FileFormatError(f"{where}: {problem}")


@contextlib.contextmanager
def open_hdf5(path: str | os.PathLike, where: str) -> Iterator[h5py.File]:
    """Open an HDF5 file read-only after checking it holds no indirection."""
    check_regular(path)
    try:
        f = h5py.File(path, "r")
    except OSError as error:
        raise FileFormatError(
            f"{where} cannot be read as HDF5 (damaged or truncated?): {error}"
        ) from None
    with f:
        check_no_indirection(f, where)
        yield f


def dataset(ds: h5py.Dataset, where: str) -> LazyArray:
    """Wrap a dataset as a `LazyArray` after checking its size against what it stores.

    A contiguous dataset must lie inside the file; a chunked one (compressed or sparse)
    must not expand beyond `check_expansion`'s limit; either check runs before a byte of
    the dataset is read or allocated.
    """
    name = f"{where} dataset {ds.name!r}"
    if ds.shape is None:
        raise FileFormatError(f"{name}: holds no data (an empty dataspace)")
    if ds.dtype.kind != "f":
        raise FileFormatError(f"{name}: weights must be floating point, got dtype {ds.dtype}")
    declared = int(np.prod(ds.shape, dtype=object)) * ds.dtype.itemsize
    layout = ds.id.get_create_plist().get_layout()
    if layout == h5py.h5d.CONTIGUOUS and declared:
        offset, size = ds.id.get_offset(), os.path.getsize(ds.file.filename)
        if offset is None or offset + declared > size:
            raise FileFormatError(
                f"{name}: declares {declared:,} bytes that the file does not hold (truncated?)"
            )
    elif layout == h5py.h5d.CHUNKED:
        check_expansion(declared, ds.id.get_storage_size(), name)
    return LazyArray(ds.shape, ds.dtype, lambda: ds[()], name)


def strings(attrs: h5py.AttributeManager, key: str) -> list[str] | None:
    """Read a list-of-strings attribute, joining Keras's ``key0``, ``key1``, ... chunks."""
    if key in attrs:
        chunks = [attrs[key]]
    elif f"{key}0" in attrs:
        chunks, k = [], 0
        while f"{key}{k}" in attrs:
            chunks.append(attrs[f"{key}{k}"])
            k += 1
    else:
        return None
    values = []
    for chunk in chunks:
        for value in np.atleast_1d(np.asarray(chunk)):
            if isinstance(value, bytes):
                values.append(value.decode("utf8"))
            elif isinstance(value, str):
                values.append(value)
            # anything else (an empty float array) means "no entries"
    return values


def text_attrs(attrs: h5py.AttributeManager, prefix: str) -> dict[str, object]:
    """Return the attributes whose names start with `prefix`, bytes decoded."""
    out = {}
    for key in attrs:
        if key.startswith(prefix):
            value = attrs[key]
            out[key] = value.decode("utf8") if isinstance(value, bytes) else value
    return out
