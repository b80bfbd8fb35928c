"""``weights="imagenet"``: the published ImageNet files, found where Keras and torch keep them.

Keras caches its Applications weights in ``$KERAS_HOME/models/`` (default
``~/.keras/models/``) and torchvision in ``$TORCH_HOME/hub/checkpoints/`` (default
``$XDG_CACHE_HOME/torch/hub/checkpoints/``, i.e. ``~/.cache/torch/hub/checkpoints/``),
under the names below. `resolve` looks in both (Keras first: ``VGG16(weights="imagenet")``
is Keras's spelling), checks the published hash (Keras's md5 from its applications
source; torchvision's sha256 prefix from the file name) and returns the path. Without a
copy it raises one line naming the file, its URL, its hash and the directory to put it
in; with ``download=True`` it fetches it into the same cache, with a progress bar,
verifying the hash before an atomic rename, so that no partial file is ever left under
the final name.

The two families are different trained models: Keras's expects ``"caffe"``
preprocessing, torchvision's ``"torch"`` (`vgg_np.streams.preprocessing_for` reads which
one was loaded).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import urllib.request
from dataclasses import dataclass

from vgg_np._files import atomic_write
from vgg_np.progress import Progress

__all__ = ["PUBLISHED", "Published", "cache_dir", "download", "find", "resolve"]

#: Bytes read per step while hashing or downloading.
BLOCK = 1 << 20

_KERAS_URL = "https://storage.googleapis.com/tensorflow/keras-applications"
_TORCH_URL = "https://download.pytorch.org/models"


@dataclass(frozen=True)
class Published:
    """One published weights file: where it comes from and how to check it.

    Attributes
    ----------
    family : {"keras", "torchvision"}
        Whose cache holds it (and which preprocessing it needs).
    filename : str
        The name both the URL and the cache use.
    url : str
        Where it is published.
    algorithm : {"md5", "sha256"}
    digest : str
        The published hex digest (torchvision publishes a prefix of the sha256).

    Examples
    --------
    >>> PUBLISHED["vgg16", False][0].filename
    'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5'
    """

    family: str
    filename: str
    url: str
    algorithm: str
    digest: str

    def describe(self) -> str:
        """Return the file, its URL and hash, in one phrase (see the class example)."""
        return f"{self.filename} ({self.algorithm} {self.digest}) from {self.url}"


def _keras(model: str, suffix: str, md5: str) -> Published:
    filename = f"{model}_weights_tf_dim_ordering_tf_kernels{suffix}.h5"
    return Published("keras", filename, f"{_KERAS_URL}/{model}/{filename}", "md5", md5)


def _torchvision(filename: str) -> Published:
    prefix = filename.rsplit("-", 1)[1].split(".")[0]  # the sha256 prefix in the name
    return Published("torchvision", filename, f"{_TORCH_URL}/{filename}", "sha256", prefix)


# Hashes: keras/src/applications/vgg16.py and vgg19.py (Keras 3); torchvision's file names.
# torchvision publishes only whole networks; without the top their classifier is ignored.
_VGG16_TORCH, _VGG19_TORCH = _torchvision("vgg16-397923af.pth"), _torchvision("vgg19-dcbb9e9d.pth")

#: (model, include_top) -> the published files that fit, in the order they are looked for.
PUBLISHED: dict[tuple[str, bool], tuple[Published, ...]] = {
    ("vgg16", True): (_keras("vgg16", "", "64373286793e3c8b2b4e3219cbf3544b"), _VGG16_TORCH),
    ("vgg16", False): (_keras("vgg16", "_notop", "6d6bbae143d832006294945121d1f1fc"), _VGG16_TORCH),
    ("vgg19", True): (_keras("vgg19", "", "cbe5617147190e668d6c5d5026f83318"), _VGG19_TORCH),
    ("vgg19", False): (_keras("vgg19", "_notop", "253f8cb515780f3b799900260a226db6"), _VGG19_TORCH),
}


def cache_dir(family: str) -> pathlib.Path:
    """Return the directory Keras or torch keeps downloaded weights in (from the environment).

    Examples
    --------
    >>> os.environ["KERAS_HOME"] = "/data/keras"
    >>> cache_dir("keras")
    PosixPath('/data/keras/models')
    >>> del os.environ["KERAS_HOME"]
    """
    if family == "keras":
        home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
        return pathlib.Path(home) / "models"
    if family == "torchvision":
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        home = os.environ.get("TORCH_HOME") or os.path.join(xdg, "torch")
        return pathlib.Path(home) / "hub" / "checkpoints"
    raise ValueError(f"`family` must be 'keras' or 'torchvision', got {family!r}")


def _hasher(entry: Published):
    return hashlib.md5(usedforsecurity=False) if entry.algorithm == "md5" else hashlib.sha256()


def _matches(entry: Published, hexdigest: str) -> bool:
    return hexdigest.startswith(entry.digest)  # torchvision: a prefix; Keras: all of it


def _check_file(entry: Published, path: pathlib.Path) -> None:
    hasher = _hasher(entry)
    with open(path, "rb") as file:
        while block := file.read(BLOCK):
            hasher.update(block)
    if not _matches(entry, hasher.hexdigest()):
        raise ValueError(
            f"{path} has {entry.algorithm} {hasher.hexdigest()}, but the published "
            f"{entry.filename} has {entry.digest}: a partial or different file; delete it "
            "and download it again"
        )


def find(entry: Published) -> pathlib.Path | None:
    """Return the verified cached copy of `entry`, or None if there is none.

    Raises
    ------
    ValueError
        If a file with the right name is there but its hash is not the published one.

    Examples
    --------
    >>> os.environ["KERAS_HOME"] = "/nonexistent"
    >>> find(PUBLISHED["vgg16", True][0]) is None
    True
    >>> del os.environ["KERAS_HOME"]
    """
    path = cache_dir(entry.family) / entry.filename
    if not path.is_file():
        return None
    _check_file(entry, path)
    return path


def download(entry: Published, *, base_url: str | None = None, progress: bool = True):
    """Download `entry` into its cache, verify it, and move it into place atomically.

    The bytes go to a temporary file in the cache directory, hashed as they arrive; only
    a file with the published hash is renamed to its final name. On any failure
    (network, hash, interruption) the temporary file is removed.

    Parameters
    ----------
    entry : Published
    base_url : str, optional
        Replaces the directory of ``entry.url`` (a mirror, or a local server in tests).
    progress : bool, default True
        A progress bar on stderr.

    Returns
    -------
    pathlib.Path
        The verified file.

    Raises
    ------
    ValueError
        If the downloaded bytes do not have the published hash.
    OSError
        If the download fails (``urllib.error.URLError`` is an OSError).

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
    target = cache_dir(entry.family)
    target.mkdir(parents=True, exist_ok=True)
    hasher = _hasher(entry)
    # Written beside its final name and renamed only once complete and verified: a
    # failure anywhere (network, hash, Ctrl-C) removes the temporary file.
    with (
        atomic_write(target / entry.filename) as file,
        urllib.request.urlopen(url, timeout=60) as response,
    ):
        total = int(response.headers.get("Content-Length") or 0)
        with Progress(total, unit="MB", scale=1e6, enabled=progress and total > 0) as bar:
            while block := response.read(BLOCK):
                file.write(block)
                hasher.update(block)
                bar.update(len(block))
        if total and bar.done != total:
            raise OSError(f"{url}: the download stopped after {bar.done} of {total} bytes")
        if not _matches(entry, hasher.hexdigest()):
            raise ValueError(
                f"{url} gave {entry.algorithm} {hasher.hexdigest()}, not the published "
                f"{entry.digest}: nothing was saved"
            )
        file.flush()
        os.fsync(file.fileno())
    return target / entry.filename


