"""Tests of vgg_np.layers: every kind's entry against its own kernels, and the reference
forward pass directly against Keras (the committed reduced-width fixtures; the full-size
comparison is in test_keras_reference.py, the live one in crosscheck/test_keras.py)."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from tests.conftest import KERAS_REL_TOL, TINY_DIR, relative_error
from tests.reference.make_keras_reference import TINY, TINY_CLASSES, TINY_SEED
from vgg_np import VGG
from vgg_np.config import layer_table
from vgg_np.engine import Engine
from vgg_np.layers import ACTIVATIONS, KINDS, Kind, Layer, forward
from vgg_np.train import loss_and_gradients

# One layer of each kind, with a per-image input shape (non-square, odd) that fits it.
SAMPLES = {
    "conv": (Layer("c", "conv", 5, "relu"), (9, 10, 3)),
    "pool": (Layer("p", "pool"), (9, 10, 3)),
    "adaptive_avg": (Layer("a", "adaptive_avg", 3), (9, 10, 4)),
    "flatten": (Layer("f", "flatten"), (3, 2, 4)),
    "dense": (Layer("d", "dense", 6, "relu"), (7,)),
    "global_avg": (Layer("g", "global_avg"), (5, 6, 4)),
    "global_max": (Layer("m", "global_max"), (5, 6, 4)),
    "batch_norm": (Layer("b", "batch_norm", eps=1e-3), (5, 6, 4)),
    "dropout": (Layer("o", "dropout", rate=0.4), (5, 6, 4)),
    "activation": (Layer("s", "activation", activation="tanh"), (5, 6, 4)),
}


def parameters(layer: Layer, shape: tuple, rng) -> tuple:
    shapes = KINDS[layer.kind].parameter_shapes
    params = tuple(rng.standard_normal(s) for s in shapes(layer, shape)) if shapes else ()
    if layer.kind == "batch_norm":  # a variance is positive
        params = (*params[:3], np.abs(params[3]) + 0.1)
    return params


def test_every_kind_has_a_sample():
    assert set(SAMPLES) == set(KINDS)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_output_and_parameter_shapes_are_what_the_forward_call_gives(kind):
    layer, shape = SAMPLES[kind]
    entry, rng = KINDS[kind], np.random.default_rng(0)
    params = parameters(layer, shape, rng)
    assert len(params) == len(entry.parameters)
    if params:  # the seeded draw of `VGG.he_normal` has the same shapes, in float32
        drawn = entry.initial(entry.parameter_shapes(layer, shape), rng)
        assert [(a.shape, a.dtype) for a in drawn] == [(p.shape, np.float32) for p in params]
    y = entry.forward(layer, params or None, rng.standard_normal((2, *shape)))
    assert y.shape == (2, *entry.output_shape(layer, shape))


def test_unknown_sizes_stay_unknown():
    assert KINDS["pool"].output_shape(Layer("p", "pool"), (None, 10, 3)) == (None, 5, 3)
    assert KINDS["conv"].output_shape(Layer("c", "conv", 8), (None, None, 3)) == (None, None, 8)


@pytest.mark.parametrize("kind", sorted(k for k, entry in KINDS.items() if entry.backward))
def test_backward_call_is_the_gradient_of_the_forward_call(kind):
    # <dy, forward(x, params)> differentiated numerically at a few points of x and of each
    # parameter: catches a backward wired to the wrong argument or the wrong kernel.
    layer, shape = SAMPLES[kind]
    entry, rng = KINDS[kind], np.random.default_rng(1)
    x = rng.standard_normal((2, *shape))
    params = parameters(layer, shape, rng)

    def run(x, params):  # the training pass where it differs (batch statistics, dropout)
        if entry.train_forward is None:
            return entry.forward(layer, params or None, x)
        return entry.train_forward(layer, params, x, np.random.default_rng(5))  # one mask

    def objective(x, params) -> float:
        return float(np.sum(dy * run(x, params)))

    dy = rng.standard_normal((2, *entry.output_shape(layer, shape)))
    kept = {"input": x, "output": run(x, params), "input_shape": x.shape}
    assert set(entry.keeps) <= set(kept)
    dx, *grads = entry.backward(layer, params or None, kept, dy)
    trained = len(params) if entry.trained is None else entry.trained
    assert len(grads) == trained
    for array, grad, position in [
        (x, dx, None),
        *zip(params[:trained], grads, range(trained), strict=True),
    ]:
        assert grad.shape == array.shape
        for _ in range(4):
            index = tuple(int(rng.integers(0, s)) for s in array.shape)
            bumped = [x.copy(), *(p.copy() for p in params)]
            target = bumped[0 if position is None else position + 1]
            target[index] += 1e-6
            up = objective(bumped[0], tuple(bumped[1:]))
            target[index] -= 2e-6
            numeric = (up - objective(bumped[0], tuple(bumped[1:]))) / 2e-6
            assert abs(numeric - grad[index]) < 1e-6 * (1 + abs(grad[index])), (kind, index)


def test_activations_backward_from_their_output():
    z = np.array([-2.0, -0.5, 0.0, 0.5, 3.0])
    for activation in ACTIVATIONS.values():
        y = activation.forward(z)
        assert y.shape == z.shape
        if activation.backward is not None:
            # The derivative of each elementwise activation, at points away from 0.
            dz = activation.backward(y, np.ones_like(z))
            numeric = (activation.forward(z + 1e-6) - activation.forward(z - 1e-6)) / 2e-6
            np.testing.assert_allclose(dz[[0, 1, 3, 4]], numeric[[0, 1, 3, 4]], atol=1e-6)
    assert set(ACTIVATIONS["relu"].keeps) == {"output"}


def keras_tiny_model(dtype: str) -> VGG:
    return VGG(
        TINY,
        input_shape=(32, 32, 3),
        classes=TINY_CLASSES,
        seed=TINY_SEED,
        classifier_activation=None,
        dtype=dtype,
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reference_forward_matches_keras_on_every_layer(dtype):
    model = keras_tiny_model(dtype)
    with np.load(TINY_DIR / "keras_activations.npz") as keras:
        x, want = keras["x"].astype(dtype), {k[4:]: keras[k] for k in keras if k[:4] == "act/"}
    got = {}
    logits = forward(
        model.layers, model.weights, x, hook=lambda layer, v: got.setdefault(layer.name, v)
    )
    assert list(got) == list(want)
    errors = {}
    for name, values in got.items():
        assert values["output"].dtype == np.dtype(dtype), name
        errors[name] = relative_error(values["output"], want[name])
    print(f"\nreference forward {dtype} vs Keras, max |err| / max |Keras|:")
    print("  " + " ".join(f"{name}:{e:.1e}" for name, e in errors.items()))
    assert max(errors.values()) < KERAS_REL_TOL, errors
    # The hook sees each layer's input: the previous layer's output.
    names = list(got)
    for before, after in itertools.pairwise(names):
        assert got[after]["input"] is got[before]["output"]
    np.testing.assert_array_equal(logits, got["predictions"]["output"])


def test_the_model_runs_the_reference_forward_on_request():
    model = keras_tiny_model("float64")
    reference = VGG(
        TINY,
        input_shape=(32, 32, 3),
        classes=TINY_CLASSES,
        classifier_activation=None,
        dtype="float64",
        conv_algorithm="reference",
    )
    reference.set_weights(model.weights)
    x = np.random.default_rng(2).standard_normal((2, 32, 32, 3))
    got = reference.activations(x)
    assert list(got) == [layer.name for layer in model.layers]
    np.testing.assert_array_equal(reference(x), forward(model.layers, model.weights, x))
    np.testing.assert_array_equal(reference(x), got["predictions"])
    # The engine (direct GEMM in float64) agrees to rounding.
    assert relative_error(model(x), got["predictions"]) < 1e-12


def test_dropout_follows_the_hidden_dense_layers_in_training_only():
    model = keras_tiny_model("float64")
    x = np.random.default_rng(3).standard_normal((4, 32, 32, 3))
    seen = {}
    forward(
        model.layers,
        model.weights,
        x,
        dropout=0.5,
        rng=np.random.default_rng(0),
        hook=lambda layer, v: seen.setdefault(layer.name, v),
    )
    names = list(seen)
    dropped = [name for name, values in seen.items() if "kept_scaled" in values]
    assert dropped == ["fc1", "fc2"]
    for name in dropped:
        out, kept = seen[name]["output"], seen[name]["kept_scaled"]
        assert np.all((kept == 0) | (kept == 2 * out))  # rate 0.5: 0 or x / (1 - 0.5)
        assert 0.2 < np.mean(kept[out > 0] == 0) < 0.8  # about half of the live values
        assert seen[names[names.index(name) + 1]]["input"] is kept  # what flows on
    inference = {}
    forward(model.layers, model.weights, x, hook=lambda layer, v: inference.setdefault(layer, v))
    assert not any("kept_scaled" in values for values in inference.values())


def test_bad_tables_and_weights_name_the_layer():
    table = layer_table(TINY, classes=3)
    weights = keras_tiny_model("float32").weights
    x = np.zeros((1, 32, 32, 3), np.float32)
    with pytest.raises(ValueError, match=r"kinds not in .*: odd \('lstm'\)"):
        forward([Layer("odd", "lstm")], {}, x)
    with pytest.raises(ValueError, match=r"activations not in ACTIVATIONS: c \('gelu'\)"):
        forward([Layer("c", "conv", 2, "gelu")], {"c": weights["block1_conv1"]}, x)
    del weights["fc2"]
    with pytest.raises(ValueError, match="`weights` has no tensors for the layers fc2"):
        forward(table, weights, x)
    with pytest.raises(ValueError, match="`rng` is required"):
        dense = [Layer("fc", "dense", 2, "relu")]
        forward(dense, {"fc": (np.ones((4, 2)), np.zeros(2))}, np.ones((1, 4)), dropout=0.5)


def test_a_new_kind_is_one_entry(monkeypatch):
    # A kind the code has never seen, given by its entry alone: the reference forward, the
    # summary, the engine and training all run it.
    double = Kind(
        output_shape=lambda layer, shape: shape,
        forward=lambda layer, params, x: 2 * x,  # (N, H, W, C)
        backward=lambda layer, params, kept, dy: (2 * dy,),
    )
    monkeypatch.setitem(KINDS, "double", double)
    model = keras_tiny_model("float64")
    twice = (model.layers[0], Layer("twice", "double"), *model.layers[1:])
    model.network = dataclasses.replace(model.network, layers=twice)  # not a VGG argument
    x = np.random.default_rng(4).standard_normal((2, 32, 32, 3))
    seen = {}
    logits = forward(
        model.layers, model.weights, x, hook=lambda layer, v: seen.setdefault(layer.name, v)
    )
    np.testing.assert_array_equal(seen["twice"]["output"], 2 * seen["block1_conv1"]["output"])

    row = model.summary(print_summary=False).rows[2]
    assert (row.name, row.output_shape, row.weights, row.kept) == ("twice", (32, 32, 8), 0, 0)

    engine = Engine(model.layers, model.weights, "gemm", threads=1)
    assert relative_error(list(engine.run(x))[-1][1], logits) < 1e-12

    labels = np.array([1, 7])
    _, grads, tape = loss_and_gradients(model, x, labels)
    assert tape.nbytes("twice") == 0
    weights = model.weights
    kernel, bias = weights["block1_conv1"]
    losses = []
    for step in (1e-6, -1e-6):
        bumped = bias.copy()
        bumped[3] += step
        model.set_weights({**weights, "block1_conv1": (kernel, bumped)})
        losses.append(loss_and_gradients(model, x, labels)[0])
    numeric = (losses[0] - losses[1]) / 2e-6
    assert abs(numeric - grads["block1_conv1"][1][3]) < 1e-6 * (1 + abs(numeric))
