"""The head and batch-norm kernels, composed by hand, reproduce real Keras and PyTorch models.

The fixtures in tests/data/heads were written by Keras 3 and PyTorch
(tests/reference/make_heads_reference.py): a Keras VGG16 base under a head of its own
(Flatten or GlobalAveragePooling2D, Dense, BatchNormalization, Dropout, softmax), a
torchvision-layout vgg16_bn, the same with its classifier replaced, and a timm-layout
VGG. Here the weights are read (Keras files with h5py; state dicts with torch.load, so
those tests are marked `torch`) and run through `vgg_np.ops`, layer by layer, with each
framework's own epsilon.
"""

from __future__ import annotations

import io
import json
import pathlib
import zipfile

import h5py
import numpy as np
import pytest

from tests.conftest import HEADS_DIR as HEADS
from tests.conftest import HEADS_FIXTURE_REL_TOL, relative_error
from tests.reference.make_keras_reference import take_slice
from vgg_np import ops

BLOCKS = ((4, 4), (8, 8), (8, 8, 8), (8, 8, 8), (8, 8, 8))  # make_heads_reference.MICRO


@pytest.fixture(scope="module")
def outputs():
    with np.load(HEADS / "outputs.npz") as f:
        return dict(f)


def check(outputs, model: str, layer: str, value, compared: list) -> None:
    """Compare with the framework's output (or its stored slice); remember the error."""
    key = f"{model}/{layer}"
    expected = outputs[key] if key in outputs else outputs[f"{key}/slice"]
    actual = value if key in outputs else take_slice(value)
    compared.append((layer, relative_error(actual, expected)))
    assert compared[-1][1] < HEADS_FIXTURE_REL_TOL, (model, compared[-1])


def state_dict(name: str, dtype=np.float32) -> dict[str, np.ndarray]:
    """The floating-point tensors of a .pth fixture (batch norm's int64 counters left out)."""
    torch = pytest.importorskip("torch", reason="needs torch (pip install torch==2.13.0)")
    state = torch.load(HEADS / f"{name}.pth", map_location="cpu", weights_only=True)
    return {k: v.numpy().astype(dtype) for k, v in state.items() if v.is_floating_point()}


def keras_archive(path: pathlib.Path) -> tuple[dict, dict]:
    """(config, {layer name: [arrays]}) of a .keras zip, by the `name` attribute of each layer."""
    with zipfile.ZipFile(path) as archive:
        config = json.loads(archive.read("config.json"))
        weights = {}
        with h5py.File(io.BytesIO(archive.read("model.weights.h5"))) as h5:

            def visit(name, group):
                if name.endswith("vars") and len(group):
                    weights[group.attrs["name"]] = [group[str(i)][()] for i in range(len(group))]

            h5.visititems(visit)
    return config, weights


def keras_head_epsilon(config: dict) -> float:
    (bn,) = [la for la in config["config"]["layers"] if la["class_name"] == "BatchNormalization"]
    return bn["config"]["epsilon"]


@pytest.mark.parametrize(
    ("stem", "pool"), [("keras_flatten_head", "flatten"), ("keras_gap_head", "gap")]
)
def test_keras_transfer_learning_models(outputs, stem, pool):
    config, weights = keras_archive(HEADS / f"{stem}.keras")
    eps = keras_head_epsilon(config)
    assert eps == ops.BATCH_NORM_EPS["keras"]
    compared = []
    y = outputs["x"]  # (2, 64, 40, 3): non-square, so the final map is 2x1
    for b, widths in enumerate(BLOCKS, start=1):
        for i in range(1, len(widths) + 1):
            y = ops.relu(ops.conv2d(y, *weights[f"block{b}_conv{i}"]))
            check(outputs, stem, f"block{b}_conv{i}", y, compared)
        y = ops.max_pool2d(y)
        check(outputs, stem, f"block{b}_pool", y, compared)
    y = ops.flatten(y) if pool == "flatten" else ops.global_avg_pool2d(y)
    y = ops.relu(ops.dense(y, *weights["dense"]))
    check(outputs, stem, "dense", y, compared)
    normalised = ops.batch_norm(y, *weights["batch_normalization"], eps=eps)
    check(outputs, stem, "batch_normalization", normalised, compared)
    probabilities = ops.softmax(ops.dense(normalised, *weights["dense_1"]))
    check(outputs, stem, "dense_1", probabilities, compared)
    print(f"\n{stem}: {len(compared)} layers, max error {max(e for _, e in compared):.1e}")
    # The fixture tells the epsilons apart: torch's would be far off.
    wrong = ops.batch_norm(y, *weights["batch_normalization"], eps=ops.BATCH_NORM_EPS["torch"])
    assert (
        relative_error(wrong, outputs[f"{stem}/batch_normalization"]) > 100 * HEADS_FIXTURE_REL_TOL
    )


