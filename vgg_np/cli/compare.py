"""``vgg-np compare``, ``convert`` and ``vectors``: vgg_np beside other implementations."""

from __future__ import annotations

import argparse
import json
import pathlib

import numpy as np

from vgg_np import export, formats
from vgg_np.cli._args import (
    EXIT_RUNTIME_ERROR,
    KERAS_VGG16,
    _add_plan,
    _layer_list,
    _new_command,
    _output_file,
    _positive_float,
)
from vgg_np.compare import DEFAULT_TOLERANCE, Comparison, compare_activations, compare_onnx
from vgg_np.config import CONFIGS
from vgg_np.model import VGG
from vgg_np.preprocess import MODES, RESIZE_MODES
from vgg_np.streams import image_paths

# -- compare -------------------------------------------------------------------------------


def add_compare(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare ``vgg-np compare``."""
    compare = _new_command(
        commands,
        "compare",
        run_compare,
        summary="compare another implementation's activations with vgg_np, layer by layer",
        description=(
            "Run vgg_np on WEIGHTS and compare every layer with another implementation's "
            "outputs: an .npz keyed by Keras layer names (block1_conv1, ...), torchvision "
            "module names (features.1, ...) or, with --onnx, the ONNX model's own tensors "
            "run by onnxruntime. NCHW or NHWC is detected per layer. States how many layers "
            "were compared; exit code 1 when a layer diverges (the first one is named) or "
            "when a layer asked for is missing (by default every layer but flatten, dropout and an "
            "avgpool that is the identity at this size). "
            "Each layer is also recomputed alone from your own input to it, and at a "
            "failing layer the usual bugs are tried and the one that reproduces your output "
            "is named. Probabilities compared with logits are compared after softmax and "
            "said. With --images, vgg_np preprocesses the raw pictures itself and compares "
            "your input tensor with it as the first row."
        ),
        examples=[
            "vgg-np compare vgg16.h5 keras_acts.npz --oracle --images a.png b.png",
            "vgg-np compare vgg16.onnx --onnx --input x.npy --reference vgg16.h5 --json",
            "vgg-np compare vgg16.pth torch_acts.npz --layers block1_conv1,fc1",
        ],
        check=_check_compare,
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
    _add_picture_options(compare)
    compare.add_argument(
        "--reference",
        metavar="FILE",
        help="with --onnx: the weights file the graph was made from (or 'imagenet'), run as "
        "vgg_np's reference, the graph's own weights diffed against it; without it the "
        "graph's own weights are the reference, and the output says so",
    )
    compare.add_argument("--oracle", action="store_true", help="run vgg_np in float64")
    compare.add_argument(
        "--tolerance",
        type=_positive_float,
        default=DEFAULT_TOLERANCE,
        help=f"max |error| / max |vgg_np| accepted per layer ({DEFAULT_TOLERANCE:g})",
    )
    compare.add_argument(
        "--layers",
        type=_layer_list,
        help="comma-separated layers that must be compared (default: all of the model's)",
    )
    compare.add_argument("--json", action="store_true", help="the result as one JSON object")
    _add_plan(compare)


def _add_picture_options(compare: argparse.ArgumentParser) -> None:
    """Declare ``compare --images`` and how to read them (``--preprocess``, ``--resize``)."""
    compare.set_defaults(images_label="--images")  # an option here, not IMAGE_OR_DIR
    compare.add_argument(
        "--images",
        nargs="+",
        metavar="IMAGE",
        help="the raw pictures your input was made from, in batch order (a folder: its "
        "pictures sorted by name): vgg_np preprocesses them itself and compares your input "
        "as the first row",
    )
    compare.add_argument(
        "--preprocess", choices=MODES, help="with --images: caffe, torch or tf (from the weights)"
    )
    compare.add_argument(
        "--resize", choices=RESIZE_MODES, help="with --images: keras or torchvision (weights)"
    )


def _check_compare(args: argparse.Namespace) -> str | None:
    if args.onnx and args.activations is not None:
        return "--onnx runs WEIGHTS in onnxruntime: give no ACTIVATIONS with it"
    if args.onnx and args.input is None:
        return "--onnx needs --input X.npy, the preprocessed input"
    if not args.onnx and args.activations is None:
        return "give the other implementation's ACTIVATIONS .npz, or --onnx"
    if args.onnx and args.images:
        return "--images needs ACTIVATIONS (your input tensor to check); --onnx takes --input"
    if (args.preprocess or args.resize) and not args.images:
        return "--preprocess and --resize say how to read --images: give the pictures"
    if args.reference and not args.onnx:
        return "--reference is for --onnx: with ACTIVATIONS, WEIGHTS is the reference"
    return None


def run_compare(args: argparse.Namespace) -> int:
    """Compare another implementation's activations (or a live ONNX run) with vgg_np."""
    options = {"tolerance": args.tolerance, "layers": args.layers}
    try:
        if args.onnx:
            x = _input_array(args.input)
            result = compare_onnx(
                args.weights, x, weights=args.reference, oracle=args.oracle, plan=args.plan,
                **options,
            )  # fmt: skip
        else:
            result = _compare_dump(args, options)
    except ValueError as error:  # a refusal that names no file names what was compared
        paths = (args.weights, args.activations, args.input, args.reference, *(args.images or ()))
        if any(path and path in str(error) for path in paths):
            raise
        raise ValueError(f"{args.activations or args.weights}: {error}") from None
    print(json.dumps(result.to_dict()) if args.json else result)
    return 0 if result.passed else EXIT_RUNTIME_ERROR


def _compare_dump(args: argparse.Namespace, options: dict) -> Comparison:
    """Compare the ACTIVATIONS dump with vgg_np on WEIGHTS (from --images if given)."""
    arrays = _numpy_file(args.activations)
    if args.input is None and "input" not in arrays and not args.images:
        raise ValueError(
            f"{args.activations}: no input: store it as 'input' in the .npz, "
            "or pass --input X.npy or the raw --images"
        )
    x = _input_array(args.input) if args.input else arrays.get("input")
    x = None if x is None else _nonempty(x, args.input or args.activations)
    dtype = "float64" if args.oracle else "float32"
    # Direct convolution: in float32 the engine's Winograd convolutions round up to 7.3e-6
    # from the oracle, most of the tolerance; the reference forward pass runs batch norms
    # unfolded, which magnifies float32 rounding on nearly constant channels (7.7e-5 on
    # tests/data/heads/vgg16_bn.safetensors), where the engine folds them (<= 3.2e-6).
    model = VGG.from_file(  # channels last whatever the graph takes (layouts per layer)
        args.weights,
        dtype=dtype,
        classifier_activation=None,
        conv_algorithm="gemm",
        data_format="channels_last",
        plan=args.plan,  # the layout of each direct convolution
    )
    if args.images:
        images = image_paths(args.images)  # folders (sorted) and globs, as predict takes them
        options.update(images=images, preprocess=args.preprocess, resize=args.resize)
    return compare_activations(model, x, arrays, **options)


def _numpy_file(path: str) -> dict[str, np.ndarray]:
    """Every array of an .npz (or a .npy's array as "input"): regular, bounded, real."""
    return formats.npz.read_arrays(path, "activations dump or input", npy_name="input")


def _input_array(path: str) -> np.ndarray:
    arrays = _numpy_file(path)
    if list(arrays) != ["input"]:
        raise ValueError(f"{path}: --input must be a .npy file holding one array")
    return _nonempty(arrays["input"], path)


def _nonempty(x: np.ndarray, path: str) -> np.ndarray:
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(f"{path}: the input holds no image (shape {x.shape})")
    return x


# -- convert -------------------------------------------------------------------------------


def add_convert(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare ``vgg-np convert``."""
    convert = _new_command(
        commands,
        "convert",
        run_convert,
        summary="convert weights between formats (write .keras, .h5, .npz, .safetensors, .pth)",
        description=(
            "Read SOURCE in any supported format (Keras .h5, .weights.h5 and .keras, "
            "PyTorch .pth, .safetensors, ONNX, .npz) and write TARGET in the format its "
            "extension names: .keras (the whole Keras 3 model, which keras.models.load_model "
            "opens), .h5 (Keras Applications' layout for a plain VGG, else or with --layout "
            "model the whole model), .npz (vgg_np), .safetensors (torchvision layout unless "
            "--layout keras), .pth/.pt (torchvision layout; a head of one's own only where it "
            "fits torchvision's classifier). ONNX is read, never written."
        ),
        examples=[
            f"vgg-np convert {KERAS_VGG16} vgg16.safetensors",
            "vgg-np convert my_model.npz my_model.keras",
        ],
    )
    convert.add_argument("source")
    convert.add_argument("target", type=_output_file)
    convert.add_argument(
        "--layout",
        choices=["torchvision", "keras", "applications", "model"],
        help="for .safetensors (torchvision, keras) and .h5 (applications, model)",
    )


def run_convert(args: argparse.Namespace) -> int:
    """Convert a weights file to another format, keeping every tensor and the network."""
    source, written = export.convert(args.source, args.target, layout=args.layout)
    print(
        f"{args.source} ({source.format}) -> {args.target} ({written}): "
        f"{len(source.tensors)} layers"
    )
    return 0


# -- vectors -------------------------------------------------------------------------------


def add_vectors(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare ``vgg-np vectors``."""
    vectors = _new_command(
        commands,
        "vectors",
        run_vectors,
        summary="write conformance test cases (ONNX backend layout) from the float64 oracle",
        description=(
            "Write test cases for another implementation: every kernel (padding forms, odd "
            "sizes, strides, max-pool ties, softmax overflow, dropout with its mask) and every "
            "layer of a VGG16, expected outputs computed in float64. With the onnx package "
            "each case is a model.onnx and test_data_set_0/input_N.pb, output_0.pb (ONNX's "
            "backend test layout); otherwise .npy files. index.json lists every case with "
            "its tolerance. Arrays are NCHW/OIHW, as ONNX defines its operators."
        ),
        examples=[
            "vgg-np vectors cases/ --narrow",
            f"vgg-np vectors cases/ --weights {KERAS_VGG16}",
        ],
    )
    vectors.add_argument("out_dir", metavar="OUT_DIR", help="a new or empty directory")
    network = vectors.add_mutually_exclusive_group()
    network.add_argument("--weights", help="weights file for the layer cases (any format)")
    network.add_argument(
        "--narrow", action="store_true", help="VGG16 at 1/8 width on 32x32 inputs (small files)"
    )
    vectors.add_argument("--model", choices=sorted(CONFIGS), default="vgg16")
    vectors.add_argument("--seed", type=int, default=0, help="seed of weights and inputs (0)")
    vectors.add_argument("--npy", action="store_true", help=".npy files even with onnx")


def run_vectors(args: argparse.Namespace) -> int:
    """Write conformance test cases from the float64 oracle (`vgg_np.vectors`)."""
    from collections import Counter

    from vgg_np.vectors import NARROW_VGG16, write_vectors

    config = NARROW_VGG16 if args.narrow else args.model
    encoding = "npy" if args.npy else "auto"
    cases = write_vectors(
        args.out_dir, weights=args.weights, config=config, seed=args.seed, encoding=encoding
    )
    index = json.loads((pathlib.Path(args.out_dir) / "index.json").read_text())
    counts = Counter(case.kernel for case in cases)
    print(f"wrote {len(cases)} cases ({index['encoding']}) to {args.out_dir}: "
          + ", ".join(f"{kernel} {n}" for kernel, n in counts.items())
          + f"; layers of {index['network']['name']} ({index['network']['weights']})")  # fmt: skip
    return 0
