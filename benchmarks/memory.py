"""Peak memory of VGG16 inference by batch size, each batch in a fresh process.

    python benchmarks/memory.py                      # 224x224, include_top=False, batch 1 8 64
    python benchmarks/memory.py --batch 1 8 --size 96 --top

Each measurement runs in its own Python process (peak RSS only grows, so one process per
batch): build the model (seeded weights, nothing read from disk), draw a random batch,
run one forward pass. Reported: the peak resident memory of the whole process
(``ru_maxrss``), the memory resident just before the call (model and input), what the
call added at its peak and what stays after it (the output still held), and the
output's size. The engine's promise: what a call adds at a large batch stays within
what a batch of `vgg_np.engine.Engine.slice_images` images adds, plus the returned array.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys

from machine import describe  # benchmarks/machine.py: the script's folder

ROOT = pathlib.Path(__file__).resolve().parent.parent


def current_rss_mb() -> float:
    """Resident memory now (VmRSS), in MB."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(batch: int, size: int, top: bool) -> dict:
    import numpy as np

    import vgg_np

    shape = (size, size, 3)
    model = vgg_np.VGG16(include_top=top, seed=0, input_shape=shape if not top else None)
    x = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
    before = current_rss_mb()
    y = model(x)
    return {
        "batch": batch,
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "before_mb": before,
        "after_mb": current_rss_mb(),
        "output_mb": y.nbytes / 2**20,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--top", action="store_true", help="include the classifier")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.batch[0], args.size, args.top)))
        return 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    print(describe())
    print(
        f"VGG16 {args.size}x{args.size}, include_top={args.top}, one process per batch\n\n"
        "| batch | peak RSS (MB) | RSS before the call | peak - before | after - before "
        "(output held) | output (MB) |\n|---|---|---|---|---|---|"
    )
    for batch in args.batch:
        command = [sys.executable, __file__, "--worker", "--batch", str(batch)]
        command += ["--size", str(args.size)] + (["--top"] if args.top else [])
        out = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if out.returncode != 0:
            raise SystemExit(f"batch {batch} failed:\n{out.stderr}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"| {batch} | {r['peak_mb']:.0f} | {r['before_mb']:.0f} | "
            f"{r['peak_mb'] - r['before_mb']:.0f} | {r['after_mb'] - r['before_mb']:.0f} | "
            f"{r['output_mb']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
