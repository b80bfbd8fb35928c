"""What one `vgg_np.train.fit` call works with: its settings, its pictures, its models.

`prepare` reads the class folders (and splits them, or reads the validation folder),
loads the base's weights, chooses the preprocessing from their provenance, builds the
frozen base without a top, the whole network with its head (`vgg_np.train.heads`) and
the part that trains (`vgg_np.train.loop.Top`, with each trained batch norm's
running-statistics convention), and returns them as a `Run`.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from vgg_np.formats import Preprocessing, Provenance, choose_preprocessing
from vgg_np.layers import Layer
from vgg_np.model import VGG
from vgg_np.progress import write_line
from vgg_np.train.batch_norm import RunningStatistics, choose_statistics
from vgg_np.train.data import (
    Augment,
    ImageFolder,
    file_identity,
    image_folder,
    parse_augment,
    split,
)
from vgg_np.train.features import Features
from vgg_np.train.heads import parse_head
from vgg_np.train.loop import Top
from vgg_np.train.optim import OPTIMIZERS

__all__ = [
    "DEFAULT_HEAD",
    "MODEL_SUFFIXES",
    "Run",
    "Settings",
    "check_outputs",
    "check_validation",
    "output_problem",
    "prepare",
]

#: The head when none is given: Keras's transfer-learning guide's, with a hidden layer.
DEFAULT_HEAD = "gap,dense:256,dropout:0.5"


#: What a fine-tuned model may be written as by `vgg_np.train.fit` (`vgg_np.export.save`): vgg_np's
#: ``.npz``, a whole Keras model (``.keras``, ``.h5`` in ``model.save``'s layout) or a
#: torchvision state dict (``.pth``, ``.pt``: a head its classifier fits). Each records
#: the head (the Keras files and the npz: whole; torchvision's: its Linear layers), the
#: class names and the provenance (preprocessing, input size, base).
MODEL_SUFFIXES = (".npz", ".keras", ".h5", ".pth", ".pt")


def output_problem(output: str | os.PathLike) -> str | None:
    """Say what is wrong with `output` as the model file to write, None if nothing is.

    Checked before any work: the extension (`MODEL_SUFFIXES`), the folder, and that no
    directory, FIFO or device sits at the path (the model is written beside it and
    renamed over it, which would replace such a thing or fail after the training).

    Examples
    --------
    >>> output_problem("model.keras") is None
    True
    >>> output_problem("model.onnx")
    'must end in .npz, .keras, .h5, .pth or .pt (ONNX is read only)'
    >>> import tempfile, os
    >>> folder = os.path.join(tempfile.mkdtemp(), "m.keras")
    >>> os.mkdir(folder)
    >>> output_problem(folder)
    "'.../m.keras' is a directory, not a model file"
    """
    path = os.fspath(output)
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in MODEL_SUFFIXES:
        known = f"{', '.join(MODEL_SUFFIXES[:-1])} or {MODEL_SUFFIXES[-1]}"
        why = " (ONNX is read only)" if suffix == ".onnx" else ""
        return f"must end in {known}{why}"
    if os.path.isdir(path):
        return f"{path!r} is a directory, not a model file"
    if os.path.lexists(path) and not os.path.isfile(path):
        return f"{path!r} exists and is not a regular file (a FIFO, a device, a broken link)"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"the directory {folder} does not exist"
    return None


@dataclass(frozen=True)
class Settings:
    """Every choice the trained weights depend on, but the number of epochs.

    Recorded in each checkpoint's fingerprint: a checkpoint made with other settings is
    refused, not resumed.

    Examples
    --------
    >>> Settings(head="gap", seed=3).optimizer, Settings().learning_rate
    ('adam', 0.001)
    """

    head: str = DEFAULT_HEAD
    unfreeze: int = 0
    batch_size: int = 32
    optimizer: str = "adam"
    learning_rate: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    validation_split: float = 0.2
    augment: str = "none"
    seed: int = 0
    input_size: tuple[int, int] = (224, 224)
    preprocess: str = "caffe"
    resize: str = "keras"


def _noop(*_args: object) -> None:
    return None


@dataclass
class Run:
    """Everything one `fit` call works with, once prepared (`prepare` builds it).

    Examples
    --------
    ``run = prepare("pictures/", "base.npz", options, verbose=0)``; then
    ``run.classes``, ``run.paths[run.train]``, ``run.top.layers``, ``run.cut``
    (``"block5_pool"`` with a frozen base); `vgg_np.train.fit` is the whole use.

    >>> Run.__dataclass_fields__["cut"].type
    'str'
    """

    classes: tuple[str, ...]
    paths: list[str]  # every picture, training folder then validation folder
    labels: NDArray[np.int64]
    train: NDArray[np.intp]  # positions in paths
    validation: NDArray[np.intp]
    settings: Settings
    augment: Augment
    prep: Preprocessing
    base: VGG  # the base without a top: its convolutions as the weights file gave them
    source: str  # what the base came from, for the model file's provenance
    network: VGG  # the whole fine-tuned model; its weights are set at the end
    top: Top
    cut: str
    say: Callable[[str], None]
    note: Callable[[str], None]
    features: Features | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)


def _unfrozen(unfreeze: int | str) -> int:
    """``2``, ``"2"`` or ``"block4"`` (blocks 4 and 5) -> the number of blocks that train."""
    text = str(unfreeze)
    blocks = 6 - int(text[5:]) if text.startswith("block") and text[5:].isdigit() else None
    if blocks is None and text.isdigit():
        blocks = int(text)
    if blocks is None or not 0 <= blocks <= 4 or isinstance(unfreeze, bool):
        raise ValueError(
            f"`unfreeze` must be 0 to 4 blocks, or block2 ... block5 (that block and those "
            f"after it), got {unfreeze!r}"
        )
    return blocks


def _load_base(weights: str | os.PathLike | VGG) -> tuple[VGG, str]:
    """Return the base model and what it came from, from a `VGG` or any weights file."""
    if isinstance(weights, VGG):
        provenance = weights.weights_provenance
        return weights, f"a {weights.config.name} model ({provenance.family.value} weights)"
    model = VGG.from_file(weights)
    family = model.weights_provenance.family.value
    return model, f"{os.path.basename(os.fspath(weights))} ({family} weights)"


def _sizes(base: VGG, input_size: int | tuple[int, int] | None) -> tuple[int, int]:
    if input_size is None:
        recorded = base.weights_provenance.input_size
        h, w, _ = base.input_shape
        return recorded if recorded else (h, w) if h and w else (224, 224)
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 32 for s in (h, w)):
        raise ValueError(
            f"`input_size` must be an int >= 32 or (height, width), got {input_size!r}"
        )
    return h, w


def _statistics(
    above: Sequence[Layer], head: Sequence[Layer], provenance: Provenance
) -> tuple[dict[str, RunningStatistics], str]:
    """Each trained batch norm's running-statistics convention, and why.

    The unfrozen blocks' follow the base's framework (its weights' family, else their
    epsilon: `vgg_np.train.batch_norm.choose_statistics`); the head's ``bn`` is Keras's
    ``BatchNormalization()`` (`vgg_np.train.heads`) and follows Keras's.
    """
    names = {layer.name for layer in head}
    blocks = [layer for layer in above if layer.name not in names]
    base_rules, base_why = choose_statistics(blocks, provenance)
    head_rules, head_why = choose_statistics(head)
    said = [f"{where}: {why}" for where, rules, why in (
        ("unfrozen blocks", base_rules, base_why), ("head", head_rules, head_why)
    ) if rules]  # fmt: skip
    return {**base_rules, **head_rules}, "; ".join(said) or "no batch norm"


def _inside(path: str, folder: str) -> bool:
    """Whether `path` is `folder` or lies below it, links resolved."""
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def _writable(folder: str, what: str) -> None:
    """Refuse a folder that is not one, or where no file can be made (read-only, no access)."""
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise ValueError(f"{what} {folder} is not a folder")
    existing = os.path.abspath(folder)  # a relative name's dirname ends in "", not "/"
    while not os.path.isdir(existing):  # the folder is made later: its nearest parent
        existing = os.path.dirname(existing)
    try:
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        raise ValueError(f"{what}: cannot write in {existing} ({error.strerror})") from None


def check_outputs(
    directory: str | os.PathLike,
    weights: object,
    output: str | os.PathLike,
    *,
    validation_dir: str | os.PathLike | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> None:
    """Refuse outputs that would destroy an input, feed the next run, or fail after the work.

    Checked before anything is read or computed: the model written over the base's weights
    (the base would be lost), an output, the checkpoints or the feature cache inside the
    folder of pictures or the validation folder (the next run would read them as a class,
    or fail on a class folder without pictures), and folders that cannot be written (found
    otherwise only after the feature pass).

    Parameters
    ----------
    directory, weights, output, validation_dir, checkpoint_dir, cache_dir
        `vgg_np.train.fit`'s arguments of the same names.

    Raises
    ------
    ValueError
        Naming the path and what it would destroy.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> (root / "pics").mkdir(); (root / "base.npz").write_bytes(b"weights")
    7
    >>> check_outputs(root / "pics", root / "base.npz", root / "model.npz")
    >>> check_outputs(root / "pics", root / "base.npz", root / "base.npz")
    Traceback (most recent call last):
    ...
    ValueError: `output` .../base.npz is the base's weights (`weights`): writing the model \
there would lose them; choose another file
    >>> check_outputs(root / "pics", root / "base.npz", root / "pics" / "model.npz")
    Traceback (most recent call last):
    ...
    ValueError: `output` .../pics/model.npz lies inside the images folder .../pics: ...
    """
    output = os.path.abspath(os.fspath(output))
    if (
        isinstance(weights, (str, os.PathLike))
        and os.path.isfile(weights)
        and os.path.isfile(output)
        and os.path.samefile(weights, output)
    ):
        raise ValueError(
            f"`output` {output} is the base's weights (`weights`): writing the model there "
            "would lose them; choose another file"
        )
    stem = os.path.splitext(output)[0]
    checkpoints = stem + ".checkpoints" if checkpoint_dir is None else os.fspath(checkpoint_dir)
    written = [("`output`", output), ("`checkpoint_dir`", checkpoints)]
    written += [("`cache_dir`", os.fspath(cache_dir))] if cache_dir is not None else []
    inputs = (("the images folder", directory), ("the validation folder", validation_dir))
    for name, path in written:
        for what, folder in inputs:
            if folder is not None and _inside(path, os.fspath(folder)):
                raise ValueError(
                    f"{name} {path} lies inside {what} {os.fspath(folder)}: the next run "
                    "would read what is written there as pictures or classes; write it "
                    "elsewhere"
                )
    for name, path in written[1:]:
        _writable(path, name)
    _writable(os.path.dirname(output), "`output`")


def _shared_pictures(train: tuple[str, ...], held: tuple[str, ...]) -> list[tuple[str, str]]:
    """Return the (validation, training) pairs of paths that are one file (device, inode)."""
    trained = {file_identity(p): p for p in train}
    trained.pop(None, None)  # files that cannot be read are no evidence of sharing
    return [
        (p, trained[key]) for p in held if (key := file_identity(p)) is not None and key in trained
    ]


def _data(
    directory: str | os.PathLike,
    validation_dir: str | os.PathLike | None,
    validation_split: float,
    seed: int,
) -> tuple[ImageFolder, list[str], NDArray, NDArray[np.intp], NDArray[np.intp]]:
    """Classes, every path and label, and the training and validation positions."""
    folder = image_folder(directory, what="the images")
    if validation_dir is None:
        train, validation = split(folder.labels, validation_split, seed)
        return folder, list(folder.paths), folder.labels, train, validation
    held: ImageFolder = image_folder(
        validation_dir, classes=folder.classes, what="the validation folder"
    )
    shared = _shared_pictures(folder.paths, held.paths)
    if shared:
        raise ValueError(
            f"the validation folder {os.fspath(validation_dir)} holds {len(shared)} of the "
            f"training pictures ({shared[0][0]} is {shared[0][1]}): validation would measure "
            "pictures the model trains on; give other pictures, or hold out a split "
            "(--validation-split)"
        )
    n = len(folder.paths)
    labels = np.concatenate([folder.labels, held.labels])
    positions = np.arange(n + len(held.paths), dtype=np.intp)
    return folder, [*folder.paths, *held.paths], labels, positions[:n], positions[n:]


def _models(
    loaded: VGG,
    head: str,
    unfreeze: int,
    size: tuple[int, int],
    seed: int,
    classes: int,
    dtype: str,
) -> tuple[VGG, VGG, Top, str]:
    """Build the frozen base (no top), the network with its head, the trained part, the cut."""
    h, w = size
    batch_norm = loaded.batch_norm if loaded.batch_norm is not None else False
    base = VGG(loaded.config, include_top=False, input_shape=(h, w, 3), batch_norm=batch_norm)
    convolutions = {k: v for k, v in loaded.weights.items() if k.startswith("block")}
    base.set_weights(convolutions, source="the base's weights")
    pooled = base.network.output_shape("block5_pool", (h, w, 3))
    layers = parse_head(head, classes, input_shape=pooled)
    network = VGG(
        loaded.config, head=layers, input_shape=(h, w, 3), batch_norm=batch_norm, seed=seed,
        dtype=dtype,
    )  # fmt: skip
    cut = f"block{5 - unfreeze}_pool"
    names = [layer.name for layer in network.layers]
    above = network.layers[names.index(cut) + 1 :]
    initial = network.weights  # seeded: the head's initial weights
    trained = {
        layer.name: convolutions.get(layer.name, initial[layer.name])
        for layer in above
        if layer.name in initial
    }
    statistics, why = _statistics(above, layers, loaded.weights_provenance)
    top = Top(above, trained, dtype, statistics)
    top.statistics_reason = why
    return base, network, top, cut


def prepare(
    directory: str | os.PathLike,
    weights: str | os.PathLike | VGG,
    options: dict,
    verbose: bool | int | str,
) -> Run:
    """Read the folders and the weights; build the models; choose the preprocessing.

    `options` are `vgg_np.train.fit`'s keyword arguments of the same names.

    Examples
    --------
    >>> import tempfile
    >>> from vgg_np import VGG11
    >>> from vgg_np.train.data import write_shapes_folder
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_shapes_folder(folder, 2, size=32)
    >>> options = dict(unfreeze=1, validation_dir=None, validation_split=0.5, seed=0,
    ...                input_size=None, preprocess="tf", resize=None, augment="flip",
    ...                head="gap", optimizer="sgd", learning_rate=None, momentum=0.9,
    ...                weight_decay=0.0, batch_size=4)
    >>> base = VGG11(include_top=False, input_shape=(32, 32, 3), seed=0)
    >>> run = prepare(folder, base, options, verbose=0)
    >>> run.cut, [layer.name for layer in run.top.layers][:2], len(run.train), len(run.validation)
    ('block4_pool', ['block5_conv1', 'block5_conv2'], 4, 4)
    """
    unfreeze = _unfrozen(options["unfreeze"])
    split_fraction = 0.0 if options["validation_dir"] is not None else options["validation_split"]
    folder, paths, labels, train, validation = _data(
        directory, options["validation_dir"], split_fraction, options["seed"]
    )
    loaded, source = _load_base(weights)
    size = _sizes(loaded, options["input_size"])
    where = source if isinstance(weights, VGG) else os.fspath(weights)
    prep = choose_preprocessing(
        loaded.weights_provenance, preprocess=options["preprocess"], resize=options["resize"],
        where=where,
    )  # fmt: skip
    augment = parse_augment(options["augment"])
    base, network, top, cut = _models(
        loaded, options["head"], unfreeze, size, options["seed"], len(folder.classes), "float32"
    )
    optimizer = options["optimizer"]
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"`optimizer` must be one of {sorted(OPTIMIZERS)}, got {optimizer!r}")
    settings = Settings(
        head=options["head"], unfreeze=unfreeze, batch_size=options["batch_size"],
        optimizer=optimizer, learning_rate=options["learning_rate"] or OPTIMIZERS[optimizer],
        momentum=options["momentum"], weight_decay=options["weight_decay"],
        validation_split=split_fraction, augment=augment.describe(), seed=options["seed"],
        input_size=size, preprocess=prep.mode, resize=prep.resize,
    )  # fmt: skip
    quiet = verbose == 0 or verbose is False
    run = Run(
        classes=folder.classes, paths=paths, labels=labels, train=train, validation=validation,
        settings=settings, augment=augment, prep=prep, base=base, source=source,
        network=network, top=top, cut=cut,
        say=_noop if quiet else write_line,
        note=_noop if quiet else (lambda text: write_line(f"vgg-np: {text}", file=sys.stderr)),
    )  # fmt: skip
    if top.statistics:  # whose conventions move the running statistics, said once
        run.note(f"batch norms train; their running statistics follow {top.statistics_reason}")
    return run


def check_validation(run: Run, patience: int | None) -> None:
    """Refuse early stopping without validation pictures; say when a split held out none.

    Called once the unusable pictures are known (`Run.validation` no longer holds them).

    Examples
    --------
    >>> run = Run((), [], np.zeros(0, np.int64), np.zeros(0, np.intp), np.zeros(0, np.intp),
    ...           Settings(validation_split=0.0), None, None, None, "", None, None, "", print,
    ...           print)
    >>> check_validation(run, patience=None)
    >>> check_validation(run, patience=3)
    Traceback (most recent call last):
    ...
    ValueError: `patience` (--patience) stops on the validation loss, and no picture ...
    """
    if len(run.validation):
        return
    if patience is not None:  # it would never stop
        raise ValueError(
            "`patience` (--patience) stops on the validation loss, and no picture is held out "
            "for validation (no split, or no class of 2 usable pictures): leave it out, or "
            "give a validation split or folder"
        )
    if run.settings.validation_split > 0:
        run.note("no picture held out for validation: no class has 2 usable pictures")
