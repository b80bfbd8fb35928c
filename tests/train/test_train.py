"""Tests of vgg_np.train: whole-network gradients against finite differences (float64) and
PyTorch autograd, the memory the summary reports, SGD, and the training command."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import SGD_FLOAT32_REL_TOL, relative_error
from vgg_np import VGG, VGGConfig
from vgg_np.train import SGD, loss_and_gradients, shapes_dataset

# VGG16's topology at reduced width, on 32x32 inputs.
NARROW = VGGConfig(
    "narrow", ((3, 3), (4, 4), (4, 4, 4), (5, 5, 5), (5, 5, 5)), fc=(6, 6), default_size=32
)


def narrow(dtype="float64", seed=1) -> VGG:
    return VGG(NARROW, classes=4, classifier_activation=None, dtype=dtype, seed=seed)


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_whole_network_gradients_match_finite_differences(dropout):
    model = narrow()
    x = np.random.default_rng(0).standard_normal((3, 32, 32, 3))
    labels = np.array([0, 3, 1])

    def loss(weights) -> float:
        model.set_weights(weights)
        # The same generator state every time: the same dropout mask.
        return loss_and_gradients(model, x, labels, dropout=dropout, rng=np.random.default_rng(5))[
            0
        ]

    original = model.weights
    _, grads, _ = loss_and_gradients(
        model, x, labels, dropout=dropout, rng=np.random.default_rng(5)
    )
    rng = np.random.default_rng(9)
    for name in ("block1_conv1", "block3_conv2", "block5_conv3", "fc1", "fc2", "predictions"):
        for part in (0, 1):
            analytic = grads[name][part]
            for _ in range(3):
                index = tuple(int(rng.integers(0, s)) for s in analytic.shape)
                bumped = {k: (a.copy(), b.copy()) for k, (a, b) in original.items()}
                bumped[name][part][index] += 1e-6
                up = loss(bumped)
                bumped[name][part][index] -= 2e-6
                numeric = (up - loss(bumped)) / 2e-6
                scale = np.max(np.abs(analytic)) + 1e-12
                assert abs(numeric - analytic[index]) <= 1e-6 * scale + 1e-9, (name, part, index)
    model.set_weights(original)


def test_trainable_subset_gives_the_same_gradients_and_keeps_less():
    model = narrow()
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3))
    labels = np.array([1, 2])
    _, every, tape = loss_and_gradients(model, x, labels)
    _, top, small = loss_and_gradients(model, x, labels, trainable={"fc2", "predictions"})
    assert set(top) == {"fc2", "predictions"}
    for name in top:
        np.testing.assert_array_equal(top[name][0], every[name][0])
    assert small.nbytes() < tape.nbytes() / 10


def test_summary_reports_what_the_backward_pass_keeps():
    model = narrow(dtype="float32")
    n = 3
    x = np.random.default_rng(0).standard_normal((n, 32, 32, 3)).astype(np.float32)
    _, _, tape = loss_and_gradients(model, x, np.array([0, 1, 2]))
    summary = model.summary(print_summary=False)
    for row in summary.rows:
        assert tape.nbytes(row.name) == row.kept * n * 4, row.name
    assert tape.nbytes() == summary.kept * n * 4


def test_sgd_momentum_and_weight_decay_follow_pytorch():
    model = narrow(dtype="float64")
    w0 = model.weights["predictions"][0].copy()
    g = np.full_like(w0, 0.5)
    sgd = SGD(lr=0.1, momentum=0.9, weight_decay=0.01)
    sgd.step(model, {"predictions": (g, np.zeros(4))})
    v1 = g + 0.01 * w0
    w1 = w0 - 0.1 * v1
    np.testing.assert_allclose(model.weights["predictions"][0], w1)
    sgd.step(model, {"predictions": (g, np.zeros(4))})
    v2 = 0.9 * v1 + g + 0.01 * w1
    np.testing.assert_allclose(model.weights["predictions"][0], w1 - 0.1 * v2)
    with pytest.raises(ValueError, match="lr > 0"):
        SGD(lr=0)


def test_sgd_in_chunks_computes_every_element_as_the_formula_does():
    """A tensor over several `SGD_CHUNK`s and an uneven last one: each element is the
    formula's float32 value bit for bit (the same operations in the same order), whichever
    chunk or thread it falls in; and within float32 rounding of the float64 formula."""
    from vgg_np.train.loop import Top
    from vgg_np.train.step import SGD_CHUNK

    rng = np.random.default_rng(0)
    size = 3 * SGD_CHUNK + 77
    w0 = rng.standard_normal((size, 1)).astype(np.float32)
    grads = [rng.standard_normal((size, 1)).astype(np.float32) for _ in range(2)]
    before = w0.copy()
    top = Top([], {"dense": (w0,)})
    sgd = SGD(lr=0.05, momentum=0.9, weight_decay=1e-3)
    v = np.zeros_like(w0)
    w = w0.copy()
    w64, v64 = w0.astype(np.float64), np.zeros((size, 1))
    for g in grads:
        sgd.step(top, {"dense": (g,)})
        v = v * np.float32(0.9) + g + w * np.float32(1e-3)
        w = (v * np.float32(-0.05)) + w
        v64 = 0.9 * v64 + g + 1e-3 * w64
        w64 = w64 - 0.05 * v64
    got = top.weights["dense"][0]
    error = relative_error(got, w64)
    print("first values", got[:3, 0], w[:3, 0], f"relative error from float64 {error:.1e}")
    np.testing.assert_array_equal(got, w)
    np.testing.assert_array_equal(sgd.velocity["dense"][0], v)
    assert error < SGD_FLOAT32_REL_TOL
    np.testing.assert_array_equal(w0, before)  # Top updated its own copy, not the caller's


def test_sgd_in_place_on_a_top_computes_the_bits_of_a_new_array_on_a_vgg():
    """`Top` owns its arrays, so SGD writes them in place (the same array object step after
    step: no new 25 MB kernel each step); a `VGG` gets new arrays (its old ones may be held
    elsewhere, its engine is packed again). Both give the same bits."""
    from vgg_np.train.loop import Top

    model = narrow(dtype="float32")
    initial = {name: model.weights[name] for name in ("fc2", "predictions")}
    top = Top([], initial)
    rng = np.random.default_rng(1)
    sgd_vgg, sgd_top = (SGD(lr=0.05, momentum=0.9, weight_decay=1e-3) for _ in range(2))
    held = top.weights["fc2"][0]
    for _ in range(3):
        grads = {
            name: tuple(rng.standard_normal(a.shape).astype(np.float32) for a in tensors)
            for name, tensors in initial.items()
        }
        before = model.weights["fc2"][0]
        sgd_vgg.step(model, grads)
        sgd_top.step(top, grads)
        assert top.weights["fc2"][0] is held  # in place
        assert model.weights["fc2"][0] is not before  # a new array
    for name in initial:
        for a, b in zip(top.weights[name], model.weights[name], strict=True):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(top.weights["fc2"][0], initial["fc2"][0])  # it did train


def test_a_top_never_writes_the_arrays_it_was_given_or_set():
    """Its arrays are copies: a base model's block 5 given to it is never changed in place."""
    from vgg_np.train.loop import Top

    given = np.ones((4, 3), np.float32)
    top = Top([], {"dense": (given, np.zeros(3, np.float32))})
    SGD(lr=0.5).step(top, {"dense": (np.ones((4, 3)), np.ones(3))})
    np.testing.assert_array_equal(given, 1.0)
    other = np.full((4, 3), 2.0, np.float32)
    top.set_weights({"dense": (other, np.zeros(3, np.float32))})
    SGD(lr=0.5).step(top, {"dense": (np.ones((4, 3)), np.ones(3))})
    np.testing.assert_array_equal(other, 2.0)
    np.testing.assert_array_equal(top.weights["dense"][0], 1.5)


