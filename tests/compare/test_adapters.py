"""`vgg_np.weight_diff` and `vgg_np.adapters` without any framework: the weight diff names
each transform, name maps are inferred from module trees, NHWC and NCHW batches are read,
and the old imports work.
The adapters on live torch, Keras and ONNX models are in crosscheck/test_adapters.py."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import NARROW_CONFIG, TINY_CONFIG
from vgg_np import adapters, compare
from vgg_np.adapters import name_map, torch_modules
from vgg_np.adapters import reference as reference_module
from vgg_np.model import VGG
from vgg_np.weight_diff import TRANSFORMS, WEIGHT_RTOL, diff_weights


@pytest.fixture(scope="module")
def reference():
    # 64x64 inputs: fc1 takes a 2x2x8 grid, so its flatten order matters.
    return VGG(NARROW_CONFIG, classes=5, seed=0).weights


def mangled(reference, layer, position, function):
    """`reference` with one tensor of `layer` replaced by `function` of it."""
    tensors = list(reference[layer])
    tensors[position] = function(np.asarray(tensors[position]))
    return {**reference, layer: tuple(tensors)}


def chw_rows(kernel):
    """fc1's rows reordered from H, W, C to C, H, W for a 2x2x8 grid."""
    return kernel.reshape(2, 2, 8, -1).transpose(2, 0, 1, 3).reshape(32, -1)  # (C*H*W, out)


def hwc_rows(kernel):
    """fc1's rows reordered from C, H, W to H, W, C (the reverse move) for a 2x2x8 grid."""
    return kernel.reshape(8, 2, 2, -1).transpose(1, 2, 0, 3).reshape(32, -1)  # (H*W*C, out)


# (layer, tensor position, the mangling, the words the diff must say)
MANGLINGS = [
    ("block2_conv1", 0, lambda k: k.transpose(1, 0, 2, 3), "transposed (KH and KW swapped)"),
    ("block2_conv1", 0, lambda k: k[::-1, ::-1], "flipped (rotated 180 degrees"),
    ("block2_conv1", 0, lambda k: k[::-1], "flipped vertically"),
    ("block2_conv1", 0, lambda k: k[:, ::-1], "flipped horizontally"),
    ("block1_conv1", 0, lambda k: k[:, :, ::-1], "input channels reversed (RGB <-> BGR"),
    ("block4_conv1", 0, lambda k: k.transpose(0, 1, 3, 2), "OIHW read as IOHW"),
    ("fc1", 0, chw_rows, "fc1's rows in the other flatten order"),
    ("fc1", 0, hwc_rows, "fc1's rows in the other flatten order"),
    ("block3_conv1", 0, lambda k: k[..., [1, 0, *range(2, 8)]], "output channels permuted"),
    ("block3_conv1", 0, lambda k: k[:, :, [5, 0, 1, 2, 3, 4]], "input channels permuted"),
    ("block5_conv1", 1, lambda b: b[::-1], "output channels permuted"),
    ("predictions", 0, lambda k: k[::-1], "input rows permuted"),
    ("fc1", 0, lambda k: k * 0.5, "scaled by 0.5"),
    ("predictions", 1, lambda b: b * 255.0, "scaled by 255"),
    ("block2_conv1", 1, np.zeros_like, "zeroed (missing)"),
]


@pytest.mark.parametrize(("layer", "position", "function", "said"), MANGLINGS)
def test_the_diff_names_each_transform(reference, layer, position, function, said):
    yours = mangled(reference, layer, position, function)
    diff = diff_weights(reference, yours)
    print(diff)
    assert not diff.passed
    (row,) = diff.differing  # the one tensor mangled, and no other
    assert (row.layer, row.tensor) == (layer, ("kernel", "bias")[position])
    assert said in row.describe()


def test_square_dense_kernel_transposed_is_named():
    kernel = np.random.default_rng(1).standard_normal((16, 16))
    diff = diff_weights({"fc2": (kernel, np.ones(16))}, {"fc2": (kernel.T, np.ones(16))})
    assert diff.differing[0].explanation == "transposed ((out, in) read as (in, out))"


