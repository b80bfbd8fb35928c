"""Transfer learning from a folder of one's own pictures: `fit`, as Keras users know it.

``fit(directory, weights, output)`` is ``image_dataset_from_directory`` + a pretrained
base + a new head + ``model.fit`` with a validation split, checkpoints and early
stopping, ending in a model file every path of vgg_np reads (`vgg-np predict`,
``extract``, ``compare``, ``convert``):

1. **Data** (`vgg_np.train.data`): one subfolder per class, a stratified seeded
   validation split (or a separate folder).
2. **Models**: the base's convolutions from `weights` (any file `VGG.from_file` reads,
   or a `VGG`); the head from a spec (`vgg_np.train.heads`); ``unfreeze`` blocks of
   the base train with it.
3. **Features** (`vgg_np.train.features`): the frozen layers' output of every picture,
   computed once through the engine in `vgg_np.extract`'s resumable store.
4. **Epochs**: shuffled mini-batches through `vgg_np.train.step.loss_and_gradients`
   (vgg_np's own backward pass) and an optimizer (`vgg_np.train.optim`); with
   augmentation the frozen base runs each epoch on the augmented pictures (as in Keras,
   where augmentation layers sit before the base). Per epoch: loss and accuracy on
   training (as the epoch went, dropout on) and validation, a checkpoint
   (`vgg_np.train.checkpoint`), early stopping on the validation loss.
5. **Result**: the best epoch's weights (lowest validation loss; the last without
   validation) in the format `output` names (`MODEL_SUFFIXES`: ``.npz``, a whole Keras
   model ``.keras`` / ``.h5``, a torchvision ``.pth``), written by `vgg_np.export.save`
   and recording the head, the class names, the preprocessing and the base it came
   from; the curves and the confusion matrix as PNGs beside it
   (`vgg_np.train.report`) and the history as JSON, which lists the validation pictures.

Every random choice (initial head, shuffling, dropout, augmentation) is drawn from the
seed and the epoch alone, so a run killed at any point and resumed from its last
checkpoint ends with the same weights, bit for bit, as a run never interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from vgg_np import _files, export
from vgg_np.extract import weights_digest
from vgg_np.formats import Family, Provenance
from vgg_np.layers import Layer
from vgg_np.model import VGG
from vgg_np.progress import Progress, show_progress
from vgg_np.streams import decode_batches
from vgg_np.train import memory, plan, report
from vgg_np.train.checkpoint import (
    Checkpoint,
    check_fingerprint,
    load_checkpoint,
    save_checkpoint,
)
from vgg_np.train.features import Features, cached_features
from vgg_np.train.heads import describe_head
from vgg_np.train.loop import evaluate, train_epoch
from vgg_np.train.optim import (
    Adam,
    load_optimizer_state,
    make_optimizer,
    optimizer_state,
)
from vgg_np.train.plan import (
    DEFAULT_HEAD,
    MODEL_SUFFIXES,
    Run,
    Settings,
    output_problem,
    prepare,
)
from vgg_np.train.step import SGD

__all__ = ["DEFAULT_HEAD", "MODEL_SUFFIXES", "History", "Settings", "fit", "output_problem"]


@dataclass
class History:
    """What `fit` did: Keras's ``History`` and more.

    Attributes
    ----------
    history : dict
        ``loss``, ``accuracy``, ``val_loss``, ``val_accuracy``, ``seconds``: one value per
        epoch (validation entries only with a validation set).
    epoch : list of int
        The epochs run, 1-based, resumed ones included.
    classes : tuple of str
    best_epoch : int or None
        The epoch whose weights were written (lowest validation loss).
    stopped_early : bool
    resumed_from : int
        Epochs done before this call (from a checkpoint), 0 for a fresh run.
    output : str
        The model file.
    files : dict
        ``curves``, ``confusion``, ``history``, ``checkpoints``: where each was written.
    confusion : ndarray or None
        The validation confusion matrix of the weights written (rows true, columns predicted).
    skipped : list of (str, str)
        Pictures that could not be used, and why.
    counts : dict
        ``train`` and ``validation``: pictures per class actually used.
    feature_seconds : float
        The feature pass of this call (0 when every row came from the store).
    feature_rows : dict
        ``computed`` (rows the pass computed now), ``changed`` (of those, pictures that
        changed since their row was computed), ``reused`` (rows copied from the store of
        an earlier list of pictures), ``cached`` (rows read back).
    validation_files : list of str
        The validation pictures used, in the order of the confusion matrix's counts
        (skipped pictures left out): what to check the written model on.
    written : str
        The format the model was written in (`vgg_np.export.save`'s answer).
    batch_norm : str
        Whose conventions moved the trained batch norms' running statistics, and why
        (the statistics themselves are in the model file and the checkpoints).

    Examples
    --------
    >>> history = History({"loss": [0.9, 0.4]}, [1, 2], ("cat", "dog"), None, False, 0, "m.npz")
    >>> history.to_dict()["history"], history.to_dict()["classes"]
    ({'loss': [0.9, 0.4]}, ['cat', 'dog'])
    """

    history: dict[str, list[float]]
    epoch: list[int]
    classes: tuple[str, ...]
    best_epoch: int | None
    stopped_early: bool
    resumed_from: int
    output: str
    files: dict[str, str] = field(default_factory=dict)
    confusion: NDArray | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    feature_seconds: float = 0.0
    feature_rows: dict = field(default_factory=dict)
    validation_files: list[str] = field(default_factory=list)
    written: str = ""
    batch_norm: str = "no batch norm"

    def to_dict(self) -> dict:
        """Return the history as plain JSON types (``history.json``; see the class example)."""
        found = dataclasses.asdict(self)
        found["confusion"] = None if self.confusion is None else self.confusion.tolist()
        found["classes"], found["skipped"] = list(self.classes), [list(s) for s in self.skipped]
        return found


def _check_arguments(
    output: str | os.PathLike, epochs: int, batch_size: int, patience: int | None, seed: int
) -> None:
    problem = output_problem(output)
    if problem is not None:
        raise ValueError(f"`output` {os.fspath(output)!r}: {problem}")
    for name, value, least in (("epochs", epochs, 1), ("batch_size", batch_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"`{name}` must be an int >= {least}, got {value!r}")
    if patience is not None and (not isinstance(patience, int) or patience < 1):
        raise ValueError(f"`patience` must be None or an int >= 1, got {patience!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"`seed` must be an int >= 0, got {seed!r}")


def _use_features(
    run: Run, cache_dir: str | os.PathLike | None, verbose: bool | int | str
) -> float:
    """Compute (or read back) the cut's output of every picture; drop those that failed."""
    start = time.perf_counter()

    def skip(path: str, reason: str) -> None:
        run.note(f"skipping {reason}")

    features = run.features = cached_features(
        run.paths, run.base, run.cut, run.prep, cache_dir=cache_dir,
        batch_size=run.settings.batch_size, verbose=0 if verbose == 2 else verbose, on_skip=skip,
    )  # fmt: skip
    failed = features.failed
    run.skipped = [(run.paths[i], failed[i]) for i in sorted(failed)]
    if failed and features.result.failed < len(failed):  # found by an earlier run
        run.note(f"{len(failed)} pictures cannot be used (see history.json's 'skipped')")
    bad = np.array(sorted(failed), np.intp)
    run.train = np.setdiff1d(run.train, bad).astype(np.intp)
    run.validation = np.setdiff1d(run.validation, bad).astype(np.intp)
    trained = set(run.labels[run.train].tolist())
    empty = [name for c, name in enumerate(run.classes) if c not in trained]
    if empty:
        raise ValueError(
            f"no usable training picture of the class {', '.join(empty)}: every one was skipped "
            "or held out for validation"
        )
    if features.result.changed:
        changed = features.result.changed
        run.note(f"{changed} pictures changed since their features were computed: recomputed")
    if features.result.reused:
        result = features.result
        run.note(f"{result.reused} rows reused from an earlier pass, {result.written} computed")
    return time.perf_counter() - start if features.result.written else 0.0


def _features(run: Run) -> Features:
    """Return the cut's output of every picture: `_use_features` computes it first."""
    assert run.features is not None, "_use_features runs before the epochs"
    return run.features


def _head(run: Run) -> tuple[Layer, ...]:
    """Return the trained network's head (`prepare` builds it with one)."""
    head = run.network.head
    assert head is not None, "prepare builds the network with a head"
    return head


def _digest(value: object) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(value).encode()).hexdigest()


