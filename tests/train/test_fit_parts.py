"""The parts of `vgg_np.train.fit`: head specs, class folders and the split, augmentation,
Adam and optimizer state, checkpoints (damaged, cut, of another run), the pictures."""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ADAM_REL_TOL, BN_FOLD_REL_TOL, FLOAT64_ENGINE_REL_TOL
from vgg_np.layers import Layer, forward
from vgg_np.network import describe
from vgg_np.train.checkpoint import (
    Checkpoint,
    check_fingerprint,
    load_checkpoint,
    save_checkpoint,
)
from vgg_np.train.data import Augment, image_folder, parse_augment, split
from vgg_np.train.heads import describe_head, parse_head
from vgg_np.train.loop import Top, evaluate, train_epoch
from vgg_np.train.optim import Adam, load_optimizer_state, make_optimizer, optimizer_state
from vgg_np.train.report import confusion_matrix, confusion_picture, curves_picture
from vgg_np.train.step import SGD

# -- heads ---------------------------------------------------------------------------------


def test_head_spec_names_layers_as_keras_does():
    head = parse_head("gap, dense:256, dropout:0.5, dense:32:tanh, dropout:0.1, bn", 5)
    assert [(layer.name, layer.kind) for layer in head] == [
        ("global_average_pooling2d", "global_avg"),
        ("dense", "dense"),
        ("dropout", "dropout"),
        ("dense_1", "dense"),
        ("dropout_1", "dropout"),
        ("batch_normalization", "batch_norm"),
        ("predictions", "dense"),
    ]
    assert head[1].activation == "relu" and head[3].activation == "tanh"
    assert head[2].rate == 0.5 and head[5].eps == 1e-3  # Keras's BatchNormalization epsilon
    assert head[-1] == Layer("predictions", "dense", 5, "softmax")
    # What the project's description of a network accepts as a head of one's own.
    assert describe("vgg16", head=head).output_kind == "probabilities"


def test_head_spec_vgg_is_keras_top():
    head = parse_head("vgg", 3)
    assert [(layer.name, layer.units) for layer in head] == [
        ("flatten", 0), ("fc1", 4096), ("fc2", 4096), ("predictions", 3),
    ]  # fmt: skip
    assert describe_head(parse_head("vgg:64", 3)) == "flatten,dense:64,dense:64"


@pytest.mark.parametrize(
    "spec",
    ["gap", "flatten,dense:8", "gmp,dense:8:linear,dropout:0.25,bn", "gap,dense:4:sigmoid"],
)
def test_head_spec_round_trips(spec):
    assert describe_head(parse_head(spec, 3)) == spec


@pytest.mark.parametrize(
    ("spec", "classes", "match"),
    [
        ("dense:8", 3, "meets the feature map of shape"),
        ("", 3, "meets the feature map"),
        ("gap,,dense:8", 3, "is empty"),
        ("gap,dense:0", 3, "whole number of units"),
        ("gap,dense:8:gelu", 3, "activation 'gelu'"),
        ("gap,dropout:1", 3, r"rate in \[0, 1\)"),
        ("gap,dropout:x", 3, r"rate in \[0, 1\)"),
        ("gap,conv:8", 3, "'conv:8' is not an item"),
        ("gap", 1, "`classes` must be an int >= 2"),
    ],
)
def test_head_spec_refused_naming_the_item(spec, classes, match):
    with pytest.raises(ValueError, match=match):
        parse_head(spec, classes)


# -- class folders, split, augmentation ----------------------------------------------------


def _picture(path, colour=(200, 30, 30), size=(40, 36)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _text(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("not a picture")


def test_class_folders_sorted_with_unicode_and_spaces(tmp_path):
    for name in ("zèbre", "chat noir", "Ünïcode 日本", "a"):
        _picture(tmp_path / name / "deeper" / "x.png")
    _picture(tmp_path / "loose.png")
    (tmp_path / ".hidden").mkdir()
    folder = image_folder(tmp_path)
    assert folder.classes == tuple(sorted(("zèbre", "chat noir", "Ünïcode 日本", "a")))
    assert folder.labels.tolist() == [0, 1, 2, 3]
    assert folder.ignored == ("loose.png",)
    assert all(os.path.isabs(p) for p in folder.paths)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda root: None, "holds no class folders"),
        (lambda root: _picture(root / "only" / "a.png"), "one class folder \\(only\\)"),
        (
            lambda root: (_picture(root / "a" / "x.png"), (root / "b" / "sub").mkdir(parents=True)),
            "b holds no pictures",
        ),
        (
            lambda root: (_picture(root / "a" / "x.png"), _text(root / "b" / "notes.txt")),
            "b holds no pictures",
        ),
    ],
    ids=["no classes", "one class", "empty class", "no picture files"],
)
def test_class_folders_refused(tmp_path, make, match):
    make(tmp_path)
    with pytest.raises(ValueError, match=match):
        image_folder(tmp_path)


