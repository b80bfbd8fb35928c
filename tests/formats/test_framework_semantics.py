"""Files mean what their framework says they mean, not what a VGG usually is.

- A Keras config that leaves a key out gets Keras 3's default for it (read from Keras's
  source: ``keras/src/layers/convolutional/conv2d.py``, ``pooling/max_pooling2d.py``,
  ``core/dense.py``, ``normalization/batch_normalization.py``): a Conv2D without
  ``activation`` is linear and without ``padding`` "valid", which a VGG base cannot be, so
  such a file is refused by layer name rather than read as ReLU / "same".
- An ONNX model is what feeds its declared output: a node that feeds nothing declared
  (an unused Softmax) is not run; an output the input cannot reach, several outputs and
  a cycle are refused with the node named (a cycle used to loop forever).
- The output kind (probabilities, logits, scores, features) is part of the model, and
  the CLI calls the numbers of a head without softmax scores.
"""

from __future__ import annotations

import itertools
import json
import pathlib
import threading
import time
import zipfile

import numpy as np
import pytest

from tests.conftest import HEADS_DIR as HEADS
from tests.conftest import relative_error
from vgg_np import VGG, layers, ops
from vgg_np.cli import main
from vgg_np.formats import FileFormatError
from vgg_np.formats.keras_config import read_config
from vgg_np.layers import Layer

X = np.random.default_rng(20).standard_normal((2, 64, 40, 3)).astype(np.float32) * 50


# -- Keras configs: Keras's defaults -------------------------------------------------------


def keras_config(conv: dict, pool: dict | None = None, head: list | None = None) -> dict:
    """A Sequential config: input, one convolution `conv`, one max-pool, then `head`."""
    layers = [
        {"class_name": "InputLayer", "config": {"name": "in", "batch_shape": [None, 32, 32, 3]}},
        {"class_name": "Conv2D", "config": {"name": "c", "filters": 4, **conv}},
        {"class_name": "MaxPooling2D", "config": {"name": "p", **(pool or {})}},
        *(head or []),
    ]
    return {"class_name": "Sequential", "config": {"name": "m", "layers": layers}}


VGG_CONV = {"kernel_size": [3, 3], "padding": "same", "activation": "relu"}


@pytest.mark.parametrize(
    ("missing", "default"), [("activation", "'linear'"), ("padding", "'valid'")]
)
def test_a_conv2d_without_a_key_takes_keras_default_and_is_refused_by_name(missing, default):
    conv = {k: v for k, v in VGG_CONV.items() if k != missing}
    with pytest.raises(FileFormatError, match=rf"layer 'c' \(Conv2D\) has .*{missing}': {default}"):
        read_config(keras_config(conv), "f.keras")


def test_keras_spellings_of_the_same_values_are_read():
    # kernel_size 3 is Keras's (3, 3); a null data_format is image_data_format()'s
    # channels_last; a pool without strides strides by its pool size.
    conv = {**VGG_CONV, "kernel_size": 3, "data_format": None}
    model = read_config(keras_config(conv, {"pool_size": 2}), "f.keras")
    assert model.names == {"block1_conv1": "c"}


def test_a_pool_without_strides_strides_by_its_size():
    with pytest.raises(
        FileFormatError, match=r"layer 'p' \(MaxPooling2D\) has .*'strides': \[3, 3\]"
    ):
        read_config(keras_config(VGG_CONV, {"pool_size": [3, 3]}), "f.keras")


def test_head_defaults_batch_norm_epsilon_and_dense_activation():
    head = [
        {"class_name": "Flatten", "config": {"name": "flat"}},
        {"class_name": "Dense", "config": {"name": "d", "units": 4}},
        {"class_name": "BatchNormalization", "config": {"name": "bn"}},
    ]
    model = read_config(keras_config(VGG_CONV, head=head), "f.keras")
    _, dense, bn = model.head
    assert dense.activation is None and bn.eps == 1e-3  # Keras's epsilon, not torch's
    assert model.variables["bn"] == ["gamma", "beta", "moving_mean", "moving_variance"]