def torch_features(state, x, batch_norm: bool, eps: float, outputs, model, compared):
    """torchvision's ``features`` (Conv2d, [BatchNorm2d,] ReLU, MaxPool2d) by index."""
    index, y = 0, x
    for widths in BLOCKS:
        for _ in widths:
            kernel = state[f"features.{index}.weight"].transpose(2, 3, 1, 0)  # OIHW -> HWIO
            y = ops.conv2d(y, kernel, state[f"features.{index}.bias"])
            if batch_norm:
                index += 1
                stats = (
                    state[f"features.{index}.{k}"]
                    for k in ("weight", "bias", "running_mean", "running_var")
                )
                y = ops.batch_norm(y, *stats, eps=eps)
            y = ops.relu(y)
            index += 1
            if outputs is not None:
                check(outputs, model, f"features.{index}", y, compared)
            index += 1
        y = ops.max_pool2d(y)
        if outputs is not None:
            check(outputs, model, f"features.{index}", y, compared)
        index += 1
    return y


def torchvision_classifier(state, y):
    """AdaptiveAvgPool2d((7, 7)), flatten in (C, H, W) order, then Linear/ReLU by index."""
    y = ops.adaptive_avg_pool2d(y, 7).transpose(0, 3, 1, 2).reshape(len(y), -1)  # (N, C*7*7)
    linear = sorted({int(k.split(".")[1]) for k in state if k.startswith("classifier.")})
    for i in linear:
        y = ops.dense(y, state[f"classifier.{i}.weight"].T, state[f"classifier.{i}.bias"])
        y = ops.relu(y) if i != linear[-1] else y
    return y, f"classifier.{linear[-1]}"


@pytest.mark.torch
@pytest.mark.parametrize("model", ["vgg16_bn", "vgg16_bn_custom_classifier"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torchvision_vgg16_bn_state_dicts(outputs, model, dtype):
    state = state_dict(model, dtype)
    compared = []
    shared = "vgg16_bn_custom_classifier"  # its features are vgg16_bn's, stored once
    x = outputs["x"].astype(dtype)
    y = torch_features(
        state,
        x,
        True,
        ops.BATCH_NORM_EPS["torch"],
        outputs,
        "vgg16_bn" if model == shared else model,
        compared,
    )
    logits, last = torchvision_classifier(state, y)
    check(outputs, model, last, logits, compared)
    if dtype is np.float64:  # against torch in float64 too: no float32 rounding on either side
        assert relative_error(logits, outputs[f"{model}/float64_output"]) < 1e-10
    worst = max(e for _, e in compared)
    print(f"\n{model} {dtype.__name__}: {len(compared)} layers, max error {worst:.1e}")


@pytest.mark.torch
def test_timm_vgg_state_dict(outputs):
    state = state_dict("timm_vgg16")
    compared = []
    y = torch_features(state, outputs["x"], False, 0.0, outputs, "timm_vgg16", compared)
    # pre_logits (timm's ConvMlp): a map smaller than 7x7 is average-pooled up to it first.
    y = ops.adaptive_avg_pool2d(y, (max(7, y.shape[1]), max(7, y.shape[2])))
    for fc in ("fc1", "fc2"):
        kernel = state[f"pre_logits.{fc}.weight"].transpose(2, 3, 1, 0)
        y = ops.relu(ops.conv2d(y, kernel, state[f"pre_logits.{fc}.bias"], padding="valid"))
    check(outputs, "timm_vgg16", "pre_logits.act2", y, compared)
    y = ops.global_avg_pool2d(y)
    logits = ops.dense(y, state["head.fc.weight"].T, state["head.fc.bias"])
    check(outputs, "timm_vgg16", "head.fc", logits, compared)
    assert relative_error(logits, outputs["timm_vgg16/float64_output"]) < HEADS_FIXTURE_REL_TOL
