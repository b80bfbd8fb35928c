"""Training checkpoints: written atomically every epoch, read back strictly, never mixed up.

A checkpoint is an uncompressed ``.npz`` of plain arrays: the trained layers' tensors
(``w/<layer>/<i>``), the optimizer's state (``o/<layer>/<i>``) and one JSON entry,
``state``: the epochs done, the history, the best epoch so far, early stopping's count,
and a *fingerprint* of what the weights depend on (the base's weights, the head, the
classes, the features of every picture and the split, every setting but the number of
epochs). It is written beside its path and renamed over it once complete
(`vgg_np._files.atomic_write`), so a kill or a full disk while writing leaves the
previous checkpoint whole.

Reading refuses, naming the file, a checkpoint that is damaged (a CRC-32 mismatch, a
cut file, a member that is not what is written here) or that belongs to another run (its
fingerprint differs: each difference is named).
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np

from vgg_np import _files

__all__ = ["VERSION", "Checkpoint", "check_fingerprint", "load_checkpoint", "save_checkpoint"]

VERSION = "vgg_np train checkpoint 1"
_STATE_KEYS = {"version", "epoch", "history", "best", "wait", "stopped", "fingerprint", "optimizer"}


@dataclass
class Checkpoint:
    """A training run after `epoch` epochs.

    Attributes
    ----------
    epoch : int
        Epochs done.
    weights : dict
        Layer name -> tensors of every trained layer, as the model holds them.
    optimizer : dict
        ``{"scalars": {...}, "arrays": {"layer/i": array}}`` (`vgg_np.train.optim`).
    history : dict
        Metric name -> one value per epoch done.
    best : dict
        ``{"epoch": e, "val_loss": v}`` of the best epoch so far ({} without validation).
    wait : int
        Epochs since the best one (early stopping's count).
    stopped : bool
        Early stopping ended the run.
    fingerprint : dict of str
        What the weights depend on (module docstring).

    Examples
    --------
    >>> import tempfile, os
    >>> point = Checkpoint(1, {"fc1": (np.ones((2, 3), np.float32), np.zeros(3, np.float32))},
    ...                    fingerprint={"head": "gap"})
    >>> path = os.path.join(tempfile.mkdtemp(), "last.npz")
    >>> save_checkpoint(path, point)
    >>> back = load_checkpoint(path)
    >>> back.epoch, back.weights["fc1"][0].shape, back.fingerprint
    (1, (2, 3), {'head': 'gap'})
    """

    epoch: int
    weights: dict[str, tuple[np.ndarray, ...]]
    optimizer: dict = field(default_factory=lambda: {"scalars": {}, "arrays": {}})
    history: dict[str, list] = field(default_factory=dict)
    best: dict = field(default_factory=dict)
    wait: int = 0
    stopped: bool = False
    fingerprint: dict[str, str] = field(default_factory=dict)


def save_checkpoint(path: str | os.PathLike, checkpoint: Checkpoint) -> None:
    """Write `checkpoint` to `path` atomically.

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "last.npz")
    >>> save_checkpoint(path, Checkpoint(2, {"fc1": (np.ones(3, np.float32),)}))
    >>> sorted(np.load(path).files)
    ['state', 'w/fc1/0']

    Raises
    ------
    OSError
        If the folder is not writable or the disk is full: `path` is then unchanged.
    """
    state = {
        "version": VERSION,
        "epoch": checkpoint.epoch,
        "history": checkpoint.history,
        "best": checkpoint.best,
        "wait": checkpoint.wait,
        "stopped": checkpoint.stopped,
        "fingerprint": checkpoint.fingerprint,
        "optimizer": checkpoint.optimizer["scalars"],
    }
    arrays = {"state": np.array(json.dumps(state))}
    for name, tensors in checkpoint.weights.items():
        arrays.update({f"w/{name}/{i}": np.asarray(a) for i, a in enumerate(tensors)})
    arrays.update({f"o/{key}": np.asarray(a) for key, a in checkpoint.optimizer["arrays"].items()})
    with _files.atomic_write(path) as f:
        np.savez(f, allow_pickle=False, **arrays)  # read back with allow_pickle=False too


def _damaged(path: str | os.PathLike, why: str) -> ValueError:
    return ValueError(
        f"{os.fspath(path)}: damaged training checkpoint ({why}); delete it, or pass "
        "--restart (restart=True) to train from the first epoch"
    )


def _read_members(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every member of the checkpoint, each read whole (so zipfile checks its CRC-32)."""
    try:
        with (
            _files.open_regular(path, "training checkpoint") as f,
            np.load(f, allow_pickle=False) as npz,
        ):
            return {name: npz[name] for name in npz.files}
    except _files.NotARegularFile:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        if isinstance(error, OSError) and error.filename:
            raise
        raise _damaged(path, str(error) or type(error).__name__) from None


