"""Loading a full-size VGG16 ``.pth``: vgg_np's torch-free reader beside ``torch.load``.

    python benchmarks/pth_load.py               # needs torch==2.13.0 to write the file
    python benchmarks/pth_load.py --rounds 5

Writes full-size VGG16 weights (seeded, 553 MB) into a temporary folder as a torchvision
state dict with ``torch.save`` and as a Keras ``.h5`` with vgg_np, then, alternating
A B C D over the rounds, times: vgg_np's reader alone (every tensor read, CRC-32 checked);
``torch.load(weights_only=True)`` alone; ``VGG16(weights=<the .pth>)``; and
``VGG16(weights=<the .h5>)`` (a whole model, ready to run, from each file). Prints the
medians and the ratios. Each timing runs in the same process; the files are deleted at
the end. Not a test: the machine is shared, so quote the ratios measured side by side.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import tempfile
import time

import numpy as np
from machine import describe  # benchmarks/machine.py: the script's folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import torch

    import vgg_np
    from vgg_np import formats
    from vgg_np.formats.torch_file import read_state_dict

    with tempfile.TemporaryDirectory() as folder:
        pth, h5 = pathlib.Path(folder) / "vgg16.pth", pathlib.Path(folder) / "vgg16.h5"
        model = vgg_np.VGG16(weights=None, seed=16)
        formats.write_weights(h5, model.weights)
        formats.write_weights(pth, model.weights)  # vgg_np's writer (the layout torch.save's)
        state = torch.load(pth, weights_only=True)
        torch.save(state, pth)  # ... and rewritten by torch itself: timed is torch's file
        del state, model

        def vgg_np_reader():
            with read_state_dict(pth) as (tensors, _):
                return sum(np.asarray(t).nbytes for t in tensors.values())

        def torch_reader():
            return sum(t.nbytes for t in torch.load(pth, weights_only=True).values())

        runs = {
            "vgg_np reader, .pth": vgg_np_reader,
            "torch.load(weights_only=True), .pth": torch_reader,
            "VGG16(weights=.pth)": lambda: vgg_np.VGG16(weights=pth),
            "VGG16(weights=.h5)": lambda: vgg_np.VGG16(weights=h5),
        }
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
        size = pth.stat().st_size / 1e6
    base = statistics.median(times["torch.load(weights_only=True), .pth"])
    print(describe())
    print(
        f"full-size VGG16, {size:.0f} MB, median of {args.rounds} rounds"
        f" (torch {torch.__version__})"
    )
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:40s} {median:7.2f} s   {median / base:5.2f}x torch.load")


if __name__ == "__main__":
    main()
