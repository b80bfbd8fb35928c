"""Gradient checks of vgg_np.backward: central finite differences in float64 on shapes drawn
by hypothesis, the adjoint identity of im2col / col2im, and fast == naive."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.conftest import relative_error
from tests.ops.test_kernels import bn_cases, conv_cases, images, pool_cases
from vgg_np import backward, ops

# Central differences with step 1e-6 in float64 have truncation error ~1e-12 * |f'''| and
# rounding ~1e-16 / 1e-6 = 1e-10 relative: 1e-6 relative to the gradient's size is loose
# enough never to flake and tight enough to catch any wrong index or factor.
FD_STEP, FD_TOL = 1e-6, 1e-6
# Where f is a sum of terms much larger than its gradient (a batch norm's beta adds M values
# that no input moves), f's own rounding dominates: found by hypothesis at 1.7e-5 relative,
# a gradient of 1.2e-4 beside a sum of |terms| near 40 (eps * 40 / 1e-6 = 9e-9). Four
# roundings of the sum (two evaluations, each a few eps) bound it.
FD_ROUNDING = 4


def numeric_gradient(f, x: np.ndarray, coordinates) -> np.ndarray:
    grads = []
    for index in coordinates:
        bumped = x.copy()
        bumped[index] += FD_STEP
        up = f(bumped)
        bumped[index] -= 2 * FD_STEP
        grads.append((up - f(bumped)) / (2 * FD_STEP))
    return np.array(grads)


def some_coordinates(shape, rng, count=6):
    return [tuple(int(rng.integers(0, s)) for s in shape) for _ in range(count)]


def check(analytic: np.ndarray, f, x: np.ndarray, rng, scale=None, terms=0.0) -> None:
    """Compare `analytic` with central differences at a few coordinates.

    `scale` is the size gradients of this function reach (default: the largest of
    `analytic`); pass it where the gradient may cancel to nearly 0 while f does not.
    `terms` is the sum of |terms| that f adds up, where it is large beside the gradient:
    rounding f then costs up to a few eps * terms in each evaluation, divided by the step.
    """
    coordinates = some_coordinates(x.shape, rng)
    numeric = numeric_gradient(f, x, coordinates)
    picked = np.array([analytic[c] for c in coordinates])
    scale = (np.max(np.abs(analytic)) if scale is None else scale) + 1e-12
    rounding = FD_ROUNDING * np.finfo(np.float64).eps * terms / FD_STEP
    np.testing.assert_allclose(picked, numeric, atol=FD_TOL * scale + rounding, rtol=FD_TOL)


@given(conv_cases(max_hw=7, max_c=4))
def test_conv2d_gradients_match_finite_differences(case):
    x, kernel, _, stride, padding = case
    rng = np.random.default_rng(0)
    bias = rng.standard_normal(kernel.shape[3])
    y = ops.conv2d(x, kernel, bias, strides=stride, padding=padding)
    r = rng.standard_normal(y.shape)  # the loss is sum(y * r), so dL/dy = r
    dx, dk, db = backward.conv2d_backward(x, kernel, r, strides=stride, padding=padding)
    assert dx.shape == x.shape and dk.shape == kernel.shape and db.shape == bias.shape

    def loss(x=x, k=kernel, b=bias):
        return np.sum(ops.conv2d(x, k, b, strides=stride, padding=padding) * r)

    check(dx, lambda v: loss(x=v), x, rng)
    check(dk, lambda v: loss(k=v), kernel, rng)
    check(db, lambda v: loss(b=v), bias, rng)


@given(conv_cases(max_hw=6, max_c=3))
def test_conv2d_backward_equals_its_loop_definition(case):
    x, kernel, _, stride, padding = case
    y = ops.conv2d(x, kernel, strides=stride, padding=padding)
    dy = np.random.default_rng(4).standard_normal(y.shape)
    fast = backward.conv2d_backward(x, kernel, dy, strides=stride, padding=padding)
    naive = backward.conv2d_backward_naive(x, kernel, dy, strides=stride, padding=padding)
    for a, b in zip(fast, naive, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)


def test_dropout_and_flatten_gradients():
    rng = np.random.default_rng(0)
    x = rng.random((4, 10)) + 0.1
    y = ops.dropout(x, 0.3, training=True, rng=np.random.default_rng(1))
    dy = rng.standard_normal(x.shape)
    dx = backward.dropout_backward(x, y, dy)
    np.testing.assert_allclose(dx, np.where(y == 0, 0, dy / 0.7))
    features = rng.standard_normal((2, 3, 4, 5))
    g = rng.standard_normal((2, 60))
    assert np.vdot(ops.flatten(features), g) == pytest.approx(
        np.vdot(features, backward.flatten_backward(g, features.shape))
    )
    with pytest.raises(ValueError, match="cannot come from flattening"):
        backward.flatten_backward(g, (2, 3, 4, 4))


@given(conv_cases())
def test_im2col_and_col2im_are_adjoint(case):
    x, kernel, _, stride, padding = case
    cols = ops.im2col(x, kernel.shape[:2], strides=stride, padding=padding)
    y = np.random.default_rng(1).standard_normal(cols.shape)
    back = backward.col2im(y, x.shape, kernel.shape[:2], strides=stride, padding=padding)
    assert np.isclose(np.vdot(cols, y), np.vdot(x, back), rtol=1e-12)
    naive = backward.col2im_naive(y, x.shape, kernel.shape[:2], strides=stride, padding=padding)
    np.testing.assert_allclose(back, naive, rtol=1e-12, atol=1e-12)


@given(pool_cases())
def test_max_pool2d_gradient_fast_equals_naive_ties_included(case):
    x, size, stride, padding = case
    x = np.round(x)  # integers: many ties
    y = ops.max_pool2d(x, size, strides=stride, padding=padding)
    dy = np.random.default_rng(2).standard_normal(y.shape)
    fast = backward.max_pool2d_backward(x, dy, size, strides=stride, padding=padding)
    naive = backward.max_pool2d_backward_naive(x, dy, size, strides=stride, padding=padding)
    # Same positions chosen; overlapping windows may add in another order.
    np.testing.assert_allclose(fast, naive, rtol=1e-12, atol=1e-12)
    assert np.isclose(fast.sum(), dy.sum())  # every window passes all its gradient on


@given(pool_cases())
def test_max_pool2d_gradient_matches_finite_differences(case):
    x, size, stride, padding = case  # continuous values: no ties, a differentiable max
    rng = np.random.default_rng(3)
    r = rng.standard_normal(ops.max_pool2d(x, size, strides=stride, padding=padding).shape)
    dx = backward.max_pool2d_backward(x, r, size, strides=stride, padding=padding)
    check(
        dx, lambda v: np.sum(ops.max_pool2d(v, size, strides=stride, padding=padding) * r), x, rng
    )


@given(st.integers(1, 4), st.integers(1, 9), st.integers(1, 7), st.integers(0, 2**32 - 1))
def test_dense_relu_and_softmax_cross_entropy_gradients(n, n_in, n_out, seed):
    rng = np.random.default_rng(seed)
    x, k, b = (
        rng.standard_normal((n, n_in)),
        rng.standard_normal((n_in, n_out)),
        rng.standard_normal(n_out),
    )
    labels = rng.integers(0, n_out, n)

    def loss(x=x, k=k, b=b):
        return backward.softmax_cross_entropy(ops.relu(ops.dense(x, k, b)), labels)[0]

    h = ops.dense(x, k, b)
    _, dlogits = backward.softmax_cross_entropy(ops.relu(h), labels)
    dh = backward.relu_backward(h, dlogits)
    dx, dk, db = backward.dense_backward(x, k, dh)
    for fast, naive in zip((dx, dk, db), backward.dense_backward_naive(x, k, dh), strict=True):
        np.testing.assert_allclose(fast, naive, rtol=1e-12, atol=1e-14)
    check(dx, lambda v: loss(x=v), x, rng)
    check(dk, lambda v: loss(k=v), k, rng)
    check(db, lambda v: loss(b=v), b, rng)


@given(bn_cases())
def test_batch_norm_gradients_match_finite_differences(case):
    x, gamma, beta, _, _, eps = case  # training mode: the batch's own statistics
    assume(x.size > x.shape[-1])  # one value per channel has no spread to normalise
    rng = np.random.default_rng(5)
    r = rng.standard_normal(x.shape)
    # The gradients may cancel to nearly 0 (two values per channel always normalise to
    # -1, +1), so compare with the size they can reach: |r| * M, and |gamma| / std for dx.
    m = x.size // x.shape[-1]
    _, var = ops.batch_moments(x)
    dx_scale = np.max(np.abs(gamma) / np.sqrt(var + eps)) * np.max(np.abs(r))

    def loss(x=x, g=gamma, b=beta):
        return np.sum(ops.batch_norm(x, g, b, *ops.batch_moments(x), eps=eps) * r)

    terms = np.sum(np.abs(ops.batch_norm(x, gamma, beta, *ops.batch_moments(x), eps=eps) * r))
    dx, dgamma, dbeta = backward.batch_norm_backward(x, gamma, r, eps=eps)
    assert dx.shape == x.shape and dgamma.shape == dbeta.shape == gamma.shape
    check(dx, lambda v: loss(x=v), x, rng, scale=dx_scale, terms=terms)
    check(dgamma, lambda v: loss(g=v), gamma, rng, scale=m * np.max(np.abs(r)))
    check(dbeta, lambda v: loss(b=v), beta, rng, scale=m * np.max(np.abs(r)))
    naive = backward.batch_norm_backward_naive(x, gamma, r, eps=eps)
    scales = (dx_scale, m * np.max(np.abs(r)), m * np.max(np.abs(r)))
    for fast, slow, scale in zip((dx, dgamma, dbeta), naive, scales, strict=True):
        np.testing.assert_allclose(fast, slow, rtol=1e-9, atol=1e-12 * scale)


def test_batch_norm_gradient_golden_and_dtype():
    # Two values per channel always normalise to -1, +1 (eps 0): x cannot change y, dx = 0.
    x = np.array([[1.0, -2.0], [3.0, 5.0]], np.float32)
    dy = np.array([[1.0, 2.0], [0.0, 1.0]], np.float32)
    dx, dgamma, dbeta = backward.batch_norm_backward(x, np.ones(2, np.float32), dy, eps=0)
    assert dx.dtype == dgamma.dtype == dbeta.dtype == np.float32
    np.testing.assert_allclose(dx, 0, atol=1e-7)
    np.testing.assert_array_equal(dgamma, [-1.0, -1.0])  # sum(dy * xhat), xhat = (-1, 1)
    np.testing.assert_array_equal(dbeta, [1.0, 3.0])


@given(images())
def test_global_pool_gradients(x):
    rng = np.random.default_rng(6)
    r = rng.standard_normal((x.shape[0], x.shape[3]))
    dx = backward.global_avg_pool2d_backward(r, x.shape)
    assert np.isclose(np.vdot(ops.global_avg_pool2d(x), r), np.vdot(x, dx), rtol=1e-12)
    check(dx, lambda v: np.sum(ops.global_avg_pool2d(v) * r), x, rng)
    dx = backward.global_max_pool2d_backward(x, r)
    check(dx, lambda v: np.sum(ops.global_max_pool2d(v) * r), x, rng)
    assert np.isclose(dx.sum(), r.sum())  # each channel's gradient goes to one pixel
    assert (np.count_nonzero(dx, axis=(1, 2)) <= 1).all()


@given(st.lists(st.floats(-30, 30), min_size=1, max_size=12))
def test_sigmoid_and_tanh_gradients(values):
    x = np.array(values)
    rng = np.random.default_rng(7)
    r = rng.standard_normal(x.shape)
    for forward, grad in (
        (ops.sigmoid, backward.sigmoid_backward),
        (ops.tanh, backward.tanh_backward),
    ):
        dx = grad(forward(x), r)  # from the forward output, as the layer table keeps it
        # Saturated inputs have gradients near 0: compare with the largest one can be, |r|.
        check(dx, lambda v, f=forward: np.sum(f(v) * r), x, rng, scale=np.max(np.abs(r)))


@pytest.mark.torch
def test_batch_norm_gradients_equal_pytorch_autograd():
    torch = pytest.importorskip("torch", reason="needs torch (pip install torch==2.13.0)")
    rng = np.random.default_rng(8)
    x = rng.standard_normal((4, 5, 3, 6)) * 2 + rng.normal(0, 3, 6)
    gamma, beta, dy = rng.uniform(0.5, 1.5, 6), rng.normal(0, 1, 6), rng.standard_normal(x.shape)
    leaves = [torch.tensor(a, requires_grad=True) for a in (x.transpose(0, 3, 1, 2), gamma, beta)]
    y = torch.nn.functional.batch_norm(
        leaves[0], None, None, leaves[1], leaves[2], training=True, eps=1e-5
    )
    ours = ops.batch_norm(x, gamma, beta, *ops.batch_moments(x), eps=1e-5)
    np.testing.assert_allclose(
        ours, y.detach().numpy().transpose(0, 2, 3, 1), rtol=1e-12, atol=1e-12
    )
    y.backward(torch.from_numpy(dy.transpose(0, 3, 1, 2).copy()))
    dx, dgamma, dbeta = backward.batch_norm_backward(x, gamma, dy, eps=1e-5)
    theirs = (
        leaves[0].grad.numpy().transpose(0, 2, 3, 1),
        leaves[1].grad.numpy(),
        leaves[2].grad.numpy(),
    )
    for name, a, b in zip(("dx", "dgamma", "dbeta"), (dx, dgamma, dbeta), theirs, strict=True):
        assert relative_error(a, b) < 1e-12, (name, relative_error(a, b))


def test_softmax_cross_entropy_is_finite_for_huge_logits():
    loss, grad = backward.softmax_cross_entropy(np.array([[1e4, -1e4, 0.0]]), np.array([2]))
    assert loss == pytest.approx(1e4) and np.isfinite(grad).all()
    np.testing.assert_allclose(grad, [[1.0, 0.0, -1.0]], atol=1e-12)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda: backward.conv2d_backward(
                np.ones((1, 4, 4, 1)), np.ones((3, 3, 1, 2)), np.ones((1, 4, 4, 1))
            ),
            r"`dy` must have the output's shape \(1, 4, 4, 2\)",
        ),
        (lambda: backward.col2im(np.ones((3, 9)), (1, 4, 4, 1), 3), r"`cols` must have shape"),
        (
            lambda: backward.max_pool2d_backward(np.ones((1, 4, 4, 1)), np.ones((1, 4, 4, 1))),
            r"`dy` must have the output's shape \(1, 2, 2, 1\)",
        ),
        (
            lambda: backward.dense_backward(np.ones((2, 3)), np.ones((3, 4)), np.ones((2, 3))),
            r"`dy` must have shape \(2, 4\)",
        ),
        (
            lambda: backward.relu_backward(np.ones(3), np.ones(4)),
            r"`dy` must have the shape of `x`",
        ),
        (
            lambda: backward.softmax_cross_entropy(np.ones((2, 3)), np.array([0, 3])),
            r"`labels` must be in \[0, 3\)",
        ),
        (
            lambda: backward.softmax_cross_entropy(np.ones((2, 3)), np.array([0.0, 1.0])),
            r"integers",
        ),
        (
            lambda: backward.batch_norm_backward(
                np.ones((2, 3)), np.ones(3), np.ones((3, 2)), eps=0
            ),
            r"`dy` must have the shape of `x` \(2, 3\), got \(3, 2\)",
        ),
        (
            lambda: backward.batch_norm_backward_naive(
                np.ones((2, 3)), np.ones(2), np.ones((2, 3)), eps=0
            ),
            r"`gamma` must have shape \(3,\)",
        ),
        (
            lambda: backward.batch_norm_backward(
                np.ones((2, 3)), np.ones(3), np.ones((2, 3)), eps=-1
            ),
            r"`eps` must be a finite number >= 0",
        ),
        (
            lambda: backward.global_avg_pool2d_backward(np.ones((2, 3)), (2, 4, 4, 2)),
            r"`dy` must have shape \(N, C\) \(2, 2\)",
        ),
        (
            lambda: backward.global_max_pool2d_backward(
                np.ones((2, 4, 4, 2)), np.ones((2, 1, 1, 2))
            ),
            r"`dy` must have shape \(N, C\) \(2, 2\)",
        ),
        (
            lambda: backward.sigmoid_backward(np.ones(3), np.ones(4)),
            r"`dy` must have the shape of `y`",
        ),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
