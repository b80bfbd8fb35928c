"""Full-size VGG16 at 224x224 against the committed Keras reference (no Keras needed).

The reference (tests/data/keras_vgg16_reference.npz, made by
tests/reference/make_keras_reference.py) holds two preprocessed images, Keras's logits
and slices of every layer's activations, for weights that vgg_np draws again here from
a seed. Checksums of those weights are committed too: if NumPy's random stream ever
changes, the test says so instead of reporting a false numerical failure.
"""

from __future__ import annotations

import numpy as np
import pytest

import vgg_np
from tests.conftest import DATA, KERAS_REL_TOL, relative_error
from tests.reference.make_keras_reference import checksums, full_weights, take_slice
from vgg_np.layers import forward


@pytest.fixture(scope="module")
def reference():
    with np.load(DATA / "keras_vgg16_reference.npz") as ref:
        return dict(ref)


@pytest.fixture(scope="module")
def weights(reference):
    weights = full_weights(int(reference["seed"]))
    expected = dict(
        line.split()[::-1]
        for line in (DATA / "keras_vgg16_weights.sha256").read_text().splitlines()
    )
    changed = [k for k, digest in checksums(weights).items() if expected.get(k) != digest]
    if changed:
        pytest.fail(
            f"the regenerated weights differ from the reference's ({len(changed)} tensors, "
            f"first {changed[0]}): NumPy's random stream changed, not vgg_np's arithmetic. "
            "Regenerate with `python tests/reference/make_keras_reference.py full`."
        )
    return weights


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_full_vgg16_matches_keras_on_every_layer(reference, weights, dtype):
    model = vgg_np.VGG16(seed=0, classifier_activation=None, dtype=dtype)
    model.set_weights(weights)
    activations = model.activations(reference["x"])
    assert len(activations) == 22  # Keras's 23 layers minus the input
    errors = {}
    for name, got in activations.items():
        want = reference[f"slice/{name}"]
        errors[name] = relative_error(take_slice(got), want)
    print(f"\n{dtype}: max |err| / max |Keras| per layer")
    for name, error in errors.items():
        print(f"  {name:<14}{error:.2e}")
    assert max(errors.values()) < KERAS_REL_TOL, errors
    logits, keras_logits = activations["predictions"], reference["slice/predictions"]
    top5 = np.argsort(-logits, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(top5, np.argsort(-keras_logits, axis=1, kind="stable")[:, :5])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reference_forward_matches_keras_on_every_layer(reference, weights, dtype):
    # The library's reference forward pass itself (no engine), on the same weights.
    table = vgg_np.VGG16(seed=0, classifier_activation=None).layers
    cast = {name: tuple(a.astype(dtype) for a in tensors) for name, tensors in weights.items()}
    errors = {}

    def compare(layer, values) -> None:
        assert values["output"].dtype == np.dtype(dtype), layer.name
        errors[layer.name] = relative_error(
            take_slice(values["output"]), reference[f"slice/{layer.name}"]
        )

    forward(table, cast, reference["x"].astype(dtype), hook=compare)
    assert len(errors) == 22
    print(f"\nreference forward {dtype}: max |err| / max |Keras| per layer")
    for name, error in errors.items():
        print(f"  {name:<14}{error:.2e}")
    assert max(errors.values()) < KERAS_REL_TOL, errors
