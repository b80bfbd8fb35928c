"""Tests of vgg_np.ops: golden cases, fast == naive, properties and bad input, per kernel."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.conftest import (
    BN_FOLD_REL_TOL,
    ELEMENTWISE_TOL,
    PROB_ATOL,
    assert_close_scaled,
    relative_error,
)
from vgg_np import ops

FLOAT_DTYPES = [np.float16, np.float32, np.float64]

# ---------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------

paddings = st.one_of(
    st.sampled_from(["same", "valid", "SAME"]),
    st.integers(0, 2),
    st.tuples(
        st.tuples(st.integers(0, 2), st.integers(0, 2)),
        st.tuples(st.integers(0, 2), st.integers(0, 2)),
    ),
)
strides_ = st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3)))


@st.composite
def conv_cases(draw, max_hw=10, max_c=8):
    """Non-square inputs and kernels, odd sizes, every stride and padding form."""
    n = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, max_hw)), draw(st.integers(1, max_hw))
    c, o = draw(st.integers(1, max_c)), draw(st.integers(1, max_c))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride = draw(strides_)
    padding = draw(paddings)
    pads = ops.resolve_padding(padding, (h, w), (kh, kw), stride)
    assume(h + sum(pads[0]) >= kh and w + sum(pads[1]) >= kw)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w, c))
    kernel = rng.standard_normal((kh, kw, c, o))
    bias = rng.standard_normal(o) if draw(st.booleans()) else None
    return x, kernel, bias, stride, padding


@st.composite
def pool_cases(draw):
    n = draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    c = draw(st.integers(1, 8))
    size = draw(st.one_of(st.integers(1, 4), st.tuples(st.integers(1, 4), st.integers(1, 4))))
    stride = draw(st.one_of(st.none(), strides_))
    padding = draw(paddings)
    window = (size, size) if isinstance(size, int) else size
    step = window if stride is None else ((stride, stride) if isinstance(stride, int) else stride)
    pads = ops.resolve_padding(padding, (h, w), window, step)
    assume(all(max(p) < k for p, k in zip(pads, window, strict=True)))
    assume(h + sum(pads[0]) >= window[0] and w + sum(pads[1]) >= window[1])
    x = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal((n, h, w, c))
    return x, size, stride, padding


def conv_scale(x, kernel, bias, stride, padding):
    """Sum of |terms| behind each conv output: what its rounding error scales with."""
    absb = None if bias is None else np.abs(bias)
    return ops.conv2d(np.abs(x), np.abs(kernel), absb, strides=stride, padding=padding)


# ---------------------------------------------------------------------------------------
# Padding resolution
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "expected"),
    [
        (224, 3, 1, (1, 1)),  # VGG: 3x3 "same" pads one pixel each side
        (6, 3, 2, (0, 1)),  # even size, stride 2: the odd pixel goes after (TF rule)
        (5, 3, 2, (1, 1)),
        (7, 1, 3, (0, 0)),
        (4, 4, 1, (1, 2)),  # even kernel: more padding after than before
    ],
)
def test_same_padding_follows_tensorflow(size, kernel, stride, expected):
    pads = ops.resolve_padding("same", (size, size), kernel, stride)
    assert pads == (expected, expected)
    out = (size + sum(expected) - kernel) // stride + 1
    assert out == -(-size // stride)  # ceil(size / stride), Keras's "same" output size


# ---------------------------------------------------------------------------------------
# im2col
# ---------------------------------------------------------------------------------------


def test_im2col_golden_patch_order_kh_kw_c():
    # Two channels: within a patch the channel varies fastest, then KW, then KH.
    x = np.arange(8, dtype=np.float64).reshape(1, 2, 2, 2)  # x[0, h, w, c] = 4h + 2w + c
    cols = ops.im2col(x, 2, padding="valid")
    np.testing.assert_array_equal(cols, [[0, 1, 2, 3, 4, 5, 6, 7]])
    cols = ops.im2col(x, (1, 2), padding="valid")
    np.testing.assert_array_equal(cols, [[0, 1, 2, 3], [4, 5, 6, 7]])


def test_im2col_golden_same_padding_zero_fills():
    x = np.arange(1, 5, dtype=np.float32).reshape(1, 2, 2, 1)
    cols = ops.im2col(x, 3)  # same padding: one pixel of zeros around
    expected = [
        [0, 0, 0, 0, 1, 2, 0, 3, 4],
        [0, 0, 0, 1, 2, 0, 3, 4, 0],
        [0, 1, 2, 0, 3, 4, 0, 0, 0],
        [1, 2, 0, 3, 4, 0, 0, 0, 0],
    ]
    np.testing.assert_array_equal(cols, expected)
    assert cols.dtype == np.float32


@given(conv_cases())
def test_im2col_rows_are_the_padded_windows(case):
    x, kernel, _, stride, padding = case
    kh, kw = kernel.shape[:2]
    cols = ops.im2col(x, (kh, kw), strides=stride, padding=padding)
    (pt, pb), (pl, pr) = ops.resolve_padding(padding, x.shape[1:3], (kh, kw), stride)
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    n, hp, wp, c = xp.shape
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    assert cols.shape == (n * ho * wo, kh * kw * c)
    row = 0
    for b in range(n):
        for i in range(ho):
            for j in range(wo):
                window = xp[b, i * sh : i * sh + kh, j * sw : j * sw + kw, :]
                np.testing.assert_array_equal(cols[row], window.ravel())
                row += 1


# ---------------------------------------------------------------------------------------
# conv2d
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("conv", [ops.conv2d, ops.conv2d_naive])
def test_conv2d_golden_ones_kernel(conv):
    x = np.arange(16, dtype=np.float64).reshape(1, 4, 4, 1)
    k = np.ones((3, 3, 1, 1))
    # Each output is the sum of its 3x3 neighbourhood (zeros outside), worked by hand.
    expected_same = [[10, 18, 24, 18], [27, 45, 54, 39], [51, 81, 90, 63], [42, 66, 72, 50]]
    np.testing.assert_array_equal(conv(x, k)[0, :, :, 0], expected_same)
    np.testing.assert_array_equal(conv(x, k, padding="valid")[0, :, :, 0], [[45, 54], [81, 90]])
    np.testing.assert_array_equal(
        conv(x, k, np.array([-45.0]), strides=2, padding=((1, 0), (0, 1)))[0, :, :, 0],
        [[-27, -27], [36, 18]],
    )


def test_conv2d_is_cross_correlation_not_flipped():
    x = np.zeros((1, 3, 3, 1))
    x[0, 1, 1, 0] = 1.0  # a single one in the middle
    k = np.arange(9.0).reshape(3, 3, 1, 1)
    # Correlating a centred delta with k gives k flipped; a convolution would give k.
    y = ops.conv2d(x, k)[0, :, :, 0]
    np.testing.assert_array_equal(y, k[::-1, ::-1, 0, 0])


@given(conv_cases(), st.sampled_from(FLOAT_DTYPES))
def test_conv2d_matches_naive_and_float64_oracle(case, dtype):
    x, kernel, bias, stride, padding = case
    oracle = ops.conv2d_naive(x, kernel, bias, strides=stride, padding=padding)
    scale = conv_scale(x, kernel, bias, stride, padding)
    cast = [None if a is None else a.astype(dtype) for a in (x, kernel, bias)]
    fast = ops.conv2d(*cast, strides=stride, padding=padding)
    assert fast.dtype == dtype
    assert_close_scaled(fast, oracle, scale, what=f"conv2d {dtype.__name__} vs float64 naive")
    if dtype is not np.float16:  # the naive loop in float16 is covered by the fast one
        naive = ops.conv2d_naive(*cast, strides=stride, padding=padding)
        assert naive.dtype == dtype
        assert_close_scaled(naive, oracle, scale, what="conv2d_naive vs float64")


@given(conv_cases(), st.floats(-3, 3), st.floats(-3, 3))
def test_conv2d_is_linear_in_x(case, a, b):
    x, kernel, _, stride, padding = case
    x2 = np.random.default_rng(1).standard_normal(x.shape)
    lhs = ops.conv2d(a * x + b * x2, kernel, strides=stride, padding=padding)
    rhs = a * ops.conv2d(x, kernel, strides=stride, padding=padding) + b * ops.conv2d(
        x2, kernel, strides=stride, padding=padding
    )
    scale = (abs(a) + abs(b) + 1) * (
        conv_scale(x, kernel, None, stride, padding) + conv_scale(x2, kernel, None, stride, padding)
    )
    assert_close_scaled(lhs, rhs, scale, what="conv2d(a x + b x2) vs a conv2d(x) + b conv2d(x2)")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(("kh", "kw"), [(1, 1), (3, 3), (3, 5), (5, 1)])
def test_conv2d_delta_kernel_returns_input(dtype, kh, kw):
    x = np.random.default_rng(0).standard_normal((2, 9, 10, 3)).astype(dtype)
    kernel = np.zeros((kh, kw, 3, 3), dtype)
    kernel[kh // 2, kw // 2] = np.eye(3)  # centre tap maps channel c to channel c
    np.testing.assert_array_equal(ops.conv2d(x, kernel), x)
    np.testing.assert_array_equal(ops.conv2d_naive(x, kernel), x)


def test_conv2d_nan_reaches_only_its_windows():
    x = np.ones((1, 5, 5, 1), np.float32)
    x[0, 0, 0, 0] = np.nan
    y = ops.conv2d(x, np.ones((3, 3, 1, 1), np.float32), padding="valid")[0, :, :, 0]
    assert np.isnan(y[0, 0])
    assert np.isfinite(y.ravel()[1:]).all()  # windows that do not cover (0, 0)


def test_conv2d_memory_order_of_inputs_does_not_matter():
    rng = np.random.default_rng(3)
    x = np.asfortranarray(rng.standard_normal((2, 6, 7, 3)))
    k = rng.standard_normal((3, 3, 3, 4)).transpose(1, 0, 2, 3)  # non-contiguous
    np.testing.assert_allclose(
        ops.conv2d(x, k), ops.conv2d_naive(np.ascontiguousarray(x), k.copy()), rtol=1e-12
    )


def test_conv2d_mixed_dtypes_promote_like_numpy():
    x = np.ones((1, 3, 3, 1), np.float32)
    assert ops.conv2d(x, np.ones((3, 3, 1, 1), np.float32)).dtype == np.float32
    assert ops.conv2d(x, np.ones((3, 3, 1, 1), np.float64)).dtype == np.float64


# ---------------------------------------------------------------------------------------
# max_pool2d
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("pool", [ops.max_pool2d, ops.max_pool2d_naive])
def test_max_pool2d_golden(pool):
    x = np.arange(25, dtype=np.float64).reshape(1, 5, 5, 1)
    np.testing.assert_array_equal(pool(x)[0, :, :, 0], [[6, 8], [16, 18]])  # floor: row 4 lost
    np.testing.assert_array_equal(
        pool(x, padding="same")[0, :, :, 0], [[6, 8, 9], [16, 18, 19], [21, 23, 24]]
    )
    np.testing.assert_array_equal(
        pool(x, (2, 3), strides=(3, 1))[0, :, :, 0], [[7, 8, 9], [22, 23, 24]]
    )


def test_max_pool2d_padding_never_wins():
    x = -np.arange(1, 5, dtype=np.float32).reshape(1, 2, 2, 1)  # all negative
    y = ops.max_pool2d(x, 3, strides=1, padding=1)
    assert (y < 0).all()
    np.testing.assert_array_equal(y[0, :, :, 0], [[-1, -1], [-1, -1]])


@given(pool_cases(), st.sampled_from(FLOAT_DTYPES))
def test_max_pool2d_equals_naive_exactly(case, dtype):
    x, size, stride, padding = case
    x = x.astype(dtype)
    fast = ops.max_pool2d(x, size, strides=stride, padding=padding)
    naive = ops.max_pool2d_naive(x, size, strides=stride, padding=padding)
    assert fast.dtype == naive.dtype == dtype
    np.testing.assert_array_equal(fast, naive)  # a maximum does not round


@given(pool_cases())
def test_max_pool2d_output_is_max_element_of_its_window(case):
    x, size, stride, padding = case
    kh, kw = (size, size) if isinstance(size, int) else size
    sh, sw = (kh, kw) if stride is None else ((stride,) * 2 if isinstance(stride, int) else stride)
    (pt, _), (pl, _) = ops.resolve_padding(padding, x.shape[1:3], (kh, kw), (sh, sw))
    y = ops.max_pool2d(x, size, strides=stride, padding=padding)
    for n, i, j, c in np.ndindex(y.shape):
        top, left = i * sh - pt, j * sw - pl
        window = x[n, max(top, 0) : top + kh, max(left, 0) : left + kw, c]
        assert y[n, i, j, c] in window
        assert (y[n, i, j, c] >= window).all()


def test_max_pool2d_propagates_nan():
    x = np.zeros((1, 4, 4, 2))
    x[0, 3, 3, 1] = np.nan
    y = ops.max_pool2d(x)
    assert np.isnan(y[0, 1, 1, 1])
    assert np.isnan(y).sum() == 1


# ---------------------------------------------------------------------------------------
# dense, relu, flatten
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fc", [ops.dense, ops.dense_naive])
def test_dense_golden(fc):
    x = np.array([[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]])
    k = np.array([[1.0, 0.0], [0.0, 1.0], [2.0, -2.0]])
    np.testing.assert_array_equal(fc(x, k, np.array([0.5, 0.0])), [[7.5, -4.0], [1.5, -2.0]])


@given(
    st.integers(1, 4),
    st.integers(1, 40),
    st.integers(1, 12),
    st.booleans(),
    st.sampled_from(FLOAT_DTYPES),
    st.integers(0, 2**32 - 1),
)
def test_dense_matches_naive_and_float64_oracle(n, n_in, n_out, with_bias, dtype, seed):
    rng = np.random.default_rng(seed)
    x, k = rng.standard_normal((n, n_in)), rng.standard_normal((n_in, n_out))
    b = rng.standard_normal(n_out) if with_bias else None
    oracle = ops.dense_naive(x, k, b)
    scale = ops.dense(np.abs(x), np.abs(k), None if b is None else np.abs(b))
    cast = [None if a is None else a.astype(dtype) for a in (x, k, b)]
    fast = ops.dense(*cast)
    assert fast.dtype == dtype
    assert_close_scaled(fast, oracle, scale, what="dense vs float64 naive")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_relu_properties(dtype):
    x = np.random.default_rng(0).standard_normal((3, 5, 7, 2)).astype(dtype)
    y = ops.relu(x)
    assert y.dtype == dtype and y.shape == x.shape
    assert (y >= 0).all()
    np.testing.assert_array_equal(ops.relu(y), y)  # idempotent
    np.testing.assert_array_equal(y[x > 0], x[x > 0])
    assert not np.shares_memory(y, x)
    assert np.isnan(ops.relu(np.array([np.nan], dtype)))[0]


def test_flatten_is_nhwc_order():
    x = np.zeros((2, 2, 3, 4))
    x[1, 1, 2, 3] = 1.0  # last pixel, last channel: the last feature of row 1
    y = ops.flatten(x)
    assert y.shape == (2, 24)
    assert y[1, -1] == 1.0 and y.sum() == 1.0
    np.testing.assert_array_equal(ops.flatten(np.arange(6.0).reshape(1, 1, 2, 3)), [np.arange(6.0)])


# ---------------------------------------------------------------------------------------
# softmax
# ---------------------------------------------------------------------------------------


def test_softmax_golden():
    np.testing.assert_allclose(ops.softmax(np.array([0.0, np.log(3.0)])), [0.25, 0.75], rtol=1e-15)
    np.testing.assert_allclose(
        ops.softmax(np.array([[1.0, 1.0], [2.0, 0.0]]), axis=0),
        [[1 / (1 + np.e), np.e / (1 + np.e)], [np.e / (1 + np.e), 1 / (1 + np.e)]],
        rtol=1e-15,
    )


@given(
    st.lists(st.floats(-50, 50), min_size=1, max_size=20),
    st.floats(-1e4, 1e4),
    st.sampled_from(FLOAT_DTYPES),
)
def test_softmax_sums_to_one_and_ignores_shift(logits, shift, dtype):
    x = np.array([logits, logits[::-1]], dtype=np.float64)
    p = ops.softmax(x.astype(dtype))
    assert p.dtype == dtype
    np.testing.assert_allclose(
        p.sum(axis=-1, dtype=np.float64), 1.0, atol=x.shape[1] * PROB_ATOL[np.dtype(dtype)]
    )
    # Shifting every logit of a row by a constant leaves the probabilities unchanged.
    np.testing.assert_allclose(
        ops.softmax(x + shift), ops.softmax(x), atol=PROB_ATOL[np.dtype(np.float64)]
    )
    # And the shifted-by-max form equals the textbook formula where that does not overflow.
    np.testing.assert_allclose(ops.softmax(x), ops.softmax_naive(x), rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_softmax_never_overflows_where_naive_does(dtype):
    x = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype)
    p = ops.softmax(x)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(
        p, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], atol=PROB_ATOL[np.dtype(dtype)]
    )
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        assert not np.isfinite(ops.softmax_naive(x)).all()


def test_softmax_nan_row_stays_nan_others_unaffected():
    p = ops.softmax(np.array([[np.nan, 0.0], [0.0, 0.0]]))
    assert np.isnan(p[0]).all()
    np.testing.assert_array_equal(p[1], [0.5, 0.5])


# ---------------------------------------------------------------------------------------
# dropout
# ---------------------------------------------------------------------------------------


def test_dropout_is_identity_at_inference():
    x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    assert ops.dropout(x, 0.5) is x
    assert ops.dropout(x, 0.9, training=False, rng=np.random.default_rng(1)) is x


@given(st.floats(0, 0.95), st.sampled_from(FLOAT_DTYPES), st.integers(0, 2**32 - 1))
def test_dropout_outputs_are_zero_or_scaled(rate, dtype, seed):
    x = (np.random.default_rng(seed).random((8, 64)) + 0.5).astype(dtype)  # no zeros in x
    y = ops.dropout(x, rate, training=True, rng=np.random.default_rng(seed))
    assert y.dtype == dtype and y.shape == x.shape
    scaled = x * np.asarray(1 / (1 - rate), dtype)
    assert ((y == 0) | (y == scaled)).all()
    # Same generator state, same mask: the run is repeatable.
    np.testing.assert_array_equal(
        y, ops.dropout(x, rate, training=True, rng=np.random.default_rng(seed))
    )


def test_dropout_drops_a_fraction_rate_and_keeps_the_mean():
    x = np.ones(200_000)
    y = ops.dropout(x, 0.3, training=True, rng=np.random.default_rng(7))
    dropped = np.mean(y == 0)
    sigma = np.sqrt(0.3 * 0.7 / x.size)
    assert abs(dropped - 0.3) < 5 * sigma  # `rate` is the drop probability
    assert abs(y.mean() - 1.0) < 5 * sigma / 0.7  # inverted dropout keeps the expectation


def test_dropout_rate_zero_in_training_keeps_everything():
    x = np.arange(1.0, 7.0)
    np.testing.assert_array_equal(
        ops.dropout(x, 0.0, training=True, rng=np.random.default_rng(0)), x
    )


# ---------------------------------------------------------------------------------------
# global pooling
# ---------------------------------------------------------------------------------------


@st.composite
def images(draw, max_hw=9, max_c=6):
    shape = (
        draw(st.integers(1, 3)),
        draw(st.integers(1, max_hw)),
        draw(st.integers(1, max_hw)),
        draw(st.integers(1, max_c)),
    )
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1))).standard_normal(shape)


@pytest.mark.parametrize("pool", [ops.global_avg_pool2d, ops.global_avg_pool2d_naive])
def test_global_avg_pool2d_golden(pool):
    x = np.arange(12, dtype=np.float64).reshape(1, 2, 3, 2)  # x[0, h, w, c] = 6h + 2w + c
    # channel 0: 0, 2, 4, 6, 8, 10 -> 5; channel 1: 1, 3, ..., 11 -> 6
    np.testing.assert_array_equal(pool(x), [[5.0, 6.0]])


@pytest.mark.parametrize("pool", [ops.global_max_pool2d, ops.global_max_pool2d_naive])
def test_global_max_pool2d_golden(pool):
    x = np.array([[3.0, -1.0], [7.0, -5.0], [2.0, -2.0]]).reshape(1, 3, 1, 2)
    np.testing.assert_array_equal(pool(x), [[7.0, -1.0]])


@given(images(), st.sampled_from(FLOAT_DTYPES))
def test_global_pools_match_naive_and_float64_oracle(x, dtype):
    oracle = ops.global_avg_pool2d_naive(x)
    cast = x.astype(dtype)
    fast = ops.global_avg_pool2d(cast)
    assert fast.dtype == dtype and fast.shape == (x.shape[0], x.shape[3])
    scale = ops.global_avg_pool2d(np.abs(x))  # mean of |x|: what the sum's rounding scales with
    assert_close_scaled(fast, oracle, scale, what="global_avg_pool2d vs float64 naive")
    # The same as PyTorch's AdaptiveAvgPool2d(1), which the project already has.
    np.testing.assert_allclose(ops.adaptive_avg_pool2d(x, 1)[:, 0, 0, :], oracle, rtol=1e-13)
    np.testing.assert_array_equal(ops.global_max_pool2d(cast), ops.global_max_pool2d_naive(cast))
    np.testing.assert_array_equal(
        ops.global_max_pool2d(x), ops.max_pool2d(x, x.shape[1:3])[:, 0, 0]
    )


@given(images())
def test_global_max_pool2d_output_is_max_element_of_its_channel(x):
    y = ops.global_max_pool2d(x)
    for n, c in np.ndindex(y.shape):
        assert y[n, c] in x[n, :, :, c]
        assert (y[n, c] >= x[n, :, :, c]).all()


def test_global_pools_of_a_constant_image_and_nan():
    x = np.full((2, 5, 3, 4), 0.1, np.float32)
    np.testing.assert_array_equal(ops.global_avg_pool2d(x), np.full((2, 4), 0.1, np.float32))
    np.testing.assert_array_equal(ops.global_max_pool2d(x), np.full((2, 4), 0.1, np.float32))
    x[1, 4, 2, 3] = np.nan
    for pool in (ops.global_avg_pool2d, ops.global_max_pool2d, ops.global_max_pool2d_naive):
        assert np.isnan(pool(x)).sum() == 1 and np.isnan(pool(x)[1, 3]), pool.__name__


# ---------------------------------------------------------------------------------------
# batch normalisation
# ---------------------------------------------------------------------------------------


@st.composite
def bn_cases(draw):
    """(N, F) and NHWC inputs, far from zero mean, with running statistics near the batch's."""
    shape = draw(
        st.one_of(
            st.tuples(st.integers(1, 4), st.integers(1, 9)),
            st.tuples(*(st.integers(1, 5),) * 3, st.integers(1, 7)),
        )
    )
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    c = shape[-1]
    x = rng.standard_normal(shape) * rng.uniform(0.1, 30) + rng.normal(0, 30)
    mean = x.reshape(-1, c).mean(axis=0) + rng.normal(0, 1, c)
    var = rng.uniform(0, 5, c) ** 2
    gamma, beta = rng.normal(0, 2, c), rng.normal(0, 2, c)
    eps = draw(st.sampled_from([ops.BATCH_NORM_EPS["torch"], ops.BATCH_NORM_EPS["keras"]]))
    return x, gamma, beta, mean, var, eps


