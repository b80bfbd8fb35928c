"""The ``vgg-np`` command line: the only module that prints for users or exits.

Examples
--------
``vgg-np demo`` runs VGG-sized layers through the kernels and checks them against a
float64 oracle.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from vgg_np import __version__, formats, ops
from vgg_np.compare import DEFAULT_TOLERANCE, compare_activations, compare_onnx
from vgg_np.model import VGG

EXIT_RUNTIME_ERROR = 1
EXIT_USAGE_ERROR = 2


def _relative_error(actual: np.ndarray, exact: np.ndarray) -> float:
    """Max absolute error over max absolute value: the figure quoted across vgg_np."""
    return float(np.max(np.abs(actual - exact)) / np.max(np.abs(exact)))


def _timed(func, *args, repeat: int = 3, **kwargs):
    """Run `func` `repeat` times; return its last result and the best wall time in s."""
    best = np.inf
    for _ in range(repeat):
        start = time.perf_counter()
        result = func(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return result, best


def run_demo(args: argparse.Namespace) -> int:
    """Check the kernels on a VGG16-sized layer against a float64 oracle and time them."""
    rng = np.random.default_rng(args.seed)
    h, c, o = 56, 256, 256  # block3_conv2 of VGG16 at 224x224
    print(f"vgg_np {__version__}: VGG16 block3_conv2 ({h}x{h}x{c} -> {o}, 3x3 'same')")
    x = rng.standard_normal((1, h, h, c))
    kernel = rng.standard_normal((3, 3, c, o)) * np.sqrt(2.0 / (9 * c))  # He-normal
    bias = rng.standard_normal(o) * 0.01
    exact = ops.conv2d(x, kernel, bias)  # float64: the oracle
    args32 = [a.astype(np.float32) for a in (x, kernel, bias)]
    y, seconds = _timed(ops.conv2d, *args32)
    gflop = 2 * h * h * 9 * c * o / 1e9
    print(
        f"  conv2d float32: {seconds * 1e3:.1f} ms, {gflop / seconds:.0f} GFLOP/s, "
        f"max error / max |y| vs float64 = {_relative_error(y, exact):.2e}"
    )
    small = [a[:, :7, :9, :5] for a in (x,)] + [kernel[:, :, :5, :4], bias[:4]]
    naive_gap = np.max(np.abs(ops.conv2d(*small) - ops.conv2d_naive(*small)))
    print(f"  conv2d == conv2d_naive on a 7x9x5 crop: max |difference| {naive_gap:.1e}")
    pooled = ops.max_pool2d(ops.relu(y))
    same = np.array_equal(pooled, ops.max_pool2d_naive(ops.relu(y)))
    print(f"  relu + max_pool2d: {y.shape} -> {pooled.shape}, equal to the naive loop: {same}")
    logits = rng.standard_normal((2, 1000)) * 1e4
    probabilities = ops.softmax(logits)
    print(
        "  softmax of logits ~1e4: finite "
        f"{bool(np.isfinite(probabilities).all())}, rows sum to "
        f"{np.round(probabilities.sum(axis=1), 6).tolist()}"
    )
    return 0 if same and naive_gap < 1e-9 else EXIT_RUNTIME_ERROR


def _load_input(args: argparse.Namespace, arrays) -> np.ndarray:
    if args.input is not None:
        return np.load(args.input, allow_pickle=False)
    if arrays is not None and "input" in arrays:
        return arrays["input"]
    raise ValueError("no input: store it as 'input' in the activations .npz, or pass --input X.npy")


def run_compare(args: argparse.Namespace) -> int:
    """Compare another implementation's activations (or a live ONNX run) with vgg_np."""
    dtype = "float64" if args.oracle else "float32"
    if args.onnx:
        x = _load_input(args, None)
        result = compare_onnx(args.weights, x, oracle=args.oracle, tolerance=args.tolerance)
    else:
        if args.activations is None:
            raise ValueError("give the other implementation's ACTIVATIONS .npz, or --onnx")
        with np.load(args.activations, allow_pickle=False) as npz:
            arrays = dict(npz)
        x = _load_input(args, arrays)
        model = VGG.from_file(args.weights, dtype=dtype, classifier_activation=None)
        result = compare_activations(model, x, arrays, tolerance=args.tolerance)
    print(result)
    return 0 if result.passed else EXIT_RUNTIME_ERROR


