"""From one process to a Dask LocalCluster: images/s and memory of `vgg-np extract`.

Run from the repository root: ``PYTHONPATH=. python benchmarks/bench_distributed.py``
(needs the ``dask`` extra). Writes VGG16's seeded weights (``.npz``, 553 MB) and
``--images`` generated 640x480 JPEGs to a temporary directory, then extracts ``fc2``
(224x224, batch 8, partitions of 16 images) with each configuration in a fresh process,
alternating configurations over ``--rounds``:

- ``local``: `vgg_np.extract.extract` in one process, the engine on every CPU;
- ``N workers x T threads``: `vgg_np.distributed.extract_on_cluster` on a LocalCluster
  of N processes (one Dask thread each), T engine threads per process.

Every process first extracts a few images to a throwaway store (so each worker has loaded
the weights and planned its layers), then times the full run. Reported: the median
images/s of the timed runs, the CPU seconds per image they used (client and workers:
the overhead at equal cores, less sensitive than images/s to other load on the machine),
the one-time costs (cluster start; the warm-up, which includes each worker reading the
weights), the peak RSS of the client and of each worker, and whether the rows equal the
local run's bit for bit.
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

from vgg_np import VGG16

RUN = textwrap.dedent(
    """
    import json, os, resource, sys, time
    from vgg_np.distributed import connect, extract_on_cluster, load_model
    from vgg_np.extract import extract

    def cpu_seconds():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    images, weights, out, workers, threads = sys.argv[1:6]
    workers, threads = int(workers), int(threads)
    settings = dict(layer="fc2", batch_size=8, preprocess="caffe", verbose=0)
    options = {"threads": threads}
    names = sorted(os.listdir(images))
    warm = [os.path.join(images, n) for n in names[: 2 * max(workers, 1)]]
    report = {}
    if workers == 0:
        model = load_model(weights, options)
        extract(warm, out + ".warm.npy", model, partition_size=1, **settings)
        cpu = cpu_seconds()
        result = extract([images], out, model, partition_size=16, **settings)
        report["cpu_s"] = cpu_seconds() - cpu
        workers_rss = []
    else:
        start = time.perf_counter()
        with connect(workers=workers) as client:
            report["cluster_start_s"] = time.perf_counter() - start
            start, statuses = time.perf_counter(), []
            extract_on_cluster(warm, out + ".warm.npy", weights, client, options=options,
                               partition_size=1, on_task=statuses.append, **settings)
            report["warm_up_s"] = time.perf_counter() - start
            report["warmed_workers"] = len({s["pid"] for s in statuses})
            cpu = cpu_seconds(), sum(client.run(cpu_seconds).values())
            result = extract_on_cluster([images], out, weights, client, options=options,
                                        partition_size=16, on_task=statuses.append, **settings)
            report["cpu_s"] = (cpu_seconds() - cpu[0]
                               + sum(client.run(cpu_seconds).values()) - cpu[1])
            peaks = {}
            for s in statuses:
                peaks[s["pid"]] = max(peaks.get(s["pid"], 0), s["peak_rss"])
            workers_rss = sorted(peaks.values())
    report.update(images_per_s=result.images_per_second, written=result.written,
                  client_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  workers_rss=workers_rss)
    print(json.dumps(report))
    """
)


def configurations(cpus: int) -> list[tuple[str, int, int]]:
    """(label, worker processes (0: local), engine threads per process)."""
    return [
        ("local", 0, cpus),
        (f"1 worker x {cpus} threads", 1, cpus),
        (f"{cpus} workers x 1 thread", cpus, 1),
        (f"{cpus} workers x {cpus} threads", cpus, cpus),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0))
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        images = os.path.join(tmp, "images")
        os.mkdir(images)
        rng = np.random.default_rng(0)
        for i in range(args.images):
            pixels = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(images, f"img{i:04d}.jpg"), quality=90)
        weights = os.path.join(tmp, "vgg16.npz")
        VGG16(seed=0).save_weights(weights)
        for round_ in range(args.rounds):
            for label, workers, threads in configurations(cpus):
                out = os.path.join(tmp, f"{workers}x{threads}-{round_}.npy")
                command = [sys.executable, "-c", RUN, images, weights, out, str(workers),
                           str(threads)]  # fmt: skip
                done = subprocess.run(command, capture_output=True, text=True, check=True)
                report = json.loads(done.stdout.strip().splitlines()[-1])
                report["equal"] = bool(
                    np.array_equal(np.load(out), np.load(os.path.join(tmp, f"0x{cpus}-0.npy")))
                )
                runs.setdefault(label, []).append(report)
                print(label, report, file=sys.stderr)
    print(describe())
    print(
        f"\nvgg-np extract, VGG16 fc2, 224x224 from {args.images} generated 640x480 JPEGs, "
        f"batch 8, partitions of 16; {cpus} CPUs; median of {args.rounds} rounds, each "
        f"configuration in a fresh process ({time.strftime('%Y-%m-%d')})\n"
    )
    print(
        "| configuration | images/s | vs local | CPU s / image | cluster start (s) | warm-up "
        "incl. loading weights (s) | client peak RSS (MB) | worker peak RSS (MB) | rows equal "
        "local |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    local = statistics.median(r["images_per_s"] for r in runs["local"])
    for label, reports in runs.items():
        rate = statistics.median(r["images_per_s"] for r in reports)

        def median(key, reports=reports):
            values = [r[key] for r in reports if key in r]
            return f"{statistics.median(values):.1f}" if values else "-"

        workers_rss = ", ".join(f"{v / 1e6:.0f}" for v in reports[-1]["workers_rss"]) or "-"
        cpu = statistics.median(r["cpu_s"] / r["written"] for r in reports)
        print(
            f"| {label} | {rate:.2f} | {rate / local:.2f} | {cpu:.2f} | "
            f"{median('cluster_start_s')} | "
            f"{median('warm_up_s')} | {reports[-1]['client_rss'] / 1e6:.0f} | {workers_rss} | "
            f"{'yes' if all(r['equal'] for r in reports) else 'no'} |"
        )


if __name__ == "__main__":
    main()
