"""``vgg-np train``: fine-tune the top of a reduced-width VGG16 on generated pictures.

Self-contained: the command is `add_train` (its arguments) and `run_train` (the work);
`vgg_np.cli` lists `add_train` in its commands.
"""

from __future__ import annotations

import argparse
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
from vgg_np.preprocess import preprocess_input

if TYPE_CHECKING:  # imported where training runs: the other commands do without it
    from vgg_np.train import SGD

# -- train ---------------------------------------------------------------------------------


def add_train(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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