def resolve(
    model: str,
    include_top: bool = True,
    *,
    download_missing: bool = False,
    base_url: str | None = None,
    progress: bool = True,
) -> pathlib.Path:
    """Return a verified copy of the ImageNet weights of `model`, from a cache or downloaded.

    Parameters
    ----------
    model : {"vgg16", "vgg19"}
    include_top : bool, default True
        With the classifier (Keras's full file) or without (Keras's ``_notop`` file;
        torchvision's whole file serves both).
    download_missing : bool, default False
        Without a cached copy, download Keras's file (`download`).
    base_url : str, optional
        Where to download from instead of the published URL.
    progress : bool, default True

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
    or pass download=True (vgg-np fetch-weights vgg16)
    >>> del os.environ["KERAS_HOME"], os.environ["TORCH_HOME"]
    """
    key = (str(model).lower(), bool(include_top))
    if key not in PUBLISHED:
        known = sorted({name for name, _ in PUBLISHED})
        raise ValueError(f"ImageNet weights are published for {known}, not {model!r}")
    entries = PUBLISHED[key]
    for entry in entries:
        path = find(entry)
        if path is not None:
            return path
    if download_missing:
        return download(entries[0], base_url=base_url, progress=progress)
    places = ", or ".join(f"{e.describe()} in {cache_dir(e.family)}" for e in entries)
    raise FileNotFoundError(
        f"no copy of the ImageNet weights of {key[0]} (include_top={key[1]}): put {places}; "
        f"or pass download=True (vgg-np fetch-weights {key[0]})"
    )