def bn_scale(x, gamma, beta, mean, var, eps):
    """The size of the terms behind each batch norm output: what its rounding scales with."""
    return (np.abs(x) + np.abs(mean)) * np.abs(gamma) / np.sqrt(var + eps) + np.abs(beta)


@pytest.mark.parametrize("bn", [ops.batch_norm, ops.batch_norm_naive])
def test_batch_norm_golden(bn):
    x = np.arange(8.0).reshape(1, 2, 2, 2)  # channel 0: 0, 2, 4, 6; channel 1: 1, 3, 5, 7
    gamma, beta, mean = np.array([1.0, 2.0]), np.array([0.0, 1.0]), np.array([3.0, 4.0])
    # (x - 3) / 2 and (x - 4) / 4 * 2 + 1, by hand:
    expected = [[[[-1.5, -0.5], [-0.5, 0.5]], [[0.5, 1.5], [1.5, 2.5]]]]
    np.testing.assert_array_equal(bn(x, gamma, beta, mean, np.array([4.0, 16.0]), eps=0), expected)
    # eps is added to the variance: 3 + 1 and 15 + 1 give the same.
    np.testing.assert_array_equal(bn(x, gamma, beta, mean, np.array([3.0, 15.0]), eps=1), expected)


@given(bn_cases(), st.sampled_from(FLOAT_DTYPES))
def test_batch_norm_matches_naive_and_float64_oracle(case, dtype):
    x, eps = case[0], case[5]
    oracle = ops.batch_norm_naive(*case[:5], eps=eps)
    cast = [a.astype(dtype) for a in case[:5]]
    with np.errstate(over="ignore"):  # float16 may overflow on these sizes: skipped below
        fast, naive = ops.batch_norm(*cast, eps=eps), ops.batch_norm_naive(*cast, eps=eps)
    assume(np.isfinite(fast).all())
    assert fast.dtype == naive.dtype == dtype and fast.shape == x.shape
    scale = bn_scale(*case)
    for y, name in ((fast, "batch_norm"), (naive, "batch_norm_naive")):
        assert_close_scaled(y, oracle, scale, f"{name} {dtype.__name__}", ELEMENTWISE_TOL)