def test_a_top_set_with_one_of_its_arrays_twice_holds_two_arrays():
    """``set_weights`` keeps an array it holds (SGD updated it in place) only in its own
    slot: given twice (beta set to gamma's values), the second is a copy. Before: both
    slots held one array, which SGD then updated twice per step (gamma's and beta's
    gradients both applied to both), silently."""
    from vgg_np.layers import Layer
    from vgg_np.train.loop import Top

    ones, zeros = np.ones(3, np.float32), np.zeros(3, np.float32)
    top = Top([Layer("bn", "batch_norm")], {"bn": (ones, zeros, zeros, ones)})
    gamma, _, mean, variance = top.weights["bn"]
    top.set_weights({"bn": (gamma, gamma, mean, variance)})
    assert top.weights["bn"][0] is gamma and top.weights["bn"][1] is not gamma
    SGD(lr=0.5, momentum=0.0).step(top, {"bn": (np.full(3, 1.0), np.full(3, -1.0))})
    np.testing.assert_array_equal(top.weights["bn"][0], 0.5)  # 1 - 0.5 * 1
    np.testing.assert_array_equal(top.weights["bn"][1], 1.5)  # 1 - 0.5 * -1
    top.set_weights({"bn": (top.weights["bn"][1], top.weights["bn"][0], mean, variance)})
    np.testing.assert_array_equal(top.weights["bn"][0], 1.5)  # swapped: both kept apart
    assert top.weights["bn"][0] is not top.weights["bn"][1]