@pytest.mark.parametrize(
    ("kind", "config", "key"),
    [("Dense", {"name": "d"}, "units"), ("Dropout", {"name": "d"}, "rate")],
)
def test_a_key_keras_requires_is_refused_by_layer(kind, config, key):
    head = [{"class_name": "Flatten", "config": {"name": "flat"}}]
    head.append({"class_name": kind, "config": config})
    with pytest.raises(FileFormatError, match=rf"layer 'd' \({kind}\) has no {key}, which Keras"):
        read_config(keras_config(VGG_CONV, head=head), "f.keras")


def rewrite_keras(tmp_path: pathlib.Path, edit) -> pathlib.Path:
    """Copy the committed Flatten-head .keras with its config.json changed by `edit`."""
    source = zipfile.ZipFile(HEADS / "keras_flatten_head.keras")
    config = json.loads(source.read("config.json"))
    edit(config)
    out = tmp_path / "edited.keras"
    with zipfile.ZipFile(out, "w") as target:
        for name in source.namelist():
            data = json.dumps(config) if name == "config.json" else source.read(name)
            target.writestr(name, data)
    return out


def test_a_keras_file_whose_convolution_omits_activation_is_refused(tmp_path):
    def drop_activation(config):
        base = config["config"]["layers"][1]["config"]["layers"]
        (conv,) = [layer for layer in base if layer["config"]["name"] == "block2_conv1"]
        del conv["config"]["activation"]

    path = rewrite_keras(tmp_path, drop_activation)
    with pytest.raises(ValueError, match=r"'block2_conv1' \(Conv2D\) has \{'activation': 'linear'"):
        VGG.from_file(path)


# -- ONNX: the declared output -------------------------------------------------------------


def needs_onnx():
    return pytest.importorskip("onnx", reason="reading ONNX needs the onnx package")


def edited_onnx(tmp_path, edit, name="edited.onnx") -> pathlib.Path:
    """Copy the committed torch-exported Flatten head with its graph changed by `edit`."""
    onnx = needs_onnx()
    model = onnx.load(HEADS / "keras_flatten_head_torch.onnx")
    edit(model.graph)
    path = tmp_path / name
    onnx.save(model, path)
    return path


def declare_logits(graph) -> None:
    """Declare the last Gemm's output as the graph's output: the Softmax feeds nothing."""
    softmax = graph.node[-1]
    assert softmax.op_type == "Softmax"
    graph.output[0].name = softmax.input[0]


@pytest.mark.onnx
def test_an_unused_softmax_is_not_run(tmp_path):
    needs_onnx()
    original = VGG.from_file(HEADS / "keras_flatten_head_torch.onnx", data_format="channels_last")
    model = VGG.from_file(edited_onnx(tmp_path, declare_logits), data_format="channels_last")
    assert original.output_kind == "probabilities" and model.output_kind == "logits"
    logits = model(X)
    assert np.abs(logits.sum(axis=1) - 1).max() > 0.1  # not probabilities
    assert relative_error(ops.softmax(logits.astype(np.float64)), original(X)) < 1e-5


