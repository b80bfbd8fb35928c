"""Weights files that change on disk, and writers that fail half way.

A loaded model must never alias its file: overwriting or truncating the file afterwards
changes nothing (vgg_np copies tensors at load, checking the zip CRC-32 of .npz members);
a file changed *while* it is read is an error. Every writer writes a temporary file beside
the target and renames it, so a failure (an exception, SIGINT, a full disk) never leaves a
half-written target, the output may be the input, and new files get the umask's
permissions.
"""

from __future__ import annotations

import errno
import io
import os
import pathlib
import subprocess
import sys
import textwrap

import h5py
import numpy as np
import pytest

from tests.conftest import ROOT, TINY_DIR
from tests.conftest import tiny_vgg16 as tiny
from tests.reference.make_keras_reference import TINY_CLASSES
from vgg_np import VGG, _files, formats

LIVE_FORMATS = ["w.npz", "w.safetensors", "keras.safetensors"]  # the formats once mapped


@pytest.fixture(scope="module")
def weights() -> dict:
    return tiny(weights=TINY_DIR / "model.h5").weights


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)


def write(path: pathlib.Path, weights: dict) -> pathlib.Path:
    formats.write_weights(path, weights, layout="keras" if path.name.startswith("keras") else None)
    return path


def other_weights(weights: dict) -> dict:
    return {k: (kernel * 2 + 1, bias - 1) for k, (kernel, bias) in weights.items()}


@pytest.mark.parametrize("name", LIVE_FORMATS)
def test_overwriting_the_file_in_place_leaves_a_loaded_model_unchanged(tmp_path, weights, x, name):
    path = write(tmp_path / name, weights)
    expected = tiny(weights=write(tmp_path / f"copy-{name}", weights))(x)
    model = VGG.from_file(path)  # loaded, never run yet: nothing packed
    changed = write(tmp_path / f"other-{name}", other_weights(weights)).read_bytes()
    with open(path, "r+b") as f:  # in place: same inode, as `cp` or a download does
        f.write(changed)
    got = model(x)
    print(f"{name}: max |diff| after overwriting the file {np.abs(got - expected).max():.3g}")
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("name", LIVE_FORMATS)
def test_truncating_the_file_cannot_crash_a_loaded_model(tmp_path, weights, name):
    # In a subprocess: with memory-mapped weights this dies of SIGBUS.
    path = write(tmp_path / name, weights)
    script = textwrap.dedent(f"""
        import os, sys
        import numpy as np
        from vgg_np import VGG
        model = VGG.from_file({str(path)!r})
        os.truncate({str(path)!r}, 0)
        print(model(np.ones((1, 32, 32, 3), np.float32)).shape)
    """)
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert result.stdout.strip() == f"(1, {TINY_CLASSES})"


@pytest.mark.parametrize("name", LIVE_FORMATS)
def test_a_file_changed_while_it_is_read_is_an_error(tmp_path, weights, name):
    path = write(tmp_path / name, weights)
    changed = write(tmp_path / f"other-{name}", other_weights(weights)).read_bytes()
    with formats.open_weights(path) as source:
        with open(path, "r+b") as f:
            f.write(changed)
            os.utime(f.fileno(), ns=(0, 1))  # a new mtime, even on a coarse clock
        with pytest.raises(ValueError, match=r"CRC-32 mismatch|changed while it was being read"):
            for kernel, bias in source.tensors.values():
                np.asarray(kernel), np.asarray(bias)


@pytest.mark.parametrize("name", ["w.npz", "w.safetensors", "w.h5", "w.pth"])
def test_converting_a_file_onto_itself_keeps_every_tensor(tmp_path, weights, name):
    path = write(tmp_path / name, weights)
    result = subprocess.run(
        [sys.executable, "-m", "vgg_np", "convert", str(path), str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    again = tiny(weights=path, adaptive_pool=None)
    for layer, (kernel, bias) in weights.items():
        np.testing.assert_array_equal(again.weights[layer][0], kernel, err_msg=layer)
        np.testing.assert_array_equal(again.weights[layer][1], bias, err_msg=layer)
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


class _FailingWrites(io.FileIO):
    """A file whose writes fail after some bytes, as on a full disk or at a SIGINT."""

    def __init__(self, name, mode, error: BaseException):
        super().__init__(name, mode)
        self.error = error

    def write(self, data):
        if self.tell() + len(memoryview(data).cast("B")) > 1000:
            raise self.error
        return super().write(data)


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left"), KeyboardInterrupt()])
@pytest.mark.parametrize("name", ["w.npz", "w.safetensors", "w.h5", "w.pth"])
def test_a_writer_failing_half_way_leaves_the_old_file_whole(
    tmp_path, monkeypatch, weights, name, error
):
    path = tmp_path / name
    path.write_bytes(b"the previous weights")
    if name.endswith(".h5"):  # h5py writes through its own file driver
        create = h5py.Group.create_dataset
        calls = []

        def failing_create(self, *args, **kwargs):
            calls.append(args)
            if len(calls) > 3:
                raise error
            return create(self, *args, **kwargs)

        monkeypatch.setattr(h5py.Group, "create_dataset", failing_create)
    else:
        monkeypatch.setattr(
            _files, "open", lambda name, mode: _FailingWrites(name, mode, error), raising=False
        )
    with pytest.raises(type(error)):
        formats.write_weights(path, weights)
    monkeypatch.undo()
    assert path.read_bytes() == b"the previous weights"
    assert [p.name for p in tmp_path.iterdir()] == [name]  # no temporary file left


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
@pytest.mark.parametrize("name", ["w.npz", "w.safetensors", "w.h5", "w.pth"])
def test_written_files_get_the_permissions_of_the_umask(tmp_path, weights, name, umask):
    old = os.umask(umask)
    try:
        formats.write_weights(tmp_path / name, weights)
        (tmp_path / "plain").touch()  # what any new file gets
    finally:
        os.umask(old)
    mode = (tmp_path / name).stat().st_mode & 0o777
    assert mode == (tmp_path / "plain").stat().st_mode & 0o777 == 0o666 & ~umask
