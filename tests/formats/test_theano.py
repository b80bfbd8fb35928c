"""Theano-era Keras files (the original Keras VGG16 example's format), written here with h5py.

The file is made from known weights the way Keras 0.x saved a Theano model: one group per
layer of the Sequential (ZeroPadding2D, Convolution2D, MaxPooling2D, Flatten, Dense,
Dropout), convolution kernels OIHW and flipped (Theano convolves), fc1's rows in C, H, W
order. Loading it must give back the original network exactly.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from tests.conftest import TINY_DIR
from tests.reference.make_keras_reference import TINY, TINY_CLASSES
from vgg_np import VGG
from vgg_np.formats.layouts import flattened_grid, hwc_rows_to_chw, hwio_to_oihw
from vgg_np.formats.theano import theano_to_correlation


def write_theano_file(path, weights: dict, config, *, zero_padding: bool = True) -> None:
    """Save `weights` as Keras 0.x did for a Theano Sequential VGG."""
    layers: list[list[np.ndarray]] = []
    for b, widths in enumerate(config.blocks, start=1):
        for i in range(1, len(widths) + 1):
            if zero_padding:
                layers.append([])  # ZeroPadding2D((1, 1))
            kernel, bias = weights[f"block{b}_conv{i}"]
            # Theano stores the kernel of a true convolution: OIHW, rotated by 180 degrees.
            layers.append([theano_to_correlation(hwio_to_oihw(kernel)), bias])
        layers.append([])  # MaxPooling2D
    layers.append([])  # Flatten
    dense = [n for n in weights if n.startswith("fc")] + ["predictions"]
    channels = config.blocks[-1][-1]
    for position, name in enumerate(dense):
        kernel, bias = weights[name]
        if name == "fc1":  # Theano flattened NCHW
            _, h, w = flattened_grid(kernel.shape[0], channels, name)
            kernel = hwc_rows_to_chw(kernel, (h, w, channels))
        layers.append([kernel, bias])
        if position < len(dense) - 1:
            layers.append([])  # Dropout(0.5)
    with h5py.File(path, "w") as f:
        f.attrs["nb_layers"] = len(layers)
        for k, params in enumerate(layers):
            group = f.create_group(f"layer_{k}")
            group.attrs["nb_params"] = len(params)
            for p, array in enumerate(params):
                group.create_dataset(f"param_{p}", data=array)


@pytest.fixture(scope="module")
def original():
    return VGG(TINY, weights=TINY_DIR / "model.h5", input_shape=(32, 32, 3), classes=TINY_CLASSES)


@pytest.mark.parametrize("zero_padding", [True, False])
def test_theano_file_gives_back_the_original_network(tmp_path, original, zero_padding):
    path = tmp_path / "vgg_theano.h5"
    write_theano_file(path, original.weights, TINY, zero_padding=zero_padding)
    # The original example's input: channels first, (3, H, W).
    loaded = VGG(
        TINY,
        weights=path,
        input_shape=(3, 32, 32),
        classes=TINY_CLASSES,
        data_format="channels_first",
    )
    for name, (kernel, bias) in original.weights.items():
        np.testing.assert_array_equal(loaded.weights[name][0], kernel, err_msg=name)
        np.testing.assert_array_equal(loaded.weights[name][1], bias, err_msg=name)
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded(x.transpose(0, 3, 1, 2)), original(x))


def test_without_the_flip_the_outputs_are_wrong(tmp_path, original):
    # The known outputs are what tell a flipped file from a plain one.
    path = tmp_path / "vgg_theano.h5"
    write_theano_file(path, original.weights, TINY)
    unflipped = VGG(TINY, weights=None, input_shape=(32, 32, 3), classes=TINY_CLASSES, seed=0)
    unflipped.load_weights(path, theano_flip=False)
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    assert not np.allclose(unflipped(x), original(x), rtol=1e-3)
    np.testing.assert_array_equal(
        unflipped.weights["block1_conv1"][0], original.weights["block1_conv1"][0][::-1, ::-1]
    )


def test_theano_file_with_a_missing_group(tmp_path, original):
    path = tmp_path / "broken.h5"
    write_theano_file(path, original.weights, TINY)
    with h5py.File(path, "r+") as f:
        del f["layer_3"]
    with pytest.raises(ValueError, match=r"declares \d+ layers but has no group 'layer_3'"):
        VGG(TINY, weights=path, input_shape=(32, 32, 3), classes=TINY_CLASSES)