@pytest.mark.onnx
@pytest.mark.onnxruntime
def test_an_unused_softmax_agrees_with_onnxruntime(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime")
    path = edited_onnx(tmp_path, declare_logits)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    nchw = np.ascontiguousarray(X.transpose(0, 3, 1, 2))  # (N, C, H, W): torch's export
    (expected,) = session.run(None, {session.get_inputs()[0].name: nchw})
    model = VGG.from_file(path, data_format="channels_last", dtype="float64")
    assert relative_error(model(X), expected) < 1e-5


@pytest.mark.onnx
def test_an_output_the_input_cannot_reach_is_refused(tmp_path):
    helper, numpy_helper = needs_onnx().helper, needs_onnx().numpy_helper

    def constant_output(graph):
        value = numpy_helper.from_array(np.ones((1, 5), np.float32), "k")
        graph.node.append(helper.make_node("Constant", [], ["fixed"], value=value))
        graph.output[0].name = "fixed"

    path = edited_onnx(tmp_path, constant_output)
    with pytest.raises(ValueError, match=r"output 'fixed' \(made by node Constant ''\) cannot be"):
        VGG.from_file(path)


@pytest.mark.onnx
def test_an_output_nothing_makes_is_refused(tmp_path):
    def unknown(graph):
        graph.output[0].name = "nowhere"

    with pytest.raises(ValueError, match=r"output 'nowhere' \(made by no node\) cannot be"):
        VGG.from_file(edited_onnx(tmp_path, unknown))


@pytest.mark.onnx
def test_several_outputs_are_refused(tmp_path):
    helper = needs_onnx().helper

    def two(graph):
        graph.output.append(helper.make_tensor_value_info("extra", 1, None))

    with pytest.raises(ValueError, match=r"declares 2 outputs \['probabilities', 'extra'\]"):
        VGG.from_file(edited_onnx(tmp_path, two))


@pytest.mark.onnx
def test_a_node_that_feeds_no_output_is_not_read(tmp_path):
    helper = needs_onnx().helper

    def dead_branch(graph):
        # A node vgg_np does not run, reading a tensor of the base: a branch, but a dead one.
        pool = next(n for n in graph.node if n.op_type == "MaxPool").output[0]
        graph.node.append(helper.make_node("LpNormalization", [pool], ["unused"], name="extra"))

    model = VGG.from_file(edited_onnx(tmp_path, dead_branch), data_format="channels_last")
    original = VGG.from_file(HEADS / "keras_flatten_head_torch.onnx", data_format="channels_last")
    np.testing.assert_array_equal(model(X), original(X))


@pytest.mark.onnx
def test_a_long_graph_in_reverse_order_is_read_in_linear_time(tmp_path):
    """A hostile file: 20,000 Identity nodes listed last to first (ONNX wants topological
    order; a reader that rescans the list per node would take minutes)."""
    helper = needs_onnx().helper
    count = 20_000

    def long_chain(graph):
        softmax = graph.node[-1]
        start, end = softmax.input[0], "chain_end"
        names = [start, *(f"t{i}" for i in range(count - 1)), end]
        chain = [helper.make_node("Identity", [a], [b]) for a, b in itertools.pairwise(names)]
        softmax.input[0] = end
        last = graph.node.pop()
        graph.node.extend([*reversed(chain), last])

    path = edited_onnx(tmp_path, long_chain)
    started = time.perf_counter()
    model = VGG.from_file(path, data_format="channels_last")
    assert time.perf_counter() - started < 20
    original = VGG.from_file(HEADS / "keras_flatten_head_torch.onnx", data_format="channels_last")
    np.testing.assert_array_equal(model(X), original(X))


def read_in_a_thread(path) -> BaseException | None:
    """Read `path`; a read still running after 30 s counts as an endless loop."""
    errors: list = []

    def read():
        try:
            VGG.from_file(path)
        except BaseException as error:  # handed to the test
            errors.append(error)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "reading a graph with a cycle did not end"
    return errors[0] if errors else None


@pytest.mark.onnx
def test_a_cycle_of_identities_is_refused_by_node(tmp_path):
    helper = needs_onnx().helper

    def cycle(graph):
        # The last Gemm's output goes round two Identity nodes that feed each other.
        gemm = graph.node[-2].output[0]
        del graph.node[-1]
        graph.node.append(helper.make_node("Identity", [gemm], ["loop"], name="first"))
        graph.node.append(helper.make_node("Identity", ["loop"], [gemm], name="second"))
        graph.output[0].name = "loop"

    error = read_in_a_thread(edited_onnx(tmp_path, cycle))
    assert isinstance(error, ValueError)
    assert "node Identity 'first' is on a cycle" in str(error)


@pytest.mark.onnx
def test_a_node_reading_its_own_output_is_refused(tmp_path):
    def self_loop(graph):
        graph.node[-1].input[0] = graph.node[-1].output[0]  # Softmax(probabilities)

    error = read_in_a_thread(edited_onnx(tmp_path, self_loop))
    assert isinstance(error, ValueError)
    assert "node Softmax '/head/head.6/Softmax' is on a cycle" in str(error)


# -- output kind ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last", "kind"),
    [
        (Layer("out", "dense", 3, "softmax"), "probabilities"),
        (Layer("out", "dense", 3), "logits"),
        (Layer("out", "dense", 3, "sigmoid"), "scores"),
        (Layer("out", "dense", 3, "tanh"), "scores"),
        (Layer("out", "dense", 3, "relu"), "scores"),
    ],
)
def test_output_kind_by_the_last_activation(last, kind):
    assert layers.output_kind([Layer("flatten", "flatten"), last]) == kind
    dropped = [Layer("flatten", "flatten"), last, Layer("drop", "dropout", rate=0.5)]
    assert layers.output_kind(dropped) == kind  # dropout is the identity at inference