@given(bn_cases())
def test_batch_norm_is_a_per_channel_affine_map(case):
    x, gamma, _, _, var, eps = case
    y = ops.batch_norm(*case[:5], eps=eps)
    slope = gamma / np.sqrt(var + eps)
    x2 = x + np.random.default_rng(0).standard_normal(x.shape)
    y2 = ops.batch_norm(x2, *case[1:5], eps=eps)
    np.testing.assert_allclose(y2 - y, slope * (x2 - x), rtol=1e-9, atol=1e-9 * np.abs(y).max())
    # Changing one channel's inputs changes that channel only.
    x3 = x.copy()
    x3[..., 0] += 1.0
    y3 = ops.batch_norm(x3, *case[1:5], eps=eps)
    np.testing.assert_array_equal(y3[..., 1:], y[..., 1:])
    assert (y3[..., 0] != y[..., 0]).any() or slope[0] == 0


@given(bn_cases())
def test_batch_norm_with_batch_moments_normalises_each_channel(case):
    x, gamma, beta, *_ = case
    assume(x.size > x.shape[-1] and (x.reshape(-1, x.shape[-1]).std(axis=0) > 1e-3).all())
    y = ops.batch_norm(x, np.ones_like(gamma), np.zeros_like(beta), *ops.batch_moments(x), eps=0)
    axes = tuple(range(x.ndim - 1))
    np.testing.assert_allclose(y.mean(axis=axes), 0, atol=1e-9)
    np.testing.assert_allclose(y.var(axis=axes), 1, rtol=1e-9)
    z = ops.batch_norm(x, gamma, beta, *ops.batch_moments(x), eps=0)
    np.testing.assert_allclose(z, gamma * y + beta, rtol=1e-9, atol=1e-9)  # then scale, shift


