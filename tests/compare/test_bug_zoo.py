"""A bug zoo: a small NumPy VGG written here, each usual bug injected one at a time.

The implementation below is written without vgg_np's kernels (NHWC, 3x3 "same"
convolutions as nine shifted matrix products, its own pooling, flatten and softmax), from
raw pictures to probabilities, as a verifier's own implementation would be. Each bug is
injected alone and run through the documented workflow, the command line (``vgg-np
compare WEIGHTS DUMP.npz --images ... --oracle``) and the Python API
(``compare_activations(..., images=...)``); each must be detected at the right layer with
the right cause named, and the clean implementation must pass.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from vgg_np import VGG, VGGConfig
from vgg_np.compare import DEFAULT_TOLERANCE, compare_activations

# Four blocks on 32x32 leave a 2x2 map, so that the flatten order matters.
ZOO = VGGConfig("zoo", ((4, 4), (6, 6), (8, 8, 8), (8, 8, 8)), fc=(16, 16), default_size=32)
CLASSES = 5
BGR_MEAN = np.array([103.939, 116.779, 123.68])


# -- the implementation under test ---------------------------------------------------------


def preprocess(pixels, bug):
    """Caffe preprocessing of RGB uint8 pictures, the zoo's own way."""
    x = pixels.astype(np.float64)
    if bug == "off_by_one_crop":  # the crop starts one row too low: the picture moves up
        x = np.concatenate([x[:, 1:], x[:, -1:]], axis=1)
    if bug != "rgb_bgr":
        x = x[..., ::-1]  # RGB -> BGR
    mean = BGR_MEAN[::-1] if bug == "wrong_mean" else BGR_MEAN  # R, G, B order by mistake
    return (x - mean).astype(np.float32)


def conv3x3(x, kernel, bias, bug):
    """3x3 cross-correlation, stride 1, as nine shifted products: (N, H, W, C) -> (N, H, W, O)."""
    if bug == "transposed_kernel":
        kernel = kernel.transpose(1, 0, 2, 3)  # KH and KW swapped
    if bug == "flipped_kernel":
        kernel = kernel[::-1, ::-1]  # a true convolution
    if bug == "float16":
        x, kernel, bias = (a.astype(np.float16) for a in (x, kernel, bias))
    pad = 0 if bug == "valid_padding" else 1
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    h, w = padded.shape[1] - 2, padded.shape[2] - 2
    y = sum(padded[:, i : i + h, j : j + w] @ kernel[i, j] for i in range(3) for j in range(3))
    y = y + bias + (bias if bug == "bias_twice" else 0)
    y = y if bug == "missing_relu" else np.maximum(y, 0)
    return y.astype(np.float32)


def pool2x2(x, bug):
    """2x2 pooling, stride 2: (N, H, W, C) -> (N, H/2, W/2, C)."""
    n, h, w, c = x.shape
    windows = x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c)
    return windows.mean(axis=(2, 4)) if bug == "average_pooling" else windows.max(axis=(2, 4))


def dense(x, kernel, bias, bug, relu=True):
    """x @ kernel + bias: (N, in) @ (in, out) -> (N, out)."""
    y = x @ kernel + bias + (bias if bug == "bias_twice" else 0)
    return np.maximum(y, 0) if relu and bug != "missing_relu" else y


