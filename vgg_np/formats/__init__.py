"""Weight files: one registry of formats, one reader per format, one typed result.

Every reader returns a `WeightSource` (see `vgg_np.formats.contract`): lazy tensors
``{Keras layer name: (kernel, bias)}`` in Keras layout (HWIO convolution kernels,
``(in, out)`` dense kernels), and a `Provenance` (format, family, the preprocessing and
resizing the weights expect, input size where known, and the evidence). The model checks
every shape before a byte of a tensor is read. Nothing here runs a forward pass.

`FORMATS` lists the formats in detection order; detecting, reading and writing all
dispatch through it. Formats are detected from the file's content, not its name.
Any malformed, truncated or hostile file fails with a `ValueError` naming it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import struct
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager

import numpy as np

from vgg_np.formats import (
    _hdf5,
    keras_files,
    keras_writer,
    npz,
    onnx_graph,
    safetensors_file,
    theano,
    torch_file,
)
from vgg_np.formats._common import (
    FileFormatError,
    LazyArray,
    check_regular,
    check_total,
    lazy,
    open_regular,
    reading,
)
from vgg_np.formats.contract import (
    Family,
    Preprocessing,
    Provenance,
    WeightSource,
    choose_preprocessing,
)

__all__ = [
    "FORMATS",
    "Family",
    "FileFormatError",
    "Format",
    "Preprocessing",
    "Provenance",
    "WeightSource",
    "choose_preprocessing",
    "convert",
    "detect_format",
    "open_weights",
    "write_npz",
    "write_weights",
]

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06")
PICKLE_PROTOCOLS = (b"\x02", b"\x03", b"\x04", b"\x05")

write_npz = npz.write_npz


@dataclasses.dataclass
class _Sniff:
    """The first bytes of a file, and its zip member names if it is a zip."""

    path: str
    where: str
    head: bytes
    size: int

    @functools.cached_property
    def zip_names(self) -> list[str] | None:
        if self.head[:4] not in ZIP_SIGNATURES:
            return None
        try:
            with open_regular(self.path) as f, zipfile.ZipFile(f) as zf:
                return zf.namelist()
        except zipfile.BadZipFile as error:
            raise FileFormatError(
                f"{self.where} starts like a zip file but is damaged: {error}"
            ) from None


def _is_torch(s: _Sniff) -> bool:
    if s.zip_names is not None:
        return any(n.endswith("data.pkl") for n in s.zip_names)  # torch.save's zip format
    return s.head[:1] == b"\x80" and s.head[1:2] in PICKLE_PROTOCOLS  # a legacy pickle


def _is_npz(s: _Sniff) -> bool:
    names = s.zip_names or []
    return bool(names) and all(n.endswith(".npy") for n in names)


def _is_safetensors(s: _Sniff) -> bool:
    return (
        len(s.head) == 9
        and s.head[8:9] == b"{"
        and struct.unpack("<Q", s.head[:8])[0] <= s.size - 8
    )


@contextlib.contextmanager
def _open_hdf5(path: str, where: str, theano_flip: bool) -> Iterator[WeightSource]:
    """Keras HDF5 files of every era: Theano's layout or the Keras layouts."""
    with _hdf5.open_hdf5(path, where) as f:
        if theano.is_theano(f):
            yield theano.read_theano(f, where, flip=theano_flip)
        else:
            yield keras_files.read_keras_h5(f, where)


#: ``write(path, weights, provenance, layout, info)`` of a `Format`: returns what it wrote.
Writer = Callable[[str | os.PathLike, Mapping[str, tuple], Provenance, str | None, dict], str]


def _write_npz(
    path: str | os.PathLike,
    weights: Mapping[str, tuple],
    provenance: Provenance,
    layout: str | None,
    info: dict,
) -> str:
    npz.write_npz(path, weights, provenance=provenance, info=info)
    return npz.DESCRIPTION


