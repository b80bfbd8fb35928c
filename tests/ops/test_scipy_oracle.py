"""vgg_np's kernels against SciPy, an oracle nobody on this project wrote.

`scipy.signal.correlate` (direct method) for convolution, `scipy.ndimage.maximum_filter`
for max-pooling, `scipy.special.softmax` / `log_softmax` for the softmax and the
cross-entropy loss. The padding of the oracle is restated here from the Keras rule, not
taken from `vgg_np.ops.resolve_padding`.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tests.conftest import PROB_ATOL, assert_close_scaled
from vgg_np import backward, ops

scipy_signal = pytest.importorskip("scipy.signal", reason="SciPy is the oracle here")
scipy_ndimage = pytest.importorskip("scipy.ndimage", reason="SciPy is the oracle here")
scipy_special = pytest.importorskip("scipy.special", reason="SciPy is the oracle here")


def keras_same(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Keras/TensorFlow "same": ceil(size / stride) outputs, the odd pixel after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def explicit_pads(padding, h, w, kh, kw, sh, sw):
    if padding == "same":
        return keras_same(h, kh, sh), keras_same(w, kw, sw)
    if padding == "valid":
        return (0, 0), (0, 0)
    return padding


def correlate_oracle(x, kernel, bias, strides, pads):
    """Each output channel of each image: one 3-D correlation over (H, W, C)."""
    (sh, sw), ((pt, pb), (pl, pr)) = strides, pads
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))  # (N, Hp, Wp, C)
    out = []
    for image in xp:
        channels = [
            # The C axis overlaps completely in "valid" mode: the correlation sums it.
            scipy_signal.correlate(image, kernel[..., o], mode="valid", method="direct")[
                ::sh, ::sw, 0
            ]
            for o in range(kernel.shape[3])
        ]
        out.append(np.stack(channels, axis=-1))  # (Ho, Wo, O)
    y = np.stack(out)  # (N, Ho, Wo, O)
    return y if bias is None else y + bias


@st.composite
def conv_cases(draw):
    """Non-square images and kernels, strides and every padding form."""
    n, c, o = draw(st.integers(1, 2)), draw(st.integers(1, 5)), draw(st.integers(1, 5))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 10))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    padding = draw(
        st.one_of(
            st.sampled_from(["same", "valid"]),
            st.tuples(
                st.tuples(st.integers(0, 2), st.integers(0, 2)),
                st.tuples(st.integers(0, 2), st.integers(0, 2)),
            ),
        )
    )
    pads = explicit_pads(padding, h, w, kh, kw, sh, sw)
    assume(h + sum(pads[0]) >= kh and w + sum(pads[1]) >= kw)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x, kernel = rng.standard_normal((n, h, w, c)), rng.standard_normal((kh, kw, c, o))
    bias = rng.standard_normal(o) if draw(st.booleans()) else None
    return x, kernel, bias, (sh, sw), padding, pads


@given(conv_cases(), st.sampled_from([np.float32, np.float64]))
def test_conv2d_matches_scipy_correlate(case, dtype):
    x, kernel, bias, strides, padding, pads = case
    expected = correlate_oracle(x, kernel, bias, strides, pads)
    # Rounding scales with the sum of |terms| of each output: the same correlation of |x|.
    scale = correlate_oracle(np.abs(x), np.abs(kernel), None, strides, pads)
    scale = scale + (0 if bias is None else np.abs(bias))
    b = None if bias is None else bias.astype(dtype)
    for name, conv in (("conv2d", ops.conv2d), ("conv2d_naive", ops.conv2d_naive)):
        got = conv(x.astype(dtype), kernel.astype(dtype), b, strides=strides, padding=padding)
        assert got.dtype == dtype
        assert_close_scaled(got, expected, scale, what=f"{name} vs scipy.signal.correlate")


@given(
    st.integers(1, 2),
    st.integers(1, 9),
    st.integers(1, 10),
    st.integers(1, 4),
    st.tuples(st.integers(1, 3), st.integers(1, 4)),
    st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))),
    st.sampled_from(["valid", "same"]),
    st.integers(0, 2**32 - 1),
)
def test_max_pool2d_matches_scipy_maximum_filter(n, h, w, c, window, strides, padding, seed):
    (kh, kw), (sh, sw) = window, strides or window
    pads = explicit_pads(padding, h, w, kh, kw, sh, sw)
    assume(all(max(p) < k for p, k in zip(pads, window, strict=True)))
    assume(h + sum(pads[0]) >= kh and w + sum(pads[1]) >= kw)
    x = np.random.default_rng(seed).standard_normal((n, h, w, c)).astype(np.float32)
    xp = np.pad(x, ((0, 0), *pads, (0, 0)), constant_values=-np.inf)
    # maximum_filter centres its window: output i covers i - k//2 .. i - k//2 + k - 1, so
    # the window starting at row r is its output r + k//2.
    filtered = scipy_ndimage.maximum_filter(xp, size=(1, kh, kw, 1), mode="constant", cval=-np.inf)
    ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    expected = filtered[:, kh // 2 :: sh, kw // 2 :: sw][:, :ho, :wo]
    got = ops.max_pool2d(x, window, strides=strides, padding=padding)
    np.testing.assert_array_equal(got, expected)  # a maximum has no rounding
    np.testing.assert_array_equal(
        ops.max_pool2d_naive(x, window, strides=strides, padding=padding), expected
    )


@given(
    st.integers(1, 5), st.integers(1, 12), st.floats(-1e3, 1e3), st.integers(0, 2**32 - 1),
    st.sampled_from([np.float32, np.float64]),
)  # fmt: skip
def test_softmax_matches_scipy(n, k, shift, seed, dtype):
    logits = (np.random.default_rng(seed).standard_normal((n, k)) * 30 + shift).astype(dtype)
    # The oracle sees the same (rounded) logits, in float64.
    expected = scipy_special.softmax(logits.astype(np.float64), axis=-1)
    got = ops.softmax(logits)
    assert got.dtype == dtype
    np.testing.assert_allclose(got, expected, rtol=0, atol=PROB_ATOL[np.dtype(dtype)])


@given(st.integers(1, 6), st.integers(2, 12), st.floats(-1e3, 1e3), st.integers(0, 2**32 - 1))
def test_cross_entropy_and_its_gradient_match_scipy_log_softmax(n, k, shift, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((n, k)) * 30 + shift
    labels = rng.integers(0, k, n)
    loss, grad = backward.softmax_cross_entropy(logits, labels)
    log_probs = scipy_special.log_softmax(logits, axis=1)
    expected_loss = -log_probs[np.arange(n), labels].mean()
    # The loss is a mean of -log p: rounding relative to its terms' size, a few eps.
    assert abs(loss - expected_loss) <= 1e-12 * (1 + np.abs(log_probs).max())
    expected_grad = (scipy_special.softmax(logits, axis=1) - np.eye(k)[labels]) / n
    np.testing.assert_allclose(grad, expected_grad, rtol=0, atol=PROB_ATOL[np.dtype(np.float64)])