def _fingerprint(run: Run) -> dict[str, str]:
    """Return what the weights depend on, each entry a string (`vgg_np.train.checkpoint`)."""
    settings = dataclasses.asdict(run.settings)
    found = {key: json.dumps(value) for key, value in settings.items() if key != "head"}
    found["head"] = json.dumps([dataclasses.astuple(layer) for layer in _head(run)])
    found["cut"] = run.cut
    found["base"] = weights_digest(run.base)
    found["classes"] = json.dumps(list(run.classes))
    used = sorted(np.concatenate([run.train, run.validation]).tolist())
    digests = _features(run).digests
    found["features"] = _digest([[digests[i], int(run.labels[i])] for i in used])
    found["split"] = _digest([run.train.tolist(), run.validation.tolist()])
    if run.top.statistics:  # absent without batch norms: older checkpoints still resume
        rules = run.top.statistics
        found["batch_norm"] = json.dumps({n: dataclasses.astuple(rules[n]) for n in sorted(rules)})
    return found


def _batches(run: Run, epoch: int) -> Iterator[tuple[NDArray, NDArray]]:
    """Yield the epoch's shuffled mini-batches of the cut's output and labels."""
    seed, size = run.settings.seed, run.settings.batch_size
    order = np.random.default_rng([seed, epoch, 0]).permutation(run.train)
    if not run.augment.active:
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            yield _features(run).take(chunk), run.labels[chunk]
        return
    # Augmented pictures through the frozen base, each drawn from (seed, epoch, picture).
    position = {run.paths[i]: i for i in order}

    def transform(path: str, pixels: NDArray[np.uint8]) -> NDArray[np.uint8]:
        return run.augment(pixels, np.random.default_rng([seed, epoch, 2, position[path]]))

    h, w, _ = run.base.input_shape
    decoded_batches = decode_batches(
        [run.paths[i] for i in order], run.prep, size=(h, w), batch_size=size, transform=transform
    )
    for start, decoded in zip(range(0, len(order), size), decoded_batches, strict=True):
        chunk = order[start : start + size]
        for reason in decoded.errors.values():
            run.note(f"skipping {reason} (this epoch)")
        if decoded.ok:
            yield run.base.features(decoded.batch, run.cut), run.labels[chunk[decoded.ok]]


