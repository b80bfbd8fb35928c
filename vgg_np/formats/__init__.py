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
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from vgg_np.formats import keras_files, npz, onnx_graph, safetensors_file, torch_file
from vgg_np.formats._common import SUFFIXES, flatten_pairs, pair_flat
from vgg_np.formats.torchvision import from_state_dict, to_state_dict

__all__ = ["WeightSource", "detect_format", "open_weights", "write_npz", "write_weights"]

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
    info : dict
        What else the file says (ONNX: input shape, layout, tensor names).

    Examples
    --------
    >>> WeightSource("npz (vgg_np)", {}).info
    {}
    """

    format: str
    tensors: dict
    info: dict = field(default_factory=dict)


def detect_format(path: str | os.PathLike) -> str:
    """Name the format of a weights file from its first bytes and structure.

    Parameters
    ----------
    path : str or os.PathLike

    Returns
    -------
    {"hdf5", "keras-zip", "npz", "safetensors", "torch", "onnx"}

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
        head = f.read(9)
    size = os.path.getsize(path)
    if head[:8] == HDF5_SIGNATURE:
        return "hdf5"
    if head[:4] in ZIP_SIGNATURES:
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except zipfile.BadZipFile as error:
            raise ValueError(f"{path!r} starts like a zip file but is damaged: {error}") from None
        if keras_files.KERAS_ZIP_MEMBER in names:
            return "keras-zip"
        if any(n.endswith("data.pkl") for n in names):
            return "torch"  # torch.save's zip format
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        raise ValueError(
            f"{path!r} is a zip file but neither a .keras model, a PyTorch file nor a .npz "
            f"of weights (members: {names[:5]})"
        )
    if len(head) == 9 and head[8:9] == b"{" and struct.unpack("<Q", head[:8])[0] <= size - 8:
        return "safetensors"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "torch"  # a legacy pickle-based torch.save file
    if head[:1] == b"\x08":  # an ONNX ModelProto starts with field 1, ir_version
        return "onnx"
    raise ValueError(
        f"unknown weights format: {path!r} starts with {head[:8]!r}; supported are Keras HDF5 "
        "(.h5, .weights.h5, Theano-era .h5), .keras, vgg_np .npz, .safetensors, PyTorch "
        ".pth/.pt and ONNX"
    )


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

    Raises
    ------
    ValueError
        If the format is unknown or the file is damaged or inconsistent.
    ImportError
        If the format needs an optional package that is missing (torch, onnx).
    OSError
        If the file cannot be read.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> import numpy as np
    >>> weights = {"fc1": (np.ones((4, 2), np.float32), np.zeros(2, np.float32))}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = pathlib.Path(tmp) / "w.safetensors"
    ...     _ = write_weights(path, weights, layout="keras")
    ...     with open_weights(path) as source:
    ...         print(source.format, {k: np.asarray(v[0]).shape for k, v in source.tensors.items()})
    safetensors (Keras layout) {'fc1': (4, 2)}
    """
    kind = detect_format(path)
    where = repr(os.fspath(path))
    if kind == "npz":
        with npz.open_npz(path) as tensors:
            yield WeightSource("npz (vgg_np)", tensors)
    elif kind == "keras-zip":
        with keras_files.open_keras_zip(path) as (name, tensors):
            yield WeightSource(name, tensors)
    elif kind == "safetensors":
        with safetensors_file.open_safetensors(path) as state:
            yield _state_dict_source("safetensors", state, where)
    elif kind == "torch":
        yield _state_dict_source("pytorch", torch_file.load_state_dict(path), where)
    elif kind == "onnx":
        tensors, info = onnx_graph.read_onnx(path)
        note = f"; {info['note']}" if info["note"] else ""
        yield WeightSource(f"onnx ({info['input_layout']} input{note})", tensors, info)
    else:
        with keras_files.open_keras_h5(path, theano_flip=theano_flip) as (name, tensors):
            yield WeightSource(name, tensors)


def _state_dict_source(kind: str, state: dict, where: str) -> WeightSource:
    """Map a flat dict of tensors: vgg_np's own layout (``<layer>/kernel``) or torchvision's."""
    if state and all(k.endswith(SUFFIXES) for k in state):
        return WeightSource(f"{kind} (Keras layout)", pair_flat(state, where))
    return WeightSource(f"{kind} (torchvision layout)", from_state_dict(state, where))


def write_weights(path: str | os.PathLike, weights: dict, *, layout: str | None = None) -> str:
    """Write canonical weights in the format named by `path`'s extension.

    Parameters
    ----------
    path : str or os.PathLike
        ``.npz`` (vgg_np), ``.h5`` (Keras Applications layout), ``.safetensors`` or
        ``.pth`` / ``.pt`` (torchvision state dict; ``.pth`` needs torch).
    weights : dict
        Keras layer name -> (kernel, bias), Keras layout.
    layout : {"torchvision", "keras"}, optional
        For ``.safetensors`` only: torchvision's keys and layouts (the default) or
        vgg_np's ``<layer>/kernel`` names in Keras layout.

    Returns
    -------
    str
        What was written.

    Raises
    ------
    ValueError
        On an unknown extension or layout.
    ImportError
        For ``.pth`` without torch.

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
    if layout not in (None, "torchvision", "keras") or (layout and suffix != ".safetensors"):
        raise ValueError(f"`layout` {layout!r} applies to .safetensors only (torchvision or keras)")
    conv_names = sorted(
        (n for n in weights if n.startswith("block")),
        key=lambda n: tuple(int(p) for p in n.removeprefix("block").split("_conv")),
    )
    if suffix == ".npz":
        write_npz(path, weights)
        return "npz (vgg_np)"
    if suffix in (".h5", ".hdf5"):
        keras_files.write_keras_h5(path, weights)
        return "keras-h5 (Keras Applications layout)"
    if suffix == ".safetensors":
        if layout == "keras":
            safetensors_file.write_safetensors(path, flatten_pairs(weights))
            return "safetensors (Keras layout)"
        safetensors_file.write_safetensors(path, to_state_dict(weights, conv_names))
        return "safetensors (torchvision layout)"
    if suffix in (".pth", ".pt"):
        torch_file.save_state_dict(path, to_state_dict(weights, conv_names))
        return "pytorch (torchvision layout)"
    raise ValueError(
        f"cannot tell the format to write from {os.fspath(path)!r}: use .npz, .h5, "
        ".safetensors, .pth or .pt"
    )