def _other_layout(a: np.ndarray, how: str) -> np.ndarray:
    """`a`'s values in another memory order: what a user's own conversion hands over."""
    if how == "fortran":  # a dense kernel from PyTorch's (out, in) weight as ``W.T``
        return np.asfortranarray(a)
    # A kernel from PyTorch's OIHW as ``W.transpose(2, 3, 1, 0)``: a view, neither C nor F.
    return np.ascontiguousarray(a.transpose(3, 2, 0, 1)).transpose(2, 3, 1, 0)


@pytest.mark.parametrize("owner", ["top", "vgg"])
@pytest.mark.parametrize(("name", "how"), [("fc2", "fortran"), ("block5_conv3", "transposed")])
def test_sgd_on_weights_in_another_memory_order_follows_the_formula(owner, name, how):
    """Before: the update was written into a temporary C-order copy of a new array laid out
    like `w` (so the model got uninitialised memory), and a velocity laid out like `w` was
    never updated (momentum lost) -- silently, with any non-C-contiguous weight."""
    from vgg_np.train.loop import Top

    model = narrow(dtype="float32")
    w0, b0 = model.weights[name]
    odd = _other_layout(w0, how)
    assert not odd.flags.c_contiguous and np.array_equal(odd, w0)
    if owner == "top":
        target = Top([], {name: (odd, b0)})
    else:
        model.set_weights({**model.weights, name: (odd, b0)})
        target = model
    sgd = SGD(lr=0.05, momentum=0.9, weight_decay=1e-3)
    rng = np.random.default_rng(2)
    w64, v64 = w0.astype(np.float64), np.zeros(w0.shape)
    for _ in range(2):
        g = rng.standard_normal(w0.shape).astype(np.float32)
        sgd.step(target, {name: (g, np.zeros_like(b0))})
        v64 = 0.9 * v64 + g + 1e-3 * w64
        w64 = w64 - 0.05 * v64
    got = target.weights[name][0]
    error = relative_error(got, w64)
    print(owner, name, how, "first values", got.ravel()[:3], w64.ravel()[:3], f"error {error:.1e}")
    assert error < SGD_FLOAT32_REL_TOL
    assert relative_error(sgd.velocity[name][0], v64) < SGD_FLOAT32_REL_TOL


