"""Images as an adversarial user makes them: every Pillow mode, 16-bit samples, strips and
bombs, FIFOs and devices, files that break Pillow. All generated here, none committed."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import threading
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from tests.conftest import TINY_DIR as TINY
from vgg_np import cli
from vgg_np.preprocess import MAX_ASPECT_RATIO, load_image

# The IM format (the one file format that gives mode I;16L back) is deprecated in Pillow 13.
pytestmark = pytest.mark.filterwarnings("ignore:IM image format is deprecated")

WEIGHTS = str(TINY / "model.h5")  # a 10-class reduced VGG16 on 32x32 inputs
SIDE = 12  # square test images, loaded at their own size: the resize is the identity


def png(width: int, height: int, rows: bytes, *, depth: int = 8, colour: int = 2) -> bytes:
    """A PNG built by hand: IHDR with any size, `rows` (filter bytes included) as IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


# -- every Pillow mode ------------------------------------------------------------------

#: A file format that stores each mode and gives it back unchanged on opening.
FILE_FOR_MODE = {
    "1": "PNG",
    "L": "PNG",
    "LA": "PNG",
    "P": "PNG",
    "RGB": "PNG",
    "RGBA": "PNG",
    "I;16": "PNG",
    "CMYK": "TIFF",
    "YCbCr": "TIFF",
    "LAB": "TIFF",
    "PA": "TIFF",
    "I;16B": "TIFF",
    "I;16L": "IM",
    "I": "TIFF",
    "F": "TIFF",
}
#: Modes no file format Pillow writes gives back: load_image never sees them.
NO_FILE_HOLDS = {"HSV", "I;16N", "La", "RGBa", "RGBX"}


def image_in_mode(mode: str) -> tuple[Image.Image, np.ndarray | None]:
    """A SIDE x SIDE image in `mode`, and its raw 16-bit samples for the 16-bit modes."""
    rng = np.random.default_rng(sum(map(ord, mode)))
    if mode.startswith("I;16") or mode == "I":
        samples = rng.integers(0, 65536, (SIDE, SIDE), dtype=np.uint16)
        samples[0, :4] = [0, 257 * 100, 65535, 128]  # exact, round-trip and tie-free corners
        image = Image.new(mode, (SIDE, SIDE))
        image.putdata(samples.ravel().tolist())
        return image, samples
    if mode == "F":
        return Image.fromarray(rng.random((SIDE, SIDE), dtype=np.float32)), None
    rgb = Image.fromarray(rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8))
    if mode in ("LA", "RGBA", "PA"):
        alpha = rng.integers(0, 256, (SIDE, SIDE), dtype=np.uint8)
        rgba = Image.fromarray(np.dstack([np.asarray(rgb), alpha]))
        return (rgba.convert("P").convert("PA") if mode == "PA" else rgba.convert(mode)), None
    return rgb.convert(mode), None


def test_every_pillow_mode_is_either_tested_or_unreachable_from_a_file():
    assert set(FILE_FOR_MODE) | NO_FILE_HOLDS == set(Image.MODES)
    for mode in NO_FILE_HOLDS:  # if a format learns to hold one, it belongs in the table
        try:
            image = image_in_mode(mode)[0]
        except (ValueError, OSError):
            continue
        for kind in ("PNG", "TIFF", "IM"):
            buffer = io.BytesIO()
            try:
                image.save(buffer, format=kind)
            except (OSError, ValueError, KeyError):
                continue
            assert Image.open(buffer).mode != mode, (mode, kind)


@pytest.mark.parametrize("mode", sorted(FILE_FOR_MODE))
def test_each_mode_is_scaled_like_pillow_or_by_257(tmp_path, mode):
    image, samples = image_in_mode(mode)
    path = tmp_path / f"x.{FILE_FOR_MODE[mode].lower()}"
    image.save(path, format=FILE_FOR_MODE[mode])
    with Image.open(path) as stored:
        assert stored.mode == mode  # the file really holds this mode
        pillow_rgb = np.asarray(stored.convert("RGB"))
    if mode in ("I", "F"):
        with pytest.raises(
            ValueError, match=rf"{path}: .* pixels \(Pillow mode '{mode}'\) have no"
        ):
            load_image(path, size=SIDE)
        return
    pixels = load_image(path, size=SIDE)
    assert pixels.shape == (SIDE, SIDE, 3) and pixels.dtype == np.uint8
    if samples is None:
        np.testing.assert_array_equal(pixels, pillow_rgb)
    else:
        expected = np.round(samples / 257.0).astype(np.uint8)  # 65535 -> 255, 257 k -> k
        np.testing.assert_array_equal(pixels, np.dstack([expected] * 3))
        assert list(pixels[0, :4, 0]) == [0, 100, 255, 0]


