"""Live cross-check against real Keras: regenerate the references, load every format.

Marked `keras`: needs the optional extra (``pip install keras torch==2.13.0``, run with
``KERAS_BACKEND=torch``); skipped with that reason otherwise. `.ci/run` installs it and
runs these every time. Full-size VGG16 files are written to a temporary directory
(7 formats, about 3.9 GB) and never committed.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

import vgg_np
from tests.conftest import DATA, KERAS_REL_TOL, relative_error
from tests.reference import make_keras_reference as ref
from vgg_np.layers import forward

pytestmark = pytest.mark.keras
os.environ.setdefault("KERAS_BACKEND", "torch")
pytest.importorskip(
    "keras", reason="needs the optional `keras` extra: pip install keras torch==2.13.0"
)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    start = time.perf_counter()
    full = ref.make_full_reference()
    paths = ref.write_all_formats(full["model"], full["weights"], tmp_path_factory.mktemp("vgg16"))
    print(
        f"\nKeras reference and {len(paths)} files written in {time.perf_counter() - start:.0f} s"
    )
    return full, paths


def test_committed_reference_is_what_keras_computes_today(live):
    full, _ = live
    with np.load(DATA / "keras_vgg16_reference.npz") as committed:
        np.testing.assert_array_equal(committed["x"], full["x"])
        for name, activation in full["activations"].items():
            error = relative_error(ref.take_slice(activation), committed[f"slice/{name}"])
            assert error < KERAS_REL_TOL, (name, error)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reference_forward_matches_keras_on_every_layer(live, dtype):
    # vgg_np.layers.forward itself (no engine, no file) on the weights Keras was given.
    full, _ = live
    weights = {name: tuple(a.astype(dtype) for a in t) for name, t in full["weights"].items()}
    keras_acts, errors = full["activations"], {}

    def compare(layer, values) -> None:
        assert values["output"].shape == keras_acts[layer.name].shape, layer.name
        errors[layer.name] = relative_error(values["output"], keras_acts[layer.name])

    table = vgg_np.VGG16(seed=0, classifier_activation=None).layers
    forward(table, weights, full["x"].astype(dtype), hook=compare)
    assert list(errors) == list(keras_acts)
    print(f"\nreference forward {dtype}: max |err| / max |Keras| per layer")
    for name, error in errors.items():
        print(f"  {name:<14}{error:.2e}")
    assert max(errors.values()) < KERAS_REL_TOL


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("fmt", ref.FORMATS)
def test_every_keras_file_matches_keras_on_every_layer(live, fmt, dtype):
    full, paths = live
    top = "notop" not in fmt
    model = vgg_np.VGG16(
        weights=paths[fmt], include_top=top, classifier_activation=None, dtype=dtype
    )
    activations = model.activations(full["x"])
    keras_acts = full["activations"]
    assert list(activations) == list(keras_acts)[: len(activations)]
    print(f"\n{fmt} {dtype}: max |err| / max |Keras|, max |err| per layer")
    worst = 0.0
    for name, got in activations.items():
        want = keras_acts[name]
        assert got.shape == want.shape, name
        error = relative_error(got, want)
        worst = max(worst, error)
        print(f"  {name:<14}{error:.2e}  {np.max(np.abs(got - want)):.2e}")
    assert worst < KERAS_REL_TOL
    if top:
        logits = activations["predictions"]
        np.testing.assert_array_equal(
            np.argsort(-logits, axis=1)[:, :5],
            np.argsort(-keras_acts["predictions"], axis=1)[:, :5],
        )


def test_committed_tiny_fixtures_are_what_keras_computes_today():
    weights = vgg_np.VGG(
        ref.TINY, input_shape=(32, 32, 3), classes=ref.TINY_CLASSES, seed=ref.TINY_SEED
    ).weights
    model = ref.build_keras(ref.TINY, 32, ref.TINY_CLASSES)
    ref.set_numpy_weights(model, weights)
    with np.load(DATA / "tiny_vgg16" / "keras_activations.npz") as committed:
        for name, activation in ref.keras_activations(model, committed["x"]).items():
            assert relative_error(activation, committed[f"act/{name}"]) < KERAS_REL_TOL, name


def test_layer_names_are_keras_applications_names(live):
    full, _ = live
    keras_names = [layer.name for layer in full["model"].layers[1:]]
    assert [layer.name for layer in vgg_np.VGG16(seed=0).layers] == keras_names
