"""``vgg-np train``: fine-tune a VGG on a folder of one's own pictures, or the generated demo.

``vgg-np train IMAGES_DIR --weights W -o MODEL`` is `vgg_np.train.fit`: one subfolder
per class, the base's features computed once and cached, a head from ``--head``, per-epoch
checkpoints (a rerun resumes), early stopping, the curves and the confusion matrix as
PNGs beside the model. Without IMAGES_DIR (or with ``--demo``) it is the older lesson:
generated stripes and discs, a narrow VGG16, its top trained with SGD.

Self-contained: the command is `add_train` (its arguments, `_check_train`) and
`run_train` (the work); `vgg_np.cli` lists `add_train` in its commands.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import TYPE_CHECKING

import numpy as np

from vgg_np.cli._args import (
    _new_command,
    _non_negative_int,
    _positive_float,
    _positive_int,
    _rate,
)
from vgg_np.config import VGGConfig
from vgg_np.model import VGG
from vgg_np.preprocess import MODES, RESIZE_MODES, preprocess_input

#: Options of the generated-pictures demo only, and of a folder of one's own only.
_DEMO_ONLY = {"train": "--train", "test": "--test", "all_layers": "--all-layers"}
_DEMO_ONLY |= {"dropout": "--dropout"}
_FOLDER_ONLY = {
    "weights": "--weights", "output": "-o", "head": "--head",
    "validation_split": "--validation-split", "validation_dir": "--validation-dir",
    "unfreeze": "--unfreeze", "optimizer": "--optimizer", "momentum": "--momentum",
    "weight_decay": "--weight-decay", "augment": "--augment", "patience": "--patience",
    "input_size": "--input-size", "preprocess": "--preprocess", "resize": "--resize",
    "cache": "--cache", "checkpoints": "--checkpoints",
}  # fmt: skip
_FOLDER_FLAGS = {"keep_last": "--keep-last", "restart": "--restart", "json": "--json"}

if TYPE_CHECKING:  # imported where training runs: the other commands do without it
    from vgg_np.train import SGD
    from vgg_np.train.fit import History

# -- train ---------------------------------------------------------------------------------


def _input_size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    try:
        h, w = (int(parts[0]),) * 2 if len(parts) == 1 else (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        h = w = 0
    if len(parts) > 2 or min(h, w) < 32:
        raise argparse.ArgumentTypeError(f"must be SIZE or HxW, each at least 32, got {text!r}")
    return h, w


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):  # NaN fails too
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _split_fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1), got {text}")
    return value


def _folder_arguments(train: argparse.ArgumentParser) -> None:
    """Declare the options of ``vgg-np train IMAGES_DIR``."""
    from vgg_np.train.fit import DEFAULT_HEAD

    add = train.add_argument
    add("--weights", help="the base: any weights file (with or without its top), or "
        "imagenet[:MODEL[:FAMILY]] (see fetch-weights)")  # fmt: skip
    add("-o", "--output", metavar="MODEL", help="the fine-tuned model file to write: "
        ".npz, .keras or .h5 (a whole Keras model), .pth (torchvision's layout, for a head "
        "it fits)")  # fmt: skip
    add("--head", help="layers after block5_pool: gap, gmp, flatten, dense:N[:act], "
        f"dropout:R, bn, vgg[:N] (Keras's top); default {DEFAULT_HEAD}")  # fmt: skip
    add("--validation-split", type=_split_fraction, help="fraction of each class held out (0.2)")
    add("--validation-dir", help="a separate folder of the same class subfolders")
    add("--unfreeze", help="train the last blocks too, batch norms included: N blocks (1-4) "
        "or block5 ... block2")  # fmt: skip
    add("--optimizer", choices=("adam", "sgd"), help="adam (default, lr 1e-3) or sgd (lr 1e-2)")
    add("--momentum", type=_rate, help="SGD's momentum (0.9)")
    add("--weight-decay", type=_non_negative_float, help="L2 decay added to the gradient (0)")
    add("--augment", help="seeded augmentation: flip, crop[:FRACTION] (e.g. flip,crop:0.8); "
        "the frozen base then runs every epoch")  # fmt: skip
    add("--patience", type=_positive_int, help="stop after N epochs without a lower val_loss")
    add("--keep-last", action="store_true", help="write the last epoch, not the best one")
    add("--input-size", type=_input_size, help="SIZE or HxW (default: the weights' size, or 224)")
    add("--preprocess", choices=MODES, help="caffe, torch or tf (default: from the weights)")
    add("--resize", choices=RESIZE_MODES, help="keras or torchvision (from the weights)")
    add("--cache", metavar="DIR", help="where the base's features are kept "
        "($VGG_NP_CACHE, else ~/.cache/vgg_np/features)")  # fmt: skip
    add("--checkpoints", metavar="DIR", help="where checkpoints go (MODEL's stem + .checkpoints)")
    add("--restart", action="store_true", help="discard the checkpoints, start from epoch 1")
    add("--json", action="store_true", help="print the history as one JSON object at the end")
    add("--progress", action=argparse.BooleanOptionalAction, default=None,
        help="progress bars on stderr (default: on a terminal)")  # fmt: skip


def add_train(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare ``vgg-np train``."""
    train = _new_command(
        commands,
        "train",
        run_train,
        summary="fine-tune VGG16 on a folder of your own pictures (or the generated demo)",
        description=(
            "With IMAGES_DIR (one subfolder per class, as Keras's image_dataset_from_directory "
            "and torchvision's ImageFolder read it): hold out a seeded validation split, "
            "compute the base's features once through the engine and cache them (a second run "
            "or another head computes none), train a head given by --head (and the last "
            "--unfreeze blocks) with vgg_np's own backward pass, print loss and accuracy per "
            "epoch, write a checkpoint every epoch (the same command resumes after a kill), "
            "stop early on the validation loss with --patience, and write MODEL (.npz, .keras, "
            ".h5 or .pth: it records its class names, its preprocessing and its base; vgg-np "
            "predict, extract, compare and convert read it, Keras's load_model opens .keras "
            "and .h5), MODEL.curves.png, MODEL.confusion.png and MODEL.history.json (with the "
            "validation pictures' names). Pictures that cannot be read are skipped and named. "
            "Without IMAGES_DIR (or with --demo): generate pictures of stripes, checkerboards "
            "and discs, build a narrow VGG16 (seeded) and train fc1, fc2 and predictions with "
            "SGD (momentum 0.9, weight decay 5e-4, dropout); prints the held-out accuracy."
        ),
        examples=[
            "vgg-np train flowers/ --weights imagenet -o flowers.npz --epochs 10",
            "vgg-np train flowers/ --weights imagenet -o flowers.keras",
            "vgg-np train pics/ --weights base.npz -o m.npz --head gap,dense:256,dropout:0.5 "
            "--augment flip,crop:0.8 --patience 3",
            "vgg-np train --demo --epochs 20 --seed 0",
        ],
        check=_check_train,
    )
    train.add_argument(
        "images", nargs="?", metavar="IMAGES_DIR", help="a folder with one subfolder per class"
    )
    train.set_defaults(images_label="IMAGES_DIR")
    train.add_argument("--demo", action="store_true", help="the generated-pictures lesson")
    train.add_argument("--epochs", type=_positive_int, help="epochs (10; the demo: 20)")
    train.add_argument("--batch-size", type=_positive_int, help="pictures per step (32)")
    train.add_argument("--lr", type=_positive_float, help="learning rate (adam 1e-3, sgd 1e-2)")
    train.add_argument("--seed", type=_non_negative_int, default=0)
    _folder_arguments(train)
    demo = train.add_argument_group("the demo only")
    demo.add_argument("--train", type=_positive_int, help="training pictures (800)")
    demo.add_argument("--test", type=_positive_int, help="held-out pictures (200)")
    demo.add_argument("--all-layers", action="store_true", help="train the convolutions too")
    demo.add_argument("--dropout", type=_rate, help="rate after fc1 and fc2, in [0, 1) (0: off)")


