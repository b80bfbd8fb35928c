"""`vgg-np train` on a generated folder: the feature pass and the epoch times, as a user runs it.

    python benchmarks/fine_tune_epoch.py                          # 2000 pictures, 224x224
    python benchmarks/fine_tune_epoch.py --pictures 2000 --size 64 --unfreeze 1

A folder of ``--pictures`` generated pictures (`vgg_np.train.data.write_shapes_folder`:
four classes, as many of each), a seeded VGG16 base at that input size (standing in for
ImageNet's weights: the same work), then the command itself, ``vgg-np train DIR
--weights base.npz -o model.npz --epochs E --preprocess torch --json`` with the default
head (``gap,dense:256,dropout:0.5``), Adam and batches of 32, in a fresh feature cache.
Reported from its JSON: the one-time feature pass (the base through the engine, every
picture), each epoch (training on 80% of the pictures, validation on the rest), the whole
command's time and peak memory; with the machine (CPU, BLAS, load) before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent


def machine_header() -> str:
    """The CPU, BLAS kernels and load this ran on (benchmarks/machine.py)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from machine import describe

    return describe()


def prepare(work: pathlib.Path, pictures: int, size: int) -> tuple[pathlib.Path, pathlib.Path]:
    """Write the folder and the base's weights; return their paths."""
    from vgg_np import VGG16
    from vgg_np.train.data import write_shapes_folder

    folder = work / "pictures"
    write_shapes_folder(folder, pictures // 4, size=size, seed=0)
    base = work / "base.npz"
    VGG16(include_top=False, input_shape=(size, size, 3), seed=0).save_weights(base)
    return folder, base


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pictures", type=int, default=2000)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--unfreeze", type=int, default=0, help="blocks trained too")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        folder, base = prepare(work, args.pictures, args.size)
        command = [sys.executable, "-m", "vgg_np", "train", str(folder), "--weights", str(base)]
        command += ["-o", str(work / "model.npz"), "--epochs", str(args.epochs)]
        command += ["--preprocess", "torch", "--json", "--unfreeze", str(args.unfreeze)]
        env = {**os.environ, "VGG_NP_CACHE": str(work / "cache"), "PYTHONPATH": str(ROOT)}
        before = machine_header()
        start = time.perf_counter()
        out = subprocess.run(command, capture_output=True, text=True, env=env)
        seconds = time.perf_counter() - start
        if out.returncode != 0:
            raise SystemExit(f"vgg-np train failed:\n{out.stderr[-3000:]}")
        result = json.loads(out.stdout[out.stdout.index("{") :])
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"before: {before}\nafter:  {machine_header()}")
    counts = result["counts"]
    train = sum(counts["train"].values())
    held = sum(counts["validation"].values())
    print(f"vgg-np train: {args.pictures} pictures at {args.size}x{args.size} ({train} training, "
          f"{held} validation), --unfreeze {args.unfreeze}, {args.epochs} epochs\n")  # fmt: skip
    print("| what | seconds |")
    print("|---|---|")
    rows = result["feature_rows"]["computed"]
    print(f"| feature pass ({rows} pictures) | {result['feature_seconds']:.1f} "
          f"({rows / result['feature_seconds']:.1f} pictures/s) |")  # fmt: skip
    for epoch, took in zip(result["epoch"], result["history"]["seconds"], strict=True):
        print(f"| epoch {epoch} | {took:.1f} |")
    print(f"| the whole command | {seconds:.1f} (peak memory {peak:.0f} MB) |")
    accuracy = ", ".join(f"{a:.3f}" for a in result["history"]["val_accuracy"])
    print(f"\nvalidation accuracy by epoch: {accuracy}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
