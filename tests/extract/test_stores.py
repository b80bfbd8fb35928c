"""Extraction stores that verify themselves: a store truncated after or during a run, images
rewritten between runs, a full disk, Ctrl-C, damaged plans and journals, and file names that
are not UTF-8. Every case is made here, at run time, on the tiny 32x32 model."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import threading

import numpy as np
import pytest
from PIL import Image

from tests.conftest import HEADS_DIR, ROOT, TINY_DIR
from vgg_np import VGG
from vgg_np.cli import main
from vgg_np.extract import Store, create_store, extract, open_store, run_partition

WEIGHTS = str(TINY_DIR / "model.h5")  # 10 classes, 32x32
SETTINGS = {"layer": "block5_pool", "batch_size": 2, "partition_size": 4, "verbose": 0}


@pytest.fixture(scope="module")
def model():
    return VGG.from_file(WEIGHTS)


def picture(path, seed: int) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def images(tmp_path):
    """Ten generated pictures in tmp_path/images."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(10):
        picture(folder / f"img{i:02d}.png", i)
    return folder


@pytest.fixture
def reference(model, images, tmp_path):
    """The rows of an undisturbed run."""
    extract([images], tmp_path / "reference.npy", model, **SETTINGS)
    return np.load(tmp_path / "reference.npy")


# -- the store file ----------------------------------------------------------------------------


def test_a_store_truncated_after_a_run_is_found_and_its_rows_recomputed(
    model, images, tmp_path, reference
):
    out = tmp_path / "f.npy"
    extract([images], out, model, **SETTINGS)
    size = out.stat().st_size
    os.truncate(out, size - 3 * reference[0].nbytes)  # the last three rows are gone
    again = extract([images], out, model, **SETTINGS)
    assert (again.damaged, again.changed, again.written) == (3, 0, 3)
    assert out.stat().st_size == size
    np.testing.assert_array_equal(np.load(out), reference)
    assert extract([images], out, model, **SETTINGS).written == 0  # and now it verifies


def test_a_store_truncated_while_partitions_are_pending_is_never_regrown_with_zeros(
    model, images, tmp_path, reference
):
    out = tmp_path / "f.npy"
    store = create_store(out, [images], model, layer="block5_pool", partition_size=4)
    run_partition(store, store.partitions[0], model, batch_size=2)  # "ok" rows 0..3
    os.truncate(out, 200)  # the header and a few bytes of row 0 stay
    with pytest.raises(ValueError, match=r"f\.npy holds 200 bytes where its header says"):
        run_partition(open_store(out), store.partitions[1], model)  # a worker: refuses
    again = extract([images], out, model, **SETTINGS)
    assert (again.damaged, again.written) == (4, 10)
    np.testing.assert_array_equal(np.load(out), reference)


def test_rows_overwritten_in_place_are_found_by_their_checksums(model, images, tmp_path, reference):
    out = tmp_path / "f.npy"
    extract([images], out, model, **SETTINGS)
    rows = np.load(out, mmap_mode="r+")
    rows[5] = 0  # same size, other bytes
    rows.flush()
    del rows
    again = extract([images], out, model, **SETTINGS)
    assert (again.damaged, again.written) == (1, 1)
    np.testing.assert_array_equal(np.load(out), reference)


def test_a_store_that_is_not_the_plans_array_is_refused_in_one_line(model, images, tmp_path):
    out = tmp_path / "f.npy"
    extract([images], out, model, **SETTINGS)
    np.save(out, np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match=r"f\.npy does not hold the float32 array of shape"):
        extract([images], out, model, **SETTINGS)


# -- images that change ------------------------------------------------------------------------


def test_an_image_rewritten_between_runs_gets_its_row_recomputed(model, images, tmp_path):
    out = tmp_path / "f.npy"
    extract([images], out, model, **SETTINGS)
    picture(images / "img03.png", 99)  # other pixels under the same name
    touched = images / "img07.png"
    os.utime(touched, ns=(10**18, 10**18))  # a new time, the same bytes: kept
    again = extract([images], out, model, **SETTINGS)
    assert (again.changed, again.damaged, again.written) == (1, 0, 1)
    fresh = tmp_path / "fresh.npy"
    extract([images], fresh, model, **SETTINGS)
    np.testing.assert_array_equal(np.load(out), np.load(fresh))
    entry = open_store(out).manifest()[3]
    assert entry["image"]["size"] == (images / "img03.png").stat().st_size


