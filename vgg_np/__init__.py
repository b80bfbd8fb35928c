"""vgg_np: VGG16 and its family in plain NumPy.

Readable kernels to learn convolution from (`vgg_np.ops`), a float64 oracle mode to check
other implementations against, and a fast CPU inference path.

The names below are imported on first use, so that ``import vgg_np.ops`` (the kernels)
needs NumPy alone: the model and the file formats pull in h5py, Pillow and threadpoolctl.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # What __getattr__ below returns, spelled out for type checkers (they do not run it);
    # `name as name` marks a re-export. tests/test_package.py holds this list equal to
    # _EXPORTS.
    from vgg_np.config import CONFIGS as CONFIGS
    from vgg_np.config import VGGConfig as VGGConfig
    from vgg_np.model import VGG as VGG
    from vgg_np.model import VGG11 as VGG11
    from vgg_np.model import VGG13 as VGG13
    from vgg_np.model import VGG16 as VGG16
    from vgg_np.model import VGG19 as VGG19
    from vgg_np.ops import conv2d as conv2d
    from vgg_np.ops import conv2d_naive as conv2d_naive
    from vgg_np.ops import dense as dense
    from vgg_np.ops import dense_naive as dense_naive
    from vgg_np.ops import dropout as dropout
    from vgg_np.ops import flatten as flatten
    from vgg_np.ops import im2col as im2col
    from vgg_np.ops import max_pool2d as max_pool2d
    from vgg_np.ops import max_pool2d_naive as max_pool2d_naive
    from vgg_np.ops import relu as relu
    from vgg_np.ops import softmax as softmax
    from vgg_np.ops import softmax_naive as softmax_naive
    from vgg_np.preprocess import decode_predictions as decode_predictions
    from vgg_np.preprocess import imagenet_classes as imagenet_classes
    from vgg_np.preprocess import load_image as load_image
    from vgg_np.preprocess import preprocess_input as preprocess_input

__version__ = "0.2.0.dev0"  # the changes since 0.1.0: CHANGELOG.md, [Unreleased]

# Public name -> the module that defines it.
_EXPORTS = {
    **dict.fromkeys(("CONFIGS", "VGGConfig"), "vgg_np.config"),
    **dict.fromkeys(("VGG", "VGG11", "VGG13", "VGG16", "VGG19"), "vgg_np.model"),
    **dict.fromkeys(
        (
            "conv2d",
            "conv2d_naive",
            "dense",
            "dense_naive",
            "dropout",
            "flatten",
            "im2col",
            "max_pool2d",
            "max_pool2d_naive",
            "relu",
            "softmax",
            "softmax_naive",
        ),
        "vgg_np.ops",
    ),
    **dict.fromkeys(
        ("decode_predictions", "imagenet_classes", "load_image", "preprocess_input"),
        "vgg_np.preprocess",
    ),
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vgg_np' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