def softmax(z, axis):
    e = np.exp(z - z.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def zoo_forward(weights, pixels, bug=None, at=None):
    """Run the zoo's VGG from RGB pixels; `bug` is injected at layer `at` only.

    Returns the dump a verifier saves: the input tensor and each layer's output, by Keras
    name (a layer's output is what the next layer receives). A network whose shapes no
    longer fit stops there: the dump holds what ran.
    """
    x = preprocess(pixels, bug if at == "input" else None)
    dump = {"input": x}
    for b, widths in enumerate(ZOO.blocks, start=1):
        for i in range(1, len(widths) + 1):
            name = f"block{b}_conv{i}"
            x = dump[name] = conv3x3(x, *weights[name], bug if at == name else None)
        x = dump[f"block{b}_pool"] = pool2x2(x, bug if at == f"block{b}_pool" else None)
    n, h, w, c = x.shape
    kernel, bias = weights["fc1"]
    if bug == "flatten_order":  # fc1's rows taken in C, H, W order, the flatten in H, W, C
        kernel = kernel.reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
    x = dump["flatten"] = x.reshape(n, h * w * c)  # (N, H*W*C)
    if x.shape[1] != kernel.shape[0]:
        return dump  # the classifier cannot run on this map: the implementation crashed
    x = dump["fc1"] = dense(x, kernel, bias, bug if at == "fc1" else None)
    if bug == "dropout_on":  # inverted dropout at rate 0.5, left on at inference
        mask = np.random.default_rng(5).random(x.shape) >= 0.5
        x = dump["fc1"] = np.where(mask, x * 2.0, 0.0)
    x = dump["fc2"] = dense(x, *weights["fc2"], bug if at == "fc2" else None)
    logits = dense(x, *weights["predictions"], None, relu=False)
    axis = 0 if bug == "softmax_axis" else -1
    dump["predictions"] = softmax(logits, axis)  # probabilities, as Keras's default model
    return {k: np.asarray(v, np.float32) for k, v in dump.items()}


# bug -> (the layer it is injected at and expected at, the cause vgg_np must name)
ZOO_BUGS = {
    "valid_padding": ("block2_conv1", "valid_padding"),
    "transposed_kernel": ("block3_conv2", "transposed_kernel"),
    "flipped_kernel": ("block4_conv2", "flipped_kernel"),
    "missing_relu": ("block2_conv2", "missing_relu"),
    "average_pooling": ("block3_pool", "average_pooling"),
    "flatten_order": ("fc1", "flatten_chw_rows"),
    "bias_twice": ("fc2", "bias_twice"),
    "float16": ("block3_conv1", "float16"),
    "rgb_bgr": ("input", "swapped_channels"),
    "wrong_mean": ("input", "mean_reversed"),
    "off_by_one_crop": ("input", "shifted_up"),
    "softmax_axis": ("predictions", "softmax_axis"),
    "dropout_on": ("fc1", "dropout_on"),
}


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """The weights file, the raw pictures and the weights as the zoo reads them."""
    from PIL import Image

    where = tmp_path_factory.mktemp("zoo")
    model = VGG(ZOO, classes=CLASSES, classifier_activation=None, seed=11)
    weights_file = where / "zoo.npz"
    model.save_weights(weights_file)
    rng = np.random.default_rng(2)
    # Smooth pictures (a gradient plus noise), so that a one-pixel shift is a small change.
    ramp = (
        np.linspace(0, 200, 32)[None, :, None, None] + np.linspace(0, 50, 32)[None, None, :, None]
    )
    pixels = np.clip(ramp + rng.integers(0, 56, (2, 32, 32, 3)), 0, 255).astype(np.uint8)
    paths = []
    for i, picture in enumerate(pixels):
        paths.append(where / f"picture{i}.png")
        Image.fromarray(picture).save(paths[-1])
    weights = {k: tuple(np.asarray(t, np.float32) for t in v) for k, v in model.weights.items()}
    return {"file": weights_file, "paths": paths, "pixels": pixels, "weights": weights}


def python_compare(zoo, dump):
    model = VGG.from_file(zoo["file"], dtype="float64", classifier_activation=None)
    x = dump.pop("input")
    return compare_activations(model, x, dump, images=zoo["paths"], preprocess="caffe")


def cli_compare(zoo, dump, tmp_path):
    path = tmp_path / "dump.npz"
    np.savez(path, **dump)
    # The pictures' folder: sorted by name, the batch order.
    images = [str(zoo["paths"][0].parent)]
    command = [sys.executable, "-m", "vgg_np", "compare", str(zoo["file"]), str(path), "--oracle"]
    run = subprocess.run(
        [*command, "--images", *images, "--preprocess", "caffe", "--json"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert "Traceback" not in run.stderr, run.stderr
    return run.returncode, json.loads(run.stdout)


# -- the clean implementation passes -------------------------------------------------------


def test_the_clean_implementation_passes_with_its_margin(zoo, tmp_path):
    dump = zoo_forward(zoo["weights"], zoo["pixels"])
    result = python_compare(zoo, dict(dump))
    assert result.passed, str(result)
    assert result.rows[0].name == "input" and result.compared == 19 and not result.causes
    worst = max(max(r.max_rel, r.alone or 0.0) for r in result.rows)
    print(f"\nclean zoo: largest error {worst:.1e}, margin {worst / DEFAULT_TOLERANCE:.2f} "
          "of the tolerance")  # fmt: skip
    assert worst < DEFAULT_TOLERANCE / 10
    code, report = cli_compare(zoo, dump, tmp_path)
    assert code == 0 and report["passed"] and report["causes"] == []
    assert "compared after softmax" in " ".join(report["notes"])


# -- every bug, found at its layer with its cause -------------------------------------------


@pytest.mark.parametrize("bug", sorted(ZOO_BUGS))
def test_each_bug_is_found_at_its_layer_with_its_cause(zoo, bug, tmp_path):
    layer, cause = ZOO_BUGS[bug]
    at = None if bug in ("flatten_order", "softmax_axis", "dropout_on") else layer
    dump = zoo_forward(zoo["weights"], zoo["pixels"], bug, at)

    result = python_compare(zoo, dict(dump))
    assert not result.passed
    assert result.first_divergence == layer, str(result)
    assert layer in result.wrong_alone or layer == "input"
    named = [(c.layer, c.key) for c in result.causes]
    assert named and named[0] == (layer, cause), str(result)
    assert f"likely cause: {layer} matches" in str(result)

    code, report = cli_compare(zoo, dump, tmp_path)
    assert code == 1 and report["first_divergence"] == layer
    assert (report["causes"][0]["layer"], report["causes"][0]["key"]) == (layer, cause)


def test_a_preprocessing_bug_does_not_blame_the_layers(zoo):
    """Fed the user's own (wrong) input, every layer agrees: the input alone is wrong."""
    dump = zoo_forward(zoo["weights"], zoo["pixels"], "rgb_bgr", "input")
    result = python_compare(zoo, dump)
    assert result.first_divergence == "input" and result.wrong_alone == ()
    assert "channels look swapped" in str(result)


def test_two_bugs_are_both_found_in_isolation(zoo):
    weights = dict(zoo["weights"])
    dump = zoo_forward(weights, zoo["pixels"], "flipped_kernel", "block2_conv1")
    fc2 = zoo_forward(weights, zoo["pixels"], "bias_twice", "fc2")
    # The fc2 bug on top of the block2 one: fc2 recomputed from the dump's own fc1.
    kernel, bias = weights["fc2"]
    dump["fc2"] = np.maximum(dump["fc1"] @ kernel + 2 * bias, 0).astype(np.float32)
    assert not np.allclose(dump["fc2"], fc2["fc2"])  # not the clean fc1's
    result = python_compare(zoo, dump)
    assert result.first_divergence == "block2_conv1"
    assert result.wrong_alone[:1] == ("block2_conv1",) and "fc2" in result.wrong_alone
    assert [(c.layer, c.key) for c in result.causes][:1] == [("block2_conv1", "flipped_kernel")]
    assert ("fc2", "bias_twice") in [(c.layer, c.key) for c in result.causes]


# -- what the diagnosis must not do, and hostile pictures ---------------------------------


def test_a_bug_outside_the_table_is_located_but_not_named(zoo):
    weights = dict(zoo["weights"])
    kernel, bias = weights["block3_conv2"]
    weights["block3_conv2"] = (kernel * 1.5, bias)  # no usual bug: a wrong scale
    result = python_compare(zoo, zoo_forward(weights, zoo["pixels"]))
    assert result.first_divergence == "block3_conv2"
    assert result.wrong_alone == ("block3_conv2",) and result.causes == ()
    assert "likely cause" not in str(result)


def test_a_picture_count_that_differs_from_the_batch_is_a_failing_row(zoo):
    dump = zoo_forward(zoo["weights"], zoo["pixels"])
    model = VGG.from_file(zoo["file"], dtype="float64", classifier_activation=None)
    x = dump.pop("input")
    result = compare_activations(model, x, dump, images=zoo["paths"][:1], preprocess="caffe")
    assert result.first_divergence == "input" and not result.passed
    assert result.rows[0].problem == "shape 2x32x32x3 where vgg_np has 1x32x32x3"
    assert result.compared == 19  # the table completes


def test_a_damaged_picture_is_one_line_naming_it(zoo, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(zoo["paths"][0].read_bytes()[:60])  # a truncated PNG
    dump = zoo_forward(zoo["weights"], zoo["pixels"])
    np.savez(tmp_path / "dump.npz", **dump)
    run = subprocess.run(
        [sys.executable, "-m", "vgg_np", "compare", str(zoo["file"]), str(tmp_path / "dump.npz"),
         "--images", str(broken), str(zoo["paths"][1]), "--preprocess", "caffe"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 1 and "broken.png" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and "Traceback" not in run.stderr
    with pytest.raises(ValueError, match=r"broken\.png"):
        python_compare(zoo | {"paths": [broken, zoo["paths"][1]]}, dict(dump))


def test_pictures_without_a_known_preprocessing_are_refused(zoo):
    model = VGG.from_file(zoo["file"], classifier_activation=None)  # an .npz: no provenance
    dump = zoo_forward(zoo["weights"], zoo["pixels"])
    with pytest.raises(ValueError, match="which preprocessing they expect is unknown"):
        compare_activations(model, dump.pop("input"), dump, images=zoo["paths"])


# -- the table itself ------------------------------------------------------------------------


def test_every_usual_bug_is_told_apart_from_the_others():
    """Each entry's own recomputation, taken as the output, is named as that entry."""
    from vgg_np.diagnose import USUAL_BUGS, Situation, diagnose
    from vgg_np.layers import KINDS, Layer

    rng = np.random.default_rng(4)
    layers = {
        "conv": (Layer("c", "conv", 5, "relu"), (rng.standard_normal((3, 3, 3, 5)),
                                                 rng.standard_normal(5)), (2, 6, 7, 3)),
        "pool": (Layer("p", "pool"), None, (2, 6, 8, 3)),
        "dense": (Layer("d", "dense", 6, None), (rng.standard_normal((12, 6)),
                                                 rng.standard_normal(6)), (3, 12)),
        "flatten": (Layer("f", "flatten"), None, (2, 2, 3, 2)),
    }  # fmt: skip
    assert {kind for bug in USUAL_BUGS for kind in bug.kinds} <= set(KINDS)
    assert len({bug.key for bug in USUAL_BUGS}) == len(USUAL_BUGS)
    checked = []
    for bug in USUAL_BUGS:
        for kind in bug.kinds:
            layer, params, shape = layers[kind]
            x = rng.standard_normal(shape)
            options = {"flat_hwc": (2, 3, 2), "last": True}
            if bug.key == "float16":
                x = x.astype(np.float16).astype(np.float64)
            # The layer computed that wrong way is the "other implementation's" output.
            situation = Situation(layer, params, x, np.zeros(1), **options)
            theirs = bug.recompute(situation) if bug.key != "dropout_on" else None
            if theirs is None or (bug.key == "float16" and kind != "conv"):
                continue
            cause = diagnose(layer, params, x, theirs, tolerance=1e-9, **options)
            assert cause is not None and cause.key == bug.key, (bug.key, kind, cause)
            checked.append(bug.key)
    assert len(set(checked)) == len(USUAL_BUGS) - 1  # dropout_on: tested on its own below


def test_dropout_is_named_and_a_correct_layer_is_not_called_dropout():
    from vgg_np import ops
    from vgg_np.diagnose import diagnose
    from vgg_np.layers import Layer

    rng = np.random.default_rng(6)
    layer, params = Layer("fc1", "dense", 8, "relu"), (rng.standard_normal((10, 8)), np.ones(8))
    x = rng.standard_normal((4, 10))
    right = ops.relu(ops.dense(x, *params))
    dropped = np.where(rng.random(right.shape) < 0.5, 0.0, right * 2.0)
    assert diagnose(layer, params, x, dropped, tolerance=1e-9).key == "dropout_on"
    assert diagnose(layer, params, x, right * 1.3, tolerance=1e-9) is None
