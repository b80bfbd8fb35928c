"""The adapters on live models: tiny torch modules, Keras models and ONNX graphs.

Each test carries the marker of the package it needs (`torch`, `keras`, `onnxruntime`) and
skips with the reason when it is missing; `.ci/run` installs them. The reference weights
always come from a file written beside the model, never from the model under test alone.
"""

from __future__ import annotations

import os
import re
from importlib import resources

import numpy as np
import pytest

from tests.conftest import ROOT
from vgg_np.adapters import compare_keras, compare_onnx, compare_torch
from vgg_np.config import VGGConfig
from vgg_np.model import VGG

os.environ.setdefault("KERAS_BACKEND", "torch")

# 64x64 pictures: block5_pool is 2x2, so fc1's flatten order matters.
TINY = VGGConfig("tiny", ((4,), (6, 6), (8,), (8,), (8,)), fc=(16,), default_size=64)


def needs(name: str):
    return pytest.importorskip(name, reason=f"needs {name} (pip install '.[crosscheck]')")


@pytest.fixture
def x():
    # Inputs of the size torch-mode preprocessing gives: about N(0, 1).
    return np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)


# ---------------------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------------------


@pytest.fixture
def torch_vgg(tmp_path):
    """A torchvision-layout tiny VGG in eval mode and the .pth of its correct weights."""
    torch = needs("torch")
    from tests.reference.torch_vgg import TorchVGG

    torch.manual_seed(0)
    module = TorchVGG(TINY.blocks, fc=TINY.fc, classes=5, pool_size=2).eval()
    torch.save(module.state_dict(), tmp_path / "tiny.pth")
    return module, tmp_path / "tiny.pth"


@pytest.mark.torch
def test_a_kernel_transposed_while_loading_is_caught_by_the_weight_diff(torch_vgg, x):
    import torch

    module, pth = torch_vgg
    with torch.no_grad():  # a loader that swapped KH and KW of one kernel
        module.features[5].weight.copy_(module.features[5].weight.transpose(2, 3).clone())
    result = compare_torch(module, x, weights=pth)
    print(result)
    assert not result.passed and result.first_divergence == "block2_conv2"
    assert "block2_conv2 kernel: yours = the reference transposed (KH and KW swapped)" in (
        result.notes
    )
    assert "weights: 15/16 tensors equal to the reference" in result.notes
    # Without a reference of its own the module checks itself and passes: said loudly.
    itself = compare_torch(module, x)
    assert itself.passed and itself.notes[0].startswith("REFERENCE FROM THE ARTIFACT UNDER TEST")


@pytest.mark.torch
def test_fc1_in_the_wrong_flatten_order_is_named(torch_vgg, x):
    import torch

    module, pth = torch_vgg
    fc1 = module.classifier[0].weight  # (out, C*H*W): reordered as if from H, W, C rows
    with torch.no_grad():
        fc1.copy_(fc1.reshape(16, 8, 2, 2).permute(0, 2, 3, 1).reshape(16, 32).clone())
    result = compare_torch(module, x, weights=pth)
    assert result.first_divergence == "fc1"
    assert any(
        note.startswith("fc1 kernel: yours = the reference with fc1's rows")
        for note in result.notes
    )


@pytest.mark.torch
def test_a_correct_module_passes_against_its_file_and_every_layer_is_compared(torch_vgg, x):
    module, pth = torch_vgg
    result = compare_torch(module, x, weights=pth, oracle=True)
    assert result.passed and result.compared == result.requested == len(VGG.from_file(pth).layers)
    assert "weights: 16/16 tensors equal to the reference" in result.notes
    assert not any("training mode" in note for note in result.notes)


@pytest.mark.torch
def test_a_float64_module_is_fed_float64_and_left_float64(torch_vgg, x):
    torch = needs("torch")
    module, pth = torch_vgg
    module.double()
    result = compare_torch(module, x, weights=pth, oracle=True)
    # float64 on both sides: agreement far below float32's rounding (~1e-7)
    assert result.passed and max(row.max_rel for row in result.rows) < 1e-12
    assert all(p.dtype == torch.float64 for p in module.parameters())


