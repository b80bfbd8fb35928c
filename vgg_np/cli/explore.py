"""``vgg-np demo``, ``summary`` and ``show``: look at a network (no weights file needed)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from importlib import resources
from typing import TypeVar

import numpy as np

from vgg_np import __version__
from vgg_np._files import atomic_write
from vgg_np.cli._args import (
    EXIT_RUNTIME_ERROR,
    KERAS_VGG16,
    _add_plan,
    _base_layer,
    _image_side,
    _new_command,
    _non_negative_int,
    _picture_file,
)
from vgg_np.compare import DEFAULT_TOLERANCE
from vgg_np.config import CONFIGS, layer_table
from vgg_np.diagnose import relative_error
from vgg_np.model import VGG, VGG16
from vgg_np.preprocess import decode_predictions, load_image, preprocess_input
from vgg_np.summary import Summary
from vgg_np.visualize import feature_map_grid, filter_grid

#: The demo's last words: how to go on to real photos.
DEMO_HINT = (
    f"To classify real photos, download Keras's ImageNet weights once ({KERAS_VGG16}, "
    "553 MB, hash checked; `vgg-np fetch-weights vgg16` prints where it is) and run:\n"
    '  vgg-np predict photo.jpg --weights "$(vgg-np fetch-weights vgg16)"\n'
    'In Python: vgg_np.VGG16(weights="imagenet") finds the same file.'
)


T = TypeVar("T")


def _best_time(func: Callable[..., T], *args: object, repeat: int = 3) -> tuple[T, float]:
    """Run `func` `repeat` times (at least once); return its last result and the best time in s."""
    start = time.perf_counter()
    result = func(*args)
    best = time.perf_counter() - start
    for _ in range(repeat - 1):
        start = time.perf_counter()
        result = func(*args)
        best = min(best, time.perf_counter() - start)
    return result, best


# -- demo ----------------------------------------------------------------------------------


def add_demo(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare ``vgg-np demo``."""
    demo = _new_command(
        commands,
        "demo",
        run_demo,
        summary="print VGG16's table, run it on a bundled picture, check it against Keras",
        description=(
            "Build VGG16 with seeded weights (nothing is downloaded), print the classic "
            "per-layer table, classify the picture shipped in the package, confirm the "
            "logits against the Keras reference committed with vgg_np, and report the time "
            "per image."
        ),
        examples=["vgg-np demo"],
    )
    _add_plan(demo)


def run_demo(args: argparse.Namespace) -> int:
    """Print VGG16's table, run it on the bundled picture, check it against Keras."""
    data = resources.files("vgg_np") / "data"
    # as_file: a real path, even where the package is installed zipped
    with resources.as_file(data / "demo_keras_reference.npz") as path, np.load(path) as npz:
        reference = {k: npz[k] for k in npz.files}
    seed = int(reference["seed"])
    print(f"vgg_np {__version__}: VGG16 in NumPy, nothing downloaded\n")
    model = VGG16(seed=seed, classifier_activation=None, plan=args.plan)
    summary = model.summary()
    with resources.as_file(data / "demo.png") as path:
        pixels = load_image(path)[None]  # (1, 224, 224, 3)
    logits, seconds = _best_time(model, preprocess_input(pixels))
    error = relative_error(logits, reference["logits"])
    agrees = error < DEFAULT_TOLERANCE
    print(
        f"\nForward pass on the bundled picture (vgg_np/data/demo.png, 224x224), weights drawn "
        f"from seed {seed}:\n"
        f"  {seconds * 1e3:.0f} ms per image (best of 3), "
        f"{2 * summary.macs / seconds / 1e9:.0f} GFLOP/s\n"
        f"  agreement with Keras {reference['keras_version']} on the same weights and image "
        f"(committed reference): max |logit error| / max |logit| = {error:.1e} "
        f"({'within' if agrees else 'OVER'} the {DEFAULT_TOLERANCE:g} tolerance)\n"
        "  top classes (meaningless with random weights): "
        + ", ".join(f"{name} {score:.1f}" for _, name, score in decode_predictions(logits, 3)[0])
    )
    print("\n" + DEMO_HINT)
    return 0 if agrees else EXIT_RUNTIME_ERROR


# -- summary -------------------------------------------------------------------------------


