"""Whole models with batch norm and heads of their own, through `VGG.from_file`, against
the frameworks that wrote them (committed fixtures in tests/data/heads, written by
tests/reference/make_heads_reference.py with Keras 3, PyTorch, tf2onnx and torch.onnx).

Every layer the framework recorded is compared, in float32 and float64, with the
reference forward pass (``conv_algorithm="reference"``) and the engine (folded batch
norms); the tables print with ``-s``.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import HEADS_DIR as HEADS
from tests.conftest import HEADS_FIXTURE_REL_TOL, relative_error
from tests.reference.make_keras_reference import take_slice
from vgg_np import VGG

#: vgg_np in float64 against PyTorch in float64 (the fixtures' ``float64_output``):
#: measured 1.4e-12 (h-bn's notes) to 3e-15; rounding, with a wide margin.
FLOAT64_REL_TOL = 1e-10


@pytest.fixture(scope="module")
def outputs():
    with np.load(HEADS / "outputs.npz") as f:
        return dict(f)


def expected(outputs: dict, key: str, value: np.ndarray):
    """The framework's output for `key` and ours, as stored (whole, or a fixed slice)."""
    if key in outputs:
        return outputs[key], value.reshape(outputs[key].shape)
    if value.ndim == 2:  # a dense output that the framework held as a 1x1 map (timm)
        value = value[:, None, None, :]  # (N, F) -> (N, 1, 1, F)
    return outputs[f"{key}/slice"], take_slice(value)


def table(title: str, errors: dict) -> str:
    return f"\n{title}: " + " ".join(f"{name}:{e:.1e}" for name, e in errors.items())


def compare(model: VGG, x: np.ndarray, outputs: dict, keys: dict, title: str) -> dict:
    """Compare every mapped layer of the reference forward, and the engine's last output."""
    model.conv_algorithm = "reference"
    got = model.activations(x)
    if model.data_format == "channels_first":
        got = {k: v.transpose(0, 2, 3, 1) if v.ndim == 4 else v for k, v in got.items()}
    errors = {}
    for name, key in keys.items():
        want, ours = expected(outputs, key, got[name])
        errors[name] = relative_error(ours, want)
    model.conv_algorithm, last = "auto", list(keys)[-1]
    errors["engine"] = relative_error(model(x).reshape(got[last].shape), got[last])
    print(table(f"{title} ({len(keys)} layers)", errors))
    assert len(keys) >= 2
    return errors


def torchvision_keys(model: VGG, prefix: str, head: str = "torchvision") -> dict:
    """vgg_np layer name -> the torch module whose output it is (after each ReLU)."""
    keys, index = {}, 0
    for layer in model.layers:
        if layer.kind == "pool":
            keys[layer.name] = f"{prefix}/features.{index}"
            index += 1
        elif layer.kind == "conv" and model.batch_norm:
            index += 1  # the BatchNorm2d's row holds the ReLU's output
        elif layer.kind in ("conv", "batch_norm"):  # conv or BatchNorm2d, then ReLU
            keys[layer.name] = f"{prefix}/features.{index + 1}"
            index += 2
    dense = [layer.name for layer in model.layers if layer.kind == "dense"]
    if head == "timm":
        modules = ["pre_logits.act1", "pre_logits.act2", "head.fc"]
    else:  # Linear, ReLU, Dropout, ..., Linear
        modules = [
            f"classifier.{3 * i + (0 if i == len(dense) - 1 else 1)}" for i in range(len(dense))
        ]
    return keys | {name: f"{prefix}/{m}" for name, m in zip(dense, modules, strict=True)}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "name", ["vgg16_bn.pth", "vgg16_bn.safetensors", "vgg16_bn_custom_classifier.pth"]
)
def test_torchvision_batch_norm_state_dicts(outputs, name, dtype):
    model = VGG.from_file(HEADS / name, dtype=dtype, classifier_activation=None)
    assert model.batch_norm == 1e-5 and model.adaptive_pool == 7
    assert model.weights_provenance.family.value == "torchvision"
    stem = name.split(".")[0]
    x = outputs["x"].astype(dtype)
    # The replaced classifier's fixture records only its classifier (same features).
    keys = {
        name: key
        for name, key in torchvision_keys(model, stem).items()
        if key in outputs or f"{key}/slice" in outputs
    }
    errors = compare(model, x, outputs, keys, f"{name} {dtype}")
    assert max(errors.values()) < HEADS_FIXTURE_REL_TOL, errors
    if dtype == "float64":  # against torch in float64
        error = relative_error(model(x), outputs[f"{stem}/float64_output"])
        print(f"  float64 vs torch float64: {error:.1e}")
        assert error < FLOAT64_REL_TOL


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_timm_vgg_state_dict(outputs, dtype):
    model = VGG.from_file(HEADS / "timm_vgg16.pth", dtype=dtype, classifier_activation=None)
    assert model.weights_provenance.family.value == "timm"
    x = outputs["x"].astype(dtype)
    keys = torchvision_keys(model, "timm_vgg16", head="timm")
    errors = compare(model, x, outputs, keys, f"timm_vgg16.pth {dtype}")
    assert max(errors.values()) < HEADS_FIXTURE_REL_TOL, errors
    if dtype == "float64":
        assert relative_error(model(x), outputs["timm_vgg16/float64_output"]) < FLOAT64_REL_TOL
    # A map larger than 7x7: timm slides its 7x7 convolution there; vgg_np refuses.
    with pytest.raises(ValueError, match="timm's VGG then slides"):
        model(np.zeros((1, 256, 64, 3), dtype))