def run_convert(args: argparse.Namespace) -> int:
    """Convert a weights file to another format, keeping every tensor."""
    with formats.open_weights(args.source) as source:
        weights = {name: (np.asarray(k), np.asarray(b)) for name, (k, b) in source.tensors.items()}
        read = source.format
    written = formats.write_weights(args.target, weights, layout=args.layout)
    print(f"{args.source} ({read}) -> {args.target} ({written}): {len(weights)} layers")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``vgg-np``."""
    parser = argparse.ArgumentParser(
        prog="vgg-np",
        description="VGG16 in plain NumPy: learn it, verify against it, run it.",
        epilog="Example: vgg-np demo",
    )
    parser.add_argument("--version", action="version", version=f"vgg_np {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="check the kernels on a VGG-sized layer against float64 and time them",
        description="Run VGG16's block3_conv2 through the kernels, compare with float64.",
        epilog="Example: vgg-np demo --seed 1",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the random layer (0)")
    demo.set_defaults(handler=run_demo)

    compare = commands.add_parser(
        "compare",
        help="compare another implementation's activations with vgg_np, layer by layer",
        description=(
            "Run vgg_np on WEIGHTS and compare every layer with another implementation's "
            "outputs: an .npz keyed by Keras layer names (block1_conv1, ...), torchvision "
            "module names (features.1, ...) or, with --onnx, the ONNX model's own tensors "
            "run by onnxruntime. NCHW or NHWC is detected per layer. Exit code 1 when a "
            "layer diverges; the first one is named."
        ),
        epilog=(
            "Examples: vgg-np compare vgg16.h5 keras_acts.npz --oracle\n"
            "          vgg-np compare vgg16.onnx --onnx --input x.npy"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    compare.add_argument("weights", help="weights file of any supported format")
    compare.add_argument(
        "activations", nargs="?", help=".npz of the other implementation's outputs"
    )
    compare.add_argument(
        "--input", help=".npy of the preprocessed input (else 'input' in the .npz)"
    )
    compare.add_argument(
        "--onnx", action="store_true", help="run WEIGHTS (an .onnx) in onnxruntime"
    )
    compare.add_argument("--oracle", action="store_true", help="run vgg_np in float64")
    compare.add_argument(
        "--tolerance",
        type=float,
        default=DEFAULT_TOLERANCE,
        help=f"max |error| / max |vgg_np| accepted per layer ({DEFAULT_TOLERANCE:g})",
    )
    compare.set_defaults(handler=run_compare)

    convert = commands.add_parser(
        "convert",
        help="convert weights between formats (Keras h5, .keras, npz, safetensors, pth, onnx)",
        description=(
            "Read SOURCE in any supported format and write TARGET in the format its "
            "extension names: .npz (vgg_np), .h5 (Keras Applications layout), .safetensors "
            "(torchvision layout unless --layout keras), .pth/.pt (torchvision, needs torch)."
        ),
        epilog="Example: vgg-np convert vgg16_weights_tf_kernels.h5 vgg16.safetensors",
    )
    convert.add_argument("source")
    convert.add_argument("target")
    convert.add_argument("--layout", choices=["torchvision", "keras"], help="for .safetensors")
    convert.set_defaults(handler=run_convert)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vgg-np`` and ``python -m vgg_np``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, TypeError, OSError, ImportError) as error:
        if args.debug:
            raise
        print(f"vgg-np: error: {error}", file=sys.stderr)
        return EXIT_RUNTIME_ERROR
