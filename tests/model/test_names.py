"""Every user-visible layer name answers, with the layer's own output, on the engine's path.

The engine runs a lowered network (batch norms folded, dropout gone, activations fused);
`features`, `activations` and `predict(layer=...)` still answer with the user's layers, as
the reference forward (`layers.forward`) defines them, and no activation is lost.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import BN_FOLD_REL_TOL, ENGINE_REL_TOL, relative_error, with_bn_statistics
from tests.conftest import TINY_CONFIG as TINY
from vgg_np import VGG
from vgg_np.layers import Layer, forward

# Keras heads as Layer data: an Activation layer after a Dropout belongs to the dropout row.
DROPOUT_SOFTMAX = (
    Layer("flatten", "flatten"),
    Layer("dense", "dense", 5),
    Layer("dropout", "dropout", activation="softmax", rate=0.5),
)
RELU_BETWEEN_DENSE = (
    Layer("gap", "global_avg"),
    Layer("dense_1", "dense", 6),
    Layer("dropout_1", "dropout", activation="relu", rate=0.5),
    Layer("dense_2", "dense", 4, "softmax"),
)


def reference_outputs(model: VGG, x: np.ndarray) -> dict:
    """Every layer's output by the reference forward pass, in float64."""
    found = {}
    wide = {name: tuple(a.astype(np.float64) for a in t) for name, t in model.weights.items()}
    forward(
        model.layers,
        wide,
        x.astype(np.float64),
        hook=lambda layer, values: found.update({layer.name: values["output"]}),
    )
    return found


@pytest.mark.parametrize("algorithm", ["auto", "gemm"])
def test_dropout_then_softmax_head_keeps_its_softmax(algorithm):
    # On 91d22cb the engine dropped the dropout row with its activation: no softmax.
    model = VGG(TINY, head=DROPOUT_SOFTMAX, conv_algorithm=algorithm, seed=0)
    x = np.random.default_rng(1).standard_normal((3, 32, 32, 3)).astype(np.float32)
    y = model(x)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)
    expected = reference_outputs(model, x)["dropout"]
    assert relative_error(y, expected) < ENGINE_REL_TOL[algorithm]
    reference = VGG(TINY, head=DROPOUT_SOFTMAX, conv_algorithm="reference", seed=0)(x)
    assert relative_error(y, reference) < ENGINE_REL_TOL[algorithm]
    assert relative_error(model.predict(x, batch_size=2, verbose=0), expected) < 1e-5


def test_relu_between_two_dense_layers_is_kept():
    model = VGG(TINY, head=RELU_BETWEEN_DENSE, seed=0)
    x = np.random.default_rng(2).standard_normal((2, 32, 32, 3)).astype(np.float32)
    expected = reference_outputs(model, x)
    assert relative_error(model(x), expected["dense_2"]) < ENGINE_REL_TOL["auto"]
    hidden = model.features(x, "dropout_1")
    assert hidden.min() >= 0  # rectified
    assert relative_error(hidden, expected["dropout_1"]) < ENGINE_REL_TOL["auto"]
    # The dense layer's own output is before the ReLU that Keras wrote as a layer.
    assert relative_error(model.features(x, "dense_1"), expected["dense_1"]) < 1e-5
    assert model.features(x, "dense_1").min() < 0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batch_norm_model_answers_every_user_name(dtype):
    model = with_bn_statistics(VGG(TINY, batch_norm=True, classes=3, dtype=dtype, seed=0))
    x = np.random.default_rng(4).standard_normal((2, 32, 32, 3)).astype(dtype)
    expected = reference_outputs(model, x)
    tol = 1e-12 if dtype == "float64" else BN_FOLD_REL_TOL
    # The convolution's output before its batch norm, as torchvision's module gives it.
    conv = model.features(x, "block1_conv1")
    assert relative_error(conv, expected["block1_conv1"]) < tol
    assert conv.min() < 0  # not rectified: the ReLU follows the batch norm
    assert relative_error(model.features(x, "block1_conv1_bn"), expected["block1_conv1_bn"]) < tol
    everything = model.activations(x)
    assert list(everything) == [layer.name for layer in model.layers]
    for name, y in everything.items():
        assert relative_error(y, expected[name]) < tol, name
    picked = model.activations(x, ["block3_conv1", "fc1"])
    assert list(picked) == ["block3_conv1", "fc1"]
    shallow = model.predict(x, batch_size=1, verbose=0, layer="block2_conv1")
    assert relative_error(shallow, expected["block2_conv1"]) < tol
    # A layer computed alone does not depend on the batch, as the engine's do not.
    assert np.array_equal(shallow, model.features(x, "block2_conv1"))
    # The default path still runs the folded network, and gives the same logits.
    assert relative_error(model(x), expected["predictions"]) < tol


def test_dropout_layer_names_answer():
    head = (
        Layer("flatten", "flatten"),
        Layer("d1", "dense", 8, "relu"),
        Layer("drop", "dropout", rate=0.5),
        Layer("out", "dense", 3, "softmax"),
    )
    model = VGG(TINY, head=head, seed=0)
    x = np.random.default_rng(5).standard_normal((2, 32, 32, 3)).astype(np.float32)
    outputs = model.activations(x)
    assert list(outputs)[-3:] == ["d1", "drop", "out"]
    np.testing.assert_array_equal(outputs["drop"], outputs["d1"])  # the identity at inference
    assert outputs["drop"] is not outputs["d1"]  # each its own array
    np.testing.assert_array_equal(model.features(x, "drop"), outputs["d1"])


def test_batch_norm_names_answer_in_channels_first_and_non_square():
    model = VGG(
        TINY,
        batch_norm=True,
        include_top=False,
        input_shape=(3, 32, 40),
        data_format="channels_first",
        dtype="float64",
        seed=0,
    )
    model = with_bn_statistics(model)
    x = np.random.default_rng(6).standard_normal((2, 3, 32, 40))
    expected = reference_outputs(model, x.transpose(0, 2, 3, 1))  # (N, C, H, W) -> NHWC
    y = model.features(x, "block2_conv1")
    assert y.shape == (2, 4, 16, 20)
    assert relative_error(y.transpose(0, 2, 3, 1), expected["block2_conv1"]) < 1e-12
    shallow = model.predict(x, batch_size=1, verbose=0, layer="block2_conv1")
    np.testing.assert_array_equal(shallow, y)
