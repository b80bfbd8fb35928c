"""The measuring planner's memory: one JSON file of choices per machine, under the user's cache.

A file is named by a digest of what the measurements depend on (`machine`: the CPU, the
BLAS library and the kernels it picked, NumPy, the engine's threads) and holds that
description too, so a file copied from elsewhere is recognised as foreign. Every problem
with a file (damaged, truncated, from another version or machine, not a regular file, too
large, unreadable, unwritable) costs a warning and a new measurement, never an error and
never a different result than measuring would give: an entry only ever names a layout
that the planner checks against the layer before using it (`vgg_np.engine.measure`).

Files are written atomically (`vgg_np._files.atomic_write`) after merging with what the
file holds at that moment, so processes measuring at once lose at most each other's new
entries, which are measured again later.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import platform
import warnings

import numpy as np

from vgg_np import _files
from vgg_np.engine.plan import Choice
from vgg_np.engine.threads import blas_libraries

__all__ = [
    "FORMAT",
    "MAX_BYTES",
    "VERSION",
    "cache_dir",
    "check",
    "cpu",
    "default_path",
    "load",
    "machine",
    "store",
]

#: What the files say they are, and the version of what a choice means: raise it when
#: the engine changes what a choice computes or how fast it runs, and old files are
#: measured again.
FORMAT = "vgg_np engine plans"
VERSION = 1

#: The largest plan file read: a few hundred layers take about 50 KB.
MAX_BYTES = 1 << 20

#: ``/proc/cpuinfo`` is read up to this many bytes (a 256-CPU machine writes ~400 KB).
_CPUINFO_BYTES = 4 << 20


def cache_dir() -> pathlib.Path:
    """Return the folder of the plan files.

    ``$VGG_NP_CACHE`` if set, else ``$XDG_CACHE_HOME/vgg_np``, else ``~/.cache/vgg_np``.

    Examples
    --------
    >>> import os
    >>> os.environ["VGG_NP_CACHE"] = "/tmp/plans"
    >>> str(cache_dir())
    '/tmp/plans'
    >>> del os.environ["VGG_NP_CACHE"]
    """
    if os.environ.get("VGG_NP_CACHE"):
        return pathlib.Path(os.environ["VGG_NP_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "vgg_np"


def cpu() -> dict[str, str]:
    """Describe this CPU: model name, vendor, family, model, stepping, a digest of its flags.

    From ``/proc/cpuinfo`` where there is one (the model name alone can be as vague as
    "AMD EPYC" for several generations), else from `platform`.

    Examples
    --------
    >>> sorted(cpu())[:3]
    ['family', 'flags', 'machine']
    """
    fields = {"model name": "", "vendor_id": "", "cpu family": "", "model": "", "stepping": ""}
    flags = ""
    try:
        text = _files.read_text("/proc/cpuinfo", _CPUINFO_BYTES, "CPU description")
    except (OSError, ValueError):
        text = ""
    for line in text.split("\n\n", 1)[0].splitlines():  # the first CPU
        name, _, value = (part.strip() for part in line.partition(":"))
        if name in fields:
            fields[name] = value
        elif name in ("flags", "Features"):
            flags = value
    return {
        "model": fields["model name"] or platform.processor() or "unknown",
        "vendor": fields["vendor_id"],
        "family": fields["cpu family"],
        "number": fields["model"],
        "stepping": fields["stepping"],
        "flags": hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:16],
        "machine": platform.machine(),
    }


def machine(threads: int) -> dict:
    """Describe what measured choices depend on: CPU, BLAS builds, NumPy, threads.

    Examples
    --------
    >>> sorted(machine(2))
    ['blas', 'cpu', 'numpy', 'threads', 'version']
    """
    blas = [
        {key: str(library.get(key)) for key in ("internal_api", "version", "architecture")}
        for library in blas_libraries()
    ]
    return {
        "version": VERSION,
        "cpu": cpu(),
        "blas": blas,
        "numpy": np.__version__,
        "threads": threads,
    }


def default_path(description: dict) -> pathlib.Path:
    """Return the plan file of a machine `description` in `cache_dir`.

    Examples
    --------
    >>> two, one = default_path(machine(2)), default_path(machine(1))
    >>> two.name.startswith("plans-"), two == one  # another thread count, another file
    (True, False)
    """
    digest = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()
    return cache_dir() / f"plans-{digest[:16]}.json"


def _warn(message: str) -> None:
    warnings.warn(f"vgg_np plan cache: {message}", RuntimeWarning, stacklevel=4)


def _read(path: pathlib.Path) -> dict | None:
    """Return the file's JSON object, None if there is no file; warn on anything else."""
    try:
        data = _files.read_bytes(path, MAX_BYTES, "plan file")
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:  # not a regular file, too large, unreadable
        _warn(f"{error}; measuring again")
        return None
    try:
        document = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        _warn(f"{os.fspath(path)!r} is damaged (not JSON); measuring again")
        return None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        _warn(f"{os.fspath(path)!r} is not a vgg_np plan file; measuring again")
        return None
    return document


