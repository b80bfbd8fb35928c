"""A training step: vgg_np beside PyTorch eager, each in its own process, in alternating rounds.

    python benchmarks/train_step.py                       # every case, batch 32
    python benchmarks/train_step.py --cases head block5 --rounds 5 --repeats 3
    python benchmarks/train_step.py --cases head block5 --paired 20   # turn by turn

A step is forward, mean softmax cross-entropy, backward and an SGD update (momentum 0.9,
weight decay 5e-4): vgg_np's `vgg_np.train.loss_and_gradients` and `vgg_np.train.SGD`,
inside `vgg_np.train.memory.kept()` as `vgg_np.train.loop.train_epoch` runs its steps;
PyTorch 2.13 eager ``loss.backward()`` and ``torch.optim.SGD`` on the same weights.
The cases (float32):

- ``top`` and ``all``: the narrow VGG16 of ``vgg-np train --demo`` (widths 8-16-32-64-64,
  fc 64-64, four classes, 32x32 pictures), training fc1, fc2 and predictions (the
  convolutions run forward only), or every layer;
- ``head``: a transfer-learning head on cached ``block5_pool`` features (7x7x512):
  Flatten, Dense(256, ReLU), Dropout(0.5), Dense(10);
- ``block5``: the same head under VGG16's block 5 trained too, from cached
  ``block4_pool`` features (14x14x512): three 512-channel convolutions forward, the
  head, and back through them (their kernels' gradients; no gradient of the features).

Each framework runs in its own process (OpenBLAS's and torch's thread pools never meet);
the two alternate, round after round, so both meet the same load. Reported: median
milliseconds per step, and the median and range of the per-round ratios vgg_np / PyTorch,
with the machine (`benchmarks/machine.py`: CPU, BLAS, load) before and after. On a busy
machine ``--paired TURNS`` is steadier: both loaded once, taking turns step by step (as
`paired.py` does for inference), each turn's ratio measured within a few seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
SIZE, CLASSES = 32, 4
HEAD_CLASSES, HEAD_WIDTH = 10, 256
LR, MOMENTUM, DECAY = 0.01, 0.9, 5e-4
PAUSE = 0.05  # seconds between turns: longer than any thread pool's spin-wait
#: Each case's input per image (H, W, C) and classes.
INPUTS = {
    "top": ((SIZE, SIZE, 3), CLASSES),
    "all": ((SIZE, SIZE, 3), CLASSES),
    "head": ((7, 7, 512), HEAD_CLASSES),
    "block5": ((14, 14, 512), HEAD_CLASSES),
}


def narrow_vgg16():
    """The model `vgg-np train --demo` builds (vgg_np/cli/train.py), seeded."""
    from vgg_np import VGG, VGGConfig

    blocks = ((8, 8), (16, 16), (32,) * 3, (64,) * 3, (64,) * 3)
    config = VGGConfig("vgg16-narrow", blocks, fc=(64, 64), default_size=SIZE)
    return VGG(config, classes=CLASSES, classifier_activation=None, seed=0)


def part(case: str):
    """The trained layers of `head` or `block5` (`vgg_np.train.loop.Top`), He-normal."""
    from vgg_np.layers import KINDS, Layer, shapes
    from vgg_np.train.loop import Top

    layers = [
        Layer("flatten", "flatten"),
        Layer("dense", "dense", HEAD_WIDTH, "relu"),
        Layer("dropout", "dropout", rate=0.5),
        Layer("predictions", "dense", HEAD_CLASSES),
    ]
    if case == "block5":
        convs = [Layer(f"block5_conv{i}", "conv", 512, "relu") for i in (1, 2, 3)]
        layers = [*convs, Layer("block5_pool", "pool"), *layers]
    rng, weights = np.random.default_rng(0), {}
    for layer, shape, _ in shapes(layers, INPUTS[case][0]):
        kind = KINDS[layer.kind]
        if kind.parameter_shapes:
            weights[layer.name] = kind.initial(kind.parameter_shapes(layer, shape), rng)
    return Top(layers, weights)


def vgg_np_step(case: str):
    from vgg_np.train import SGD, loss_and_gradients

    model = narrow_vgg16() if case in ("top", "all") else part(case)
    trainable = {"fc1", "fc2", "predictions"} if case == "top" else None
    optimizer = SGD(lr=LR, momentum=MOMENTUM, weight_decay=DECAY)
    rng = np.random.default_rng(1)

    def step(x, labels):
        _, grads, _ = loss_and_gradients(model, x, labels, trainable=trainable, rng=rng)
        optimizer.step(model, grads)

    return step


def torch_module(case: str):
    """The same network in torch.nn, its weights vgg_np's (NCHW, OIHW, (out, in))."""
    import torch

    if case in ("top", "all"):
        sys.path.insert(0, str(ROOT / "tests"))
        from reference.torch_vgg import TorchVGG

        from vgg_np.formats.torchvision import to_state_dict

        model = narrow_vgg16()
        net = TorchVGG(model.config.blocks, fc=model.config.fc, classes=CLASSES, pool_size=1)
        state = to_state_dict(model.weights, model.config.conv_names())
        for module in net.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0  # the command's default: no dropout
        if case == "top":
            for p in net.features.parameters():
                p.requires_grad_(False)
    else:
        model = part(case)
        convs = [m for i in (1, 2, 3) for m in (torch.nn.Conv2d(512, 512, 3, padding=1),
                                                torch.nn.ReLU(inplace=True))]  # fmt: skip
        head = [torch.nn.Flatten(), torch.nn.Linear(7 * 7 * 512, HEAD_WIDTH),
                torch.nn.ReLU(inplace=True), torch.nn.Dropout(0.5),
                torch.nn.Linear(HEAD_WIDTH, HEAD_CLASSES)]  # fmt: skip
        body = [*convs, torch.nn.MaxPool2d(2)] if case == "block5" else []
        net = torch.nn.Sequential(*body, *head)
        state = {}
        linear = [i for i, m in enumerate(net) if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        for index, (kernel, bias) in zip(linear, model.weights.values(), strict=True):
            weight = kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T
            state[f"{index}.weight"], state[f"{index}.bias"] = weight, bias
    net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
    return net.train()


def pytorch_step(case: str):
    import torch

    net = torch_module(case)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=LR, momentum=MOMENTUM, weight_decay=DECAY)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(x, labels):
        optimizer.zero_grad()
        images = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())  # NHWC -> NCHW
        loss_fn(net(images), torch.from_numpy(labels)).backward()
        optimizer.step()

    return step