def test_an_image_missing_then_present_is_computed_on_the_rerun(model, images, tmp_path):
    out = tmp_path / "f.npy"
    data = (images / "img04.png").read_bytes()
    (images / "img04.png").unlink()
    first = extract([images, images / "img04.png"], out, model, **SETTINGS)
    assert first.failed == 1
    (images / "img04.png").write_bytes(data)
    again = extract([images], out, model, **SETTINGS)
    assert (again.changed, again.written, again.failed_total) == (1, 1, 0)


# -- the disk ----------------------------------------------------------------------------------


def test_no_room_for_the_store_is_one_error_at_creation(model, images, tmp_path, monkeypatch):
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    out = tmp_path / "f.npy"
    with pytest.raises(OSError, match="cannot reserve the store's") as caught:
        create_store(out, [images], model, layer="block1_conv1")
    assert caught.value.filename == str(out) and caught.value.errno == errno.ENOSPC
    assert not out.exists()  # nothing half made: the same command works once there is room


FULL_DISK = """
import sys
from vgg_np.cli import main
sys.exit(main(["extract", sys.argv[1], "--weights", sys.argv[2], "--layer", "block1_conv1",
               "-o", sys.argv[3]]))
"""


@pytest.mark.skipif(
    not hasattr(os, "posix_fallocate") or os.geteuid() != 0 or not shutil.which("mount"),
    reason="mounting a 1 MB tmpfs needs root and mount(8) (the monkeypatched test covers it)",
)
def test_a_real_full_filesystem_fails_at_creation_never_with_sigbus(images):
    mount = pathlib.Path(tempfile.mkdtemp(prefix="vgg_np-tmpfs-"))
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1M", "tmpfs", str(mount)])
    if made.returncode != 0:
        mount.rmdir()
        pytest.skip("this container may not mount a tmpfs")
    try:
        (mount / "filler").write_bytes(bytes(900_000))  # about 120 kB left
        out = mount / "f.npy"  # 10 rows of 32x32x8 float32: 330 kB
        run = subprocess.run(
            [sys.executable, "-c", FULL_DISK, str(images), WEIGHTS, str(out)],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 1, (run.returncode, run.stderr)  # -7 is SIGBUS
        assert f"vgg-np: error: {out}: cannot reserve the store's" in run.stderr
        assert "Traceback" not in run.stderr and not out.exists()
    finally:
        subprocess.run(["umount", str(mount)], check=True)
        mount.rmdir()


# -- Ctrl-C ------------------------------------------------------------------------------------


def test_ctrl_c_keeps_every_finished_row_and_says_a_rerun_resumes(
    images, tmp_path, reference, monkeypatch, capsys
):
    out = tmp_path / "f.npy"
    write = Store._write_rows
    calls = []

    def interrupted_while_writing(self, *args):
        write(self, *args)
        calls.append(1)
        if len(calls) == 2:  # Ctrl-C just after the second batch's rows are written
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(Store, "_write_rows", interrupted_while_writing)
    command = ["extract", str(images), "--weights", WEIGHTS, "-o", str(out), "--layer",
               "block5_pool", "--batch-size", "2", "--partition-size", "4"]  # fmt: skip
    assert main(command) == 130
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f"vgg-np: interrupted: the rows of 4 of 10 images are kept in {out}: run " \
        "the same command again to resume"  # fmt: skip
    assert [e["row"] for e in open_store(out).manifest()] == [0, 1, 2, 3]
    monkeypatch.setattr(Store, "_write_rows", write)
    assert main([*command, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary["already_done"], summary["written"]) == (4, 6)
    np.testing.assert_array_equal(np.load(out), reference)


# -- damaged plans, manifests and journals -----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("plan.json", "", r"plan\.json is damaged \(empty\)"),
        ("plan.json", '{"version": "vgg_np extract 2"}', r"plan\.json is damaged \(bad layer"),
        ("plan.json", "[1, 2", r"plan\.json is damaged \("),
        ("plan.json", "[1, 2]", r"plan\.json is damaged \(not a JSON object\)"),
        ("part-00000.journal.jsonl", '{"row": 0}\n{"x"\n{"row": 1}\n', r"journal\.jsonl is dama"),
        ("part-00000.journal.jsonl", '{"no": "row"}\n', r"journal\.jsonl is damaged \(line 1"),
        ("part-00001.jsonl", "", r"part-00001\.jsonl is damaged \(0 entries for the 4 rows"),
    ],
)
def test_a_damaged_or_empty_plan_or_journal_is_one_line_naming_it(
    images, tmp_path, name, content, message, capsys
):
    out = tmp_path / "f.npy"
    command = ["extract", str(images), "--weights", WEIGHTS, "-o", str(out), "--layer",
               "block5_pool", "--partition-size", "4"]  # fmt: skip
    assert main(command) == 0
    journal = tmp_path / "f.npy.manifest" / "part-00000.jsonl"
    if "journal" in name:
        journal.unlink()  # partition 0 was running
    (tmp_path / "f.npy.manifest" / name).write_text(content)
    capsys.readouterr()
    assert main(command) == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error, error
    assert error.startswith(f"vgg-np: error: {tmp_path}")
    assert __import__("re").search(message, error), error