def test_not_a_folder_and_missing_refused(tmp_path):
    _picture(tmp_path / "a.png")
    with pytest.raises(ValueError, match="is not a folder"):
        image_folder(tmp_path / "a.png")
    with pytest.raises(ValueError, match="no such folder"):
        image_folder(tmp_path / "nothing")


def test_validation_folder_must_have_the_training_classes(tmp_path):
    for name in ("a", "b"):
        _picture(tmp_path / "train" / name / "x.png")
    for name in ("a", "c"):
        _picture(tmp_path / "val" / name / "x.png")
    with pytest.raises(ValueError, match="missing: b; not in training: c"):
        image_folder(tmp_path / "val", classes=("a", "b"))


def test_split_is_stratified_seeded_and_bounded():
    labels = np.repeat([0, 1, 2], [10, 3, 1])
    train, val = split(labels, 0.2, seed=4)
    assert sorted(np.bincount(labels[val], minlength=3).tolist()) == [0, 1, 2]
    assert np.bincount(labels[val], minlength=3).tolist() == [2, 1, 0]  # a 1-picture class trains
    assert set(train) | set(val) == set(range(14)) and not set(train) & set(val)
    again = split(labels, 0.2, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip((train, val), again, strict=True))
    assert not np.array_equal(split(labels, 0.2, seed=5)[1], val)
    assert len(split(labels, 0.0, seed=4)[1]) == 0
    with pytest.raises(ValueError, match="validation_split"):
        split(labels, 1.0, seed=0)


def test_augment_is_seeded_flips_and_crops():
    pixels = np.random.default_rng(0).integers(0, 256, (12, 10, 3), np.uint8)  # (H, W, C)
    flip = Augment(flip=True)
    outs = [flip(pixels, np.random.default_rng(s)) for s in range(12)]
    assert all(np.array_equal(o, pixels) or np.array_equal(o, pixels[:, ::-1]) for o in outs)
    assert any(np.array_equal(o, pixels[:, ::-1]) for o in outs)  # both happen
    assert any(np.array_equal(o, pixels) for o in outs)
    crop = Augment(crop=0.5)
    a, b = crop(pixels, np.random.default_rng(7)), crop(pixels, np.random.default_rng(7))
    assert a.shape == pixels.shape and a.dtype == np.uint8 and np.array_equal(a, b)
    assert not np.array_equal(crop(pixels, np.random.default_rng(8)), a)
    assert np.array_equal(Augment()(pixels, np.random.default_rng(0)), pixels)


@pytest.mark.parametrize("spec", ["rotate", "crop:0", "crop:2", "crop:x", "flip,zoom"])
def test_augment_spec_refused(spec):
    with pytest.raises(ValueError, match="augment"):
        parse_augment(spec)


# -- optimizers ----------------------------------------------------------------------------


def _top(seed=0, dtype="float64") -> Top:
    rng = np.random.default_rng(seed)
    layers = [Layer("fc", "dense", 5, "relu"), Layer("predictions", "dense", 3, "softmax")]
    weights = {"fc": (rng.normal(size=(4, 5)), rng.normal(size=5))}
    weights["predictions"] = (rng.normal(size=(5, 3)), rng.normal(size=3))
    return Top(layers, weights, dtype)


