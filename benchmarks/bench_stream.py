"""CPU workloads: predict's peak memory, features stopping early, image streams' overlap.

Run from the repository root: ``PYTHONPATH=. python benchmarks/bench_stream.py [--quick]``.
Prints three tables:

1. peak RSS of ``predict`` (VGG16 without the top, pooling="avg", 224x224, batch 8) at
   N = 8, 64, 512, each in a fresh process, beside ``model(x)`` (the whole batch at once)
   where it fits in memory;
2. ``features(x, "block3_pool")`` against the full VGG16 (with the top), batch 4,
   alternated, medians;
3. images/s of `vgg_np.streams.ImageStream` + the model over 512 generated 640x480 JPEGs,
   decoding in the caller's thread (no overlap) or on two threads ahead of the model
   (overlap): with a reduced-width VGG11 (compute about as long as decoding, where overlap
   matters most) and, on 64 of the images, with full VGG16.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
from machine import describe  # benchmarks/machine.py: the script's folder
from PIL import Image

from vgg_np import VGG, VGG16, VGGConfig
from vgg_np.formats import Preprocessing
from vgg_np.streams import ImageStream

RSS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from vgg_np import VGG16

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024

    n, how = int(sys.argv[1]), sys.argv[2]
    model = VGG16(include_top=False, pooling="avg", seed=0)
    x = np.random.default_rng(0).standard_normal((n, 224, 224, 3)).astype(np.float32)
    start = status("VmRSS")
    y = model.predict(x, batch_size=8, verbose=0) if how == "predict" else model(x)
    print(json.dumps({"peak": status("VmHWM"), "start": start, "input": x.nbytes,
                      "output": y.nbytes}))
    """
)

NARROW = VGGConfig("vgg11-narrow", ((8,), (16,), (32, 32), (64, 64), (64, 64)), fc=(64,))


def memory_table(sizes) -> None:
    print("1. predict peak RSS, VGG16 include_top=False pooling='avg', 224x224, batch 8")
    print(f"{'N':>5} {'how':>8} {'peak RSS MB':>12} {'input MB':>9} {'peak-input MB':>14}")
    for n in sizes:
        for how in ("predict", "call"):
            if how == "call" and n > 64:
                continue  # the whole batch's activations: ~3.9 GB per 64 images
            out = subprocess.run(
                [sys.executable, "-c", RSS_SCRIPT, str(n), how],
                capture_output=True, text=True, check=True,
                env={**os.environ, "PYTHONPATH": os.getcwd()},
            )  # fmt: skip
            r = json.loads(out.stdout)
            print(f"{n:>5} {how:>8} {r['peak'] / 1e6:>12.0f} {r['input'] / 1e6:>9.0f} "
                  f"{(r['peak'] - r['input']) / 1e6:>14.0f}")  # fmt: skip


def features_table(repeat: int) -> None:
    model = VGG16(seed=0)
    x = np.random.default_rng(0).standard_normal((4, 224, 224, 3)).astype(np.float32)
    model(x)  # pack the kernels, size the buffers
    times = {"full": [], "block3_pool": []}
    for _ in range(repeat):
        for what in times:
            start = time.perf_counter()
            model(x) if what == "full" else model.features(x, "block3_pool")
            times[what].append(time.perf_counter() - start)
    full, part = (statistics.median(times[k]) for k in ("full", "block3_pool"))
    print("\n2. features(x, 'block3_pool') vs the full VGG16, batch 4, 224x224, median of", repeat)
    print(f"   full {full * 1e3:.0f} ms, block3_pool {part * 1e3:.0f} ms: "
          f"{part / full:.2f}x the time ({(1 - part / full) * 100:.0f}% saved)")  # fmt: skip


def make_jpegs(folder: str, n: int) -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:480, 0:640]
    for i in range(n):
        # Smooth colour fields with mild noise: decodes like a photo, not like pure noise.
        f = rng.uniform(0.005, 0.03, 3)
        base = 127 + 100 * np.sin(f[:, None, None] * (xx + i * 7) + f[::-1, None, None] * yy)
        noise = rng.normal(0, 8, (3, 480, 640))
        pixels = np.clip(base + noise, 0, 255).astype(np.uint8).transpose(1, 2, 0)
        Image.fromarray(pixels).save(os.path.join(folder, f"{i:04d}.jpg"), quality=90)


def stream_rate(paths, model, workers: int) -> tuple[float, float]:
    """Images/s, and the share of the wall time spent waiting for decoded images."""
    prep = Preprocessing("caffe", "keras", "benchmark")
    batches = iter(ImageStream(paths, prep, size=224, batch_size=16, workers=workers))
    start, waiting = time.perf_counter(), 0.0
    while True:
        asked = time.perf_counter()
        batch = next(batches, None)
        waiting += time.perf_counter() - asked
        if batch is None:
            break
        model(batch[1])
    wall = time.perf_counter() - start
    return len(paths) / wall, waiting / wall


def stream_table(n_images: int, n_full: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        make_jpegs(folder, n_images)
        paths = sorted(os.path.join(folder, name) for name in os.listdir(folder))
        prep = Preprocessing("caffe", "keras", "benchmark")
        start = time.perf_counter()
        batches = list(ImageStream(paths, prep, size=224, batch_size=16, workers=0))
        decode = n_images / (time.perf_counter() - start)
        narrow = VGG(NARROW, include_top=False, pooling="avg", seed=0)
        narrow(batches[0][1])
        start = time.perf_counter()
        for _, batch in batches:
            narrow(batch)
        compute = n_images / (time.perf_counter() - start)
        del batches
        print(f"\n3. image streams, {n_images} generated 640x480 JPEGs -> 224x224, batch 16")
        print(f"   decoding alone (one thread): {decode:.1f} images/s; "
              f"{NARROW.name} compute alone: {compute:.1f} images/s")  # fmt: skip
        runs = {w: [] for w in (0, 2)}
        for _ in range(2):  # alternated, best of 2
            for workers in runs:
                runs[workers].append(stream_rate(paths, narrow, workers))
        (serial, wait0), (overlapped, wait2) = max(runs[0]), max(runs[2])
        print(f"   {NARROW.name}: no overlap {serial:.1f} images/s ({wait0:.0%} of the time "
              f"waiting for images), decoding on 2 threads ahead {overlapped:.1f} images/s "
              f"({wait2:.0%} waiting): {overlapped / serial:.2f}x")  # fmt: skip
        full = VGG16(include_top=False, pooling="avg", seed=0)
        full(np.zeros((1, 224, 224, 3), np.float32))
        (serial, wait0), (overlapped, wait2) = (
            stream_rate(paths[:n_full], full, w) for w in (0, 2)
        )
        print(f"   VGG16 (no top), {n_full} images: no overlap {serial:.2f} images/s "
              f"({wait0:.1%} waiting), overlap {overlapped:.2f} images/s ({wait2:.1%} waiting): "
              f"{overlapped / serial:.2f}x")  # fmt: skip


def main() -> None:
    print(describe() + "\n")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images, smaller N")
    parser.add_argument("--streams-only", action="store_true", help="table 3 on 128 images")
    args = parser.parse_args()
    if args.streams_only:
        stream_table(128, 16)
        return
    memory_table((8, 64) if args.quick else (8, 64, 512))
    features_table(3 if args.quick else 5)
    stream_table(64 if args.quick else 512, 16 if args.quick else 64)


if __name__ == "__main__":
    main()
