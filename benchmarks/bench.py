"""VGG16 inference speed and memory: vgg_np beside PyTorch and onnxruntime, in one run.

    python benchmarks/bench.py                      # batch 1 and 8, every engine installed
    python benchmarks/bench.py --batch 1 --rounds 5 --json results.json
    python benchmarks/bench.py --dtype float64 --batch 1   # the oracle against PyTorch float64
    python benchmarks/bench.py --plan default       # vgg_np's built-in plan, not measured

Every engine runs in its own process (thread pools of different libraries must not steal
each other's cores), the engines alternating A B C A B C over several rounds; each
process loads the same VGG16 weights from a file (vgg_np: .npz; PyTorch: a torchvision-
layout state dict into a torch.nn VGG16; onnxruntime: that model exported with
``dynamo=False``), warms up, and times forward passes of a 224x224 batch. Reported: the
median over all timed passes, GFLOP/s (30.94 GFLOP per image), the peak resident memory of
the whole process (loading included), the ratios of vgg_np to each peer, and vgg_np's
per-layer breakdown with the algorithm each layer used. Peers that are not installed are
skipped with a note. With ``--dtype float64`` vgg_np runs its oracle mode and PyTorch its
float64 model (onnxruntime has no float64 convolution and is skipped). Not a test: the
machines are shared and noisy, so quote ratios measured side by side.

vgg_np runs ``plan="measure"`` by default: before the rounds, one process measures the
plan into a fresh cache folder (the time it took and each layer's choice are printed),
and every timed vgg_np process then reads it (``VGG_NP_PLAN``, ``VGG_NP_CACHE``).
``--plan default`` runs the built-in plan; ``--plan FILE.json`` a plan file. The report
starts with the CPU, the BLAS kernels and the load (`machine.describe`), then the
machine's sgemm peak and copy bandwidth.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

GFLOP_PER_IMAGE = 30.94
ROOT = pathlib.Path(__file__).resolve().parent.parent
ENGINES = ("vgg_np", "pytorch", "onnxruntime")


def peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM: unlike ru_maxrss, reset by exec)."""
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------
# Workers: one engine, one process
# ---------------------------------------------------------------------------------------


