"""`vgg_np.train.fit` on a base with batch norms (a narrow VGG16_bn at 32x32), as PyTorch and
Keras fine-tune one.

Two bases: a torchvision state dict (``.pth``, epsilon 1e-5) and a Keras-layout file
(``.safetensors``, epsilon 1e-3, Keras family), each with running statistics of its own.
Covered: the unfrozen block's and the head's batch norms train (gamma and beta by
gradient, the running statistics by the base's framework's convention) and the frozen
ones stay bit for bit; the running statistics of an epoch written out by hand, and
against PyTorch's over a shuffled epoch of several batches; resume after SIGKILL bit for
bit; predict; the statistics in a `.keras` model file; a running variance that overflows.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import EPOCH_FLOAT32_REL_TOL, FIT_BN_STATISTICS_REL_TOL, relative_error
from tests.train.test_fit import NARROW, _arrays, _cli, _kill_when
from vgg_np import VGG, formats
from vgg_np.formats import Family, Provenance
from vgg_np.layers import forward
from vgg_np.preprocess import load_image, preprocess_input
from vgg_np.train import fit
from vgg_np.train.checkpoint import load_checkpoint
from vgg_np.train.data import image_folder, split, write_shapes_folder
from vgg_np.train.fit import _batches, _use_features
from vgg_np.train.plan import prepare

ROOT = pathlib.Path(__file__).resolve().parents[2]
#: framework -> (file suffix, epsilon, family, preprocessing, resize, layout).
BASES = {
    "torch": (".pth", 1e-5, Family.TORCHVISION, "torch", "torchvision", None),
    "keras": (".safetensors", 1e-3, Family.KERAS, "caffe", "keras", "keras"),
}
QUICK = {"epochs": 1, "batch_size": 8, "learning_rate": 1e-2, "optimizer": "sgd", "verbose": 0}


def _bn_base(path: pathlib.Path, framework: str, scale_block5: float = 1.0) -> pathlib.Path:
    """A seeded VGG16_bn base whose batch norms hold statistics of their own, saved as
    `framework` saves one."""
    suffix, eps, family, mode, resize, layout = BASES[framework]
    model = VGG(NARROW, include_top=False, input_shape=(32, 32, 3), seed=3, batch_norm=eps)
    rng = np.random.default_rng(5)
    weights = model.weights
    for name, tensors in weights.items():
        if name.endswith("_bn"):
            c = tensors[0].shape
            weights[name] = tuple(
                a.astype(np.float32)
                for a in (rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c),
                          rng.normal(0, 0.3, c), rng.uniform(0.5, 2.0, c))
            )  # fmt: skip
    kernel, bias = weights["block5_conv1"]
    weights["block5_conv1"] = (kernel * np.float32(scale_block5), bias)
    provenance = Provenance("seeded", family, mode, resize, (32, 32), "declared by the test")
    path = path.with_suffix(suffix)
    options = {"layout": layout} if layout else {}
    formats.write_weights(
        path, weights, provenance=provenance, info={"batch_norm_eps": eps}, **options
    )
    return path


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> pathlib.Path:
    """Both bases and a folder of 4 classes x 8 pictures, made once."""
    root = tmp_path_factory.mktemp("bn")
    for framework in BASES:
        _bn_base(root / framework, framework)
    write_shapes_folder(root / "pics", 8, size=32, seed=1)
    return root


def _base_path(shared: pathlib.Path, framework: str) -> pathlib.Path:
    return (shared / framework).with_suffix(BASES[framework][0])


def _bn_names(model: VGG) -> list[str]:
    return [layer.name for layer in model.layers if layer.kind == "batch_norm"]


@pytest.mark.parametrize("framework", list(BASES))
def test_unfrozen_and_head_batch_norms_train_and_frozen_ones_stay(shared, tmp_path, framework):
    base_path = _base_path(shared, framework)
    history = fit(
        shared / "pics", base_path, tmp_path / "m.npz", unfreeze=1, head="gap,bn",
        cache_dir=tmp_path / "c", **QUICK,
    )  # fmt: skip
    model, base = VGG.from_file(tmp_path / "m.npz"), VGG.from_file(base_path)
    norms = _bn_names(model)
    assert len(norms) == 14 and "batch_normalization" in norms  # 13 in the base, 1 in the head
    for name in norms:
        after = model.weights[name]
        before = base.weights.get(name, (1, 0, 0, 1))  # the head's starts as Keras's does
        moved = [not np.array_equal(a, b) for a, b in zip(after, before, strict=True)]
        trained = name.startswith("block5") or name == "batch_normalization"
        # gamma, beta, running mean, running variance: all move, or none.
        assert moved == [trained] * 4, (name, moved)
    assert history.batch_norm == (
        f"unfrozen blocks: {framework}'s running statistics ({BASES[framework][2].value} "
        "weights); head: keras's running statistics (batch_normalization: keras's default "
        "epsilon 0.001)"
    )
    saved = json.loads((tmp_path / "m.history.json").read_text())
    assert saved["batch_norm"] == history.batch_norm
    assert load_checkpoint(tmp_path / "m.checkpoints" / "last.npz").fingerprint["batch_norm"]


def _training_pictures(shared: pathlib.Path, framework: str) -> np.ndarray:
    """The training split's pictures, preprocessed as the base's provenance says."""
    folder = image_folder(shared / "pics")
    train, _ = split(folder.labels, 0.2, 0)
    _, _, _, mode, resize, _ = BASES[framework]
    pictures = [load_image(folder.paths[i], size=32, resize=resize) for i in train]
    return preprocess_input(np.stack(pictures), mode=mode)  # (n, 32, 32, 3)


@pytest.mark.parametrize("framework", list(BASES))
def test_running_statistics_of_a_one_batch_epoch_written_out(shared, tmp_path, framework):
    """Every picture in one batch: each block5 batch norm moves once, toward the batch's
    statistics under the initial weights, as each framework's formula says."""
    base_path = _base_path(shared, framework)
    options = {**QUICK, "batch_size": 64}
    fit(shared / "pics", base_path, tmp_path / "m.npz", unfreeze=1, head="gap",
        cache_dir=tmp_path / "c", **options)  # fmt: skip
    base = VGG.from_file(base_path)
    x = base.features(_training_pictures(shared, framework), "block4_pool")  # (n, 2, 2, 64)
    block5 = [layer for layer in base.layers if layer.name.startswith("block5")]
    inputs = {}
    forward(
        block5, base.weights, x, training=True,
        hook=lambda layer, values: inputs.setdefault(layer.name, values["input"]),
    )  # fmt: skip
    trained = VGG.from_file(tmp_path / "m.npz").weights
    worst = 0.0
    for name in ("block5_conv1_bn", "block5_conv2_bn", "block5_conv3_bn"):
        values = inputs[name].astype(np.float64).reshape(-1, inputs[name].shape[-1])  # (M, C)
        count = len(values)
        mean, var = values.mean(axis=0), values.var(axis=0)  # the batch's, biased
        old_mean, old_var = (a.astype(np.float64) for a in base.weights[name][2:])
        if framework == "torch":  # momentum 0.1, the unbiased variance
            unbiased = var * count / (count - 1)
            expected = (0.9 * old_mean + 0.1 * mean, 0.9 * old_var + 0.1 * unbiased)
        else:  # momentum 0.99, the biased variance
            expected = (0.99 * old_mean + 0.01 * mean, 0.99 * old_var + 0.01 * var)
        for got, want, old in zip(trained[name][2:], expected, (old_mean, old_var), strict=True):
            error = relative_error(got, want)
            assert relative_error(want, old) > 100 * FIT_BN_STATISTICS_REL_TOL  # they moved
            worst = max(worst, error)
    print(f"\n{framework}: running statistics after one batch, worst relative error {worst:.1e}")
    assert worst < FIT_BN_STATISTICS_REL_TOL


