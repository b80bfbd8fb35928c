"""Tests of vgg_np.model: configurations, summary, forward pass against Keras, model API."""

from __future__ import annotations

import math

import numpy as np
import pytest

import vgg_np
from tests.conftest import DATA, KERAS_REL_TOL, relative_error, tiny_vgg16
from tests.reference.make_keras_reference import FORMATS
from vgg_np import ops
from vgg_np.model import CONFIGS, VGG, Summary, VGGConfig, layer_table

TINY_DIR = DATA / "tiny_vgg16"

KERAS_VGG16_LAYERS = [  # keras.applications.VGG16().layers[1:], by name
    "block1_conv1", "block1_conv2", "block1_pool",
    "block2_conv1", "block2_conv2", "block2_pool",
    "block3_conv1", "block3_conv2", "block3_conv3", "block3_pool",
    "block4_conv1", "block4_conv2", "block4_conv3", "block4_pool",
    "block5_conv1", "block5_conv2", "block5_conv3", "block5_pool",
    "flatten", "fc1", "fc2", "predictions",
]  # fmt: skip


def tiny(**kwargs) -> VGG:
    """The tiny fixtures' network giving logits (as Keras's activations are compared)."""
    return tiny_vgg16(**{"classifier_activation": None, **kwargs})


@pytest.fixture(scope="module")
def keras_tiny():
    return np.load(TINY_DIR / "keras_activations.npz")


# ---------------------------------------------------------------------------------------
# Configurations and the classic table
# ---------------------------------------------------------------------------------------


def test_vgg16_layers_have_keras_names_in_keras_order():
    assert [layer.name for layer in layer_table(CONFIGS["vgg16"])] == KERAS_VGG16_LAYERS


@pytest.mark.parametrize(
    ("name", "parameters"),
    # torchvision's and Keras's published counts for the four family members
    [
        ("vgg11", 132_863_336),
        ("vgg13", 133_047_848),
        ("vgg16", 138_357_544),
        ("vgg19", 143_667_240),
    ],
)
def test_parameter_counts_of_the_family(name, parameters):
    summary = Summary.of(layer_table(CONFIGS[name]), (224, 224, 3), name)
    assert summary.parameters == parameters
    if name == "vgg11":  # and the model's own summary says the same
        assert VGG(name, seed=0).summary(print_summary=False).parameters == parameters


# The classic VGG16 table (the CS231n notes, see docs/vgg16.md): per layer, output values and
# weights.
CLASSIC_VGG16 = [
    ("input", 224 * 224 * 3, 0),
    ("block1_conv1", 224 * 224 * 64, (3 * 3 * 3) * 64),
    ("block1_conv2", 224 * 224 * 64, (3 * 3 * 64) * 64),
    ("block1_pool", 112 * 112 * 64, 0),
    ("block2_conv1", 112 * 112 * 128, (3 * 3 * 64) * 128),
    ("block2_conv2", 112 * 112 * 128, (3 * 3 * 128) * 128),
    ("block2_pool", 56 * 56 * 128, 0),
    ("block3_conv1", 56 * 56 * 256, (3 * 3 * 128) * 256),
    ("block3_conv2", 56 * 56 * 256, (3 * 3 * 256) * 256),
    ("block3_conv3", 56 * 56 * 256, (3 * 3 * 256) * 256),
    ("block3_pool", 28 * 28 * 256, 0),
    ("block4_conv1", 28 * 28 * 512, (3 * 3 * 256) * 512),
    ("block4_conv2", 28 * 28 * 512, (3 * 3 * 512) * 512),
    ("block4_conv3", 28 * 28 * 512, (3 * 3 * 512) * 512),
    ("block4_pool", 14 * 14 * 512, 0),
    ("block5_conv1", 14 * 14 * 512, (3 * 3 * 512) * 512),
    ("block5_conv2", 14 * 14 * 512, (3 * 3 * 512) * 512),
    ("block5_conv3", 14 * 14 * 512, (3 * 3 * 512) * 512),
    ("block5_pool", 7 * 7 * 512, 0),
    ("fc1", 4096, 7 * 7 * 512 * 4096),
    ("fc2", 4096, 4096 * 4096),
    ("predictions", 1000, 4096 * 1000),
]