def _write_h5(
    path: str | os.PathLike,
    weights: Mapping[str, tuple],
    provenance: Provenance,
    layout: str | None,
    info: dict,
) -> str:
    """Keras Applications' layout for a plain VGG, else (or asked) the whole model."""
    plain = not info.get("head") and all(len(tensors) == 2 for tensors in weights.values())
    if layout == "model" or (layout is None and not plain):
        return keras_writer.write_keras_model_h5(path, weights, provenance, info)
    if not plain:
        raise ValueError(
            f"{os.fspath(path)!r}: the Keras Applications layout holds a plain VGG, not a "
            "head of its own or batch norms; write the whole model (layout 'model'), .npz or "
            "Keras-layout .safetensors"
        )
    keras_files.write_keras_h5(path, weights, provenance=provenance)
    return "keras-h5 (Keras Applications layout)"


@dataclasses.dataclass(frozen=True)
class Format:
    """One weights format: how to recognise it, read it and (maybe) write it.

    Attributes
    ----------
    name : str
        What `detect_format` returns.
    detect : callable
        Takes the file's first bytes (and zip member names); True if it is this format.
    open : callable
        ``open(path, where, theano_flip)``: a context manager yielding a `WeightSource`.
    suffixes : tuple of str
        File name endings `write_weights` writes this format for.
    write : callable, optional
        ``write(path, weights, provenance, layout, info)``; returns what was written.
        `info` holds the architecture (``head``, ``batch_norm_eps``): a writer records
        it or refuses.
    layouts : tuple of str
        The ``layout`` values `write` accepts besides None (its default).

    Examples
    --------
    >>> {f.name: f.suffixes for f in FORMATS if f.write}  # doctest: +NORMALIZE_WHITESPACE
    {'hdf5': ('.h5', '.hdf5'), 'keras-zip': ('.keras',), 'torch': ('.pth', '.pt'),
     'npz': ('.npz',), 'safetensors': ('.safetensors',)}
    """

    name: str
    detect: Callable[[_Sniff], bool]
    open: Callable[[str, str, bool], AbstractContextManager[WeightSource]]
    suffixes: tuple[str, ...] = ()
    write: Writer | None = None
    layouts: tuple[str, ...] = ()


#: Every format, in detection order.
FORMATS: tuple[Format, ...] = (
    Format(
        "hdf5",
        lambda s: s.head[:8] == HDF5_SIGNATURE,
        _open_hdf5,
        (".h5", ".hdf5"),
        _write_h5,
        ("applications", "model"),
    ),
    Format(
        "keras-zip",
        lambda s: s.zip_names is not None and keras_files.KERAS_ZIP_MEMBER in s.zip_names,
        lambda path, where, _: keras_files.open_keras_zip(path, where),
        (".keras",),
        lambda path, weights, provenance, layout, info: keras_writer.write_keras_zip(
            path, weights, provenance, info
        ),
    ),
    Format(
        "torch",
        _is_torch,
        lambda path, where, _: torch_file.open_torch(path, where),
        (".pth", ".pt"),
        lambda path, weights, provenance, layout, info: torch_file.write_torch(
            path, weights, provenance, info
        ),
    ),
    Format(
        "npz",
        _is_npz,
        lambda path, where, _: npz.open_npz(path, where),
        (".npz",),
        _write_npz,
    ),
    Format(
        "safetensors",
        _is_safetensors,
        lambda path, where, _: safetensors_file.open_source(path, where),
        (".safetensors",),
        safetensors_file.write_weights,
        ("torchvision", "keras"),
    ),
    Format(
        "onnx",
        lambda s: s.head[:1] == b"\x08",  # a ModelProto starts with field 1, ir_version
        lambda path, where, _: onnx_graph.open_onnx(path, where),
    ),
)
_BY_NAME = {f.name: f for f in FORMATS}


def _detect(path: str | os.PathLike) -> Format:
    where = repr(os.fspath(path))
    size = check_regular(path).st_size
    with open_regular(path) as f:
        head = f.read(9)
    sniff = _Sniff(os.fspath(path), where, head, size)
    with reading(where):
        for fmt in FORMATS:
            if fmt.detect(sniff):
                return fmt
    if sniff.zip_names is not None:
        raise FileFormatError(
            f"{where} is a zip file but neither a .keras model, a PyTorch file nor a .npz "
            f"of weights (members: {sniff.zip_names[:5]})"
        )
    raise FileFormatError(
        f"unknown weights format: {where} starts with {head[:8]!r}; supported are Keras HDF5 "
        "(.h5, .weights.h5, Theano-era .h5), .keras, vgg_np .npz, .safetensors, PyTorch "
        ".pth/.pt and ONNX"
    )


