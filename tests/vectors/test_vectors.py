"""Conformance vectors (`vgg_np.vectors`, ``vgg-np vectors``): written cases pass vgg_np's
own float32 kernels and onnxruntime within the tolerance each states, and fail broken
implementations."""

from __future__ import annotations

import importlib.util
import itertools
import json
from collections import Counter

import numpy as np
import pytest

from vgg_np import ops
from vgg_np.cli import main
from vgg_np.model import VGG
from vgg_np.vectors import (
    NARROW_VGG16,
    evaluate,
    kernel_cases,
    layer_cases,
    load_case,
    run_vectors,
    write_vectors,
)

HAS_ONNX = importlib.util.find_spec("onnx") is not None
NARROW_LAYERS = 22  # 13 convolutions, 5 pools, flatten, fc1, fc2, predictions


def worst(actual, expected, rtol: float, atol: float) -> float:
    """The largest |error| over what the case allows: <= 1 passes (0 when equal everywhere)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    equal = (actual == expected) | (np.isnan(actual) & np.isnan(expected))  # inf == inf too
    with np.errstate(invalid="ignore", divide="ignore"):
        error = np.where(equal, 0.0, np.abs(actual - expected))
        allowed = atol + rtol * np.abs(np.where(np.isfinite(expected), expected, 0.0))
        ratio = np.where(error == 0, 0.0, error / allowed)  # x / 0 = inf: an exact case missed
    return float(np.max(np.where(np.isnan(ratio), np.inf, ratio)))


@pytest.fixture(scope="module")
def npy_vectors(tmp_path_factory):
    out = tmp_path_factory.mktemp("vectors") / "npy"
    cases = write_vectors(out, config=NARROW_VGG16, encoding="npy")
    return out, cases


def test_every_kernel_and_every_layer_has_cases(npy_vectors):
    out, cases = npy_vectors
    counts = Counter(case.kernel for case in cases)
    print(dict(counts))
    assert counts == {"conv2d": 10, "max_pool2d": 6, "dense": 3, "relu": 2, "softmax": 3,
                      "flatten": 1, "dropout": 3, "layer": NARROW_LAYERS}  # fmt: skip
    index = json.loads((out / "index.json").read_text())
    assert [c["name"] for c in index["cases"]] == [case.name for case in cases]
    for entry in index["cases"]:
        assert entry["rtol"] >= 0 and entry["atol"] >= 0 and "Tolerance:" in entry["description"]
        files = sorted(p.name for p in (out / entry["name"] / "test_data_set_0").iterdir())
        assert files == sorted(f"{e['file']}.npy" for e in entry["inputs"] + entry["outputs"])
    assert not (out / "conv2d_same_3x3" / "model.onnx").exists()


def test_npy_cases_pass_vgg_np_float32_kernels(npy_vectors):
    out, cases = npy_vectors
    ratios = {}
    for case in cases:
        spec, inputs, outputs = load_case(out / case.name)
        actual = evaluate(spec["op"], spec["attributes"], inputs)
        assert actual.dtype == np.float32, case.name
        ratios[case.name] = worst(actual, outputs["y"], spec["rtol"], spec["atol"])
    name = max(ratios, key=ratios.get)
    print(f"{len(ratios)} cases; worst {name}: error {ratios[name]:.3f} of its tolerance")
    failing = {k: v for k, v in ratios.items() if not v <= 1}
    assert not failing, failing


def test_the_docs_examples_are_cases_with_exact_answers():
    cases = {case.name: case for case in kernel_cases()}
    assert cases["conv2d_arange_valid"].outputs["y"][0, 0].tolist() == [[45, 54], [81, 90]]
    assert cases["max_pool2d_arange_2x2"].outputs["y"][0, 0].tolist() == [[5, 7], [13, 15]]
    y = cases["flatten_nchw"].outputs["y"]
    assert y[0, :5].tolist() == [0, 1, 2, 3, 4] and y.shape == (2, 24)
    assert cases["conv2d_same_stride2"].attributes["pads"] == [0, 1, 1, 1]  # TF's 'same'
    assert cases["conv2d_same_stride2"].outputs["y"].shape == (1, 4, 5, 5)


def test_softmax_overflow_case_is_finite_and_defeats_the_textbook_formula():
    case = next(c for c in kernel_cases() if c.name == "softmax_overflow")
    y = case.outputs["y"]
    assert np.isfinite(y).all() and np.allclose(y.sum(axis=1), 1, atol=1e-6)
    with np.errstate(all="ignore"):
        textbook = ops.softmax_naive(case.inputs["x"])
    assert not worst(textbook, y, case.rtol, case.atol) <= 1


def test_dropout_mask_is_the_one_vgg_np_draws():
    for case in (c for c in kernel_cases() if c.kernel == "dropout"):
        seed, rate = case.attributes["seed"], case.attributes["ratio"]
        x, mask = case.inputs["x"], case.inputs["mask"]
        drawn = ops.dropout(x, rate, training=True, rng=np.random.default_rng(seed))
        assert mask.dtype == bool and np.array_equal(drawn != 0, mask & (x != 0))
        if rate > 0:
            assert 0 < mask.mean() < 1, case.name
        expected = np.where(mask, x.astype(np.float64) / (1 - rate), 0)
        assert np.array_equal(case.outputs["y"], expected.astype(np.float32))


def flipped_kernel(spec, inputs):  # true convolution instead of cross-correlation
    return evaluate(spec["op"], spec["attributes"], {**inputs, "w": inputs["w"][..., ::-1, ::-1]})


def zero_padded_pool(spec, inputs):  # pads of zeros instead of -inf
    padded = np.pad(inputs["x"], ((0, 0), (0, 0), (1, 1), (1, 1)))  # (N, C, H+2, W+2)
    return evaluate(spec["op"], {**spec["attributes"], "pads": [0, 0, 0, 0]}, {"x": padded})


def nhwc_flatten(spec, inputs):  # Keras's order where the case flattens NCHW
    x = inputs["x"]
    return x.transpose(0, 2, 3, 1).reshape(x.shape[0], -1)  # (N, H, W, C) -> (N, H*W*C)


def no_bias(spec, inputs):
    return evaluate(spec["op"], spec["attributes"], {**inputs, "b": 0 * inputs["b"]})


def unscaled_dropout(spec, inputs):  # without the 1 / (1 - ratio)
    return inputs["x"] * inputs["mask"]


@pytest.mark.parametrize(
    ("name", "broken"),
    [
        ("conv2d_same_3x3", flipped_kernel),
        ("layer_block1_conv1", flipped_kernel),
        ("max_pool2d_same_negative", zero_padded_pool),
        ("flatten_nchw", nhwc_flatten),
        ("dense_bias", no_bias),
        ("layer_fc2", no_bias),
        ("dropout_quarter", unscaled_dropout),
    ],
)
def test_a_broken_implementation_fails_its_case(npy_vectors, name, broken):
    out, _ = npy_vectors
    spec, inputs, outputs = load_case(out / name)
    assert not worst(broken(spec, inputs), outputs["y"], spec["rtol"], spec["atol"]) <= 1


def test_layer_cases_chain_and_use_the_given_weights(tmp_path):
    weights = tmp_path / "narrow.npz"
    VGG(NARROW_VGG16, classes=10, seed=7).save_weights(weights)
    cases = write_vectors(tmp_path / "out", weights=weights, encoding="npy")
    layers = {c.name: c for c in cases if c.kernel == "layer"}
    assert len(layers) == NARROW_LAYERS
    model = VGG.from_file(weights)
    kernel, bias = model.weights["block2_conv1"]
    assert np.array_equal(layers["layer_block2_conv1"].inputs["w"], kernel.transpose(3, 2, 0, 1))
    assert np.array_equal(layers["layer_block2_conv1"].inputs["b"], bias)
    # Each layer is fed the previous one's expected output.
    names = list(layers)
    for before, after in itertools.pairwise(names):
        assert np.array_equal(layers[after].inputs["x"], layers[before].outputs["y"])
    # Chained, the layer cases are the network: the logits of a float64 forward pass.
    x = layers[names[0]].inputs["x"].transpose(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
    oracle = VGG.from_file(weights, dtype="float64", classifier_activation=None)(x)
    logits = layers["layer_predictions"].outputs["y"]
    assert np.max(np.abs(logits - oracle)) <= 1e-5 * np.max(np.abs(oracle))


def test_bad_arguments_are_refused(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.json").write_text("{}")
    with pytest.raises(ValueError, match="new or empty directory"):
        write_vectors(tmp_path / "full", config=NARROW_VGG16, encoding="npy")
    with pytest.raises(ValueError, match="`encoding` must be one of"):
        write_vectors(tmp_path / "new", config=NARROW_VGG16, encoding="pb")
    with pytest.raises(ValueError, match="`op` must be one of"):
        evaluate("Conv3D", {}, {"x": np.zeros(3)})


def test_cli_writes_the_cases(tmp_path, capsys):
    assert main(["vectors", str(tmp_path / "v"), "--narrow", "--npy"]) == 0
    printed = capsys.readouterr().out
    assert "conv2d 10" in printed and "layer 22" in printed
    assert (tmp_path / "v" / "layer_fc1" / "test_data_set_0" / "input_1.npy").exists()
    assert main(["vectors", str(tmp_path / "v"), "--narrow", "--npy"]) == 1  # not empty


@pytest.fixture(scope="module")
def onnx_vectors(tmp_path_factory):
    if not HAS_ONNX:
        pytest.skip("needs the `onnx` package to write ONNX cases")
    out = tmp_path_factory.mktemp("vectors") / "onnx"
    return out, write_vectors(out, config=NARROW_VGG16, encoding="onnx")


@pytest.mark.onnx
def test_onnx_cases_have_the_backend_test_layout(onnx_vectors):
    import onnx

    out, cases = onnx_vectors
    for case in cases:
        model = onnx.load(out / case.name / "model.onnx")
        onnx.checker.check_model(model, full_check=True)
        data = sorted(p.name for p in (out / case.name / "test_data_set_0").iterdir())
        n_in = len(case.inputs)
        assert data == sorted([*(f"input_{i}.pb" for i in range(n_in)), "output_0.pb"])
        assert [i.name for i in model.graph.input] == list(case.inputs)
        _, inputs, outputs = load_case(out / case.name)
        assert all(np.array_equal(inputs[k], v) for k, v in case.inputs.items())
        assert np.array_equal(outputs["y"], case.outputs["y"])


@pytest.mark.onnxruntime
def test_onnx_cases_pass_onnxruntime(onnx_vectors):
    ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime")
    out, cases = onnx_vectors
    ratios = {}
    for case in cases:
        spec, inputs, outputs = load_case(out / case.name)
        session = ort.InferenceSession(
            str(out / case.name / "model.onnx"), providers=["CPUExecutionProvider"]
        )
        (actual,) = session.run(None, inputs)
        ratios[case.name] = worst(actual, outputs["y"], spec["rtol"], spec["atol"])
    name = max(ratios, key=ratios.get)
    print(f"{len(ratios)} cases; worst {name}: error {ratios[name]:.3f} of its tolerance")
    failing = {k: v for k, v in ratios.items() if not v <= 1}
    assert not failing, failing


# ---------------------------------------------------------------------------------------
# run_vectors: one Python function per kernel, for implementations in any framework
# ---------------------------------------------------------------------------------------


def keep(x, mask, rate):
    """Inverted dropout with the case's mask."""
    return np.where(mask, x / (1 - rate), 0).astype(x.dtype)


