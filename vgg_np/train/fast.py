"""The training step's fast paths: each computes what `vgg_np.ops` and `vgg_np.backward` define.

A training step spends its time in convolutions: forward, then for each trained
convolution the gradient of its kernel and, below the top, of its input. Here:

- `forward_fast` runs convolutions, pools, flatten, dense and dropout rows in training
  mode, keeping what the backward pass needs (convolutions by `conv_forward`: Winograd
  F(2x2, 3x3) over the whole batch, `vgg_np.train.winograd`, or one GEMM for narrow
  layers; dense layers by `matmul`), or, where nothing is kept (below the lowest trained
  layer), runs of convolutions and pools on the inference engine (`vgg_np.engine.Engine`);
- `conv_gradients` gives the kernel's gradient (Winograd, or ``im2col(x)^T @ dy`` as one
  GEMM), the bias gradient summed in float64, and ``dx`` -- the adjoint of the
  convolution -- as the convolution of `dy` with the kernel turned half a turn and its
  channel axes swapped (`vgg_np.backward.conv2d_backward` computes the same with one GEMM
  and `col2im`, as the narrow layers do here); ``dx`` is skipped where nothing below
  needs it (the lowest trained layer);
- `dense_gradients` likewise for a dense layer, and `frozen_batch_norm_backward` for a
  batch norm that runs on its running statistics (Keras's frozen layers).

Measured beside each other on this machine (batch 32 of 14x14x512, block 5's layers,
median ms): a convolution 209 by Winograd, 328 by im2col and one GEMM, 305 on the
inference engine; a kernel gradient 233 by Winograd, 356 by one GEMM.

Their GEMMs run as the engine's do (`matmul`): BLAS at one thread, the rows shared by
the step's own threads. On these shared machines OpenBLAS's own threads wait at every
barrier for a core another process holds: a 32 x 25088 by 25088 x 256 product took 1.1 s
on two of its threads and 18-47 ms on one (load average 8 on 2 cores).

Each is tested against its definition in tests/train/test_gradients.py.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from vgg_np import backward, ops
from vgg_np.engine import Engine
from vgg_np.engine.threads import BLAS_SINGLE, Workers, cpu_count
from vgg_np.layers import ACTIVATIONS, KINDS, Layer
from vgg_np.train import winograd

__all__ = [
    "FAST_DTYPES",
    "conv_forward",
    "conv_gradients",
    "dense_gradients",
    "forward_fast",
    "frozen_batch_norm_backward",
    "map_slices",
    "matmul",
    "runs_fast",
]

#: The dtypes the engine computes in (float16 runs the reference forward).
FAST_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
#: The step's threads (started on first use, shared by every step of the process).
_WORKERS = Workers(cpu_count())


def map_slices(fn: Callable[[int, int], None], size: int) -> None:
    """Run ``fn(i0, i1)`` over slices of ``range(size)``, shared by the step's threads.

    For elementwise work on large arrays (NumPy releases the GIL in its loops); each
    element is computed the same whatever the number of threads.

    Examples
    --------
    >>> out = np.zeros(10)
    >>> map_slices(lambda i0, i1: out.__setitem__(slice(i0, i1), 1.0), 10)
    >>> out.sum()
    np.float64(10.0)
    """
    parts = max(1, min(_WORKERS.threads, size))
    bounds = [size * i // parts for i in range(parts + 1)]
    _WORKERS.map(fn, list(itertools.pairwise(bounds)), size)


def matmul(a: NDArray[np.floating], b: NDArray[np.floating]) -> NDArray[np.floating]:
    """Return ``a @ b`` (2-D), BLAS at one thread, the work shared by the step's threads.

    The rows of `a` are shared where they outnumber the columns of `b`, else the columns
    (a batch of 32 rows through a 25088 x 256 kernel: each thread then reads half the
    kernel, not all of it; measured 9.7 ms against 13.2 by rows, 8.9 on one thread, with
    the other core busy). Each thread's product is an ordinary GEMM on its own block: the
    result does not depend on the number of threads.

    Examples
    --------
    >>> a, b = np.arange(12.0).reshape(4, 3), np.ones((3, 2))
    >>> np.array_equal(matmul(a, b), a @ b), np.array_equal(matmul(a.T[:2], a), a.T[:2] @ a)
    (True, True)
    """
    (m, k), n = a.shape, b.shape[1]
    out = np.empty((m, n), np.result_type(a, b))  # (M, N)
    by_rows = m >= n
    parts = max(1, min(_WORKERS.threads, m if by_rows else n))
    size = m if by_rows else n
    bounds = [size * i // parts for i in range(parts + 1)]

    def block(i0: int, i1: int) -> None:
        if by_rows:
            np.matmul(a[i0:i1], b, out=out[i0:i1])  # (i1 - i0, K) @ (K, N)
        else:
            out[:, i0:i1] = a @ b[:, i0:i1]  # (M, K) @ (K, i1 - i0)

    with BLAS_SINGLE:
        _WORKERS.map(block, list(itertools.pairwise(bounds)), m * k * n)
    return out


def runs_fast(layer: Layer) -> bool:
    """Whether `forward_fast` computes `layer` (conv, pool, flatten, dense, dropout rows).

    Batch norms stay with `vgg_np.layers.forward` (the batch's statistics, or Keras's
    frozen layers' running ones); so does any activation a conv, pool, flatten or
    dropout row carries other than a convolution's ReLU.

    Examples
    --------
    >>> runs_fast(Layer("c", "conv", 8, "relu")), runs_fast(Layer("d", "dense", 8, "tanh"))
    (True, True)
    >>> runs_fast(Layer("bn", "batch_norm", eps=1e-3)), runs_fast(Layer("p", "pool", 0, "relu"))
    (False, False)
    """
    if layer.kind in ("pool", "flatten", "dropout"):
        return layer.activation is None
    if layer.kind == "conv":
        return layer.activation in (None, "relu")
    return layer.kind == "dense"


def forward_fast(
    layers: Sequence[Layer],
    weights: Mapping[str, tuple],
    x: NDArray[np.floating],
    record: Callable[[Layer, dict], None] | None = None,
    *,
    dropout: float = 0.0,
    rng: np.random.Generator | None = None,
) -> NDArray[np.floating]:
    """Run rows of `runs_fast` in training mode as `vgg_np.layers.forward` does, faster.

    The same layers, activations and dropout (``dropout`` after each hidden dense ReLU,
    ``dropout`` rows at their rate, the masks drawn from `rng` in the same order), each
    convolution by `conv_forward` and each dense layer by `matmul`. Without `record` a
    run of convolutions and pools goes to the inference engine whole.

    Parameters
    ----------
    layers : sequence of Layer
        Rows for which `runs_fast` holds.
    weights : mapping
        At least these layers' ``(kernel, bias)``, in the dtype of `x`.
    x : ndarray
        float32 or float64, the first layer's input.
    record : callable, optional
        Called as `vgg_np.layers.forward`'s hook is, ``record(layer, values)`` with
        ``"input"``, ``"output"`` and, after dropout, ``"kept_scaled"``.
    dropout : float, default 0.0
    rng : numpy.random.Generator, optional
        As `vgg_np.layers.forward` takes them.

    Returns
    -------
    ndarray
        The last layer's output.

    Examples
    --------
    >>> from vgg_np.layers import forward
    >>> table = [Layer("c", "conv", 4, "relu"), Layer("p", "pool"), Layer("f", "flatten")]
    >>> rng = np.random.default_rng(0)
    >>> w = {"c": (rng.standard_normal((3, 3, 2, 4)), rng.standard_normal(4))}
    >>> x = rng.standard_normal((2, 6, 4, 2))
    >>> bool(np.allclose(forward_fast(table, w, x, lambda *_: None), forward(table, w, x)))
    True
    """
    if record is None and all(layer.kind in ("conv", "pool") for layer in layers):
        engine = Engine(list(layers), {n: weights[n] for n in weights if n in _names(layers)})
        try:  # nothing kept: the inference engine, as tuned for it
            return engine.predict(x)
        finally:
            engine.close()
    for layer in layers:
        y = _layer_forward(layer, weights.get(layer.name, ()), x, rng)  # () for no tensors
        values = {"input": x, "output": y}
        if dropout and KINDS[layer.kind].dropout_after and layer.activation == "relu":
            y = values["kept_scaled"] = ops.dropout(y, dropout, training=True, rng=rng)
        if record is not None:
            record(layer, values)
        x = y
    return x


def _layer_forward(
    layer: Layer, params: tuple, x: np.ndarray, rng: np.random.Generator | None
) -> np.ndarray:
    """One row of `forward_fast`, its activation applied."""
    if layer.kind == "conv":
        return conv_forward(x, *params, relu=layer.activation == "relu")
    if layer.kind == "pool":
        return ops.max_pool2d(x, 2)  # (N, H // 2, W // 2, C)
    if layer.kind == "flatten":
        return ops.flatten(x)  # (N, H*W*C), a view
    if layer.kind == "dropout":
        return ops.dropout(x, layer.rate, training=True, rng=rng)
    y = matmul(x, params[0])  # dense: (N, in) @ (in, out)
    y += params[1]
    return ACTIVATIONS[layer.activation].forward(y)


def _names(layers: Sequence[Layer]) -> set[str]:
    return {layer.name for layer in layers}


def conv_forward(
    x: NDArray[np.floating], kernel: NDArray[np.floating], bias: NDArray[np.floating], *, relu: bool
) -> NDArray[np.floating]:
    """Return ``relu(conv2d(x, kernel) + bias)`` (3x3 "same"): Winograd or one GEMM.

    `vgg_np.train.winograd.conv2d` where both channel counts reach
    `~vgg_np.train.winograd.MIN_CHANNELS`, else im2col and one GEMM (`vgg_np.ops.conv2d`).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> x, k, b = rng.standard_normal((1, 4, 5, 2)), rng.standard_normal((3, 3, 2, 3)), np.ones(3)
    >>> y = conv_forward(x, k, b, relu=True)
    >>> bool(np.allclose(y, ops.relu(ops.conv2d(x, k, b, padding="same"))))
    True
    """
    n, h, w, c = x.shape
    o = kernel.shape[3]
    if min(c, o) >= winograd.MIN_CHANNELS:
        y = winograd.conv2d(x, kernel, _WORKERS)  # (N, H, W, O)
    else:
        cols = ops.im2col(x, 3, padding="same")  # (N*H*W, 9*C)
        y = matmul(cols, kernel.reshape(9 * c, o)).reshape(n, h, w, o)  # (N*H*W, O)
    y += bias
    if relu:
        np.maximum(y, 0, out=y)
    return y


def conv_gradients(
    x: NDArray[np.floating],
    kernel: NDArray[np.floating],
    dy: NDArray[np.floating],
    *,
    input_gradient: bool = True,
) -> tuple[NDArray[np.floating] | None, NDArray[np.floating], NDArray[np.floating]]:
    """Return the gradients of a 3x3 "same" stride-1 convolution: dx, dkernel, dbias.

    What `vgg_np.backward.conv2d_backward` computes (up to rounding); where both channel
    counts reach `~vgg_np.train.winograd.MIN_CHANNELS`, the kernel's gradient by Winograd
    and ``dx`` as the convolution of `dy` by ``kernel[::-1, ::-1].transpose(0, 1, 3, 2)``.

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
    dbias = dy.sum(axis=(0, 1, 2), dtype=np.float64).astype(dy.dtype)  # (O,): no drift
    # dx[n, p, q, c] = sum over a, b, o of dy[n, p + 1 - a, q + 1 - b, o] * K[a, b, c, o]: a
    # "same" convolution of dy by K turned half a turn, with C and O swapped.
    adjoint = np.ascontiguousarray(kernel[::-1, ::-1].transpose(0, 1, 3, 2))  # (3, 3, O, C)
    if min(c, o) >= winograd.MIN_CHANNELS:
        dkernel = winograd.kernel_gradient(x, dy, _WORKERS)
        dx = winograd.conv2d(dy, adjoint, _WORKERS) if input_gradient else None
        return dx, dkernel, dbias
    cols = ops.im2col(x, 3, padding="same")  # (N*H*W, 9*C)
    dy2 = dy.reshape(n * h * w, o)  # (N*H*W, O)
    dkernel = matmul(cols.T, dy2).reshape(3, 3, c, o)  # (9*C, O): the transpose is a view
    if not input_gradient:
        return None, dkernel, dbias
    dcols = matmul(dy2, kernel.reshape(9 * c, o).T)  # (N*H*W, 9*C)
    return backward.col2im(dcols, x.shape, 3, padding="same"), dkernel, dbias


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
    dkernel = matmul(x.T, dy)  # (in, N) @ (N, out)
    dbias = dy.sum(axis=0, dtype=np.float64).astype(dy.dtype)  # (out,)
    return (matmul(dy, kernel.T) if input_gradient else None), dkernel, dbias  # (N, in)


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
