"""The feature cache that grows with the folder: a picture added costs one row, never a wrong one.

`cached_features` seeds a new list's store from the earlier stores of the same base, cut,
size and preprocessing (`vgg_np.extract.seeding`). Each test compares the rows it gets
with a fresh store's, byte for byte, and the hostile ones give the earlier store every
reason to hand over a wrong row: a picture changed since, rows overwritten, a store cut
short, a plan edited, a pass killed midway, another base or preprocessing behind the
right name, a removal killed midway. A naive seeding (copy the earlier store's row of
each path) fails each of them.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_main, tiny_vgg16
from vgg_np import formats
from vgg_np.extract import create_store, open_store, remove_store, run_partition, seeding
from vgg_np.formats import Family, Preprocessing, Provenance
from vgg_np.train import features as features_module
from vgg_np.train.data import write_shapes_folder
from vgg_np.train.features import KEEP_EARLIER, cached_features

LAYER = "block5_pool"
PREP = Preprocessing("caffe", "keras", "declared by the test")


@pytest.fixture(scope="module")
def base():
    return tiny_vgg16(include_top=False, seed=0)


def picture(path: pathlib.Path, seed: int) -> str:
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


@pytest.fixture
def pictures(tmp_path) -> list[str]:
    """Twelve generated pictures; a thirteenth, ``extra.png``, is written by the tests."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    return [picture(folder / f"p{i:02d}.png", i) for i in range(12)]


def _features(paths, base, cache, prep=PREP, **options):
    return cached_features(
        paths, base, LAYER, prep, cache_dir=cache, batch_size=4, verbose=0, **options
    )


def _fresh(paths, base, tmp_path, name="fresh"):
    """The rows and manifest digests of a store made from nothing, for `paths`."""
    found = _features(paths, base, tmp_path / name)
    assert found.result.reused == 0 and found.result.written == len(paths)
    return found.take(range(len(paths))), found.digests


def _assert_same(found, paths, fresh) -> None:
    rows, digests = fresh
    got = found.take(range(len(paths)))
    assert got.tobytes() == rows.tobytes(), f"max diff {np.abs(got - rows).max()}"
    assert found.digests == digests


def _stores(cache: pathlib.Path) -> list[str]:
    return sorted(p.name for p in cache.glob("*.npy"))


def _store_of(paths, base, cache, prep=PREP) -> pathlib.Path:
    """Where `cached_features` keeps the store of `paths` (the name a donor is found by)."""
    family = features_module._family(base, LAYER, prep)
    return cache / features_module._store_name(family, paths)


def _grown(pictures, tmp_path) -> list[str]:
    return [*pictures, picture(tmp_path / "pictures" / "extra.png", 99)]


# -- growing, shrinking, bit for bit -------------------------------------------------------


def test_one_picture_added_computes_one_row_identical_to_a_fresh_pass(base, pictures, tmp_path):
    cache = tmp_path / "cache"
    first = _features(pictures, base, cache)
    assert (first.result.written, first.result.reused) == (12, 0)
    grown = _grown(pictures, tmp_path)
    again = _features(grown, base, cache)
    result = again.result
    assert (result.written, result.reused, result.already_done, result.images) == (1, 12, 0, 13)
    _assert_same(again, grown, _fresh(grown, base, tmp_path))
    assert _stores(cache) == [_store_of(grown, base, cache).name]  # the first is superseded
    third = _features(grown, base, cache)  # read back: nothing computed, nothing copied
    assert (third.result.written, third.result.reused, third.result.already_done) == (0, 0, 13)


def test_a_picture_removed_reuses_every_row_and_keeps_the_earlier_store(base, pictures, tmp_path):
    cache = tmp_path / "cache"
    _features(pictures, base, cache)
    fewer = pictures[:5] + pictures[6:]
    found = _features(fewer, base, cache)
    assert (found.result.written, found.result.reused) == (0, 11)
    _assert_same(found, fewer, _fresh(fewer, base, tmp_path))
    assert len(_stores(cache)) == 2  # the first holds a picture the second does not
    back = _features(pictures, base, cache)  # and going back costs nothing
    assert (back.result.written, back.result.reused) == (0, 0)


def test_stores_do_not_pile_up(base, pictures, tmp_path):
    cache = tmp_path / "cache"
    for left_out in range(5):  # five lists, none holding all of another's pictures
        _features(pictures[:left_out] + pictures[left_out + 1 :], base, cache)
    assert len(_stores(cache)) == 1 + KEEP_EARLIER
    last = pictures[:4] + pictures[5:]  # the most recently used are the ones kept
    assert _store_of(last, base, cache).exists()
    assert not _store_of(pictures[1:], base, cache).exists()