def add_summary(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare ``vgg-np summary``."""
    summary = _new_command(
        commands,
        "summary",
        run_summary,
        summary="print the per-layer table: shapes, activations, weights, biases, MACs",
        description="Print the classic per-layer table of a VGG, computed from its layer table.",
        examples=[
            "vgg-np summary",
            "vgg-np summary --model vgg19 --input-shape 320 480 --no-top",
        ],
    )
    summary.add_argument("--model", choices=sorted(CONFIGS), default="vgg16")
    summary.add_argument(
        "--input-shape", nargs=2, type=_image_side, default=(224, 224), metavar=("H", "W")
    )
    summary.add_argument(
        "--no-top", action="store_true", help="without flatten and the dense layers"
    )
    summary.add_argument(
        "--weights",
        help="the network a weights file describes (batch norm, a head of its own), "
        "instead of --model",
    )


def run_summary(args: argparse.Namespace) -> int:
    """Print the per-layer table of a family member, computed from its layer table."""
    h, w = args.input_shape
    if args.weights:
        model = VGG.from_file(args.weights, data_format="channels_last")
        shape = model.input_shape if None not in model.input_shape else (h, w, 3)
        title = f"{args.weights} ({model.weights_format}): input {shape[0]}x{shape[1]}x3"
        print(Summary.of(model.layers, shape, title))
        return 0
    layers = layer_table(CONFIGS[args.model], include_top=not args.no_top)
    if not args.no_top and (h, w) != (224, 224):
        print("note: with the top, fc1's size follows the input size", file=sys.stderr)
    title = f"{args.model}: input {h}x{w}x3, include_top={not args.no_top}"
    print(Summary.of(layers, (h, w, 3), title))
    return 0


# -- show ----------------------------------------------------------------------------------


def add_show(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare ``vgg-np show``."""
    show = _new_command(
        commands,
        "show",
        run_show,
        summary="save a layer's feature maps (or the first filters) as a PNG grid",
        description=(
            "Run IMAGE through VGG16's convolutional base and save the feature maps of one "
            "layer as a grid of grayscale tiles, each stretched to its own range; or, with "
            "--filters, the first layer's 64 kernels as colour patches. Without --weights the "
            "weights are seeded He-normal draws."
        ),
        examples=[
            "vgg-np show cat.jpg --layer block1_conv2 -o maps.png",
            "vgg-np show --filters --weights vgg16.h5 -o filters.png",
        ],
        check=_check_show,
    )
    show.add_argument("image", nargs="?", help="the picture (not with --filters)")
    show.add_argument(
        "--layer", type=_base_layer, default="block1_conv2", help="layer name (block1_conv2)"
    )
    show.add_argument("--filters", action="store_true", help="the first layer's kernels instead")
    show.add_argument("--weights", help="weights file (default: seeded He-normal)")
    show.add_argument(
        "--seed", type=_non_negative_int, default=0, help="seed without --weights (0)"
    )
    show.add_argument(
        "-o", "--output", type=_picture_file, required=True, help="picture file to write"
    )
    _add_plan(show)


def _check_show(args: argparse.Namespace) -> str | None:
    if args.filters == (args.image is not None):
        return "show needs an IMAGE or --filters (one of them)"
    return None


def run_show(args: argparse.Namespace) -> int:
    """Save a layer's feature maps (or the first layer's filters) as a picture grid."""
    from PIL import Image

    if args.weights:  # the convolutional base only, in the layout of the loaded images
        # The engine answers every layer name, a batch-norm model's convolution before its
        # batch norm included (computed from the folded network's output before it), and
        # closer to float64 than the unfolded reference: no algorithm is chosen here.
        model = VGG.from_file(
            args.weights,
            include_top=False,
            head=None,
            input_shape=None,
            data_format="channels_last",
            plan=args.plan,
        )
    else:
        model = VGG16(include_top=False, seed=args.seed, plan=args.plan)
    if args.filters:
        picture, what = filter_grid(model.weights["block1_conv1"][0]), "first-layer filters"
    else:
        picture, what = _feature_maps(model, args.image, args.layer), f"{args.layer} feature maps"
    kind = Image.registered_extensions()[os.path.splitext(args.output)[1].lower()]
    with atomic_write(args.output) as out:  # never a half-written picture
        Image.fromarray(picture).save(out, format=kind)
    print(f"wrote {what} ({picture.shape[1]}x{picture.shape[0]}) to {args.output}")
    return 0


def _feature_maps(model: VGG, image: str, layer: str) -> np.ndarray:
    names = [layer.name for layer in model.layers]
    if layer not in names:
        raise ValueError(f"--layer {layer} is not in this model: {', '.join(names)}")
    pixels = load_image(image)[None]  # (1, 224, 224, 3)
    activation = model.activations(preprocess_input(pixels), [layer])[layer][0]  # (H, W, C)
    scale = max(1, 56 // activation.shape[0])  # small deep maps get bigger pixels
    return feature_map_grid(activation, scale=scale)
