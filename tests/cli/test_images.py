"""`vgg-np predict`, `summary` and `show` through their real entry point, errors included."""

from __future__ import annotations

import json
import pathlib
import re
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT
from tests.conftest import TINY_DIR as TINY
from tests.conftest import run_vgg_np as run

WEIGHTS = str(TINY / "model.h5")  # a 10-class reduced VGG16 on 32x32 inputs
DEMO = str(ROOT / "vgg_np" / "data" / "demo.png")


def one_line_error(result, code=1) -> str:
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result.stderr


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> pathlib.Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.jpg"):
        Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)).save(folder / name)
    Image.fromarray(rng.integers(0, 256, (30, 50), dtype=np.uint8), "L").save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 4), dtype=np.uint8), "RGBA").save(
        folder / "rgba.png"
    )
    (folder / "notes.txt").write_text("not an image")
    return folder


def tiny_png(width: int, height: int) -> bytes:
    """A valid PNG header declaring any size, with almost no data (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def test_predict_files_directories_and_globs_as_json(images):
    result = run(
        "predict", str(images), str(images / "a.*"), "--weights", WEIGHTS, "--json", "--top", "3"
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    # The directory gives its 4 images (not notes.txt), the glob a.png once more.
    assert [pathlib.Path(r["image"]).name for r in lines] == [
        "a.png",
        "b.jpg",
        "gray.png",
        "rgba.png",
        "a.png",
    ]
    for record in lines:
        assert record["preprocess"] == "caffe" and record["resize"] == "keras"
        probabilities = [t["probability"] for t in record["top"]]
        assert len(probabilities) == 3 and probabilities == sorted(probabilities, reverse=True)
        assert record["top"][0]["label"].startswith("class ")  # a 10-class model has no names
    assert "preprocessing 'caffe', resize 'keras'" in result.stderr


def test_predict_text_output_and_batches_agree(images):
    one = run(
        "predict",
        str(images / "a.png"),
        str(images / "b.jpg"),
        "--weights",
        WEIGHTS,
        "--batch-size",
        "1",
    )
    two = run("predict", str(images / "a.png"), str(images / "b.jpg"), "--weights", WEIGHTS)
    assert one.returncode == two.returncode == 0
    assert one.stdout == two.stdout
    assert "  1. class " in one.stdout


def test_one_bad_image_is_reported_and_skipped(images, tmp_path):
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes((images / "b.jpg").read_bytes()[:200])
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(tiny_png(20_000, 20_000))
    not_image = images / "notes.txt"
    paths = [images / "a.png", truncated, bomb, not_image, images / "b.jpg"]
    result = run("predict", *map(str, paths), "--weights", WEIGHTS)
    stderr = one_line_error(result)
    assert result.stdout.count("  1. ") == 2  # a.png and b.jpg still predicted
    assert f"skipping {truncated}: " in stderr and "damaged or truncated image" in stderr
    assert f"skipping {bomb}: " in stderr and "decompression bomb" in stderr
    assert f"skipping {not_image}: not an image" in stderr
    assert stderr.count("skipping") == 3 and stderr.count(str(truncated)) == 1


def test_progress_bar_on_request(images):
    result = run("predict", str(images), "--weights", WEIGHTS, "--progress")
    assert result.returncode == 0
    assert "] 4/4" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["predict", DEMO, "--weights", str(TINY / "keras_activations.npz")],
            "keys must be '<layer>/kernel'",
        ),
        (
            ["predict", DEMO, "--weights", str(TINY / "applications_notop.h5")],
            "has no classifier",
        ),
        (["predict", "nothing*.png", "--weights", WEIGHTS], "no images found"),
    ],
)
def test_runtime_errors_are_one_line(tmp_path, args, message):
    stderr = one_line_error(run(*args, cwd=tmp_path))
    assert message in stderr and len(stderr.strip().splitlines()) == 1


def test_unknown_weights_format(tmp_path, images):
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"definitely not weights")
    stderr = one_line_error(run("predict", str(images / "a.png"), "--weights", str(weights)))
    assert "unknown weights format" in stderr


@pytest.mark.parametrize(
    "args",
    [
        ["predict", "a.png"],  # --weights is required
        ["predict", "a.png", "--weights", "w.h5", "--top", "0"],
        ["summary", "--model", "vgg17"],
        ["show", "-o", "x.png"],  # no image and no --filters
    ],
)
def test_usage_errors_exit_2(args):
    result = run(*args)
    assert result.returncode == 2 and "usage:" in result.stderr and "Traceback" not in result.stderr


def test_summary_of_each_member():
    result = run("summary", "--model", "vgg19")
    assert result.returncode == 0 and "143,667,240 = " in result.stdout
    result = run("summary", "--model", "vgg11", "--input-shape", "64", "96", "--no-top")
    assert re.search(r"block5_pool\s+2x3x512\s", result.stdout)
    assert "fc1" not in result.stdout.split("parameters:")[0]


def test_show_feature_maps_and_filters(tmp_path, images):
    out = tmp_path / "maps.png"
    result = run("show", str(images / "a.png"), "--layer", "block1_conv2", "-o", str(out))
    assert result.returncode == 0, result.stderr
    with Image.open(out) as picture:
        # 64 maps of 224x224 in an 8x8 grid with 2-pixel gaps.
        assert picture.size == (8 * 226 + 2, 8 * 226 + 2) and picture.mode == "L"
    out = tmp_path / "filters.png"
    result = run("show", "--filters", "--weights", WEIGHTS, "-o", str(out))
    assert result.returncode == 0, result.stderr
    with Image.open(out) as picture:
        assert picture.mode == "RGB" and picture.size == (8 * 38 + 2, 38 + 2)  # 8 filters


def test_show_to_a_missing_directory_is_a_usage_error(tmp_path, images):
    target = tmp_path / "no" / "dir" / "x.png"
    stderr = one_line_error(run("show", str(images / "a.png"), "-o", str(target)), code=2)
    assert f"{target}: the directory {target.parent} does not exist" in stderr
