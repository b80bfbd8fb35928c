"""Winograd F(2x2, 3x3) over a batch (`vgg_np.train.winograd`): a convolution and its
kernel's gradient against their definitions on any shape, in float32, on any number of
threads."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import ENGINE_REL_TOL, relative_error
from vgg_np import backward, ops
from vgg_np.engine.threads import Workers
from vgg_np.train import winograd


@settings(deadline=None)
@given(
    n=st.integers(1, 10),
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    c=st.integers(1, 5),
    o=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_winograd_equals_the_definitions_on_any_shape(n, h, w, c, o, seed):
    rng = np.random.default_rng(seed)
    x, k = rng.standard_normal((n, h, w, c)), rng.standard_normal((3, 3, c, o))
    dy = rng.standard_normal((n, h, w, o))
    y = winograd.conv2d(x, k, Workers(2))
    expected = ops.conv2d(x, k, padding="same")
    assert y.shape == expected.shape and relative_error(y, expected) < 1e-13
    dk = winograd.kernel_gradient(x, dy, Workers(2))
    assert relative_error(dk, backward.conv2d_backward(x, k, dy)[1]) < 1e-13


def test_winograd_in_float32_and_on_any_number_of_threads(monkeypatch):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((20, 10, 12, 24)).astype(np.float32)
    k = (rng.standard_normal((3, 3, 24, 16)) / 15).astype(np.float32)
    dy = rng.standard_normal((20, 10, 12, 16)).astype(np.float32)
    exact_y = ops.conv2d(*(a.astype(np.float64) for a in (x, k)), padding="same")
    exact_dk = backward.conv2d_backward(*(a.astype(np.float64) for a in (x, k, dy)))[1]
    y, dk = winograd.conv2d(x, k, Workers(2)), winograd.kernel_gradient(x, dy, Workers(2))
    assert y.dtype == dk.dtype == np.float32
    assert relative_error(y, exact_y) < ENGINE_REL_TOL["gemm"]
    assert relative_error(dk, exact_dk) < ENGINE_REL_TOL["gemm"]
    monkeypatch.setattr(winograd, "CHUNK_BYTES", 1)  # one image per chunk: 20 chunks
    for threads in (1, 3):  # the chunks are the same whatever the threads: the same bits
        np.testing.assert_array_equal(winograd.kernel_gradient(x, dy, Workers(threads)),
                                      winograd.kernel_gradient(x, dy, Workers(2)))  # fmt: skip
        np.testing.assert_array_equal(winograd.conv2d(x, k, Workers(threads)), y)