def load(path: pathlib.Path, description: dict | None) -> dict[str, Choice]:
    """Read the choices in a plan file; ``{}`` with a warning if it cannot be trusted.

    `description` is this machine's (`machine`): a file that says another is foreign and
    ignored. None accepts a file from any machine (a plan file the user names pins its
    choices wherever it runs). Entries that are not valid choices are dropped, each
    with a warning.

    Examples
    --------
    >>> import pathlib, tempfile, warnings
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "plans.json"
    >>> store(path, machine(2), {"layer": Choice("gemm", 2, 64)}, pinned=False)
    >>> load(path, machine(2))
    {'layer': Choice(algorithm='gemm', rows_per_chunk=2, channel_block=64, order='chunk')}
    >>> _ = path.write_text("{truncated")
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     load(path, machine(2)), "damaged" in str(caught[0].message)
    ({}, True)
    """
    document = _read(path)
    return {} if document is None else _entries(document, path, description)


def check(path: str | os.PathLike) -> None:
    """Refuse a plan file the user names that `load` would not use whole (the CLI's ``--plan``).

    The same reading as `load`'s (through `vgg_np._files`, so a FIFO never blocks), from
    any machine; what `load` warns about and measures again is an error here, and so is a
    missing file: a command line that names a plan means that plan.

    Raises
    ------
    FileNotFoundError
        If nothing is at `path`.
    ValueError
        Naming `path`: not a regular file, too large, unreadable, damaged, not a plan
        file, from another version of vgg_np, or an entry that is not a valid choice.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "plans.json"
    >>> store(path, machine(2), {"layer": Choice("gemm", 2, 64)}, pinned=False)
    >>> check(path)
    >>> _ = path.write_text("{truncated")
    >>> check(path)
    Traceback (most recent call last):
    ValueError: '...plans.json' is damaged (not JSON)
    """
    path = pathlib.Path(path)
    if not os.path.lexists(path):
        raise FileNotFoundError(2, "no such file", os.fspath(path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load(path, None)
    problems = [str(w.message) for w in caught if str(w.message).startswith("vgg_np plan cache")]
    if problems:
        reason = problems[0].removeprefix("vgg_np plan cache: ")
        raise ValueError(
            reason.removesuffix("; measuring again").removesuffix("; measuring it again")
        )


def _entries(document: dict, path: pathlib.Path, description: dict | None) -> dict[str, Choice]:
    name = repr(os.fspath(path))
    found = document.get("machine")
    if not isinstance(found, dict) or found.get("version") != VERSION:
        _warn(f"{name} was written by another version of vgg_np; measuring again")
        return {}
    if description is not None and found != description:
        _warn(f"{name} was measured on another machine; measuring again")
        return {}
    entries = document.get("plans")
    if not isinstance(entries, dict):
        _warn(f"{name} is damaged (no plans); measuring again")
        return {}
    choices = {}
    for key, entry in entries.items():
        try:
            choices[key] = Choice.from_dict(entry)
        except (TypeError, ValueError) as error:
            _warn(f"{name}: {key!r:.80}: {error}; measuring it again")
    return choices


def _current(document: dict | None) -> bool:
    """Whether `document` is a plan file of this version (`_read`'s output)."""
    if document is None:
        return False
    found = document.get("machine")
    return (
        isinstance(found, dict)
        and found.get("version") == VERSION
        and isinstance(document.get("plans"), dict)
    )


def store(path: pathlib.Path, description: dict, choices: dict[str, Choice], pinned: bool) -> None:
    """Add `choices` to the plan file at `path`, written atomically; warn if it cannot be.

    What the file holds now is kept (another process may have added entries since it was
    read) if it can be trusted. `pinned` (a file the user named) keeps the machine the
    file says its entries were measured on, and is never replaced unless it is a plan
    file of this version. A path that is not a regular file (a FIFO, a folder) is never
    replaced.

    Examples
    --------
    >>> import pathlib, tempfile
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "plans.json"
    >>> store(path, machine(2), {"a": Choice("gemm", 2, 64)}, pinned=False)
    >>> store(path, machine(2), {"b": Choice("gemm", 4, 64)}, pinned=False)  # merged
    >>> sorted(load(path, machine(2)))
    ['a', 'b']
    """
    if os.path.lexists(path) and not path.is_file():
        _warn(f"{os.fspath(path)!r} is not a regular file: the measured plans are not saved")
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # warned about when it was read
        document = _read(path)
        kept = {} if document is None else _entries(document, path, None if pinned else description)
    if pinned and os.path.lexists(path) and not _current(document):
        _warn(f"{os.fspath(path)!r} is not a plan file of this vgg_np: the measured plans are "
              "not saved (a file you named is never replaced)")  # fmt: skip
        return
    written_on = description
    if pinned and kept and document is not None:  # entries kept: they came from a document
        written_on = document["machine"]
    text = json.dumps(
        {
            "format": FORMAT,
            "machine": written_on,
            "plans": {key: choice.to_dict() for key, choice in sorted({**kept, **choices}.items())},
        },
        indent=1,
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _files.atomic_write(path) as f:
            f.write(text.encode())
    except OSError as error:
        _warn(f"cannot save the measured plans to {os.fspath(path)!r} ({error}); they are "
              "measured again by the next process")  # fmt: skip
