"""Tests of vgg_np.engine: Winograd and chunked GEMM against the teaching kernels and the
float64 oracle, threading, fused pooling, buffers and thread settings."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from threadpoolctl import threadpool_info

import vgg_np
from tests.conftest import DATA, ENGINE_REL_TOL, LOGITS_REL_TOL, WINOGRAD_SCALED_TOL, relative_error
from tests.conftest import SMALL_CONFIG as SMALL
from tests.reference.make_keras_reference import full_weights
from vgg_np import VGG, ops
from vgg_np import engine as engine_module
from vgg_np.engine import (
    Engine,
    cache,
    measure,
    winograd_conv3x3,
    winograd_kernel,
    winograd_matrices,
)
from vgg_np.engine.plan import default_choice
from vgg_np.layers import forward, shapes


@pytest.fixture
def every_layer_on_the_threads(monkeypatch):
    """The small test networks' layers are below the size the engine hands to its threads."""
    monkeypatch.setattr(engine_module, "MIN_PARALLEL_MACS", 0)


def reference_forward(model: VGG, x: np.ndarray) -> dict:
    """Every layer's output of the library's reference forward pass, in float64."""
    weights = {name: tuple(a.astype(np.float64) for a in t) for name, t in model.weights.items()}
    out = {}
    forward(
        model.layers,
        weights,
        x.astype(np.float64),
        hook=lambda layer, values: out.setdefault(layer.name, values["output"]),
    )
    return out


@pytest.mark.parametrize("m", [2, 4])
def test_winograd_matrices_compute_a_1d_correlation(m):
    bt, g, at = winograd_matrices(m)
    rng = np.random.default_rng(m)
    for _ in range(20):
        d, k = rng.standard_normal(m + 2), rng.standard_normal(3)
        np.testing.assert_allclose(
            at @ ((g @ k) * (bt @ d)), np.correlate(d, k, "valid"), atol=1e-12
        )


def test_winograd_kernel_layout():
    kernel = np.random.default_rng(0).standard_normal((3, 3, 2, 5))
    u = winograd_kernel(kernel, 2)
    _, g, _ = winograd_matrices(2)
    assert u.shape == (16, 2, 5)
    expected = g @ kernel[:, :, 1, 3] @ g.T  # (a_i, a_j)
    np.testing.assert_allclose(u[:, 1, 3].reshape(4, 4).T, expected, atol=1e-15)


@given(
    st.integers(1, 3), st.integers(1, 13), st.integers(1, 13), st.integers(1, 6), st.integers(1, 6),
    st.sampled_from([2, 4]), st.integers(0, 2**32 - 1),
)  # fmt: skip
def test_winograd_conv_equals_direct_conv(n, h, w, c, o, m, seed):
    rng = np.random.default_rng(seed)
    x, kernel = rng.standard_normal((n, h, w, c)), rng.standard_normal((3, 3, c, o))
    expected = ops.conv2d(x, kernel, padding="same")
    np.testing.assert_allclose(winograd_conv3x3(x, kernel, m), expected, atol=1e-11, rtol=1e-11)
    got32 = winograd_conv3x3(x.astype(np.float32), kernel.astype(np.float32), m)
    assert got32.dtype == np.float32
    # Winograd's transforms mix a whole tile and all 9 taps (coefficients up to 8, terms
    # that cancel), so its rounding scales with max |x| times the kernel's sum of |taps|,
    # not with each output's own terms (a 1x1 input still meets the whole kernel).
    scale = np.max(np.abs(x)) * np.max(np.abs(kernel).sum(axis=(0, 1, 2)))
    assert np.max(np.abs(got32 - expected)) <= WINOGRAD_SCALED_TOL[m] * scale


@pytest.mark.parametrize("algorithm", ["auto", "gemm", "winograd", "naive"])
@pytest.mark.parametrize("threads", [1, 2])
def test_every_algorithm_matches_the_teaching_kernels(
    algorithm, threads, every_layer_on_the_threads
):
    model = VGG(
        SMALL,
        classes=7,
        seed=3,
        classifier_activation=None,
        conv_algorithm=algorithm,
        threads=threads,
    )
    x = np.random.default_rng(1).standard_normal((3, 64, 64, 3)).astype(np.float32)
    exact = reference_forward(model, x)
    got = model.activations(x)
    assert list(got) == list(exact)
    tolerance = ENGINE_REL_TOL.get(algorithm, ENGINE_REL_TOL["gemm"])
    for name, y in got.items():
        assert y.dtype == np.float32
        assert relative_error(y, exact[name]) < tolerance, name
    np.testing.assert_array_equal(model(x), got["predictions"])  # fused pools: same numbers


def test_odd_sizes_without_the_top():
    model = VGG(SMALL, include_top=False, input_shape=None, seed=4)
    x = np.random.default_rng(2).standard_normal((2, 45, 67, 3)).astype(np.float32)
    exact = reference_forward(model, x)
    got = model.activations(x)
    assert got["block5_pool"].shape == (2, 1, 2, 24)
    for name, y in got.items():
        assert relative_error(y, exact[name]) < ENGINE_REL_TOL["auto"], name
    np.testing.assert_allclose(model(x), got["block5_pool"], rtol=1e-6)


def test_float64_auto_is_direct_and_near_exact():
    model = VGG(SMALL, classes=7, seed=3, dtype="float64")
    assert set(model.engine.algorithms((64, 64, 3)).values()) == {"gemm"}
    x = np.random.default_rng(1).standard_normal((2, 64, 64, 3))
    exact = reference_forward(model, x)
    assert relative_error(model.activations(x)["fc1"], exact["fc1"]) < 1e-13


