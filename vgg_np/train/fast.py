"""The training step's fast paths: each computes what `vgg_np.ops` and `vgg_np.backward` define.

A training step spends its time in convolutions: forward, then for each trained
convolution the gradient of its kernel and, below the top, of its input. Here:

- `forward_convolutions` runs a run of 3x3 "same" convolutions and 2x2 pools on the
  inference engine (`vgg_np.engine.Engine`: Winograd where it pays, direct GEMM in
  float64), keeping each layer's output when the backward pass needs it: the values of
  `vgg_np.layers.forward` up to the engine's rounding (`ENGINE_REL_TOL` in the tests);
- `conv_gradients` gives ``dkernel = im2col(x)^T @ dy`` as one GEMM, the bias gradient
  summed in float64, and ``dx`` -- the adjoint of the convolution -- as the convolution of
  `dy` with the kernel turned half a turn and its channel axes swapped, on the engine
  (`vgg_np.backward.conv2d_backward` computes the same with `col2im`); ``dx`` is skipped
  where nothing below needs it (the lowest trained layer);
- `dense_gradients` likewise for a dense layer, and `frozen_batch_norm_backward` for a
  batch norm that runs on its running statistics (Keras's frozen layers).

Each is tested against its definition in tests/test_train_gradients.py.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from vgg_np import ops
from vgg_np.engine import Engine
from vgg_np.layers import Layer

__all__ = [
    "FAST_DTYPES",
    "conv_gradients",
    "dense_gradients",
    "forward_convolutions",
    "frozen_batch_norm_backward",
    "runs_fast",
]

#: The dtypes the engine computes in (float16 runs the reference forward).
FAST_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def runs_fast(layer: Layer) -> bool:
    """Whether the engine computes `layer` in a training forward pass (conv and pool rows).

    Examples
    --------
    >>> runs_fast(Layer("c", "conv", 8, "relu")), runs_fast(Layer("d", "dense", 8, "relu"))
    (True, False)
    """
    return layer.kind == "pool" or (layer.kind == "conv" and layer.activation in (None, "relu"))


def forward_convolutions(
    layers: Sequence[Layer],
    weights: Mapping[str, tuple],
    x: NDArray[np.floating],
    record: Callable[[Layer, dict], None] | None = None,
) -> NDArray[np.floating]:
    """Run convolutions and pools (`runs_fast`) on the engine; `record` sees every layer.

    Parameters
    ----------
    layers : sequence of Layer
        Conv and pool rows only.
    weights : mapping
        At least these layers' ``(kernel, bias)``, in the dtype of `x`.
    x : ndarray, shape (N, H, W, C)
        float32 or float64.
    record : callable, optional
        Called as `vgg_np.layers.forward`'s hook is, ``record(layer, {"input", "output"})``,
        with new arrays; without it only the last output is kept.

    Returns
    -------
    ndarray
        The last layer's output.

    Examples
    --------
    >>> from vgg_np.layers import forward
    >>> table = [Layer("c", "conv", 4, "relu"), Layer("p", "pool")]
    >>> rng = np.random.default_rng(0)
    >>> w = {"c": (rng.standard_normal((3, 3, 2, 4)), rng.standard_normal(4))}
    >>> x = rng.standard_normal((2, 6, 4, 2))
    >>> bool(np.allclose(forward_convolutions(table, w, x), forward(table, w, x)))
    True
    """
    engine = Engine(list(layers), {n: weights[n] for n in weights if n in _names(layers)})
    try:
        if record is None:
            return engine.predict(x)
        outputs = engine.outputs(x)  # every layer, unfused, new arrays
        for layer in layers:
            y = outputs[layer.name]
            record(layer, {"input": x, "output": y})
            x = y
        return x
    finally:
        engine.close()


def _names(layers: Sequence[Layer]) -> set[str]:
    return {layer.name for layer in layers}


def conv_gradients(
    x: NDArray[np.floating],
    kernel: NDArray[np.floating],
    dy: NDArray[np.floating],
    *,
    input_gradient: bool = True,
) -> tuple[NDArray[np.floating] | None, NDArray[np.floating], NDArray[np.floating]]:
    """Return the gradients of a 3x3 "same" stride-1 convolution: dx, dkernel, dbias.

    What `vgg_np.backward.conv2d_backward` computes (up to rounding), with ``dx`` as the
    convolution of `dy` by ``kernel[::-1, ::-1].transpose(0, 1, 3, 2)`` on the engine
    instead of a GEMM and `col2im`.

    Parameters
    ----------
    x : ndarray, shape (N, H, W, C)
        The convolution's input.
    kernel : ndarray, shape (3, 3, C, O)
    dy : ndarray, shape (N, H, W, O)
        The gradient of the loss with respect to the output (before any activation).
    input_gradient : bool, default True
        False skips ``dx`` (returned as None): the lowest trained layer needs none.

    Returns
    -------
    dx : ndarray of shape (N, H, W, C), or None
    dkernel : ndarray, shape (3, 3, C, O)
    dbias : ndarray, shape (O,)

    Examples
    --------
    >>> from vgg_np import backward
    >>> rng = np.random.default_rng(0)
    >>> x, k = rng.standard_normal((2, 5, 4, 3)), rng.standard_normal((3, 3, 3, 6))
    >>> dy = rng.standard_normal((2, 5, 4, 6))
    >>> fast, slow = conv_gradients(x, k, dy), backward.conv2d_backward(x, k, dy)
    >>> all(np.allclose(a, b) for a, b in zip(fast, slow))
    True
    >>> conv_gradients(x, k, dy, input_gradient=False)[0] is None
    True
    """
    n, h, w, c = x.shape
    o = kernel.shape[3]
    cols = ops.im2col(x, 3, padding="same")  # (N*H*W, 9*C)
    dy2 = dy.reshape(n * h * w, o)  # (N*H*W, O)
    dkernel = (cols.T @ dy2).reshape(3, 3, c, o)  # (9*C, O): one GEMM, the transpose a view
    del cols
    dbias = dy2.sum(axis=0, dtype=np.float64).astype(dy.dtype)  # (O,), 6272 rows: no drift
    if not input_gradient:
        return None, dkernel, dbias
    # dx[n, p, q, c] = sum over a, b, o of dy[n, p + 1 - a, q + 1 - b, o] * K[a, b, c, o]: a
    # "same" convolution of dy by K turned half a turn, with C and O swapped.
    adjoint = np.ascontiguousarray(kernel[::-1, ::-1].transpose(0, 1, 3, 2))  # (3, 3, O, C)
    layer = Layer("adjoint", "conv", c)
    engine = Engine([layer], {"adjoint": (adjoint, np.zeros(c, dy.dtype))})
    try:
        dx = engine.predict(np.ascontiguousarray(dy))  # (N, H, W, C)
    finally:
        engine.close()
    return dx, dkernel, dbias


def dense_gradients(
    x: NDArray[np.floating],
    kernel: NDArray[np.floating],
    dy: NDArray[np.floating],
    *,
    input_gradient: bool = True,
) -> tuple[NDArray[np.floating] | None, NDArray[np.floating], NDArray[np.floating]]:
    """Return the gradients of ``x @ kernel + bias``: dx (or None), dkernel, dbias.

    `vgg_np.backward.dense_backward`, with ``dx`` skipped when `input_gradient` is False.

    Examples
    --------
    >>> dx, dk, db = dense_gradients(np.ones((2, 3)), np.ones((3, 4)), np.ones((2, 4)))
    >>> dx.shape, dk[0].tolist(), db.tolist()
    ((2, 3), [2.0, 2.0, 2.0, 2.0], [2.0, 2.0, 2.0, 2.0])
    """
    dkernel = x.T @ dy  # (in, N) @ (N, out)
    dbias = dy.sum(axis=0, dtype=np.float64).astype(dy.dtype)  # (out,)
    return (dy @ kernel.T if input_gradient else None), dkernel, dbias  # (N, in)


def frozen_batch_norm_backward(
    params: tuple, dy: NDArray[np.floating], *, eps: float
) -> NDArray[np.floating]:
    """Return dx of a batch norm that normalises with its running statistics (a constant).

    ``y = gamma * (x - mean) / sqrt(var + eps) + beta`` with `mean` and `var` fixed, so
    ``dx = dy * gamma / sqrt(var + eps)``: Keras's frozen layers (``trainable=False``).

    Examples
    --------
    >>> params = (np.full(2, 3.0), np.zeros(2), np.zeros(2), np.full(2, 8.0))
    >>> frozen_batch_norm_backward(params, np.ones((1, 2)), eps=1.0)
    array([[1., 1.]])
    """
    gamma, _, _, var = params
    scale = gamma / np.sqrt(var.astype(np.float64) + eps)  # (C,)
    return dy * scale.astype(dy.dtype)
