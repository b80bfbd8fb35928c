"""vgg_np: VGG16 and its family in plain NumPy.

Readable kernels to learn convolution from (`vgg_np.ops`), a float64 oracle mode to check
other implementations against, and a fast CPU inference path.

The names below are imported on first use, so that ``import vgg_np.ops`` (the kernels)
needs NumPy alone: the model and the file formats pull in h5py, Pillow and threadpoolctl.
"""

import importlib

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


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vgg_np' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
