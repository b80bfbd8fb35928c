"""End to end on JPEG files: decode + resize + preprocess + VGG16, vgg_np beside onnxruntime.

    python benchmarks/end_to_end.py                 # 256 generated 640x480 JPEGs, batch 8
    python benchmarks/end_to_end.py --images 64 --rounds 2

vgg_np runs its command line, ``python -m vgg_np predict DIR --weights W.npz --json``
(Keras-family weights: Pillow decoding, nearest-neighbour resize to 224x224, "caffe"
preprocessing, batches of 8), whose image stream (`vgg_np.streams.ImageStream`) decodes
the next batches on threads while the model runs. The peer does the same work with the
same Pillow calls, one batch after the other, and feeds onnxruntime 1.32 (the same
weights, exported from PyTorch), printing the same top 5 per image. Each run is one
process, startup and weight loading included, the two alternating over rounds.
Reported: median seconds per run, images per second and the ratio vgg_np / onnxruntime.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from machine import describe  # benchmarks/machine.py: the script's folder

ROOT = pathlib.Path(__file__).resolve().parent.parent
BATCH = 8

PEER = """
import json, pathlib, sys
import numpy as np
import onnxruntime
from PIL import Image

session = onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
paths, batch = sorted(pathlib.Path(sys.argv[2]).glob("*.jpg")), int(sys.argv[3])
mean = np.array([103.939, 116.779, 123.68], np.float32)  # caffe: BGR means
for start in range(0, len(paths), batch):
    pixels = []
    for path in paths[start : start + batch]:
        with Image.open(path) as image:
            image = image.convert("RGB").resize((224, 224), Image.Resampling.NEAREST)
            pixels.append(np.asarray(image, np.float32))
    x = np.stack(pixels)[..., ::-1] - mean  # RGB -> BGR, centred: (N, 224, 224, 3)
    logits = session.run(None, {name: x.transpose(0, 3, 1, 2).copy()})[0]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = e / e.sum(axis=1, keepdims=True)
    for path, row in zip(paths[start : start + batch], probabilities):
        top = np.argsort(-row, kind="stable")[:5]
        print(json.dumps({"image": str(path), "top": [[int(i), float(row[i])] for i in top]}))
"""


def make_images(folder: pathlib.Path, count: int) -> None:
    """Smooth colour gradients with noise and a disc: JPEG-typical content, seeded."""
    from PIL import Image

    rng = np.random.default_rng(0)
    rows, cols = np.mgrid[0:480, 0:640]
    for k in range(count):
        base = rng.uniform(0, 255, 3) * (rows[..., None] / 480) + rng.uniform(0, 128, 3)
        cy, cx, r = rng.uniform(0, 480), rng.uniform(0, 640), rng.uniform(40, 200)
        disc = ((rows - cy) ** 2 + (cols - cx) ** 2 < r * r)[..., None] * rng.uniform(0, 100, 3)
        noise = rng.normal(0, 12, (480, 640, 3))
        pixels = np.clip(base + disc + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"image_{k:04d}.jpg", quality=90)


def timed(command: list[str], env: dict) -> float:
    """Wall seconds of one child process."""
    start = time.perf_counter()
    out = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"{command[:3]} failed:\n{out.stderr[-2000:]}")
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from bench import prepare_files

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times: dict[str, list[float]] = {"vgg_np": [], "onnxruntime": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp)
        (folder / "images").mkdir()
        make_images(folder / "images", args.images)
        files, notes = prepare_files(folder, ["vgg_np", "onnxruntime"])
        if "onnx" not in files:
            raise SystemExit("; ".join(notes) or "onnxruntime is needed")
        commands = {
            "vgg_np": [
                *(sys.executable, "-m", "vgg_np", "predict", str(folder / "images")),
                *("--weights", files["npz"], "--json", "--batch-size", str(BATCH)),
                *("--preprocess", "caffe", "--resize", "keras"),
            ],
            "onnxruntime": [
                *(sys.executable, "-c", PEER, files["onnx"], str(folder / "images"), str(BATCH))
            ],
        }
        for _ in range(args.rounds):
            for engine, command in commands.items():
                seconds = timed(command, env)
                times[engine].append(seconds)
                print(f"{engine}: {seconds:.1f} s", file=sys.stderr)
    print(describe())
    print(f"{args.images} JPEGs 640x480 -> VGG16 224x224, batch {BATCH}, {os.cpu_count()} CPUs, "
          f"medians of {args.rounds} runs (one process each, loading included)\n")  # fmt: skip
    print("| engine | s / run | images / s | vgg_np / onnxruntime |\n|---|---|---|---|")
    ours = statistics.median(times["vgg_np"])
    for engine, values in times.items():
        s = statistics.median(values)
        ratio = f"{ours / s:.2f}" if engine == "onnxruntime" else ""
        print(f"| {engine} | {s:.1f} | {args.images / s:.1f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