def test_a_fifo_where_the_plan_should_be_is_refused_at_once(model, images, tmp_path):
    out = tmp_path / "f.npy"
    extract([images], out, model, **SETTINGS)
    plan = tmp_path / "f.npy.manifest" / "plan.json"
    plan.unlink()
    os.mkfifo(plan)
    outcome = []

    def reopen():
        try:
            open_store(out)
        except ValueError as error:
            outcome.append(str(error))

    thread = threading.Thread(target=reopen, daemon=True)  # left blocked if it hangs
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "opening a FIFO plan hangs"
    assert outcome == [f"{str(plan)!r} is a FIFO, not a regular extraction plan"]


# -- file names that are not UTF-8 -------------------------------------------------------------

PREDICT = """
import sys
from vgg_np.cli import main
sys.exit(main(["predict", sys.argv[1], "--weights", sys.argv[2], "--top", "1"]))
"""


@pytest.mark.skipif(sys.platform == "darwin", reason="macOS refuses file names not in UTF-8")
def test_file_names_that_are_not_utf8_survive_predict_the_manifest_and_a_rerun(model, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    name = os.fsencode(folder) + b"/caf\xe9.png"  # Latin-1, not UTF-8
    picture(os.fsdecode(name), 0)
    picture(folder / "ok.png", 1)
    predicted = subprocess.run(
        [sys.executable, "-c", PREDICT, str(folder), WEIGHTS],
        env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONIOENCODING": "utf-8"},  # strict
        capture_output=True,
        timeout=300,
    )
    assert predicted.returncode == 0, predicted.stderr
    assert predicted.stdout.startswith(name + b"\n")  # the file's own bytes, then its class
    out = tmp_path / "f.npy"
    extract([folder], out, model, **SETTINGS)
    paths = [os.fsencode(e["path"]) for e in open_store(out).manifest()]
    assert paths == [name, os.fsencode(folder / "ok.png")]
    assert b"caf\\udce9.png" in (tmp_path / "f.npy.manifest" / "part-00000.jsonl").read_bytes()
    again = extract([folder], out, model, **SETTINGS)  # the plan's paths read back the same
    assert (again.already_done, again.written, again.changed) == (2, 0, 0)


def test_a_journal_line_cut_by_a_kill_is_dropped_and_the_rerun_appends_cleanly(
    model, images, tmp_path, reference
):
    out = tmp_path / "f.npy"
    store = create_store(out, [images], model, layer="block5_pool", partition_size=4)
    run_partition(store, store.partitions[0], model, batch_size=2)
    manifest = tmp_path / "f.npy.manifest"
    lines = (manifest / "part-00000.jsonl").read_text().splitlines(keepends=True)
    (manifest / "part-00000.jsonl").unlink()
    (manifest / "part-00000.journal.jsonl").write_text("".join(lines[:2]) + lines[2][:30])
    result = run_partition(open_store(out), store.partitions[0], model, batch_size=2)
    assert (result.already_done, result.written) == (2, 2)
    assert (manifest / "part-00000.jsonl").read_text() == "".join(lines)
    again = extract([images], out, model, **SETTINGS)
    np.testing.assert_array_equal(np.load(out), reference)
    assert again.damaged == 0


def test_an_image_only_touched_is_hashed_once_and_keeps_its_row(
    model, images, tmp_path, monkeypatch
):
    out = tmp_path / "f.npy"
    extract([images], out, model, **SETTINGS)
    os.utime(images / "img02.png", ns=(10**18, 10**18))
    from vgg_np.extract import manifest as module  # where the identity is recomputed

    hashed = []
    identity = module.file_identity
    monkeypatch.setattr(module, "file_identity", lambda p: hashed.append(p) or identity(p))
    assert extract([images], out, model, **SETTINGS).written == 0
    assert extract([images], out, model, **SETTINGS).written == 0
    assert hashed == [str(images / "img02.png")]  # the new time was recorded
    assert open_store(out).manifest()[2]["image"]["mtime_ns"] == 10**18


def test_a_rerun_with_the_same_tensors_but_another_network_is_refused(tmp_path):
    """A Keras head edited between runs (softmax -> sigmoid, the same tensors) would resume
    into the same store and mix its rows with the old ones: refused, as other layers."""
    import zipfile

    source = zipfile.ZipFile(HEADS_DIR / "keras_flatten_head.keras")
    config = json.loads(source.read("config.json"))
    config["config"]["layers"][-1]["config"]["activation"] = "sigmoid"
    edited = tmp_path / "sigmoid.keras"
    with zipfile.ZipFile(edited, "w") as target:
        for name in source.namelist():
            target.writestr(
                name, json.dumps(config) if name == "config.json" else source.read(name)
            )
    for seed in range(3):
        picture(tmp_path / f"img{seed}.png", seed)
    out = str(tmp_path / "f.npy")
    command = ["extract", str(tmp_path / "img*.png"), "-o", out, "--partition-size", "2"]
    assert main([*command, "--weights", source.filename]) == 0
    (tmp_path / "f.npy.manifest" / "part-00001.jsonl").unlink()  # to be run again
    assert main([*command, "--weights", str(edited)]) != 0
    assert np.allclose(np.load(out)[:2].sum(axis=1), 1.0)  # the softmax rows, untouched


@pytest.mark.parametrize("suffix", [".npy", ".zarr"])
def test_a_run_killed_while_its_store_was_created_leaves_nothing_a_rerun_refuses(
    model, images, tmp_path, monkeypatch, suffix
):
    # The array is made under a temporary name and renamed after its plan: killed before
    # the plan, a rerun starts over; killed between the plan and the rename, it finishes it.
    if suffix == ".zarr":
        pytest.importorskip("zarr", reason="the Zarr store needs the optional `zarr` package")
    from vgg_np.extract import store as store_module

    out = tmp_path / f"f{suffix}"
    killed = RuntimeError("killed")

    def kill(*args, **kwargs):
        raise killed

    for where in ("_write_atomically", "replace"):
        target = os if where == "replace" else store_module
        with monkeypatch.context() as patch:
            patch.setattr(target, where, kill)
            with pytest.raises(RuntimeError, match="killed"):
                create_store(out, [images], model, layer="block1_conv1")
        assert not out.exists()
        result = extract([images], out, model, layer="block1_conv1", verbose=False)
        assert result.written == 10 and np.isfinite(open_store(out).read()).all()
        shutil.rmtree(str(out) + ".manifest")
        shutil.rmtree(out) if out.is_dir() else out.unlink()


# -- how the rows are computed -------------------------------------------------------------------


def pinned_plan(path, model: VGG, change=None) -> None:
    """A plan file pinning `model`'s convolutions as they run now, after `change(name, choice)`."""
    from vgg_np.engine import cache, measure

    plans = {}
    for name, conv in model.engine.plans((32, 32, 3)).items():
        shape = (*_conv_input(model, name), conv.bias.shape[0])  # (H, W, C, O)
        choice = change(name, conv.choice) if change else conv.choice
        key = measure.layer_key(model.conv_algorithm, model.dtype, shape, conv.pool)
        plans[key] = choice.to_dict()
    path.write_text(json.dumps({"format": cache.FORMAT, "machine": {"version": cache.VERSION},
                                "plans": plans}))  # fmt: skip


def _conv_input(model: VGG, name: str) -> tuple[int, int, int]:
    from vgg_np.layers import shapes

    return next(shape for layer, shape, _ in shapes(model.engine.layers, (32, 32, 3))
                if layer.name == name)  # fmt: skip


@pytest.mark.parametrize("how", ["conv_algorithm gemm", "reference forward", "another plan"])
def test_a_resume_whose_convolutions_run_otherwise_is_refused_never_mixed(
    model, images, tmp_path, reference, how
):
    """Rows computed by another algorithm or layout differ in their last bits: a store that
    mixed them would not be what any one run writes (nor what its plan says it holds)."""
    from dataclasses import replace

    out = tmp_path / "f.npy"
    store = create_store(out, [images], model, layer="block5_pool", partition_size=4)
    run_partition(store, store.partitions[0], model, batch_size=2)
    options = {
        "conv_algorithm gemm": {"conv_algorithm": "gemm"},
        "reference forward": {"conv_algorithm": "reference"},
        "another plan": {"plan": tmp_path / "plans.json"},
    }[how]
    pinned_plan(tmp_path / "plans.json", model, lambda name, c: replace(
        c, algorithm="winograd-2") if c.algorithm == "winograd-4" else c)  # fmt: skip
    other = VGG.from_file(WEIGHTS, **options)
    x = np.random.default_rng(0).normal(0, 50, (1, 32, 32, 3)).astype(np.float32)
    assert not np.array_equal(other.features(x, "block5_pool"), model.features(x, "block5_pool"))
    refused = r"convolutions run otherwise \(.*conv_algorithm=.auto. and plan="
    with pytest.raises(ValueError, match=refused):
        create_store(out, [images], other, layer="block5_pool", partition_size=4)
    with pytest.raises(ValueError, match="convolutions run otherwise"):
        run_partition(open_store(out), store.partitions[1], other, batch_size=2)
    assert extract([images], out, model, **SETTINGS).written == 6  # the same model resumes
    np.testing.assert_array_equal(np.load(out), reference)


def test_a_resume_with_the_same_convolutions_pinned_by_a_plan_file_is_accepted(
    model, images, tmp_path, reference
):
    out = tmp_path / "f.npy"
    store = create_store(out, [images], model, layer="block5_pool", partition_size=4)
    run_partition(store, store.partitions[0], model, batch_size=2)
    pinned_plan(tmp_path / "plans.json", model)
    same = VGG.from_file(WEIGHTS, plan=tmp_path / "plans.json")
    assert extract([images], out, same, **SETTINGS).written == 6
    np.testing.assert_array_equal(np.load(out), reference)
    # The store's own plan file pins the convolutions it was started with, wherever it runs.
    (tmp_path / "f.npy.manifest" / "part-00002.jsonl").unlink()
    other = VGG.from_file(WEIGHTS, plan=tmp_path / "f.npy.manifest" / "conv-plans.json")
    assert extract([images], out, other, **SETTINGS).written == 2
    np.testing.assert_array_equal(np.load(out), reference)


@pytest.mark.parametrize(
    ("record", "message"),
    [([1, 2], "bad convolutions"), ({"block1_conv1": 3}, "bad convolutions"),
     ({"conv_algorithm": "auto", "block1_conv1": "gemm rows=2 block=8"},
      r"convolutions run otherwise \(block1_conv1 gemm rows=2 block=8 -> gemm rows=32")],
)  # fmt: skip
def test_a_plan_whose_convolutions_record_was_edited_is_refused(
    model, images, tmp_path, record, message
):
    out = tmp_path / "f.npy"
    extract([images], out, model, **SETTINGS)
    path = tmp_path / "f.npy.manifest" / "plan.json"
    plan = json.loads(path.read_text())
    path.write_text(json.dumps({**plan, "convolutions": record}))
    (tmp_path / "f.npy.manifest" / "part-00001.jsonl").unlink()  # to be run again
    with pytest.raises(ValueError, match=message):
        extract([images], out, model, **SETTINGS)
