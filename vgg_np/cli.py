"""The ``vgg-np`` command line: the only module that prints for users or exits.

Commands (each has ``--help`` with an example; all but ``fetch-weights`` work offline):

- ``demo``: print VGG16's table, run it on the bundled picture, check it against Keras
- ``predict``: classify images with a weights file
- ``extract``: one layer's features of many images to a .npy or .zarr, resumably
- ``summary``: the per-layer table of any family member
- ``show``: a layer's feature maps (or the first layer's filters) as a PNG grid
- ``train``: fine-tune the top of a reduced-width VGG16 on generated pictures
- ``compare``: another implementation's activations against vgg_np, layer by layer
- ``convert``: weights from one file format to another
- ``vectors``: conformance test cases for other implementations, from the float64 oracle
- ``fetch-weights``: download the published ImageNet weights (the only use of the network)

Conventions shared by every command: exit code 0 on success; 1 on a runtime error (a file
that cannot be used, a diverging layer, a skipped picture in ``predict`` and ``extract``
alike), told in one line on stderr that names the user's file; 2 on a usage error, and
every argument, every input path included, is checked before any work starts (before the
weights load); progress goes to stderr, never stdout; 130 on Ctrl-C, with one line and
no output file left half-written; 141 when stdout is closed early (``vgg-np predict ...
--json | head -1``), quietly. ``--debug``, before or after the command, shows the
traceback instead of the one line.

A command is two small functions: ``add_<name>(commands)`` declares its arguments, help
and example through `_new_command`, and ``run_<name>(args)`` does the work. Listing
``add_<name>`` in `COMMANDS` registers it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import glob
import json
import math
import os
import pathlib
import re
import sys
import textwrap
import time
from collections.abc import Callable
from importlib import resources

import numpy as np

from vgg_np import __version__, distributed, formats, hub
from vgg_np._files import NotARegularFile, atomic_write, check_regular
from vgg_np.compare import DEFAULT_TOLERANCE, compare_activations, compare_onnx
from vgg_np.config import CONFIGS, MIN_SIZE, VGGConfig, layer_table
from vgg_np.extract import DEFAULT_PARTITION_SIZE, SUFFIXES, extract, top_classes
from vgg_np.model import VGG, VGG16
from vgg_np.preprocess import (
    MODES,
    RESIZE_MODES,
    decode_predictions,
    load_image,
    preprocess_input,
    read_class_names,
)
from vgg_np.progress import Progress, write_line
from vgg_np.streams import ImageStream, image_paths, input_size
from vgg_np.summary import Summary
from vgg_np.visualize import feature_map_grid, filter_grid

EXIT_RUNTIME_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process Ctrl-C stopped
EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE, as for `yes | head -1`
#: The published Keras VGG16 file, as the examples name it.
KERAS_VGG16 = hub.PUBLISHED["vgg16", True][0].filename
#: The demo's last words: how to go on to real photos.
DEMO_HINT = (
    f"To classify real photos, download Keras's ImageNet weights once ({KERAS_VGG16}, "
    "553 MB, hash checked; `vgg-np fetch-weights vgg16` prints where it is) and run:\n"
    '  vgg-np predict photo.jpg --weights "$(vgg-np fetch-weights vgg16)"\n'
    'In Python: vgg_np.VGG16(weights="imagenet") finds the same file.'
)


def _relative_error(actual: np.ndarray, exact: np.ndarray) -> float:
    """Max absolute error over max absolute value: the figure quoted across vgg_np."""
    return float(np.max(np.abs(actual - exact)) / np.max(np.abs(exact)))


def _best_time(func, *args, repeat: int = 3):
    """Run `func` `repeat` times; return its last result and the best wall time in s."""
    best, result = np.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        result = func(*args)
        best = min(best, time.perf_counter() - start)
    return result, best


def _describe(error: BaseException) -> str:
    """One line naming the problem; every message starts with the file it is about."""
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"{error.filename}: no such file"
    if isinstance(error, OSError) and error.filename:
        return f"{error.filename}: {error.strerror}"
    return str(error)


# -- argument types: each checks one value before any work starts (else exit 2) ----------


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def _rate(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a rate in [0, 1), got {text}")
    return value


def _image_side(text: str) -> int:
    value = int(text)
    if value < MIN_SIZE:
        raise argparse.ArgumentTypeError(
            f"must be at least {MIN_SIZE} (five 2x2 poolings), got {text}"
        )
    return value


@functools.cache
def _family_layers(include_top: bool) -> tuple[str, ...]:
    """Layer names of every family member (VGG19's order first), with or without the top."""
    pool = 7 if include_top else None  # torchvision's avgpool
    configs = sorted(CONFIGS.values(), key=lambda config: -len(config.conv_names()))
    tables = [layer_table(c, include_top=include_top, adaptive_pool=pool) for c in configs]
    return tuple(dict.fromkeys(layer.name for table in tables for layer in table))


def _base_layer(text: str) -> str:
    if text not in _family_layers(False):
        raise argparse.ArgumentTypeError(
            f"must be a layer of the convolutional base ({', '.join(_family_layers(False))}), "
            f"got {text!r}"
        )
    return text


#: Names in VGG's own scheme (`vgg_np.config.layer_table`).
_VGG_NAME = re.compile(r"block\d+_(conv\d+(_bn)?|pool)|fc\d+|predictions|flatten|avgpool")


def _layer_list(text: str) -> list[str]:
    # A name in VGG's own scheme must be one of the family's (a typo like fc9 fails here);
    # a head of one's own names its layers freely (checked against the model later).
    names = [name.strip() for name in text.split(",") if name.strip()]
    family = _family_layers(True)
    unknown = [
        name
        for name in names
        if _VGG_NAME.fullmatch(name) and name.removesuffix("_bn") not in family
    ]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated layer names ({', '.join(family)}, or a head's own), "
            f"got {', '.join(unknown) or repr(text)}"
        )
    return names


def _output_file(text: str) -> str:
    directory = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(directory):
        raise argparse.ArgumentTypeError(f"{text}: the directory {directory} does not exist")
    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a directory, not a file name")
    return text


def _extract_output(text: str) -> str:
    if not text.endswith(SUFFIXES):
        raise argparse.ArgumentTypeError(f"{text}: must end in .npy or .zarr")
    directory = os.path.dirname(os.path.abspath(text))
    if not os.path.isdir(directory):
        raise argparse.ArgumentTypeError(f"{text}: the directory {directory} does not exist")
    return text  # may exist: a rerun resumes it


def _picture_file(text: str) -> str:
    from PIL import Image

    kind = Image.registered_extensions().get(os.path.splitext(text)[1].lower())
    if kind not in Image.SAVE:
        raise argparse.ArgumentTypeError(f"{text}: not a picture file name (.png, .jpg, ...)")
    return _output_file(text)


#: The arguments that name files or folders to read, in any command, and how help names them.
INPUTS = {
    "images": "IMAGE_OR_DIR",
    "image": "IMAGE",
    "weights": "--weights",
    "labels": "--labels",
    "activations": "ACTIVATIONS",
    "input": "--input",
    "source": "SOURCE",
    "reference": "--reference",
}
#: A --weights value that names no file: the published weights (`vgg_np.hub`),
#: ``imagenet[:MODEL[:FAMILY]]``.
_IMAGENET = re.compile(r"imagenet(?::(?P<model>\w+))?(?::(?P<family>keras|torchvision))?")


def _check_inputs(args: argparse.Namespace) -> str | None:
    """Return the first input path that names nothing, before any work (exit code 2).

    Images and folders must exist; a glob may match nothing here (``no images found``
    is then reported, still before the weights load). Single input files must be
    regular files (a FIFO would block the reader forever).
    """
    for name, label in INPUTS.items():
        value = getattr(args, name, None)
        published = name in ("weights", "reference") and _IMAGENET.fullmatch(str(value))
        if value is None or published:
            continue
        for item in value if isinstance(value, list) else [value]:
            if name == "images" and glob.has_magic(item):
                continue
            if not os.path.exists(item):
                said = getattr(args, "images_label", label) if name == "images" else label
                return f"{said} {item}: no such file or directory"
            if name not in ("images", "image"):  # images: folders too, each file checked later
                try:
                    check_regular(item, "file")
                except NotARegularFile as error:
                    return f"{label} {error}"
    return None


# -- demo ----------------------------------------------------------------------------------


def add_demo(commands) -> None:
    """Declare ``vgg-np demo``."""
    _new_command(
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


def run_demo(args: argparse.Namespace) -> int:
    """Print VGG16's table, run it on the bundled picture, check it against Keras."""
    data = resources.files("vgg_np") / "data"
    with np.load(data / "demo_keras_reference.npz") as npz:
        reference = {k: npz[k] for k in npz.files}
    seed = int(reference["seed"])
    print(f"vgg_np {__version__}: VGG16 in NumPy, nothing downloaded\n")
    model = VGG16(seed=seed, classifier_activation=None)
    summary = model.summary()
    pixels = load_image(data / "demo.png")[None]  # (1, 224, 224, 3)
    logits, seconds = _best_time(model, preprocess_input(pixels))
    error = _relative_error(logits, reference["logits"])
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


# -- predict -------------------------------------------------------------------------------


def add_predict(commands) -> None:
    """Declare ``vgg-np predict``."""
    predict = _new_command(
        commands,
        "predict",
        run_predict,
        summary="classify images with a weights file",
        description=(
            "Classify images (files, directories, globs) with a VGG weights file of any "
            "supported format. Preprocessing and resizing follow the weights' provenance unless "
            "given (Keras-trained weights use 'caffe' and Keras's resize, torchvision's 'torch' "
            "and torchvision's), and the choice is printed with its reason; weights whose "
            "provenance is unknown need --preprocess. A bad image (unreadable, damaged, too "
            "large, not a regular file) is reported on stderr and skipped; the others are still "
            "classified (exit code 1)."
        ),
        examples=[
            f"vgg-np predict cat.jpg --weights {KERAS_VGG16}",
            "vgg-np predict photos/ --weights vgg16.pth --top 3 --json",
            "vgg-np predict photos/ --weights vgg16.h5 -o probabilities.npy --top 5",
        ],
    )
    predict.add_argument(
        "images", nargs="+", metavar="IMAGE_OR_DIR", help="images, directories or globs"
    )
    predict.add_argument(
        "--weights",
        required=True,
        help="weights file (Keras, PyTorch, ONNX, npz, ...), or imagenet[:MODEL[:FAMILY]] "
        "for the published weights fetch-weights downloaded",
    )
    predict.add_argument("--top", type=_positive_int, default=5, help="classes per image (5)")
    predict.add_argument(
        "--preprocess", choices=MODES, help="caffe, torch or tf (default: from the weights)"
    )
    predict.add_argument(
        "--resize", choices=RESIZE_MODES, help="keras or torchvision (from the weights)"
    )
    predict.add_argument(
        "--batch-size", type=_positive_int, default=8, help="images per forward pass (8)"
    )
    predict.add_argument(
        "--labels",
        help="class names of a classifier of one's own, one per line in output order "
        "(without it only an ImageNet classifier's classes are named)",
    )
    predict.add_argument("--json", action="store_true", help="one JSON object per image")
    predict.add_argument(
        "-o", "--output", type=_extract_output,
        help="write what it ranks to OUT.npy or OUT.zarr instead, in extract's store: "
        "probabilities (a softmax after a linear classifier, where extract keeps its logits), "
        "or the scores of a head ending in another activation",
    )  # fmt: skip
    predict.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress on stderr (default: for more than 8 images; a bar on a terminal, "
        "else a line every 10 s)",
    )


def run_predict(args: argparse.Namespace) -> int:
    """Classify images with a weights file; a bad image is reported, the others go on."""
    paths = image_paths(args.images)
    if not paths:
        raise ValueError(f"no images found in {' '.join(args.images)}")
    # Images are loaded channels last, whatever layout the file's graph takes.
    model = VGG.from_file(
        args.weights, classifier_activation="softmax", data_format="channels_last"
    )
    names = _class_names(args.labels, model) if args.labels else None
    if names is None and model.head is not None:  # a head of one's own: never ImageNet's
        names = [f"class {i}" for i in range(model.classes)]
    if not model.include_top:
        note = model.weights_info.get("note")  # an ONNX head vgg_np cannot read, named
        raise ValueError(
            f"{args.weights} has no classifier vgg_np can run: "
            + (note or "a 'notop' file (no fc1 ... predictions) cannot predict classes")
        )
    choice = _choose_preprocessing(model, args)
    print(
        f"weights {args.weights}: preprocessing {choice.mode!r}, resize {choice.resize!r} "
        f"({choice.reason})",
        file=sys.stderr,
    )
    if args.output:
        # The classifier's own last layer: "predictions", or a head's (Keras: "dense_1").
        args.layer, args.partition_size = model.layers[-1].name, DEFAULT_PARTITION_SIZE
        args.decode_threads = 2
        return _extract(args, model)
    stream = ImageStream(
        paths, choice, size=input_size(model), batch_size=args.batch_size, on_skip=_skip,
        expand=False,
    )  # fmt: skip
    # Only a softmax makes probabilities: another head's outputs are scores (still ranked).
    value = "probability" if model.output_kind == "probabilities" else "score"
    show = args.progress if args.progress is not None else len(paths) > 8
    predicted = 0
    with Progress(len(paths), enabled=show) as bar:
        for batch_paths, batch in stream:
            for path, row in zip(batch_paths, model(batch), strict=True):
                # One write per image: an interrupted run never ends mid-record.
                write_line(_prediction(path, row, args, choice, names, value))
            predicted += len(batch_paths)
            bar.update(predicted + len(stream.skipped) - bar.done)  # skipped ones count too
        bar.update(len(paths) - bar.done)  # pictures skipped after the last batch
    if stream.skipped:
        print(f"vgg-np: {len(stream.skipped)} of {len(paths)} images skipped", file=sys.stderr)
    return EXIT_RUNTIME_ERROR if stream.skipped else 0


def _skip(path: str, reason: str) -> None:
    write_line(f"vgg-np: skipping {reason}", file=sys.stderr)


def _choose_preprocessing(model: VGG, args: argparse.Namespace) -> formats.Preprocessing:
    """Choose the user's --preprocess / --resize, else what the weights' provenance says.

    The choice carries its reason; when nothing says, the error asks for --preprocess.
    """
    return formats.choose_preprocessing(
        model.weights_provenance,
        preprocess=args.preprocess,
        resize=args.resize,
        where=args.weights,
    )


def _class_names(path: str, model: VGG) -> list[str]:
    """Read --labels: one class name per line, as many as the model has outputs."""
    try:
        return read_class_names(path, model.classes)
    except ValueError as error:
        raise ValueError(f"--labels {error}") from None


def _prediction(path: str, row: np.ndarray, args, choice, names, value: str) -> str:
    """Format the classes of one image as text lines or one JSON object.

    `value` names the numbers: "probability", or "score" (said on every text line too)
    where the model's output is not a softmax.
    """
    best = top_classes(row, args.top, class_names=names)
    if args.json:
        entries = [{"wnid": w, "label": n, value: round(p, 6)} for w, n, p in best]
        return json.dumps(
            {"image": path, "preprocess": choice.mode, "resize": choice.resize, "top": entries}
        )
    lines = [path]
    said = "" if value == "probability" else "score "
    for rank, (wnid, name, number) in enumerate(best, start=1):
        lines.append(f"  {rank}. {name:<30} {wnid}  {said}{number:.4f}")
    return "\n".join(lines)


# -- extract -------------------------------------------------------------------------------


def add_extract(commands) -> None:
    """Declare ``vgg-np extract``."""
    parser = _new_command(
        commands,
        "extract",
        run_extract,
        summary="one layer's features of many images to a .npy or .zarr, resumably",
        description=(
            "Run images (files, directories, globs; sorted, duplicates dropped) through a "
            "weights file and write LAYER's output, one row per image, to OUT (.npy through a "
            "memory map, or .zarr with the zarr package), with a manifest in OUT.manifest/ "
            "(JSON Lines: row, path, status, reason, top classes). A rerun resumes where the "
            "last one stopped; a bad image gets a NaN row and its reason and the run goes "
            "on (exit code 1 at the end). With "
            "--scheduler or --workers (needs the dask extra) the partitions run as Dask tasks "
            "and write the same OUT; the weights and OUT must be at the same paths on every "
            "worker (docs/distributed.md)."
        ),
        examples=[
            "vgg-np extract photos/ --weights vgg16.h5 --layer fc2 -o fc2.npy",
            "vgg-np extract 'photos/**/*.jpg' --weights vgg16.pth --layer block5_pool "
            "-o maps.zarr --json",
            "vgg-np extract /shared/photos --weights /shared/vgg16.h5 --layer fc2 "
            "-o /shared/fc2.zarr --scheduler tcp://head:8786",
        ],
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    parser.add_argument("--weights", required=True, help="weights file of any supported format, "
                        "or imagenet[:MODEL[:FAMILY]] (see fetch-weights)")  # fmt: skip
    parser.add_argument("--layer", help="whose output is stored (default: the last layer)")
    parser.add_argument(
        "-o", "--output", required=True, type=_extract_output, help="OUT.npy or OUT.zarr"
    )
    parser.add_argument("--top", type=_non_negative_int, default=0, help="classes per entry (0)")
    parser.add_argument("--preprocess", choices=MODES, help="caffe, torch or tf (from the weights)")
    parser.add_argument("--resize", choices=RESIZE_MODES, help="keras or torchvision (weights)")
    parser.add_argument("--batch-size", type=_positive_int, default=32, help="per pass (32)")
    parser.add_argument(
        "--partition-size", type=_positive_int, default=DEFAULT_PARTITION_SIZE,
        help=f"images per partition, the unit of completion ({DEFAULT_PARTITION_SIZE})",
    )  # fmt: skip
    parser.add_argument("--decode-threads", type=_non_negative_int, default=2, help="per process")
    parser.add_argument("--threads", type=_positive_int, help="engine threads (CPUs / --workers)")
    parser.add_argument("--json", action="store_true", help="a JSON summary at the end")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress on stderr (default: for more than one batch; a bar on "
                             "a terminal, else a line every 10 s)")  # fmt: skip
    cluster = parser.add_mutually_exclusive_group()
    cluster.add_argument("--scheduler", metavar="ADDRESS",
                         help="run the partitions on a Dask cluster (tcp://HOST:8786)")  # fmt: skip
    cluster.add_argument("--workers", type=_positive_int, metavar="N",
                         help="run them on a local Dask cluster of N processes")  # fmt: skip
    parser.add_argument(
        "--cluster-timeout", type=_positive_float, default=distributed.DEFAULT_TIMEOUT,
        metavar="SECONDS", help="wait for the scheduler's answer, then for a worker "
        f"({distributed.DEFAULT_TIMEOUT:g})",
    )  # fmt: skip


def run_extract(args: argparse.Namespace) -> int:
    """Write one layer's features (and top classes) of many images to disk, resumably."""
    if args.scheduler or args.workers:
        return _extract_on_cluster(args)
    return _extract(args, VGG.from_file(args.weights, threads=args.threads))


def _extract_on_cluster(args: argparse.Namespace) -> int:
    """``extract --scheduler ADDRESS`` or ``--workers N``: the partitions as Dask tasks."""
    with distributed.connect(args.scheduler, args.workers, timeout=args.cluster_timeout) as client:
        print(distributed.describe(client), file=sys.stderr)
        result = distributed.extract_on_cluster(
            args.images, args.output, args.weights, client,
            options=distributed.engine_options(args.workers, args.threads), layer=args.layer,
            top=args.top, batch_size=args.batch_size, partition_size=args.partition_size,
            decode_threads=args.decode_threads, preprocess=args.preprocess, resize=args.resize,
            verbose="auto" if args.progress is None else args.progress, on_skip=_skip,
        )  # fmt: skip
    return _extract_summary(result, args.json)


def _extract(args: argparse.Namespace, model: VGG) -> int:
    result = extract(
        args.images,
        args.output,
        model,
        layer=args.layer,
        top=args.top,
        batch_size=args.batch_size,
        partition_size=args.partition_size,
        workers=args.decode_threads,
        preprocess=args.preprocess,
        resize=args.resize,
        verbose="auto" if args.progress is None else args.progress,
        on_skip=_skip,
    )
    return _extract_summary(result, args.json)


def _extract_summary(result, as_json: bool) -> int:
    """Print the summary of a local or cluster run: one line, or JSON."""
    if as_json:
        print(json.dumps(result.to_dict()))
    else:
        print(
            f"{result.out}: {result.shape} {result.layer}; {result.written} images written "
            f"({result.failed} failed) at {result.images_per_second:.1f} images/s, "
            f"{result.already_done} done before; {result.failed_total} failed in all "
            f"(reasons in {result.manifest}); preprocessing {result.preprocessing['mode']!r}, "
            f"resize {result.preprocessing['resize']!r} ({result.preprocessing['reason']})"
            + (
                f"; recomputed {result.changed} rows whose image changed and {result.damaged} "
                "whose stored bytes no longer matched their checksum"
                if result.changed or result.damaged
                else ""
            )
        )
    # The rule of every command: an input picture skipped (its row NaN) is exit code 1.
    return EXIT_RUNTIME_ERROR if result.failed_total else 0


# -- summary -------------------------------------------------------------------------------


def add_summary(commands) -> None:
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


def add_show(commands) -> None:
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


def _check_show(args: argparse.Namespace) -> str | None:
    if args.filters == (args.image is not None):
        return "show needs an IMAGE or --filters (one of them)"
    return None


def run_show(args: argparse.Namespace) -> int:
    """Save a layer's feature maps (or the first layer's filters) as a picture grid."""
    from PIL import Image

    if args.weights:  # the convolutional base only, in the layout of the loaded images
        model = VGG.from_file(
            args.weights,
            include_top=False,
            head=None,
            input_shape=None,
            data_format="channels_last",
        )
        if model.batch_norm:  # a convolution's own output: not in the engine's folded table
            model.conv_algorithm = "reference"
    else:
        model = VGG16(include_top=False, seed=args.seed)
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
    activation = model.activations(preprocess_input(pixels))[layer][0]
    scale = max(1, 56 // activation.shape[0])  # small deep maps get bigger pixels
    return feature_map_grid(activation, scale=scale)


# -- train ---------------------------------------------------------------------------------


def add_train(commands) -> None:
    """Declare ``vgg-np train``."""
    train = _new_command(
        commands,
        "train",
        run_train,
        summary="fine-tune the top of a reduced-width VGG16 on generated pictures",
        description=(
            "Generate pictures of stripes, checkerboards and discs, build a narrow VGG16 "
            "(seeded), and train fc1, fc2 and predictions with SGD (momentum 0.9, weight "
            "decay 5e-4, dropout) using vgg_np's own backward pass; prints the loss and "
            "the held-out accuracy per epoch."
        ),
        examples=["vgg-np train --epochs 20 --seed 0"],
    )
    train.add_argument("--epochs", type=_positive_int, default=20)
    train.add_argument("--train", type=_positive_int, default=800, help="training pictures (800)")
    train.add_argument("--test", type=_positive_int, default=200, help="held-out pictures (200)")
    train.add_argument("--batch-size", type=_positive_int, default=32)
    train.add_argument("--lr", type=_positive_float, default=0.01)
    train.add_argument("--seed", type=_non_negative_int, default=0)
    train.add_argument("--all-layers", action="store_true", help="train the convolutions too")
    train.add_argument(
        "--dropout", type=_rate, default=0.0, help="rate after fc1 and fc2, in [0, 1) (0: off)"
    )


def run_train(args: argparse.Namespace) -> int:
    """Fine-tune a reduced-width VGG16 on generated shapes; print loss and accuracy."""
    from vgg_np.train import SGD, SHAPES, shapes_dataset

    config = VGGConfig(
        "vgg16-narrow",
        ((8, 8), (16, 16), (32,) * 3, (64,) * 3, (64,) * 3),
        fc=(64, 64),
        default_size=32,
    )
    model = VGG(config, classes=len(SHAPES), classifier_activation=None, seed=args.seed)
    images, labels = shapes_dataset(args.train + args.test, seed=args.seed)
    x = preprocess_input(images, mode="tf")
    train, test = (x[: args.train], labels[: args.train]), (x[args.train :], labels[args.train :])
    trainable = None if args.all_layers else {"fc1", "fc2", "predictions"}
    optimizer = SGD(lr=args.lr, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(args.seed)
    what = "every layer" if args.all_layers else "fc1, fc2, predictions"
    print(
        f"fine-tuning {what} of {config.name} on {args.train} generated pictures of "
        f"{len(SHAPES)} classes ({', '.join(SHAPES)}); {args.test} held out"
    )
    print(f"epoch 0: test accuracy {_accuracy(model, *test):.3f}")
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        loss = _train_epoch(model, *train, args, optimizer, rng, trainable)
        accuracy, seconds = _accuracy(model, *test), time.perf_counter() - start
        print(
            f"epoch {epoch}: train loss {loss:.4f}, test accuracy {accuracy:.3f}, {seconds:.1f} s"
        )
    return 0


def _accuracy(model: VGG, x: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(model(x), axis=1) == labels))


def _train_epoch(model, x, labels, args, optimizer, rng, trainable) -> float:
    """One pass over (x, labels) in shuffled mini-batches; return the mean loss."""
    from vgg_np.train import loss_and_gradients

    order = rng.permutation(len(x))
    losses = []
    for first in range(0, len(x), args.batch_size):
        batch = order[first : first + args.batch_size]
        loss, grads, _ = loss_and_gradients(
            model, x[batch], labels[batch], dropout=args.dropout, rng=rng, trainable=trainable
        )
        optimizer.step(model, grads)
        losses.append(loss)
    return float(np.mean(losses))


# -- compare -------------------------------------------------------------------------------


def add_compare(commands) -> None:
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
                args.weights, x, weights=args.reference, oracle=args.oracle, **options
            )
        else:
            result = _compare_dump(args, options)
    except ValueError as error:  # a refusal that names no file names what was compared
        paths = (args.weights, args.activations, args.input, args.reference, *(args.images or ()))
        if any(path and path in str(error) for path in paths):
            raise
        raise ValueError(f"{args.activations or args.weights}: {error}") from None
    print(json.dumps(result.to_dict()) if args.json else result)
    return 0 if result.passed else EXIT_RUNTIME_ERROR


def _compare_dump(args: argparse.Namespace, options: dict):
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


def add_convert(commands) -> None:
    """Declare ``vgg-np convert``."""
    convert = _new_command(
        commands,
        "convert",
        run_convert,
        summary="convert weights between formats (write .h5, .npz, .safetensors, .pth)",
        description=(
            "Read SOURCE in any supported format (Keras .h5, .weights.h5 and .keras, "
            "PyTorch .pth, .safetensors, ONNX, .npz) and write TARGET in the format its "
            "extension names: .npz (vgg_np), .h5 (Keras Applications layout), .safetensors "
            "(torchvision layout unless --layout keras), .pth/.pt (torchvision layout). "
            ".keras and ONNX are read, never written."
        ),
        examples=[f"vgg-np convert {KERAS_VGG16} vgg16.safetensors"],
    )
    convert.add_argument("source")
    convert.add_argument("target", type=_output_file)
    convert.add_argument("--layout", choices=["torchvision", "keras"], help="for .safetensors")


def run_convert(args: argparse.Namespace) -> int:
    """Convert a weights file to another format, keeping every tensor."""
    source, written = formats.convert(args.source, args.target, layout=args.layout)
    print(
        f"{args.source} ({source.format}) -> {args.target} ({written}): "
        f"{len(source.tensors)} layers"
    )
    return 0


# -- vectors -------------------------------------------------------------------------------


def add_vectors(commands) -> None:
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


# -- fetch-weights -------------------------------------------------------------------------


def add_fetch_weights(commands) -> None:
    """Declare ``vgg-np fetch-weights``."""
    parser = _new_command(
        commands,
        "fetch-weights",
        run_fetch_weights,
        summary="download published ImageNet weights (Keras's, torchvision's) into their cache",
        description=(
            "Print the path of a verified copy of the published ImageNet weights of MODEL, "
            "looking in the Keras cache ($KERAS_HOME/models) and torch's "
            "($TORCH_HOME/hub/checkpoints), and downloading the published file into its "
            "cache if there is none (Keras's for vgg16 and vgg19 unless --family "
            "torchvision; torchvision's for the others): at most the published size, "
            "within --deadline seconds, hash checked, renamed into place only when complete. "
            "The only command that uses the network. Other commands take the cached copy "
            "as --weights imagenet (or imagenet:MODEL, imagenet:MODEL:FAMILY)."
        ),
        examples=[
            "vgg-np fetch-weights vgg16 --no-top",
            "vgg-np fetch-weights vgg16_bn",
            "vgg-np fetch-weights vgg19 --family torchvision --force",
        ],
    )
    parser.add_argument("model", metavar="MODEL", choices=hub.NAMES, help=", ".join(hub.NAMES))
    parser.add_argument("--no-top", action="store_true", help="the file without the classifier")
    parser.add_argument("--family", choices=["keras", "torchvision"], help="whose file")
    parser.add_argument(
        "--force", action="store_true", help="download again over a copy that fails its hash"
    )
    parser.add_argument(
        "--deadline",
        type=_positive_float,
        default=hub.DEADLINE,
        metavar="SECONDS",
        help=f"give up a download after this long ({hub.DEADLINE:g})",
    )
    parser.add_argument("--base-url", help="download from this directory URL (a mirror)")


def run_fetch_weights(args: argparse.Namespace) -> int:
    """Find or download the published ImageNet weights; print the path."""
    path = hub.resolve(
        args.model,
        not args.no_top,
        download_missing=True,
        base_url=args.base_url,
        progress=sys.stderr.isatty(),
        family=args.family,
        force=args.force,
        deadline=args.deadline,
    )
    print(path)
    return 0


def _imagenet_weights(args: argparse.Namespace) -> None:
    """Replace ``--weights imagenet[:MODEL[:FAMILY]]`` by the verified cached file's path.

    MODEL defaults to the command's ``--model`` (else vgg16); nothing is downloaded here
    (``fetch-weights`` does that): without a copy the error says where to put one.
    """
    match = _IMAGENET.fullmatch(str(getattr(args, "weights", None)))
    if match is None:
        return
    model = match["model"] or getattr(args, "model", None) or "vgg16"
    if model not in hub.NAMES:
        args.usage_error(
            f"--weights {args.weights}: ImageNet weights are published for "
            f"{', '.join(hub.NAMES)}, not {model}"
        )
    args.weights = str(hub.resolve(model, True, family=match["family"]))


# -- the program ---------------------------------------------------------------------------

#: The commands, in the order ``vgg-np --help`` lists them.
COMMANDS: tuple[Callable, ...] = (
    add_demo,
    add_predict,
    add_extract,
    add_summary,
    add_show,
    add_train,
    add_compare,
    add_convert,
    add_vectors,
    add_fetch_weights,
)


def _new_command(
    commands,
    name: str,
    run: Callable[[argparse.Namespace], int],
    *,
    summary: str,
    description: str,
    examples: list[str],
    check: Callable[[argparse.Namespace], str | None] | None = None,
) -> argparse.ArgumentParser:
    """Add one command's parser: help, examples, ``--debug``, what runs it.

    `check` sees the parsed arguments before anything runs and returns a usage problem
    (exit code 2) or None: for rules between arguments, which argparse cannot express.
    """
    label = "Example: " if len(examples) == 1 else "Examples: "
    debug = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: given before the command, --debug must not be reset by this default.
    debug.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
    )
    parser = commands.add_parser(
        name,
        help=summary,
        description=textwrap.fill(description, 88),
        epilog=label + ("\n" + " " * len(label)).join(examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[debug],
    )
    parser.set_defaults(run=run, check=check, usage_error=parser.error)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of ``vgg-np``, one subparser per entry of `COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="vgg-np",
        description="VGG16 in plain NumPy: learn it, verify against it, run it.",
        epilog="Example: vgg-np demo",
    )
    parser.add_argument("--version", action="version", version=f"vgg_np {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(commands)
    return parser


def _silence_stdout() -> None:
    """Point stdout at the null device, so the final flush into a closed pipe is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (captured, replaced): nothing to do
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vgg-np`` and ``python -m vgg_np``; returns the exit code.

    Exit codes: 0 success, 1 runtime error (a file that cannot be used, a layer that
    diverges, a picture skipped), 2 usage error (bad arguments or input paths that name
    nothing, found before any work),
    130 interrupted (Ctrl-C), 141 stdout closed early.

    Examples
    --------
    >>> main(["summary", "--model", "vgg11", "--no-top", "--input-shape", "32", "32"])
    vgg11: input 32x32x3, include_top=False
    ...
    parameters: 9,220,480 = 9,217,728 weights + 2,752 biases
    ...
    0
    """
    args = build_parser().parse_args(argv)
    # A file name that is not UTF-8 reaches Python as surrogate escapes: print its own bytes
    # back (as ls does) rather than stop half way with a codec error.
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(errors="surrogateescape")
    problem = (args.check(args) if args.check else None) or _check_inputs(args)
    if problem:
        args.usage_error(problem)  # exits with code 2
    try:
        _imagenet_weights(args)
        code = args.run(args)
        sys.stdout.flush()  # a closed pipe shows here rather than at exit
        return code
    except KeyboardInterrupt as error:
        if args.debug:
            raise
        print(f"vgg-np: interrupted{': ' if str(error) else ''}{error}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_CLOSED_PIPE
    except (ValueError, TypeError, OSError, ImportError, distributed.ClusterError) as error:
        if args.debug:
            raise
        print(f"vgg-np: error: {_describe(error)}", file=sys.stderr)
        return EXIT_RUNTIME_ERROR
