"""Tests of vgg_np.compare and `vgg-np compare`: agreement passes, known bugs are located."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import NARROW_CONFIG, TINY_CONFIG, TINY_DIR
from vgg_np import VGG
from vgg_np.compare import compare_activations
from vgg_np.formats.layouts import hwc_rows_to_chw
from vgg_np.formats.torchvision import module_names

# A final 2x2 map, so that flatten order matters.


def small(**kwargs) -> VGG:
    return VGG(NARROW_CONFIG, classes=5, classifier_activation=None, seed=7, **kwargs)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)


def other_implementation(x, break_weights=None) -> dict:
    """Activations of 'another implementation': vgg_np itself, optionally with a bug."""
    model = small()
    if break_weights:
        weights = model.weights
        break_weights(weights)
        model.set_weights(weights)
    return model.activations(x)


def test_keras_activations_agree_in_float32_and_float64():
    with np.load(TINY_DIR / "keras_activations.npz") as ref:
        keras = {k.removeprefix("act/"): ref[k] for k in ref if k.startswith("act/")}
        x = ref["x"]
    from tests.reference.make_keras_reference import TINY, TINY_CLASSES

    for dtype in ("float32", "float64"):
        model = VGG(TINY, weights=TINY_DIR / "model.keras", input_shape=(32, 32, 3),
                    classes=TINY_CLASSES, classifier_activation=None, dtype=dtype)  # fmt: skip
        result = compare_activations(model, x, keras)
        assert result.passed and len(result.rows) == 22 and not result.missing
        assert result.oracle_dtype == dtype
        assert max(r.max_rel for r in result.rows) < 1e-5


def test_wrong_flatten_order_is_located_at_fc1(x):
    def nchw_flatten(weights):  # fc1 rows left in PyTorch's C, H, W order
        kernel, bias = weights["fc1"]
        weights["fc1"] = (hwc_rows_to_chw(kernel, (2, 2, 8)), bias)

    result = compare_activations(small(), x, other_implementation(x, nchw_flatten))
    assert result.first_divergence == "fc1"
    rows = {r.name: r for r in result.rows}
    assert rows["flatten"].passed and not rows["fc1"].passed and rows["fc1"].max_rel > 1e-2
    assert "fc1" in str(result).split("<-- first divergence")[0].splitlines()[-1]


def test_unflipped_kernel_is_located_at_its_layer(x):
    def flip(weights):  # a true convolution where a correlation was meant
        kernel, bias = weights["block2_conv1"]
        weights["block2_conv1"] = (kernel[::-1, ::-1].copy(), bias)

    result = compare_activations(small(), x, other_implementation(x, flip))
    assert result.first_divergence == "block2_conv1"
    assert all(r.passed for r in result.rows[:2])


def test_bgr_rgb_mixup_shows_from_the_first_layer(x):
    other = small().activations(x[..., ::-1])  # the other side fed RGB instead of BGR
    assert compare_activations(small(), x, other).first_divergence == "block1_conv1"


def test_nchw_and_torchvision_names_are_recognised(x):
    ours = other_implementation(x)
    names = module_names(NARROW_CONFIG.conv_names(), 2)
    theirs = {
        names.get(k, k): (v.transpose(0, 3, 1, 2) if v.ndim == 4 else v) for k, v in ours.items()
    }
    theirs["flatten"] = theirs["features.14"].reshape(2, -1)  # NCHW flatten: C, H, W order
    result = compare_activations(small(), x.transpose(0, 3, 1, 2), theirs)
    assert result.passed
    rows = {r.name: r for r in result.rows}
    assert (
        rows["block1_conv1"].source_name == "features.1" and rows["block1_conv1"].layout == "NCHW"
    )
    assert rows["fc1"].source_name == "classifier.1" and rows["fc1"].layout == "-"
    # (2, 8, 8, 8) reads both ways: the telling layers decide, and the table says so.
    assert rows["block3_pool"].layout == "NCHW?"
    assert rows["flatten"].layout == "NCHW"


def test_missing_layers_are_listed_and_nothing_matching_is_an_error(x):
    partial = {k: v for k, v in other_implementation(x).items() if k in ("block1_conv1", "fc1")}
    result = compare_activations(small(), x, partial)
    assert [r.name for r in result.rows] == ["block1_conv1", "fc1"]
    assert "block1_pool" in result.missing and "not in the other" in str(result)
    with pytest.raises(ValueError, match="none of the reference's arrays"):
        compare_activations(small(), x, {"conv_0": np.zeros(3)})


def test_a_misshaped_layer_is_a_failing_row_and_the_table_completes(x):
    dump = other_implementation(x)
    dump["block1_conv1"] = np.zeros((2, 5))
    result = compare_activations(small(), x, dump)
    rows = {r.name: r for r in result.rows}
    assert result.compared == 13 and not result.missing  # every layer still compared
    assert result.first_divergence == "block1_conv1" and rows["block1_conv1"].max_rel == np.inf
    assert rows["block1_conv1"].problem == "shape 5 where vgg_np has 64x64x4"
    # Alone, the next layers are fed vgg_np's own value where the dump's cannot be used.
    assert all(r.passed for r in result.rows[1:]) and result.wrong_alone == ("block1_conv1",)
    assert "shape 5 where vgg_np has 64x64x4" in str(result)
    assert result.to_dict()["layers"][0]["max_rel"] is None


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "vgg_np", *args], capture_output=True, text=True, timeout=300
    )


def test_cli_compare_names_the_first_diverging_layer(tmp_path, x):
    weights = tmp_path / "small.npz"
    small().save_weights(weights)

    def nchw_flatten(w):
        kernel, bias = w["fc1"]
        w["fc1"] = (hwc_rows_to_chw(kernel, (2, 2, 8)), bias)

    good, bad = tmp_path / "good.npz", tmp_path / "bad.npz"
    np.savez(good, input=x, **other_implementation(x))
    np.savez(bad, input=x, **other_implementation(x, nchw_flatten))
    result = run_cli("compare", str(weights), str(good), "--oracle")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compared with vgg_np in float64" in result.stdout
    assert "13/13 layers compared" in result.stdout  # 5 conv, 5 pool, flatten, 2 dense
    assert "all 13 layers agree within tolerance" in result.stdout
    result = run_cli("compare", str(weights), str(bad))
    assert result.returncode == 1
    assert "first diverging layer: fc1" in result.stdout
    assert "FAIL  <-- first divergence" in result.stdout


def test_cli_compare_without_input_is_a_clear_error(tmp_path, x):
    weights = tmp_path / "small.npz"
    small().save_weights(weights)
    acts = tmp_path / "acts.npz"
    np.savez(acts, **other_implementation(x))
    result = run_cli("compare", str(weights), str(acts))
    assert result.returncode == 1
    assert "no input" in result.stderr and "Traceback" not in result.stderr


# -- a comparison cannot pass by accident ------------------------------------------------


def test_a_dump_matching_one_layer_fails_and_says_how_many_were_compared(x):
    one = {"block1_conv1": other_implementation(x)["block1_conv1"]}
    result = compare_activations(small(), x, one)
    assert not result.passed and result.first_divergence is None
    assert (result.compared, result.requested) == (1, 12)  # 13 layers, flatten optional
    assert "1/12 layers compared" in str(result)
    assert str(result).splitlines()[-1] == "FAIL: only 1/12 layers compared"


def test_flatten_is_optional_by_default_and_compared_when_given(x):
    full = other_implementation(x)
    with_flatten = compare_activations(small(), x, full)
    assert with_flatten.passed and with_flatten.compared == with_flatten.requested == 13
    without = compare_activations(small(), x, {k: v for k, v in full.items() if k != "flatten"})
    assert without.passed and without.compared == without.requested == 12


def test_explicit_layers_must_all_be_compared(x):
    full = other_implementation(x)
    asked = ["block1_conv1", "fc1", "flatten"]
    result = compare_activations(small(), x, full, layers=asked)
    assert result.passed and [r.name for r in result.rows] == ["block1_conv1", "flatten", "fc1"]
    del full["flatten"]
    result = compare_activations(small(), x, full, layers=asked)
    assert not result.passed and result.missing == ("flatten",)
    assert result.verdict() == "FAIL: only 2/3 layers compared"
    with pytest.raises(ValueError, match=r"`layers` must name layers of narrow .* got \['fc3'\]"):
        compare_activations(small(), x, full, layers=["fc1", "fc3"])


def test_an_empty_batch_is_a_clear_error(x):
    with pytest.raises(ValueError, match=r"`x` holds no image: shape \(0, 64, 64, 3\)"):
        compare_activations(small(), x[:0], other_implementation(x))


def softmax64(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_probabilities_against_logits_are_recognised(x):
    dump = other_implementation(x)  # small() gives logits
    dump["predictions"] = softmax64(dump["predictions"].astype(np.float64))
    result = compare_activations(small(), x, dump)
    # A model whose declared output is probabilities is not a false alarm.
    assert result.passed and result.rows[-1].problem == "compared as probabilities"
    note = result.notes[0]
    assert note == (
        "predictions: your output holds probabilities, vgg_np's logits: compared after softmax"
    )
    assert f"note: {note}" in str(result)
    dump["predictions"] = softmax64(dump["predictions"][:, ::-1].astype(np.float64))
    assert compare_activations(small(), x, dump).first_divergence == "predictions"


def test_logits_against_probabilities_are_recognised(x):
    dump = other_implementation(x)  # logits
    with_softmax = VGG(NARROW_CONFIG, classes=5, classifier_activation="softmax", seed=7)
    result = compare_activations(with_softmax, x, dump)
    assert result.passed
    assert "your output holds logits, vgg_np's probabilities" in result.notes[0]
    # A real disagreement is not dressed up as a softmax mix-up.
    dump["predictions"] = dump["predictions"] * 1.5
    result = compare_activations(small(), x, dump)
    assert result.first_divergence == "predictions"
    assert not any("softmax" in note for note in result.notes)


def test_cli_compare_fails_on_a_partial_dump_and_reports_json(tmp_path, x):
    weights = tmp_path / "small.npz"
    small().save_weights(weights)
    partial = tmp_path / "partial.npz"
    np.savez(partial, input=x, block1_conv1=other_implementation(x)["block1_conv1"])
    result = run_cli("compare", str(weights), str(partial))
    assert result.returncode == 1
    assert "1/12 layers compared" in result.stdout
    assert "FAIL: only 1/12 layers compared" in result.stdout

    result = run_cli("compare", str(weights), str(partial), "--json", "--layers", "block1_conv1")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] and (report["compared"], report["requested"]) == (1, 1)
    assert report["layers"][0]["name"] == "block1_conv1" and report["layers"][0]["max_rel"] < 1e-5

    probabilities = tmp_path / "probabilities.npz"
    dump = other_implementation(x)
    dump["predictions"] = softmax64(dump["predictions"].astype(np.float64))
    np.savez(probabilities, input=x, **dump)
    result = run_cli("compare", str(weights), str(probabilities), "--json")
    report = json.loads(result.stdout)
    assert result.returncode == 0 and report["passed"], result.stdout
    assert "your output holds probabilities, vgg_np's logits" in report["notes"][0]


# -- the comparison's fields, layouts and layer set ------------------------------------------


def test_verdict_is_a_property_like_passed_and_still_callable(x):
    result = compare_activations(small(), x, other_implementation(x))
    assert result.verdict == "all 13 layers agree within tolerance"
    assert result.verdict() == result.verdict  # the former method's call keeps working
    assert json.loads(json.dumps(result.to_dict()))["verdict"] == result.verdict


def test_the_layout_assumed_is_said(x):
    ours = other_implementation(x)
    nchw = {k: (v.transpose(0, 3, 1, 2) if v.ndim == 4 else v) for k, v in ours.items()}
    del nchw["flatten"]  # an NCHW flatten runs C, H, W: left out here
    result = compare_activations(small(), x, nchw)
    assert result.passed and result.layout == "NCHW"
    assert "your 4-D arrays read as NCHW" in str(result)
    assert compare_activations(small(), x, ours).layout == "NHWC"


def test_an_identity_avgpool_is_not_demanded_of_a_keras_layout_implementation():
    # torchvision-provenance weights give vgg_np an avgpool (the identity at this size);
    # an implementation in Keras's layout has none and is not wrong for it.
    torchlike = VGG(NARROW_CONFIG, classes=5, classifier_activation=None, seed=7, adaptive_pool=2)
    assert "avgpool" in [layer.name for layer in torchlike.layers]
    x = np.random.default_rng(1).standard_normal((2, 64, 64, 3)).astype(np.float32)
    dump = {k: v for k, v in torchlike.activations(x).items() if k != "avgpool"}
    result = compare_activations(torchlike, x, dump)
    assert result.passed and not result.missing, str(result)
    # Where the pool does something (a larger input), leaving it out is a missing layer.
    bigger = np.random.default_rng(1).standard_normal((2, 128, 128, 3)).astype(np.float32)
    dump = {k: v for k, v in torchlike.activations(bigger).items() if k != "avgpool"}
    assert compare_activations(torchlike, bigger, dump).missing == ("avgpool",)


def test_a_dump_with_layers_the_weights_lack_is_refused(x):
    base = VGG(NARROW_CONFIG, include_top=False, seed=7)
    logits = module_names(NARROW_CONFIG.conv_names(), 2)["predictions"]  # torchvision's name
    dump = base.activations(x) | {"fc1": np.zeros((2, 16)), logits: np.zeros((2, 5))}
    with pytest.raises(ValueError, match=rf"layers the weights' network does not have "
                                         rf"\({logits}, fc1\)"):  # fmt: skip
        compare_activations(base, x, dump)


def test_isolated_mode_finds_a_second_bug_the_first_one_hides(x):
    def flip(weights):
        kernel, bias = weights["block2_conv1"]
        weights["block2_conv1"] = (kernel[::-1, ::-1].copy(), bias)

    dump = other_implementation(x, flip)
    model = small()
    kernel, _ = model.weights["predictions"]
    dump["predictions"] = dump["fc1"] @ kernel  # and predictions without its bias
    result = compare_activations(model, x, dump)
    assert result.first_divergence == "block2_conv1"
    assert result.wrong_alone == ("block2_conv1", "predictions")
    causes = {(c.layer, c.key) for c in result.causes}
    assert causes == {("block2_conv1", "flipped_kernel"), ("predictions", "missing_bias")}


def test_cli_compare_images_need_a_dump_and_modes_need_images(tmp_path, x):
    weights = tmp_path / "w.npz"
    small().save_weights(weights)
    result = run_cli("compare", str(weights), "--onnx", "--input", "x.npy", "--images", "a.png")
    assert result.returncode == 2 and "--images needs ACTIVATIONS" in result.stderr
    acts = tmp_path / "acts.npz"
    np.savez(acts, input=x, **other_implementation(x))
    result = run_cli("compare", str(weights), str(acts), "--preprocess", "caffe")
    assert result.returncode == 2 and "give the pictures" in result.stderr
    result = run_cli("compare", str(weights), str(acts), "--images", str(tmp_path / "gone.png"),
                     "--preprocess", "caffe")  # fmt: skip
    # a missing input path is a bad argument (exit 2), checked before the weights load
    assert result.returncode == 2 and "gone.png: no such file" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.onnx
@pytest.mark.onnxruntime
def test_an_onnx_graph_read_only_in_part_is_refused_not_a_silent_subset(tmp_path):
    pytest.importorskip("onnx", reason="needs the optional `onnx` package")
    pytest.importorskip("onnxruntime", reason="needs onnxruntime")
    import onnx

    from tests.formats.test_onnx import build_graph
    from tests.reference.make_keras_reference import TINY, TINY_CLASSES
    from vgg_np.compare import compare_onnx

    original = VGG(TINY, classes=TINY_CLASSES, classifier_activation=None, seed=3)
    graph = build_graph(original.weights, style="torch")
    # A wrong flatten order: H and W swapped before the Reshape.
    reshape = next(i for i, n in enumerate(graph.graph.node) if n.op_type == "Reshape")
    source = graph.graph.node[reshape].input[0]
    graph.graph.node[reshape].input[0] = "swapped"
    graph.graph.node.insert(
        reshape, onnx.helper.make_node("Transpose", [source], ["swapped"], perm=[0, 1, 3, 2])
    )
    path = tmp_path / "wrong_flatten.onnx"
    onnx.save(graph, path)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with pytest.raises(ValueError, match="vgg_np read only part of the network"):
        compare_onnx(path, x)
    np.save(tmp_path / "x.npy", x)
    result = run_cli("compare", str(path), "--onnx", "--input", str(tmp_path / "x.npy"))
    assert result.returncode == 1 and "read only part of the network" in result.stderr
    assert result.stderr.startswith(f"vgg-np: error: {path}: ")
    assert "agree" not in result.stdout and "Traceback" not in result.stderr
    # A graph that ends at the feature map (a VGG without its top) is all read: compared.
    reshape = next(i for i, n in enumerate(graph.graph.node) if n.op_type == "Transpose")
    del graph.graph.node[reshape:]
    graph.graph.output[0].name = source
    onnx.save(graph, path)
    result = compare_onnx(path, x)
    assert result.passed and result.compared == 18, str(result)


@pytest.mark.parametrize("dtype", [np.complex64, np.int32, np.bool_])
def test_compare_activations_refuses_arrays_that_are_not_real_floats(dtype):
    model = VGG(TINY_CONFIG, classes=3, classifier_activation=None, seed=0)
    x = np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype(np.float32)
    dump = model.activations(x)
    dump["block1_conv1"] = (dump["block1_conv1"] + (1j if dtype == np.complex64 else 0)).astype(
        dtype
    )
    with pytest.raises(
        ValueError, match=r"'block1_conv1' holds .* values: activations must be real"
    ):
        compare_activations(model, x, dump)


def test_probabilities_show_an_unlikely_class_off_by_one_logit():
    """|p - q| hides a logit off by 1 on a class of probability 1e-9: log p does not."""
    x = np.random.default_rng(1).standard_normal((2, 64, 64, 3)).astype(np.float32)
    model = small()
    kernel, bias = model.weights["predictions"]
    spread = np.ptp(model.activations(x)["predictions"].astype(np.float64), axis=1).max()
    scale = 25 / spread  # confident: the top class holds all but about 1e-9
    model.set_weights({**model.weights, "predictions": (kernel * scale, bias * scale)})
    dump = model.activations(x)
    logits = dump["predictions"].astype(np.float64)
    assert compare_activations(model, x, {**dump, "predictions": softmax64(logits)}).passed
    logits[:, np.argmin(logits[0])] += 1.0  # an unlikely class's bias off by 1
    result = compare_activations(model, x, {**dump, "predictions": softmax64(logits)})
    assert result.first_divergence == "predictions", str(result)


def test_a_batch_norm_dump_by_torchvision_module_names_passes(x):
    """vgg16_bn's tree is Conv2d, BatchNorm2d, ReLU: its module names pair with the right layers."""
    model = VGG(NARROW_CONFIG, classes=5, classifier_activation=None, seed=7, batch_norm=1e-5)
    ours = model.activations(x)
    names = module_names(NARROW_CONFIG.conv_names(), 2, batch_norm=True)
    assert names["block1_conv1_bn"] == "features.2" and names["block1_pool"] == "features.3"
    dump = {
        names.get(layer, layer): a.transpose(0, 3, 1, 2) if a.ndim == 4 else a
        for layer, a in ours.items()
        if layer != "flatten"  # torchvision has no module of its own for it
    }  # as a torch hook dump: NCHW, by module name
    result = compare_activations(model, x, dump)
    assert result.passed and result.compared == len(ours) - 1, str(result)


def test_a_long_layer_name_keeps_its_own_column():
    from vgg_np.comparison import Comparison, LayerComparison

    row = LayerComparison("block1_conv1_bn", "features.2", (4, 4, 8), "NCHW", 0.0, 0.0, 1e-5)
    line = str(Comparison((row,), "float64", ())).splitlines()[2]
    assert line.startswith("block1_conv1_bn  features.2 "), line


def test_pictures_for_a_model_of_any_size_take_the_size_of_your_input(tmp_path):
    """torchvision's VGG takes any size: its pictures are not blown up to 224 against yours."""
    from PIL import Image

    from vgg_np.preprocess import load_image, preprocess_input

    model = VGG(NARROW_CONFIG, include_top=False, input_shape=(None, None, 3), seed=7)
    pixels = np.random.default_rng(3).integers(0, 256, (48, 48, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    x = preprocess_input(load_image(tmp_path / "a.png", size=48)[None], "caffe")
    result = compare_activations(
        model, x, model.activations(x), images=[tmp_path / "a.png"], preprocess="caffe"
    )
    assert result.rows[0].name == "input" and result.rows[0].shape == (48, 48, 3)
    assert result.passed, str(result)