def test_every_transform_is_exercised():
    said = [words.split(" by ")[0] for *_, words in MANGLINGS] + ["transposed ((out, in)"]
    for transform in TRANSFORMS:
        assert any(words in transform.name for words in said), transform.name


def test_equal_weights_pass_and_say_what_was_compared(reference):
    copy = {
        name: tuple(np.array(a, np.float32) for a in tensors) for name, tensors in reference.items()
    }
    diff = diff_weights(reference, copy)
    assert diff.passed and str(diff) == "weights: 14/14 tensors equal to the reference"


def test_a_rounding_sized_difference_is_equal_and_a_larger_one_is_not(reference):
    nudge = 1 + WEIGHT_RTOL / 4
    assert diff_weights(reference, mangled(reference, "fc1", 0, lambda k: k * nudge)).passed
    noisy = mangled(reference, "fc1", 0, lambda k: k + 1e-3 * np.sign(k) * (k > 0))
    (row,) = diff_weights(reference, noisy).differing
    assert row.explanation is None and "no candidate transform explains it" in row.describe()


def test_missing_extra_and_misshaped_layers_are_named(reference):
    yours = {name: t for name, t in reference.items() if name != "block5_conv1"}
    yours["fc9"] = reference["fc1"]
    yours["predictions"] = (np.zeros((16, 4)), np.zeros(4))
    diff = diff_weights(reference, yours)
    text = str(diff)
    assert diff.missing == ("block5_conv1",) and diff.extra == ("fc9",)
    assert "predictions kernel: shape (16, 4), the reference's (16, 5)" in text
    assert "not in yours: block5_conv1" in text and "not in the reference: fc9" in text


TORCHVISION_LEAVES = [
    ("features.0", "Conv2d"), ("features.1", "ReLU"), ("features.2", "Conv2d"),
    ("features.3", "ReLU"), ("features.4", "MaxPool2d"), ("features.5", "Conv2d"),
    ("features.6", "ReLU"), ("features.7", "MaxPool2d"), ("avgpool", "AdaptiveAvgPool2d"),
    ("classifier.0", "Linear"), ("classifier.1", "ReLU"), ("classifier.2", "Dropout"),
    ("classifier.3", "Linear"), ("classifier.4", "ReLU"), ("classifier.5", "Dropout"),
    ("classifier.6", "Linear"),
]  # fmt: skip


def test_name_map_of_torchvisions_tree():
    taps = name_map(TORCHVISION_LEAVES)
    got = {layer: (tap.name, tap.owner) for layer, tap in taps.items()}
    assert got == {
        "block1_conv1": ("features.1", "features.0"),
        "block1_conv2": ("features.3", "features.2"),
        "block1_pool": ("features.4", ""),
        "block2_conv1": ("features.6", "features.5"),
        "block2_pool": ("features.7", ""),
        "avgpool": ("avgpool", ""),
        "flatten": ("classifier.0", ""),
        "fc1": ("classifier.1", "classifier.0"),  # the ReLU, not the dropout after it
        "fc2": ("classifier.4", "classifier.3"),
        "predictions": ("classifier.6", "classifier.6"),
    }
    assert taps["flatten"].from_input and taps["flatten"].key == "classifier.0:input"


def test_name_map_of_a_plain_sequential_with_batch_norm_and_a_flatten_module():
    leaves = [("0", "Conv2d"), ("1", "BatchNorm2d"), ("2", "ReLU"), ("3", "MaxPool2d"),
              ("4", "Flatten"), ("5", "Linear"), ("6", "Softmax")]  # fmt: skip
    taps = name_map(leaves)
    assert {k: t.name for k, t in taps.items()} == {
        "block1_conv1": "0",  # before its batch norm, as vgg_np's layer
        "block1_conv1_bn": "2",
        "block1_pool": "3",
        "flatten": "4",
        "predictions": "6",
    }
    assert not taps["flatten"].from_input and taps["block1_conv1_bn"].owner == "1"