def _check_train(args: argparse.Namespace) -> str | None:
    """Refuse options of the other mode, and a folder run without --weights or -o."""
    given = lambda name: getattr(args, name, None) not in (None, False)  # noqa: E731
    if args.demo and args.images:
        return "--demo trains on generated pictures: give IMAGES_DIR or --demo, not both"
    if args.demo or not args.images:
        wrong = [flag for name, flag in (_FOLDER_ONLY | _FOLDER_FLAGS).items() if given(name)]
        if wrong:
            return f"{', '.join(wrong)} need IMAGES_DIR (a folder with one subfolder per class)"
        return None
    wrong = [flag for name, flag in _DEMO_ONLY.items() if given(name)]
    if wrong:
        return f"{', '.join(wrong)} belong to the demo (--demo), not to IMAGES_DIR"
    needed = (("weights", "--weights"), ("output", "-o"))
    missing = [flag for name, flag in needed if not given(name)]
    if missing:
        return f"IMAGES_DIR needs {' and '.join(missing)} (the base's weights, the model to write)"
    return _check_folder_paths(args)


def _check_folder_paths(args: argparse.Namespace) -> str | None:
    """Refuse the paths of ``vgg-np train IMAGES_DIR`` that cannot work, before any work."""
    if os.path.exists(args.images) and not os.path.isdir(args.images):
        return f"IMAGES_DIR {args.images} is not a folder (one subfolder per class)"
    if args.validation_dir is not None and not os.path.isdir(args.validation_dir):
        found = "not a folder" if os.path.lexists(args.validation_dir) else "no such folder"
        return f"--validation-dir {args.validation_dir}: {found}"
    from vgg_np.train.fit import output_problem
    from vgg_np.train.plan import check_outputs

    problem = output_problem(args.output)
    if problem is not None:
        return f"-o {args.output}: {problem}"
    try:  # the model over its base, outputs inside the pictures, a folder that is read-only
        check_outputs(
            args.images, args.weights, args.output, validation_dir=args.validation_dir,
            checkpoint_dir=args.checkpoints, cache_dir=args.cache,
        )  # fmt: skip
    except ValueError as error:
        return str(error)
    return None


