"""``weights="imagenet"``: the published ImageNet files, found where Keras and torch keep them.

Keras publishes VGG16 and VGG19 (with and without the classifier); torchvision publishes
vgg11, vgg13, vgg16, vgg19 and their batch-norm variants ``vgg11_bn`` ... ``vgg19_bn``
(whole networks). Keras caches its files in ``$KERAS_HOME/models/`` (default
``~/.keras/models/``) and torchvision in ``$TORCH_HOME/hub/checkpoints/`` (default
``$XDG_CACHE_HOME/torch/hub/checkpoints/``, i.e. ``~/.cache/torch/hub/checkpoints/``),
under the names `PUBLISHED` lists (`vgg_np._published`: the files as data). `resolve`
looks in both (Keras first: ``VGG16(weights="imagenet")`` is Keras's spelling), checks
the published hash (Keras's md5 from its applications source; torchvision's sha256 prefix
from the file name) and returns the path. Without a copy it raises one line naming the
file, its URL, its hash and the directory to put it in; with ``download=True`` it fetches
it into the same cache.

A download is bounded: at most the published file's size is accepted (a longer answer is
cut and refused), the whole transfer has a deadline (`DEADLINE` seconds, whatever the
server's pace) and each read a timeout; the bytes are hashed as they arrive and renamed to
their final name only when complete and verified, so a failure of any kind leaves no file
behind. Every error names the URL and the reason in one line.

The two families are different trained models: Keras's expects ``"caffe"``
preprocessing, torchvision's ``"torch"`` (`vgg_np.streams.preprocessing_for` reads which
one was loaded).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import pathlib
import socket
import time
import urllib.error
import urllib.request
import warnings
from typing import BinaryIO, Protocol

from vgg_np import _files
from vgg_np._published import MAX_UNPUBLISHED as MAX_UNPUBLISHED  # public, as before
from vgg_np._published import NAMES, PUBLISHED, Published, cache_dir
from vgg_np.progress import Progress

__all__ = [
    "DEADLINE",
    "NAMES",
    "PUBLISHED",
    "DownloadError",
    "Published",
    "cache_dir",
    "download",
    "find",
    "resolve",
]

#: Bytes read per step while hashing or downloading.
BLOCK = 1 << 20
#: Seconds a whole download may take (a 550 MB file at 1 MB/s takes ~9 minutes).
DEADLINE = 1800.0
#: Seconds one read from the server may wait for its next bytes.
READ_TIMEOUT = 60.0


class DownloadError(OSError):
    """A download failed; the message names the URL and the reason, in one line.

    Examples
    --------
    >>> entry = Published("keras", "w.h5", "http://x.invalid/w.h5", "md5", "0" * 32)
    >>> download(entry, progress=False)
    Traceback (most recent call last):
    ...
    vgg_np.hub.DownloadError: http://x.invalid/w.h5: its host name does not resolve (no such
    host, or no DNS); nothing was saved (to do it by hand: download that URL elsewhere and
    put w.h5 in .../models)
    """


class _Hasher(Protocol):
    """What hashlib's md5 and sha256 objects share that this module uses."""

    def update(self, data: bytes, /) -> None: ...

    def hexdigest(self) -> str: ...


def _hasher(entry: Published) -> _Hasher:
    return hashlib.md5(usedforsecurity=False) if entry.algorithm == "md5" else hashlib.sha256()


def _matches(entry: Published, hexdigest: str) -> bool:
    return hexdigest.startswith(entry.digest)  # torchvision: a prefix; Keras: all of it


def _force_command(entry: Published) -> str:
    """Return the command that downloads `entry` again over a bad copy, as typed."""
    for (model, top), entries in PUBLISHED.items():
        if entry in entries:
            no_top = "" if top else " --no-top"
            return f"vgg-np fetch-weights {model}{no_top} --family {entry.family} --force"
    return "vgg-np fetch-weights MODEL --force"  # an entry of one's own (tests)


def _check_file(entry: Published, path: pathlib.Path) -> None:
    hasher = _hasher(entry)
    what = f"copy of {entry.filename}"
    with _files.open_regular(path, what) as file:
        size = os.fstat(file.fileno()).st_size
        if size > entry.max_bytes:  # no need to hash 10 GB to know it is not the file
            raise ValueError(
                f"{path} holds {size:,} bytes, more than the published {entry.filename} "
                f"({entry.max_bytes:,}): a different file; replace it ({_force_command(entry)}, "
                "or resolve(..., force=True))"
            )
        while block := file.read(BLOCK):
            hasher.update(block)
    if not _matches(entry, hasher.hexdigest()):
        raise ValueError(
            f"{path} has {entry.algorithm} {hasher.hexdigest()}, but the published "
            f"{entry.filename} has {entry.digest}: a partial or different file; delete it "
            f"and download it again ({_force_command(entry)}, or resolve(..., force=True))"
        )