KERAS_LAYERS = (
    [f"block{b}_conv{i}" for b, n in enumerate((2, 2, 3, 3, 3), 1) for i in range(1, n + 1)]
    + [f"block{b}_pool" for b in range(1, 6)]
    + ["dense", "batch_normalization", "dropout", "dense_1"]
)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize("stem", ["keras_flatten_head", "keras_gap_head"])
def test_keras_transfer_learning_models(outputs, stem, suffix, dtype):
    model = VGG.from_file(HEADS / f"{stem}{suffix}", dtype=dtype)
    pool = "flatten" if "flatten" in stem else "global_average_pooling2d"
    assert [layer.name for layer in model.head] == [pool, *KERAS_LAYERS[-4:]]
    assert model.head[2].eps == 1e-3 and model.head[3].rate == 0.5
    assert model.weights_provenance.family.value == "keras"
    keys = {name: f"{stem}/{name}" for name in [*KERAS_LAYERS[:-4], pool, *KERAS_LAYERS[-4:]]}
    x = outputs["x"].astype(dtype)
    errors = compare(model, x, outputs, keys, f"{stem}{suffix} {dtype}")
    assert max(errors.values()) < HEADS_FIXTURE_REL_TOL, errors


@pytest.mark.onnx
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("exporter", ["tf2onnx", "torch"])
@pytest.mark.parametrize("stem", ["keras_flatten_head", "keras_gap_head"])
def test_onnx_exports_of_the_keras_models(outputs, stem, exporter, dtype):
    pytest.importorskip("onnx", reason="reading ONNX needs the onnx package")
    model = VGG.from_file(HEADS / f"{stem}_{exporter}.onnx", dtype=dtype)
    assert model.data_format == ("channels_last" if exporter == "tf2onnx" else "channels_first")
    kinds = [layer.kind for layer in model.head]
    assert kinds == [kinds[0], "dense", "batch_norm", "dense"]  # dropout: no node
    assert model.head[-1].activation == "softmax"
    x = outputs["x"].astype(dtype)
    if exporter == "torch":
        x = x.transpose(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
    # The head's layers are named as Keras names them, so they compare by name.
    names = [*KERAS_LAYERS[:-4], *(layer.name for layer in model.head)]
    keys = {name: f"{stem}/{name}" for name in names}
    errors = compare(model, x, outputs, keys, f"{stem}_{exporter}.onnx {dtype}")
    errors["onnxruntime"] = relative_error(model(x), outputs[f"{stem}/onnxruntime_{exporter}"])
    assert max(errors.values()) < HEADS_FIXTURE_REL_TOL, errors


def test_unrepresentable_keras_layers_are_named(tmp_path):
    import json
    import zipfile

    source = HEADS / "keras_gap_head.keras"
    with zipfile.ZipFile(source) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    config = json.loads(members["config.json"])
    dense = config["config"]["layers"][-1]
    dense["config"]["activation"] = "gelu"
    members["config.json"] = json.dumps(config).encode()
    bad = tmp_path / "gelu.keras"
    with zipfile.ZipFile(bad, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(ValueError, match=r"layer 'dense_1' has activation 'gelu'"):
        VGG.from_file(bad)
    dense["config"]["activation"] = "softmax"
    dense["class_name"] = "LayerNormalization"
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(bad, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(ValueError, match=r"layer 'dense_1' \(LayerNormalization\) is not one"):
        VGG.from_file(bad)
