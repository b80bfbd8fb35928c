"""vgg_np: VGG16 and its family in plain NumPy.

Readable kernels to learn convolution from (`vgg_np.ops`), a float64 oracle mode to check
other implementations against, and a fast CPU inference path.
"""

from vgg_np.model import CONFIGS, VGG, VGG11, VGG13, VGG16, VGG19, VGGConfig
from vgg_np.ops import (
    conv2d,
    conv2d_naive,
    dense,
    dense_naive,
    dropout,
    flatten,
    im2col,
    max_pool2d,
    max_pool2d_naive,
    relu,
    softmax,
    softmax_naive,
)
from vgg_np.preprocess import decode_predictions, imagenet_classes, load_image, preprocess_input

__version__ = "0.1.0"

__all__ = [
    "CONFIGS",
    "VGG",
    "VGG11",
    "VGG13",
    "VGG16",
    "VGG19",
    "VGGConfig",
    "__version__",
    "conv2d",
    "conv2d_naive",
    "decode_predictions",
    "dense",
    "dense_naive",
    "dropout",
    "flatten",
    "im2col",
    "imagenet_classes",
    "load_image",
    "max_pool2d",
    "max_pool2d_naive",
    "preprocess_input",
    "relu",
    "softmax",
    "softmax_naive",
]