def detect_format(path: str | os.PathLike) -> str:
    """Name the format of a weights file from its first bytes and structure.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    str
        The `Format.name` of one of `FORMATS`: ``"hdf5"``, ``"keras-zip"``, ``"torch"``,
        ``"npz"``, ``"safetensors"`` or ``"onnx"``.

    Raises
    ------
    ValueError
        If the content is not a supported format, or the path is not a regular file.
    OSError
        If the file does not exist or cannot be read.

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
    return _detect(path).name


def _encodes(name: str) -> bool:
    """Return True if `name` is valid Unicode text (no lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _canonical(source: WeightSource) -> WeightSource:
    """Hold every reader to the contract: lazy floating-point tensors, named in errors."""
    tensors = {}
    for name, pair in source.tensors.items():
        where = f"{source.path} layer {name!r}"
        if not name.isprintable() or not _encodes(name):
            # h5py decodes undecodable bytes to surrogates: such a name is damage, and
            # would only fail later, unnamed, where it is written or compared.
            raise FileFormatError(f"{where}: a layer name must be printable UTF-8 text")
        arrays = tuple(a if isinstance(a, LazyArray) else lazy(a, where) for a in pair)
        for array in arrays:
            if array.dtype.kind != "f":
                raise FileFormatError(
                    f"{array.where or where}: weights must be floating point, "
                    f"got dtype {array.dtype}"
                )
        tensors[name] = arrays
    return dataclasses.replace(source, tensors=tensors)


@contextlib.contextmanager
def open_weights(path: str | os.PathLike, *, theano_flip: bool = True) -> Iterator[WeightSource]:
    """Open a weights file of any supported format; its tensors stay readable inside.

    Parameters
    ----------
    path : str or os.PathLike
    theano_flip : bool, default True
        For Theano-era Keras files only: their convolution kernels are flipped (true
        convolution); see `vgg_np.formats.theano`.

    Yields
    ------
    WeightSource
        Lazy canonical tensors (read, and copied, on ``np.asarray``) and provenance.

    Raises
    ------
    ValueError
        If the format is unknown, the file is damaged, hostile or inconsistent, or not a
        regular file (a `FileFormatError`, naming the file).
    ImportError
        If the format needs an optional package that is missing (onnx).
    OSError
        If the file does not exist or cannot be opened.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> import numpy as np
    >>> weights = {"fc1": (np.ones((4, 2), np.float32), np.zeros(2, np.float32))}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = pathlib.Path(tmp) / "w.safetensors"
    ...     _ = write_weights(path, weights, layout="keras")
    ...     with open_weights(path) as source:
    ...         print(source.format, {k: v[0].shape for k, v in source.tensors.items()})
    ...         print(source.provenance.family.value, source.provenance.preprocess)
    safetensors (Keras layout) {'fc1': (4, 2)}
    unknown None
    """
    fmt = _detect(path)
    where = repr(os.fspath(path))
    with contextlib.ExitStack() as stack:
        with reading(where):
            source = _canonical(stack.enter_context(fmt.open(os.fspath(path), where, theano_flip)))
        check_total(source.tensors, where)  # before any tensor is read or computed
        yield source


def write_weights(
    path: str | os.PathLike,
    weights: Mapping[str, tuple],
    *,
    layout: str | None = None,
    provenance: Provenance | None = None,
    info: Mapping | None = None,
) -> str:
    """Write canonical weights in the format named by `path`'s extension, with provenance.

    The file is written beside `path` and renamed over it when complete (never a
    half-written target, and `path` may be the file the weights were read from); it
    gets the permissions the umask gives a new file.

    Parameters
    ----------
    path : str or os.PathLike
        ``.npz`` (vgg_np), ``.h5`` (Keras: see `layout`), ``.keras`` (a whole Keras 3
        model, `vgg_np.formats.keras_writer`), ``.safetensors`` or ``.pth`` / ``.pt``
        (torchvision state dict, written as ``torch.save`` does).
    weights : dict
        Keras layer name -> (kernel, bias), Keras layout.
    layout : str, optional
        For ``.safetensors``: ``"torchvision"`` (the default: torchvision's keys and
        layouts) or ``"keras"`` (vgg_np's ``<layer>/kernel`` names in Keras layout). For
        ``.h5``: ``"applications"`` (Keras Applications' weights layout, which
        ``keras.applications.VGG16(weights=path)`` loads: a plain VGG only) or
        ``"model"`` (the whole model, which ``keras.models.load_model`` opens); the
        default is Keras Applications' layout for a plain VGG, the whole model otherwise.
    provenance : Provenance, optional
        Where the weights came from (`WeightSource.provenance`): recorded in the file so
        that a reader knows their preprocessing. None records an unknown family.
    info : mapping, optional
        The architecture beyond the tensors' names (``head``: a head of one's own,
        ``batch_norm_eps``), as readers give it in `WeightSource.info`: recorded, or
        refused by a format that cannot hold it (Keras Applications ``.h5``; in
        torchvision's layout, a head its classifier does not fit). A whole Keras model
        also needs ``layers`` (the layer table) and ``input_shape`` (``(H, W, C)``):
        `vgg_np.export` gives them from a model.

    Returns
    -------
    str
        What was written.

    Raises
    ------
    ValueError
        On an unknown extension or layout, or an architecture the format cannot hold
        (`keras_writer.NeedsArchitecture` for a whole model without its layer table).

    Examples
    --------
    >>> import pathlib, tempfile
    >>> import numpy as np
    >>> weights = {"block1_conv1": (np.ones((3, 3, 3, 4), np.float32), np.zeros(4, np.float32))}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     write_weights(pathlib.Path(tmp) / "w.safetensors", weights)
    'safetensors (torchvision layout)'
    """
    suffix = os.path.splitext(os.fspath(path))[1].lower()
    fmt = next((f for f in FORMATS if suffix in f.suffixes), None)
    if fmt is None or fmt.write is None:
        raise ValueError(
            f"cannot tell the format to write from {os.fspath(path)!r}: use "
            f"{', '.join(s for f in FORMATS for s in f.suffixes)}"
        )
    if layout is not None and layout not in fmt.layouts:
        owners = [f for f in FORMATS if layout in f.layouts] or [f for f in FORMATS if f.layouts]
        names = " or ".join(f.suffixes[0] for f in owners)
        layouts = " or ".join(dict.fromkeys(name for f in owners for name in f.layouts))
        raise ValueError(f"`layout` {layout!r} applies to {names} only ({layouts}), not {suffix}")
    provenance = provenance or Provenance("weights of unknown origin", Family.UNKNOWN)
    return fmt.write(path, weights, provenance, layout, dict(info or {}))


def convert(
    source: str | os.PathLike,
    target: str | os.PathLike,
    *,
    layout: str | None = None,
    theano_flip: bool = True,
) -> tuple[WeightSource, str]:
    """Convert a weights file to the format `target`'s extension names, keeping provenance.

    Every tensor is read (and copied) before `target` is written, so `target` may be
    `source` itself. Only the tensors and what the reader says about them are converted:
    a whole Keras model (``.keras``, an ``.h5`` of layout ``"model"``) needs the network
    they belong to, which `vgg_np.export.convert` describes first.

    Parameters
    ----------
    source, target : str or os.PathLike
    layout : str, optional
        As `write_weights` takes it.
    theano_flip : bool, default True
        For Theano-era Keras sources (see `open_weights`).

    Returns
    -------
    source : WeightSource
        What was read (its tensors are no longer readable).
    written : str
        What was written.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> import numpy as np
    >>> weights = {"fc1": (np.ones((4, 2), np.float32), np.zeros(2, np.float32))}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = pathlib.Path(tmp) / "w.npz"
    ...     write_npz(path, weights)
    ...     read, written = convert(path, pathlib.Path(tmp) / "w.safetensors", layout="keras")
    ...     read.format, written
    ('npz (vgg_np)', 'safetensors (Keras layout)')
    """
    with open_weights(source, theano_flip=theano_flip) as opened:
        weights = {name: tuple(map(np.asarray, t)) for name, t in opened.tensors.items()}
    written = write_weights(
        target, weights, layout=layout, provenance=opened.provenance, info=opened.info
    )
    return opened, written