def prepared(engine: str, case: str, batch: int):
    """The step of `engine`, its batch, warmed up (plans, thread pools, first touch)."""
    step = (vgg_np_step if engine == "vgg_np" else pytorch_step)(case)
    shape, classes = INPUTS[case]
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    if case in ("head", "block5"):
        np.maximum(x, 0, out=x)  # features after a ReLU and a pool
    labels = rng.integers(0, classes, batch)
    step(x, labels)
    return lambda: step(x, labels)


def as_epochs_run(engine: str):
    """vgg_np's steps as `vgg_np.train.loop.train_epoch` runs them: memory kept between steps."""
    from vgg_np.train import memory

    return memory.kept() if engine == "vgg_np" else contextlib.nullcontext()


def serve(engine: str, case: str, batch: int) -> None:
    """Time one step per "run" line read from stdin (the paired mode)."""
    with as_epochs_run(engine):
        step = prepared(engine, case, batch)
        print("ready", flush=True)
        for line in sys.stdin:
            if line.strip() != "run":
                break
            start = time.perf_counter()
            step()
            print(time.perf_counter() - start, flush=True)


def paired(case: str, batch: int, turns: int, env: dict) -> list[tuple[float, float]]:
    """Both frameworks loaded once, taking turns step by step: (vgg_np, PyTorch) seconds."""
    workers = {}
    for engine in ("vgg_np", "pytorch"):
        command = [sys.executable, __file__, "--serve", engine, case, "--batch", str(batch)]
        workers[engine] = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        assert workers[engine].stdout.readline().strip() == "ready", engine
    times = {engine: [] for engine in workers}
    for turn in range(turns):
        for engine in ("vgg_np", "pytorch")[:: 1 if turn % 2 else -1]:  # A B, B A, ...
            time.sleep(PAUSE)  # no thread pool still spinning from the other's step
            workers[engine].stdin.write("run\n")
            workers[engine].stdin.flush()
            times[engine].append(float(workers[engine].stdout.readline()))
    for process in workers.values():
        process.stdin.write("quit\n")
        process.stdin.flush()
        process.wait()
    return list(zip(times["vgg_np"], times["pytorch"], strict=True))