def test_batch_moments_are_biased_and_do_not_cancel_in_float32():
    x = np.array([[1.0, 4.0], [3.0, 4.0]])
    mean, var = ops.batch_moments(x)
    np.testing.assert_array_equal(mean, [2.0, 4.0])
    np.testing.assert_array_equal(var, [1.0, 0.0])  # divided by 2, not 1
    # Many values far from zero: a float32 one-pass sum would lose the variance.
    rng = np.random.default_rng(0)
    big = (1e4 + rng.standard_normal((64, 32, 32, 3))).astype(np.float32)
    mean32, var32 = ops.batch_moments(big)
    assert mean32.dtype == var32.dtype == np.float32
    exact = big.astype(np.float64)
    np.testing.assert_allclose(mean32, exact.mean(axis=(0, 1, 2)), rtol=1e-7)
    np.testing.assert_allclose(var32, exact.var(axis=(0, 1, 2)), rtol=1e-6)


@given(conv_cases(max_hw=7, max_c=5), st.sampled_from(["torch", "keras"]))
def test_fold_batch_norm_equals_conv_then_batch_norm(case, framework):
    x, kernel, bias, stride, padding = case
    o = kernel.shape[3]
    rng = np.random.default_rng(1)
    bn = rng.normal(1, 0.3, o), rng.normal(0, 1, o), rng.normal(0, 1, o), rng.uniform(0, 2, o)
    eps = ops.BATCH_NORM_EPS[framework]
    unfolded = ops.batch_norm(
        ops.conv2d(x, kernel, bias, strides=stride, padding=padding), *bn, eps=eps
    )
    k2, b2 = ops.fold_batch_norm(kernel, bias, *bn, eps=eps)
    assert k2.shape == kernel.shape and b2.shape == (o,)
    folded = ops.conv2d(x, k2, b2, strides=stride, padding=padding)
    np.testing.assert_allclose(folded, unfolded, rtol=1e-10, atol=1e-10 * np.abs(unfolded).max())
    # A dense layer folds the same way: its kernel's last axis is the channel too.
    features = ops.flatten(x)
    dense_kernel = rng.standard_normal((features.shape[1], o))
    k3, b3 = ops.fold_batch_norm(dense_kernel, None, *bn, eps=eps)
    np.testing.assert_allclose(
        ops.dense(features, k3, b3),
        ops.batch_norm(features @ dense_kernel, *bn, eps=eps),
        rtol=1e-9,
    )