def find(entry: Published) -> pathlib.Path | None:
    """Return the verified cached copy of `entry`, or None if there is none.

    Raises
    ------
    ValueError
        If a file with the right name is there but it is not a regular file, or its hash
        or size is not the published one.

    Examples
    --------
    >>> os.environ["KERAS_HOME"] = "/nonexistent"
    >>> find(PUBLISHED["vgg16", True][0]) is None
    True
    >>> del os.environ["KERAS_HOME"]
    """
    path = cache_dir(entry.family) / entry.filename
    if not os.path.lexists(path):
        return None
    _check_file(entry, path)
    return path


def _reason(error: BaseException) -> str:
    """Say why a request failed, in words a user can act on (not Python's)."""
    if isinstance(error, urllib.error.HTTPError):
        return f"the server answered HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError):
        error = error.reason if isinstance(error.reason, BaseException) else error
    if isinstance(error, socket.gaierror):
        return "its host name does not resolve (no such host, or no DNS)"
    if isinstance(error, ConnectionRefusedError):
        return "the connection was refused (nothing listens there)"
    if isinstance(error, (TimeoutError, socket.timeout)):
        return "the server stopped answering (timed out)"
    if isinstance(error, http.client.HTTPException):
        return f"the server's answer is not valid HTTP ({type(error).__name__})"
    return getattr(error, "strerror", None) or str(error) or type(error).__name__


def _declared_length(response: http.client.HTTPResponse, url: str, limit: int) -> int | None:
    """Return the Content-Length, checked: a number, and at most `limit` (None if absent)."""
    text = response.headers.get("Content-Length")
    if text is None:
        return None
    if not text.strip().isdigit():
        raise DownloadError(f"{url}: the server declares a Content-Length of {text!r}, not a size")
    length = int(text)
    if length > limit:
        raise DownloadError(
            f"{url}: the server offers {length:,} bytes, more than the published file's "
            f"{limit:,}: refused"
        )
    return length


def _transfer(
    response: http.client.HTTPResponse,
    file: BinaryIO,
    entry: Published,
    url: str,
    start: float,
    deadline: float,
    bar: Progress,
) -> str:
    """Copy the response into `file` within the size cap and the deadline; return the digest.

    `start` is the `time.monotonic` at which the download began, `deadline` in seconds.
    """
    hasher, done = _hasher(entry), 0
    # read1 returns what one receive brings: a server that drips bytes cannot hold a
    # read past the deadline check.
    while block := response.read1(BLOCK):
        done += len(block)
        if done > entry.max_bytes:
            raise DownloadError(
                f"{url}: the server sent more than the published file's {entry.max_bytes:,} "
                "bytes: refused, nothing was saved"
            )
        if time.monotonic() - start > deadline:
            raise DownloadError(
                f"{url}: not complete after {deadline:g} s ({done:,} bytes received): the "
                "deadline passed, nothing was saved"
            )
        file.write(block)
        hasher.update(block)
        bar.update(len(block))
    return hasher.hexdigest()


