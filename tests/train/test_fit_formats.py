"""`fit(output=...)` and ``vgg-np train -o`` in the format the user predicts with.

The model is written by `vgg_np.export.save` as ``.npz``, a whole Keras model (``.keras``,
``.h5``) or a torchvision state dict (``.pth``): each holds the same network, its class
names and its provenance, and `vgg-np predict` names the classes from any of them. Hostile
cases: an extension no writer has, a missing folder, a directory or FIFO at the path, a head
torchvision cannot hold (refused before any work), a full disk and an interrupted write
(the previous model file stays whole, no partial file is left).
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys

import h5py
import numpy as np
import pytest

from tests.train import test_fit
from tests.train.test_fit import CLASSES, QUICK, ROOT, _cli
from vgg_np import VGG, formats
from vgg_np.preprocess import load_image, preprocess_input
from vgg_np.train import fit

#: test_fit's fixtures: its base, folder and feature cache (made once per module).
shared, work = test_fit.shared, test_fit.work
HEAD = "gap,dense:16,dropout:0.3"  # torchvision's classifier fits it: every format holds it


def _fit(work, output: str, **options):
    arguments = {**QUICK, "cache_dir": work / "cache", "head": HEAD, **options}
    return fit(work / "pics", work / "base.npz", work / output, **arguments)


def _pictures(work) -> tuple[list, np.ndarray]:
    pictures = sorted((work / "pics").glob("*/*.png"))[::3]
    x = np.stack([load_image(p, size=32, resize="torchvision") for p in pictures])
    return pictures, preprocess_input(x, mode="torch")


def _leftovers(folder) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".part")]


@pytest.mark.parametrize(
    ("suffix", "written"),
    [
        (".keras", "keras-zip (.keras, whole model)"),
        (".h5", "keras-h5 (model.save layout, whole model)"),
        (".pth", "pytorch (torchvision layout)"),
    ],
)
def test_the_model_file_in_each_format_holds_the_same_model_and_its_classes(work, suffix, written):
    history = _fit(work, f"m{suffix}")
    assert history.written == written and history.output == str(work / f"m{suffix}")
    # The same run (same checkpoints: the stem is the same) written as .npz: no epoch more.
    again = _fit(work, "m.npz")
    assert again.resumed_from == 3 and again.best_epoch == history.best_epoch
    reference, model = VGG.from_file(work / "m.npz"), VGG.from_file(work / f"m{suffix}")
    assert model.weights_info["labels"] == CLASSES
    provenance = model.weights_provenance
    assert (provenance.preprocess, provenance.resize, provenance.input_size) == (
        "torch",
        "torchvision",
        (32, 32),
    )
    assert "vgg-np train, head gap,dense:16,dropout:0.3" in provenance.source
    pictures, x = _pictures(work)
    expected, found = reference(x), model(x)
    print(f"{suffix}: max |diff| of {expected.size} probabilities", np.abs(found - expected).max())
    np.testing.assert_array_equal(found, expected)  # the same tensors, the same kernels
    code, out, err = _cli("predict", *pictures, "--weights", work / f"m{suffix}", "--json")
    assert code == 0, err
    labels = [json.loads(line)["top"][0]["label"] for line in out.splitlines()]
    assert labels == [CLASSES[i] for i in np.argmax(expected, axis=1)]  # names, not "class i"


def test_the_history_lists_the_validation_pictures(work):
    history = _fit(work, "m.keras", epochs=1)
    saved = json.loads((work / "m.history.json").read_text())
    assert saved["validation_files"] == history.validation_files
    assert len(history.validation_files) == sum(history.counts["validation"].values()) == 8
    folders = [os.path.basename(os.path.dirname(p)) for p in history.validation_files]
    assert sorted(folders) == sorted(CLASSES * 2)  # two per class, each a real picture
    assert all(os.path.isfile(p) for p in history.validation_files)


def test_a_head_torchvision_cannot_hold_is_refused_before_any_work(work):
    with pytest.raises(ValueError, match=r"m.pth'.*torchvision's layout cannot hold a head"):
        _fit(work, "m.pth", head="gmp")
    assert not (work / "m.checkpoints").exists()  # refused before the features and epochs
    code, _, err = _cli(
        "train", work / "pics", "--weights", work / "base.npz", "-o", work / "m.pth",
        "--head", "gap,dense:16:tanh", "--cache", work / "cache",
    )  # fmt: skip
    assert code == 1 and "torchvision's layout cannot hold" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("m.onnx", r"must end in \.npz, \.keras, \.h5, \.pth or \.pt \(ONNX is read only\)"),
        ("m.txt", r"must end in \.npz"),
        ("nowhere/m.keras", r"the directory .*nowhere does not exist"),
        ("folder.keras", r"is a directory, not a model file"),
        ("fifo.h5", r"exists and is not a regular file \(a FIFO"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_any_work(work, output, message):
    (work / "folder.keras").mkdir()
    os.mkfifo(work / "fifo.h5")
    with pytest.raises(ValueError, match=f"`output` .*{message}"):
        _fit(work, output)
    code, _, err = _cli("train", work / "pics", "--weights", work / "base.npz", "-o", work / output)
    last = err.strip().splitlines()[-1]  # argparse's usage, then one line saying why
    assert code == 2 and last.startswith(f"vgg-np train: error: -o {work / output}: "), err
    assert "Traceback" not in err and not (work / "m.checkpoints").exists()
    assert (work / "folder.keras").is_dir() and (work / "fifo.h5").is_fifo()


def test_full_disk_while_writing_the_model_keeps_the_previous_model(work):
    """A file-size limit above a checkpoint's size and below the model's: the epochs are
    written, the model's write fails (EFBIG) and the previous model file stays whole."""
    _fit(work, "m.keras", epochs=1)
    model = work / "m.keras"
    before = model.read_bytes()
    limit = len(before) // 2
    assert limit > (work / "m.checkpoints" / "last.npz").stat().st_size

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    run = subprocess.run(
        [sys.executable, "-m", "vgg_np", "train", work / "pics", "--weights", work / "base.npz",
         "-o", model, "--epochs", "2", "--batch-size", "8", "--lr", "0.01", "--head", HEAD,
         "--cache", work / "cache"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        preexec_fn=small_files, timeout=300,
    )  # fmt: skip
    assert run.returncode == 1 and "File too large" in run.stderr, run.stderr
    assert "epoch 2/2" in run.stdout  # the training finished; only the model's write failed
    assert model.read_bytes() == before and not _leftovers(work)
    assert VGG.from_file(model).weights_info["labels"] == CLASSES


def test_an_interrupted_write_leaves_no_partial_model(work, monkeypatch):
    real = h5py.Group.create_dataset
    written = []

    def interrupted(self, name, *args, **kwargs):
        if len(written) == 3:  # some tensors written, then Ctrl-C
            raise KeyboardInterrupt
        written.append(name)
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _fit(work, "m.h5", epochs=1)
    assert not (work / "m.h5").exists() and not _leftovers(work) and len(written) == 3
    monkeypatch.undo()
    history = _fit(work, "m.h5", epochs=1)  # the same command again: the epoch is kept
    assert history.resumed_from == 1 and formats.detect_format(work / "m.h5") == "hdf5"
    assert VGG.from_file(work / "m.h5").weights_info["labels"] == CLASSES


def test_a_full_disk_while_writing_the_archive_leaves_nothing_behind(work, monkeypatch):
    import zipfile

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(zipfile.ZipFile, "writestr", full)
    with pytest.raises(OSError, match="No space left") as caught:
        _fit(work, "m.keras", epochs=1)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(work / "m.keras")
    left = {p.name for p in work.iterdir()}  # no model, no partial file, no work folder
    assert left == {"pics", "base.npz", "cache", "m.checkpoints"}