@pytest.mark.parametrize("quiet", [0.0, 0.25])
@pytest.mark.parametrize(("hw", "c", "o"), [(16, 3, 64), (32, 64, 64), (14, 256, 256)])
def test_fold_batch_norm_is_as_accurate_as_unfolded(hw, c, o, quiet):
    rng = np.random.default_rng(hw * c + o)
    x = np.abs(rng.standard_normal((2, hw, hw, c)))  # ReLU outputs
    kernel = rng.standard_normal((3, 3, c, o)) * np.sqrt(2 / (9 * c))  # He-normal
    bias = rng.normal(0, 0.5, o)
    kernel[..., : int(quiet * o)] *= 1e-3  # nearly constant channels: variance below eps
    y = ops.conv2d(x, kernel, bias)
    mean, var = ops.batch_moments(y)
    mean += 0.1 * rng.standard_normal(o) * np.sqrt(var)  # running statistics, not the batch's
    var *= rng.uniform(0.7, 1.4, o)
    bn = rng.uniform(0.5, 1.5, o), rng.normal(0, 0.2, o), mean, var
    eps = ops.BATCH_NORM_EPS["torch"]
    oracle = ops.batch_norm(y, *bn, eps=eps)
    f32 = [a.astype(np.float32) for a in (x, kernel, bias, *bn)]
    unfolded = ops.batch_norm(ops.conv2d(*f32[:3]), *f32[3:], eps=eps)
    folded = ops.conv2d(f32[0], *ops.fold_batch_norm(*f32[1:], eps=eps))
    assert folded.dtype == np.float32
    errors = relative_error(folded, oracle), relative_error(unfolded, oracle)
    print(
        f"\nfold {hw}x{hw} {c}->{o} quiet {quiet}: folded {errors[0]:.2e}, unfolded {errors[1]:.2e}"
    )
    assert errors[0] < BN_FOLD_REL_TOL
    assert errors[0] < 1.5 * errors[1]  # folding costs no accuracy


