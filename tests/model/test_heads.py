"""VGG with batch normalisation and heads of one's own, as layer tables: the model folds
batch norms for the engine, runs heads of every kind, and trains through them."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import BN_FOLD_REL_TOL, TINY_CONFIG, relative_error
from vgg_np import VGG
from vgg_np.engine.lowering import lower
from vgg_np.layers import Layer, forward
from vgg_np.train import SGD, loss_and_gradients

# The Keras transfer-learning head (Flatten-Dense-BN-Dropout-Dense), and a GAP variant.
FLATTEN_HEAD = (
    Layer("flatten", "flatten"),
    Layer("dense", "dense", 16, "relu"),
    Layer("batch_normalization", "batch_norm", eps=1e-3),
    Layer("dropout", "dropout", rate=0.5),
    Layer("dense_1", "dense", 5, "softmax"),
)
GAP_HEAD = (Layer("gap", "global_avg"), *FLATTEN_HEAD[1:])


def bn_statistics(model: VGG, seed: int = 3) -> dict:
    """The model's weights with random batch-norm statistics (as a trained model has)."""
    rng, weights = np.random.default_rng(seed), model.weights
    for layer in model.layers:
        if layer.kind == "batch_norm":
            c = weights[layer.name][0].shape
            weights[layer.name] = tuple(
                a.astype(model.dtype)
                for a in (
                    rng.uniform(0.5, 1.5, c),
                    rng.normal(0, 0.1, c),
                    rng.normal(0, 0.5, c),
                    rng.uniform(0.5, 2.0, c),
                )
            )
    return weights


def test_batch_norm_variant_follows_torchvision_layout():
    model = VGG("vgg16", batch_norm=True, seed=0)
    names = [layer.name for layer in model.layers]
    assert names[:4] == ["block1_conv1", "block1_conv1_bn", "block1_conv2", "block1_conv2_bn"]
    assert model.layers[0].activation is None and model.layers[1].activation == "relu"
    assert {layer.eps for layer in model.layers if layer.kind == "batch_norm"} == {1e-5}
    shapes = model.parameter_shapes()
    assert shapes["block5_conv3_bn"] == ((512,),) * 4
    # 13 convolutions, 13 batch norms, 3 dense layers; torchvision's vgg16_bn has
    # 138,365,992 trainable parameters + 2 * 4,224 running statistics.
    summary = model.summary(False)
    assert summary.parameters == 138_365_992 + 2 * 4224
    assert VGG("vgg16", batch_norm=1e-3, seed=0).layers[1].eps == 1e-3
    with pytest.raises(ValueError, match="`batch_norm` must be a bool or a non-negative float"):
        VGG("vgg16", batch_norm="yes")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_engine_runs_the_folded_table_and_matches_the_reference(dtype):
    model = VGG(
        TINY_CONFIG, batch_norm=True, input_shape=(64, 40, 3), classes=3, dtype=dtype, seed=0
    )
    model.set_weights(bn_statistics(model))
    x = np.random.default_rng(1).standard_normal((2, 64, 40, 3)).astype(dtype)
    oracle = forward(
        model.layers,
        {k: tuple(a.astype(np.float64) for a in v) for k, v in model.weights.items()},
        x.astype(np.float64),
    )
    unfolded = forward(model.layers, model.weights, x)
    folded = model(x)
    errors = relative_error(folded, oracle), relative_error(unfolded, oracle)
    print(f"\n{dtype} logits vs float64 unfolded: folded {errors[0]:.1e}, unfolded {errors[1]:.1e}")
    assert errors[0] < (1e-12 if dtype == "float64" else BN_FOLD_REL_TOL)
    # The engine ran no batch norm: each was folded into its convolution...
    steps = [(step.name, step.kind) for step in model.engine.layers]
    assert steps[:2] == [("block1_conv1_bn", "conv"), ("block1_pool", "pool")]
    assert "batch_norm" not in {kind for _, kind in steps}
    # ...while the user's layers all keep answering, under their own names.
    assert list(model.activations(x))[:3] == ["block1_conv1", "block1_conv1_bn", "block1_pool"]


