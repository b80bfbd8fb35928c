"""The manifest of a store: one JSON line per row, in a journal while its partition runs.

Each entry names its row, image, status, the image's identity when its row was computed,
and a checksum of the row's bytes (`_row_digest`); `_read_entries` checks every line it
reads, and `_recheck_image` tells whether an image changed since its row was computed.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
from numpy.typing import NDArray

from vgg_np._files import atomic_write, open_regular, read_text
from vgg_np.extract.plan import Partition
from vgg_np.streams import file_identity

#: Largest partition manifest or journal read back (256 rows with their top classes).
MAX_MANIFEST_BYTES = 256 << 20


def _write_atomically(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: all of it or nothing."""
    with atomic_write(path) as file:
        file.write(text.encode())
        file.flush()
        os.fsync(file.fileno())  # on disk before the rename makes it count


def _row_digest(row: NDArray) -> str:
    """Return a checksum of one stored row's bytes: 64 bits of BLAKE2b, in hex."""
    return hashlib.blake2b(np.ascontiguousarray(row).data, digest_size=8).hexdigest()


def _damaged(path: str, why: str) -> ValueError:
    return ValueError(
        f"{path} is damaged ({why}): delete it to recompute its partition, or delete the "
        "whole store to start over"
    )


def _read_entries(path: str, partition: Partition, *, journal: bool) -> dict[int, dict]:
    """Row -> entry of a partition's manifest or journal, each entry checked.

    A journal's last line cut short by a kill is ignored; anything else that is not an
    entry of this partition (bad JSON, a row outside it, another path, no checksum), or a
    manifest without every row, is refused in one line naming the file.
    """
    try:
        text = read_text(path, MAX_MANIFEST_BYTES, "extraction manifest")
    except FileNotFoundError:
        return {}
    lines = text.split("\n")
    last = len(lines) - 1  # "" when the file ends in a newline
    entries = {}
    for number, line in enumerate(lines, 1):
        if not line and number > last:
            break
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            if journal and number > last:
                break  # the last line of a journal whose writer was killed
            raise _damaged(path, f"line {number} is not JSON") from None
        row = entry.get("row") if isinstance(entry, dict) else None
        if not (
            isinstance(row, int)
            and partition.start <= row < partition.stop
            and entry.get("path") == partition.paths[row - partition.start]
            and entry.get("status") in ("ok", "error")
            and isinstance(entry.get("digest"), str)
            and (entry.get("image") is None or isinstance(entry["image"], dict))
        ):
            raise _damaged(path, f"line {number} is not an entry of {partition.name}")
        entries[row] = entry
    if not journal and len(entries) != partition.stop - partition.start:
        count = partition.stop - partition.start
        raise _damaged(path, f"{len(entries)} entries for the {count} rows of {partition.name}")
    return entries


def _ends_cut(path: str) -> bool:
    """Whether the file at `path` ends in a line without its newline (a write cut short)."""
    try:
        with open_regular(path, "extraction journal") as file:
            if file.seek(0, os.SEEK_END) == 0:
                return False
            file.seek(-1, os.SEEK_END)
            return file.read(1) != b"\n"
    except FileNotFoundError:
        return False


def _journal_entries(journal: str, partition: Partition) -> dict[int, dict]:
    """Row -> entry of a partition's journal, ready to be appended to.

    A last line cut by a kill is dropped from the file: appending after it would damage it.
    """
    entries = _read_entries(journal, partition, journal=True)
    if _ends_cut(journal):
        _write_atomically(journal, "".join(json.dumps(entries[r]) + "\n" for r in entries))
    return entries


def _recheck_image(entry: dict) -> tuple[bool, dict | None]:
    """Tell whether an entry's image changed since its row was computed, and its new identity.

    The new identity (to be recorded) is given when only the size or time changed. Size
    and modification time alike: the same file. Otherwise its content hash decides
    (a file only touched, or copied with its bytes, keeps its row).
    """
    recorded = entry.get("image")
    try:
        status = os.stat(entry["path"])
    except OSError:
        return recorded is not None, None  # gone since (or still missing: unchanged)
    if recorded is None:
        return True, None  # missing or unreadable then, there now
    if (status.st_size, status.st_mtime_ns) == (recorded.get("size"), recorded.get("mtime_ns")):
        return False, None
    now = file_identity(entry["path"])
    if now is None or now["sha256"] != recorded.get("sha256"):
        return True, None
    return False, now