# ---------------------------------------------------------------------------------------
# sigmoid, tanh
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [ops.sigmoid, ops.sigmoid_naive])
def test_sigmoid_golden(sig):
    np.testing.assert_allclose(sig(np.array([0.0, np.log(3.0), -np.log(3.0)])), [0.5, 0.75, 0.25])


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_sigmoid_is_finite_and_exact_at_both_extremes(dtype):
    x = np.array([-1e4, -300, -95, -30, 0, 30, 95, 300, 1e4], dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # never overflows
        s = ops.sigmoid(x)
    assert s.dtype == dtype
    exact = 1 / (1 + np.exp(-x.astype(np.longdouble)))  # wider than float64 here
    tiny = np.finfo(dtype).smallest_subnormal
    np.testing.assert_allclose(s, exact.astype(np.float64), rtol=4 * np.finfo(dtype).eps, atol=tiny)
    with np.errstate(over="ignore"):
        assert (
            ops.sigmoid_naive(x)[2] == 0 or dtype is np.float64
        )  # -95: the naive exp(95) overflows
    assert 0 < s[2] or dtype is np.float16  # the stable form keeps it (float16: below its range)


@given(st.lists(st.floats(-80, 80), min_size=1, max_size=30), st.sampled_from(FLOAT_DTYPES))
def test_sigmoid_and_tanh_properties(values, dtype):
    x = np.array(values)
    s = ops.sigmoid(x.astype(dtype))
    assert s.dtype == dtype and ((s >= 0) & (s <= 1)).all()
    oracle = ops.sigmoid_naive(x.astype(dtype).astype(np.float64))  # |x| <= 80: no overflow
    assert_close_scaled(s, oracle, oracle, "sigmoid vs float64 textbook form", ELEMENTWISE_TOL)
    np.testing.assert_allclose(ops.sigmoid(-x), 1 - ops.sigmoid(x), atol=1e-15)  # symmetry
    order = np.argsort(x)
    assert (np.diff(ops.sigmoid(x)[order]) >= -1e-16).all()  # monotone, to a rounding
    t = ops.tanh(x.astype(dtype))
    assert t.dtype == dtype and (np.abs(t) <= 1).all()
    np.testing.assert_array_equal(ops.tanh(-x), -ops.tanh(x))  # odd
    np.testing.assert_allclose(ops.tanh(x), 2 * ops.sigmoid(2 * x) - 1, atol=1e-15)


def test_activations_propagate_nan():
    x = np.array([np.nan, 1.0])
    for f in (ops.sigmoid, ops.sigmoid_naive, ops.tanh):
        y = f(x)
        assert np.isnan(y[0]) and np.isfinite(y[1]), f.__name__


# ---------------------------------------------------------------------------------------
# dtype preservation across every kernel
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_every_kernel_preserves_dtype(dtype):
    x = np.ones((1, 4, 4, 2), dtype)
    k = np.ones((3, 3, 2, 3), dtype)
    rng = np.random.default_rng(0)
    outputs = {
        "conv2d": ops.conv2d(x, k, np.ones(3, dtype)),
        "conv2d_naive": ops.conv2d_naive(x, k),
        "im2col": ops.im2col(x, 3),
        "max_pool2d": ops.max_pool2d(x),
        "max_pool2d_naive": ops.max_pool2d_naive(x),
        "dense": ops.dense(ops.flatten(x), np.ones((32, 2), dtype)),
        "dense_naive": ops.dense_naive(ops.flatten(x), np.ones((32, 2), dtype)),
        "relu": ops.relu(x),
        "flatten": ops.flatten(x),
        "softmax": ops.softmax(x),
        "softmax_naive": ops.softmax_naive(x),
        "dropout": ops.dropout(x, 0.5, training=True, rng=rng),
        "global_avg_pool2d": ops.global_avg_pool2d(x),
        "global_avg_pool2d_naive": ops.global_avg_pool2d_naive(x),
        "global_max_pool2d": ops.global_max_pool2d(x),
        "global_max_pool2d_naive": ops.global_max_pool2d_naive(x),
        "sigmoid": ops.sigmoid(x),
        "sigmoid_naive": ops.sigmoid_naive(x),
        "tanh": ops.tanh(x),
    }
    per_channel = [np.ones(2, dtype)] * 4
    for bn in (ops.batch_norm, ops.batch_norm_naive):
        outputs[bn.__name__] = bn(x, *per_channel, eps=1e-3)
    outputs["batch_moments"] = ops.batch_moments(x)[1]
    outputs["fold_batch_norm"] = ops.fold_batch_norm(k[..., :2], None, *per_channel, eps=1e-5)[1]
    for name, y in outputs.items():
        assert y.dtype == dtype, name


# ---------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------

X = np.ones((1, 5, 6, 2), np.float32)
K = np.ones((3, 3, 2, 4), np.float32)


@pytest.mark.parametrize("conv", [ops.conv2d, ops.conv2d_naive])
@pytest.mark.parametrize(
    ("x", "kernel", "kwargs", "error", "match"),
    [
        (X[0], K, {}, ValueError, r"`x` must be 4-D \(N, H, W, C\), got shape \(5, 6, 2\)"),
        (X, K[0], {}, ValueError, r"`kernel` must be 4-D \(KH, KW, C, O\)"),
        (X, np.ones((3, 3, 3, 4)), {}, ValueError, r"`x` has 2 channels but `kernel` expects 3"),
        (X, K, {"padding": "valid", "strides": 1}, None, None),
        (
            X,
            np.ones((6, 3, 2, 1)),
            {"padding": "valid"},
            ValueError,
            r"larger than the padded input along height",
        ),
        (X, K, {"strides": 0}, ValueError, r"`strides` must be positive, got 0"),
        (X, K, {"strides": (1, -2)}, ValueError, r"`strides` must be positive"),
        (X, K, {"strides": 1.5}, TypeError, r"`strides` must be an int or a pair of ints"),
        (X, K, {"padding": "full"}, ValueError, r"`padding` must be 'same' or 'valid'"),
        (X, K, {"padding": -1}, ValueError, r"`padding` must not be negative"),
        (X, K, {"padding": (1, 1)}, TypeError, r"\(\(top, bottom\), \(left, right\)\)"),
        (X, K, {"bias": np.ones(3, np.float32)}, ValueError, r"`bias` must have shape \(4,\)"),
        (
            X.astype(np.int32),
            K,
            {},
            TypeError,
            r"`x` must be a floating-point array, got dtype int32.*astype",
        ),
        (
            X,
            K.astype(bool),
            {},
            TypeError,
            r"`kernel` must be a floating-point array, got dtype bool",
        ),
        (X.astype(np.complex64), K, {}, TypeError, r"complex values are not supported"),
    ],
)
def test_conv2d_bad_input(conv, x, kernel, kwargs, error, match):
    if error is None:  # the valid control case of the table
        assert conv(x, kernel, **kwargs).shape == (1, 3, 4, 4)
        return
    with pytest.raises(error, match=match):
        conv(x, kernel, **kwargs)


@pytest.mark.parametrize(
    ("x", "kernel_size", "kwargs", "error", "match"),
    [
        (X[..., 0], 3, {}, ValueError, r"`x` must be 4-D \(N, H, W, C\)"),
        (X, 0, {}, ValueError, r"`kernel_size` must be positive"),
        (X, (6, 1), {"padding": "valid"}, ValueError, r"larger than the padded input"),
        (X.astype(np.int64), 3, {}, TypeError, r"floating-point"),
    ],
)
def test_im2col_bad_input(x, kernel_size, kwargs, error, match):
    with pytest.raises(error, match=match):
        ops.im2col(x, kernel_size, **kwargs)


@pytest.mark.parametrize("pool", [ops.max_pool2d, ops.max_pool2d_naive])
@pytest.mark.parametrize(
    ("x", "kwargs", "error", "match"),
    [
        (X[0], {}, ValueError, r"`x` must be 4-D"),
        (X, {"pool_size": 0}, ValueError, r"`pool_size` must be positive"),
        (X, {"pool_size": 2, "strides": (0, 1)}, ValueError, r"`strides` must be positive"),
        (X, {"pool_size": 7}, ValueError, r"larger than the padded input"),
        (X, {"pool_size": 2, "padding": 2}, ValueError, r"smaller than `pool_size`"),
        (X.astype(np.uint8), {}, TypeError, r"floating-point"),
    ],
)
def test_max_pool2d_bad_input(pool, x, kwargs, error, match):
    with pytest.raises(error, match=match):
        pool(x, **kwargs)


@pytest.mark.parametrize("fc", [ops.dense, ops.dense_naive])
@pytest.mark.parametrize(
    ("x", "kernel", "bias", "error", "match"),
    [
        (
            np.ones((2, 3, 1)),
            np.ones((3, 4)),
            None,
            ValueError,
            r"`x` must be 2-D \(N, in\).*flatten",
        ),
        (np.ones((2, 3)), np.ones(3), None, ValueError, r"`kernel` must be 2-D \(in, out\)"),
        (
            np.ones((2, 3)),
            np.ones((4, 5)),
            None,
            ValueError,
            r"`x` has 3 features but `kernel` expects 4",
        ),
        (
            np.ones((2, 3)),
            np.ones((3, 5)),
            np.ones(4),
            ValueError,
            r"`bias` must have shape \(5,\)",
        ),
        (np.ones((2, 3), int), np.ones((3, 5)), None, TypeError, r"`x` must be a floating-point"),
    ],
)
def test_dense_bad_input(fc, x, kernel, bias, error, match):
    with pytest.raises(error, match=match):
        fc(x, kernel, bias)


@pytest.mark.parametrize(
    ("func", "args", "kwargs", "error", "match"),
    [
        (ops.relu, (np.array([1, -1]),), {}, TypeError, r"`x` must be a floating-point.*int64"),
        (ops.flatten, (np.ones(3),), {}, ValueError, r"batch axis"),
        (ops.flatten, (np.ones((2, 2), bool),), {}, TypeError, r"bool"),
        (
            ops.softmax,
            (np.ones((2, 3)),),
            {"axis": 2},
            ValueError,
            r"`axis` must be an int in \[-2, 2\)",
        ),
        (ops.softmax, (np.ones((2, 3), np.complex128),), {}, TypeError, r"complex"),
        (ops.softmax_naive, (np.ones(3),), {"axis": 1.0}, ValueError, r"`axis`"),
        (
            ops.dropout,
            (np.ones(3), 1.0),
            {},
            ValueError,
            r"`rate` must be a number in \[0, 1\), got 1.0",
        ),
        (ops.dropout, (np.ones(3), -0.1), {}, ValueError, r"`rate` must be a number in \[0, 1\)"),
        (ops.dropout, (np.ones(3), True), {}, ValueError, r"`rate`"),
        (ops.dropout, (np.ones(3), 0.5), {"training": True}, ValueError, r"`rng` is required"),
        (
            ops.dropout,
            (np.ones(3), 0.5),
            {"training": True, "rng": 0},
            TypeError,
            r"numpy.random.Generator",
        ),
        (ops.dropout, (np.ones(3, int), 0.5), {}, TypeError, r"floating-point"),
    ],
)
def test_elementwise_kernels_bad_input(func, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        func(*args, **kwargs)


G, B = np.ones(2), np.zeros(2)


@pytest.mark.parametrize("bn", [ops.batch_norm, ops.batch_norm_naive])
@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((X, G, B, B, G), {"eps": 1e-5}, None, None),
        ((X[0, 0, 0], G, B, B, G), {"eps": 1e-5}, ValueError, r"`x` must have a batch axis"),
        (
            (X, np.ones(3), B, B, G),
            {"eps": 1e-5},
            ValueError,
            r"`gamma` must have shape \(2,\), one value per channel of `x` \(the last axis of "
            r"shape \(1, 5, 6, 2\)\), got \(3,\)",
        ),
        ((X, G, B, B[:, None], G), {"eps": 1e-5}, ValueError, r"`mean` must have shape \(2,\)"),
        (
            (X, G, B, B, np.array([1.0, -0.5])),
            {"eps": 1e-5},
            ValueError,
            r"`var` must be >= 0 in every channel, got -0.5 in channel 1",
        ),
        ((X, G, B, B, np.array([np.nan, 1.0])), {"eps": 1e-5}, ValueError, r"got nan in channel 0"),
        ((X, G, B, B, G), {"eps": -1e-5}, ValueError, r"`eps` must be a finite number >= 0"),
        ((X, G, B, B, G), {"eps": np.nan}, ValueError, r"`eps`"),
        ((X, G, B, B, G), {"eps": True}, ValueError, r"`eps`"),
        ((X, G, B, B, G), {"eps": None}, ValueError, r"`eps`"),
        ((X, G, B, B, G), {}, TypeError, r"eps"),  # no default: every framework has its own
        ((X, G, B.astype(int), B, G), {"eps": 1e-5}, TypeError, r"`beta` must be a floating"),
    ],
)
def test_batch_norm_bad_input(bn, args, kwargs, error, match):
    if error is None:  # the valid control case of the table
        assert bn(*args, **kwargs).shape == X.shape
        return
    with pytest.raises(error, match=match):
        bn(*args, **kwargs)


