r"""The one way a path a user gives is opened: regular files only, bounded reads, atomic writes.

Every file vgg_np reads on a user's behalf (weights, images, labels, activation dumps,
inputs, manifests, plans, cached downloads) is untrusted: it may be a FIFO that blocks a
reader forever, a device such as ``/dev/zero`` that never ends, or far larger than anything
of its kind. The helpers here open such a path without blocking, refuse anything that is
not a regular file (checked on the open descriptor, so the file cannot be swapped between
the check and the read), and read at most a cap fitting the kind of file. Every file
vgg_np writes goes through `atomic_write`: a temporary file beside the target, synced, then
renamed over it, so a reader never sees half a file.

Examples
--------
>>> import os, tempfile
>>> folder = tempfile.mkdtemp()
>>> path = os.path.join(folder, "labels.txt")
>>> with atomic_write(path) as f:
...     _ = f.write(b"cat\ndog\n")
>>> read_bytes(path, max_bytes=1024, what="labels file")
b'cat\ndog\n'
>>> os.mkfifo(os.path.join(folder, "fifo"))
>>> read_bytes(os.path.join(folder, "fifo"), max_bytes=1024, what="labels file")
Traceback (most recent call last):
...
vgg_np._files.NotARegularFile: '.../fifo' is a FIFO, not a regular labels file
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
import stat
from collections.abc import Iterator
from typing import BinaryIO

__all__ = [
    "NotARegularFile",
    "TooLarge",
    "atomic_path",
    "atomic_write",
    "check_regular",
    "describe_mode",
    "open_regular",
    "read_bytes",
    "read_text",
]

#: What a path is when it is not a regular file, for the error message.
_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class NotARegularFile(ValueError):
    """A path names a directory, FIFO, socket or device where a regular file was expected.

    Its `kind` says what the path is instead (``"a FIFO"``).
    """

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


class TooLarge(ValueError):
    """A file holds more bytes than any file of its kind may (an endless or hostile file)."""


def describe_mode(mode: int) -> str:
    """Say what a file of `mode` is: ``"a FIFO"``, ``"a directory"``, ... or ``"a file"``.

    Examples
    --------
    >>> import stat
    >>> describe_mode(stat.S_IFIFO)
    'a FIFO'
    """
    return next((name for test, name in _FILE_KINDS if test(mode)), "a file")


def _refuse(path: str | os.PathLike, mode: int, what: str) -> NotARegularFile:
    kind = describe_mode(mode)
    return NotARegularFile(f"{os.fspath(path)!r} is {kind}, not a regular {what}", kind)


def check_regular(path: str | os.PathLike, what: str = "file") -> os.stat_result:
    """Return the status of `path`, refusing anything but a regular file.

    Parameters
    ----------
    path : str or os.PathLike
        The user's path (symbolic links are followed).
    what : str
        What the file should be, for the message (``"weights file"``).

    Returns
    -------
    os.stat_result

    Raises
    ------
    NotARegularFile
        For a directory, FIFO, socket or device.
    OSError
        If `path` does not exist or cannot be examined.

    Examples
    --------
    >>> check_regular("/dev/null", "labels file")
    Traceback (most recent call last):
    ...
    vgg_np._files.NotARegularFile: '/dev/null' is a character device, not a regular labels file
    """
    status = os.stat(path)
    if not stat.S_ISREG(status.st_mode):
        raise _refuse(path, status.st_mode, what)
    return status


def open_regular(path: str | os.PathLike, what: str = "file") -> io.BufferedReader:
    """Open a regular file for binary reading, never blocking on a FIFO put in its place.

    The file is opened with ``O_NONBLOCK`` (opening a FIFO then returns at once) and its
    type is checked on the open descriptor.

    Parameters
    ----------
    path : str or os.PathLike
    what : str
        What the file should be, for the message.

    Returns
    -------
    io.BufferedReader
        The open file; the caller closes it (``with open_regular(p) as f:``).

    Raises
    ------
    NotARegularFile
        For a directory, FIFO, socket or device.
    OSError
        If `path` cannot be opened.

    Examples
    --------
    >>> open_regular("/dev/zero", "activations dump")
    Traceback (most recent call last):
    ...
    vgg_np._files.NotARegularFile: '/dev/zero' is a character device, not a regular activations dump
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags | getattr(os, "O_BINARY", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _refuse(path, mode, what)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | os.PathLike, max_bytes: int, what: str = "file") -> bytes:
    """Read a whole regular file of at most `max_bytes` bytes.

    The size is checked before reading and again while reading (a file that grows while
    it is read is refused too), so an endless or huge file never fills memory.

    Parameters
    ----------
    path : str or os.PathLike
    max_bytes : int
        The largest file of this kind vgg_np accepts.
    what : str
        What the file should be, for the message.

    Returns
    -------
    bytes

    Raises
    ------
    NotARegularFile
        For a directory, FIFO, socket or device.
    TooLarge
        If the file holds more than `max_bytes` bytes.
    OSError
        If `path` cannot be opened or read.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile(suffix=".txt") as f:
    ...     _ = f.write(b"0123456789"); f.flush()
    ...     read_bytes(f.name, max_bytes=4, what="labels file")
    Traceback (most recent call last):
    ...
    vgg_np._files.TooLarge: '...txt' holds 10 bytes, more than the 4 a labels file may hold
    """
    with open_regular(path, what) as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise _too_large(path, size, max_bytes, what)
        # No more than the file and one byte (read reserves what it is asked for: the whole
        # cap would need its address space, under ``ulimit -v`` a MemoryError); the rest,
        # up to the cap, only if the file grew since.
        data = f.read(size + 1)
        if len(data) > size:
            data += f.read(max_bytes + 1 - len(data))
    if len(data) > max_bytes:
        raise _too_large(path, len(data), max_bytes, what)
    return data