def run_train(args: argparse.Namespace) -> int:
    """Fine-tune on IMAGES_DIR (`vgg_np.train.fit`), or run the generated-pictures demo."""
    if args.images is None:
        return _run_demo(args)
    from vgg_np.train import fit

    chosen = {
        "head": args.head, "validation_split": args.validation_split, "unfreeze": args.unfreeze,
        "optimizer": args.optimizer, "learning_rate": args.lr, "momentum": args.momentum,
        "weight_decay": args.weight_decay, "patience": args.patience,
        "input_size": args.input_size, "preprocess": args.preprocess, "resize": args.resize,
        "epochs": args.epochs, "batch_size": args.batch_size,
    }  # fmt: skip
    verbosity: dict[bool | None, int | str] = {None: "auto", True: 1, False: 2}  # 2: no bars
    history = fit(
        args.images, args.weights, args.output, validation_dir=args.validation_dir,
        augment=args.augment, seed=args.seed, restore_best_weights=not args.keep_last,
        cache_dir=args.cache, checkpoint_dir=args.checkpoints, restart=args.restart,
        verbose=verbosity[args.progress],
        **{name: value for name, value in chosen.items() if value is not None},
    )  # fmt: skip
    if args.json:
        print(json.dumps(history.to_dict()))
    else:
        print(_summary(history))
    return 0


def _summary(history: History) -> str:
    """Return the lines after the epochs: what was written and how good it is."""
    rows = history.feature_rows
    lines = [
        f"base features: {rows['computed']} computed ({history.feature_seconds:.1f} s), "
        + (f"{rows['reused']} reused from an earlier pass, " if rows.get("reused") else "")
        + f"{rows['cached']} read from the cache"
        + (f", {rows['changed']} pictures changed since" if rows["changed"] else "")
    ]
    if history.best_epoch is not None:
        accuracy = history.history["val_accuracy"][history.best_epoch - 1]
        lines.append(
            f"kept epoch {history.best_epoch} (lowest val_loss): val_accuracy {accuracy:.4f} on "
            f"{sum(history.counts['validation'].values())} pictures"
        )
    lines.append(f"wrote {history.output} (classes: {', '.join(history.classes)})")
    written = ("curves", "confusion", "history")
    lines += [f"wrote {history.files[k]}" for k in written if k in history.files]
    if history.skipped:
        where = history.files["history"]
        lines.append(f"{len(history.skipped)} pictures skipped (listed in {where})")
    return "\n".join(lines)


def _run_demo(args: argparse.Namespace) -> int:
    """Fine-tune a reduced-width VGG16 on generated shapes; print loss and accuracy."""
    from vgg_np.train import SGD, SHAPES, shapes_dataset

    epochs, n_train, n_test = args.epochs or 20, args.train or 800, args.test or 200
    config = VGGConfig(
        "vgg16-narrow",
        ((8, 8), (16, 16), (32,) * 3, (64,) * 3, (64,) * 3),
        fc=(64, 64),
        default_size=32,
    )
    model = VGG(config, classes=len(SHAPES), classifier_activation=None, seed=args.seed)
    images, labels = shapes_dataset(n_train + n_test, seed=args.seed)
    x = preprocess_input(images, mode="tf")
    train, test = (x[:n_train], labels[:n_train]), (x[n_train:], labels[n_train:])
    trainable = None if args.all_layers else {"fc1", "fc2", "predictions"}
    optimizer = SGD(lr=args.lr or 0.01, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(args.seed)
    what = "every layer" if args.all_layers else "fc1, fc2, predictions"
    print(
        f"fine-tuning {what} of {config.name} on {n_train} generated pictures of "
        f"{len(SHAPES)} classes ({', '.join(SHAPES)}); {n_test} held out"
    )
    print(f"epoch 0: test accuracy {_accuracy(model, *test):.3f}")
    start = time.perf_counter()
    for epoch in range(1, epochs + 1):
        loss = _train_epoch(model, *train, args, optimizer, rng, trainable)
        accuracy, seconds = _accuracy(model, *test), time.perf_counter() - start
        print(
            f"epoch {epoch}: train loss {loss:.4f}, test accuracy {accuracy:.3f}, {seconds:.1f} s"
        )
    return 0


def _accuracy(model: VGG, x: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(model(x), axis=1) == labels))


def _train_epoch(
    model: VGG,
    x: np.ndarray,
    labels: np.ndarray,
    args: argparse.Namespace,
    optimizer: SGD,
    rng: np.random.Generator,
    trainable: set[str] | None,
) -> float:
    """One pass over (x, labels) in shuffled mini-batches; return the mean loss."""
    from vgg_np.train import loss_and_gradients, memory

    batch_size = args.batch_size or 32
    order = rng.permutation(len(x))
    losses = []
    with memory.kept():  # each step reuses the blocks the last one freed
        for first in range(0, len(x), batch_size):
            batch = order[first : first + batch_size]
            loss, grads, _ = loss_and_gradients(
                model, x[batch], labels[batch], dropout=args.dropout or 0.0, rng=rng,
                trainable=trainable,
            )  # fmt: skip
            optimizer.step(model, grads)
            losses.append(loss)
    return float(np.mean(losses))