@pytest.mark.parametrize(
    ("func", "args", "match"),
    [
        (ops.fold_batch_norm, (np.ones((3, 3, 2)), None, G, B, B, G, 1e-5), r"`kernel` must be"),
        (
            ops.fold_batch_norm,
            (K, None, G, B, B, G, 1e-5),
            r"`gamma` must have shape \(4,\), one value per output channel of `kernel`",
        ),
        (ops.fold_batch_norm, (K[..., :2], np.ones(4), G, B, B, G, 1e-5), r"`bias` must have"),
        (ops.fold_batch_norm, (K[..., :2], None, G, B, B, -G, 1e-5), r"`var` must be >= 0"),
        (ops.batch_moments, (np.ones(3),), r"`x` must be \(N, ..., C\)"),
        (ops.global_avg_pool2d, (X[0],), r"`x` must be 4-D \(N, H, W, C\)"),
        (ops.global_avg_pool2d_naive, (X[0],), r"`x` must be 4-D"),
        (ops.global_max_pool2d, (X[0],), r"`x` must be 4-D"),
        (ops.global_max_pool2d_naive, (X[0],), r"`x` must be 4-D"),
    ],
)
def test_head_kernels_bad_input(func, args, match):
    with pytest.raises(ValueError, match=match):
        func(*args)


