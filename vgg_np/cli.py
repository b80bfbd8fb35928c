"""The ``vgg-np`` command line: the only module that prints for users or exits.

Commands: ``demo``, ``predict``, ``extract``, ``summary``, ``show``, ``compare``,
``convert``, ``fetch-weights``; each has ``--help`` with an example. Everything but
``fetch-weights`` works offline.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import resources

import numpy as np

from vgg_np import __version__, distributed, formats, hub
from vgg_np.compare import DEFAULT_TOLERANCE, compare_activations, compare_onnx
from vgg_np.extract import DEFAULT_PARTITION_SIZE, extract, top_classes
from vgg_np.model import CONFIGS, VGG, VGG16, Summary, layer_table
from vgg_np.preprocess import MODES, RESIZE_MODES, decode_predictions, load_image, preprocess_input
from vgg_np.progress import Progress
from vgg_np.streams import ImageStream, preprocessing_for
from vgg_np.visualize import feature_map_grid, filter_grid

EXIT_RUNTIME_ERROR = 1


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
    x = preprocess_input(pixels)
    logits, seconds = _best_time(model, x)
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
    print(
        "\nTo classify real photos, get Keras's ImageNet weights once "
        "(vgg16_weights_tf_dim_ordering_tf_kernels.h5, 553 MB, from the Keras Applications "
        "releases) and run:\n  vgg-np predict photo.jpg --weights "
        "vgg16_weights_tf_dim_ordering_tf_kernels.h5"
    )
    return 0 if agrees else EXIT_RUNTIME_ERROR


def run_summary(args: argparse.Namespace) -> int:
    """Print the per-layer table of a family member, computed from its layer table."""
    h, w = args.input_shape
    layers = layer_table(CONFIGS[args.model], include_top=not args.no_top)
    if not args.no_top and (h, w) != (224, 224):
        print("note: with the top, fc1's size follows the input size", file=sys.stderr)
    title = f"{args.model}: input {h}x{w}x3, include_top={not args.no_top}"
    print(Summary.of(layers, (h, w, 3), title))
    return 0


def _model_and_preprocessing(args: argparse.Namespace, **kwargs):
    """Load --weights; pick the preprocessing its family implies unless given."""
    model = VGG.from_file(args.weights, **kwargs)
    return model, preprocessing_for(model, args.preprocess, args.resize)


def _skip(path: str, reason: str) -> None:
    print(f"vgg-np: skipping {reason}", file=sys.stderr)


def run_predict(args: argparse.Namespace) -> int:
    """Classify images with a weights file; one bad image is reported and skipped."""
    model, prep = _model_and_preprocessing(args, classifier_activation="softmax")
    if not model.include_top:
        raise ValueError(
            f"{args.weights} has no classifier (fc1 ... predictions): a 'notop' file cannot "
            "predict classes"
        )
    if args.output:
        result = extract(
            args.images,
            args.output,
            model,
            layer="predictions",
            top=args.top,
            batch_size=args.batch_size,
            prep=prep,
            verbose="auto" if args.progress is None else args.progress,
            on_skip=_skip,
        )
        _print_extract_summary(result, prep, args.json)
        return 0
    stream = ImageStream(args.images, prep, batch_size=args.batch_size, on_skip=_skip)
    if not stream.paths:
        raise ValueError(f"no images found in {' '.join(args.images)}")
    print(f"weights {args.weights}; {prep.describe()}", file=sys.stderr)
    show = args.progress if args.progress is not None else len(stream) > 8 and sys.stderr.isatty()
    with Progress(len(stream), enabled=show) as bar:
        for paths, batch in stream:
            for path, row in zip(paths, model(batch), strict=True):
                _print_prediction(path, row, args.top, args.json, prep.mode, prep.resize)
            bar.update(len(paths))
    return EXIT_RUNTIME_ERROR if stream.skipped else 0


def _print_prediction(path: str, row: np.ndarray, top: int, as_json: bool, mode: str, resize: str):
    best = top_classes(row, top)
    if as_json:
        entries = [{"wnid": w, "label": n, "probability": round(p, 6)} for w, n, p in best]
        print(json.dumps({"image": path, "preprocess": mode, "resize": resize, "top": entries}))
    else:
        print(path)
        for rank, (wnid, name, probability) in enumerate(best, start=1):
            print(f"  {rank}. {name:<30} {wnid}  {probability:.4f}")


def _print_extract_summary(result, prep, as_json: bool) -> None:
    if as_json:
        print(json.dumps({**result.to_dict(), "preprocessing": prep.describe()}))
    else:
        print(
            f"{result.out}: {result.shape} {result.layer}; {result.written} images written "
            f"({result.failed} failed) at {result.images_per_second:.1f} images/s, "
            f"{result.already_done} done before; {result.failed_total} failed in all "
            f"(reasons in {result.manifest}); {prep.describe()}"
        )


def run_extract(args: argparse.Namespace) -> int:
    """Write one layer's features (and top classes) of many images to disk, resumably."""
    if args.scheduler or args.workers:
        return _run_extract_on_cluster(args)
    model, prep = _model_and_preprocessing(args, threads=args.threads)
    result = extract(
        args.images,
        args.output,
        model,
        layer=args.layer,
        top=args.top,
        batch_size=args.batch_size,
        partition_size=args.partition_size,
        workers=args.decode_threads,
        prep=prep,
        verbose="auto" if args.progress is None else args.progress,
        on_skip=_skip,
    )
    _print_extract_summary(result, prep, args.json)
    return 0