@pytest.mark.torch
def test_train_mode_is_reported_and_the_module_left_as_it_was(tmp_path, x):
    torch = needs("torch")
    from tests.reference.torch_vgg import TorchVGG

    torch.manual_seed(0)
    module = TorchVGG(TINY.blocks, fc=TINY.fc, classes=5, pool_size=2, batch_norm=True)
    torch.save(module.state_dict(), tmp_path / "bn.pth")
    module.train()  # as left after training: dropout on, batch norms on batch statistics
    flags = {name: m.training for name, m in module.named_modules()}
    state = {k: v.clone() for k, v in module.state_dict().items()}
    rng = torch.random.get_rng_state()
    result = compare_torch(module, x, weights=tmp_path / "bn.pth")
    print(result)
    note = next(n for n in result.notes if n.startswith("dropout/BN in training mode"))
    assert "outputs differ between two identical calls" in note
    assert "6 BatchNorm2d: features.1, features.5, features.8, ..." in note
    assert "1 Dropout: classifier.2" in note
    assert not result.passed
    assert {name: m.training for name, m in module.named_modules()} == flags
    assert all(torch.equal(state[k], v) for k, v in module.state_dict().items())  # BN stats
    assert torch.equal(torch.random.get_rng_state(), rng)
    assert not module.features[0]._forward_hooks


@pytest.mark.torch
def test_the_channels_last_batch_of_image_stream_works(torch_vgg):
    from vgg_np.formats import Preprocessing
    from vgg_np.streams import ImageStream

    module, pth = torch_vgg
    demo = resources.files("vgg_np") / "data" / "demo.png"
    prep = Preprocessing("torch", "torchvision", "the test")
    (_, batch), *_ = ImageStream([demo, demo], prep, size=64)
    assert batch.shape == (2, 64, 64, 3)
    result = compare_torch(module, batch, weights=pth)
    assert result.passed and "input read as NHWC; given to the module as NCHW" in result.notes


@pytest.mark.torch
def test_a_plain_sequential_is_compared_by_its_own_module_names(tmp_path, x):
    torch = needs("torch")
    from torch import nn

    reference = VGG(TINY, classes=5, seed=1, input_shape=(64, 64, 3), classifier_activation=None)
    reference.save_weights(tmp_path / "tiny.npz")
    layers, channels = [], 3
    for widths in TINY.blocks:
        for width in widths:
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU()]
            channels = width
        layers.append(nn.MaxPool2d(2))
    layers += [nn.Flatten(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 5)]
    module = nn.Sequential(*layers).eval()
    convs = [m for m in module if isinstance(m, nn.Conv2d)]
    with torch.no_grad():  # load the reference's weights the right way, NCHW flatten order
        for m, (kernel, bias) in zip(convs, list(reference.weights.values())[:6], strict=True):
            m.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))  # -> OIHW
            m.bias.copy_(torch.from_numpy(bias))
        fc1, predictions = reference.weights["fc1"], reference.weights["predictions"]
        kernel = fc1[0].reshape(2, 2, 8, 16).transpose(2, 0, 1, 3).reshape(32, 16)  # C, H, W rows
        module[-3].weight.copy_(torch.from_numpy(kernel.T.copy()))
        module[-3].bias.copy_(torch.from_numpy(fc1[1]))
        module[-1].weight.copy_(torch.from_numpy(predictions[0].T.copy()))
        module[-1].bias.copy_(torch.from_numpy(predictions[1]))
    result = compare_torch(module, x, weights=tmp_path / "tiny.npz")
    print(result)
    assert result.passed and result.compared == len(reference.layers)
    sources = {row.name: row.source_name for row in result.rows}
    assert sources["block1_conv1"] == "1" and sources["flatten"] == "17"
    # The user's names win: the convolution's own output, before its ReLU, differs.
    pre_relu = compare_torch(module, x, weights=tmp_path / "tiny.npz", names={"block1_conv1": "0"})
    assert pre_relu.first_divergence == "block1_conv1"