def test_fold_batch_norms_leaves_what_it_cannot_fold():
    table = [
        Layer("c", "conv", 2, "relu"),  # an activation before the batch norm: not foldable
        Layer("c_bn", "batch_norm", eps=1e-3),
        Layer("d", "dropout", rate=0.5),
    ]
    rng = np.random.default_rng(0)
    weights = {
        "c": (rng.standard_normal((3, 3, 1, 2)), np.zeros(2)),
        "c_bn": (np.ones(2), np.zeros(2), np.zeros(2), np.ones(2)),
    }
    plan = lower(table, weights)
    assert plan.steps == tuple(table[:2]) and plan.weights == weights  # dropout gone, not folded
    assert plan.names == {"c": "c", "c_bn": "c_bn", "d": "c_bn"}  # the dropout answers as c_bn


@pytest.mark.parametrize("head", [FLATTEN_HEAD, GAP_HEAD], ids=["flatten", "gap"])
def test_heads_of_ones_own_run_on_engine_and_reference(head):
    model = VGG(TINY_CONFIG, head=head, input_shape=(64, 40, 3), dtype="float64", seed=0)
    model.set_weights(bn_statistics(model))
    assert (model.classes, model.classifier_activation) == (5, "softmax")
    x = np.random.default_rng(2).standard_normal((3, 64, 40, 3))
    reference = forward(model.layers, model.weights, x)
    assert reference.shape == (3, 5)
    np.testing.assert_allclose(reference.sum(axis=1), 1.0)
    assert relative_error(model(x), reference) < 1e-12
    # Only a Flatten head fixes the input size.
    default = VGG(TINY_CONFIG, head=head, seed=0).input_shape
    assert default == ((None, None, 3) if head is GAP_HEAD else (32, 32, 3))


def test_bad_heads_name_the_layer():
    with pytest.raises(ValueError, match=r"odd \(kind 'lstm', activation None\)"):
        VGG(TINY_CONFIG, head=[Layer("gap", "global_avg"), Layer("odd", "lstm")])
    with pytest.raises(ValueError, match=r"d \(kind 'dense', activation 'gelu'\)"):
        VGG(TINY_CONFIG, head=[Layer("gap", "global_avg"), Layer("d", "dense", 3, "gelu")])
    with pytest.raises(ValueError, match="must be unique"):
        VGG(TINY_CONFIG, head=[Layer("d", "global_avg"), Layer("d", "dense", 3)])
    with pytest.raises(TypeError, match="sequence of Layer"):
        VGG(TINY_CONFIG, head=["flatten"])


def test_training_through_batch_norm_and_dropout_matches_finite_differences():
    head = (
        Layer("gap", "global_avg"),
        Layer("dense", "dense", 6),
        Layer("bn", "batch_norm", activation="tanh", eps=1e-3),
        Layer("drop", "dropout", rate=0.3),
        Layer("out", "dense", 3, "softmax"),
    )
    model = VGG(TINY_CONFIG, batch_norm=True, head=head, dtype="float64", seed=1)
    model.set_weights(bn_statistics(model))
    x = np.random.default_rng(0).standard_normal((4, 32, 32, 3))
    labels = np.array([0, 2, 1, 2])

    def loss(weights) -> float:
        model.set_weights(weights)
        return loss_and_gradients(model, x, labels, rng=np.random.default_rng(5))[0]

    original = model.weights
    _, grads, _ = loss_and_gradients(model, x, labels, rng=np.random.default_rng(5))
    assert len(grads["bn"]) == len(grads["block2_conv1_bn"]) == 2  # gamma, beta only
    rng = np.random.default_rng(9)
    for name in ("block1_conv1", "block1_conv1_bn", "block4_conv1_bn", "dense", "bn", "out"):
        for part in range(2):
            analytic = grads[name][part]
            scale = np.max(np.abs(analytic)) + 1e-12
            for _ in range(3):
                index = tuple(int(rng.integers(0, s)) for s in analytic.shape)
                bumped = {k: tuple(a.copy() for a in v) for k, v in original.items()}
                bumped[name][part][index] += 1e-6
                up = loss(bumped)
                bumped[name][part][index] -= 2e-6
                numeric = (up - loss(bumped)) / 2e-6
                assert abs(numeric - analytic[index]) <= 1e-6 * scale + 1e-9, (name, part)
    # An SGD step changes gamma and beta, never the running statistics.
    model.set_weights(original)
    SGD(lr=0.1, weight_decay=0.1).step(model, grads)
    after = model.weights["bn"]
    assert not np.array_equal(after[0], original["bn"][0])
    np.testing.assert_array_equal(after[2], original["bn"][2])
    np.testing.assert_array_equal(after[3], original["bn"][3])
