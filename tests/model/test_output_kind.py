"""A model of one's own is easy to find, and a loaded model returns what its framework's
model returns (torchvision's and timm's: logits; Keras's: its last layer), in one table."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import HEADS_DIR as HEADS
from tests.conftest import ROOT
from vgg_np import VGG, VGG16, formats, ops
from vgg_np.layers import Layer, output_kind


@pytest.fixture(scope="module")
def reference() -> dict:
    with np.load(HEADS / "outputs.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize("name", ["keras_gap_head.keras", "keras_flatten_head.h5"])
def test_vgg16_on_a_model_of_ones_own_names_from_file(name):
    with pytest.raises(
        ValueError, match=r"not in this model: dense, .*VGG\.from_file\(path\)"
    ) as e:
        VGG16(weights=HEADS / name)
    assert "notop" not in str(e.value)  # it has a classifier: its own
    assert VGG.from_file(HEADS / name).head is not None  # ... and this call loads it


def test_a_notop_file_still_says_include_top(tmp_path):
    VGG16(include_top=False, seed=0, input_shape=(32, 32, 3)).save_weights(tmp_path / "w.npz")
    with pytest.raises(ValueError, match=r"no classifier \(a 'notop' file\?\)"):
        VGG16(weights=tmp_path / "w.npz")


@pytest.mark.parametrize(("name", "key"), [("vgg16_bn.pth", "vgg16_bn"),
                                           ("vgg16_bn.safetensors", "vgg16_bn"),
                                           ("timm_vgg16.pth", "timm_vgg16")])  # fmt: skip
def test_torchvision_and_timm_files_return_logits_as_torch_does(reference, name, key):
    model = VGG.from_file(HEADS / name, dtype=np.float64)
    assert model.classifier_activation is None
    logits = reference[f"{key}/float64_output"]  # torch's own forward, float64
    got = model(reference["x"].astype(np.float64))
    np.testing.assert_allclose(got, logits, rtol=1e-9, atol=1e-9 * np.abs(logits).max())
    chosen = VGG.from_file(HEADS / name, dtype=np.float64, classifier_activation="softmax")
    np.testing.assert_allclose(chosen(reference["x"].astype(np.float64)), ops.softmax(logits))


def test_the_output_kind_travels_with_the_provenance(tmp_path):
    formats.convert(HEADS / "vgg16_bn.pth", tmp_path / "c.npz")
    assert VGG.from_file(tmp_path / "c.npz").classifier_activation is None  # torchvision's
    keras = VGG.from_file(HEADS / "keras_gap_head.keras")
    assert keras.classifier_activation == "softmax"  # its own last layer's


def test_readme_first_python_example_shows_from_file():
    readme = (ROOT / "README.md").read_text()
    first = readme.split("```python\n")[1].split("```")[0]
    assert "VGG.from_file(" in first


def test_one_table_says_what_each_loader_returns():
    page = (ROOT / "docs" / "heads.md").read_text()
    table = page.split("## What a loaded model returns")[1].split("\n## ")[0]
    for loader in ("torchvision", "timm", "Keras", "ONNX", "VGG16(weights=", "vgg-np predict"):
        assert loader in table, loader
    assert "logits" in table and "probabilities" in table


def test_a_linear_activation_layer_is_looked_through():
    """Keras's ``Dense(softmax) -> Activation("linear")`` still outputs probabilities."""
    dense = Layer("out", "dense", 3, "softmax")
    assert output_kind([dense, Layer("lin", "activation")]) == "probabilities"
    assert output_kind([Layer("d", "dense", 3), Layer("lin", "activation")]) == "logits"