#: A clean NHWC implementation: vgg_np's own kernels, as a user would wrap theirs.
NHWC_IMPL = {
    "conv2d": ops.conv2d, "max_pool2d": ops.max_pool2d, "dense": ops.dense, "relu": ops.relu,
    "softmax": ops.softmax, "flatten": ops.flatten, "dropout": keep,
}  # fmt: skip


def nchw(function):
    """`function` of NHWC arrays (and HWIO kernels) as an NCHW implementation with OIHW."""

    def wrapped(x, *args, **kwargs):
        if args and np.ndim(args[0]) == 4:
            args = (args[0].transpose(2, 3, 1, 0), *args[1:])  # (O, C, KH, KW) -> (KH, KW, C, O)
        y = function(x.transpose(0, 2, 3, 1), *args, **kwargs)  # (N, C, H, W) -> (N, H, W, C)
        return y.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)

    return wrapped


def nchw_flatten(x):
    return x.reshape(len(x), -1)  # (N, C, H, W) -> (N, C*H*W)


NCHW_IMPL = {
    **NHWC_IMPL,
    "conv2d": nchw(ops.conv2d),
    "max_pool2d": nchw(ops.max_pool2d),
    "flatten": nchw_flatten,
}


@pytest.fixture(scope="module")
def cases():
    # 64x64 pictures: fc1 takes a 2x2 grid, so the flatten order (and fc1's rows) matter.
    model = VGG(NARROW_VGG16, classes=10, seed=0, input_shape=(64, 64, 3))
    return kernel_cases() + layer_cases(model)


