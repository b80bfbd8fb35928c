"""`vgg_np.train.fit` and ``vgg-np train IMAGES_DIR`` end to end, on generated class folders.

A narrow VGG16 at 32x32 stands in for the pretrained base (seeded, its file declared
torchvision-trained so that its preprocessing is known). Covered: the model file through
predict, extract, compare and convert; resume equal to an uninterrupted run, after a
SIGKILL too; a picture changed, damaged, a FIFO; class names with spaces and Unicode;
checkpoints of another run; a full disk; unfrozen blocks; batch norms; the command line.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_main as _cli
from vgg_np import VGG, VGGConfig, formats
from vgg_np.extract import open_store
from vgg_np.formats import Family, Provenance
from vgg_np.preprocess import load_image, preprocess_input
from vgg_np.train import fit
from vgg_np.train.checkpoint import Checkpoint, load_checkpoint
from vgg_np.train.data import write_shapes_folder
from vgg_np.train.fit import _record

ROOT = pathlib.Path(__file__).resolve().parents[2]
NARROW = VGGConfig("vgg16", ((8, 8), (16, 16), (32,) * 3, (64,) * 3, (64,) * 3), fc=(64, 64))
CLASSES = ("checkerboard", "disc", "horizontal stripes", "vertical stripes")
#: fit's arguments in these tests: small, fast, every random source used.
QUICK = {"epochs": 3, "batch_size": 8, "learning_rate": 1e-2, "verbose": 0}


def _base(path: pathlib.Path, batch_norm: bool = False) -> pathlib.Path:
    model = VGG(NARROW, include_top=False, input_shape=(32, 32, 3), seed=3, batch_norm=batch_norm)
    provenance = Provenance(
        "seeded", Family.TORCHVISION, "torch", "torchvision", (32, 32), "declared by the test"
    )
    formats.write_weights(path, model.weights, provenance=provenance)
    return path


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> pathlib.Path:
    """A base, a folder of 4 classes x 8 pictures and a feature cache, made once."""
    root = tmp_path_factory.mktemp("train")
    _base(root / "base.npz")
    write_shapes_folder(root / "pics", 8, size=32, seed=1)
    (root / "cache").mkdir()
    return root


@pytest.fixture
def work(shared, tmp_path) -> pathlib.Path:
    """A copy of the folder this test may change, the shared base and cache."""
    shutil.copytree(shared / "pics", tmp_path / "pics")
    (tmp_path / "base.npz").symlink_to(shared / "base.npz")
    (tmp_path / "cache").symlink_to(shared / "cache", target_is_directory=True)
    return tmp_path


def _fit(work: pathlib.Path, output: str = "m.npz", **options):
    arguments = {**QUICK, "cache_dir": work / "cache", **options}
    return fit(work / "pics", work / "base.npz", work / output, **arguments)


def _arrays(path) -> dict[str, np.ndarray]:
    with np.load(path) as npz:
        return {name: npz[name] for name in npz.files}


# -- the model file ------------------------------------------------------------------------


def test_model_file_records_head_labels_preprocessing_and_base(work):
    history = _fit(work, head="gap,dense:16,dropout:0.3")
    model = VGG.from_file(work / "m.npz")
    assert history.classes == CLASSES and model.weights_info["labels"] == CLASSES
    assert [layer.name for layer in model.head] == [
        "global_average_pooling2d",
        "dense",
        "dropout",
        "predictions",
    ]
    provenance = model.weights_provenance
    assert (provenance.preprocess, provenance.resize, provenance.input_size) == (
        "torch",
        "torchvision",
        (32, 32),
    )
    assert (
        "base.npz (torchvision weights)" in provenance.source and provenance.family == Family.VGG_NP
    )
    base = VGG.from_file(work / "base.npz")
    for name, tensors in base.weights.items():  # a frozen base is written as it was read
        for a, b in zip(tensors, model.weights[name], strict=True):
            np.testing.assert_array_equal(a, b)
    assert history.counts["validation"] == dict.fromkeys(CLASSES, 2)
    assert history.counts["train"] == dict.fromkeys(CLASSES, 6)
    saved = json.loads((work / "m.history.json").read_text())
    assert saved["history"]["val_loss"] == history.history["val_loss"] and len(history.epoch) == 3
    assert history.confusion.sum() == 8 and saved["confusion"] == history.confusion.tolist()
    for picture in ("m.curves.png", "m.confusion.png"):
        assert Image.open(work / picture).size[0] > 200


def test_predict_extract_compare_convert_read_the_model(work):
    _fit(work, head="flatten")
    model_path = work / "m.npz"
    pictures = sorted((work / "pics").glob("*/*.png"))[::4]
    code, out, err = _cli("predict", *pictures, "--weights", model_path, "--json", "--top", "1")
    assert code == 0, err
    found = [json.loads(line) for line in out.splitlines()]
    assert all(entry["top"][0]["label"] in CLASSES for entry in found)
    # The same top-1 as the model loaded in Python on the same preprocessed pictures.
    model = VGG.from_file(model_path)
    x = preprocess_input(
        np.stack([load_image(p, size=32, resize="torchvision") for p in pictures]), mode="torch"
    )
    expected = [CLASSES[i] for i in np.argmax(model(x), axis=1)]
    assert [entry["top"][0]["label"] for entry in found] == expected
    code, out, err = _cli(
        "extract", work / "pics", "--weights", model_path, "--layer", "predictions",
        "-o", work / "p.npy",
    )  # fmt: skip
    assert code == 0, err
    assert np.load(work / "p.npy").shape == (32, 4)
    code, out, err = _cli(
        "extract", *pictures, "--weights", model_path, "--top", "1", "-o", work / "t.npy"
    )
    assert code == 0, err
    tops = {e["path"]: e["top"][0][1] for e in open_store(work / "t.npy").manifest()}
    assert [tops[str(p)] for p in pictures] == expected  # the recorded names, not "class i"
    assert _cli("convert", model_path, work / "again.npz")[0] == 0
    assert VGG.from_file(work / "again.npz").weights_info["labels"] == CLASSES
    assert _cli("convert", model_path, work / "k.safetensors", "--layout", "keras")[0] == 0
    converted = VGG.from_file(work / "k.safetensors")
    assert converted.weights_info["labels"] == CLASSES and converted.head == model.head
    dump = work / "acts.npz"
    reference = VGG.from_file(model_path, dtype="float64", conv_algorithm="reference")
    np.savez(dump, input=x.astype(np.float64), **reference.activations(x.astype(np.float64)))
    code, out, err = _cli("compare", model_path, dump)
    assert code == 0, err + out
    assert "layers compared" in out


def test_labels_with_spaces_and_unicode_reach_predict(tmp_path, shared):
    names = ("chat noir", "café crème", "日本 の 花")
    for k, name in enumerate(names):
        for i in range(5):
            colour = [(220, 40, 40), (40, 220, 40), (40, 40, 220)][k]
            pixels = np.clip(
                np.array(colour) + np.random.default_rng(i).normal(0, 20, (36, 36, 3)), 0, 255
            )
            (tmp_path / "pics" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "pics" / name / f"{i}.png")
    history = fit(
        tmp_path / "pics",
        shared / "base.npz",
        tmp_path / "u.npz",
        cache_dir=tmp_path / "c",
        **QUICK,
    )
    assert history.classes == tuple(sorted(names))
    code, out, err = _cli(
        "predict",
        tmp_path / "pics" / "café crème" / "0.png",
        "--weights",
        tmp_path / "u.npz",
        "--json",
    )
    assert code == 0, err
    assert {entry["label"] for entry in json.loads(out)["top"]} == set(names)
    assert (tmp_path / "u.confusion.png").exists()


# -- resuming ------------------------------------------------------------------------------


RANDOM = {"head": "gap,dense:16,dropout:0.3", "augment": "flip,crop:0.8", "unfreeze": 1}


def test_resumed_run_equals_uninterrupted_run(work):
    _fit(work, "a.npz", **{**RANDOM, "epochs": 2})
    resumed = _fit(work, "a.npz", **{**RANDOM, "epochs": 4})
    straight = _fit(work, "b.npz", **{**RANDOM, "epochs": 4})
    assert resumed.resumed_from == 2 and straight.resumed_from == 0
    assert resumed.history["loss"] == straight.history["loss"]
    a, b = _arrays(work / "a.npz"), _arrays(work / "b.npz")
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a if k.endswith(("kernel", "bias")))


def _train_command(work: pathlib.Path, output: str, epochs: int) -> list[str]:
    return [
        sys.executable, "-m", "vgg_np", "train", str(work / "pics"), "--weights",
        str(work / "base.npz"), "-o", str(work / output), "--epochs", str(epochs),
        "--batch-size", "8", "--lr", "0.01", "--cache", str(work / "own-cache"),
        "--head", RANDOM["head"], "--augment", RANDOM["augment"], "--unfreeze", "1",
    ]  # fmt: skip


def _kill_when(process: subprocess.Popen, ready, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not ready() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)


def test_sigkill_in_the_feature_pass_and_mid_epoch_then_resume(work):
    """Killed in extract's pass, then after epoch 1's checkpoint: the same weights in the end."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = _train_command(work, "k.npz", 6)
    last = work / "k.checkpoints" / "last.npz"
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _kill_when(first, lambda: any((work / "own-cache").glob("*.npy")))
    assert first.returncode == -signal.SIGKILL and not last.exists()
    second = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _kill_when(second, last.exists)
    assert second.returncode == -signal.SIGKILL, second.stderr.read().decode()
    killed_at = load_checkpoint(last).epoch
    assert 1 <= killed_at < 6 and not (work / "k.npz").exists()  # killed before the end
    finish = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finish.returncode == 0, finish.stderr
    assert f"resuming after epoch {killed_at}" in finish.stderr
    straight = fit(
        work / "pics", work / "base.npz", work / "s.npz", epochs=6, batch_size=8,
        learning_rate=0.01, cache_dir=work / "own-cache", verbose=0, **RANDOM,
    )  # fmt: skip
    a, b = _arrays(work / "k.npz"), _arrays(work / "s.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a if k.endswith(("kernel", "bias")))
    assert (
        json.loads((work / "k.history.json").read_text())["history"]["loss"]
        == straight.history["loss"]
    )


# -- what changes between runs -------------------------------------------------------------


def test_changed_picture_noticed_and_checkpoint_refused(work):
    _fit(work, epochs=1)
    picture = work / "pics" / "disc" / sorted(os.listdir(work / "pics" / "disc"))[0]
    Image.new("RGB", (32, 32), (0, 250, 0)).save(picture)
    os.utime(picture, ns=(time.time_ns(), time.time_ns() + 10**9))
    with pytest.raises(
        ValueError, match="checkpoint of another training run: the pictures or their features"
    ):
        _fit(work, epochs=2)
    history = _fit(work, epochs=2, restart=True)
    assert history.feature_rows["computed"] == 0 and history.resumed_from == 0  # recomputed before


def test_changed_picture_recomputes_its_row_only(work, tmp_path):
    cache = tmp_path / "own"
    first = _fit(work, epochs=1, cache_dir=cache)
    assert first.feature_rows == {"computed": 32, "changed": 0, "reused": 0, "cached": 0}
    picture = work / "pics" / "disc" / sorted(os.listdir(work / "pics" / "disc"))[0]
    Image.new("RGB", (32, 32), (0, 250, 0)).save(picture)
    os.utime(picture, ns=(time.time_ns(), time.time_ns() + 10**9))
    again = _fit(work, epochs=1, cache_dir=cache, restart=True)
    assert again.feature_rows == {"computed": 1, "changed": 1, "reused": 0, "cached": 31}
    other_head = _fit(work, "o.npz", epochs=1, cache_dir=cache, head="gap")
    assert other_head.feature_rows == {"computed": 0, "changed": 0, "reused": 0, "cached": 32}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"head": "gap"}, "the head"),
        ({"learning_rate": 0.5}, "learning_rate '0.01' (now '0.5')"),
        ({"unfreeze": 1}, "the frozen layers"),
        ({"seed": 4}, "seed '0' (now '4')"),
    ],
)
def test_checkpoint_of_another_configuration_refused(work, change, named):
    _fit(work, epochs=1, head="flatten")
    with pytest.raises(ValueError, match="checkpoint of another training run") as error:
        _fit(work, **{"epochs": 2, "head": "flatten", **change})
    assert named in str(error.value) and "m.checkpoints" in str(error.value)


