"""Tests of vgg_np.engine.lowering: each pass keeps the network's function on every layer it names.

A plan's steps are run with the reference forward (`layers.forward`) and with the engine;
every user layer the plan names must give the reference forward's output of the user's
own table, in float64 (to rounding) and float32 (to the folding tolerance).
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import BN_FOLD_REL_TOL, ENGINE_REL_TOL, relative_error
from vgg_np.engine import Engine
from vgg_np.engine.lowering import (
    PASSES,
    fold_batch_norms,
    fuse_activations,
    lower,
    remove_dropouts,
    split_activations,
)
from vgg_np.layers import KINDS, Layer, forward, shapes

# Small tables on a (12, 10, 3) input, each exercising the passes in a different way.
TABLES = {
    "conv_bn": [
        Layer("c1", "conv", 4),
        Layer("c1_bn", "batch_norm", activation="relu", eps=1e-5),
        Layer("p1", "pool"),
        Layer("c2", "conv", 5),
        Layer("c2_bn", "batch_norm", activation="relu", eps=1e-3),
        Layer("gap", "global_avg"),
    ],
    "dropout_activation_head": [  # Keras: Dense -> Dropout -> Activation("softmax")
        Layer("c1", "conv", 4, "relu"),
        Layer("p1", "pool"),
        Layer("flatten", "flatten"),
        Layer("d1", "dense", 6),
        Layer("drop1", "dropout", activation="relu", rate=0.5),  # relu between two dense
        Layer("d2", "dense", 3),
        Layer("drop2", "dropout", activation="softmax", rate=0.5),
    ],
    "dense_bn_dropout": [
        Layer("c1", "conv", 4, "relu"),
        Layer("gmp", "global_max"),
        Layer("drop0", "dropout", rate=0.2),
        Layer("d1", "dense", 6),
        Layer("d1_drop", "dropout", rate=0.3),
        Layer("d1_bn", "batch_norm", activation="tanh", eps=1e-3),
        Layer("out", "dense", 3),
        Layer("act", "activation", activation="sigmoid"),
    ],
    "conv_activations": [
        Layer("c1", "conv", 4, "sigmoid"),  # not fusable into the engine's epilogue
        Layer("p1", "pool"),
        Layer("c2", "conv", 4),  # linear
        Layer("c2_act", "activation", activation="relu"),
        Layer("c3", "conv", 3),
        Layer("c3_bn", "batch_norm", activation="tanh", eps=1e-5),
        Layer("flatten", "flatten"),
        Layer("d", "dense", 3),
        Layer("softmax", "activation", activation="softmax"),
    ],
}
INPUT = (12, 10, 3)


def tensors(layers, dtype, seed=0) -> dict:
    """Random tensors for every layer that has some (positive variances for batch norms)."""
    rng, weights = np.random.default_rng(seed), {}
    for layer, shape, _ in shapes(layers, INPUT):
        kind = KINDS[layer.kind]
        if kind.parameter_shapes:
            params = [rng.standard_normal(s) * 0.5 for s in kind.parameter_shapes(layer, shape)]
            if layer.kind == "batch_norm":
                params[0] += 1.0
                params[3] = np.abs(params[3]) + 0.5
            weights[layer.name] = tuple(p.astype(dtype) for p in params)
    return weights


def outputs(layers, weights, x) -> dict:
    found = {}
    forward(
        layers, weights, x, hook=lambda layer, values: found.update({layer.name: values["output"]})
    )
    return found


def oracle(layers, weights, x) -> dict:
    """Every user layer's output in float64: the definition."""
    wide = {name: tuple(a.astype(np.float64) for a in t) for name, t in weights.items()}
    return outputs(layers, wide, x.astype(np.float64))