def test_outputs_are_copies_not_reused_buffers():
    model = VGG(SMALL, classes=7, seed=3)
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((1, 64, 64, 3)).astype(np.float32) for _ in range(2))
    first = model(a)
    kept = first.copy()
    model(b)
    np.testing.assert_array_equal(first, kept)
    features = VGG(SMALL, include_top=False, seed=3)
    pooled = features(a)
    features(b)
    assert not np.shares_memory(pooled, features(b))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"conv_algorithm": "gemm"},
        {"dtype": "float64"},
        {"include_top": False, "pooling": "avg", "input_shape": None},
        {"adaptive_pool": 2, "input_shape": None},
    ],
)
@pytest.mark.parametrize("chunk_bytes", [engine_module.CHUNK_BYTES, 4096])
def test_an_image_gets_the_same_bits_in_any_batch_and_with_any_threads(
    options, chunk_bytes, monkeypatch, every_layer_on_the_threads
):
    # 4096-byte chunks: several chunks per image and per layer, as on large images.
    monkeypatch.setattr(engine_module, "CHUNK_BYTES", chunk_bytes)
    size = (64, 64) if "input_shape" not in options else (45, 67)
    rng = np.random.default_rng(5)
    image = rng.standard_normal((1, *size, 3))
    others = rng.standard_normal((3, *size, 3))
    alone = None
    for threads in (1, 2, 3):
        model = VGG(SMALL, classes=7, seed=3, threads=threads, **options)
        if alone is None:
            alone = model.activations(image)
        for position in range(4):
            batch = np.insert(others, position, image[0], axis=0)  # (4, H, W, 3)
            got = model.activations(batch)
            for name, y in got.items():
                assert np.array_equal(y[position], alone[name][0]), (threads, position, name)
            last = list(alone)[-1]
            np.testing.assert_array_equal(model(batch)[position], alone[last][0])


def test_a_batch_in_slices_gives_what_it_gives_whole(monkeypatch):
    model = VGG(SMALL, classes=7, seed=3)
    x = np.random.default_rng(6).standard_normal((5, 64, 64, 3)).astype(np.float32)
    whole, whole_activations = model(x), model.activations(x)
    monkeypatch.setattr(engine_module, "SLICE_VALUES", 2 * 64 * 64 * 8)  # 2 images a slice
    assert model.engine.slice_images((64, 64, 3)) == 2
    np.testing.assert_array_equal(model(x), whole)
    sliced = model.activations(x)
    assert list(sliced) == list(whole_activations)
    for name, y in sliced.items():
        np.testing.assert_array_equal(y, whole_activations[name], err_msg=name)


def test_an_empty_batch_is_refused():
    with pytest.raises(ValueError, match="non-empty batch"):
        VGG(SMALL, classes=7, seed=3).engine.predict(np.zeros((0, 64, 64, 3), np.float32))


def test_thread_settings_are_restored():
    before = [(i["internal_api"], i["num_threads"]) for i in threadpool_info()]
    VGG(SMALL, classes=7, seed=3, threads=2)(np.zeros((1, 64, 64, 3), np.float32))
    assert [(i["internal_api"], i["num_threads"]) for i in threadpool_info()] == before


def test_bad_engine_arguments():
    with pytest.raises(ValueError, match="`conv_algorithm` must be one of"):
        VGG(SMALL, seed=0, conv_algorithm="fft")
    with pytest.raises(ValueError, match="`threads` must be None or a positive int"):
        VGG(SMALL, seed=0, threads=0)
    with pytest.raises(ValueError, match="must be one of"):
        Engine([], {}, "fast")


def f4_everywhere(model, path) -> None:
    """A plan file: F(4x4) on every convolution, the first and the 14x14 ones too (the least
    accurate plan the measuring planner could choose)."""
    plans = {}
    for index, (layer, shape, _) in enumerate(shapes(model.engine.layers, (224, 224, 3))):
        if layer.kind == "conv":
            pool = model.engine.layers[index + 1].kind == "pool"
            key = measure.layer_key("auto", "float32", (*shape, layer.units), pool)
            plans[key] = default_choice("winograd-4", (*shape, layer.units), 4, pool).to_dict()
    document = {"format": cache.FORMAT, "machine": {"version": cache.VERSION}, "plans": plans}
    path.write_text(json.dumps(document))


def test_full_vgg16_default_path_is_close_to_the_float64_oracle(tmp_path):
    with np.load(DATA / "keras_vgg16_reference.npz") as ref:
        x = ref["x"]
    weights = full_weights()
    oracle = vgg_np.VGG16(
        seed=0, classifier_activation=None, dtype="float64", conv_algorithm="reference"
    )
    oracle.set_weights(weights)
    exact = oracle.activations(x)
    f4_everywhere(vgg_np.VGG16(seed=0), tmp_path / "f4.json")
    for algorithm in ("auto", "gemm", tmp_path / "f4.json"):
        if isinstance(algorithm, str):
            model = vgg_np.VGG16(seed=0, classifier_activation=None, conv_algorithm=algorithm)
        else:  # a plan file
            model = vgg_np.VGG16(seed=0, classifier_activation=None, plan=algorithm)
            assert set(model.engine.algorithms((224, 224, 3)).values()) == {"winograd-4"}
            algorithm = "winograd"
        model.set_weights(weights)
        got = model.activations(x)
        errors = {name: relative_error(y, exact[name]) for name, y in got.items()}
        print(f"\n{algorithm}: " + " ".join(f"{k}:{v:.1e}" for k, v in errors.items()))
        assert max(errors.values()) < ENGINE_REL_TOL[algorithm]
        assert errors["predictions"] < LOGITS_REL_TOL
