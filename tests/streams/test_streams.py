"""Image streams: expansion, the same pixels as load_image, bad files skipped, decoding ahead."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY_DIR
from vgg_np import streams
from vgg_np.formats import Preprocessing
from vgg_np.preprocess import load_image, preprocess_input
from vgg_np.streams import ImageStream, decode_batches, image_paths

PREP = Preprocessing("caffe", "keras", "chosen by the test")
TINY_WEIGHTS = TINY_DIR / "model.h5"  # 32x32


@pytest.fixture
def folder(tmp_path):
    """Seven good images of different sizes and modes, a text file and a truncated JPEG."""
    rng = np.random.default_rng(0)
    for i in range(7):
        pixels = rng.integers(0, 256, (40 + i, 50 - i, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"img{i}.{'png' if i % 2 else 'jpg'}")
    (tmp_path / "notes.txt").write_text("not an image")
    good = (tmp_path / "img0.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(good[: len(good) // 3])
    return tmp_path


def test_image_paths_expands_directories_and_globs_and_keeps_the_rest(folder):
    (folder / "sub").mkdir()
    Image.new("RGB", (40, 40)).save(folder / "sub" / "deep.png")
    names = [os.path.relpath(p, folder) for p in image_paths([folder])]
    assert names == [
        "cut.jpg",
        "img0.jpg",
        "img1.png",
        "img2.jpg",
        "img3.png",
        "img4.jpg",
        "img5.png",
        "img6.jpg",
        "sub/deep.png",
    ]  # fmt: skip  (recursively)
    assert [os.path.relpath(p, folder) for p in image_paths([f"{folder}/**/*.png"])] == [
        "img1.png",
        "img3.png",
        "img5.png",
        "sub/deep.png",
    ]
    assert image_paths(["missing.jpg"]) == ["missing.jpg"]  # reported later, not dropped


def test_batches_hold_exactly_what_load_image_and_preprocess_input_give(folder):
    stream = ImageStream([folder], PREP, size=32, batch_size=3)
    seen = []
    for paths, batch in stream:
        expected = preprocess_input(np.stack([load_image(p, size=32) for p in paths]))
        np.testing.assert_array_equal(batch, expected)
        assert batch.dtype == np.float32
        seen += paths
    # cut.jpg (first in order) is skipped with its reason; the 7 good images come out.
    assert [os.path.basename(p) for p in seen] == [f"img{i}.{'png' if i % 2 else 'jpg'}"
                                                   for i in range(7)]  # fmt: skip
    ((path, reason),) = stream.skipped
    assert path.endswith("cut.jpg") and "damaged or truncated" in reason and path in reason


def test_bad_files_are_reported_with_their_reason_and_never_opened_if_not_regular(tmp_path):
    Image.new("RGB", (40, 40)).save(tmp_path / "good.png")
    (tmp_path / "text.png").write_text("not an image")
    os.mkfifo(tmp_path / "pipe.jpg")  # opening it would block forever
    os.symlink(tmp_path / "pipe.jpg", tmp_path / "link.jpg")
    (tmp_path / "dir.jpg").mkdir()  # named as a file by a glob; given itself, it is expanded
    items = ["pipe.jpg", "link.jpg", "dir*.jpg", "text.png", "missing.jpg", "good.png"]
    reported = []
    stream = ImageStream(
        [tmp_path / name for name in items],
        PREP,
        size=32,
        on_skip=lambda path, reason: reported.append((os.path.basename(path), reason)),
    )
    ((paths, batch),) = list(stream)
    assert [os.path.basename(p) for p in paths] == ["good.png"] and batch.shape == (1, 32, 32, 3)
    assert reported == [(os.path.basename(p), r) for p, r in stream.skipped]
    reasons = dict(reported)
    for name in ("pipe.jpg", "link.jpg", "dir.jpg"):
        assert f"{name}: not a regular file" in reasons[name]
    assert "not an image Pillow can read" in reasons["text.png"]
    assert reasons["missing.jpg"].endswith("missing.jpg: no such file")


def test_decode_batches_maps_every_input_to_a_row_or_a_reason(folder):
    paths = image_paths([folder])  # cut.jpg first
    (first, second, third) = decode_batches(paths, PREP, size=32, batch_size=3)
    assert (first.paths, first.ok, list(first.errors)) == (paths[:3], [1, 2], [0])
    assert (second.ok, second.errors, len(third.paths)) == ([0, 1, 2], {}, 2)
    assert first.batch.shape == (2, 32, 32, 3)


def test_threads_give_the_same_batches_as_no_threads(folder):
    paths = image_paths([folder])
    one = list(decode_batches(paths, PREP, size=32, batch_size=2, workers=0))
    many = list(decode_batches(paths, PREP, size=32, batch_size=2, workers=3))
    for a, b in zip(one, many, strict=True):
        assert (a.paths, a.ok, a.errors) == (b.paths, b.ok, b.errors)
        np.testing.assert_array_equal(a.batch, b.batch)


def test_the_next_batch_decodes_while_the_caller_holds_this_one(folder, monkeypatch):
    paths = image_paths([folder])[1:]  # the 7 good ones
    started = threading.Event()
    threads = set()
    decode = streams._decode

    def watched(path, prep, size, **options):
        threads.add(threading.current_thread().name)
        if path == paths[2]:  # the first image of the second batch
            started.set()
        return decode(path, prep, size, **options)

    monkeypatch.setattr(streams, "_decode", watched)
    batches = decode_batches(paths, PREP, size=32, batch_size=2, workers=2)
    next(batches)
    # Without decoding ahead this would wait for the caller's next request: never.
    assert started.wait(timeout=30)
    assert all(name.startswith("vgg_np-decode") for name in threads)
    batches.close()  # stopping early leaves no decoding thread behind
    assert not [t for t in threading.enumerate() if t.name.startswith("vgg_np-decode")]
    threads.clear()
    list(decode_batches(paths[:2], PREP, size=32, workers=0))
    assert threads == {threading.current_thread().name}


def test_for_model_asks_the_weights_and_never_guesses():
    from vgg_np import VGG, VGG16

    keras = ImageStream.for_model([], VGG.from_file(TINY_WEIGHTS))
    assert (keras.prep.mode, keras.prep.resize, keras.size) == ("caffe", "keras", 32)
    assert "keras weights" in keras.prep.reason
    seeded = VGG16(include_top=False, seed=0)
    with pytest.raises(ValueError, match="which preprocessing they expect is unknown"):
        ImageStream.for_model([], seeded)
    chosen = ImageStream.for_model([], seeded, preprocess="torch")
    assert (chosen.prep.mode, chosen.prep.resize, chosen.size) == ("torch", "torchvision", 224)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="`batch_size` must be a positive int, got 0"):
        decode_batches(["a.jpg"], PREP, batch_size=0)
    with pytest.raises(ValueError, match="`workers` must be an int >= 0, got -1"):
        ImageStream(["a.jpg"], PREP, workers=-1)


def test_links_back_up_the_tree_neither_repeat_pictures_nor_loop(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/a.png", "d/b.jpg", "d/sub/c.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    os.symlink(".", tmp_path / "d" / "loop")  # d/loop/loop/... is d again
    os.symlink("..", tmp_path / "d" / "sub" / "up")  # two loops: globbing ran for minutes
    os.symlink("a.png", tmp_path / "d" / "again.png")  # the same file under another name
    os.link(tmp_path / "d" / "b.jpg", tmp_path / "d" / "hard.jpg")
    names = ["d/a.png", "d/b.jpg", "d/sub/c.png"]
    for item in (f"{tmp_path}/d/**/*.png", f"{tmp_path}/d/**/*.*", tmp_path / "d"):
        found = [os.path.relpath(p, tmp_path) for p in image_paths([item])]
        expected = [n for n in names if n.endswith(".png")] if "png" in str(item) else names
        assert found == expected, item


def test_a_walk_stops_at_its_bound_with_a_message(tmp_path):
    for i in range(30):
        (tmp_path / f"{i:02d}.png").touch()
    assert len(image_paths([tmp_path], max_entries=30)) == 30
    with pytest.raises(ValueError, match=r"more than 29 directory entries to walk; give a smal"):
        image_paths([tmp_path], max_entries=29)
    with pytest.raises(ValueError, match="more than 29 directory entries"):
        image_paths([f"{tmp_path}/**/*.png"], max_entries=29)


def test_a_folder_in_imagefolder_layout_gives_its_pictures_by_class(tmp_path):
    for label in ("dog", "cat"):
        (tmp_path / label / "puppies").mkdir(parents=True)
        for i in (2, 1):
            Image.new("RGB", (8, 8)).save(tmp_path / label / f"{i}.png")
        Image.new("RGB", (8, 8)).save(tmp_path / label / "puppies" / "0.png")
    (tmp_path / "cat" / ".hidden.png").touch()  # names with a dot are skipped, as glob does
    found = [os.path.relpath(p, tmp_path) for p in image_paths([tmp_path])]
    assert found == ["cat/1.png", "cat/2.png", "cat/puppies/0.png",
                     "dog/1.png", "dog/2.png", "dog/puppies/0.png"]  # fmt: skip


def test_predict_on_a_folder_of_class_folders_finds_their_pictures(tmp_path, capsys):
    from vgg_np.cli import main

    for label in ("cat", "dog"):
        (tmp_path / label).mkdir()
        Image.new("RGB", (40, 40)).save(tmp_path / label / "1.png")
    assert main(["predict", str(tmp_path), "--weights", str(TINY_WEIGHTS), "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [os.path.relpath(r["image"], tmp_path) for r in records] == ["cat/1.png", "dog/1.png"]


def test_unknown_preprocessing_names_the_python_keyword_too():
    """From Python (ImageStream.for_model) the fix is `preprocess=`, not only --preprocess."""
    from vgg_np import VGG16

    model = VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match=r"preprocess= in Python, --preprocess in the command"):
        ImageStream.for_model([], model)