def test_adam_follows_its_definition():
    """Two steps of Adam against the update written out (float64, so exactly equal)."""
    top = _top()
    w0 = top.weights["fc"][0].copy()
    g1, g2 = np.full((4, 5), 0.5), np.linspace(-1, 1, 20).reshape(4, 5)
    adam = Adam(lr=0.1, betas=(0.8, 0.9), eps=1e-3, weight_decay=0.01)
    zero = np.zeros(5)
    for g in (g1, g2):
        adam.step(top, {"fc": (g, zero)})
    m, v, w = np.zeros_like(w0), np.zeros_like(w0), w0.copy()
    for t, g in enumerate((g1, g2), start=1):
        g = g + 0.01 * w
        m = 0.8 * m + (1 - 0.8) * g
        v = 0.9 * v + (1 - 0.9) * g * g
        w = w - 0.1 * (m / (1 - 0.8**t)) / (np.sqrt(v / (1 - 0.9**t)) + 1e-3)
    np.testing.assert_allclose(top.weights["fc"][0], w, rtol=ADAM_REL_TOL, atol=0)


@pytest.mark.parametrize("decay", [0.0, 1e-3])
def test_adam_in_chunks_computes_every_element_as_the_whole_tensor_formulas_do(decay):
    """A float32 tensor over several `SGD_CHUNK`s and an uneven last one, on a `Top` (in
    place) and on a `VGG` (new arrays): bit for bit the whole-tensor expressions."""
    from vgg_np.model import VGG, VGGConfig
    from vgg_np.train.step import SGD_CHUNK

    rng = np.random.default_rng(0)
    tiny = VGGConfig("tiny", ((2,), (2,), (4,), (4,), (4,)), fc=(3 * SGD_CHUNK // 4 + 5,))
    model = VGG(tiny, classes=3, input_shape=(32, 32, 3), seed=0, classifier_activation=None)
    w0 = model.weights["fc1"][0]  # (4, 3 * SGD_CHUNK // 4 + 5): 3 chunks and 20 more
    assert w0.size == 3 * SGD_CHUNK + 20
    top = Top([], {"fc1": (w0,)})
    adams = [Adam(lr=0.01, betas=(0.9, 0.999), eps=1e-7, weight_decay=decay) for _ in range(2)]
    m = v = np.zeros_like(w0)
    w = w0.copy()
    for t in (1, 2, 3):
        g = rng.standard_normal(w0.shape).astype(np.float32)
        adams[0].step(top, {"fc1": (g,)})
        adams[1].step(model, {"fc1": (g, np.zeros(w0.shape[1], np.float32))})
        g = g + decay * w
        m = m * np.float32(0.9) + (1 - 0.9) * g
        v = v * np.float32(0.999) + (1 - 0.999) * g * g
        w = w - 0.01 * ((m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-7))
    assert w.dtype == np.float32
    np.testing.assert_array_equal(top.weights["fc1"][0], w)
    np.testing.assert_array_equal(model.weights["fc1"][0], w)
    np.testing.assert_array_equal(adams[0].moments["fc1"][1], v)


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_optimizer_state_resumes_the_same_steps(name):
    """Steps 1-2, state saved, steps 3-4 by a new optimizer == steps 1-4 by one: bit for bit."""
    rng = np.random.default_rng(1)
    grads = [{"fc": (rng.normal(size=(4, 5)), rng.normal(size=5))} for _ in range(4)]
    straight, resumed = _top(), _top()
    first = make_optimizer(name, 0.05, momentum=0.8, weight_decay=0.001)
    for g in grads:
        first.step(straight, g)
    second = make_optimizer(name, 0.05, momentum=0.8, weight_decay=0.001)
    for g in grads[:2]:
        second.step(resumed, g)
    scalars, arrays = optimizer_state(second)
    third = make_optimizer(name, 0.05, momentum=0.8, weight_decay=0.001)
    load_optimizer_state(third, json.loads(json.dumps(scalars)), arrays)
    for g in grads[2:]:
        third.step(resumed, g)
    for layer in ("fc", "predictions"):
        for a, b in zip(straight.weights[layer], resumed.weights[layer], strict=True):
            np.testing.assert_array_equal(a, b)


def test_make_optimizer_refuses_unknown_and_bad_values():
    with pytest.raises(ValueError, match="`optimizer` must be one of"):
        make_optimizer("rmsprop")
    with pytest.raises(ValueError, match="lr > 0"):
        Adam(lr=0)
    assert isinstance(make_optimizer("sgd"), SGD)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_evaluate_with_unfrozen_blocks_runs_the_engine_as_predict_does(dtype, monkeypatch):
    """A block of convolutions and a batch norm under a head: the engine's logits (its
    batch norm folded) give the reference forward's loss and classes, within the
    engine's tolerance; the engine is closed after."""
    import vgg_np.train.loop as loop

    rng = np.random.default_rng(0)
    layers = [
        Layer("block5_conv1", "conv", 16, "relu"),
        Layer("block5_bn", "batch_norm"),
        Layer("block5_pool", "pool"),
        Layer("flatten", "flatten"),
        Layer("dropout", "dropout", rate=0.5),
        Layer("predictions", "dense", 5, "softmax"),
    ]
    weights = {
        "block5_conv1": (rng.normal(size=(3, 3, 24, 16)) * 0.2, rng.normal(size=16) * 0.1),
        "block5_bn": (rng.uniform(0.5, 2, 16), rng.normal(size=16), rng.normal(size=16),
                      rng.uniform(0.5, 2, 16)),
        "predictions": (rng.normal(size=(4 * 4 * 16, 5)) * 0.1, np.zeros(5)),
    }  # fmt: skip
    top = Top(layers, weights, dtype)
    features = rng.uniform(0, 1, (11, 8, 8, 24)).astype(dtype)
    labels = rng.integers(0, 5, 11)
    closed = []
    engine_close = loop.Engine.close
    monkeypatch.setattr(loop.Engine, "close", lambda self: closed.append(engine_close(self)))
    loss, accuracy, classes = evaluate(top, lambda i: features[i], labels, 4)
    assert len(closed) == 1
    logit_layers = [*layers[:-1], Layer("predictions", "dense", 5)]
    reference = forward(logit_layers, top.weights, features)  # dropout off in inference
    from vgg_np import backward

    expected = backward.softmax_cross_entropy(reference, labels)[0]
    tolerance = BN_FOLD_REL_TOL if dtype == "float32" else FLOAT64_ENGINE_REL_TOL
    assert loss == pytest.approx(expected, rel=tolerance)
    np.testing.assert_array_equal(classes, np.argmax(reference, axis=1))
    assert accuracy == np.mean(classes == labels)


def test_train_epoch_reports_loss_before_each_step():
    top = _top(dtype="float32")
    x = np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    before = {
        name: tuple(a.copy() for a in t) for name, t in top.weights.items()
    }  # updated in place
    loss, accuracy = train_epoch(top, iter([(x, y)]), SGD(lr=0.1), np.random.default_rng(0))
    from vgg_np.train.step import loss_and_gradients

    top2 = Top(top.layers, before)
    expected, _, tape = loss_and_gradients(top2, x, y)
    assert loss == pytest.approx(expected, rel=1e-12)
    logits = tape.kept["loss"]["logits"]
    assert accuracy == np.mean(np.argmax(logits, axis=1) == y)
    assert not np.array_equal(top.weights["fc"][0], before["fc"][0])  # a step was taken
    with pytest.raises(ValueError, match="every training picture was skipped"):
        train_epoch(top, iter([]), SGD(lr=0.1), np.random.default_rng(0))


def test_top_refuses_weights_that_do_not_fit():
    top = _top()
    with pytest.raises(ValueError, match="missing fc; extra other"):
        top.set_weights({"other": (), "predictions": top.weights["predictions"]})
    # A tensor short (a checkpoint without the bias): before, accepted and the bias dropped.
    kernel = top.weights["predictions"][0]
    with pytest.raises(ValueError, match=r"predictions: 1 tensors where 2 are needed"):
        top.set_weights({**top.weights, "predictions": (kernel,)})
    with pytest.raises(ValueError, match=r"predictions: 3 tensors where 2 are needed"):
        top.set_weights({**top.weights, "predictions": (*top.weights["predictions"], kernel)})


# -- checkpoints ---------------------------------------------------------------------------


def _checkpoint() -> Checkpoint:
    weights = {"fc": (np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, np.float32))}
    optimizer = {"scalars": {"t": 4}, "arrays": {"fc/0": np.zeros((2, 3)), "fc/1": np.ones(3)}}
    best = {"epoch": 2, "val_loss": 0.7}
    return Checkpoint(
        3, weights, optimizer, history={"loss": [1.0, 0.5, 0.25]}, best=best, wait=1,
        fingerprint={"head": "gap", "classes": '["a", "b"]'},
    )  # fmt: skip


def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "last.npz"
    save_checkpoint(path, _checkpoint())
    back = load_checkpoint(path)
    assert (back.epoch, back.best, back.wait, back.stopped) == (
        3,
        {"epoch": 2, "val_loss": 0.7},
        1,
        False,
    )
    np.testing.assert_array_equal(back.weights["fc"][0], _checkpoint().weights["fc"][0])
    assert back.optimizer["scalars"] == {"t": 4} and sorted(back.optimizer["arrays"]) == [
        "fc/0",
        "fc/1",
    ]
    assert back.history == {"loss": [1.0, 0.5, 0.25]}
    assert [p.name for p in tmp_path.iterdir()] == ["last.npz"]  # no temporary file left


def _flip_a_byte_of(path, member: str) -> None:
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    data = bytearray(path.read_bytes())
    data[info.header_offset + 30 + len(info.filename) + 200] ^= 0xFF  # inside its data
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        (lambda p: _flip_a_byte_of(p, "w/fc/0.npy"), "damaged training checkpoint"),
        (lambda p: p.write_bytes(p.read_bytes()[:300]), "damaged training checkpoint"),
        (lambda p: p.write_bytes(b"not a zip at all"), "damaged training checkpoint"),
        (lambda p: p.write_bytes(b""), "damaged training checkpoint"),
        (
            lambda p: np.savez(p, state=np.array(json.dumps({"version": "x"}))),
            "other entries than vgg_np writes",
        ),
        (lambda p: np.savez(p, other=np.zeros(3)), "no state entry"),
    ],
    ids=["flipped byte", "cut", "not a zip", "empty", "wrong state", "no state"],
)
def test_damaged_checkpoint_refused_naming_it(tmp_path, damage, match):
    path = tmp_path / "last.npz"
    save_checkpoint(path, _checkpoint())
    damage(path)
    with pytest.raises(ValueError, match=match) as error:
        load_checkpoint(path)
    assert str(path) in str(error.value) and "--restart" in str(error.value)