def test_a_concurrent_run_keeps_its_store_and_its_rows(base, pictures, tmp_path):
    cache = tmp_path / "cache"
    mine = _features(pictures, base, cache)
    rows = mine.take(range(12)).copy()
    grown = _grown(pictures, tmp_path)
    with features_module._locked(str(cache)) as held:  # another run is in its feature pass
        assert held
        _features(grown, base, cache)
        assert _store_of(pictures, base, cache).exists()  # not removed under it
    _features(grown, base, cache)  # the next run removes it
    assert not _store_of(pictures, base, cache).exists()
    assert mine.take(range(12)).tobytes() == rows.tobytes()  # mapped: still the same rows


def test_without_locks_or_when_removing_fails_nothing_is_removed_and_the_run_goes_on(
    base, pictures, tmp_path, monkeypatch
):
    cache = tmp_path / "cache"
    _features(pictures, base, cache)
    grown = _grown(pictures, tmp_path)
    monkeypatch.setattr(features_module, "fcntl", None)  # Windows: no lock, no removal
    assert _features(grown, base, cache).result.reused == 12
    assert _store_of(pictures, base, cache).exists()
    monkeypatch.undo()

    def refuse(out) -> None:
        raise PermissionError(13, "Permission denied", str(out))

    monkeypatch.setattr(features_module, "remove_store", refuse)
    found = _features(grown, base, cache)  # the superseded store cannot go: no matter
    assert (found.result.written, found.result.already_done) == (0, 13)
    assert _store_of(pictures, base, cache).exists()


# -- an earlier store that must not give its rows ------------------------------------------


def test_a_picture_changed_since_the_earlier_pass_is_computed_again(base, pictures, tmp_path):
    cache = tmp_path / "cache"
    _features(pictures, base, cache)
    picture(pathlib.Path(pictures[3]), 1000)  # same size, other pixels, a new time
    grown = _grown(pictures, tmp_path)
    found = _features(grown, base, cache)
    _assert_same(found, grown, _fresh(grown, base, tmp_path))
    assert (found.result.written, found.result.reused) == (2, 11)


def _overwrite_rows(donor: pathlib.Path) -> None:
    array = np.load(donor, mmap_mode="r+")
    array[2] = array[7]  # a plausible row, another picture's
    array.flush()


def _zero_tail(donor: pathlib.Path) -> None:
    size, row = donor.stat().st_size, np.load(donor, mmap_mode="r")[0].nbytes
    os.truncate(donor, size - 5 * row)  # cut, then regrown with zeros: the size is right
    os.truncate(donor, size)


def _other_array(donor: pathlib.Path) -> None:
    rows = np.load(donor)
    np.save(donor, rows[::-1].copy())  # the same shape and dtype, the rows in another order


def _swap_paths(donor: pathlib.Path) -> None:
    plan_path = pathlib.Path(f"{donor}.manifest") / "plan.json"
    plan = json.loads(plan_path.read_text())
    plan["paths"][0], plan["paths"][1] = plan["paths"][1], plan["paths"][0]
    plan_path.write_text(json.dumps(plan))


def _header(donor: pathlib.Path) -> None:
    rows = np.load(donor)
    np.save(donor, rows.reshape(len(rows), -1))  # the same bytes, another shape


def _cut_manifest(donor: pathlib.Path) -> None:
    manifest = pathlib.Path(f"{donor}.manifest") / "part-00000.jsonl"
    manifest.write_text(manifest.read_text()[:-40])


@pytest.mark.parametrize(
    ("damage", "reused"),
    [
        (_overwrite_rows, 11),  # row 2's bytes no longer match its checksum
        (_zero_tail, 7),  # the last five rows are zeros
        (_other_array, 0),  # no row where its entry says
        (_swap_paths, 0),  # the entries name other pictures than the plan: partition refused
        (_header, 0),  # not the array its plan describes: nothing read
        (_cut_manifest, 0),  # a manifest cut short: its partition is not trusted
    ],
)
def test_a_damaged_earlier_store_gives_no_wrong_row(base, pictures, tmp_path, damage, reused):
    cache = tmp_path / "cache"
    _features(pictures, base, cache)
    damage(_store_of(pictures, base, cache))
    grown = _grown(pictures, tmp_path)
    found = _features(grown, base, cache)
    _assert_same(found, grown, _fresh(grown, base, tmp_path))
    assert (found.result.reused, found.result.written) == (reused, 13 - reused)


class Killed(Exception):
    pass


