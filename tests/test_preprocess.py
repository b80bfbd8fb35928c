"""Tests of vgg_np.preprocess: Keras's three modes without mutation, and the ImageNet labels."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest

from vgg_np import decode_predictions, imagenet_classes, preprocess_input

DATA = pathlib.Path(__file__).parent / "data"


def test_caffe_mode_equals_keras_preprocess_input():
    # tests/data holds pixels and what keras.applications.vgg16.preprocess_input made of them.
    for name in ("tiny_vgg16/keras_activations.npz", "keras_vgg16_reference.npz"):
        with np.load(DATA / name) as ref:
            np.testing.assert_array_equal(preprocess_input(ref["pixels"]), ref["x"])


def test_golden_values_of_each_mode():
    rgb = np.array([[[[255.0, 128.0, 0.0]]]])
    np.testing.assert_allclose(
        preprocess_input(rgb), [[[[0.0 - 103.939, 128.0 - 116.779, 255.0 - 123.68]]]]
    )
    np.testing.assert_allclose(preprocess_input(rgb, mode="tf"), [[[[1.0, 128 / 127.5 - 1, -1.0]]]])
    torch = [(1 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (0 - 0.406) / 0.225]
    np.testing.assert_allclose(preprocess_input(rgb, mode="torch"), [[[torch]]], rtol=1e-12)


@pytest.mark.parametrize("mode", ["caffe", "torch", "tf"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_input_is_never_modified_and_dtype_kept(mode, dtype):
    x = np.random.default_rng(0).uniform(0, 255, (2, 5, 4, 3)).astype(dtype)
    before = x.copy()
    y = preprocess_input(x, mode=mode)
    np.testing.assert_array_equal(x, before)
    assert not np.shares_memory(x, y)
    assert y.dtype == dtype and y.shape == x.shape


def test_integer_pixels_become_float32():
    y = preprocess_input(np.full((1, 2, 2, 3), 200, np.uint8), mode="tf")
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, 200 / 127.5 - 1, rtol=1e-6)


@pytest.mark.parametrize("mode", ["caffe", "torch", "tf"])
def test_channels_first_is_the_transposed_channels_last(mode):
    x = np.random.default_rng(1).uniform(0, 255, (2, 5, 4, 3))
    last = preprocess_input(x, mode=mode)
    first = preprocess_input(x.transpose(0, 3, 1, 2), mode=mode, data_format="channels_first")
    np.testing.assert_array_equal(first, last.transpose(0, 3, 1, 2))
    single = preprocess_input(x[0].transpose(2, 0, 1), mode=mode, data_format="channels_first")
    np.testing.assert_array_equal(single, last[0].transpose(2, 0, 1))  # one (C, H, W) image


@pytest.mark.parametrize(
    ("x", "kwargs", "error", "match"),
    [
        (np.zeros((1, 4, 4, 3)), {"mode": "caffe2"}, ValueError, r"`mode` must be one of"),
        (np.zeros((1, 4, 4, 3)), {"data_format": "NHWC"}, ValueError, r"`data_format`"),
        (np.zeros((1, 4, 4, 4)), {}, ValueError, r"3 RGB channels on axis -1"),
        (np.zeros((1, 3, 4, 4)), {}, ValueError, r"3 RGB channels on axis -1"),
        (np.zeros((1, 4, 4, 3), bool), {}, TypeError, r"dtype bool"),
    ],
)
def test_bad_input(x, kwargs, error, match):
    with pytest.raises(error, match=match):
        preprocess_input(x, **kwargs)


def test_shipped_labels_have_keras_layout():
    classes = imagenet_classes()
    assert len(classes) == 1000 and len({wnid for wnid, _ in classes}) == 1000
    assert all(w.startswith("n") and len(w) == 9 for w, _ in classes)
    # A few well-known entries of Keras's imagenet_class_index.json.
    assert classes[0] == ("n01440764", "tench")
    assert classes[281] == ("n02123045", "tabby")
    assert classes[409] == ("n02708093", "analog_clock")
    assert classes[999] == ("n15075141", "toilet_tissue")
    # ImageNet's classes are sorted by WordNet id.
    assert [w for w, _ in classes] == sorted(w for w, _ in classes)
    raw = json.loads(
        (pathlib.Path(__file__).parents[1] / "vgg_np/data/imagenet_class_index.json").read_text()
    )
    assert raw["0"] == ["n01440764", "tench"]


def test_decode_predictions_orders_scores_and_names_classes():
    preds = np.zeros((2, 1000), np.float32)
    preds[0, [3, 7, 5]] = [0.2, 0.5, 0.3]
    preds[1, 999] = 1.0
    top = decode_predictions(preds, top=3)
    assert [c[1] for c in top[0]] == ["cock", "electric_ray", "tiger_shark"]
    assert [round(c[2], 6) for c in top[0]] == [0.5, 0.3, 0.2]
    assert top[1][0] == ("n15075141", "toilet_tissue", 1.0)
    assert isinstance(top[0][0][2], float)


def test_decode_predictions_ties_keep_class_order():
    top = decode_predictions(np.full((1, 1000), 0.001), top=3)
    assert [c[1] for c in top[0]] == ["tench", "goldfish", "great_white_shark"]


@pytest.mark.parametrize(
    ("preds", "top", "match"),
    [
        (np.zeros(1000), 5, r"shape \(N, 1000\).*got \(1000,\)"),
        (np.zeros((1, 10)), 5, r"got \(1, 10\)"),
        (np.zeros((1, 1000)), 0, r"`top` must be an int from 1 to 1000"),
        (np.zeros((1, 1000)), 1001, r"`top`"),
        (np.zeros((1, 1000)), 2.5, r"`top`"),
    ],
)
def test_decode_predictions_bad_input(preds, top, match):
    with pytest.raises(ValueError, match=match):
        decode_predictions(preds, top=top)
