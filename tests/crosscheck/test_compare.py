"""Live cross-checks of full-size VGG16 against real PyTorch and onnxruntime.

Marked `torch` (needs torch==2.13.0) and `onnxruntime`; skipped with the reason otherwise,
run by .ci/run. The network is a torch.nn VGG16 in torchvision's layout with PyTorch's
default random initialisation; vgg_np reads its state dict (and the ONNX file exported
from it with ``dynamo=False``) and is compared layer by layer.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from vgg_np import VGG
from vgg_np.compare import compare_onnx, compare_torch

torch = pytest.importorskip("torch", reason="needs torch (pip install torch==2.13.0)")
from tests.reference.torch_vgg import TorchVGG  # noqa: E402
from vgg_np.model import CONFIGS  # noqa: E402

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def torch_vgg16():
    torch.manual_seed(0)
    return TorchVGG(CONFIGS["vgg16"].blocks).eval()


@pytest.fixture(scope="module")
def x():
    # Inputs of the size torch-mode preprocessing gives: about N(0, 1).
    return np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)


def report(title, result):
    print(f"\n{title}\n{result}")


@pytest.mark.parametrize("oracle", [False, True])
def test_torch_vgg16_agrees_on_every_layer(torch_vgg16, x, oracle):
    result = compare_torch(torch_vgg16, x, oracle=oracle)
    report(f"PyTorch 2.13 eager vs vgg_np ({'float64' if oracle else 'float32'})", result)
    # 13 conv, 5 pool, avgpool, 3 dense, and flatten: the first classifier Linear's input.
    assert len(result.rows) == result.requested == 23 and result.passed


def test_pth_and_safetensors_state_dicts_load(torch_vgg16, x, tmp_path):
    path = tmp_path / "vgg16.pth"
    torch.save(torch_vgg16.state_dict(), path)
    model = VGG.from_file(path, classifier_activation=None)
    assert model.adaptive_pool == 7
    with torch.inference_mode():
        expected = torch_vgg16(torch.from_numpy(x)).numpy()
    got = model(x.transpose(0, 2, 3, 1))
    assert np.max(np.abs(got - expected)) / np.max(np.abs(expected)) < 1e-5
    # Any input size, as torchvision's adaptive pool allows.
    small = np.random.default_rng(1).standard_normal((1, 3, 96, 128)).astype(np.float32)
    with torch.inference_mode():
        expected = torch_vgg16(torch.from_numpy(small)).numpy()
    got = model(small.transpose(0, 2, 3, 1))
    assert np.max(np.abs(got - expected)) / np.max(np.abs(expected)) < 1e-5


class Payload:
    """Unpickling this would run code: create a file."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.touch, (self.target,))


def test_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path):
    path, target = tmp_path / "evil.pth", tmp_path / "pwned"
    torch.save({"features.0.weight": Payload(target)}, path)
    with pytest.raises(ValueError, match="not a loadable PyTorch state dict"):
        VGG.from_file(path)
    assert not target.exists()


@pytest.mark.onnxruntime
@pytest.mark.parametrize("oracle", [False, True])
def test_onnxruntime_vgg16_agrees_on_every_layer(torch_vgg16, x, tmp_path, oracle):
    pytest.importorskip("onnxruntime", reason="needs onnxruntime")
    pytest.importorskip("onnx", reason="needs onnx")
    path = tmp_path / "vgg16.onnx"
    torch.onnx.export(torch_vgg16, torch.from_numpy(x[:1]), path, dynamo=False,
                      input_names=["input"], dynamic_axes={"input": {0: "batch"}})  # fmt: skip
    result = compare_onnx(path, x, oracle=oracle)
    report(f"onnxruntime vs vgg_np ({'float64' if oracle else 'float32'})", result)
    assert result.passed and len(result.rows) >= 21