def worker(engine: str, case: str, batch: int, repeats: int) -> dict:
    times = []
    with as_epochs_run(engine):
        step = prepared(engine, case, batch)
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    return {"times": times}


def machine_header() -> str:
    """The CPU, BLAS kernels and load this ran on (benchmarks/machine.py)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from machine import describe

    return describe()


def run_round(case: str, batch: int, repeats: int, env: dict) -> dict[str, float]:
    medians = {}
    for engine in ("vgg_np", "pytorch"):
        command = [sys.executable, __file__, "--worker", engine, case]
        command += ["--batch", str(batch), "--repeats", str(repeats)]
        out = subprocess.run(command, capture_output=True, text=True, env=env)
        if out.returncode != 0:
            raise SystemExit(f"{engine} {case} failed:\n{out.stderr}")
        times = json.loads(out.stdout.strip().splitlines()[-1])["times"]
        medians[engine] = statistics.median(times)
    return medians


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cases", nargs="+", choices=list(INPUTS), default=list(INPUTS))
    parser.add_argument(
        "--paired", type=int, metavar="TURNS", help="both loaded once, alternating TURNS steps"
    )
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        engine, case = args.worker
        print(json.dumps(worker(engine, case, args.batch, args.repeats)))
        return 0
    if args.serve:
        serve(*args.serve, args.batch)
        return 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if args.paired:
        return report_paired(args, env)
    before = machine_header()
    rounds: dict[str, list[dict]] = {case: [] for case in args.cases}
    for _ in range(args.rounds):
        for case in args.cases:
            rounds[case].append(run_round(case, args.batch, args.repeats, env))
    print(f"before: {before}\nafter:  {machine_header()}")
    print(f"training step, batch {args.batch}, float32, {args.rounds} rounds x "
          f"{args.repeats} steps\n")  # fmt: skip
    print("| case | vgg_np ms | PyTorch ms | vgg_np / PyTorch (median of rounds) | range |")
    print("|---|---|---|---|---|")
    for case, results in rounds.items():
        ratios = [r["vgg_np"] / r["pytorch"] for r in results]
        ours = statistics.median(r["vgg_np"] for r in results) * 1e3
        theirs = statistics.median(r["pytorch"] for r in results) * 1e3
        print(f"| {case} | {ours:.0f} | {theirs:.0f} | {statistics.median(ratios):.2f} | "
              f"{min(ratios):.2f}-{max(ratios):.2f} |")  # fmt: skip
    return 0


def report_paired(args, env: dict) -> int:
    before = machine_header()
    results = {case: paired(case, args.batch, args.paired, env) for case in args.cases}
    print(f"before: {before}\nafter:  {machine_header()}")
    print(f"training step, batch {args.batch}, float32, {args.paired} paired turns per case, "
          "each framework loaded once in its own process\n")  # fmt: skip
    print("| case | vgg_np ms | PyTorch ms | vgg_np / PyTorch per turn: median (quartiles) |")
    print("|---|---|---|---|")
    for case, pairs in results.items():
        ratios = [ours / theirs for ours, theirs in pairs]
        q1, median, q3 = statistics.quantiles(ratios, n=4)
        ours = statistics.median(p[0] for p in pairs) * 1e3
        theirs = statistics.median(p[1] for p in pairs) * 1e3
        print(f"| {case} | {ours:.0f} | {theirs:.0f} | {median:.2f} ({q1:.2f}-{q3:.2f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