@pytest.mark.parametrize("owner", ["top", "vgg"])
@pytest.mark.parametrize(("name", "how"), [("fc2", "fortran"), ("block5_conv3", "transposed")])
def test_adam_on_weights_in_another_memory_order_takes_the_steps_of_c_order(owner, name, how):
    """Adam, updated in chunks through flat views like SGD: its moments laid out like a
    Fortran or transposed weight were copies, never updated (before, silently)."""
    from vgg_np.train.loop import Top
    from vgg_np.train.optim import Adam

    w0, b0 = narrow(dtype="float32").weights[name]
    targets = []
    for weight in (_other_layout(w0, how), w0.copy()):
        if owner == "top":
            targets.append(Top([], {name: (weight, b0)}))
        else:
            model = narrow(dtype="float32")
            model.set_weights({**model.weights, name: (weight, b0)})
            targets.append(model)
    optimizers = [Adam(lr=0.01, weight_decay=1e-3) for _ in targets]
    rng = np.random.default_rng(3)
    for _ in range(3):
        g = rng.standard_normal(w0.shape).astype(np.float32)
        for target, adam in zip(targets, optimizers, strict=True):
            adam.step(target, {name: (g, np.zeros_like(b0))})
    odd, plain = (target.weights[name][0] for target in targets)
    print(owner, name, how, "first values", odd.ravel()[:3], plain.ravel()[:3])
    np.testing.assert_array_equal(odd, plain)
    for a, b in zip(optimizers[0].moments[name], optimizers[1].moments[name], strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(plain, w0)  # it did train


def test_sgd_velocity_loaded_or_given_in_another_memory_order_still_moves():
    """A velocity read back Fortran-ordered (``np.save`` keeps the order) or set by the
    user is updated like a fresh one: its momentum carries into the next steps."""
    from vgg_np.train.loop import Top
    from vgg_np.train.optim import load_optimizer_state

    w0 = np.arange(6, dtype=np.float32).reshape(2, 3)
    v0 = np.asfortranarray(np.ones((2, 3), np.float32))
    given, loaded = SGD(lr=0.5, momentum=0.5), SGD(lr=0.5, momentum=0.5)
    given.velocity["dense"] = [v0.copy(order="F")]
    load_optimizer_state(loaded, {}, {"dense/0": v0})
    for sgd in (given, loaded):
        top = Top([], {"dense": (w0,)})
        for _ in range(2):
            sgd.step(top, {"dense": (np.ones((2, 3), np.float32),)})
        # v1 = 0.5 * 1 + 1 = 1.5, v2 = 0.5 * 1.5 + 1 = 1.75; w = w0 - 0.5 * (1.5 + 1.75)
        np.testing.assert_array_equal(sgd.velocity["dense"][0], 1.75)
        np.testing.assert_array_equal(top.weights["dense"][0], w0 - 1.625)


def test_shapes_dataset_is_seeded_and_balanced():
    a, la = shapes_dataset(12, seed=3)
    b, _ = shapes_dataset(12, seed=3)
    np.testing.assert_array_equal(a, b)
    assert np.bincount(la).tolist() == [3, 3, 3, 3] and a.dtype == np.uint8


def test_training_command_lowers_the_loss_and_raises_accuracy():
    result = subprocess.run(
        [sys.executable, "-m", "vgg_np", "train", "--epochs", "4", "--seed", "0"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    losses = [float(v) for v in re.findall(r"train loss (\S+),", result.stdout)]
    accuracies = [float(v) for v in re.findall(r"test accuracy ([0-9.]+)", result.stdout)]
    assert losses[-1] < losses[0]
    assert accuracies[-1] >= accuracies[0] + 0.1  # from chance (0.25); measured 0.41-0.50


@pytest.mark.torch
def test_every_gradient_matches_pytorch_autograd():
    torch = pytest.importorskip("torch", reason="needs torch (pip install torch==2.13.0)")
    from tests.reference.torch_vgg import TorchVGG
    from vgg_np.formats.layouts import fc1_torch_to_keras, linear_to_dense, oihw_to_hwio
    from vgg_np.formats.torchvision import module_names, to_state_dict

    model = narrow()
    x = np.random.default_rng(0).standard_normal((3, 32, 32, 3))
    labels = np.array([0, 3, 1])
    _, grads, _ = loss_and_gradients(model, x, labels)
    net = TorchVGG(NARROW.blocks, NARROW.fc, 4, pool_size=1).double().eval()  # eval: no dropout
    state = to_state_dict(model.weights, NARROW.conv_names())
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    logits = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))
    torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels)).backward()
    params = dict(net.named_parameters())
    names = module_names(NARROW.conv_names(), len(NARROW.fc) + 1)
    for keras_name, (dk, db) in grads.items():
        module = names[keras_name]
        if keras_name.startswith("block"):  # ReLU module k+1 follows conv module k
            module = f"features.{int(module.split('.')[1]) - 1}"
            theirs = oihw_to_hwio(params[f"{module}.weight"].grad.numpy())
        elif keras_name == "fc1":
            module = "classifier.0"
            theirs = fc1_torch_to_keras(params[f"{module}.weight"].grad.numpy(), (5, 1, 1))
        else:
            module = {"fc2": "classifier.3", "predictions": "classifier.6"}[keras_name]
            theirs = linear_to_dense(params[f"{module}.weight"].grad.numpy())
        assert relative_error(dk, theirs) < 1e-10, keras_name
        assert relative_error(db, params[f"{module}.bias"].grad.numpy()) < 1e-10, keras_name
    assert len(grads) == len(NARROW.conv_names()) + 3  # every parameter compared