def test_16_bit_grey_png_is_not_saturated(tmp_path):
    # A typical 16-bit photo: samples spread over the range. Pillow's own conversion
    # clips 99.6% of them to 255; round(v / 257) keeps the picture.
    samples = np.random.default_rng(0).integers(1000, 65535, (64, 64), dtype=np.uint16)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in samples)
    path = tmp_path / "grey16.png"
    path.write_bytes(png(64, 64, rows, depth=16, colour=0))
    with Image.open(path) as image:
        assert np.mean(np.asarray(image.convert("RGB")) == 255) > 0.99  # Pillow's clip
    pixels = load_image(path, size=64)
    np.testing.assert_array_equal(pixels[..., 1], np.round(samples / 257.0))
    assert np.mean(pixels == 255) < 0.01


def test_16_bit_rgb_png_is_within_one_level_of_exact(tmp_path):
    samples = np.random.default_rng(1).integers(0, 65536, (8, 8, 3), dtype=np.uint16)
    rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in samples)
    path = tmp_path / "rgb16.png"
    path.write_bytes(png(8, 8, rows, depth=16, colour=2))
    pixels = load_image(path, size=8)  # Pillow keeps the high byte: floor(v / 256)
    assert np.max(np.abs(pixels - np.round(samples / 257.0))) <= 1


# -- sizes: caps before decoding and before resizing --------------------------------------


@pytest.mark.parametrize("resize", ["keras", "torchvision"])
@pytest.mark.parametrize(("width", "height"), [(4000, 1), (1, 4000), (2_000_000, 1)])
def test_strips_are_refused_before_decoding(tmp_path, resize, width, height):
    # Real, complete images: under torchvision's resize a 1x4000 strip cost 1 GB and a
    # 1x2,000,000 one ended the run with a MemoryError.
    rows = (b"\x00" + bytes(3 * width)) * height
    path = tmp_path / f"strip_{width}x{height}.png"
    path.write_bytes(png(width, height, rows))
    match = rf"{path}: {width}x{height} pixels, an aspect ratio beyond {MAX_ASPECT_RATIO}:1"
    with pytest.raises(ValueError, match=match):
        load_image(path, resize=resize)


@pytest.mark.parametrize("resize", ["keras", "torchvision"])
def test_a_long_but_reasonable_picture_still_loads(tmp_path, resize):
    width = MAX_ASPECT_RATIO * 10  # exactly at the cap
    path = tmp_path / "panorama.png"
    path.write_bytes(png(width, 10, (b"\x00" + bytes(3 * width)) * 10))
    assert load_image(path, resize=resize).shape == (224, 224, 3)


def test_the_torchvision_resize_is_capped_before_it_allocates(tmp_path):
    path = tmp_path / "wide.png"
    path.write_bytes(png(1000, 10, (b"\x00" + bytes(3000)) * 10))
    # The shorter side to round(8000 * 256 / 224) = 9143 makes 914,300 x 9143 pixels.
    with pytest.raises(ValueError, match=rf"{path}: resizing to 914300x9143 .* would exceed"):
        load_image(path, size=8000, resize="torchvision")
    with pytest.raises(ValueError, match="`size` must be an int from 1 to 9459"):
        load_image(path, size=100_000)


# -- only regular files are opened -----------------------------------------------------


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    return path


