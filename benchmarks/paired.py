"""VGG16 inference beside its peers in paired turns: the comparison for a busy machine.

    python benchmarks/paired.py                     # batch 1 and 8, 15 turns each
    python benchmarks/paired.py --batch 1 --turns 30 --dtype float64

`bench.py` runs each engine in its own process one after the other; when other jobs come
and go on the machine, the engines meet different loads and a ratio of medians can be off
by 2x. Here every engine is loaded once in its own process (the same files and loaders as
`bench.py`) and they take turns, one forward pass each, in a rotating order (A B C, B C A,
C A B, ...), with a pause between turns so that no thread pool is still spinning when the
next engine starts. Each turn gives one ratio vgg_np / peer measured within a second or
two; reported are the median time per engine and the median and quartiles of the per-turn
ratios. vgg_np's plan is measured once first, as in `bench.py` (``--plan``).
"""

from __future__ import annotations

import argparse
import json
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
PAUSE = 0.05  # seconds between turns: longer than any pool's spin-wait


def serve(engine: str, batch: int, files: dict, dtype: str) -> None:
    """Load one engine, then time one pass per line read from stdin."""
    from bench import load_engine, peak_rss_mb

    run, _ = load_engine(engine, files, dtype)
    x = np.random.default_rng(batch).standard_normal((batch, 224, 224, 3)).astype(dtype)
    for _ in range(2):
        run(x)
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start = time.perf_counter()
        run(x)
        print(time.perf_counter() - start, flush=True)
    print(json.dumps({"peak_rss_mb": peak_rss_mb()}), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--turns", type=int, default=15)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument(
        "--plan", default="measure", help="vgg_np's plan: measure (default), default, FILE.json"
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    if args.serve:
        serve(args.serve, args.batch[0], json.loads(args.files), args.dtype)
        return 0
    from bench import ENGINES, available, plan_table, prepare_files, run_worker

    engines = [e for e in ENGINES if available(e)]
    if args.dtype == "float64" and "onnxruntime" in engines:
        engines.remove("onnxruntime")  # no float64 convolution
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    print(describe())
    print(f"VGG16 224x224 {args.dtype}, {os.cpu_count()} CPUs, {args.turns} paired turns "
          "per batch, each engine in its own process\n")  # fmt: skip
    peers = [e for e in engines if e != "vgg_np"]
    print(
        "| batch | engine | ms / batch (median) | peak RSS (MB) | "
        + " | ".join(f"vgg_np / {p} (median, quartiles)" for p in peers)
        + " |\n|---|---|---|---|"
        + "---|" * len(peers)
    )
    with tempfile.TemporaryDirectory() as tmp:
        files, _ = prepare_files(pathlib.Path(tmp), engines)
        engines = [e for e in engines if e == "vgg_np" or "pth" in files]
        # vgg_np's plan, measured once into a fresh cache (as bench.py does), then read
        env.update(VGG_NP_PLAN=str(args.plan), VGG_NP_CACHE=str(pathlib.Path(tmp) / "plans"))
        plan = run_worker(["plan", "--files", json.dumps(files), "--dtype", args.dtype], env)
        for batch in args.batch:
            workers = {}
            for engine in engines:
                command = [sys.executable, __file__, "--serve", engine, "--batch", str(batch)]
                command += ["--files", json.dumps(files), "--dtype", args.dtype]
                workers[engine] = subprocess.Popen(
                    command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
                )
                assert workers[engine].stdout.readline().strip() == "ready", engine
            times: dict[str, list[float]] = {e: [] for e in engines}
            for turn in range(args.turns):
                order = engines[turn % len(engines) :] + engines[: turn % len(engines)]
                for engine in order:
                    time.sleep(PAUSE)
                    workers[engine].stdin.write("run\n")
                    workers[engine].stdin.flush()
                    times[engine].append(float(workers[engine].stdout.readline()))
            rss = {}
            for engine, process in workers.items():
                process.stdin.write("quit\n")
                process.stdin.flush()
                rss[engine] = json.loads(process.stdout.readline())["peak_rss_mb"]
                process.wait()
            for engine in engines:
                cells = []
                for peer in peers:
                    if engine != "vgg_np":
                        cells.append("")
                        continue
                    ratios = [a / b for a, b in zip(times["vgg_np"], times[peer], strict=True)]
                    q1, median, q3 = statistics.quantiles(ratios, n=4)
                    cells.append(f"{median:.2f} ({q1:.2f}-{q3:.2f})")
                ms = statistics.median(times[engine]) * 1e3
                print(
                    f"| {batch} | {engine} | {ms:.0f} | {rss[engine]:.0f} | "
                    + " | ".join(cells)
                    + " |"
                )
    print("\n" + plan_table(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main())