def _resume(
    run: Run,
    files: dict,
    fingerprint: dict,
    optimizer: SGD | Adam,
    restart: bool,
    epochs: int,
) -> Checkpoint:
    """Return the checkpoint to go on from: the last one written, or a fresh start."""
    last, best = files["last"], files["best"]
    if restart or not os.path.exists(last):
        for path in (last, best):  # a best epoch of another run is never kept
            if os.path.exists(path):
                os.remove(path)
        history: dict[str, list[float]] = {"loss": [], "accuracy": [], "seconds": []}
        if len(run.validation):
            history |= {"val_loss": [], "val_accuracy": []}
        return Checkpoint(0, run.top.weights, history=history, fingerprint=fingerprint)
    point = load_checkpoint(last)
    check_fingerprint(last, point.fingerprint, fingerprint)
    if point.epoch > epochs:  # the model written would be of more epochs than asked
        raise ValueError(
            f"{last} holds {point.epoch} epochs, more than the {epochs} asked: ask for "
            f"{point.epoch} or more to go on from it, or pass --restart (restart=True)"
        )
    run.top.set_weights(point.weights, source=f"the weights in {last}")
    load_optimizer_state(optimizer, point.optimizer["scalars"], point.optimizer["arrays"])
    run.note(f"resuming after epoch {point.epoch} from {last}")
    return point