TOL = {np.float64: 1e-12, np.float32: BN_FOLD_REL_TOL}
PREFIXES = [PASSES[:k] for k in range(1, len(PASSES) + 1)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("passes", PREFIXES, ids=[p[-1].__name__ for p in PREFIXES])
@pytest.mark.parametrize("table", sorted(TABLES))
def test_each_pass_keeps_every_named_output(table, passes, dtype):
    layers = TABLES[table]
    weights = tensors(layers, dtype)
    x = np.random.default_rng(1).standard_normal((2, *INPUT)).astype(dtype)
    expected = oracle(layers, weights, x)
    plan = lower(layers, weights, passes=passes)
    got = outputs(plan.steps, plan.weights, x)
    assert set(plan.names) <= set(expected)
    errors = {name: relative_error(got[step], expected[name]) for name, step in plan.names.items()}
    worst = max(errors, key=errors.get)
    print(
        f"\n{table} after {passes[-1].__name__}: {len(errors)}/{len(layers)} layers named, "
        f"worst {worst} {errors[worst]:.1e}"
    )
    assert errors[worst] < TOL[dtype], errors
    # The last layer always answers, with the whole network's output.
    assert plan.names[layers[-1].name] == plan.steps[-1].name


@pytest.mark.parametrize("table", sorted(TABLES))
def test_only_merged_layers_lose_their_name_and_keep_brings_them_back(table):
    layers = TABLES[table]
    weights = tensors(layers, np.float64)
    plan = lower(layers, weights)
    lost = {layer.name for layer in layers} - set(plan.names)
    # Only a linear convolution or dense layer merged with what follows it is lost, and a
    # dropout (the identity) that gave the same values.
    for i, layer in enumerate(layers):
        if layer.name in lost:
            linear = layer.kind in ("conv", "dense") and layer.activation is None
            alias = layer.kind == "dropout" and layer.activation is None
            assert linear or (alias and layers[i - 1].name in lost), layer
    kept = lower(layers, weights, {layer.name for layer in layers})
    assert set(kept.names) == {layer.name for layer in layers}
    x = np.random.default_rng(2).standard_normal((1, *INPUT))
    expected, got = oracle(layers, weights, x), outputs(kept.steps, kept.weights, x)
    for name, step in kept.names.items():
        assert relative_error(got[step], expected[name]) < 1e-12, name


def test_no_activation_is_dropped():
    layers = TABLES["dropout_activation_head"]
    plan = lower(layers, tensors(layers, np.float64))
    assert [(s.name, s.kind, s.activation) for s in plan.steps][-2:] == [
        ("drop1", "dense", "relu"),
        ("drop2", "dense", "softmax"),
    ]
    assert plan.names == {
        "c1": "c1",
        "p1": "p1",
        "flatten": "flatten",
        "drop1": "drop1",
        "drop2": "drop2",
    }


def test_passes_one_by_one():
    conv = [Layer("c", "conv", 2, "tanh")]
    plan = split_activations(lower(conv, tensors(conv, np.float64), passes=()))
    assert [(s.name, s.kind) for s in plan.steps] == [("c/linear", "conv"), ("c", "activation")]
    assert plan.names == {"c": "c"} and set(plan.weights) == {"c/linear"}
    # A dropout first in the table has no step before it: it stays, as an identity step.
    first = [Layer("drop", "dropout", rate=0.5), Layer("d", "dense", 2)]
    plan = remove_dropouts(lower(first, {"d": (np.ones((3, 2)), np.zeros(2))}, passes=()))
    assert [(s.name, s.kind) for s in plan.steps] == [("drop", "activation"), ("d", "dense")]
    # A batch norm after an activation, or a relu after a relu, stays as it is.
    table = [
        Layer("d", "dense", 2, "relu"),
        Layer("bn", "batch_norm", eps=1e-3),
        Layer("a", "activation", activation="relu"),
    ]
    weights = {"d": (np.ones((3, 2)), np.zeros(2)), "bn": (np.ones(2),) * 4}
    plan = lower(table, weights, passes=())
    assert fold_batch_norms(plan).steps == plan.steps
    assert fuse_activations(plan).steps == plan.steps


@pytest.mark.parametrize("algorithm", ["gemm", "auto", "naive"])
@pytest.mark.parametrize("table", sorted(TABLES))
def test_engine_runs_every_plan_like_the_reference(table, algorithm):
    layers = TABLES[table]
    weights = tensors(layers, np.float32)
    x = np.random.default_rng(3).standard_normal((2, *INPUT)).astype(np.float32)
    expected = oracle(layers, weights, x)
    plan = lower(layers, weights, {layer.name for layer in layers})
    engine = Engine(list(plan.steps), plan.weights, algorithm, threads=1)
    found = engine.outputs(x)
    for name, step in plan.names.items():
        error = relative_error(found[step], expected[name])
        assert error < max(ENGINE_REL_TOL["auto"], BN_FOLD_REL_TOL), (name, error)
    last = lower(layers, weights)
    y = Engine(list(last.steps), last.weights, algorithm, threads=1).predict(x)
    assert relative_error(y, expected[layers[-1].name]) < BN_FOLD_REL_TOL


def test_engine_refuses_a_convolution_it_would_rectify_wrongly():
    table = [Layer("c", "conv", 2, "sigmoid")]
    with pytest.raises(ValueError, match=r"c \(sigmoid\).*lower the table first"):
        Engine(table, tensors(table, np.float32))
