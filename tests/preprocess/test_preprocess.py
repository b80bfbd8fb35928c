"""Tests of vgg_np.preprocess: Keras's three modes without mutation, and the ImageNet labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import DATA, ROOT
from vgg_np import decode_predictions, imagenet_classes, load_image, preprocess_input


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
    raw = json.loads((ROOT / "vgg_np/data/imagenet_class_index.json").read_text())
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


# ---------------------------------------------------------------------------------------
# load_image
# ---------------------------------------------------------------------------------------


def _save(array, path, **kwargs):
    from PIL import Image

    Image.fromarray(array).save(path, **kwargs)
    return path


def test_exif_orientation_is_applied(tmp_path):
    from PIL import Image

    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :30] = (255, 0, 0)  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = _save(pixels, tmp_path / "photo.jpg", exif=exif, quality=100)
    upright = load_image(path, size=60)
    # After the rotation the red half is on top.
    assert upright[:20, :, 0].mean() > 200 and upright[40:, :, 0].mean() < 50


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    from PIL import Image

    image = Image.fromarray(
        np.random.default_rng(0).integers(0, 256, (20, 30, 3), np.uint8)
    ).convert(mode)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    image.save(path)
    pixels = load_image(path, size=16)
    assert pixels.shape == (16, 16, 3) and pixels.dtype == np.uint8


def test_keras_resize_is_nearest_neighbour_straight_to_size(tmp_path):
    pixels = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3) * 5
    path = _save(pixels, tmp_path / "x.png")
    np.testing.assert_array_equal(load_image(path, size=8), pixels.repeat(2, 0).repeat(2, 1))


def test_torchvision_resize_is_shorter_side_then_centre_crop(tmp_path):
    from PIL import Image

    pixels = np.random.default_rng(1).integers(0, 256, (300, 450, 3), np.uint8)
    path = _save(pixels, tmp_path / "x.png")
    # torchvision: Resize(256) -> 256 x int(256 * 450 / 300) = 256 x 384, CenterCrop(224).
    expected = np.asarray(Image.fromarray(pixels).resize((384, 256), Image.Resampling.BILINEAR))
    expected = expected[16:240, 80:304]
    np.testing.assert_array_equal(load_image(path, resize="torchvision"), expected)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (b"plain text", "not an image Pillow can read"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "damaged or truncated image"),
    ],
)
def test_load_image_refuses_bad_files(tmp_path, content, match):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        load_image(path)


def test_load_image_bad_resize_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="`resize` must be one of"):
        load_image(tmp_path / "x.png", resize="bicubic")
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")


def test_labels_with_an_empty_line_count_names_and_empty_lines_apart(tmp_path):
    from vgg_np.preprocess import read_class_names

    (tmp_path / "labels.txt").write_text("a\n\nc\nd\ne\n")
    with pytest.raises(ValueError, match="4 names and 1 empty lines, but the classifier has 5"):
        read_class_names(tmp_path / "labels.txt", 5)
