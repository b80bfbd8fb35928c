"""Framework facts: the defaults in which PyTorch, Keras and ONNX differ, defined once.

The kernels take every such value as an argument (`batch_norm`'s ``eps`` has no default),
so that a file is never computed with another framework's convention; the readers of
weight files (`vgg_np.formats`) and users look the defaults up here. The module sits in
`vgg_np.ops`, the top of the module order, and needs nothing, so every module can read it.
"""

__all__ = ["BATCH_NORM_EPS"]


BATCH_NORM_EPS = {"torch": 1e-5, "keras": 1e-3, "onnx": 1e-5}
"""The ``eps`` each framework adds to the variance by default.

A file read from one of them must be normalised with its own: PyTorch's
``BatchNorm2d(eps=1e-5)``, Keras's ``BatchNormalization(epsilon=1e-3)``, ONNX's
``BatchNormalization`` attribute ``epsilon`` (default 1e-5). A layer's saved config wins
over these defaults.
"""