def test_a_missing_relu_leaves_the_tap_on_the_convolution():
    taps = name_map([("c", "Conv2d"), ("p", "MaxPool2d")])
    assert taps["block1_conv1"].name == "c"  # its output differs from vgg_np's: the row fails


@pytest.mark.parametrize(
    ("shape", "layout", "assumed"),
    [((2, 5, 6, 3), None, "NHWC"), ((2, 3, 5, 6), None, "NCHW"), ((1, 3, 4, 3), "NCHW", "NCHW")],
)
def test_batches_in_either_layout_are_read_and_the_layout_said(shape, layout, assumed):
    x = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    nhwc, said = reference_module._layouts(x, 3, layout)
    assert said == assumed
    expected = x if assumed == "NHWC" else x.transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(nhwc, expected)


@pytest.mark.parametrize(
    ("shape", "layout", "message"),
    [
        ((1, 3, 4, 3), None, "is NHWC and NCHW with 3 channels: pass layout="),
        ((1, 4, 4, 4), None, "neither NHWC nor NCHW"),
        ((3, 32, 32), None, "must be a 4-D batch"),
        ((1, 3, 4, 4), "CHW", "`layout` must be"),
    ],
)
def test_ambiguous_or_wrong_batches_are_refused(shape, layout, message):
    with pytest.raises(ValueError, match=message):
        reference_module._layouts(np.zeros(shape), 3, layout)


def test_the_moved_functions_are_still_importable_from_compare():
    from vgg_np.compare import compare_onnx, compare_torch

    assert compare_torch is adapters.compare_torch and compare_onnx is adapters.compare_onnx
    assert compare.compare_keras is adapters.compare_keras
    with pytest.raises(AttributeError, match="no attribute 'compare_nothing'"):
        compare.compare_nothing  # noqa: B018


def test_nonfinite_weights_differ_and_are_not_explained(reference):
    yours = mangled(reference, "block1_conv1", 0, lambda k: np.where(k > 0, np.nan, k))
    (row,) = diff_weights(reference, yours).differing
    assert row.explanation is None and "max rel nan" in row.describe()


@pytest.mark.parametrize("first", ["fc1", "predictions"])
def test_the_first_dense_kernel_of_an_nchw_network_is_read_in_hwc_order(first):
    rows = np.arange(32.0).reshape(32, 1)  # numbered in C, H, W order, C=8, H=W=2
    tensors = {"block1_conv1": (np.zeros((3, 3, 3, 8)), np.zeros(8)), first: (rows, np.zeros(1))}
    torch_modules._fc1_rows(tensors)
    hwc = tensors[first][0].ravel()
    assert hwc[:10].tolist() == [0, 4, 8, 12, 16, 20, 24, 28, 1, 5]  # (h=0, w=0, c=0..7), ...


def test_the_reference_from_the_artifact_and_imagenet_build_from_the_inferred_network(
    monkeypatch,
):
    """Without weights= (or with "imagenet") the reference is built from the artifact's shapes."""
    own = VGG(TINY_CONFIG, classes=3, classifier_activation=None, seed=1).weights
    model, notes = reference_module._reference(
        None, own, "keras", oracle=True, activation=None, input_shape=(32, 32, 3)
    )
    assert notes[0].startswith("REFERENCE FROM THE ARTIFACT UNDER TEST")
    assert model.dtype == np.float64 and model.layers[-1].activation is None
    assert all(np.array_equal(model.weights[k][0], own[k][0]) for k in own)
    asked = []
    monkeypatch.setattr(
        reference_module.hub, "resolve", lambda *a, **k: asked.append((a, k)) or 1 / 0
    )
    with pytest.raises(ZeroDivisionError):
        reference_module._reference("imagenet", own, "keras", oracle=False, activation=None)
    assert asked == [(("vgg-custom", True), {"batch_norm": False})]
