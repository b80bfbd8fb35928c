"""Extraction to disk: rows equal to the model's, bad images recorded, resume after a kill,
idempotent partitions written concurrently, Zarr, and the `vgg-np extract` command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from tests.conftest import PROB_ATOL, ROOT, TINY_DIR
from vgg_np import VGG, VGG11
from vgg_np.extract import create_store, extract, open_store, run_partition, top_classes
from vgg_np.preprocess import load_image, preprocess_input

F32 = np.dtype(np.float32)
WEIGHTS = str(TINY_DIR / "model.h5")  # 10 classes, 32x32


@pytest.fixture(scope="module")
def model():
    # Probabilities: the saved Keras model itself ends in logits (its config says linear).
    return VGG.from_file(WEIGHTS, classifier_activation="softmax")


@pytest.fixture
def images(tmp_path):
    """Eleven good pictures and one truncated JPEG (sorted 5th) in tmp_path/images."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(11):
        pixels = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:02d}.png")
    good = (folder / "img00.png").read_bytes()
    (folder / "img04b.png").write_bytes(good[:100])
    return folder


def expected_rows(model, paths, layer):
    pixels = np.stack([load_image(p, size=32) for p in paths])
    return model.predict(preprocess_input(pixels), batch_size=1, verbose=0, layer=layer)


def test_rows_manifest_and_bad_images(model, images, tmp_path):
    skipped = []
    result = extract([images], tmp_path / "f.npy", model, layer="block5_pool", top=3,
                     batch_size=3, partition_size=4, verbose=0,
                     on_skip=lambda p, r: skipped.append(p))  # fmt: skip
    assert (result.images, result.written, result.failed, result.failed_total) == (12, 12, 1, 1)
    rows = np.load(tmp_path / "f.npy")
    manifest = open_store(tmp_path / "f.npy").manifest()
    paths = sorted(str(p) for p in images.iterdir())
    assert [e["path"] for e in manifest] == paths
    assert [e["row"] for e in manifest] == list(range(12))
    bad = paths.index(str(images / "img04b.png"))
    assert skipped == [paths[bad]]
    assert manifest[bad]["status"] == "error" and "damaged or truncated" in manifest[bad]["reason"]
    assert np.isnan(rows[bad]).all()
    good = [i for i in range(12) if i != bad]
    assert all(manifest[i]["status"] == "ok" and "reason" not in manifest[i] for i in good)
    # The convolutions are batch-invariant, so one image at a time gives the same bits.
    expected = expected_rows(model, [paths[i] for i in good], "block5_pool")
    np.testing.assert_array_equal(rows[good], expected)
    scores = expected_rows(model, [paths[good[0]]], "predictions")[0]
    top = manifest[good[0]]["top"]
    assert [t[:2] for t in top] == [list(t[:2]) for t in top_classes(scores, 3)]
    expected_scores = np.sort(scores)[::-1][:3]
    np.testing.assert_allclose([t[2] for t in top], expected_scores, rtol=0, atol=PROB_ATOL[F32])
    assert [f.name for f in sorted((tmp_path / "f.npy.manifest").iterdir())] == [
        "conv-plans.json",
        "part-00000.jsonl",
        "part-00001.jsonl",
        "part-00002.jsonl",
        "plan.json",
    ]


def test_a_rerun_skips_what_is_done_and_changes_nothing(model, images, tmp_path):
    out = tmp_path / "f.npy"
    extract([images], out, model, layer="block5_pool", partition_size=5, verbose=0)
    before = out.read_bytes(), (tmp_path / "f.npy.manifest" / "part-00001.jsonl").read_bytes()
    again = extract([images], out, model, layer="block5_pool", partition_size=5, verbose=0)
    assert (again.written, again.already_done, again.failed_total) == (0, 12, 1)
    after = out.read_bytes(), (tmp_path / "f.npy.manifest" / "part-00001.jsonl").read_bytes()
    assert before == after