def _record(point: Checkpoint, epoch: int, metrics: dict, patience: int | None) -> bool:
    """Append an epoch's metrics; update the best epoch and early stopping. True if best."""
    for key, value in metrics.items():
        point.history.setdefault(key, []).append(float(value))
    point.epoch = epoch
    if "val_loss" not in metrics:
        return False
    best = point.best.get("val_loss", np.nan)
    # A diverged epoch (NaN) is never the best; any finite loss beats a NaN best.
    if np.isfinite(metrics["val_loss"]) and not metrics["val_loss"] >= best:
        point.best, point.wait = {"epoch": epoch, "val_loss": float(metrics["val_loss"])}, 0
        return True
    point.wait += 1
    point.stopped = patience is not None and point.wait >= patience
    return False


def _epoch_line(epoch: int, epochs: int, metrics: dict, best: bool) -> str:
    shown = " - ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "seconds")
    return f"epoch {epoch}/{epochs}: {shown} - {metrics['seconds']:.2f} s" + (" (best)" * best)


def _epochs(
    run: Run,
    point: Checkpoint,
    optimizer: SGD | Adam,
    files: dict[str, str],
    epochs: int,
    patience: int | None,
    verbose: bool | int | str,
) -> None:
    """Run epochs from the checkpoint on, writing a checkpoint after each."""
    size = run.settings.batch_size
    held = run.labels[run.validation]
    for epoch in range(point.epoch + 1, epochs + 1):
        if point.stopped:
            break
        start = time.perf_counter()
        # A bar per epoch on a terminal; in a log, the epoch's line says enough.
        wanted = verbose in (1, True) or (verbose == "auto" and sys.stderr.isatty())
        enabled = wanted and show_progress(verbose, -(-len(run.train) // size))
        with Progress(len(run.train), enabled=enabled) as bar:
            rng = np.random.default_rng([run.settings.seed, epoch, 1])  # dropout
            loss, accuracy = train_epoch(run.top, _batches(run, epoch), optimizer, rng, bar.update)
        metrics = {"loss": loss, "accuracy": accuracy}
        if len(run.validation):
            take = lambda i: _features(run).take(run.validation[i])  # noqa: E731
            val_loss, val_accuracy, _ = evaluate(run.top, take, held, size)
            metrics |= {"val_loss": val_loss, "val_accuracy": val_accuracy}
        metrics["seconds"] = time.perf_counter() - start
        best = _record(point, epoch, metrics, patience)
        point.weights = run.top.weights
        scalars, arrays = optimizer_state(optimizer)
        point.optimizer = {"scalars": scalars, "arrays": arrays}
        if best:  # first the best epoch's weights, then the checkpoint that names it
            kept = Checkpoint(epoch, point.weights, fingerprint=point.fingerprint)
            save_checkpoint(files["best"], kept)
        save_checkpoint(files["last"], point)
        run.say(_epoch_line(epoch, epochs, metrics, best))
        if point.stopped:
            run.note(f"early stopping: no lower validation loss for {patience} epochs")


def _kept_weights(run: Run, point: Checkpoint, files: dict, restore_best: bool) -> int:
    """Give the top the weights to write (the best epoch's); return that epoch."""
    if not (restore_best and point.best) or point.best["epoch"] == point.epoch:
        return point.epoch
    best = load_checkpoint(files["best"])
    if best.epoch != point.best["epoch"] or best.fingerprint != point.fingerprint:
        other = "" if best.fingerprint == point.fingerprint else " of another run"
        raise ValueError(
            f"{files['best']} does not hold epoch {point.best['epoch']} of this run (it holds "
            f"epoch {best.epoch}{other}): pass --restart (restart=True) to train again"
        )
    run.top.set_weights(best.weights, source=f"the weights in {files['best']}")
    return best.epoch


def _provenance(run: Run) -> Provenance:
    h, w, _ = run.network.input_shape
    spec = describe_head(_head(run))
    return Provenance(
        "npz (vgg_np)",
        Family.VGG_NP,
        run.prep.mode,
        run.prep.resize,
        (h, w),
        evidence=f"trained by vgg-np train on {run.prep.mode} preprocessing",
        recorded=True,
        source=(
            f"vgg-np train, head {spec}, {run.settings.unfreeze} blocks unfrozen, base {run.source}"
        ),
    )


def _write_model(run: Run, output: str | os.PathLike) -> str:
    """Write the whole network, base and trained layers, as a file every path reads.

    `vgg_np.export.save` writes it in the format `output` names, with its class names
    and provenance; an ``.h5`` is a whole Keras model (``load_model`` opens it).
    """
    weights = {**run.base.weights, **run.top.weights}
    run.network.set_weights(weights, source="the trained weights")
    layout = "model" if os.fspath(output).lower().endswith(".h5") else None
    try:
        return export.save(
            run.network, output, layout=layout, provenance=_provenance(run), labels=run.classes
        )
    except OSError as error:  # a full disk while writing: name the user's file
        if error.errno is None or error.filename:
            raise
        raise type(error)(error.errno, error.strerror, os.fspath(output)) from None


def _finish(
    run: Run,
    point: Checkpoint,
    output: str | os.PathLike,
    files: dict[str, str],
    restore_best: bool,
    resumed: int,
) -> History:
    kept = _kept_weights(run, point, files, restore_best)
    diverged = run.top.not_finite()
    if diverged:  # no prediction could use them: no model file rather than one of NaNs
        # A batch norm's running variance overflows while its output and the loss stay finite.
        running = " (a batch norm's input outgrew float32)" * any("running" in d for d in diverged)
        raise ValueError(
            f"training diverged: after epoch {kept} the weights of {', '.join(diverged)} are "
            f"not finite{running} (loss {point.history['loss'][kept - 1]:.4g}); "
            f"{os.fspath(output)} was not written: lower the learning rate (--lr) and pass "
            "--restart"
        )
    written = _write_model(run, output)
    confusion = None
    if len(run.validation):
        take = lambda i: _features(run).take(run.validation[i])  # noqa: E731
        held = run.labels[run.validation]
        _, accuracy, predicted = evaluate(run.top, take, held, run.settings.batch_size)
        confusion = report.confusion_matrix(held, predicted, len(run.classes))
        title = f"validation, epoch {kept}: accuracy {accuracy:.3f} ({len(held)} pictures)"
        report.save_png(files["confusion"], report.confusion_picture(confusion, run.classes, title))
    best = kept if point.best else None
    report.save_png(files["curves"], report.curves_picture(point.history, best=best))
    counts = {
        part: {name: int((run.labels[where] == c).sum()) for c, name in enumerate(run.classes)}
        for part, where in (("train", run.train), ("validation", run.validation))
    }
    history = History(
        history=point.history, epoch=list(range(1, point.epoch + 1)), classes=run.classes,
        best_epoch=best, stopped_early=point.stopped, resumed_from=resumed,
        output=os.fspath(output),
        files={k: v for k, v in files.items() if k == "history" or os.path.exists(v)},
        confusion=confusion, skipped=run.skipped, counts=counts,
        validation_files=[run.paths[i] for i in run.validation], written=written,
        batch_norm=run.top.statistics_reason,
    )  # fmt: skip
    return history


def _files_of(
    output: str | os.PathLike, checkpoint_dir: str | os.PathLike | None
) -> dict[str, str]:
    stem = os.path.splitext(os.fspath(output))[0]
    folder = os.fspath(checkpoint_dir) if checkpoint_dir is not None else stem + ".checkpoints"
    os.makedirs(folder, exist_ok=True)
    return {
        "last": os.path.join(folder, "last.npz"),
        "best": os.path.join(folder, "best.npz"),
        "curves": stem + ".curves.png",
        "confusion": stem + ".confusion.png",
        "history": stem + ".history.json",
        "checkpoints": folder,
    }


def fit(
    directory: str | os.PathLike,
    weights: str | os.PathLike | VGG,
    output: str | os.PathLike,
    *,
    head: str = DEFAULT_HEAD,
    epochs: int = 10,
    batch_size: int = 32,
    validation_split: float = 0.2,
    validation_dir: str | os.PathLike | None = None,
    unfreeze: int | str = 0,
    optimizer: str = "adam",
    learning_rate: float | None = None,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    augment: str | None = None,
    seed: int = 0,
    patience: int | None = None,
    restore_best_weights: bool = True,
    input_size: int | tuple[int, int] | None = None,
    preprocess: str | None = None,
    resize: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    restart: bool = False,
    verbose: bool | int | str = "auto",
) -> History:
    """Fine-tune a VGG on a folder of class subfolders and write the model (module docstring).

    Parameters
    ----------
    directory : str or os.PathLike
        One subfolder per class (`vgg_np.train.data.image_folder`).
    weights : str, os.PathLike or VGG
        The base: any weights file `VGG.from_file` reads (with or without its top; only
        the convolutions are used), or a model.
    output : str or os.PathLike
        The model file to write: ``.npz``, ``.keras``, ``.h5`` (a whole Keras model),
        ``.pth`` / ``.pt`` (torchvision's state dict, for a head its classifier fits;
        any other is refused before training); see `MODEL_SUFFIXES`. Beside it:
        ``STEM.checkpoints/``, ``STEM.curves.png``, ``STEM.confusion.png`` and
        ``STEM.history.json``.
    head : str, default `DEFAULT_HEAD`
        A head spec (`vgg_np.train.heads.parse_head`): ``"gap,dense:256,dropout:0.5"``,
        ``"vgg"`` for Keras's Flatten-fc1-fc2 top ...
    epochs : int, default 10
        The epoch to end after, counting those a checkpoint already holds.
    batch_size : int, default 32
    validation_split : float, default 0.2
        Fraction of each class held out (seeded); ignored with `validation_dir`.
    validation_dir : str or os.PathLike, optional
        A separate folder of the same class subfolders.
    unfreeze : int or str, default 0
        Blocks of the base that train too: ``1`` or ``"block5"``, ``2`` or ``"block4"``...
        The frozen blocks' output is what is cached. Their batch norms train as the
        base's framework trains them (`vgg_np.train.batch_norm`; ``History.batch_norm``).
    optimizer : {"adam", "sgd"}, default "adam"
    learning_rate : float, optional
        Default 1e-3 for Adam, 1e-2 for SGD.
    momentum : float, default 0.9
        SGD only.
    weight_decay : float, default 0.0
    augment : str, optional
        ``"flip"``, ``"crop:0.8"``, ``"flip,crop:0.8"`` (`vgg_np.train.data.parse_augment`):
        the frozen base then runs each epoch on the augmented training pictures.
    seed : int, default 0
        Every random choice: the split, the head's initial weights, the order of the
        pictures, dropout, augmentation.
    patience : int, optional
        Stop after this many epochs without a lower validation loss (Keras's
        ``EarlyStopping(monitor="val_loss", patience=...)``).
    restore_best_weights : bool, default True
        Write the weights of the epoch with the lowest validation loss, not the last.
    input_size : int or (int, int), optional
        Pictures are resized to it; default the size recorded with the weights, else 224.
    preprocess, resize : str, optional
        Override what the weights' provenance says (it must say something, or these).
    cache_dir : str or os.PathLike, optional
        Where feature stores live (`vgg_np.train.features.cache_root`).
    checkpoint_dir : str or os.PathLike, optional
    restart : bool, default False
        Discard the checkpoints and train from the first epoch.
    verbose : {"auto", 0, 1, 2}
        As Keras's: 1 prints an epoch line on stdout, notes on stderr and progress bars;
        2 the lines and notes without bars; 0 nothing; ``"auto"`` is 1 with the bars
        only on a terminal.

    Returns
    -------
    History

    Raises
    ------
    ValueError
        Naming the argument or the file: a folder without two classes, an empty class,
        weights that cannot be read or do not say their preprocessing, a head spec that
        is not one, a checkpoint damaged or of another run.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from PIL import Image
    >>> from vgg_np import VGG11
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for label, colour in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
    ...     (root / "pictures" / label).mkdir(parents=True)
    ...     for i in range(6):
    ...         Image.new("RGB", (40, 40), colour).save(root / "pictures" / label / f"{i}.png")
    >>> base = VGG11(include_top=False, input_shape=(32, 32, 3), seed=0)
    >>> history = fit(root / "pictures", base, root / "model.npz", head="gap", epochs=3,
    ...               preprocess="caffe", cache_dir=root / "cache", verbose=0)
    >>> history.classes, len(history.history["val_loss"]), history.counts["validation"]
    (('blue', 'red'), 3, {'blue': 1, 'red': 1})
    >>> VGG.from_file(root / "model.npz").weights_info["labels"]
    ('blue', 'red')
    """
    _check_arguments(output, epochs, batch_size, patience, seed)
    options = {
        "head": head, "unfreeze": unfreeze, "validation_dir": validation_dir,
        "validation_split": validation_split, "seed": seed, "input_size": input_size,
        "preprocess": preprocess, "resize": resize, "augment": augment, "optimizer": optimizer,
        "learning_rate": learning_rate, "momentum": momentum, "weight_decay": weight_decay,
        "batch_size": batch_size,
    }  # fmt: skip
    plan.check_outputs(
        directory, weights, output, validation_dir=validation_dir,
        checkpoint_dir=checkpoint_dir, cache_dir=cache_dir,
    )  # fmt: skip
    run = prepare(directory, weights, options, verbose)
    export.check(run.network, output)  # a format that cannot hold the model: say so now
    optimizer_ = make_optimizer(
        optimizer, learning_rate, momentum=momentum, weight_decay=weight_decay
    )
    files = _files_of(output, checkpoint_dir)  # before the feature pass: a failure costs none
    feature_seconds = _use_features(run, cache_dir, verbose)
    plan.check_validation(run, patience)
    point = _resume(run, files, _fingerprint(run), optimizer_, restart, epochs)
    resumed = point.epoch
    # The memory the steps free is kept for the next epoch, validation and the model's
    # writing, and given back once, when the run is over (`vgg_np.train.memory`).
    with memory.kept():
        try:
            _epochs(run, point, optimizer_, files, epochs, patience, verbose)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(
                f"{files['last']} holds the last epoch finished: run the same command again "
                "to resume"
                if os.path.exists(files["last"])
                else "no epoch was finished (the cached features are kept)"
            ) from None
        history = _finish(run, point, output, files, restore_best_weights, resumed)
        _write_history(run, history, files["history"], feature_seconds)
        del run, point, optimizer_  # their arrays freed before the memory is given back
    return history


def _write_history(run: Run, history: History, path: str, feature_seconds: float) -> None:
    """Add the feature pass's figures to `history` and write it as JSON beside the model."""
    history.feature_seconds = feature_seconds
    result = _features(run).result
    history.feature_rows = {
        "computed": result.written, "changed": result.changed, "reused": result.reused,
        "cached": result.images - result.written - result.reused,
    }  # fmt: skip
    with _files.atomic_write(path) as f:
        f.write(json.dumps(history.to_dict(), indent=1).encode())
