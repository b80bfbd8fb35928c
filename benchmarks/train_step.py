"""A training step of the `vgg-np train` model: vgg_np beside PyTorch, in one run.

    python benchmarks/train_step.py                 # batch 32, top only and all layers
    python benchmarks/train_step.py --rounds 5 --repeats 10

The model is the narrow VGG16 of ``vgg-np train`` (widths 8-16-32-64-64, fc 64-64, four
classes, 32x32 pictures, float32). A step is forward, mean softmax cross-entropy,
backward and an SGD update (momentum 0.9, weight decay 5e-4), as the command runs it:
vgg_np's `vgg_np.train.loss_and_gradients` and `vgg_np.train.SGD`; PyTorch 2.13 eager
``loss.backward()`` and ``torch.optim.SGD`` on the same weights. "top" trains fc1, fc2
and predictions (the command's default: the convolutions run forward only), "all"
every layer (``--all-layers``). Each framework runs in its own process, alternating
over rounds; reported are median milliseconds per step and the ratio vgg_np / PyTorch.
"""

from __future__ import annotations

import argparse
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


def narrow_vgg16():
    """The model `vgg-np train` builds (vgg_np/cli/train.py, run_train), seeded."""
    from vgg_np import VGG, VGGConfig

    blocks = ((8, 8), (16, 16), (32,) * 3, (64,) * 3, (64,) * 3)
    config = VGGConfig("vgg16-narrow", blocks, fc=(64, 64), default_size=SIZE)
    return VGG(config, classes=CLASSES, classifier_activation=None, seed=0)


def vgg_np_step(batch: int, layers: str):
    from vgg_np.train import SGD, loss_and_gradients

    model = narrow_vgg16()
    trainable = {"fc1", "fc2", "predictions"} if layers == "top" else None
    optimizer = SGD(lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step(x, labels):
        _, grads, _ = loss_and_gradients(model, x, labels, trainable=trainable)
        optimizer.step(model, grads)

    return step


def pytorch_step(batch: int, layers: str):
    import torch

    sys.path.insert(0, str(ROOT / "tests"))
    from reference.torch_vgg import TorchVGG

    from vgg_np.formats.torchvision import to_state_dict

    model = narrow_vgg16()
    net = TorchVGG(model.config.blocks, fc=model.config.fc, classes=CLASSES, pool_size=1)
    state = to_state_dict(model.weights, model.config.conv_names())
    net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()})
    for module in net.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0  # the command's default: no dropout
    if layers == "top":
        for p in net.features.parameters():
            p.requires_grad_(False)
    net.train()
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(x, labels):
        optimizer.zero_grad()
        images = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())  # NHWC -> NCHW
        loss_fn(net(images), torch.from_numpy(labels)).backward()
        optimizer.step()

    return step


def worker(engine: str, batch: int, layers: str, repeats: int) -> dict:
    make = vgg_np_step if engine == "vgg_np" else pytorch_step
    step = make(batch, layers)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, SIZE, SIZE, 3)).astype(np.float32)
    labels = rng.integers(0, CLASSES, batch)
    for _ in range(2):
        step(x, labels)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(x, labels)
        times.append(time.perf_counter() - start)
    return {"times": times}


def machine_header() -> str:
    """The CPU, BLAS kernels and load this ran on (benchmarks/machine.py)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from machine import describe

    return describe()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        engine, layers = args.worker
        print(json.dumps(worker(engine, args.batch, layers, args.repeats)))
        return 0
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    times: dict = {}
    for _ in range(args.rounds):
        for layers in ("top", "all"):
            for engine in ("vgg_np", "pytorch"):
                command = [sys.executable, __file__, "--worker", engine, layers]
                command += ["--batch", str(args.batch), "--repeats", str(args.repeats)]
                out = subprocess.run(command, capture_output=True, text=True, env=env)
                if out.returncode != 0:
                    raise SystemExit(f"{engine} {layers} failed:\n{out.stderr}")
                result = json.loads(out.stdout.strip().splitlines()[-1])
                times.setdefault((layers, engine), []).extend(result["times"])
    print(machine_header())
    print(f"training step, narrow VGG16, batch {args.batch}, {SIZE}x{SIZE}, float32, "
          f"{os.cpu_count()} CPUs, medians of {args.rounds} x {args.repeats}\n")  # fmt: skip
    print("| trained | vgg_np ms | PyTorch ms | vgg_np / PyTorch |\n|---|---|---|---|")
    for layers in ("top", "all"):
        ours = statistics.median(times[layers, "vgg_np"]) * 1e3
        theirs = statistics.median(times[layers, "pytorch"]) * 1e3
        print(f"| {layers} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
