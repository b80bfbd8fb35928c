"""Tests of vgg_np.ops: golden cases, fast == naive, properties and bad input, per kernel."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import PROB_ATOL, assert_close_scaled
from hypothesis import assume, given
from hypothesis import strategies as st

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
    }
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
