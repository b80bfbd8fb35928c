"""The published ImageNet VGG files: where each comes from, how big it is, how to check it.

Data only (`vgg_np.hub` finds, checks and downloads them): Keras's VGG16 and VGG19 (with
and without the classifier) and torchvision's vgg11 ... vgg19_bn, each a `Published`
entry in `PUBLISHED`, and `cache_dir`, where Keras and torch keep them. Every name is
importable from `vgg_np.hub`.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass

#: The cap of an entry without a published size (larger than any published VGG file).
MAX_UNPUBLISHED = 1 << 30

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
    size : int, optional
        The most bytes the published file may hold: its exact size for Keras's files,
        for torchvision's the largest size that rounds to the MiB (3 decimals) its
        ``_file_size`` publishes. None: `MAX_UNPUBLISHED`.

    Examples
    --------
    >>> PUBLISHED["vgg16", False][0].filename
    'vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5'
    >>> PUBLISHED["vgg11_bn", True][0].describe()
    'vgg11_bn-6002323d.pth (sha256 6002323d) from https://download.pytorch.org/models/vgg11_bn-6002323d.pth'
    """

    family: str
    filename: str
    url: str
    algorithm: str
    digest: str
    size: int | None = None

    def describe(self) -> str:
        """Return the file, its URL and hash, in one phrase (see the class example)."""
        return f"{self.filename} ({self.algorithm} {self.digest}) from {self.url}"

    @property
    def max_bytes(self) -> int:
        """The most bytes a copy of this file may hold (`size`, else `MAX_UNPUBLISHED`).

        Examples
        --------
        >>> PUBLISHED["vgg16", False][0].max_bytes
        58889256
        """
        return self.size if self.size is not None else MAX_UNPUBLISHED


def _keras(model: str, suffix: str, md5: str, size: int) -> Published:
    filename = f"{model}_weights_tf_dim_ordering_tf_kernels{suffix}.h5"
    return Published("keras", filename, f"{_KERAS_URL}/{model}/{filename}", "md5", md5, size)


def _torchvision(filename: str, mib: float) -> Published:
    prefix = filename.rsplit("-", 1)[1].split(".")[0]  # the sha256 prefix in the name
    size = int((mib + 0.0005) * 2**20)  # the largest size that rounds to `mib`
    return Published("torchvision", filename, f"{_TORCH_URL}/{filename}", "sha256", prefix, size)


# Keras: hashes from keras/src/applications/vgg16.py and vgg19.py (Keras 3), sizes as its
# downloader reports them. torchvision: file names (hash prefixes) and _file_size (MiB)
# from torchvision/models/vgg.py. torchvision publishes whole networks only: without the
# top their classifier is ignored.
_TORCH = {
    "vgg11": _torchvision("vgg11-8a719046.pth", 506.84),
    "vgg11_bn": _torchvision("vgg11_bn-6002323d.pth", 506.881),
    "vgg13": _torchvision("vgg13-19584684.pth", 507.545),
    "vgg13_bn": _torchvision("vgg13_bn-abd245e5.pth", 507.59),
    "vgg16": _torchvision("vgg16-397923af.pth", 527.796),
    "vgg16_bn": _torchvision("vgg16_bn-6c64b313.pth", 527.866),
    "vgg19": _torchvision("vgg19-dcbb9e9d.pth", 548.051),
    "vgg19_bn": _torchvision("vgg19_bn-c79401a0.pth", 548.143),
}
_KERAS = {
    ("vgg16", True): _keras("vgg16", "", "64373286793e3c8b2b4e3219cbf3544b", 553467096),
    ("vgg16", False): _keras("vgg16", "_notop", "6d6bbae143d832006294945121d1f1fc", 58889256),
    ("vgg19", True): _keras("vgg19", "", "cbe5617147190e668d6c5d5026f83318", 574710816),
    ("vgg19", False): _keras("vgg19", "_notop", "253f8cb515780f3b799900260a226db6", 80134624),
}

#: (model, include_top) -> the published files that fit, in the order they are looked for.
PUBLISHED: dict[tuple[str, bool], tuple[Published, ...]] = {
    (name, top): tuple(e for e in (_KERAS.get((name, top)), torch) if e is not None)
    for name, torch in _TORCH.items()
    for top in (True, False)
}

#: The models with published ImageNet weights.
NAMES = tuple(_TORCH)


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