def test_a_partition_run_twice_writes_the_same_bytes(model, images, tmp_path):
    out = tmp_path / "f.npy"
    store = create_store(out, [images], model, layer="fc1", top=2, partition_size=5)
    run_partition(store, store.partitions[1], model, batch_size=2)
    part = tmp_path / "f.npy.manifest" / "part-00001.jsonl"
    first = out.read_bytes(), part.read_bytes()
    assert [p.index for p in store.pending()] == [0, 2]
    assert run_partition(store, store.partitions[1], model).written == 0  # complete: skipped
    part.unlink()  # as if the first run had died just before marking it complete
    result = run_partition(store, store.partitions[1], model, batch_size=2)
    assert (result.written, result.failed) == (5, 1)
    assert (out.read_bytes(), part.read_bytes()) == first  # same batches: same bits
    # Only rows [5, 10) were written.
    rows = np.load(out)
    assert not rows[:5].any() and not rows[10:].any() and np.isfinite(rows[5:10]).sum() > 0


KILLED_RUN = textwrap.dedent(
    """
    import os, signal, sys
    from vgg_np import VGG
    from vgg_np.extract import extract

    model = VGG.from_file(sys.argv[1])
    calls = 0
    activations = model.activations

    def dies_in_the_fourth_batch(*args, **kwargs):
        global calls
        calls += 1
        if calls == 4:
            os.kill(os.getpid(), signal.SIGKILL)  # a batch in flight, its rows unwritten
        return activations(*args, **kwargs)

    model.activations = dies_in_the_fourth_batch
    extract([sys.argv[2]], sys.argv[3], model, layer="fc1", batch_size=2, partition_size=8,
            verbose=0)
    """
)


def test_a_killed_run_loses_only_the_batch_in_flight(model, images, tmp_path):
    out = tmp_path / "f.npy"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, WEIGHTS, str(images), str(out)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=300,
    )
    assert killed.returncode == -9, killed.stderr
    store = open_store(out)
    # Three batches of two images made it to the journal of partition 0, nothing else.
    assert [e["row"] for e in store.manifest()] == list(range(6))
    assert [p.index for p in store.pending()] == [0, 1]
    resumed = extract([images], out, model, layer="fc1", batch_size=2, partition_size=8, verbose=0)
    assert (resumed.already_done, resumed.written) == (6, 6)
    reference = tmp_path / "reference.npy"
    extract([images], reference, model, layer="fc1", batch_size=2, partition_size=8, verbose=0)
    assert out.read_bytes() == reference.read_bytes()
    for name in ("part-00000.jsonl", "part-00001.jsonl"):
        assert (tmp_path / "f.npy.manifest" / name).read_bytes() == (
            tmp_path / "reference.npy.manifest" / name
        ).read_bytes()
    assert not list((tmp_path / "f.npy.manifest").glob("*journal*"))


PARTITION_WORKER = textwrap.dedent(
    """
    import sys
    from vgg_np import VGG
    from vgg_np.extract import open_store, run_partition

    store = open_store(sys.argv[2])
    model = VGG.from_file(sys.argv[1])
    for index in map(int, sys.argv[3:]):
        run_partition(store, store.partitions[index], model, batch_size=3)
    """
)


def test_partitions_written_by_concurrent_processes_give_the_local_result(model, images, tmp_path):
    out = tmp_path / "f.npy"
    create_store(out, [images], model, layer="fc1", partition_size=3)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", PARTITION_WORKER, WEIGHTS, str(out), *indices], env=env
        )
        for indices in (["3", "0"], ["1", "2"])
    ]
    assert [w.wait(timeout=300) for w in workers] == [0, 0]
    reference = tmp_path / "reference.npy"
    extract([images], reference, model, layer="fc1", partition_size=3, verbose=0)
    assert out.read_bytes() == reference.read_bytes()
    assert open_store(out).manifest() == open_store(reference).manifest()