def _torch_block5_epoch(torch, run, batches):
    """The same epoch in PyTorch: block5 of a VGG16_bn and a GAP head, SGD, model.train()."""
    weights = run.top.weights
    modules = []
    for layer in run.top.layers:
        tensors = weights.get(layer.name)
        if layer.kind == "conv":
            conv = torch.nn.Conv2d(64, 64, 3, padding=1)
            conv.weight.data = torch.tensor(tensors[0].transpose(3, 2, 0, 1).copy())  # OIHW
            conv.bias.data = torch.tensor(tensors[1])
            modules.append(conv)
        elif layer.kind == "batch_norm":
            bn = torch.nn.BatchNorm2d(64, eps=layer.eps)
            for attr, value in zip(("weight", "bias", "running_mean", "running_var"), tensors,
                                   strict=True):  # fmt: skip
                getattr(bn, attr).data = torch.tensor(value)
            modules += [bn, torch.nn.ReLU()]
        elif layer.kind == "pool":
            modules.append(torch.nn.MaxPool2d(2))
        elif layer.kind == "global_avg":
            modules.append(torch.nn.AdaptiveAvgPool2d(1))
            modules.append(torch.nn.Flatten())
        else:
            dense = torch.nn.Linear(*tensors[0].shape)
            dense.weight.data = torch.tensor(tensors[0].T.copy())
            dense.bias.data = torch.tensor(tensors[1])
            modules.append(dense)
    net = torch.nn.Sequential(*modules).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=QUICK["learning_rate"], momentum=0.9)
    for x, labels in batches:
        optimizer.zero_grad()
        x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # (n, C, H, W)
        torch.nn.functional.cross_entropy(net(x), torch.from_numpy(labels)).backward()
        optimizer.step()
    return net