@pytest.mark.torch
def test_bad_names_and_ambiguous_batches_are_refused(torch_vgg):
    module, pth = torch_vgg
    with pytest.raises(ValueError, match=r"names modules the module does not have: \['nope'\]"):
        compare_torch(module, np.zeros((1, 3, 64, 64)), weights=pth, names={"fc1": "nope"})
    with pytest.raises(ValueError, match="pass layout="):
        compare_torch(module, np.zeros((1, 3, 64, 3)), weights=pth)


# ---------------------------------------------------------------------------------------
# Keras
# ---------------------------------------------------------------------------------------


@pytest.fixture
def keras_vgg(tmp_path):
    """A tiny Keras VGG (vgg_np's layer names, softmax) and the .npz of its weights."""
    keras = needs("keras")
    reference = VGG(TINY, classes=5, seed=2, input_shape=(64, 64, 3))
    reference.save_weights(tmp_path / "tiny.npz")
    layers = [keras.Input((64, 64, 3))]
    for layer in reference.layers:
        if layer.kind == "conv":
            layers.append(
                keras.layers.Conv2D(
                    layer.units, 3, padding="same", activation="relu", name=layer.name
                )
            )
        elif layer.kind == "pool":
            layers.append(keras.layers.MaxPooling2D(name=layer.name))
        elif layer.kind == "flatten":
            layers.append(keras.layers.Flatten(name=layer.name))
        else:
            layers.append(
                keras.layers.Dense(layer.units, activation=layer.activation, name=layer.name)
            )
    net = keras.Sequential(layers)
    for name, tensors in reference.weights.items():
        net.get_layer(name).set_weights(list(tensors))
    return net, tmp_path / "tiny.npz"


@pytest.mark.keras
def test_compare_keras_passes_a_correct_model_by_its_layer_names(keras_vgg, x):
    net, npz = keras_vgg
    result = compare_keras(net, x.transpose(0, 2, 3, 1), weights=npz)
    print(result)
    assert result.passed and result.compared == 14  # 6 convolutions, 5 pools, flatten, 2 dense
    assert "weights: 16/16 tensors equal to the reference" in result.notes
    assert "input read as NHWC; the model's output taken as softmax" in result.notes


@pytest.mark.keras
def test_compare_keras_catches_an_injected_bug_and_names_it(keras_vgg, x):
    net, npz = keras_vgg
    kernel, bias = net.get_layer("block1_conv1").get_weights()
    net.get_layer("block1_conv1").set_weights([kernel[:, :, ::-1], bias])  # BGR weights, RGB input
    result = compare_keras(net, x, weights=npz)  # an NCHW batch: transposed for Keras
    assert result.first_divergence == "block1_conv1"
    assert any("input channels reversed (RGB <-> BGR" in note for note in result.notes)
    assert "input read as NCHW; the model's output taken as softmax" in result.notes


@pytest.mark.keras
def test_compare_keras_reads_a_saved_model_with_its_own_layer_names(keras_vgg, x, tmp_path):
    keras = needs("keras")
    net, npz = keras_vgg
    renamed = keras.Sequential([keras.Input((64, 64, 3))])
    for i, layer in enumerate(net.layers):  # names of one's own, a missing ReLU in block2
        config = {**layer.get_config(), "name": f"layer_{i}"}
        if layer.name == "block2_conv2":
            config["activation"] = "linear"
        renamed.add(type(layer).from_config(config))
    renamed.set_weights(net.get_weights())
    renamed.save(tmp_path / "mine.keras")
    result = compare_keras(tmp_path / "mine.keras", x.transpose(0, 2, 3, 1), weights=npz)
    print(result)
    assert result.first_divergence == "block2_conv2" and result.compared == 14
    assert {row.name: row.source_name for row in result.rows}["block1_conv1"] == "layer_0"
    with pytest.raises(ValueError, match="is not a file"):
        compare_keras(tmp_path / "missing.keras", x, weights=npz)
    with pytest.raises(TypeError, match=r"must be a keras\.Model or a path"):
        compare_keras(object(), x, weights=npz)
    outer = keras.Sequential([keras.Input((64, 64, 3)), net, keras.layers.Dense(2)])
    with pytest.raises(ValueError, match=r"models of their own; compare the VGG inside"):
        compare_keras(outer, x, weights=npz)


