"""ONNX models of the VGG family: graphs built here in the exporters' two styles, and ONNX's
own light_vgg19.onnx with its stored output. Marked `onnx` (needs the `onnx` package)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from tests.conftest import TINY_DIR, relative_error
from tests.reference.make_keras_reference import TINY, TINY_CLASSES
from vgg_np import VGG, formats
from vgg_np.formats.layouts import hwc_rows_to_chw, hwio_to_oihw

pytestmark = pytest.mark.onnx
onnx = pytest.importorskip("onnx", reason="needs the optional `onnx` package")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


@pytest.fixture(scope="module")
def original():
    return VGG(
        TINY, weights=TINY_DIR / "model.h5", input_shape=(32, 32, 3), classes=TINY_CLASSES,
        classifier_activation=None,
    )  # fmt: skip


def build_graph(weights, *, style="torch", head="vgg", extra_node=None, softmax=False):
    """A VGG graph as torch.onnx.export ("torch": NCHW) or tf2onnx ("tf2onnx": NHWC) writes it."""
    nodes, inits = [], []
    shape = [2, 3, 32, 32] if style == "torch" else [2, 32, 32, 3]
    current = "input"
    if style == "tf2onnx":
        nodes.append(helper.make_node("Transpose", [current], ["nchw"], perm=[0, 3, 1, 2]))
        current = "nchw"
    for b, widths in enumerate(TINY.blocks, start=1):
        for i in range(1, len(widths) + 1):
            name = f"block{b}_conv{i}"
            kernel, bias = weights[name]
            inits += [numpy_helper.from_array(hwio_to_oihw(kernel).copy(), f"{name}_W"),
                      numpy_helper.from_array(bias, f"{name}_b")]  # fmt: skip
            nodes.append(helper.make_node(
                "Conv", [current, f"{name}_W", f"{name}_b"], [f"{name}_conv"],
                kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1],
            ))  # fmt: skip
            if extra_node == "BatchNormalization" and name == "block2_conv1":
                nodes.append(helper.make_node("Identity", [f"{name}_conv"], [f"{name}_bn"]))
                nodes[-1].op_type = "BatchNormalization"
                nodes.append(helper.make_node("Relu", [f"{name}_bn"], [name]))
            else:
                nodes.append(helper.make_node("Relu", [f"{name}_conv"], [name]))
            current = name
        nodes.append(helper.make_node(
            "MaxPool", [current], [f"block{b}_pool"], kernel_shape=[2, 2], strides=[2, 2]
        ))  # fmt: skip
        current = f"block{b}_pool"
    if head == "custom":  # a 1x1 convolution, then a global pool and a classifier
        inits.append(numpy_helper.from_array(np.ones((32, 32, 1, 1), np.float32), "head_conv"))
        nodes.append(
            helper.make_node("Conv", [current, "head_conv"], ["mixed"], kernel_shape=[1, 1])
        )
        nodes.append(helper.make_node("GlobalAveragePool", ["mixed"], ["gap"]))
        nodes.append(helper.make_node("Flatten", ["gap"], ["features"]))
        inits.append(numpy_helper.from_array(np.ones((5, 32), np.float32), "head_W"))
        nodes.append(helper.make_node("Gemm", ["features", "head_W"], ["output"], transB=1))
    else:
        if style == "tf2onnx":
            nodes.append(helper.make_node("Transpose", [current], ["nhwc"], perm=[0, 2, 3, 1]))
            current = "nhwc"
        inits.append(numpy_helper.from_array(np.array([2, -1], np.int64), "flat_shape"))
        nodes.append(helper.make_node("Reshape", [current, "flat_shape"], ["flatten"]))
        current = "flatten"
        dense = ["fc1", "fc2", "predictions"]
        for position, name in enumerate(dense):
            kernel, bias = weights[name]
            if style == "torch":  # Gemm with an (out, in) weight, fc1 rows in NCHW order
                if name == "fc1":
                    kernel = hwc_rows_to_chw(kernel, (1, 1, 32))
                inits += [numpy_helper.from_array(kernel.T.copy(), f"{name}_W"),
                          numpy_helper.from_array(bias, f"{name}_b")]  # fmt: skip
                nodes.append(helper.make_node(
                    "Gemm", [current, f"{name}_W", f"{name}_b"], [f"{name}_out"], transB=1
                ))  # fmt: skip
            else:  # tf2onnx: MatMul + Add
                inits += [numpy_helper.from_array(kernel, f"{name}_W"),
                          numpy_helper.from_array(bias, f"{name}_b")]  # fmt: skip
                nodes.append(helper.make_node("MatMul", [current, f"{name}_W"], [f"{name}_mm"]))
                nodes.append(helper.make_node("Add", [f"{name}_mm", f"{name}_b"], [f"{name}_out"]))
            current = f"{name}_out"
            if position < len(dense) - 1:
                nodes.append(helper.make_node("Relu", [current], [name]))
                nodes.append(helper.make_node("Dropout", [name], [f"{name}_drop"]))
                current = f"{name}_drop"
        last = helper.make_node("Softmax", [current], ["output"], axis=1) if softmax else None
        nodes.append(last or helper.make_node("Identity", [current], ["output"]))
    graph = helper.make_graph(
        nodes, "vgg", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", "K"])], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def save(model, tmp_path, name="vgg.onnx"):
    path = tmp_path / name
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.mark.parametrize("style", ["torch", "tf2onnx"])
def test_both_exporter_styles_load_as_the_original_network(tmp_path, original, style):
    path = save(build_graph(original.weights, style=style), tmp_path)
    with formats.open_weights(path) as source:
        assert source.info["input_layout"] == ("NCHW" if style == "torch" else "NHWC")
        assert source.info["input_shape"] == (32, 32, 3)
        assert source.info["tensor_names"]["block3_conv2"] == "block3_conv2"
        assert source.info["note"] == ""
    model = VGG.from_file(path, data_format="channels_last", classifier_activation=None)
    assert model.config.blocks == TINY.blocks and model.classes == TINY_CLASSES
    for name, (kernel, bias) in original.weights.items():
        np.testing.assert_array_equal(model.weights[name][0], kernel, err_msg=name)
        np.testing.assert_array_equal(model.weights[name][1], bias, err_msg=name)


def test_inferred_layout_and_softmax(tmp_path, original):
    path = save(build_graph(original.weights, style="torch", softmax=True), tmp_path)
    model = VGG.from_file(path)
    assert model.data_format == "channels_first" and model.classifier_activation == "softmax"
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    probs = model(x)
    assert (
        relative_error(
            np.log(probs) - np.log(probs)[:, :1],
            (original(x.transpose(0, 2, 3, 1)) - original(x.transpose(0, 2, 3, 1))[:, :1]),
        )
        < 1e-5
    )


def test_custom_head_loads_as_a_convolutional_base(tmp_path, original):
    path = save(build_graph(original.weights, head="custom"), tmp_path)
    model = VGG.from_file(path, data_format="channels_last")
    assert not model.include_top
    np.testing.assert_array_equal(
        model.weights["block5_conv3"][0], original.weights["block5_conv3"][0]
    )
    with pytest.raises(
        ValueError,
        match=r"(?s)head is not VGG's.*Conv, GlobalAveragePool, Flatten, Gemm.*missing: fc1",
    ):
        VGG(TINY, weights=path, input_shape=(32, 32, 3), classes=TINY_CLASSES)


def test_unsupported_node_inside_the_base_is_named(tmp_path, original):
    model = build_graph(original.weights, extra_node="BatchNormalization")
    path = tmp_path / "bn.onnx"
    onnx.save(model, path)
    with pytest.raises(
        ValueError, match=r"unsupported node BatchNormalization .* where a Relu after block2_conv1"
    ):
        VGG.from_file(path)


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "fake.onnx"
    path.write_bytes(b"\x08\x07garbage that is not protobuf \xff\xff")
    with pytest.raises(ValueError, match="not a readable ONNX model"):
        VGG.from_file(path)


def test_onnx_light_vgg19_matches_its_stored_output():
    from onnx.backend.test.runner import Runner

    light = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    graph = onnx.load(light / "light_vgg19.onnx").graph
    data_input = next(i for i in graph.input if i.name == "data_0")
    x = Runner.generate_dummy_data(data_input, seed=0, random=False)  # as ONNX's runner does
    tensor = onnx.TensorProto()
    tensor.ParseFromString((light / "light_vgg19_output_0.pb").read_bytes())
    expected = numpy_helper.to_array(tensor)
    model = VGG.from_file(light / "light_vgg19.onnx")  # weights from ConstantOfShape nodes
    assert model.config.name == "vgg19" and model.classifier_activation == "softmax"
    # ONNX's tolerances for this model (real/test_vgg19/data.json): rtol 1e-3, atol 1e-7.
    np.testing.assert_allclose(model(x), expected, rtol=1e-3, atol=1e-7)


# ---------------------------------------------------------------------------------------
# Provenance: what the exporter and the input layout say about preprocessing
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("style", "producer", "family", "mode"),
    [
        ("torch", "pytorch", "onnx-nchw", "torch"),
        ("tf2onnx", "tf2onnx", "onnx-nhwc", "caffe"),
        ("tf2onnx", "", "onnx-nhwc", "caffe"),  # only TensorFlow-side exporters write NHWC
        ("torch", "", "onnx-nchw", None),  # an NCHW graph from nobody knows where
    ],
)
def test_onnx_provenance_from_the_exporter_and_layout(
    tmp_path, original, style, producer, family, mode
):
    graph = build_graph(original.weights, style=style)
    graph.producer_name = producer
    with formats.open_weights(save(graph, tmp_path)) as source:
        provenance = source.provenance
    assert provenance.family.value == family and provenance.preprocess == mode
    assert provenance.input_size == (32, 32) and not provenance.recorded
    if mode is None:
        with pytest.raises(ValueError, match="exporter unnamed: no convention"):
            formats.choose_preprocessing(provenance)


def test_a_vgg_np_record_in_onnx_metadata_is_read(tmp_path, original):
    graph = build_graph(original.weights)
    record = formats.Provenance("x", formats.Family.KERAS, "caffe", "keras").record()
    helper.set_model_props(graph, record)
    with formats.open_weights(save(graph, tmp_path)) as source:
        assert source.provenance.recorded and source.provenance.family is formats.Family.KERAS


# ---------------------------------------------------------------------------------------
# Hostile graphs: nothing evaluated unless it is a weight, nothing read from elsewhere
# ---------------------------------------------------------------------------------------


def test_an_unused_huge_constant_of_shape_is_never_evaluated(tmp_path, original):
    graph = build_graph(original.weights)
    graph.graph.initializer.append(numpy_helper.from_array(np.array([2**40], np.int64), "huge"))
    graph.graph.node.append(helper.make_node("ConstantOfShape", ["huge"], ["unused"]))
    model = VGG.from_file(save(graph, tmp_path), classifier_activation=None)  # 4 TiB if evaluated
    np.testing.assert_array_equal(model.weights["fc2"][0], original.weights["fc2"][0])


def test_a_huge_computed_weight_is_refused_before_it_is_computed(tmp_path, original):
    graph = build_graph(original.weights)
    graph.graph.initializer.append(
        numpy_helper.from_array(np.array([2**20, 2**20], np.int64), "huge_shape")
    )
    graph.graph.node.insert(0, helper.make_node("ConstantOfShape", ["huge_shape"], ["huge"]))
    fc2 = next(n for n in graph.graph.node if n.op_type == "Gemm" and "fc2_W" in n.input)
    fc2.input[1] = "huge"
    path = tmp_path / "huge.onnx"
    onnx.save(graph, path)
    with pytest.raises(ValueError, match=r"declares 4,398,046,511,104 bytes, more than any VGG"):
        VGG.from_file(path)


def test_tensors_in_external_files_are_refused(tmp_path, original):
    graph = build_graph(original.weights)
    onnx.save(graph, tmp_path / "ext.onnx", save_as_external_data=True, size_threshold=0,
              location="ext.data")  # fmt: skip
    assert (tmp_path / "ext.data").exists()
    with pytest.raises(ValueError, match=r"ext.onnx.*data is in an external file; refused"):
        VGG.from_file(tmp_path / "ext.onnx")


def test_integer_weights_are_refused_naming_the_dtype(tmp_path, original):
    graph = build_graph(original.weights)
    for i, tensor in enumerate(graph.graph.initializer):
        if tensor.name == "fc2_b":
            integers = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.int64))
            integers.name = "fc2_b"
            graph.graph.initializer[i].CopyFrom(integers)
    path = tmp_path / "int.onnx"
    onnx.save(graph, path)
    with pytest.raises(ValueError, match=r"int.onnx.*floating point, got dtype int64"):
        VGG.from_file(path)


def pools_only(dense):
    """Five max-pools on an input of dynamic channels (N, C, 32, 32), then Gemms."""
    nodes, inits, current = [], [], "input"
    for b in range(1, 6):
        nodes.append(helper.make_node(
            "MaxPool", [current], [f"pool{b}"], kernel_shape=[2, 2], strides=[2, 2]
        ))  # fmt: skip
        current = f"pool{b}"
    nodes.append(helper.make_node("Flatten", [current], ["flat"]))
    current = "flat"
    for i, (units, features) in enumerate(dense):
        inits.append(numpy_helper.from_array(np.ones((units, features), np.float32), f"W{i}"))
        nodes.append(helper.make_node("Gemm", [current, f"W{i}"], [f"dense{i}"], transB=1))
        current = f"dense{i}"
    nodes.append(helper.make_node("Identity", [current], ["output"]))
    shape, out = ["N", "C", 32, 32], ["N", dense[-1][0]]
    graph = helper.make_graph(
        nodes, "pools", [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, out)], inits,
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_fc1_without_a_channel_count_is_refused_by_name(tmp_path):
    # No convolution, dynamic input channels: nothing says how many channels fc1's rows
    # hold, so they cannot be put in H, W, C order (found by the type checker: this was a
    # TypeError from inside the reader).
    path = save(pools_only([(4, 3), (2, 4)]), tmp_path)
    with pytest.raises(ValueError, match="fc1's rows cannot be put in H, W, C order"):
        with formats.open_weights(path):
            pass
    # One dense layer is "predictions": no rows to reorder, it loads as before.
    path = save(pools_only([(2, 3)]), tmp_path, "one.onnx")
    with formats.open_weights(path) as source:
        assert source.tensors["predictions"][0].shape == (3, 2)