@pytest.mark.torch
def test_an_epoch_with_batch_norms_matches_pytorch_batch_for_batch(shared, tmp_path):
    """Shuffled batches of 8 through block5 (3 batch norms) and the head: the running
    statistics, gammas, betas and kernels fit writes are PyTorch's after the same epoch."""
    torch = pytest.importorskip("torch", reason="needs torch (pip install torch==2.13.0)")
    torch.set_num_threads(1)
    base_path = _base_path(shared, "torch")
    fit(shared / "pics", base_path, tmp_path / "m.npz", unfreeze=1, head="gap",
        cache_dir=tmp_path / "c", **QUICK)  # fmt: skip
    options = {
        "head": "gap", "unfreeze": 1, "validation_dir": None, "validation_split": 0.2,
        "seed": 0, "input_size": None, "preprocess": None, "resize": None, "augment": None,
        "optimizer": "sgd", "learning_rate": QUICK["learning_rate"], "momentum": 0.9,
        "weight_decay": 0.0, "batch_size": QUICK["batch_size"],
    }  # fmt: skip
    run = prepare(shared / "pics", base_path, options, verbose=0)
    _use_features(run, tmp_path / "c", 0)  # the rows fit read, from its store
    batches = list(_batches(run, 1))  # epoch 1's, in fit's order
    assert len(batches) >= 3
    net = _torch_block5_epoch(torch, run, batches)
    trained = VGG.from_file(tmp_path / "m.npz").weights
    torch_bns = [m for m in net if isinstance(m, torch.nn.BatchNorm2d)]
    worst = {}
    for module, name in zip(torch_bns, ("block5_conv1_bn", "block5_conv2_bn", "block5_conv3_bn"),
                            strict=True):  # fmt: skip
        theirs = [getattr(module, a).detach().numpy() for a in
                  ("weight", "bias", "running_mean", "running_var")]  # fmt: skip
        for what, ours, their in zip(("gamma", "beta", "mean", "var"), trained[name], theirs,
                                     strict=True):  # fmt: skip
            worst[f"{name} {what}"] = relative_error(ours, their)
    convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
    for module, name in zip(convs, ("block5_conv1", "block5_conv2", "block5_conv3"), strict=True):
        kernel = module.weight.detach().numpy().transpose(2, 3, 1, 0)  # HWIO
        worst[f"{name} kernel"] = relative_error(trained[name][0], kernel)
    name, error = max(worst.items(), key=lambda item: item[1])
    print(f"\n{len(batches)} batches: worst relative error {error:.1e} ({name})")
    assert error < EPOCH_FLOAT32_REL_TOL, name
    initial = run.top.weights["block5_conv1_bn"][3]
    assert relative_error(trained["block5_conv1_bn"][3], initial) > 1e3 * EPOCH_FLOAT32_REL_TOL


