"""Tests of the PyTorch-side formats: layout conversions, torchvision state dicts, safetensors."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import TINY_DIR, relative_error, tiny_vgg16
from tests.reference.make_keras_reference import TINY, TINY_CLASSES
from vgg_np import VGG, formats, ops
from vgg_np.formats import safetensors_file
from vgg_np.formats.layouts import (
    chw_rows_to_hwc,
    fc1_keras_to_torch,
    fc1_torch_to_keras,
    flattened_grid,
    hwc_rows_to_chw,
    hwio_to_oihw,
    linear_to_dense,
    oihw_to_hwio,
)
from vgg_np.formats.torchvision import from_state_dict, module_names, to_state_dict


def tiny(**kwargs) -> VGG:
    """The tiny fixtures' network giving logits, as torchvision's models do."""
    return tiny_vgg16(classifier_activation=None, **kwargs)


# ---------------------------------------------------------------------------------------
# The named conversions
# ---------------------------------------------------------------------------------------


def test_oihw_to_hwio_computes_the_same_convolution():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 9, 3))
    weight = rng.standard_normal((5, 3, 3, 4))  # (O, C, KH, KW), a PyTorch conv weight
    # Cross-correlation in PyTorch's indexing, written out.
    xp = np.pad(x, ((0, 0), (1, 1), (1, 2), (0, 0)))  # "same": the odd pixel after
    expected = np.zeros((2, 7, 9, 5))
    for i in range(7):
        for j in range(9):
            window = xp[:, i : i + 3, j : j + 4, :]  # (N, KH, KW, C)
            expected[:, i, j, :] = np.einsum("nhwc,ochw->no", window, weight)
    got = ops.conv2d(x, oihw_to_hwio(weight), padding="same")
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(hwio_to_oihw(oihw_to_hwio(weight)), weight)


def test_fc1_permutation_matches_the_two_flatten_orders():
    rng = np.random.default_rng(1)
    features = rng.standard_normal((2, 3, 4, 5))  # (N, H, W, C) after the last pool
    torch_weight = rng.standard_normal((6, 5 * 3 * 4))  # Linear over the NCHW flatten
    torch_out = features.transpose(0, 3, 1, 2).reshape(2, -1) @ torch_weight.T
    keras_kernel = chw_rows_to_hwc(linear_to_dense(torch_weight), (5, 3, 4))
    np.testing.assert_allclose(ops.flatten(features) @ keras_kernel, torch_out, rtol=1e-12)
    np.testing.assert_array_equal(hwc_rows_to_chw(keras_kernel, (3, 4, 5)), torch_weight.T)


@given(st.integers(1, 6), st.integers(1, 4), st.integers(1, 5))
def test_fc1_conversions_are_inverse(channels, side, out):
    weight = np.arange(out * channels * side * side, dtype=np.float64).reshape(out, -1)
    kernel = fc1_torch_to_keras(weight, (channels, side, side))
    np.testing.assert_array_equal(fc1_keras_to_torch(kernel, (side, side, channels)), weight)


def test_flattened_grid_refuses_a_non_square_map():
    assert flattened_grid(25088, 512, "fc1") == (512, 7, 7)
    with pytest.raises(
        ValueError, match="fc1 takes 1000 inputs, not 512 channels on a square grid"
    ):
        flattened_grid(1000, 512, "fc1")


def test_module_names_of_vgg16_are_torchvisions():
    names = module_names(VGG("vgg16", include_top=False, seed=0).config.conv_names(), 3)
    convs = [names[n] for n in names if "_conv" in n]
    # torchvision's VGG16: convs at 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28; ReLU at +1.
    assert convs == [f"features.{i + 1}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)]
    assert [names[f"block{b}_pool"] for b in range(1, 6)] == [
        f"features.{i}" for i in (4, 9, 16, 23, 30)
    ]
    assert (names["fc1"], names["fc2"], names["predictions"]) == (
        "classifier.1",
        "classifier.4",
        "classifier.6",
    )


# ---------------------------------------------------------------------------------------
# torchvision state dicts
# ---------------------------------------------------------------------------------------


def test_state_dict_round_trip_keeps_every_tensor():
    model = tiny(weights=TINY_DIR / "model.h5")
    state = to_state_dict(model.weights, TINY.conv_names())
    assert state["features.0.weight"].shape == (8, 3, 3, 3)
    assert "features.2.weight" in state and "features.5.weight" in state  # a pool at 4
    assert state["classifier.0.weight"].shape == (48, 32) and "classifier.6.bias" in state
    back = from_state_dict(state, "test")
    for name, (kernel, bias) in model.weights.items():
        np.testing.assert_array_equal(np.asarray(back[name][0]), kernel, err_msg=name)
        np.testing.assert_array_equal(np.asarray(back[name][1]), bias, err_msg=name)


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (
            lambda s: s.update({"features.1.running_mean": np.zeros(8)}),
            r"features.1 has \['running_mean'\]; vgg_np reads .* batch norms",
        ),
        (
            lambda s: s.update({"classifier.9.x": np.zeros(8)}),
            r"unexpected keys \['classifier.9.x'",
        ),
        (lambda s: s.pop("features.0.bias"), r"features.0 has \['weight'\]; vgg_np reads"),
        (lambda s: s.update({"features.0.weight": np.zeros((8, 3, 9))}), r"must be 4-D"),
        (lambda s: s.clear(), r"no features"),
    ],
)
def test_bad_state_dicts(change, match):
    state = to_state_dict(tiny(seed=0).weights, TINY.conv_names())
    change(state)
    with pytest.raises(ValueError, match=match):
        from_state_dict(state, "test")


def test_torchvision_file_builds_a_torchvision_model(tmp_path):
    source = tiny(weights=TINY_DIR / "model.h5")
    path = tmp_path / "tiny.safetensors"
    formats.write_weights(path, source.weights)
    model = VGG.from_file(path, classifier_activation=None)
    # fc1 takes a 1x1 map: torchvision's head pools to that size, so any input size works.
    assert model.adaptive_pool == 1 and model.config.blocks == TINY.blocks
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(model(x), source(x))  # at 32x32 the pool is the identity
    big = np.random.default_rng(1).standard_normal((1, 64, 96, 3)).astype(np.float32)
    activations = model.activations(big)
    assert activations["block5_pool"].shape == (1, 2, 3, 32)
    assert activations["avgpool"].shape == (1, 1, 1, 32)
    assert activations["predictions"].shape == (1, TINY_CLASSES)


def test_adaptive_avg_pool_is_identity_at_its_size_and_replicates_below():
    x = np.random.default_rng(0).standard_normal((2, 7, 7, 4))
    np.testing.assert_array_equal(ops.adaptive_avg_pool2d(x, 7), x)
    one = x[:, :1, :1, :]
    np.testing.assert_array_equal(
        ops.adaptive_avg_pool2d(one, 3), np.broadcast_to(one, (2, 3, 3, 4))
    )
    np.testing.assert_allclose(ops.adaptive_avg_pool2d(x, 1)[:, 0, 0], x.mean(axis=(1, 2)))


# ---------------------------------------------------------------------------------------
# safetensors
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["torchvision", "keras"])
def test_safetensors_round_trip(tmp_path, layout):
    model = tiny(weights=TINY_DIR / "model.h5")
    path = tmp_path / "w.safetensors"
    formats.write_weights(path, model.weights, layout=layout)
    again = tiny(weights=path, adaptive_pool=None)
    for name, (kernel, bias) in model.weights.items():
        np.testing.assert_array_equal(again.weights[name][0], kernel)
        np.testing.assert_array_equal(again.weights[name][1], bias)


@pytest.mark.safetensors
def test_safetensors_agree_with_the_safetensors_package(tmp_path):
    st_numpy = pytest.importorskip(
        "safetensors.numpy", reason="needs the optional `safetensors` package"
    )
    state = to_state_dict(tiny(seed=3).weights, TINY.conv_names())
    ours, theirs = tmp_path / "ours.safetensors", tmp_path / "theirs.safetensors"
    safetensors_file.write_safetensors(ours, state)
    st_numpy.save_file(state, theirs)
    read_by_them = st_numpy.load_file(ours)
    with safetensors_file.open_safetensors(theirs) as read_by_us:
        for key, value in state.items():
            np.testing.assert_array_equal(read_by_them[key], value)
            np.testing.assert_array_equal(np.asarray(read_by_us[key]), value)


def test_bfloat16_tensors_are_widened(tmp_path):
    values = np.array([1.0, -2.5, 3.140625], np.float32)  # exactly representable in bfloat16
    bits = (values.view(np.uint32) >> 16).astype("<u2")
    header = json.dumps({"w": {"dtype": "BF16", "shape": [3], "data_offsets": [0, 6]}}).encode()
    path = tmp_path / "bf16.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + bits.tobytes())
    with safetensors_file.open_safetensors(path) as tensors:
        np.testing.assert_array_equal(np.asarray(tensors["w"]), values)


@pytest.mark.parametrize(
    ("header", "data", "match"),
    [
        (
            {"w": {"dtype": "F32", "shape": [10**9], "data_offsets": [0, 4 * 10**9]}},
            b"",
            r"outside the 0 data bytes",
        ),
        (
            {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}},
            b"\0" * 8,
            r"does not fill 8 bytes",
        ),
        ({"w": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}, b"\0" * 8, r"needs dtype"),
        ("{not json", b"", r"damaged safetensors header"),
    ],
)
def test_bad_safetensors_headers_are_refused_before_reading(tmp_path, header, data, match):
    text = (header if isinstance(header, str) else json.dumps(header)).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)
    with pytest.raises(ValueError, match=match):
        with formats.open_weights(path):
            pass


def test_absurd_safetensors_header_length(tmp_path):
    path = tmp_path / "absurd.safetensors"
    path.write_bytes(struct.pack("<Q", 2**60) + b"{}")
    with pytest.raises(ValueError, match="unknown weights format"):
        formats.detect_format(path)


def test_converted_model_matches_keras(tmp_path):
    with np.load(TINY_DIR / "keras_activations.npz") as ref:
        x, logits = ref["x"], ref["act/predictions"]
    path = tmp_path / "w.safetensors"
    formats.write_weights(path, tiny(weights=TINY_DIR / "model.keras").weights)
    model = tiny(weights=path)
    assert relative_error(model(x), logits) < 1e-5


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_notop_file_written_in_torchvision_layout_reads_back(tmp_path, suffix):
    """A convolutional base alone (no classifier.*) in torchvision's layout: what
    `vgg-np convert x_notop.h5 x.pth` writes. It read as 'damaged' (zip() strict)."""
    from vgg_np import cli

    notop = VGG.from_file(TINY_DIR / "applications_notop.h5")
    path = tmp_path / f"notop{suffix}"
    assert cli.main(["convert", str(TINY_DIR / "applications_notop.h5"), str(path)]) == 0
    back = VGG.from_file(path)
    assert not back.include_top and back.output_kind == "features"
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(back(x), notop(x))