@pytest.mark.parametrize(
    "func",
    [
        ops.sigmoid,
        ops.sigmoid_naive,
        ops.tanh,
        ops.global_avg_pool2d,
        ops.batch_moments,
    ],
)
def test_head_kernels_refuse_integers(func):
    with pytest.raises(TypeError, match=r"`x` must be a floating-point array, got dtype int64"):
        func(np.ones((1, 2, 2, 1), np.int64))


# ---------------------------------------------------------------------------------------
# The head kernels against PyTorch and Keras (marked: need the optional packages)
# ---------------------------------------------------------------------------------------


def head_case(seed=0, shape=(3, 5, 4, 6)):
    """Activations far from zero mean, with running statistics near (not at) the batch's."""
    rng = np.random.default_rng(seed)
    c = shape[-1]
    x = rng.standard_normal(shape) * 3 + rng.normal(0, 5, c)
    mean = x.reshape(-1, c).mean(axis=0) + rng.normal(0, 0.5, c)
    var = x.reshape(-1, c).var(axis=0) * rng.uniform(0.5, 2, c)
    var[0] = 1e-6  # a nearly constant channel: here eps matters
    return x, rng.uniform(0.5, 1.5, c), rng.normal(0, 1, c), mean, var


@pytest.mark.torch
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_head_kernels_equal_pytorch(dtype):
    torch = pytest.importorskip("torch", reason="needs torch (pip install torch==2.13.0)")
    functional = torch.nn.functional
    assert torch.nn.BatchNorm2d(3).eps == ops.BATCH_NORM_EPS["torch"]
    case = [a.astype(dtype) for a in head_case()]
    x = case[0]
    oracle = ops.batch_norm_naive(*[a.astype(np.float64) for a in case], eps=1e-5)
    nchw = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())  # (N, C, H, W)
    t = [torch.from_numpy(a) for a in case[1:]]
    theirs = functional.batch_norm(nchw, t[2], t[3], t[0], t[1], training=False, eps=1e-5)
    theirs = theirs.numpy().transpose(0, 2, 3, 1)  # back to (N, H, W, C)
    scale = bn_scale(*case, 1e-5)
    tol = ELEMENTWISE_TOL
    assert_close_scaled(theirs, oracle, scale, "torch batch_norm vs float64", tol)
    assert_close_scaled(ops.batch_norm(*case, eps=1e-5), oracle, scale, "vgg_np", tol)
    # Dense features (N, F): BatchNorm1d, the layer of a classifier head.
    feats = ops.flatten(x)[:, :6]  # (N, 6)
    theirs_1d = functional.batch_norm(torch.from_numpy(feats), t[2], t[3], t[0], t[1], eps=1e-5)
    oracle_1d = ops.batch_norm_naive(feats.astype(np.float64), *case[1:], eps=1e-5)
    scale_1d = bn_scale(feats, *case[1:], 1e-5)
    assert_close_scaled(theirs_1d.numpy(), oracle_1d, scale_1d, "torch BatchNorm1d", tol)
    # Global pools: a mean (rounding scales with the mean of |x|) and an exact maximum.
    average = functional.adaptive_avg_pool2d(nchw, 1).numpy()[:, :, 0, 0]  # (N, C)
    oracle = ops.global_avg_pool2d_naive(x.astype(np.float64))
    scale = ops.global_avg_pool2d(np.abs(x))
    assert_close_scaled(average, oracle, scale, "torch adaptive_avg_pool2d(1)")
    assert_close_scaled(ops.global_avg_pool2d(x), oracle, scale, "global_avg_pool2d")
    maximum = functional.adaptive_max_pool2d(nchw, 1).numpy()[:, :, 0, 0]
    np.testing.assert_array_equal(ops.global_max_pool2d(x), maximum)
    # Activations on logits of a few units: a few eps apart, relative to the output.
    for name, theirs_fn in (("sigmoid", torch.sigmoid), ("tanh", torch.tanh)):
        ours = getattr(ops, name)(feats)
        exact = getattr(ops, name)(feats.astype(np.float64))
        theirs = theirs_fn(torch.from_numpy(feats)).numpy()
        for y, who in ((ours, "vgg_np"), (theirs, "torch")):
            assert_close_scaled(y, exact, np.abs(exact), f"{who} {name}", ELEMENTWISE_TOL)


@pytest.mark.keras
def test_head_kernels_equal_keras_layers():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras", reason="needs the `keras` extra: pip install keras")
    x, gamma, beta, mean, var = (a.astype(np.float32) for a in head_case(1))
    layer = keras.layers.BatchNormalization()
    layer.build(x.shape)
    layer.set_weights([gamma, beta, mean, var])  # Keras's order: gamma, beta, moving stats
    assert layer.epsilon == ops.BATCH_NORM_EPS["keras"]
    theirs = keras.ops.convert_to_numpy(layer(x, training=False))
    eps = ops.BATCH_NORM_EPS["keras"]
    oracle = ops.batch_norm_naive(
        *[a.astype(np.float64) for a in (x, gamma, beta, mean, var)], eps=eps
    )
    scale = bn_scale(x, gamma, beta, mean, var, eps)
    assert_close_scaled(theirs, oracle, scale, "Keras BatchNormalization", ELEMENTWISE_TOL)
    assert_close_scaled(
        ops.batch_norm(x, gamma, beta, mean, var, eps=eps), oracle, scale, "ours", ELEMENTWISE_TOL
    )
    average = keras.ops.convert_to_numpy(keras.layers.GlobalAveragePooling2D()(x))
    oracle = ops.global_avg_pool2d_naive(x.astype(np.float64))
    scale = ops.global_avg_pool2d(np.abs(x))
    assert_close_scaled(average, oracle, scale, "Keras GlobalAveragePooling2D vs float64")
    assert_close_scaled(ops.global_avg_pool2d(x), oracle, scale, "global_avg_pool2d vs float64")
    maximum = keras.ops.convert_to_numpy(keras.layers.GlobalMaxPooling2D()(x))
    np.testing.assert_array_equal(ops.global_max_pool2d(x), maximum)
    logits = ops.flatten(x)[:, :7]  # (N, 7), values of a few units
    # The activations Keras offers for a classifier's Dense layers ("linear" is the identity).
    for name in ("relu", "sigmoid", "softmax", "tanh"):
        ours = getattr(ops, name)
        theirs = keras.ops.convert_to_numpy(keras.activations.get(name)(logits))
        exact = ours(logits.astype(np.float64))
        # Probabilities carry the rounding of exp's argument: compare them absolutely.
        scale = np.ones_like(exact) if name == "softmax" else np.abs(exact)
        for y, who in ((ours(logits), "vgg_np"), (theirs, "Keras")):
            assert_close_scaled(y, exact, scale, f"{who} {name}", ELEMENTWISE_TOL)
