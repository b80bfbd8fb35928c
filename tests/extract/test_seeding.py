"""Seeding a store from earlier ones (`extract(..., seed_from=...)`, `seed_store`), and
`remove_store`: across ``.npy`` and ``.zarr`` and partition sizes the rows and manifest are a
fresh run's, byte for byte; an earlier store is only read, whatever state it is in; a FIFO
never blocks. (`cached_features`' use of it: tests/train/test_features.py.)"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY_DIR
from vgg_np import VGG
from vgg_np.extract import create_store, extract, open_store, remove_store, seed_store, seeding

WEIGHTS = str(TINY_DIR / "model.h5")  # 10 classes, 32x32
SETTINGS = {"layer": "block5_pool", "batch_size": 2, "partition_size": 4, "verbose": 0}


@pytest.fixture(scope="module")
def model():
    return VGG.from_file(WEIGHTS)


@pytest.fixture
def images(tmp_path) -> list[str]:
    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    for i in range(10):
        pixels = np.random.default_rng(i).integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:02d}.png")
        paths.append(str(folder / f"img{i:02d}.png"))
    return paths


def _snapshot(out: pathlib.Path) -> dict[str, bytes]:
    """Every file of a store (its array, a Zarr folder, its manifest) and its bytes."""
    files = [out] if out.is_file() else sorted(out.rglob("*"))
    files += sorted(pathlib.Path(f"{out}.manifest").rglob("*"))
    return {str(f): f.read_bytes() for f in files if f.is_file()}


@pytest.mark.zarr
@pytest.mark.parametrize(("donor_suffix", "suffix"), [(".zarr", ".npy"), (".npy", ".zarr")])
def test_seeded_rows_and_manifest_are_a_fresh_run_s_across_formats_and_partitions(
    model, images, tmp_path, donor_suffix, suffix
):
    pytest.importorskip("zarr", reason="the optional zarr package is not installed")
    reference = tmp_path / f"reference{suffix}"
    extract(images, reference, model, **SETTINGS)
    donor = tmp_path / f"donor{donor_suffix}"
    extract(images[:7], donor, model, **{**SETTINGS, "partition_size": 3})
    before = _snapshot(donor)
    out = tmp_path / f"f{suffix}"
    result = extract(images, out, model, **SETTINGS, seed_from=[tmp_path / "none.npy", donor])
    assert (result.reused, result.written, result.already_done) == (7, 3, 0)
    np.testing.assert_array_equal(open_store(out).read()[:], open_store(reference).read()[:])
    assert open_store(out).manifest() == open_store(reference).manifest()
    assert _snapshot(donor) == before  # only read


def test_a_damaged_earlier_store_is_left_as_found(model, images, tmp_path):
    donor = tmp_path / "donor.npy"
    extract(images, donor, model, **SETTINGS)
    os.truncate(donor, donor.stat().st_size - 7)  # its own rerun would restore and repair it
    before = _snapshot(donor)
    result = extract(images, tmp_path / "f.npy", model, **{**SETTINGS, "partition_size": 5},
                     seed_from=[donor])  # fmt: skip
    assert (result.reused, result.written) == (0, 10)
    assert _snapshot(donor) == before


def test_a_fifo_in_an_earlier_store_never_blocks(model, images, tmp_path):
    donor = tmp_path / "donor.npy"
    extract(images, donor, model, **SETTINGS)
    plan = pathlib.Path(f"{donor}.manifest") / "plan.json"
    plan.unlink()
    os.mkfifo(plan)
    result = extract(images, tmp_path / "f.npy", model, **SETTINGS, seed_from=[donor])
    assert (result.reused, result.written) == (0, 10)


def test_seeding_in_blocks_of_one_row_writes_the_same_store(model, images, tmp_path, monkeypatch):
    donor = tmp_path / "donor.npy"
    extract(images[::2], donor, model, **SETTINGS)
    whole = extract(images, tmp_path / "whole.npy", model, **SETTINGS, seed_from=[donor])
    monkeypatch.setattr(seeding, "CHECK_BYTES", 1)  # a block per row: memory bounded
    rows = extract(images, tmp_path / "rows.npy", model, **SETTINGS, seed_from=[donor])
    assert (whole.reused, rows.reused, rows.written) == (5, 5, 5)
    assert (tmp_path / "whole.npy").read_bytes() == (tmp_path / "rows.npy").read_bytes()
    assert (
        open_store(tmp_path / "whole.npy").manifest()
        == open_store(tmp_path / "rows.npy").manifest()
    )


def test_only_rows_without_an_entry_are_seeded(model, images, tmp_path):
    donor = tmp_path / "donor.npy"
    extract(images, donor, model, **SETTINGS)
    store = create_store(tmp_path / "f.npy", images, model, layer="block5_pool", partition_size=4)
    assert seed_store(store, [donor]) == 10
    assert seed_store(store, [donor]) == 0  # journaled: nothing wanted any more
    result = extract(images, tmp_path / "f.npy", model, **SETTINGS, seed_from=[donor])
    assert (result.reused, result.written, result.already_done) == (0, 0, 10)
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), np.load(donor))


def test_remove_store_removes_every_file_of_a_store_and_nothing_else(model, images, tmp_path):
    extract(images, tmp_path / "a.npy", model, **SETTINGS)
    extract(images[:3], tmp_path / "b.npy", model, **SETTINGS)
    remove_store(tmp_path / "a.npy")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.npy", "b.npy.manifest", "images"]
    remove_store(tmp_path / "a.npy")  # nothing there: nothing to do
    assert open_store(tmp_path / "b.npy").pending() == []


def test_the_progress_bar_counts_the_rows_computed_not_those_copied(
    model, images, tmp_path, capsys
):
    donor = tmp_path / "donor.npy"
    extract(images[:7], donor, model, **SETTINGS)
    capsys.readouterr()
    extract(images, tmp_path / "f.npy", model, **{**SETTINGS, "verbose": 1}, seed_from=[donor])
    err = capsys.readouterr().err
    assert "0/3 images" in err and "3/3 images" in err and "/10 images" not in err