def test_summary_reproduces_the_classic_vgg16_table(capsys):
    summary = vgg_np.VGG16(seed=0).summary()
    printed = capsys.readouterr().out
    rows = {r.name: r for r in summary.rows}
    for name, activations, weights in CLASSIC_VGG16:
        assert (rows[name].activations, rows[name].weights) == (activations, weights), name
    # The figures the classic table quotes, spelled out.
    assert rows["block1_conv1"].weights == 1_728 and rows["fc1"].weights == 102_760_448
    assert (
        rows["predictions"].weights == 4_096_000 and rows["block1_conv1"].activations == 3_211_264
    )
    assert (summary.parameters, summary.weights, summary.biases) == (
        138_357_544,
        138_344_128,
        13_416,
    )
    assert sum(w for _, _, w in CLASSIC_VGG16) == summary.weights
    # The rows of the classic table add up to what the summary counts (flatten is a view).
    assert summary.activations == sum(a for _, a, _ in CLASSIC_VGG16) == 15_237_608
    assert math.isclose(2 * summary.macs / 1e9, 30.94, abs_tol=0.005)  # GFLOP per image
    assert "138,357,544 = 138,344,128 weights + 13,416 biases" in printed
    assert "61.0 MB in float32" in printed and "121.9 MB in float64" in printed
    assert "93MB" in printed  # the note on the classic table's total


def test_summary_of_a_notop_model_at_another_size():
    summary = vgg_np.VGG16(include_top=False, input_shape=(64, 96, 3), seed=0).summary(False)
    assert summary.rows[-1].output_shape == (2, 3, 512)
    assert summary.parameters == 14_714_688  # the convolutional base


def test_summary_needs_a_static_shape():
    with pytest.raises(ValueError, match="static input shape"):
        vgg_np.VGG16(include_top=False, seed=0).summary(False)


# ---------------------------------------------------------------------------------------
# Initialisation
# ---------------------------------------------------------------------------------------


def test_he_normal_is_seeded_and_scaled():
    a, b, c = (tiny(seed=s).weights for s in (3, 3, 4))
    for name in a:
        np.testing.assert_array_equal(a[name][0], b[name][0])
        assert not np.array_equal(a[name][0], c[name][0])
    big = vgg_np.VGG16(include_top=False, seed=1).weights["block4_conv2"][0]  # 2.4M draws
    assert abs(big.std() / math.sqrt(2 / (3 * 3 * 512)) - 1) < 0.01
    assert abs(big.mean()) < 1e-4


def test_float64_model_holds_the_float32_numbers():
    w32, w64 = tiny(seed=5).weights, tiny(seed=5, dtype="float64").weights
    for name in w32:
        assert w64[name][0].dtype == np.float64
        np.testing.assert_array_equal(w64[name][0], w32[name][0].astype(np.float64))


# ---------------------------------------------------------------------------------------
# Forward pass against Keras (the committed reduced-width fixtures, every file format)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fmt", FORMATS)
def test_forward_matches_keras_on_every_layer(fmt, dtype, keras_tiny):
    top = "notop" not in fmt
    model = tiny(weights=TINY_DIR / fmt, include_top=top, dtype=dtype)
    activations = model.activations(keras_tiny["x"])
    expected = [k.removeprefix("act/") for k in keras_tiny if k.startswith("act/")]
    if not top:
        expected = expected[: expected.index("block5_pool") + 1]
    assert list(activations) == expected
    for name, got in activations.items():
        want = keras_tiny[f"act/{name}"]
        assert got.shape == want.shape and got.dtype == np.dtype(dtype), name
        error = relative_error(got, want)
        assert error < KERAS_REL_TOL, f"{fmt} {dtype} {name}: {error:.2e}"