def test_output_kind_of_files():
    assert VGG.from_file(HEADS / "keras_gap_head.keras").output_kind == "probabilities"
    # A torchvision file follows torch: its model returns logits (docs/heads.md).
    assert VGG.from_file(HEADS / "vgg16_bn.safetensors").output_kind == "logits"
    assert (
        VGG.from_file(HEADS / "vgg16_bn.safetensors", classifier_activation="softmax").output_kind
        == "probabilities"
    )
    assert (
        VGG.from_file(HEADS / "vgg16_bn.safetensors", include_top=False).output_kind == "features"
    )


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> str:
    from PIL import Image

    path = tmp_path_factory.mktemp("pictures") / "a.png"
    pixels = np.random.default_rng(3).integers(0, 256, (50, 60, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


@pytest.mark.onnx
def test_predict_calls_the_numbers_of_a_head_without_softmax_scores(tmp_path, capsys, picture):
    path = edited_onnx(tmp_path, declare_logits)
    assert main(["predict", picture, "--weights", str(path), "--json", "--top", "5"]) == 0
    record = json.loads(capsys.readouterr().out)
    scores = [entry["score"] for entry in record["top"]]
    assert all("probability" not in entry for entry in record["top"])
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) > 0.1  # still ranked
    assert main(["predict", picture, "--weights", str(path), "--top", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(" score " in line for line in lines[1:])


@pytest.mark.onnx
def test_predict_still_says_probability_after_a_softmax(capsys, picture):
    needs_onnx()
    weights = str(HEADS / "keras_flatten_head_torch.onnx")
    assert main(["predict", picture, "--weights", weights, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert abs(sum(entry["probability"] for entry in record["top"]) - 1) < 1e-4


@pytest.mark.parametrize(("activation", "kind"), [("linear", "logits"), ("sigmoid", "scores")])
def test_a_keras_head_without_softmax_prints_scores(tmp_path, capsys, picture, activation, kind):
    def last_dense(config):
        config["config"]["layers"][-1]["config"]["activation"] = activation

    path = rewrite_keras(tmp_path, last_dense)
    assert VGG.from_file(path).output_kind == kind
    assert main(["predict", picture, "--weights", str(path), "--json", "--top", "5"]) == 0
    entries = json.loads(capsys.readouterr().out)["top"]
    assert [set(entry) for entry in entries] == [{"wnid", "label", "score"}] * 5


@pytest.mark.parametrize("conv_algorithm", ["auto", "reference"])
def test_keras_activation_layer_keeps_its_name_and_the_dropout_its_output(tmp_path, conv_algorithm):
    """Keras's ``Dense -> Dropout -> Activation("softmax")``: the dropout's output is the
    dense layer's (the identity at inference), the probabilities are the Activation's."""
    from tests.matrix_kinds import _dropout_activation

    model = VGG.from_file(_dropout_activation(tmp_path), conv_algorithm=conv_algorithm)
    x = np.random.default_rng(0).standard_normal((2, *model.input_shape)).astype(np.float32)
    logits = model.features(x * 50, "dense_1")
    assert np.array_equal(model.features(x * 50, "dropout_2"), logits)
    probabilities = model.features(x * 50, "act")
    assert relative_error(probabilities, ops.softmax(logits)) < 1e-6
    outputs = model.activations(x * 50)
    assert list(outputs)[-3:] == ["dense_1", "dropout_2", "act"]
    assert np.array_equal(outputs["dropout_2"], logits)
    assert np.array_equal(model(x * 50), probabilities)
    assert model.output_kind == "probabilities"


@pytest.mark.parametrize("class_name", [["Dense"], None, 7])
def test_a_layer_whose_class_name_is_no_string_is_refused_by_name(class_name):
    # A list was looked up in the defaults' tables (unhashable: a TypeError).
    head = [{"class_name": class_name, "config": {"name": "odd"}}]
    with pytest.raises(FileFormatError, match=r"f.keras: layer 'odd' has class name"):
        read_config(keras_config(VGG_CONV, head=head), "f.keras")