def load_engine(engine: str, files: dict, dtype: str = "float32"):
    """Return a function running one forward pass on an NHWC batch of `dtype`.

    vgg_np's plan comes from ``$VGG_NP_PLAN`` (see the module docstring).
    """
    if engine == "vgg_np":
        import vgg_np

        model = vgg_np.VGG16(weights=files["npz"], classifier_activation=None, dtype=dtype)
        return model, model
    if engine == "pytorch":
        import torch

        sys.path.insert(0, str(ROOT / "tests"))
        from reference.torch_vgg import TorchVGG

        net = TorchVGG(vgg_np_blocks()).eval()
        net.load_state_dict(torch.load(files["pth"], weights_only=True))
        net = net.to(getattr(torch, dtype))

        def run(x):
            with torch.inference_mode():
                return net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()

        return run, None
    import onnxruntime

    session = onnxruntime.InferenceSession(files["onnx"], providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return (lambda x: session.run(None, {name: x.transpose(0, 3, 1, 2).copy()})[0]), None


def vgg_np_blocks():
    from vgg_np.model import CONFIGS

    return CONFIGS["vgg16"].blocks


def worker(engine: str, batch: int, repeats: int, files: dict, dtype: str) -> dict:
    run, model = load_engine(engine, files, dtype)
    x = np.random.default_rng(batch).standard_normal((batch, 224, 224, 3)).astype(dtype)
    for _ in range(2):  # warm-up: first-call allocations, kernel packing, thread start
        run(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    result = {"engine": engine, "batch": batch, "times": times, "peak_rss_mb": peak_rss_mb()}
    if model is not None:  # vgg_np: per-layer breakdown
        layers: dict = {}
        for _ in range(3):
            timings: list = []
            model.engine.predict(x, timings=timings)
            per_pass: dict = {}
            for name, algorithm, seconds in timings:  # summed over the slices of the batch
                per_pass[name] = (algorithm, per_pass.get(name, ("", 0.0))[1] + seconds)
            for name, (algorithm, seconds) in per_pass.items():
                layers.setdefault(name, [algorithm, []])[1].append(seconds)
        result["layers"] = {n: [a, statistics.median(s)] for n, (a, s) in layers.items()}
    return result


def plan_worker(files: dict, dtype: str) -> dict:
    """Measure (or read) vgg_np's plan for VGG16 at 224x224; its time and choices."""
    import vgg_np

    model = vgg_np.VGG16(weights=files["npz"], classifier_activation=None, dtype=dtype)
    start = time.perf_counter()
    plans = model.engine.plans((224, 224, 3))
    return {
        "seconds": time.perf_counter() - start,
        "measuring": model.engine.planner.seconds,
        "mode": str(model.engine.planner.mode),
        "choices": {
            name: None if plan.choice is None else plan.choice.to_dict()
            for name, plan in plans.items()
        },
    }


def plan_table(report: dict) -> str:
    lines = [
        f"vgg_np plan ({report['mode']}): {report['measuring']:.1f} s measuring, "
        f"{report['seconds']:.1f} s planning in all\n",
        "| layer | algorithm | tile rows per chunk | channels per block | order |",
        "|---|---|---|---|---|",
    ]
    for name, c in report["choices"].items():
        if c is None:
            lines.append(f"| {name} | naive | | | |")
        else:
            lines.append(
                f"| {name} | {c['algorithm']} | {c['rows_per_chunk']} | "
                f"{c['channel_block']} | {c['order']} |"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------


def prepare_files(folder: pathlib.Path, engines: list[str]) -> tuple[dict, list[str]]:
    """Write the same VGG16 weights for every engine; return the files and the notes."""
    import vgg_np
    from vgg_np.formats.torchvision import to_state_dict

    model = vgg_np.VGG16(seed=0, classifier_activation=None)
    files = {"npz": str(folder / "vgg16.npz")}
    model.save_weights(files["npz"])
    notes = []
    if "pytorch" in engines or "onnxruntime" in engines:
        try:
            import torch
        except ImportError:
            notes.append("PyTorch not installed: pytorch and onnxruntime skipped")
            return files, notes
        state = to_state_dict(model.weights, model.config.conv_names())
        files["pth"] = str(folder / "vgg16.pth")
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, files["pth"])
        if "onnxruntime" in engines:
            sys.path.insert(0, str(ROOT / "tests"))
            from reference.torch_vgg import TorchVGG

            net = TorchVGG(model.config.blocks).eval()
            net.load_state_dict(torch.load(files["pth"], weights_only=True))
            files["onnx"] = str(folder / "vgg16.onnx")
            torch.onnx.export(
                net, torch.zeros(1, 3, 224, 224), files["onnx"], dynamo=False,
                input_names=["input"], dynamic_axes={"input": {0: "batch"}},
            )  # fmt: skip
    return files, notes


def run_worker(arguments: list[str], env: dict) -> dict:
    """Run this script as a worker process; return the JSON it prints last."""
    command = [sys.executable, __file__, "--worker", *arguments]
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(arguments[:3])} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def available(engine: str) -> bool:
    module = {"vgg_np": "vgg_np", "pytorch": "torch", "onnxruntime": "onnxruntime"}[engine]
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    return probe.returncode == 0


def table(results: dict, batches: list[int], engines: list[str]) -> str:
    lines = [
        "| batch | engine | ms / batch (median) | ms / image | GFLOP/s | peak RSS (MB) | "
        + " | ".join(f"vgg_np / {e}" for e in engines if e != "vgg_np")
        + " |",
        "|---|---|---|---|---|---|" + "---|" * (len(engines) - 1),
    ]
    for batch in batches:
        for engine in engines:
            r = results.get((engine, batch))
            if r is None:
                continue
            ms = statistics.median(r["times"]) * 1e3
            ratios = []
            for peer in engines:
                if peer == "vgg_np":
                    continue
                other = results.get((peer, batch))
                if engine == "vgg_np" and other is not None:
                    ratios.append(f"{ms / (statistics.median(other['times']) * 1e3):.2f}")
                else:
                    ratios.append("")
            gflops = GFLOP_PER_IMAGE * batch / (ms / 1e3)
            lines.append(
                f"| {batch} | {engine} | {ms:.0f} | {ms / batch:.0f} | {gflops:.0f} | "
                f"{r['peak_rss_mb']:.0f} | " + " | ".join(ratios) + " |"
            )
    return "\n".join(lines)


def breakdown(result: dict) -> str:
    lines = ["| layer | algorithm | ms |", "|---|---|---|"]
    for name, (algorithm, seconds) in result["layers"].items():
        lines.append(f"| {name} | {algorithm} | {seconds * 1e3:.1f} |")
    total = sum(s for _, s in result["layers"].values())
    lines.append(f"| total | | {total * 1e3:.1f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3, help="A B C rounds (3)")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes per process (5)")
    parser.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument(
        "--plan", default="measure", help="vgg_np's plan: measure (default), default, FILE.json"
    )
    parser.add_argument("--json", help="write every measurement to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        files = json.loads(args.files)
        if args.worker == "plan":
            result = plan_worker(files, args.dtype)
        else:
            result = worker(args.worker, args.batch[0], args.repeats, files, args.dtype)
        print(json.dumps(result))
        return 0

    engines = [e for e in args.engines if available(e)]
    notes = [f"{e} is not installed: skipped" for e in args.engines if e not in engines]
    if args.dtype == "float64" and "onnxruntime" in engines:
        engines.remove("onnxruntime")
        notes.append("onnxruntime has no float64 convolution: skipped")
    results: dict = {}
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    import machine

    header = [machine.describe(), machine.peaks()]
    with tempfile.TemporaryDirectory() as tmp:
        files, more = prepare_files(pathlib.Path(tmp), engines)
        notes += more
        engines = [e for e in engines if e == "vgg_np" or "pth" in files]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "VGG_NP_PLAN": str(args.plan)}
        env["VGG_NP_CACHE"] = str(pathlib.Path(tmp) / "plans")  # measured afresh
        plan = None
        if "vgg_np" in engines:
            plan = run_worker(["plan", *("--files", json.dumps(files), "--dtype", args.dtype)], env)
        for round_ in range(args.rounds):
            for batch in args.batch:
                for engine in engines:
                    r = run_worker(
                        [engine, "--batch", str(batch), "--repeats", str(args.repeats),
                         "--files", json.dumps(files), "--dtype", args.dtype],
                        env,
                    )  # fmt: skip
                    key = (engine, batch)
                    if key in results:
                        results[key]["times"] += r["times"]
                        results[key]["peak_rss_mb"] = max(
                            results[key]["peak_rss_mb"], r["peak_rss_mb"]
                        )
                        if "layers" in r:
                            results[key].setdefault("rounds_layers", []).append(r["layers"])
                    else:
                        results[key] = r
                    ms = statistics.median(r["times"]) * 1e3
                    print(
                        f"round {round_ + 1}: {engine} batch {batch}: {ms:.0f} ms", file=sys.stderr
                    )
    print("\n".join(header) + "\n")
    print(f"VGG16 224x224 {args.dtype}, {os.cpu_count()} CPUs, medians of {args.rounds} x "
          f"{args.repeats} passes, each engine in its own process\n")  # fmt: skip
    print(table(results, args.batch, engines))
    if plan is not None:
        print("\n" + plan_table(plan))
    for note in notes:
        print(f"\nnote: {note}")
    for batch in args.batch:
        if ("vgg_np", batch) in results:
            print(f"\nvgg_np per layer, batch {batch} (median of 3 passes, one process):\n")
            print(breakdown(results[("vgg_np", batch)]))
    if args.json:
        serial = [{**r, "engine": e, "batch": b} for (e, b), r in results.items()]
        pathlib.Path(args.json).write_text(json.dumps(serial, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