def test_a_fifo_is_refused_without_waiting(fifo):
    outcome = {}

    def load():
        try:
            load_image(fifo)
        except Exception as error:
            outcome["error"] = error

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(timeout=30)
    if reader.is_alive():  # blocked in open(): release it before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("load_image waited for a writer on a FIFO")
    assert isinstance(outcome.get("error"), ValueError)
    assert str(outcome["error"]) == f"{fifo}: not a regular file (a FIFO), not read"


def test_devices_and_directories_are_refused(tmp_path):
    device = tmp_path / "zero.png"
    device.symlink_to("/dev/zero")
    with pytest.raises(ValueError, match=rf"{device}: not a regular file \(a character device\)"):
        load_image(device)
    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(ValueError, match=rf"{folder}: not a regular file \(a directory\)"):
        load_image(folder)


def test_predict_skips_a_fifo_and_a_device_in_a_directory_and_goes_on(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a.png", "z.png"):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / name)
    os.mkfifo(tmp_path / "pipe.png")
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    result = subprocess.run(
        [sys.executable, "-m", "vgg_np", "predict", str(tmp_path), "--weights", WEIGHTS],
        capture_output=True,
        text=True,
        timeout=120,  # today it never returns
    )
    assert result.returncode == 1
    assert result.stdout.count("  1. ") == 2  # a.png and z.png
    assert f"skipping {tmp_path / 'pipe.png'}: not a regular file (a FIFO)" in result.stderr
    assert f"skipping {tmp_path / 'zero.jpg'}: not a regular file (a character" in result.stderr
    assert "2 of 4 images skipped" in result.stderr


# -- whatever breaks Pillow is reported and the other images go on ------------------------


PLUGIN_ERRORS = {b"ZERO": ZeroDivisionError("division by zero"), b"MEMO": MemoryError()}


class BrokenPlugin(ImageFile.ImageFile):
    """A Pillow format whose decoder fails as third-party plugins do."""

    format = "BROKEN"

    def _open(self):
        raise PLUGIN_ERRORS[self.fp.read(8)[4:8]]


@pytest.fixture
def broken_plugin():
    Image.init()
    Image.register_open("BROKEN", BrokenPlugin, lambda prefix: prefix[:4] == b"BRKN")
    yield
    Image.OPEN.pop("BROKEN")
    Image.ID.remove("BROKEN")


def text_chunk_bomb() -> bytes:
    """A valid 2x2 PNG whose zTXt chunk inflates past Pillow's limit (Pillow: ValueError)."""
    image = png(2, 2, b"\x00" + bytes(6) + b"\x00" + bytes(6))
    data = b"k\x00\x00" + zlib.compress(bytes(10_000_000))
    ztxt = struct.pack(">I", len(data)) + b"zTXt" + data
    ztxt += struct.pack(">I", zlib.crc32(b"zTXt" + data))
    return image[:33] + ztxt + image[33:]  # after the signature and IHDR


def test_predict_reports_every_bad_image_by_name_and_classifies_the_rest(
    tmp_path, broken_plugin, capsys
):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "z.png")
    (tmp_path / "b.png").write_bytes(b"BRKNZERO")
    (tmp_path / "c.png").write_bytes(b"BRKNMEMO")
    (tmp_path / "d.png").write_bytes(text_chunk_bomb())
    (tmp_path / "e.png").write_bytes(png(1, 4000, (b"\x00" + bytes(3)) * 4000))
    code = cli.main(["predict", str(tmp_path), "--weights", WEIGHTS, "--batch-size", "2"])
    out, err = capsys.readouterr()
    assert code == 1
    assert [line for line in out.splitlines() if not line.startswith(" ")] == [
        str(tmp_path / "a.png"),
        str(tmp_path / "z.png"),
    ]
    skipped = [line for line in err.splitlines() if line.startswith("vgg-np: skipping")]
    assert [line.split()[2] for line in skipped] == [
        f"{tmp_path / name}:" for name in ("b.png", "c.png", "d.png", "e.png")
    ]
    assert "damaged or truncated image (division by zero)" in skipped[0]
    assert "damaged or truncated image (MemoryError)" in skipped[1]
    assert "MAX_TEXT_CHUNK" in skipped[2] and "aspect ratio" in skipped[3]
    assert err.splitlines()[-1] == "vgg-np: 4 of 6 images skipped"