def _run_extract_on_cluster(args: argparse.Namespace) -> int:
    """``extract --scheduler ADDRESS`` or ``--workers N``: the partitions as Dask tasks."""
    options = distributed.engine_options(args.workers, args.threads)
    model = distributed.load_model(args.weights, options)
    prep = preprocessing_for(model, args.preprocess, args.resize)
    with distributed.connect(args.scheduler, args.workers) as client:
        print(distributed.describe(client), file=sys.stderr)
        result = distributed.extract_on_cluster(
            args.images, args.output, args.weights, client, options=options, layer=args.layer,
            top=args.top, batch_size=args.batch_size, partition_size=args.partition_size,
            decode_threads=args.decode_threads, prep=prep, on_skip=_skip,
            verbose="auto" if args.progress is None else args.progress,
        )  # fmt: skip
    _print_extract_summary(result, prep, args.json)
    return 0


def add_extract_parser(commands) -> None:
    """Add ``vgg-np extract`` to the subcommands."""
    parser = commands.add_parser(
        "extract",
        help="write one layer's features of many images to .npy or .zarr, resumably",
        description=(
            "Run images (files, directories, globs; sorted, duplicates dropped) through a "
            "weights file and write LAYER's output, one row per image, to OUT (.npy through "
            "a memory map, or .zarr with the zarr package), with a manifest in OUT.manifest/ "
            "(JSON Lines: row, path, status, reason, top classes). A rerun resumes where the "
            "last one stopped; a bad image gets a NaN row and its reason, never an error. "
            "With --scheduler or --workers (needs vgg_np[dask]) the partitions run as Dask "
            "tasks and write the same OUT; weights and OUT must be at the same paths on "
            "every worker (docs/distributed.md)."
        ),
        epilog=(
            "Examples: vgg-np extract photos/ --weights vgg16.h5 --layer fc2 -o fc2.npy\n"
            "          vgg-np extract 'photos/**/*.jpg' --weights vgg16.pth --layer "
            "block5_pool -o maps.zarr --json\n"
            "          vgg-np extract /shared/photos --weights /shared/vgg16.h5 --layer fc2 "
            "-o /shared/fc2.zarr --scheduler tcp://head:8786"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="+", metavar="IMAGE_OR_DIR")
    parser.add_argument("--weights", required=True, help="weights file of any supported format")
    parser.add_argument("--layer", help="layer whose output is stored (default: the last)")
    parser.add_argument("-o", "--output", required=True, help="OUT.npy or OUT.zarr")
    parser.add_argument("--top", type=_natural, default=0, help="top classes in the manifest (0)")
    parser.add_argument("--preprocess", choices=MODES, help="caffe, torch or tf (from the weights)")
    parser.add_argument("--resize", choices=RESIZE_MODES, help="keras or torchvision (weights)")
    parser.add_argument("--batch-size", type=_positive_int, default=32, help="per pass (32)")
    parser.add_argument(
        "--partition-size", type=_positive_int, default=DEFAULT_PARTITION_SIZE,
        help=f"images per partition, the unit of completion ({DEFAULT_PARTITION_SIZE})",
    )  # fmt: skip
    parser.add_argument("--decode-threads", type=_natural, default=2, help="per process (2)")
    parser.add_argument(
        "--threads", type=_positive_int, help="engine threads per process (CPUs / --workers)"
    )
    parser.add_argument("--json", action="store_true", help="a JSON summary at the end")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bar (default: when stderr is a terminal)")  # fmt: skip
    cluster = parser.add_mutually_exclusive_group()
    cluster.add_argument("--scheduler", metavar="ADDRESS",
                         help="run the partitions on a Dask cluster (tcp://HOST:8786)")  # fmt: skip
    cluster.add_argument("--workers", type=_positive_int, metavar="N",
                         help="run them on a local Dask cluster of N processes")  # fmt: skip
    parser.set_defaults(handler=run_extract)


def run_fetch_weights(args: argparse.Namespace) -> int:
    """Find or download the published ImageNet weights into the Keras cache."""
    path = hub.resolve(args.model, not args.no_top, download_missing=True,
                       base_url=args.base_url, progress=sys.stderr.isatty())  # fmt: skip
    print(path)
    return 0


def add_fetch_weights_parser(commands) -> None:
    """Add ``vgg-np fetch-weights`` to the subcommands."""
    parser = commands.add_parser(
        "fetch-weights",
        help="download Keras's ImageNet weights (VGG16, VGG19) into the Keras cache",
        description=(
            "Print the path of a verified copy of the published ImageNet weights, looking in "
            "the Keras cache ($KERAS_HOME/models) and torch's ($TORCH_HOME/hub/checkpoints), "
            "and downloading Keras's file into the Keras cache if there is none: hash "
            "checked, written atomically. This is the only command that uses the network."
        ),
        epilog="Example: vgg-np fetch-weights vgg16 --no-top",
    )
    parser.add_argument("model", choices=sorted({name for name, _ in hub.PUBLISHED}))
    parser.add_argument("--no-top", action="store_true", help="the file without the classifier")
    parser.add_argument("--base-url", help="download from this directory URL (a mirror)")
    parser.set_defaults(handler=run_fetch_weights)


def run_show(args: argparse.Namespace) -> int:
    """Save a layer's feature maps (or the first layer's filters) as a PNG grid."""
    from PIL import Image

    if args.weights:
        model = VGG.from_file(args.weights, include_top=False, input_shape=None)
    else:
        model = VGG16(include_top=False, seed=args.seed)
    if args.filters:
        picture = filter_grid(model.weights["block1_conv1"][0])
    else:
        names = [layer.name for layer in model.layers]
        if args.layer not in names:
            raise ValueError(f"--layer must be one of the convolutional base's: {', '.join(names)}")
        pixels = load_image(args.image)[None]
        activation = model.activations(preprocess_input(pixels))[args.layer][0]
        scale = max(1, 56 // activation.shape[0])  # small deep maps get bigger pixels
        picture = feature_map_grid(activation, scale=scale)
    Image.fromarray(picture).save(args.output)
    what = "first-layer filters" if args.filters else f"{args.layer} feature maps"
    print(f"wrote {what} ({picture.shape[1]}x{picture.shape[0]}) to {args.output}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    """Fine-tune the top of a reduced-width VGG16 on generated shapes; print loss, accuracy."""
    from vgg_np.model import VGGConfig
    from vgg_np.train import SGD, SHAPES, loss_and_gradients, shapes_dataset

    config = VGGConfig(
        "vgg16-narrow",
        ((8, 8), (16, 16), (32,) * 3, (64,) * 3, (64,) * 3),
        fc=(64, 64),
        default_size=32,
    )
    model = VGG(config, classes=len(SHAPES), classifier_activation=None, seed=args.seed)
    images, labels = shapes_dataset(args.train + args.test, seed=args.seed)
    x = preprocess_input(images, mode="tf")
    x_train, y_train, x_test, y_test = (
        x[: args.train],
        labels[: args.train],
        x[args.train :],
        labels[args.train :],
    )
    top = {"fc1", "fc2", "predictions"} if not args.all_layers else None
    optimizer = SGD(lr=args.lr, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(args.seed)

    def accuracy() -> float:
        return float(np.mean(np.argmax(model(x_test), axis=1) == y_test))

    print(f"fine-tuning fc1, fc2, predictions of {config.name} on {args.train} generated pictures "
          f"of {len(SHAPES)} classes ({', '.join(SHAPES)}); {args.test} held out")  # fmt: skip
    print(f"epoch 0: test accuracy {accuracy():.3f}")
    start = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(args.train)
        losses = []
        for first in range(0, args.train, args.batch_size):
            batch = order[first : first + args.batch_size]
            loss, grads, _ = loss_and_gradients(
                model, x_train[batch], y_train[batch], dropout=args.dropout, rng=rng, trainable=top
            )
            optimizer.step(model, grads)
            losses.append(loss)
        print(f"epoch {epoch}: train loss {np.mean(losses):.4f}, test accuracy {accuracy():.3f}, "
              f"{time.perf_counter() - start:.1f} s")  # fmt: skip
    return 0


def _describe(error: BaseException) -> str:
    """One line naming the problem; every message starts with the file it is about."""
    if isinstance(error, FileNotFoundError) and error.filename:
        return f"{error.filename}: no such file"
    if isinstance(error, OSError) and error.filename:
        return f"{error.filename}: {error.strerror}"
    return str(error)


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


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _natural(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


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
    raw = argparse.RawDescriptionHelpFormatter
    demo = commands.add_parser(
        "demo",
        help="print VGG16's table, run it on a bundled picture, check it against Keras",
        description=(
            "Build VGG16 with seeded weights (nothing is downloaded), print the classic "
            "per-layer table, classify the picture shipped in the package, confirm the "
            "logits against the Keras reference committed with vgg_np, and report the time "
            "per image."
        ),
        epilog="Example: vgg-np demo",
    )
    demo.set_defaults(handler=run_demo)

    predict = commands.add_parser(
        "predict",
        help="classify images with a weights file",
        description=(
            "Classify images (files, directories, globs) with a VGG weights file of any "
            "supported format. Preprocessing and resizing follow the weights' family unless "
            "given: Keras files use 'caffe' and Keras's resize, torchvision files 'torch' and "
            "torchvision's. A bad image is reported on stderr and skipped (exit code 1)."
        ),
        epilog=(
            "Examples: vgg-np predict cat.jpg --weights vgg16_weights_tf_kernels.h5\n"
            "          vgg-np predict photos/ --weights vgg16.pth --top 3 --json"
        ),
        formatter_class=raw,
    )
    predict.add_argument(
        "images", nargs="+", metavar="IMAGE_OR_DIR", help="images, directories or globs"
    )
    predict.add_argument(
        "--weights", required=True, help="weights file (Keras, PyTorch, ONNX, npz, ...)"
    )
    predict.add_argument("--top", type=_positive_int, default=5, help="classes per image (5)")
    predict.add_argument(
        "--preprocess", choices=MODES, help="caffe, torch or tf (from the weights)"
    )
    predict.add_argument(
        "--resize", choices=RESIZE_MODES, help="keras or torchvision (from the weights)"
    )
    predict.add_argument(
        "--batch-size", type=_positive_int, default=8, help="images per forward pass (8)"
    )
    predict.add_argument("--json", action="store_true", help="one JSON object per image")
    predict.add_argument(
        "-o", "--output", help="write probabilities to OUT.npy/.zarr instead (as extract)"
    )
    predict.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal and there are >8 images)",
    )
    predict.set_defaults(handler=run_predict)

    summary = commands.add_parser(
        "summary",
        help="print the per-layer table: shapes, activations, weights, biases, MACs",
        description="Print the classic per-layer table of a VGG, computed from its layer table.",
        epilog=(
            "Examples: vgg-np summary\n"
            "          vgg-np summary --model vgg19 --input-shape 320 480 --no-top"
        ),
        formatter_class=raw,
    )
    summary.add_argument("--model", choices=sorted(CONFIGS), default="vgg16")
    summary.add_argument(
        "--input-shape", nargs=2, type=_positive_int, default=(224, 224), metavar=("H", "W")
    )
    summary.add_argument(
        "--no-top", action="store_true", help="without flatten and the dense layers"
    )
    summary.set_defaults(handler=run_summary)

    show = commands.add_parser(
        "show",
        help="save a layer's feature maps (or the first filters) as a PNG grid",
        description=(
            "Run IMAGE through VGG16's convolutional base and save the feature maps of one "
            "layer as a grid of grayscale tiles, each stretched to its own range; or, with "
            "--filters, the first layer's 64 kernels as colour patches. Without --weights the "
            "weights are seeded He-normal draws."
        ),
        epilog=(
            "Examples: vgg-np show cat.jpg --layer block1_conv2 -o maps.png\n"
            "          vgg-np show --filters --weights vgg16.h5 -o filters.png"
        ),
        formatter_class=raw,
    )
    show.add_argument("image", nargs="?", help="the picture (not needed with --filters)")
    show.add_argument("--layer", default="block1_conv2", help="layer name (block1_conv2)")
    show.add_argument("--filters", action="store_true", help="the first layer's kernels instead")
    show.add_argument("--weights", help="weights file (default: seeded He-normal)")
    show.add_argument("--seed", type=int, default=0, help="seed without --weights (0)")
    show.add_argument("-o", "--output", required=True, help="PNG file to write")
    show.set_defaults(handler=run_show)

    train = commands.add_parser(
        "train",
        help="fine-tune the top of a reduced-width VGG16 on generated pictures",
        description=(
            "Generate pictures of stripes, checkerboards and discs, build a narrow VGG16 "
            "(seeded), and train fc1, fc2 and predictions with SGD (momentum 0.9, weight "
            "decay 5e-4, dropout) using vgg_np's own backward pass; prints the loss and "
            "the held-out accuracy per epoch."
        ),
        epilog="Example: vgg-np train --epochs 20 --seed 0",
    )
    train.add_argument("--epochs", type=_positive_int, default=20)
    train.add_argument("--train", type=_positive_int, default=800, help="training pictures (800)")
    train.add_argument("--test", type=_positive_int, default=200, help="held-out pictures (200)")
    train.add_argument("--batch-size", type=_positive_int, default=32)
    train.add_argument("--lr", type=float, default=0.01)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--all-layers", action="store_true", help="train the convolutions too")
    train.add_argument("--dropout", type=float, default=0.0, help="after fc1 and fc2 (0: off)")
    train.set_defaults(handler=run_train)

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
    add_extract_parser(commands)
    add_fetch_weights_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vgg-np`` and ``python -m vgg_np``; returns the exit code.

    Exit codes: 0 success, 1 runtime error (a file that cannot be used, a layer that
    diverges, an image skipped), 2 usage error (bad arguments).

    Examples
    --------
    >>> main(["summary", "--model", "vgg11", "--no-top", "--input-shape", "32", "32"])
    vgg11: input 32x32x3, include_top=False
    ...
    parameters: 9,220,480 = 9,217,728 weights + 2,752 biases
    ...
    0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "show" and not args.filters and args.image is None:
        parser.error("show needs an IMAGE (or --filters)")
    try:
        return args.handler(args)
    except (ValueError, TypeError, OSError, ImportError, distributed.ClusterError) as error:
        if args.debug:
            raise
        print(f"vgg-np: error: {_describe(error)}", file=sys.stderr)
        return EXIT_RUNTIME_ERROR