def download(
    entry: Published,
    *,
    base_url: str | None = None,
    progress: bool = True,
    deadline: float = DEADLINE,
) -> pathlib.Path:
    """Download `entry` into its cache, verify it, and move it into place atomically.

    The bytes go to a temporary file in the cache directory, hashed as they arrive; only
    a file with the published hash is renamed to its final name (replacing any file of
    that name). On any failure (network, size, deadline, hash, interruption) the
    temporary file is removed.

    Parameters
    ----------
    entry : Published
    base_url : str, optional
        Replaces the directory of ``entry.url`` (a mirror, or a local server in tests).
    progress : bool, default True
        A progress bar on stderr.
    deadline : float, default DEADLINE
        Seconds the whole download may take.

    Returns
    -------
    pathlib.Path
        The verified file.

    Raises
    ------
    ValueError
        If the downloaded bytes do not have the published hash.
    DownloadError
        An `OSError` naming the URL and the reason: the host does not resolve, the
        connection is refused, an HTTP error, more bytes than the published size, a
        Content-Length that is not a number or does not match, the deadline passed.

    Examples
    --------
    >>> import hashlib, pathlib, tempfile
    >>> tmp = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (tmp / "w.h5").write_bytes(b"weights")
    >>> entry = Published("keras", "w.h5", (tmp / "w.h5").as_uri(), "md5",
    ...                   hashlib.md5(b"weights").hexdigest())
    >>> os.environ["KERAS_HOME"] = str(tmp / "keras")
    >>> download(entry, progress=False).read_bytes()
    b'weights'
    >>> del os.environ["KERAS_HOME"]
    """
    url = entry.url if base_url is None else f"{base_url.rstrip('/')}/{entry.filename}"
    if not (isinstance(deadline, (int, float)) and deadline > 0):
        raise ValueError(f"`deadline` must be a positive number of seconds, got {deadline!r}")
    start = time.monotonic()  # the deadline counts connecting and the headers too
    target = cache_dir(entry.family)
    made = [p for p in (target, *target.parents) if not p.exists()]
    target.mkdir(parents=True, exist_ok=True)
    # Written beside its final name and renamed only once complete and verified: a
    # failure anywhere (network, size, deadline, hash, Ctrl-C) removes the temporary file
    # and the directories made for it.
    try:
        with (
            _files.atomic_write(target / entry.filename) as file,
            urllib.request.urlopen(url, timeout=min(READ_TIMEOUT, deadline)) as response,
        ):
            total = _declared_length(response, url, entry.max_bytes)
            enabled = progress and bool(total)
            with Progress(total or 0, unit="MB", scale=1e6, enabled=enabled) as bar:
                digest = _transfer(response, file, entry, url, start, deadline, bar)
            if total is not None and bar.done != total:
                raise DownloadError(
                    f"{url}: the download stopped after {bar.done} of {total} bytes"
                )
            if not _matches(entry, digest):
                raise ValueError(
                    f"{url} gave {entry.algorithm} {digest}, not the published "
                    f"{entry.digest}: nothing was saved"
                )
            file.flush()
            os.fsync(file.fileno())
    except (OSError, http.client.HTTPException) as error:
        _remove_empty(made)
        if isinstance(error, DownloadError):
            raise
        raise DownloadError(
            f"{url}: {_reason(error)}; nothing was saved (to do it by hand: download that "
            f"URL elsewhere and put {entry.filename} in {target})"
        ) from error
    except BaseException:  # a wrong hash, Ctrl-C
        _remove_empty(made)
        raise
    return target / entry.filename


def _remove_empty(directories: list[pathlib.Path]) -> None:
    """Remove the directories a failed download made, deepest first, if still empty."""
    for directory in directories:
        with contextlib.suppress(OSError):
            directory.rmdir()


def _entries(
    model: str, include_top: bool, family: str | None, batch_norm: bool
) -> tuple[Published, ...]:
    key = (str(model).lower() + ("_bn" if batch_norm else ""), bool(include_top))
    if key not in PUBLISHED:
        raise ValueError(f"ImageNet weights are published for {list(NAMES)}, not {model!r}")
    if family not in (None, "keras", "torchvision"):
        raise ValueError(f"`family` must be None, 'keras' or 'torchvision', got {family!r}")
    entries = tuple(e for e in PUBLISHED[key] if family in (None, e.family))
    if not entries:
        others = sorted({e.family for e in PUBLISHED[key]})
        raise ValueError(
            f"{family} publishes no ImageNet weights of {key[0]}; {' and '.join(others)} "
            f"does: family={others[0]!r} (--family {others[0]}), or no family at all"
        )
    return entries


