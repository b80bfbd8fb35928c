"""Tests of vgg_np.network (the one description of a model) and of the one shape walk.

Every argument check names its argument; the description is immutable and built by
`describe` alone, from arguments or from a file (`infer_architecture`); `layers.shapes`
gives the shapes the forward pass really produces, for every kind of network, and every
reader of shapes (summary, predict, features, extract, the engine) agrees with it.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tests.conftest import TINY_CONFIG as TINY
from tests.conftest import TINY_DIR
from vgg_np import VGG, VGGConfig, formats
from vgg_np.architecture import infer_architecture
from vgg_np.extract.plan import _output_shape
from vgg_np.layers import Layer, forward, output_kind, shapes
from vgg_np.network import Network, channels_last, describe
from vgg_np.summary import Summary

HEAD = (
    Layer("gap", "global_avg"),
    Layer("dense", "dense", 6),
    Layer("bn", "batch_norm", eps=1e-3),
    Layer("drop", "dropout", activation="relu", rate=0.3),
    Layer("out", "dense", 3, "softmax"),
)


@pytest.mark.parametrize(
    ("arguments", "error", "match"),
    [
        ({"config": "vgg17"}, ValueError, r"`config` must be one of \['vgg11'"),
        ({"config": 16}, TypeError, "`config` must be a VGGConfig or a name, got int"),
        ({"data_format": "NHWC"}, ValueError, "`data_format` must be 'channels_last' or"),
        ({"pooling": "sum"}, ValueError, "`pooling` must be None, 'avg' or 'max', got 'sum'"),
        ({"classifier_activation": "tanh"}, ValueError, "`classifier_activation` must be"),
        ({"classes": 0}, ValueError, "`classes` must be a positive int, got 0"),
        ({"classes": True}, ValueError, "`classes` must be a positive int, got True"),
        ({"adaptive_pool": 0}, ValueError, "`adaptive_pool` must be None or a positive int"),
        ({"batch_norm": "yes"}, ValueError, "`batch_norm` must be a bool or a non-negative"),
        ({"batch_norm": -1.0}, ValueError, "`batch_norm` must be a bool or a non-negative"),
        ({"dtype": "int8"}, ValueError, "`dtype` must be float16, float32 or float64"),
        ({"dtype": "no-such-type"}, ValueError, "`dtype` must be float16, float32 or float64"),
        ({"input_shape": (32, 32)}, ValueError, "`input_shape` must have 3 entries"),
        ({"input_shape": (32, 32, 0)}, ValueError, "`input_shape` must give a positive channel"),
        ({"input_shape": (None, 32, 3)}, ValueError, "`input_shape` must be static"),
        ({"input_shape": (31, 32, 3)}, ValueError, "`input_shape` height and width must be"),
        ({"head": ()}, TypeError, "`head` must be a non-empty sequence of Layer"),
        ({"head": ("dense",)}, TypeError, "`head` must be a non-empty sequence of Layer"),
        ({"head": (Layer("c", "conv", 3),)}, ValueError, "`head` has layers vgg_np cannot run"),
        ({"head": (Layer("d", "dense", 3, "gelu"),)}, ValueError, r"d \(kind 'dense', activ"),
        (
            {"head": (Layer("d", "dense", 3), Layer("d", "dense", 2))},
            ValueError,
            "`head` layer names must be unique",
        ),
        ({"head": (Layer("block6", "dense", 3),)}, ValueError, "unique and not block"),
    ],
)
def test_each_bad_argument_is_refused_by_name(arguments, error, match):
    with pytest.raises(error, match=match):
        describe(**arguments)
    # VGG builds through describe: the same message.
    with pytest.raises(error, match=match):
        VGG(**{"seed": 0, **arguments})


def test_a_network_is_immutable_and_rebuilt_only_through_describe():
    network = describe(TINY, include_top=False, pooling="max")
    with pytest.raises(dataclasses.FrozenInstanceError):
        network.classes = 3
    assert network.replace(pooling="avg").layers[-1].kind == "global_avg"
    with pytest.raises(ValueError, match="`pooling` must be"):
        network.replace(pooling="median")
    again = describe(**network.arguments())
    assert again == network


def test_input_shape_is_channels_last_inside_and_the_users_layout_outside():
    network = describe(TINY, input_shape=(3, 64, 40), data_format="channels_first")
    assert network.input_shape == (64, 40, 3)
    assert network.arguments()["input_shape"] == (3, 64, 40)
    # Changing the layout keeps the same input.
    assert network.replace(data_format="channels_last").input_shape == (64, 40, 3)
    assert network.output_shape("block1_conv1", (64, 40, 3)) == (4, 64, 40)
    assert network.output_shape("predictions", (64, 40, 3)) == (1000,)
    assert channels_last((3, 64, 40), "channels_first") == (64, 40, 3)
    assert channels_last((3, 64, 40), "channels_last") == (3, 64, 40)
    model = VGG(TINY, input_shape=(3, 64, 40), data_format="channels_first", seed=0)
    assert model.input_shape == (64, 40, 3) and model.network == network.replace(provenance=None)


def test_head_arguments_come_from_the_head():
    network = describe(TINY, head=HEAD, classes=99, pooling="avg")  # ignored: a head
    assert (network.classes, network.classifier_activation, network.pooling) == (3, "softmax", None)
    assert network.include_top and network.input_shape == (None, None, 3)
    assert network.output_kind == "probabilities"


@pytest.mark.parametrize(
    ("layers", "kind"),
    [
        ([Layer("p", "dense", 3, "softmax")], "probabilities"),
        ([Layer("p", "dense", 3)], "logits"),
        ([Layer("p", "dense", 3, "sigmoid")], "scores"),
        ([Layer("d", "dense", 3), Layer("x", "dropout", activation="softmax")], "probabilities"),
        ([Layer("g", "global_avg")], "features"),
    ],
)
def test_output_kind(layers, kind):
    assert output_kind(layers) == kind


def test_check_weights_lists_every_problem_at_once():
    network = describe(TINY, include_top=False)
    model = VGG(TINY, include_top=False, seed=0)
    weights = model.weights
    del weights["block2_conv1"]
    weights["block1_conv1"] = (np.zeros((3, 3, 3, 5)), np.zeros(5))
    weights["block9_conv1"] = weights["block3_conv1"]
    with pytest.raises(ValueError) as info:
        network.check_weights(weights, "the test's weights")
    message = str(info.value)
    assert message.startswith("the test's weights do not fit tiny")
    assert "missing: block2_conv1" in message
    assert "not in this model: block9_conv1" in message
    assert "block1_conv1: expected kernel (3, 3, 3, 4) and bias (4,), got kernel" in message


def test_infer_architecture_describes_the_file(tmp_path):
    model = VGG(TINY, head=HEAD, input_shape=(64, 40, 3), seed=0)
    model.save_weights(tmp_path / "w.npz")
    with formats.open_weights(tmp_path / "w.npz") as source:
        network = infer_architecture(source.tensors, source.info, source.provenance)
    assert isinstance(network, Network)
    assert network.layers == model.layers and network.input_shape == (64, 40, 3)
    assert network.provenance is not None and network.provenance.input_size == (64, 40)
    loaded = VGG.from_file(tmp_path / "w.npz", data_format="channels_first")
    assert loaded.layers == model.layers and loaded.input_shape == (64, 40, 3)
    assert loaded.network.provenance == network.provenance
    with pytest.raises(TypeError, match="reads `weights` from the file"):
        VGG.from_file(tmp_path / "w.npz", weights=None)


def test_an_open_weight_source_loads_without_drawing_weights():
    model = VGG(TINY, include_top=False, seed=3)
    provenance = formats.Provenance("the test's tensors", formats.Family.KERAS)
    source = formats.WeightSource(model.weights, provenance, path="'memory'")
    loaded = VGG(TINY, include_top=False, weights=source)
    assert all(
        np.array_equal(a, b)
        for name in model.weights
        for a, b in zip(model.weights[name], loaded.weights[name], strict=True)
    )
    assert loaded.weights_provenance == provenance
    bad = formats.WeightSource({}, provenance, path="'memory'")
    with pytest.raises(ValueError, match=r"the weights in 'memory' \(the test's tensors\) do not"):
        VGG(TINY, include_top=False, weights=bad)


# -- the one shape walk ---------------------------------------------------------------------

NETWORKS = {
    "plain": ({"input_shape": (32, 32, 3), "classes": 5}, (32, 32, 3)),
    "batch_norm": ({"batch_norm": True, "classes": 5}, (32, 32, 3)),
    "head": ({"head": HEAD}, (64, 40, 3)),
    "non_square": ({"include_top": False, "pooling": "max"}, (96, 64, 3)),
    "adaptive_pool": ({"adaptive_pool": 2, "classes": 4}, (80, 48, 3)),
}


@pytest.mark.parametrize("kind", sorted(NETWORKS))
def test_the_shape_walk_is_what_every_layer_outputs(kind):
    arguments, size = NETWORKS[kind]
    model = VGG(TINY, seed=0, dtype="float64", **arguments)
    x = np.random.default_rng(0).standard_normal((2, *size))
    seen = {}
    forward(model.layers, model.weights, x, hook=lambda layer, v: seen.update({layer.name: v}))
    walk = shapes(model.network, size)
    assert [s.layer.name for s in walk] == [layer.name for layer in model.layers]
    for layer, before, after in walk:
        assert seen[layer.name]["input"].shape[1:] == before, layer.name
        assert seen[layer.name]["output"].shape[1:] == after, layer.name
    # Every reader of shapes agrees: the summary, features, predict, extract's store rows.
    rows = {row.name: row.output_shape for row in Summary.of(model.layers, size, "").rows}
    for layer, _, after in walk:
        assert rows[layer.name] == after
        assert model.network.output_shape(layer.name, size) == after
    for name in (model.layers[1].name, model.layers[-1].name):
        assert model.features(x, name).shape[1:] == model.network.output_shape(name, size)
        assert model.predict(x, verbose=0, layer=name).shape[1:] == rows[name]
    if size[0] == size[1]:
        assert _output_shape(model, "block2_pool", size[0]) == rows["block2_pool"]
    # The engine plans from the walk too: its lowered steps have the same output shapes.
    steps = {s.layer.name: s.output for s in shapes(model.engine.layers, size)}
    assert steps[model.engine.layers[-1].name] == walk[-1].output


def test_parameter_shapes_follow_the_walk_and_need_a_fixed_size():
    network = describe(TINY, input_shape=(64, 32, 3), classes=5)
    assert network.parameter_shapes()["fc1"] == ((2 * 1 * 8, 16), (16,))
    assert network.needs_fixed_size()
    assert not describe(TINY, include_top=False).needs_fixed_size()
    assert not describe(TINY, adaptive_pool=2).needs_fixed_size()
    assert describe(TINY, adaptive_pool=2).input_shape == (None, None, 3)


def test_a_channels_last_shape_given_to_a_channels_first_model_says_the_order():
    """(32, 32, 3) with channels_first is C=32, H=32, W=3: the message says how it was read."""
    with pytest.raises(ValueError, match=r"got \(32, 32, 3\) as \(C, H, W\) with channels_first"):
        VGG(
            VGGConfig("t", ((4,),) * 5, fc=(8,)),
            input_shape=(32, 32, 3),
            data_format="channels_first",
        )


@pytest.mark.parametrize("name", ["applications.h5", "model.keras", "applications_notop.h5"])
def test_a_file_of_other_widths_is_refused_with_the_call_that_loads_it(name):
    """README: a file holding another network (a head, batch norms, other widths) is
    refused with every misfit listed and the call that loads it, VGG.from_file."""

    from vgg_np import VGG16

    path = TINY_DIR / name
    with pytest.raises(ValueError, match=r"VGG\.from_file\(path\) builds the network"):
        VGG16(weights=path, include_top=name != "applications_notop.h5")