def _too_large(path: str | os.PathLike, size: int, max_bytes: int, what: str) -> TooLarge:
    return TooLarge(
        f"{os.fspath(path)!r} holds {size:,} bytes, more than the {max_bytes:,} a {what} may hold"
    )


def read_text(path: str | os.PathLike, max_bytes: int, what: str = "file") -> str:
    r"""Read a whole regular UTF-8 text file of at most `max_bytes` bytes (see `read_bytes`).

    Raises
    ------
    NotARegularFile, TooLarge, OSError
        As `read_bytes`.
    ValueError
        If the file is not UTF-8 text; the message names the file and the byte offset.

    Examples
    --------
    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile(suffix=".txt") as f:
    ...     _ = f.write("chat\nchien\n".encode()); f.flush()
    ...     read_text(f.name, max_bytes=1024, what="labels file").split()
    ['chat', 'chien']
    """
    data = read_bytes(path, max_bytes, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"{os.fspath(path)!r} is not UTF-8 text (byte {error.start}): not a {what}"
        ) from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a new file's name beside `path`; rename it over `path` once complete and synced.

    An existing file is never left half-written, whatever fails while writing (an
    exception, SIGINT, a full disk), and a reader of the old file keeps reading the old
    bytes, so `path` may be the very file the weights were read from. The new file gets
    the permissions the umask gives any new file.

    Examples
    --------
    >>> import os, tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "out.bin")
    >>> with atomic_path(target) as tmp:
    ...     with open(tmp, "wb") as f:
    ...         _ = f.write(b"done")
    ...     os.path.exists(target)
    False
    >>> open(target, "rb").read()
    b'done'
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{secrets.token_hex(4)}.part")
    # Mode 0o666 as for any new file: the kernel applies the umask (mkstemp's 0o600 did not).
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    try:
        os.close(os.open(tmp, flags, 0o666))
    except OSError as error:  # name the user's file, not the temporary one
        raise type(error)(error.errno, error.strerror, path) from None
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Write a binary file beside `path`, renamed over it once complete (see `atomic_path`).

    Examples
    --------
    >>> import os, tempfile
    >>> target = os.path.join(tempfile.mkdtemp(), "out.bin")
    >>> with atomic_write(target) as f:
    ...     _ = f.write(b"done")
    >>> open(target, "rb").read()
    b'done'
    """
    with atomic_path(path) as tmp, open(tmp, "r+b") as f:
        yield f
