"""The kernels of VGG in NumPy: each naive loop definition sits right above its fast form.

Layouts follow Keras, so Keras weights load without a transpose:

- activations are NHWC, ``(N, H, W, C)``;
- convolution kernels are HWIO, ``(KH, KW, C, O)``;
- dense kernels are ``(in, out)``.

Dimension letters used in every shape comment of the package:

======  =====================================================
N       batch size
H, W    input height and width
C       input channels
KH, KW  kernel (or pool window) height and width
O       output channels (or dense outputs)
Ho, Wo  output height and width
======  =====================================================

Every kernel keeps the dtype it is given: float32 in, float32 out; float64 in, float64
out. Running in float64 is the "oracle" mode that measures how far a float32 result is
from exact. Integer, bool and complex inputs are refused with a `TypeError`.

The naive functions (``*_naive``) are the definitions, written as plain loops so they can
be read against a textbook; the fast ones are tested against them.

The kernels live in one module per family, and every public name is re-exported here
(``from vgg_np import ops; ops.conv2d(...)``):

==========================  ==========================================================
`vgg_np.ops.conv`           `conv2d_naive`, `im2col`, `conv2d`
`vgg_np.ops.pool`           max pooling, `adaptive_avg_pool2d`, the global pools
`vgg_np.ops.norm`           batch normalisation, `batch_moments`, `fold_batch_norm`
`vgg_np.ops.linear`         `dense_naive`, `dense`, `flatten`
`vgg_np.ops.activations`    `relu`, softmax, sigmoid, `tanh`, `dropout`
`vgg_np.ops.frameworks`     framework facts: `BATCH_NORM_EPS`
`vgg_np.ops._checks`        the argument checks kernels and gradients share (internal),
                            and `resolve_padding`
==========================  ==========================================================
"""

# The type aliases of the signatures are public (``vgg_np.ops.Padding``), not in `__all__`.
from vgg_np.ops._checks import IntOrPair as IntOrPair
from vgg_np.ops._checks import Padding as Padding
from vgg_np.ops._checks import resolve_padding
from vgg_np.ops.activations import (
    dropout,
    relu,
    sigmoid,
    sigmoid_naive,
    softmax,
    softmax_naive,
    tanh,
)
from vgg_np.ops.conv import conv2d, conv2d_naive, im2col
from vgg_np.ops.frameworks import BATCH_NORM_EPS
from vgg_np.ops.linear import dense, dense_naive, flatten
from vgg_np.ops.norm import batch_moments, batch_norm, batch_norm_naive, fold_batch_norm
from vgg_np.ops.pool import (
    adaptive_avg_pool2d,
    global_avg_pool2d,
    global_avg_pool2d_naive,
    global_max_pool2d,
    global_max_pool2d_naive,
    max_pool2d,
    max_pool2d_naive,
)

__all__ = [
    "BATCH_NORM_EPS",
    "adaptive_avg_pool2d",
    "batch_moments",
    "batch_norm",
    "batch_norm_naive",
    "conv2d",
    "conv2d_naive",
    "dense",
    "dense_naive",
    "dropout",
    "flatten",
    "fold_batch_norm",
    "global_avg_pool2d",
    "global_avg_pool2d_naive",
    "global_max_pool2d",
    "global_max_pool2d_naive",
    "im2col",
    "max_pool2d",
    "max_pool2d_naive",
    "relu",
    "resolve_padding",
    "sigmoid",
    "sigmoid_naive",
    "softmax",
    "softmax_naive",
    "tanh",
]
