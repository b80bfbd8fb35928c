"""The engine's memory: bounded by a slice of the batch, and released after the call.

Each measurement runs in a fresh Python process (peak RSS only grows). The slice is made
small here (4 images of 64x64) so that the test is quick; benchmarks/memory.py measures
the real sizes (224x224, batch 1, 8 and 64: see docs/performance.md).
"""

from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import ROOT

SIZE, SLICE = 64, 4

# Measured with 64x64 inputs and a slice of 4 images: from batch 4 to batch 32 a call's
# peak grew by 0.06 MB and what stays after it by 0.03 MB (before slicing: +150 MB
# each). 12 MB leaves room for the allocator's rounding, far below an unsliced batch.
SLACK_MB = 12

WORKER = f"""
import json, resource, sys
import numpy as np
import vgg_np, vgg_np.engine
vgg_np.engine.SLICE_VALUES = {SLICE} * {SIZE} * {SIZE} * 64
batch = int(sys.argv[1])
model = vgg_np.VGG16(include_top=False, seed=0, input_shape=({SIZE}, {SIZE}, 3))
x = np.random.default_rng(0).standard_normal((batch, {SIZE}, {SIZE}, 3), dtype=np.float32)
model(x[:1])  # kernels packed, threads started: what every batch size shares


def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024


before = rss()
peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
y = model(x)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"grew": peak - max(before, peak_before), "kept": rss() - before,
                  "output": y.nbytes / 2**20}}))
"""


def measure(batch: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", WORKER, str(batch)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    return json.loads(out.stdout)


def test_peak_memory_is_bounded_by_a_slice_and_buffers_are_released():
    small, large = measure(SLICE), measure(8 * SLICE)
    print(f"\nbatch {SLICE}: {small}\nbatch {8 * SLICE}: {large}")
    assert large["grew"] <= small["grew"] + large["output"] + SLACK_MB
    assert large["kept"] <= small["kept"] + large["output"] + SLACK_MB
