"""``vgg-np predict`` and ``extract``: images through a weights file, to stdout or a store.

Both choose the preprocessing from the weights' provenance (or the user's ``--preprocess``
and ``--resize``) and print the choice with its reason; ``predict -o`` writes what it ranks
through extract's store.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from vgg_np import distributed, formats
from vgg_np.cli._args import (
    EXIT_RUNTIME_ERROR,
    KERAS_VGG16,
    _add_plan,
    _extract_output,
    _new_command,
    _non_negative_int,
    _positive_float,
    _positive_int,
)
from vgg_np.engine.measure import MODES as MEASURE_MODES
from vgg_np.extract import DEFAULT_PARTITION_SIZE, ExtractResult, extract
from vgg_np.model import VGG
from vgg_np.preprocess import MODES, RESIZE_MODES, read_class_names, top_classes
from vgg_np.progress import Progress, write_line
from vgg_np.streams import ImageStream, image_paths, input_size

#: Threads decoding pictures beside the forward pass, in ``extract`` and ``predict -o``.
DECODE_THREADS = 2

# -- predict -------------------------------------------------------------------------------


def add_predict(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
        "(default: those the file records, as vgg-np train writes them; else only an "
        "ImageNet classifier's classes are named)",
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
    _add_plan(predict)


def run_predict(args: argparse.Namespace) -> int:
    """Classify images with a weights file; a bad image is reported, the others go on."""
    paths = image_paths(args.images)
    if not paths:
        raise ValueError(f"no images found in {' '.join(args.images)}")
    model, names = _classifier(args.weights, args.labels, args.plan)
    choice = _choose_preprocessing(model, args)
    print(
        f"weights {args.weights}: preprocessing {choice.mode!r}, resize {choice.resize!r} "
        f"({choice.reason})",
        file=sys.stderr,
    )
    if args.output:
        # What it ranks, in extract's store: the classifier's own last layer ("predictions",
        # or a head's, Keras: "dense_1"), with extract's default partitions and threads.
        return _extract(
            args,
            model,
            layer=model.layers[-1].name,
            partition_size=DEFAULT_PARTITION_SIZE,
            decode_threads=DECODE_THREADS,
        )
    return _classify(paths, model, choice, names, args)


def _classifier(weights: str, labels: str | None, plan: str | None) -> tuple[VGG, list[str] | None]:
    """Load `weights` as a classifier giving probabilities; its class names, if not ImageNet's.

    The names are --labels' (`labels`), else those the file records (``vgg-np train``
    writes them), else "class 0" ... for a head of one's own, else None: ImageNet's names
    are given only to VGG's own 1000-class top.
    """
    # Images are loaded channels last, whatever layout the file's graph takes.
    model = VGG.from_file(
        weights, classifier_activation="softmax", data_format="channels_last", plan=plan
    )
    names = _class_names(labels, model) if labels else _recorded_labels(model, weights)
    if names is None and model.head is not None:  # a head of one's own: never ImageNet's
        names = [f"class {i}" for i in range(model.classes)]
    if not model.include_top:
        note = model.weights_info.get("note")  # an ONNX head vgg_np cannot read, named
        raise ValueError(
            f"{weights} has no classifier vgg_np can run: "
            + (note or "a 'notop' file (no fc1 ... predictions) cannot predict classes")
        )
    return model, names


def _classify(
    paths: list[str],
    model: VGG,
    choice: formats.Preprocessing,
    names: list[str] | None,
    args: argparse.Namespace,
) -> int:
    """Print the top classes of every picture of `paths` as it is classified; the exit code."""
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


def _recorded_labels(model: VGG, weights: str) -> list[str] | None:
    """Return the class names the weights file records (``vgg-np train`` writes them)."""
    labels = model.weights_info.get("labels")
    if labels is not None and len(labels) != model.classes:
        raise ValueError(
            f"{weights} records {len(labels)} class names for {model.classes} outputs: "
            "give --labels"
        )
    return None if labels is None else list(labels)


def _prediction(
    path: str,
    row: np.ndarray,
    args: argparse.Namespace,
    choice: formats.Preprocessing,
    names: list[str] | None,
    value: str,
) -> str:
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


def add_extract(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
    parser.add_argument(
        "--decode-threads",
        type=_non_negative_int,
        default=DECODE_THREADS,
        help=f"threads decoding pictures, per process ({DECODE_THREADS})",
    )
    parser.add_argument("--threads", type=_positive_int, help="engine threads (CPUs / --workers)")
    parser.add_argument("--json", action="store_true", help="a JSON summary at the end")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress on stderr (default: for more than one batch; a bar on "
                             "a terminal, else a line every 10 s)")  # fmt: skip
    _add_plan(parser)
    _add_cluster_options(parser)


def _add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """Declare ``extract``'s options that run its partitions as Dask tasks."""
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
    model = VGG.from_file(args.weights, threads=args.threads, plan=args.plan)
    return _extract(
        args,
        model,
        layer=args.layer,
        partition_size=args.partition_size,
        decode_threads=args.decode_threads,
    )


def _extract_on_cluster(args: argparse.Namespace) -> int:
    """``extract --scheduler ADDRESS`` or ``--workers N``: the partitions as Dask tasks."""
    with distributed.connect(args.scheduler, args.workers, timeout=args.cluster_timeout) as client:
        print(distributed.describe(client), file=sys.stderr)
        result = distributed.extract_on_cluster(
            args.images, args.output, args.weights, client,
            options=_cluster_engine_options(args), layer=args.layer,
            top=args.top, batch_size=args.batch_size, partition_size=args.partition_size,
            decode_threads=args.decode_threads, preprocess=args.preprocess, resize=args.resize,
            verbose="auto" if args.progress is None else args.progress, on_skip=_skip,
        )  # fmt: skip
    return _extract_summary(result, args.json)


def _cluster_engine_options(args: argparse.Namespace) -> dict:
    """Return each task's model options: its engine's threads and ``--plan``.

    A plan file goes by its absolute path, as the weights do: the same path on every worker.
    """
    options = distributed.engine_options(args.workers, args.threads)
    if args.plan is not None:
        options["plan"] = args.plan if args.plan in MEASURE_MODES else os.path.abspath(args.plan)
    return options


def _extract(
    args: argparse.Namespace,
    model: VGG,
    *,
    layer: str | None,
    partition_size: int,
    decode_threads: int,
) -> int:
    """Run `vgg_np.extract.extract` on this process; print its summary, return the exit code.

    The options ``predict`` lacks come as arguments (``extract`` passes its own); the
    parsed `args` are read, never changed.
    """
    result = extract(
        args.images,
        args.output,
        model,
        layer=layer,
        top=args.top,
        batch_size=args.batch_size,
        partition_size=partition_size,
        workers=decode_threads,
        preprocess=args.preprocess,
        resize=args.resize,
        verbose="auto" if args.progress is None else args.progress,
        on_skip=_skip,
    )
    return _extract_summary(result, args.json)


def _extract_summary(result: ExtractResult, as_json: bool) -> int:
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