def test_sigkill_then_resume_equals_an_uninterrupted_run_bit_for_bit(shared, tmp_path):
    """Running statistics included: killed after a checkpoint, resumed, the same file."""
    base_path = _base_path(shared, "keras")
    random = {"head": "gap,bn,dense:16,dropout:0.3", "augment": "flip", "unfreeze": "1"}
    command = [
        sys.executable, "-m", "vgg_np", "train", str(shared / "pics"), "--weights",
        str(base_path), "-o", str(tmp_path / "k.npz"), "--epochs", "4", "--batch-size", "8",
        "--lr", "0.01", "--cache", str(tmp_path / "c"),
        *[a for key, value in random.items() for a in (f"--{key}", value)],
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    last = tmp_path / "k.checkpoints" / "last.npz"
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _kill_when(first, last.exists)
    assert first.returncode == -signal.SIGKILL, first.stderr.read().decode()
    killed_at = load_checkpoint(last).epoch
    assert 1 <= killed_at < 4 and not (tmp_path / "k.npz").exists()
    finish = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr
    assert f"resuming after epoch {killed_at}" in finish.stderr
    assert "batch norms train; their running statistics follow unfrozen blocks: keras's" in (
        finish.stderr
    )
    straight = {**random, "unfreeze": 1}
    fit(shared / "pics", base_path, tmp_path / "s.npz", epochs=4, batch_size=8,
        learning_rate=0.01, cache_dir=tmp_path / "c", verbose=0, **straight)  # fmt: skip
    a, b = _arrays(tmp_path / "k.npz"), _arrays(tmp_path / "s.npz")
    assert a.keys() == b.keys()
    different = [k for k in a if not np.array_equal(a[k], b[k])]
    assert different == [], different
    base = VGG.from_file(base_path).weights["block5_conv3_bn"]
    resumed = VGG.from_file(tmp_path / "k.npz").weights["block5_conv3_bn"]
    assert not np.array_equal(resumed[3], base[3])  # the statistics compared did train


@pytest.mark.parametrize("framework", list(BASES))
def test_the_trained_model_predicts_through_the_command_line(shared, tmp_path, framework):
    """On its running statistics: `vgg-np predict` agrees with the model loaded in Python."""
    base_path = _base_path(shared, framework)
    fit(shared / "pics", base_path, tmp_path / "m.npz", unfreeze=1, head="gap,bn",
        cache_dir=tmp_path / "c", **{**QUICK, "epochs": 2})  # fmt: skip
    pictures = sorted((shared / "pics").glob("*/*.png"))[::3]
    code, out, err = _cli(
        "predict", *pictures, "--weights", tmp_path / "m.npz", "--json", "--top", "1"
    )
    assert code == 0, err
    found = [json.loads(line)["top"][0]["label"] for line in out.splitlines()]
    model = VGG.from_file(tmp_path / "m.npz")
    _, _, _, mode, resize, _ = BASES[framework]
    x = preprocess_input(
        np.stack([load_image(p, size=32, resize=resize) for p in pictures]), mode=mode
    )
    classes = model.weights_info["labels"]
    assert found == [classes[i] for i in np.argmax(model(x), axis=1)]
    # Inference normalises with the running statistics: other statistics, other outputs.
    weights = model.weights
    gamma, beta, mean, var = weights["block5_conv1_bn"]
    model.set_weights({**weights, "block5_conv1_bn": (gamma, beta, mean + 1, var)})
    assert not np.allclose(model(x), VGG.from_file(tmp_path / "m.npz")(x))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_running_variance_that_overflows_writes_no_model(shared, tmp_path):
    """block5_conv1's outputs near 1e20: its batch norm's batch variance (1e40) does not
    fit in float32, the running variance becomes infinite while the loss stays finite."""
    base_path = _bn_base(tmp_path / "huge", "torch", scale_block5=1e20)
    with pytest.raises(ValueError, match=r"block5_conv1_bn \(.*running variance\).*float32"):
        fit(shared / "pics", base_path, tmp_path / "m.npz", unfreeze=1, head="gap",
            cache_dir=tmp_path / "c", **QUICK)  # fmt: skip
    assert not (tmp_path / "m.npz").exists()
    code, _, err = _cli(
        "train", shared / "pics", "--weights", base_path, "-o", tmp_path / "n.npz",
        "--unfreeze", "1", "--head", "gap", "--epochs", "1", "--batch-size", "8",
        "--cache", tmp_path / "c",
    )  # fmt: skip
    last = err.strip().splitlines()[-1]
    assert code == 1 and "Traceback" not in err, err
    assert last.startswith("vgg-np: error: training diverged") and "running variance" in last
    assert not (tmp_path / "n.npz").exists()


def test_running_statistics_travel_in_a_keras_model_file(shared, tmp_path):
    """``-o MODEL.keras``: the trained statistics are the .npz's, bit for bit, and predict."""
    base_path = _base_path(shared, "keras")
    for output in ("m.npz", "m.keras"):
        fit(shared / "pics", base_path, tmp_path / output, unfreeze=1, head="gap,bn",
            cache_dir=tmp_path / "c", checkpoint_dir=tmp_path / output.replace(".", "_"),
            **QUICK)  # fmt: skip
    npz, keras = VGG.from_file(tmp_path / "m.npz"), VGG.from_file(tmp_path / "m.keras")
    for name in ("block5_conv1_bn", "block5_conv3_bn", "batch_normalization"):
        pairs = zip(npz.weights[name], keras.weights[name], strict=True)
        assert all(np.array_equal(a, b) for a, b in pairs), name
    base = VGG.from_file(base_path).weights["block5_conv1_bn"]
    assert not np.array_equal(keras.weights["block5_conv1_bn"][3], base[3])
    x = _training_pictures(shared, "keras")[:4]
    assert np.array_equal(np.argmax(npz(x), axis=1), np.argmax(keras(x), axis=1))
