"""Gradients of the kernels in `vgg_np.ops`: each naive loop definition beside its fast form.

Every function takes what its forward kernel took, plus ``dy``, the gradient of a scalar
loss with respect to the forward output, and returns the gradients with respect to the
forward inputs (and weights). Shapes and dimension letters are those of `vgg_np.ops`.

The gradients live in one module per family, as the kernels do, and every public name is
re-exported here (``from vgg_np import backward; backward.conv2d_backward(...)``):

==============================  ===========================================================
`vgg_np.backward.conv`          `col2im` (the adjoint of `im2col`), `conv2d_backward`
`vgg_np.backward.pool`          max pooling and the global pools
`vgg_np.backward.norm`          training-mode batch normalisation
`vgg_np.backward.linear`        `dense_backward`, `flatten_backward`
`vgg_np.backward.activations`   relu, sigmoid, tanh, dropout, `softmax_cross_entropy`
`vgg_np.backward._checks`       the check of ``dy`` every gradient makes (internal)
==============================  ===========================================================

The forward arguments are checked by the kernels' own checks (`vgg_np.ops._checks`), so a
kernel and its gradient refuse the same inputs with the same messages.
"""

from vgg_np.backward.activations import (
    dropout_backward,
    relu_backward,
    sigmoid_backward,
    softmax_cross_entropy,
    tanh_backward,
)
from vgg_np.backward.conv import col2im, col2im_naive, conv2d_backward, conv2d_backward_naive
from vgg_np.backward.linear import dense_backward, dense_backward_naive, flatten_backward
from vgg_np.backward.norm import batch_norm_backward, batch_norm_backward_naive
from vgg_np.backward.pool import (
    global_avg_pool2d_backward,
    global_max_pool2d_backward,
    max_pool2d_backward,
    max_pool2d_backward_naive,
)

# The type aliases of the signatures, importable from here as before the split.
from vgg_np.ops import IntOrPair as IntOrPair
from vgg_np.ops import Padding as Padding

__all__ = [
    "batch_norm_backward",
    "batch_norm_backward_naive",
    "col2im",
    "col2im_naive",
    "conv2d_backward",
    "conv2d_backward_naive",
    "dense_backward",
    "dense_backward_naive",
    "dropout_backward",
    "flatten_backward",
    "global_avg_pool2d_backward",
    "global_max_pool2d_backward",
    "max_pool2d_backward",
    "max_pool2d_backward_naive",
    "relu_backward",
    "sigmoid_backward",
    "softmax_cross_entropy",
    "tanh_backward",
]