@pytest.mark.parametrize(("impl", "layout"), [(NHWC_IMPL, "NHWC"), (NCHW_IMPL, "NCHW")])
def test_a_clean_implementation_passes_every_case_in_its_layout(cases, impl, layout):
    report = run_vectors(cases, impl, layout=layout)
    print(report)
    assert report.passed and len(report.rows) == len(cases) and not report.skipped
    assert str(report).endswith(f"{len(cases)}/{len(cases)} cases passed\nPASS")
    assert max(row.worst for row in report.rows) < 0.1  # a clean margin, not a near miss


def flipped_conv(x, w, b, **kwargs):
    return ops.conv2d(x, w[::-1, ::-1], b, **kwargs)  # a true convolution


def chw_flatten(x):
    return x.transpose(0, 3, 1, 2).reshape(len(x), -1)  # an NCHW habit in an NHWC code


def average_pool(x, window, strides, padding):
    return ops.adaptive_avg_pool2d(x, (x.shape[1] // 2, x.shape[2] // 2))


@pytest.mark.parametrize(
    ("name", "function", "failing"),
    [
        # a 1x1 kernel and the all-ones one are their own flips: those cases cannot tell
        ("conv2d", flipped_conv, {"conv2d_same_3x3", "layer_block1_conv1", "layer_block5_conv3"}),
        ("flatten", chw_flatten, {"flatten_nchw", "layer_flatten"}),
        ("max_pool2d", average_pool, {"max_pool2d_arange_2x2", "layer_block1_pool"}),
    ],
)
def test_a_broken_numpy_implementation_fails_its_cases_and_only_them(
    cases, name, function, failing
):
    report = run_vectors(cases, {**NHWC_IMPL, name: function})
    print(report)
    failed = {row.name for row in report.failed}
    assert not report.passed and failing <= failed
    assert {row.kernel for row in report.failed} == {name}
    assert str(report).splitlines()[-1].startswith("FAIL: first failing case")


def test_a_raising_or_misshaped_function_is_a_failing_row_and_the_table_completes(cases):
    def raises(*_args, **_kwargs):
        raise RuntimeError("kernel not implemented")

    def drops_a_row(x, w, b):
        return ops.dense(x, w, b)[1:]

    report = run_vectors(cases, {**NHWC_IMPL, "conv2d": raises, "dense": drops_a_row})
    rows = {row.name: row for row in report.rows}
    assert len(rows) == len(cases)  # every case ran
    assert "raised RuntimeError('kernel not implemented')" in rows["conv2d_same_3x3"].error
    assert rows["dense_bias"].error == "shape (2, 5), expected (3, 5)"
    assert rows["max_pool2d_odd_size"].passed and rows["layer_block1_pool"].passed


def test_nan_fails_and_a_layer_function_runs_its_case_alone(cases):
    def nan_relu(x):
        return np.full_like(x, np.nan)

    def block1_conv1(x, w, b, **kwargs):  # the whole layer, its ReLU included
        return ops.relu(ops.conv2d(x, w, b, **kwargs))

    report = run_vectors(cases, {**NHWC_IMPL, "relu": nan_relu, "block1_conv1": block1_conv1})
    rows = {row.name: row for row in report.rows}
    assert not rows["relu_random"].passed and np.isinf(rows["relu_random"].worst)
    assert rows["layer_block1_conv1"].passed and rows["layer_block1_conv1"].kernel == "block1_conv1"
    assert not rows["layer_block1_conv2"].passed  # its ReLU is the NaN one


def test_cases_without_a_function_are_listed_never_passed(cases):
    report = run_vectors(cases, {"dense": ops.dense})
    text = str(report)
    assert report.passed and {row.kernel for row in report.rows} == {"dense"}
    assert "layer_fc1" in report.skipped  # its ReLU has no function: not run
    assert f"not run ({len(report.skipped)}, no function): conv2d_arange_valid" in text
    nothing = run_vectors(cases, {})
    assert not nothing.passed and str(nothing).endswith("FAIL: no case ran")


def test_a_written_directory_runs_as_the_cases_did(npy_vectors):
    out, written = npy_vectors
    report = run_vectors(out, NHWC_IMPL)
    assert report.passed and [row.name for row in report.rows] == [c.name for c in written]


def test_run_vectors_refuses_a_wrong_layout_or_a_directory_without_cases(tmp_path):
    with pytest.raises(ValueError, match="`layout` must be 'NHWC' or 'NCHW'"):
        run_vectors([], NHWC_IMPL, layout="HWC")
    with pytest.raises(ValueError, match=r"holds no index\.json"):
        run_vectors(tmp_path, NHWC_IMPL)


def damage_truncated_array(out):
    path = out / "relu_random" / "test_data_set_0" / "input_0.npy"
    path.write_bytes(path.read_bytes()[:60])


def damage_escaping_name(out):
    index = json.loads((out / "index.json").read_text())
    index["cases"][0]["name"] = "../../elsewhere"
    (out / "index.json").write_text(json.dumps(index))


def damage_missing_case(out):
    for path in sorted((out / "dense_bias").rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (out / "dense_bias").rmdir()


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        (lambda out: (out / "index.json").write_text('{"cases": [{"na'), "JSONDecodeError"),
        (lambda out: (out / "index.json").write_text('{"cases": [{}]}'), "KeyError('name')"),
        (damage_truncated_array, "ValueError"),
        (damage_escaping_name, "'../../elsewhere' is not a directory of"),
        (damage_missing_case, "FileNotFoundError"),
    ],
    ids=["truncated-index", "entry-without-name", "truncated-array", "escaping-name", "gone"],
)
def test_run_vectors_refuses_damaged_cases_in_one_line(tmp_path, damage, said):
    out = tmp_path / "cases"
    write_vectors(out, config=NARROW_VGG16, encoding="npy")
    damage(out)
    with pytest.raises(ValueError, match="a damaged or incomplete set of cases") as raised:
        run_vectors(out, NHWC_IMPL)
    assert said in str(raised.value) and str(out / "index.json") in str(raised.value)


@pytest.mark.parametrize(
    "flatten",
    [lambda x: x.reshape(-1), lambda x: x.reshape(-1, 1), lambda x: x.reshape(1, -1)],
    ids=["no_batch_axis", "a_column", "the_batch_merged"],
)
def test_a_flatten_of_the_wrong_shape_fails_even_with_the_right_values(cases, flatten):
    """A flatten that loses the batch axis holds the right numbers: its shape still fails."""
    report = run_vectors(cases, {**NHWC_IMPL, "flatten": flatten})
    failed = {row.name: row.error for row in report.failed}
    assert "flatten_nchw" in failed and failed["flatten_nchw"].startswith("shape"), str(report)