def test_reopening_with_other_settings_is_refused(model, images, tmp_path):
    out = tmp_path / "f.npy"
    extract([images / "img0*.png"], out, model, layer="fc1", verbose=0)
    with pytest.raises(ValueError, match=r"layer 'fc1' \(now 'block5_pool'\)"):
        create_store(out, [images / "img0*.png"], model, layer="block5_pool")
    with pytest.raises(ValueError, match=r"other images \(1 added, 0 removed\)"):
        create_store(out, [images], model, layer="fc1")
    other = VGG.from_file(WEIGHTS)
    other.set_weights({k: (w * 2, b) for k, (w, b) in other.weights.items()})
    with pytest.raises(ValueError, match="other weights or layers; choose another output"):
        create_store(out, [images / "img0*.png"], other, layer="fc1", preprocess="caffe")
    store = open_store(out)
    (tmp_path / "f.npy.manifest" / "part-00000.jsonl").unlink()  # to be run again
    with pytest.raises(ValueError, match="not the ones the store was started with"):
        run_partition(store, store.partitions[0], other)
    (tmp_path / "plain.npy").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="is not an extraction"):
        create_store(tmp_path / "plain.npy", [images], model)
    with pytest.raises(ValueError, match=r"`out` must end in \.npy or \.zarr, got"):
        create_store(tmp_path / "f.h5", [images], model)
    with pytest.raises(ValueError, match="`layer` must be one of this model's layers"):
        create_store(tmp_path / "g.npy", [images], model, layer="fc7")
    with pytest.raises(ValueError, match="no images found in"):
        create_store(tmp_path / "g.npy", [tmp_path / "none*.jpg"], model)
    with pytest.raises(ValueError, match="top classes need a model with its classifier"):
        base = VGG11(include_top=False, input_shape=(32, 32, 3), seed=0)
        create_store(tmp_path / "h.npy", [images], base, top=1, preprocess="caffe").check_model(
            base
        )


@pytest.mark.zarr
def test_zarr_store_holds_the_same_rows_in_partition_aligned_chunks(model, images, tmp_path):
    zarr = pytest.importorskip("zarr", reason="the optional zarr package is not installed")
    extract([images], tmp_path / "f.npy", model, layer="block4_pool", partition_size=6, verbose=0)
    result = extract(
        [images], tmp_path / "f.zarr", model, layer="block4_pool", partition_size=6, verbose=0
    )
    array = zarr.open_array(tmp_path / "f.zarr", mode="r")
    assert array.shape == result.shape == (12, 2, 2, 32) and 6 % array.chunks[0] == 0
    np.testing.assert_array_equal(array[:], np.load(tmp_path / "f.npy"))
    assert open_store(tmp_path / "f.zarr").manifest() == open_store(tmp_path / "f.npy").manifest()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vgg_np", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_the_extract_command_resumes_and_summarises_in_json(images, tmp_path):
    args = ["extract", str(images), "--weights", WEIGHTS, "--layer", "fc1", "-o",
            str(tmp_path / "f.npy"), "--json", "--batch-size", "4"]  # fmt: skip
    first = run_cli(*args)
    assert first.returncode == 1, first.stderr  # one picture skipped: exit 1, as predict
    summary = json.loads(first.stdout)
    assert (summary["written"], summary["failed"], summary["shape"]) == (12, 1, [12, 48])
    assert "images_per_second" in summary and summary["preprocessing"]["mode"] == "caffe"
    assert "skipping" in first.stderr and "img04b.png" in first.stderr
    second = json.loads(run_cli(*args).stdout)
    assert (second["written"], second["already_done"], second["failed_total"]) == (0, 12, 1)
    bad = run_cli("extract", str(images), "--weights", WEIGHTS, "--layer", "fc9", "-o", "x.npy")
    assert bad.returncode == 1 and "`layer` must be one of" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_predict_writes_probabilities_with_top_classes(images, tmp_path):
    out = tmp_path / "p.npy"
    result = run_cli("predict", str(images), "--weights", WEIGHTS, "-o", str(out), "--top", "2")
    assert result.returncode == 1, result.stderr  # one picture skipped
    probabilities = np.load(out)
    ok = ~np.isnan(probabilities[:, 0])
    np.testing.assert_allclose(probabilities[ok].sum(axis=1), 1, rtol=1e-6)
    entries = open_store(out).manifest()
    assert sum(e["status"] == "ok" for e in entries) == 11 and len(entries[0]["top"]) == 2