def resolve(
    model: str,
    include_top: bool = True,
    *,
    batch_norm: bool = False,
    download_missing: bool = False,
    base_url: str | None = None,
    progress: bool = True,
    family: str | None = None,
    force: bool = False,
    deadline: float = DEADLINE,
) -> pathlib.Path:
    """Return a verified copy of the ImageNet weights of `model`, from a cache or downloaded.

    Parameters
    ----------
    model : str
        One of `NAMES`: ``"vgg11"``, ``"vgg11_bn"``, ... ``"vgg19_bn"``.
    include_top : bool, default True
        With the classifier (Keras's full file) or without (Keras's ``_notop`` file;
        torchvision's whole file serves both).
    batch_norm : bool, default False
        The variant with batch normalisation (``"vgg16"`` then means ``"vgg16_bn"``).
    download_missing : bool, default False
        Without a cached copy, download the first file that fits (Keras's, where Keras
        publishes one) with `download`.
    base_url : str, optional
        Where to download from instead of the published URL.
    progress : bool, default True
    family : {None, "keras", "torchvision"}
        Only this family's file (None: Keras's first, then torchvision's).
    force : bool, default False
        Download again over a cached copy that fails its hash (otherwise an error).
    deadline : float, default DEADLINE
        Seconds a download may take.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    FileNotFoundError
        Without a copy and without `download_missing`: one line naming the files, URLs,
        hashes and directories.
    ValueError
        For another model, or a cached file whose hash is not the published one.
    DownloadError
        If a download fails (see `download`).

    Examples
    --------
    >>> os.environ["KERAS_HOME"] = os.environ["TORCH_HOME"] = "/nonexistent"
    >>> resolve("vgg16", include_top=False)
    Traceback (most recent call last):
    ...
    FileNotFoundError: no copy of the ImageNet weights of vgg16 (include_top=False): put
    vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 (md5 6d6bbae143d832006294945121d1f1fc)
    from https://storage.googleapis.com/.../vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5
    in /nonexistent/models, or vgg16-397923af.pth (sha256 397923af) from
    https://download.pytorch.org/models/vgg16-397923af.pth in /nonexistent/hub/checkpoints;
    or pass download=True (vgg-np fetch-weights vgg16 --no-top)
    >>> del os.environ["KERAS_HOME"], os.environ["TORCH_HOME"]
    """
    entries = _entries(model, include_top, family, batch_norm)
    for entry in entries:
        try:
            path = find(entry)
        except ValueError:
            if not (force and download_missing):
                raise
            return download(entry, base_url=base_url, progress=progress, deadline=deadline)
        if path is not None:
            return path
    if download_missing:
        return download(entries[0], base_url=base_url, progress=progress, deadline=deadline)
    places = ", or ".join(f"{e.describe()} in {cache_dir(e.family)}" for e in entries)
    name = str(model).lower() + ("_bn" if batch_norm else "")
    command = f"vgg-np fetch-weights {name}" + ("" if include_top else " --no-top")
    command += f" --family {family}" if family else ""
    raise FileNotFoundError(
        f"no copy of the ImageNet weights of {name} (include_top={bool(include_top)}): put "
        f"{places}; or pass download=True ({command})"
    )


def weights_path(
    weights: str | os.PathLike, name: str, include_top: bool, batch_norm: bool, download: bool
) -> str | os.PathLike:
    """Return the file `VGG`'s `weights` argument names: a path, or ``"imagenet"``'s in a cache.

    ``"imagenet"`` is `resolve`'d (downloaded with `download`), with a warning when Keras
    publishes the model but torchvision's file was the one found; a URL is refused.

    Examples
    --------
    >>> weights_path("w.h5", "vgg16", True, False, False)
    'w.h5'
    >>> weights_path("https://x/w.h5", "vgg16", True, False, False)
    Traceback (most recent call last):
    ...
    ValueError: `weights` must be a local file, 'imagenet' or None, got the URL ...
    """
    if isinstance(weights, str) and "://" in weights:
        raise ValueError(
            f"`weights` must be a local file, 'imagenet' or None, got the URL {weights!r}: "
            "download it and pass its path"
        )
    if isinstance(weights, str) and weights == "imagenet":
        path = resolve(name, include_top, batch_norm=batch_norm, download_missing=download)
        _warn_if_torchvision(path, name, include_top, batch_norm)
        return path
    return weights


def _warn_if_torchvision(
    path: pathlib.Path, name: str, include_top: bool, batch_norm: bool
) -> None:
    """Warn when Keras publishes this model but torchvision's file was the one found.

    The two are different trained models with different preprocessing: input prepared
    the Keras way (caffe) would run through torchvision's weights without an error.
    """
    published = PUBLISHED.get((name + ("_bn" if batch_norm else ""), bool(include_top)), ())
    found = [e for e in published if e.filename == os.path.basename(path)]
    keras = any(e.family == "keras" for e in published)
    if keras and found and found[0].family == "torchvision":
        warnings.warn(
            f"weights='imagenet': no Keras file of {name} is cached, so torchvision's "
            f"{found[0].filename} is used; it expects torch preprocessing "
            "(preprocess_input(x, mode='torch'), see model.weights_provenance), not Keras's "
            f"caffe (vgg-np fetch-weights {name}{'' if include_top else ' --no-top'} gets "
            "Keras's)",
            UserWarning,
            stacklevel=4,  # the caller of VGG(...): VGG.__init__, weights_path, here
        )