def test_damaged_checkpoint_refused_then_restart(work):
    _fit(work, epochs=1)
    last = work / "m.checkpoints" / "last.npz"
    last.write_bytes(last.read_bytes()[:-100])
    code, _, err = _cli(
        "train",
        work / "pics",
        "--weights",
        work / "base.npz",
        "-o",
        work / "m.npz",
        "--epochs",
        2,
        "--cache",
        work / "cache",
    )
    assert (
        code == 1
        and err.count("\n") == 1
        and "damaged training checkpoint" in err
        and str(last) in err
    )
    code, _out, err = _cli(
        "train",
        work / "pics",
        "--weights",
        work / "base.npz",
        "-o",
        work / "m.npz",
        "--epochs",
        2,
        "--cache",
        work / "cache",
        "--restart",
    )
    assert code == 0, err
    assert load_checkpoint(last).epoch == 2


def test_full_disk_while_checkpointing_keeps_the_last_checkpoint(work):
    """A file-size limit makes the next checkpoint's write fail (EFBIG): the old one stays."""
    _fit(work, epochs=1)
    last = work / "m.checkpoints" / "last.npz"
    before = last.read_bytes()
    limit = len(before) // 2

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    run = subprocess.run(
        [sys.executable, "-m", "vgg_np", "train", work / "pics", "--weights", work / "base.npz",
         "-o", work / "m.npz", "--epochs", "2", "--batch-size", "8", "--lr", "0.01",
         "--cache", work / "cache"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        preexec_fn=small_files, timeout=300,
    )  # fmt: skip
    assert run.returncode == 1 and "File too large" in run.stderr, run.stderr
    assert last.read_bytes() == before and load_checkpoint(last).epoch == 1
    assert not [p for p in last.parent.iterdir() if p.name.endswith(".part")]


# -- hostile folders -----------------------------------------------------------------------


def test_damaged_pictures_and_a_fifo_are_skipped_and_named(work):
    disc = work / "pics" / "disc"
    good = sorted(disc.iterdir())[0].read_bytes()
    (disc / "cut.png").write_bytes(good[: len(good) // 2])
    (disc / "text.png").write_text("not a picture")
    os.mkfifo(disc / "pipe.png")
    history = _fit(work, epochs=1)
    skipped = {os.path.basename(path): reason for path, reason in history.skipped}
    assert set(skipped) == {"cut.png", "text.png", "pipe.png"}
    assert "not a regular file" in skipped["pipe.png"] or "FIFO" in skipped["pipe.png"]
    used = sum(history.counts["train"].values()) + sum(history.counts["validation"].values())
    assert used == 32


def test_a_class_of_damaged_pictures_only_is_refused(work):
    bad = work / "pics" / "broken"
    bad.mkdir()
    for i in range(3):
        (bad / f"{i}.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    with pytest.raises(ValueError, match="no usable training picture of the class broken"):
        _fit(work, epochs=1)


def test_validation_folder_instead_of_a_split(work, tmp_path):
    write_shapes_folder(tmp_path / "val", 3, size=32, seed=9)
    history = _fit(work, epochs=1, validation_dir=tmp_path / "val")
    assert history.counts["validation"] == dict.fromkeys(CLASSES, 3)
    assert history.counts["train"] == dict.fromkeys(CLASSES, 8)


# -- what trains ---------------------------------------------------------------------------


def test_unfrozen_block_trains_and_the_rest_stays(work):
    history = _fit(work, epochs=2, unfreeze="block5", head="gap")
    model, base = VGG.from_file(work / "m.npz"), VGG.from_file(work / "base.npz")
    for name, tensors in base.weights.items():
        same = all(np.array_equal(a, b) for a, b in zip(tensors, model.weights[name], strict=True))
        assert same == (not name.startswith("block5")), name
    assert len(history.epoch) == 2
    assert any(p.name.startswith("block4_pool-") for p in (work / "cache").iterdir())


def test_batch_norm_base_frozen_trains(tmp_path, shared):
    """Unfrozen batch norms and a head's bn: tests/train/test_fit_batch_norm.py."""
    _base(tmp_path / "bn.npz", batch_norm=True)
    options = {**QUICK, "epochs": 1, "cache_dir": tmp_path / "c"}
    history = fit(shared / "pics", tmp_path / "bn.npz", tmp_path / "m.npz", **options)
    assert VGG.from_file(tmp_path / "m.npz").batch_norm is not None and history.epoch == [1]
    assert history.batch_norm == "no batch norm"  # every one of them frozen, in the cache


def test_training_learns_the_generated_classes(work):
    history = _fit(work, epochs=12, head="flatten")
    assert max(history.history["val_accuracy"]) >= 0.5  # chance is 0.25
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_early_stopping_counts_epochs_without_a_lower_val_loss():
    losses = [1.0, 0.8, 0.9, 0.85, 0.7, 0.75, 0.76]
    for patience, expected in ((2, (4, 2, True)), (3, (7, 5, False))):
        point = Checkpoint(0, {})
        for epoch, val_loss in enumerate(losses, start=1):
            _record(point, epoch, {"loss": 0.0, "val_loss": val_loss}, patience=patience)
            if point.stopped:
                break
        assert (point.epoch, point.best["epoch"], point.stopped) == expected
        assert point.wait == 2 and point.history["val_loss"] == losses[: point.epoch]


def test_a_diverged_epoch_is_never_the_best():
    point = Checkpoint(0, {})
    for epoch, val_loss in enumerate([float("nan"), 2.0, float("nan"), 1.5], start=1):
        _record(point, epoch, {"loss": 0.0, "val_loss": val_loss}, patience=None)
    assert point.best == {"epoch": 4, "val_loss": 1.5} and not point.stopped


def test_stopped_run_is_not_trained_further(work):
    diverging = {"patience": 1, "learning_rate": 3.0, "optimizer": "sgd"}
    first = _fit(work, epochs=8, **diverging)
    assert first.stopped_early and len(first.epoch) < 8
    assert first.best_epoch == 1 + int(np.argmin(first.history["val_loss"]))
    again = _fit(work, epochs=10, **diverging)
    assert again.epoch == first.epoch and again.resumed_from == len(first.epoch)
    assert again.stopped_early


# -- the command line ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["PICS"], "IMAGES_DIR needs --weights and -o"),
        (["PICS", "--weights", "BASE"], "IMAGES_DIR needs -o"),
        (["PICS", "--weights", "BASE", "-o", "m.onnx"], "must end in .npz"),
        (
            ["PICS", "--weights", "BASE", "-o", "m.npz", "--dropout", "0.5"],
            "--dropout belong to the demo",
        ),
        (["--demo", "PICS"], "not both"),
        (["--weights", "BASE"], "--weights need IMAGES_DIR"),
        (["nowhere", "--weights", "BASE", "-o", "m.npz"], "IMAGES_DIR nowhere: no such file"),
        (["PICS", "--weights", "BASE", "-o", "m.npz", "--input-size", "16"], "at least 32"),
        (["PICS", "--weights", "BASE", "-o", "m.npz", "--validation-split", "1"], r"\[0, 1\)"),
    ],
)
def test_usage_errors_exit_2_before_any_work(work, argv, message):
    argv = [
        str(work / "pics") if a == "PICS" else str(work / "base.npz") if a == "BASE" else a
        for a in argv
    ]
    code, _out, err = _cli("train", *argv)
    assert code == 2 and re.search(message, err), err


def test_runtime_errors_are_one_line(tmp_path, shared):
    (tmp_path / "one" / "cats").mkdir(parents=True)
    Image.new("RGB", (40, 40)).save(tmp_path / "one" / "cats" / "a.png")
    code, _, err = _cli(
        "train", tmp_path / "one", "--weights", shared / "base.npz", "-o", tmp_path / "m.npz"
    )
    assert code == 1 and err.strip().count("\n") == 0 and "one class folder (cats)" in err
    code, _out, err = _cli(
        "train",
        shared / "pics",
        "--weights",
        shared / "base.npz",
        "-o",
        tmp_path / "m.npz",
        "--head",
        "gap,conv:3",
    )
    assert code == 1 and "'conv:3' is not an item" in err


def test_command_line_trains_and_prints_epochs(work):
    code, out, err = _cli(
        "train", work / "pics", "--weights", work / "base.npz", "-o", work / "m.npz",
        "--epochs", "2", "--batch-size", "8", "--cache", work / "cache", "--head", "flatten",
        "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert "[#" not in err and "[." not in err  # no bars, the epoch lines all the same
    lines = out.splitlines()
    assert lines[0].startswith("epoch 1/2: loss ") and "val_accuracy" in lines[1]
    assert f"wrote {work / 'm.npz'} (classes: {', '.join(CLASSES)})" in out
    code, out, err = _cli(
        "train", work / "pics", "--weights", work / "base.npz", "-o", work / "m.npz",
        "--epochs", "2", "--batch-size", "8", "--cache", work / "cache", "--head", "flatten",
        "--json",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["resumed_from"] == 2


def test_demo_still_runs_without_images_dir():
    code, out, err = _cli(
        "train", "--epochs", "1", "--train", "16", "--test", "8", "--batch-size", "8"
    )
    assert code == 0, err
    assert "epoch 1: train loss" in out