def test_a_pass_killed_midway_gives_only_the_rows_it_journaled(base, pictures, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    donor = _store_of(pictures, base, cache)
    store = create_store(donor, pictures, base, layer=LAYER, preprocess="caffe", resize="keras")

    def kill(rows: int, skipped: list) -> None:
        raise Killed  # after the first batch of 4 is written and journaled

    with pytest.raises(Killed):
        run_partition(store, store.partitions[0], base, batch_size=4, on_batch=kill)
    array = np.load(donor, mmap_mode="r+")
    array[4:] = array[0]  # rows written but never journaled (a kill before the journal)
    array.flush()
    journal = pathlib.Path(f"{donor}.manifest") / "part-00000.journal.jsonl"
    with open(journal, "a") as log:
        entry = json.loads(journal.read_text().splitlines()[0])
        log.write(json.dumps({**entry, "row": 4, "path": pictures[4]})[:-20])  # cut by a kill
    grown = _grown(pictures, tmp_path)
    found = _features(grown, base, cache)
    _assert_same(found, grown, _fresh(grown, base, tmp_path))
    assert (found.result.reused, found.result.written) == (4, 9)


def _other_weights(base):
    other = tiny_vgg16(include_top=False, seed=1)
    return other, PREP


def _other_preprocessing(base):
    return base, Preprocessing("torch", "keras", "declared by the test")


def _other_convolutions(base):
    return tiny_vgg16(include_top=False, seed=0, conv_algorithm="reference"), PREP


@pytest.mark.parametrize("other", [_other_weights, _other_preprocessing, _other_convolutions])
def test_a_store_of_another_base_or_preprocessing_under_the_right_name_gives_nothing(
    base, pictures, tmp_path, other
):
    cache = tmp_path / "cache"
    model, prep = other(base)
    made = _store_of(pictures, model, cache, prep)
    _features(pictures, model, cache, prep)
    forged = _store_of(pictures, base, cache)  # the name our family looks for
    os.rename(made, forged)
    os.rename(f"{made}.manifest", f"{forged}.manifest")
    grown = _grown(pictures, tmp_path)
    found = _features(grown, base, cache)
    _assert_same(found, grown, _fresh(grown, base, tmp_path))
    assert (found.result.reused, found.result.written) == (0, 13)


def test_a_store_that_does_not_say_how_its_convolutions_ran_gives_nothing(base, pictures, tmp_path):
    cache = tmp_path / "cache"
    _features(pictures, base, cache)
    plan_path = pathlib.Path(f"{_store_of(pictures, base, cache)}.manifest") / "plan.json"
    plan = json.loads(plan_path.read_text())
    del plan["convolutions"]  # a store written before they were recorded
    plan_path.write_text(json.dumps(plan))
    found = _features(_grown(pictures, tmp_path), base, cache)
    assert (found.result.reused, found.result.written) == (0, 13)


@pytest.mark.parametrize("killed_at", range(4))
def test_a_removal_killed_midway_leaves_nothing_a_run_mistakes(
    base, pictures, tmp_path, monkeypatch, killed_at
):
    cache = tmp_path / "cache"
    fresh = _fresh(pictures, base, tmp_path)
    _features(pictures, base, cache)
    donor = _store_of(pictures, base, cache)
    steps = []
    removing = seeding._remove

    def remove(path: str) -> None:
        if len(steps) == killed_at:
            raise Killed
        steps.append(path)
        removing(path)

    monkeypatch.setattr(seeding, "_remove", remove)
    with pytest.raises(Killed):
        remove_store(donor)  # part-00000.jsonl, conv-plans.json, plan.json, the array
    monkeypatch.undo()
    found = _features(pictures, base, cache)
    _assert_same(found, pictures, fresh)
    assert open_store(donor).pending() == []


# -- the command -------------------------------------------------------------------------


def test_vgg_np_train_says_how_many_rows_it_reused(tmp_path):
    model = tiny_vgg16(include_top=False, seed=3)
    provenance = Provenance(
        "seeded", Family.KERAS, "caffe", "keras", (32, 32), "declared by the test"
    )
    formats.write_weights(tmp_path / "base.npz", model.weights, provenance=provenance)
    write_shapes_folder(tmp_path / "pics", 3, size=32, seed=1)
    command = ["train", tmp_path / "pics", "--weights", tmp_path / "base.npz", "--epochs", "1"]
    command += ["--cache", tmp_path / "cache", "--batch-size", "4"]
    code, out, err = run_main(*command, "-o", tmp_path / "a.npz")
    assert code == 0, err
    assert "base features: 12 computed" in out and "reused" not in out + err
    picture(tmp_path / "pics" / "disc" / "new.png", 5)
    code, out, err = run_main(*command, "-o", tmp_path / "b.npz")
    assert code == 0, err
    assert "12 rows reused from an earlier pass, 1 computed" in err
    assert "base features: 1 computed" in out and "12 reused from an earlier pass" in out