# ---------------------------------------------------------------------------------------
# ONNX (exported from torch)
# ---------------------------------------------------------------------------------------


@pytest.mark.torch
@pytest.mark.onnxruntime
def test_compare_onnx_diffs_the_graphs_initializers_against_the_reference(torch_vgg, x, tmp_path):
    torch = needs("torch")
    needs("onnx")
    needs("onnxruntime")
    module, pth = torch_vgg
    with torch.no_grad():  # a true convolution: the kernel flipped
        module.features[0].weight.copy_(module.features[0].weight.flip(2, 3))
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(module, torch.from_numpy(x), path, dynamo=False)
    result = compare_onnx(path, x.transpose(0, 2, 3, 1), weights=pth)
    print(result)
    assert result.first_divergence == "block1_conv1" and result.compared == result.requested
    assert any(
        "block1_conv1 kernel: yours = the reference flipped (rotated 180" in n for n in result.notes
    )
    assert "input read as NHWC; given to the graph as NCHW" in result.notes
    itself = compare_onnx(path, x)
    assert itself.passed and itself.notes[0].startswith("REFERENCE FROM THE ARTIFACT UNDER TEST")
    # Node outputs of one's own choosing: the convolution's, before its ReLU, differs.
    pre_relu = compare_onnx(path, x, names={"block2_conv1": "/features/features.3/Conv_output_0"})
    row = next(row for row in pre_relu.rows if row.name == "block2_conv1")
    assert row.source_name == "/features/features.3/Conv_output_0" and not row.passed


@pytest.mark.torch
@pytest.mark.onnxruntime
def test_cli_compare_onnx_takes_an_independent_reference(torch_vgg, x, tmp_path, capsys):
    from vgg_np import cli

    torch = needs("torch")
    needs("onnx")
    needs("onnxruntime")
    module, pth = torch_vgg
    with torch.no_grad():  # transposed while loading: the graph is its own wrong reference
        module.features[0].weight.copy_(module.features[0].weight.transpose(2, 3).clone())
    path = tmp_path / "tiny.onnx"
    torch.onnx.export(module, torch.from_numpy(x), path, dynamo=False)
    np.save(tmp_path / "x.npy", x)
    itself = cli.main(["compare", str(path), "--onnx", "--input", str(tmp_path / "x.npy")])
    out = capsys.readouterr().out
    assert itself == 0 and "REFERENCE FROM THE ARTIFACT UNDER TEST" in out
    args = ["compare", str(path), "--onnx", "--input", str(tmp_path / "x.npy")]
    code = cli.main([*args, "--reference", str(pth)])
    out = capsys.readouterr().out
    assert code == 1 and "block1_conv1 kernel: yours = the reference transposed" in out, out
    with pytest.raises(SystemExit) as usage:  # a dump's WEIGHTS is the reference already
        cli.main(["compare", str(pth), str(tmp_path / "x.npy"), "--reference", str(pth)])
    assert usage.value.code == 2 and "--reference is for --onnx" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------
# The docs' snippets, run as they are written (their doctests are marked +SKIP)
# ---------------------------------------------------------------------------------------

DOC = ROOT / "docs" / "verify-your-implementation.md"


def snippet(name: str) -> str:
    """The `>>>` lines of the block after ``<!-- snippet:NAME -->``, without directives."""
    block = re.search(rf"<!-- snippet:{name} -->\n```python\n(.*?)```", DOC.read_text(), re.S)
    lines = [line[4:].split("  # doctest:")[0] for line in block[1].splitlines()]
    assert 1 <= len(lines) <= 3, f"the {name} snippet should stay a few lines, has {len(lines)}"
    return "\n".join(lines)


def run_snippet(name, namespace, capsys) -> str:
    exec(snippet(name), namespace)  # the docs' own code
    return capsys.readouterr().out


