"""The conventions every `vgg-np` command keeps: Ctrl-C, closed pipes, --debug, exit 2 for
bad arguments before any work, errors naming the user's files, empty input."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY_DIR as TINY
from tests.conftest import run_vgg_np as run
from vgg_np import cli

WEIGHTS = str(TINY / "model.h5")  # a 10-class reduced VGG16 on 32x32 inputs


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / name)
    return folder


def test_ctrl_c_exits_130_with_one_line():
    process = subprocess.Popen(
        [sys.executable, "-m", "vgg_np", "train", "--epochs", "1000", "--train", "64"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout.readline().startswith("fine-tuning")
    assert process.stdout.readline().startswith("epoch 0")  # well into the work
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130
    assert stderr == "vgg-np: interrupted\n"


def test_ctrl_c_while_writing_leaves_no_half_written_file(tmp_path, images, monkeypatch):
    output = tmp_path / "maps.png"
    output.write_bytes(b"the user's previous picture")
    real_save = Image.Image.save

    def interrupted_save(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)
        if hasattr(fp, "truncate"):
            fp.truncate(100)  # half the file written ...
        else:
            with open(fp, "r+b") as f:
                f.truncate(100)
        raise KeyboardInterrupt  # ... when Ctrl-C comes

    monkeypatch.setattr(Image.Image, "save", interrupted_save)
    try:
        code = cli.main(["show", str(images / "a.png"), "-o", str(output)])
    except KeyboardInterrupt:  # escaping, it would stop pytest itself
        code = "KeyboardInterrupt escaped main()"
    assert code == 130
    assert output.read_bytes() == b"the user's previous picture"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps.png"]  # no temporary left


def test_a_closed_pipe_ends_quietly(images):
    # `vgg-np predict ... --json | head -1` when head is gone before the first line.
    process = subprocess.Popen(
        [sys.executable, "-m", "vgg_np", "predict", str(images), "--weights", WEIGHTS, "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    process.stdout.close()
    stderr = process.stderr.read()
    process.wait(timeout=300)
    assert process.returncode == 141
    assert stderr.splitlines() == [
        f"weights {WEIGHTS}: preprocessing 'caffe', resize 'keras' (keras weights, implied by "
        "the Keras HDF5 layout (no provenance recorded))"
    ]


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_is_accepted_before_or_after_the_command(tmp_path, where):
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(b"\x89HDF\r\n\x1a\n")  # a runtime error (a missing file: exit 2)
    args = ["convert", str(damaged), str(tmp_path / "out.npz")]
    args = ["--debug", *args] if where == "before" else [*args, "--debug"]
    result = run(*args)
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "FileFormatError" in result.stderr


MISSING = "/no/such/weights.h5"  # were any work started, the error would be about this file


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "x.png", "--layer", "nope", "--weights", MISSING, "-o", "o.png"], "--layer"),
        (["show", "x.png", "--layer", "fc1", "--weights", MISSING, "-o", "o.png"], "--layer"),
        (["show", "x.png", "--filters", "--weights", MISSING, "-o", "o.png"], "IMAGE or --filters"),
        (["show", "--filters", "--weights", MISSING, "-o", "out.xyz"], "not a picture file"),
        (["show", "--filters", "--weights", MISSING, "-o", "/no/dir/o.png"], "does not exist"),
        (["show", "--filters", "--seed", "-1", "-o", "o.png"], "non-negative"),
        (["train", "--dropout", "-1", "--epochs", "1", "--train", "8", "--test", "8"], "[0, 1)"),
        (["train", "--dropout", "1", "--epochs", "1", "--train", "8", "--test", "8"], "[0, 1)"),
        (["train", "--dropout", "nan", "--epochs", "1", "--train", "8"], "[0, 1)"),
        (["train", "--lr", "0", "--epochs", "1", "--train", "8", "--test", "8"], "> 0"),
        (["train", "--lr", "inf", "--epochs", "1", "--train", "8", "--test", "8"], "> 0"),
        (["summary", "--input-shape", "8", "8"], "at least 32"),
        (["compare", MISSING, "a.npz", "--tolerance", "-1"], "> 0"),
        (["compare", MISSING, "a.npz", "--tolerance", "nan"], "> 0"),
        (["compare", MISSING, "a.npz", "--layers", "block1_conv1,fc9"], "fc9"),
        (["compare", MISSING], "ACTIVATIONS"),
        (["compare", MISSING, "--onnx"], "--input"),
        (["compare", MISSING, "a.npz", "--onnx", "--input", "x.npy"], "no ACTIVATIONS"),
        (["convert", MISSING, "/no/dir/out.npz"], "/no/dir/out.npz: the directory /no/dir"),
        (["predict", "x.png", "--weights", MISSING, "--batch-size", "0"], "positive"),
    ],
)
def test_bad_values_exit_2_before_any_work(tmp_path, args, message):
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "usage:" in result.stderr and message in result.stderr
    assert "Traceback" not in result.stderr and "no such file" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_errors_name_the_users_path_not_a_temporary_file(tmp_path):
    target = tmp_path / "missing_dir" / "out.npz"
    result = run("convert", WEIGHTS, str(target))
    assert str(target) in result.stderr
    assert ".part" not in result.stderr and "tmp" not in result.stderr.replace(str(tmp_path), "")


def test_a_damaged_keras_file_is_named_not_its_temporary_member(tmp_path, images):
    damaged = tmp_path / "model.keras"
    with zipfile.ZipFile(damaged, "w") as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("model.weights.h5", b"not HDF5 at all")
    result = run("predict", str(images / "a.png"), "--weights", str(damaged), cwd=tmp_path)
    assert result.returncode == 1 and str(damaged) in result.stderr


def test_empty_input_is_one_clear_line(tmp_path):
    empty_dir = tmp_path / "no_pictures"
    empty_dir.mkdir()
    (empty_dir / "notes.txt").write_text("no image here")
    result = run("predict", str(empty_dir), "--weights", WEIGHTS)
    assert result.returncode == 1
    assert result.stderr == f"vgg-np: error: no images found in {empty_dir}\n"

    empty_batch = tmp_path / "x.npy"
    np.save(empty_batch, np.zeros((0, 32, 32, 3), np.float32))
    activations = tmp_path / "acts.npz"
    np.savez(activations, block1_conv1=np.zeros((0, 32, 32, 8), np.float32))
    result = run("compare", WEIGHTS, str(activations), "--input", str(empty_batch))
    assert result.returncode == 1
    assert (
        result.stderr
        == f"vgg-np: error: {empty_batch}: the input holds no image (shape (0, 32, 32, 3))\n"
    )