def test_checkpoint_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    path = tmp_path / "last.npz"
    os.mkfifo(path)
    with pytest.raises(ValueError, match="not a regular"):
        load_checkpoint(path)


def test_checkpoint_of_another_run_is_refused_naming_each_difference():
    saved = {"head": "a", "base": "x", "learning_rate": "0.001", "features": "1"}
    now = {"head": "b", "base": "x", "learning_rate": "0.01", "features": "2"}
    with pytest.raises(ValueError) as error:
        check_fingerprint("ck.npz", saved, now)
    message = str(error.value)
    assert message.startswith("ck.npz is the checkpoint of another training run")
    assert "the pictures or their features" in message and "the head" in message
    assert "learning_rate '0.001' (now '0.01')" in message and "base" not in message


def test_full_disk_while_writing_a_checkpoint_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "last.npz"
    save_checkpoint(path, _checkpoint())
    before = path.read_bytes()
    import errno

    real = np.savez

    def full_disk(f, **arrays):
        real(f, **arrays)  # written half-way, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    later = _checkpoint()
    later.epoch = 4
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, later)
    assert path.read_bytes() == before and load_checkpoint(path).epoch == 3
    assert [p.name for p in tmp_path.iterdir()] == ["last.npz"]


# -- pictures ------------------------------------------------------------------------------


def test_confusion_matrix_counts():
    matrix = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert matrix.sum() == 6


def test_pictures_show_both_curves_and_the_matrix():
    history = {"loss": [1.0, 0.6, 0.4], "accuracy": [0.5, 0.7, 0.9]}
    history |= {"val_loss": [1.1, 0.8, 0.9], "val_accuracy": [0.4, 0.6, 0.55]}
    curves = curves_picture(history, best=2)
    colours = {tuple(c) for c in curves.reshape(-1, 3)}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours  # training, validation
    only_training = curves_picture({"loss": [1.0, 0.5], "accuracy": [0.1, 0.2]})
    assert (255, 127, 14) not in {tuple(c) for c in only_training.reshape(-1, 3)}
    matrix = np.array([[5, 0], [1, 4]])
    picture = confusion_picture(matrix, ["chat noir", "café"], "validation")
    assert picture.ndim == 3 and picture.dtype == np.uint8
    assert len({tuple(c) for c in picture.reshape(-1, 3)}) > 10  # shaded cells and text
