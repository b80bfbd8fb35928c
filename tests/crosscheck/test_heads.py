"""Live cross-checks of batch-norm VGGs and heads of one's own against the real frameworks.

- torchvision's ``vgg11_bn`` ... ``vgg19_bn`` layouts (`reference.torch_vgg.TorchVGG`,
  full convolution widths, a narrow classifier so the files stay small; random init with
  calibrated running statistics), written as ``.pth`` and ``.safetensors``, loaded with
  `VGG.from_file` and compared layer by layer with PyTorch in float32 and float64;
- the whole fixture set rebuilt from scratch by tests/reference/make_heads_reference.py
  (Keras 3 transfer-learning models as ``.keras`` and ``.h5``, their tf2onnx and
  torch.onnx exports run by onnxruntime, torchvision ``vgg16_bn``, a replaced
  classifier, timm's layout), then read back exactly as the committed fixtures are.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.conftest import BN_FAMILY_FLOAT32_REL_TOL, relative_error
from tests.model.test_heads_fixtures import FLOAT64_REL_TOL, compare, torchvision_keys
from vgg_np import CONFIGS, VGG

#: Input of the family check: non-square, a 2x1 last map that the adaptive pool spreads.
SIZE = (64, 48)


@pytest.mark.torch
@pytest.mark.safetensors
@pytest.mark.parametrize("name", ["vgg11", "vgg13", "vgg16", "vgg19"])
def test_torchvision_batch_norm_family_live(tmp_path, name):
    torch = pytest.importorskip("torch", reason="needs torch==2.13.0")
    safetensors_torch = pytest.importorskip("safetensors.torch", reason="needs safetensors")
    from tests.reference.make_heads_reference import randomise, torch_module_outputs
    from tests.reference.torch_vgg import TorchVGG

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *SIZE, 3)).astype(np.float32) * 50  # caffe-like range
    calibration = torch.from_numpy(rng.standard_normal((8, 3, *SIZE)).astype(np.float32) * 50)
    net = TorchVGG(CONFIGS[name].blocks, fc=(32, 32), classes=10, batch_norm=True)
    randomise(net, 1, calibration)
    state = net.state_dict()
    torch.save(state, tmp_path / f"{name}_bn.pth")
    safetensors_torch.save_file(
        {k: v.contiguous() for k, v in state.items()}, tmp_path / f"{name}_bn.safetensors"
    )
    x_nchw = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    outputs = {f"{name}/{k}": v for k, v in torch_module_outputs(net, x_nchw).items()}
    with torch.no_grad():
        exact = net.double()(x_nchw.double()).numpy()
    # Each reader once in each dtype: the float64 one against torch in float64.
    for suffix, dtype in ((".safetensors", "float32"), (".pth", "float64")):
        model = VGG.from_file(
            tmp_path / f"{name}_bn{suffix}", dtype=dtype, classifier_activation=None
        )
        assert model.config.blocks == CONFIGS[name].blocks and model.batch_norm == 1e-5
        keys = torchvision_keys(model, name)
        errors = compare(model, x.astype(dtype), outputs, keys, f"{name}_bn{suffix} {dtype}")
        assert max(errors.values()) < BN_FAMILY_FLOAT32_REL_TOL, errors
        if dtype == "float64":
            error = relative_error(model(x.astype(dtype)), exact)
            print(f"  float64 vs torch float64: {error:.1e}")
            assert error < FLOAT64_REL_TOL


@pytest.mark.keras
@pytest.mark.torch
@pytest.mark.onnx
@pytest.mark.onnxruntime
@pytest.mark.tf2onnx
def test_rebuilt_fixtures_live(tmp_path, monkeypatch):
    for package in ("keras", "torch", "onnxruntime", "tf2onnx", "safetensors"):
        pytest.importorskip(package, reason=f"the live fixtures need {package}")
    os.environ.setdefault("KERAS_BACKEND", "torch")
    from tests.model import test_heads_fixtures as committed
    from tests.reference import make_heads_reference

    make_heads_reference.make("tiny", tmp_path)
    monkeypatch.setattr(committed, "HEADS", tmp_path)
    # Against torch's float32 computed here and now, not the committed outputs.
    monkeypatch.setattr(committed, "HEADS_FIXTURE_REL_TOL", BN_FAMILY_FLOAT32_REL_TOL)
    with np.load(tmp_path / "outputs.npz") as f:
        outputs = dict(f)
    for dtype in ("float32", "float64"):
        for name in ("vgg16_bn.pth", "vgg16_bn.safetensors", "vgg16_bn_custom_classifier.pth"):
            committed.test_torchvision_batch_norm_state_dicts(outputs, name, dtype)
        committed.test_timm_vgg_state_dict(outputs, dtype)
        for stem in ("keras_flatten_head", "keras_gap_head"):
            for suffix in (".keras", ".h5"):
                committed.test_keras_transfer_learning_models(outputs, stem, suffix, dtype)
            for exporter in ("tf2onnx", "torch"):
                committed.test_onnx_exports_of_the_keras_models(outputs, stem, exporter, dtype)
