"""Keras 0.x/1.x files written under Theano: the format of the original Keras VGG16 example.

That example is a ``Sequential`` of ``ZeroPadding2D((1, 1))`` + ``Convolution2D(w, 3, 3)``
pairs, ``MaxPooling2D`` at the end of each block, then ``Flatten``, ``Dense`` layers with
``Dropout`` between them, on input ``(3, 224, 224)``. Its weight file has a root attribute
``nb_layers`` and one group ``layer_{k}`` per layer (parameterless ones included), with
attribute ``nb_params`` and datasets ``param_{p}``.

Two conversions make it Keras-layout (both small named functions, tested on their own):

- Theano's ``conv2d`` is a true convolution, so its kernels are stored flipped: flip
  both spatial axes to get a cross-correlation kernel (`theano_to_correlation`), then
  OIHW -> HWIO;
- Theano flattened NCHW, so ``fc1``'s rows are in C, H, W order (`chw_rows_to_hwc`).

Whether a file really holds flipped kernels depends on how it was made; the reader
assumes so (``flip=True``), and tests/formats/test_theano.py checks the assumption against
known outputs.
"""

from __future__ import annotations

import itertools

import h5py
import numpy as np

from vgg_np.formats import _hdf5
from vgg_np.formats._common import FileFormatError, LazyArray
from vgg_np.formats.contract import Family, Provenance, WeightSource
from vgg_np.formats.layouts import dense_names, lazy_hwc_rows, oihw_to_hwio


def theano_to_correlation(weight: np.ndarray) -> np.ndarray:
    """Flip a Theano convolution kernel ``(O, C, KH, KW)`` into a cross-correlation one.

    Convolving with ``w`` equals correlating with ``w`` rotated by 180 degrees.

    Examples
    --------
    >>> theano_to_correlation(np.arange(4.0).reshape(1, 1, 2, 2))[0, 0]
    array([[3., 2.],
           [1., 0.]])
    """
    return np.asarray(weight)[:, :, ::-1, ::-1]


def is_theano(f: h5py.File) -> bool:
    """Whether an open HDF5 file is in the Keras 0.x/1.x Theano layout (``nb_layers``)."""
    return "nb_layers" in f.attrs


def _layers_with_params(f: h5py.File, where: str) -> list[tuple[int, list]]:
    """(position, [param datasets]) of every layer group that has parameters."""
    count = int(np.asarray(f.attrs["nb_layers"]).item())
    layers = []
    for k in range(count):
        group = f.get(f"layer_{k}")
        if not isinstance(group, h5py.Group):
            raise FileFormatError(f"{where}: declares {count} layers but has no group 'layer_{k}'")
        n_params = int(np.asarray(group.attrs.get("nb_params", 0)).item())
        params = [group.get(f"param_{p}") for p in range(n_params)]
        missing = [f"param_{p}" for p, d in enumerate(params) if not isinstance(d, h5py.Dataset)]
        if missing:
            raise FileFormatError(f"{where}: layer_{k} lacks {missing}")
        if params:
            layers.append((k, [_hdf5.dataset(d, where) for d in params]))
    return layers


def read_theano(f: h5py.File, where: str, *, flip: bool = True) -> WeightSource:
    """Map a Theano-era Keras weight file to the canonical ``{Keras name: (kernel, bias)}``."""
    layers = _layers_with_params(f, where)
    convs = [(k, p) for k, p in layers if len(p[0].shape) == 4]
    dense = [(k, p) for k, p in layers if len(p[0].shape) == 2]
    if not convs or len(convs) + len(dense) != len(layers) or any(len(p) != 2 for _, p in layers):
        raise FileFormatError(
            f"{where}: expected convolutions then dense layers, each with W and b"
        )
    # Between two convolutions of one block sits the fewest parameterless layers (a
    # ZeroPadding2D, or none); a MaxPooling2D adds one more at a block boundary.
    gaps = [b - a for (a, _), (b, _) in itertools.pairwise(convs)]
    boundary = min(gaps, default=1)
    tensors, block, index = {}, 1, 0
    for i, (_, (weight, bias)) in enumerate(convs):
        if i and gaps[i - 1] > boundary:
            block, index = block + 1, 0
        index += 1
        o, c, kh, kw = weight.shape

        def read(w: LazyArray = weight) -> np.ndarray:
            array = np.asarray(w)
            return oihw_to_hwio(theano_to_correlation(array) if flip else array)

        tensors[f"block{block}_conv{index}"] = (
            LazyArray((kh, kw, c, o), weight.dtype, read, weight.where),
            bias,
        )
    channels = convs[-1][1][0].shape[0]
    for name, (_, (kernel, bias)) in zip(dense_names(len(dense)), dense, strict=True):
        if name == "fc1":
            kernel = lazy_hwc_rows(kernel, channels, where)
        tensors[name] = (kernel, bias)
    kind = "flipped kernels" if flip else "kernels taken as stored"
    provenance = Provenance.implied(
        f"keras-h5 (Keras 0.x/1.x Theano layout, {kind})",
        Family.THEANO,
        "implied by the Theano-era Keras layout (the original VGG16, converted from Caffe)",
    )
    return WeightSource(tensors, provenance, path=where, layout="theano")