@pytest.mark.torch
def test_the_docs_torch_snippet_runs_as_written(torch_vgg, x, tmp_path, monkeypatch, capsys):
    module, pth = torch_vgg
    monkeypatch.chdir(pth.parent)
    pth.rename("vgg16.pth")
    out = run_snippet("torch", {"model": module, "x": x}, capsys)
    assert "note: weights: 16/16 tensors equal to the reference" in out
    assert out.rstrip().endswith("all 15 layers agree within tolerance")


@pytest.mark.keras
def test_the_docs_keras_snippet_runs_as_written(keras_vgg, x, monkeypatch, capsys):
    from vgg_np.formats import write_weights

    net, npz = keras_vgg
    monkeypatch.chdir(npz.parent)
    write_weights("vgg16.h5", VGG.from_file(npz).weights)  # Keras Applications' layout
    out = run_snippet("keras", {"model": net, "x": x}, capsys)
    assert "note: weights: 16/16 tensors equal to the reference" in out
    assert out.rstrip().endswith("all 14 layers agree within tolerance")


@pytest.mark.torch
@pytest.mark.onnxruntime
def test_the_docs_onnx_snippet_runs_as_written(torch_vgg, x, monkeypatch, capsys):
    torch = needs("torch")
    needs("onnx")
    needs("onnxruntime")
    module, pth = torch_vgg
    monkeypatch.chdir(pth.parent)
    pth.rename("vgg16.pth")
    torch.onnx.export(module, torch.from_numpy(x), "vgg16.onnx", dynamo=False)
    out = run_snippet("onnx", {"x": x}, capsys)
    assert "note: weights: 16/16 tensors equal to the reference" in out
    assert out.rstrip().endswith("all 14 layers agree within tolerance")


@pytest.mark.keras
def test_compare_keras_without_a_reference_says_so_loudly(keras_vgg, x):
    net, _ = keras_vgg
    result = compare_keras(net, x)
    assert result.passed and result.notes[0].startswith("REFERENCE FROM THE ARTIFACT UNDER TEST")


@pytest.mark.torch
def test_imagenet_as_reference_asks_the_hub_for_the_modules_network(torch_vgg, x):
    module, _ = torch_vgg
    with pytest.raises(ValueError, match=r"ImageNet weights are published for .*not 'vgg-custom'"):
        compare_torch(module, x, weights="imagenet")


class _FunctionalVGG:
    """A correct VGG whose ReLUs (and, without `pools`, pools) are functions, not modules."""

    def __new__(cls, module, pools: bool):
        torch = needs("torch")
        import torch.nn.functional as F

        class Functional(torch.nn.Module):
            def __init__(self):
                super().__init__()
                kept = (torch.nn.Conv2d, torch.nn.MaxPool2d) if pools else torch.nn.Conv2d
                self.layers = torch.nn.ModuleList(
                    [m for m in module.features if isinstance(m, kept)]
                )
                self.fcs = torch.nn.ModuleList(
                    [m for m in module.classifier if isinstance(m, torch.nn.Linear)]
                )

            def forward(self, x):
                layers = iter(self.layers)
                for widths in TINY.blocks:
                    for _ in widths:
                        x = F.relu(next(layers)(x))
                    x = next(layers)(x) if pools else F.max_pool2d(x, 2)
                x = F.relu(self.fcs[0](torch.flatten(x, 1)))
                return self.fcs[1](x)

        return Functional().eval()


@pytest.mark.torch
def test_functional_pools_are_refused_and_functional_relus_said(torch_vgg, x):
    """A correct module whose ReLUs are functions is not blamed without a word."""
    module, pth = torch_vgg
    with pytest.raises(ValueError, match=r"block1_conv2 \(layers.1\).*called as functions"):
        compare_torch(_FunctionalVGG(module, pools=False), x, weights=pth)
    result = compare_torch(_FunctionalVGG(module, pools=True), x, weights=pth)
    assert any(note.startswith("no ReLU module after layers.0, layers.2") for note in result.notes)