def test_call_returns_the_last_activation(keras_tiny):
    model = tiny(weights=TINY_DIR / "model.keras")
    np.testing.assert_array_equal(
        model(keras_tiny["x"]), model.activations(keras_tiny["x"])["predictions"]
    )


def test_softmax_head_gives_probabilities_of_the_logits(keras_tiny):
    logits = tiny(weights=TINY_DIR / "model.keras")(keras_tiny["x"])
    probs = tiny(weights=TINY_DIR / "model.keras", classifier_activation="softmax")(keras_tiny["x"])
    np.testing.assert_allclose(probs, ops.softmax(logits), rtol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize(("pooling", "reduce"), [("avg", np.mean), ("max", np.max), (None, None)])
def test_notop_pooling_and_any_input_size(pooling, reduce):
    model = tiny(include_top=False, input_shape=None, pooling=pooling, seed=2)
    x = np.random.default_rng(0).standard_normal((2, 40, 72, 3)).astype(np.float32)
    activations = model.activations(x)
    base = activations["block5_pool"]
    assert base.shape == (2, 1, 2, 32)
    out = model(x)
    if pooling is None:
        np.testing.assert_array_equal(out, base)
    else:
        np.testing.assert_allclose(out, reduce(base, axis=(1, 2)), rtol=1e-6)
        assert out.shape == (2, 32)


def test_channels_first_is_the_same_network(keras_tiny):
    x = keras_tiny["x"]
    last = tiny(weights=TINY_DIR / "model.h5")
    first = tiny(
        weights=TINY_DIR / "model.h5", data_format="channels_first", input_shape=(3, 32, 32)
    )
    a, b = last.activations(x), first.activations(x.transpose(0, 3, 1, 2))
    for name in a:
        expected = a[name].transpose(0, 3, 1, 2) if a[name].ndim == 4 else a[name]
        np.testing.assert_array_equal(b[name], expected, err_msg=name)


def test_float16_model_runs_close_to_float32(keras_tiny):
    x = keras_tiny["x"]
    y16 = tiny(weights=TINY_DIR / "model.h5", dtype="float16")(x)
    y32 = tiny(weights=TINY_DIR / "model.h5")(x)
    assert y16.dtype == np.float16
    assert relative_error(y16, y32) < 0.05  # float16 has 11 bits of mantissa


# ---------------------------------------------------------------------------------------
# Weights: set, save, load, refuse
# ---------------------------------------------------------------------------------------


def test_save_and_load_npz_round_trip(tmp_path, keras_tiny):
    model = tiny(weights=TINY_DIR / "model.weights.h5")
    path = tmp_path / "weights.npz"
    model.save_weights(path)
    with np.load(path, allow_pickle=False) as plain:  # readable without vgg_np
        assert "block1_conv1/kernel" in plain.files and "predictions/bias" in plain.files
    again = tiny(weights=path)
    for name, (kernel, bias) in model.weights.items():
        np.testing.assert_array_equal(again.weights[name][0], kernel)
        np.testing.assert_array_equal(again.weights[name][1], bias)
    np.testing.assert_array_equal(again(keras_tiny["x"]), model(keras_tiny["x"]))


def test_full_file_loads_into_a_notop_model():
    model = tiny(weights=TINY_DIR / "applications.h5", include_top=False)
    assert "fc1" not in model.weights and "block5_conv3" in model.weights


def test_notop_file_into_a_model_with_top_explains_itself():
    with pytest.raises(ValueError, match=r"(?s)missing: fc1, fc2, predictions.*include_top=False"):
        tiny(weights=TINY_DIR / "applications_notop.h5")


def test_mismatch_lists_every_missing_extra_and_misshaped_tensor():
    model = tiny(seed=0)
    weights = model.weights
    del weights["block2_conv1"]
    weights["block9_conv9"] = weights["block1_conv1"]
    weights["fc2"] = (np.zeros((48, 7), np.float32), np.zeros(7, np.float32))
    with pytest.raises(ValueError) as info:
        model.set_weights(weights)
    message = str(info.value)
    assert "missing: block2_conv1" in message
    assert "not in this model: block9_conv9" in message
    assert (
        "fc2: expected kernel (48, 48) and bias (48,), got kernel (48, 7) and bias (7,)" in message
    )


def test_wrong_input_size_for_fc1_is_a_shape_mismatch():
    with pytest.raises(
        ValueError, match=r"fc1: expected kernel \(128, 48\).*got kernel \(32, 48\)"
    ):
        tiny(weights=TINY_DIR / "model.h5", input_shape=(64, 64, 3))


def test_a_failed_load_leaves_the_weights_untouched():
    model = tiny(seed=0)
    before = model.weights
    with pytest.raises(ValueError):
        model.load_weights(TINY_DIR / "applications_notop.h5")
    for name, (kernel, _) in model.weights.items():
        assert kernel is before[name][0]


def test_nonfinite_weights_are_refused_unless_allowed():
    model = tiny(seed=0)
    weights = model.weights
    kernel, bias = weights["fc1"]
    weights["fc1"] = (kernel, np.where(np.arange(bias.size) == 3, np.nan, bias))
    with pytest.raises(ValueError, match=r"NaN or inf in fc1.*allow_nonfinite=True"):
        model.set_weights(weights)
    model.set_weights(weights, allow_nonfinite=True)
    assert np.isnan(model.weights["fc1"][1][3])


# ---------------------------------------------------------------------------------------
# Bad arguments and inputs
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (
            {"config": "vgg17"},
            ValueError,
            r"`config` must be one of \['vgg11', 'vgg13', 'vgg16', 'vgg19'\]",
        ),
        ({"config": 16}, TypeError, r"`config` must be a VGGConfig"),
        ({"pooling": "mean"}, ValueError, r"`pooling` must be None, 'avg' or 'max'"),
        ({"classes": 0}, ValueError, r"`classes` must be a positive int"),
        ({"classifier_activation": "relu"}, ValueError, r"`classifier_activation`"),
        ({"dtype": "int8"}, ValueError, r"`dtype` must be float16, float32 or float64"),
        ({"data_format": "NCHW"}, ValueError, r"`data_format`"),
        ({"input_shape": (224, 224)}, ValueError, r"`input_shape` must have 3 entries"),
        ({"input_shape": (None, None, 3)}, ValueError, r"must be static.*include_top=False"),
        ({"input_shape": (31, 224, 3)}, ValueError, r"at least 32"),
        ({"weights": "/nonexistent/w.h5"}, FileNotFoundError, r"/nonexistent/w.h5"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, match):
    kwargs = {"config": "vgg11", "seed": 0, **kwargs}
    with pytest.raises(error, match=match):
        VGG(**kwargs)


@pytest.mark.parametrize(
    ("x", "error", "match"),
    [
        (np.zeros((1, 32, 32, 3), np.uint8), TypeError, r"dtype uint8.*preprocess_input"),
        (np.zeros((32, 32, 3), np.float32), ValueError, r"`x` must be 4-D \(N, H, W, C\)"),
        (np.zeros((1, 32, 32, 4), np.float32), ValueError, r"does not fit input shape 32x32x3"),
        (np.zeros((1, 64, 32, 3), np.float32), ValueError, r"does not fit input shape 32x32x3"),
    ],
)
def test_bad_inputs_to_the_forward_pass(x, error, match):
    with pytest.raises(error, match=match):
        tiny(seed=0)(x)


def test_notop_input_smaller_than_32_is_refused():
    with pytest.raises(ValueError, match="at least 32"):
        tiny(include_top=False, input_shape=None, seed=0)(np.zeros((1, 16, 64, 3), np.float32))


def test_reduced_width_config_is_data():
    config = VGGConfig("mini", ((2,), (2,), (2,), (2,), (2,)), fc=(), default_size=32)
    model = VGG(config, classes=3, seed=0)
    assert [layer.name for layer in model.layers][-2:] == ["flatten", "predictions"]
    assert model(np.ones((1, 32, 32, 3), np.float32)).shape == (1, 3)