def _state(members: dict, path: str | os.PathLike) -> dict:
    text = members.pop("state", None)
    if text is None or text.dtype.kind != "U" or text.ndim != 0:
        raise _damaged(path, "no state entry")
    try:
        state = json.loads(str(text))
    except ValueError as error:
        raise _damaged(path, f"state is not JSON: {error}") from None
    if not isinstance(state, dict) or set(state) != _STATE_KEYS:
        raise _damaged(path, "its state has other entries than vgg_np writes")
    if state["version"] != VERSION:
        raise _damaged(path, f"written by {state['version']!r}, not {VERSION!r}")
    types = {"epoch": int, "history": dict, "best": dict, "wait": int, "stopped": bool}
    types |= {"fingerprint": dict, "optimizer": dict}
    wrong = [key for key, kind in types.items() if not isinstance(state[key], kind)]
    if wrong or state["epoch"] < 0:
        raise _damaged(path, f"its state's {', '.join(wrong) or 'epoch'} is not what vgg_np writes")
    return state


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read a checkpoint `save_checkpoint` wrote, checking every member.

    Examples
    --------
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "last.npz")
    >>> save_checkpoint(path, Checkpoint(2, {"fc1": (np.ones(3, np.float32),)}))
    >>> load_checkpoint(path).epoch
    2
    >>> with open(path, "r+b") as f:
    ...     _ = f.truncate(100)
    >>> load_checkpoint(path)
    Traceback (most recent call last):
    ...
    ValueError: .../last.npz: damaged training checkpoint (...); delete it, or pass --restart \
(restart=True) to train from the first epoch

    Raises
    ------
    ValueError
        Naming `path`: not a regular file, damaged, cut, or not a vgg_np checkpoint.
    OSError
        If it cannot be opened.
    """
    members = _read_members(path)
    state = _state(members, path)
    weights: dict[str, list] = {}
    arrays = {}
    for key, array in members.items():
        kind, _, rest = key.partition("/")
        name, _, index = rest.rpartition("/")
        if kind not in ("w", "o") or not name or not index.isdigit() or array.dtype.kind != "f":
            raise _damaged(path, f"unexpected member {key!r}")
        if kind == "w":
            weights.setdefault(name, []).append((int(index), array))
        else:
            arrays[rest] = array
    ordered = {n: tuple(a for _, a in sorted(pairs)) for n, pairs in weights.items()}
    if any(sorted(i for i, _ in pairs) != list(range(len(pairs))) for pairs in weights.values()):
        raise _damaged(path, "a layer's tensors are not numbered 0, 1, ...")
    return Checkpoint(
        epoch=state["epoch"],
        weights=ordered,
        optimizer={"scalars": state["optimizer"], "arrays": arrays},
        history=state["history"],
        best=state["best"],
        wait=state["wait"],
        stopped=state["stopped"],
        fingerprint=state["fingerprint"],
    )


#: How each fingerprint entry is named when a checkpoint of another run is refused.
_NAMES = {
    "base": "the base's weights",
    "cut": "the frozen layers (--unfreeze)",
    "head": "the head",
    "classes": "the classes",
    "features": "the pictures or their features (a picture changed, came or went)",
    "split": "the validation split",
    "batch_norm": "the batch norms' running-statistics conventions",
}


def check_fingerprint(path: str | os.PathLike, saved: dict, now: dict) -> None:
    """Refuse a checkpoint of another run, naming every difference.

    Examples
    --------
    >>> check_fingerprint("last.npz", {"head": "gap", "lr": "0.001"}, {"head": "gap", "lr": "0.01"})
    Traceback (most recent call last):
    ...
    ValueError: last.npz is the checkpoint of another training run: lr '0.001' (now '0.01'); \
delete it, or pass --restart (restart=True) to train from the first epoch
    """
    differences = []
    for key in sorted(set(saved) | set(now)):
        if saved.get(key) != now.get(key):
            if key in _NAMES:
                differences.append(_NAMES[key])
            else:
                differences.append(f"{key} {saved.get(key)!r} (now {now.get(key)!r})")
    if differences:
        raise ValueError(
            f"{os.fspath(path)} is the checkpoint of another training run: "
            f"{'; '.join(differences)}; delete it, or pass --restart (restart=True) to train "
            "from the first epoch"
        )
