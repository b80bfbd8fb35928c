"""Live cross-checks of what vgg_np.export writes: real Keras opens the whole models,
real torch loads the state dicts, and both compute what vgg_np computes.

- Keras 3 (``keras`` extra, ``KERAS_BACKEND=torch``): every model kind of
  tests/export/test_export.py written as ``.keras`` and as ``model.save`` ``.h5``,
  opened by ``keras.models.load_model`` and run on the same inputs as vgg_np, plus
  VGG16 at its full widths without the top;
- torch 2.13: torchvision-layout ``.pth`` files of VGGs whose head fits torchvision's
  classifier, loaded strictly into `reference.torch_vgg.TorchVGG` (torchvision's module
  tree) and run in float64 against vgg_np in float64.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from tests.conftest import HEADS_DIR, HEADS_FIXTURE_REL_TOL, KERAS_REL_TOL, relative_error
from tests.export.test_export import MODELS, TORCH_HEADS, WIDTHS, _statistics, build
from vgg_np import CONFIGS, VGG, export
from vgg_np.config import Layer

#: Inputs of unit scale: He-normal weights keep it, so softmax, sigmoid and tanh outputs
#: do not saturate (saturated, they would hide a wrong weight).
SCALE = 1.0
#: vgg_np in float64 against torch in float64 (the same sums in another order): a few eps.
FLOAT64_REL_TOL = 1e-12


def _inputs(model: VGG, seed: int = 0) -> np.ndarray:
    h, w, _ = model.input_shape
    shape = (h or 64, w or 48, 3)
    x = np.random.default_rng(seed).standard_normal((3, *shape)) * SCALE
    return x.astype(model.dtype)


@pytest.fixture(scope="module")
def keras():
    os.environ.setdefault("KERAS_BACKEND", "torch")
    return pytest.importorskip(
        "keras", reason="needs the optional `keras` extra: pip install keras torch==2.13.0"
    )


def _keras_outputs(keras, path, x: np.ndarray) -> np.ndarray:
    model = keras.models.load_model(path)
    fixed = model.input_shape[1:3]
    if None not in fixed:  # torchvision's free-size model was written at a fixed size
        assert fixed == x.shape[1:3], (fixed, x.shape)
    return keras.ops.convert_to_numpy(model(x, training=False))


@pytest.mark.keras
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize("kind", [*MODELS, "VGG16 widths, no top"])
def test_keras_opens_the_model_and_predicts_what_vgg_np_predicts(keras, tmp_path, kind, suffix):
    if kind == "VGG16 widths, no top":
        model = VGG(CONFIGS["vgg16"], include_top=False, seed=16)
    else:
        model = build(kind, seed=7)
    x = _inputs(model)
    if "adaptive" in kind:  # written at the size where torchvision's pool is the identity
        x = _inputs(VGG(WIDTHS, classes=5, input_shape=(32, 32, 3), seed=0))
    export.save(model, tmp_path / f"m{suffix}", layout="model" if suffix == ".h5" else None)
    theirs = _keras_outputs(keras, tmp_path / f"m{suffix}", x)
    ours = model(x)
    arguments = {**model.network.arguments(), "dtype": "float64"}
    oracle = VGG(**arguments, conv_algorithm="reference")
    oracle.set_weights(model.weights)
    exact = oracle(x.astype(np.float64))
    error, keras_error = relative_error(ours, theirs), relative_error(theirs, exact)
    print(
        f"\n{kind} {suffix}: max |vgg_np - Keras| / max |Keras| = {error:.2e}; "
        f"Keras against vgg_np's float64 oracle {keras_error:.2e}"
    )
    assert theirs.dtype == ours.dtype and theirs.shape == ours.shape
    assert error < KERAS_REL_TOL and keras_error < KERAS_REL_TOL


@pytest.mark.keras
def test_keras_reads_the_converted_committed_fixtures(keras, tmp_path):
    for name in ("vgg16_bn.pth", "vgg16_bn_custom_classifier.pth", "keras_gap_head.h5"):
        oracle = VGG.from_file(
            HEADS_DIR / name,
            data_format="channels_last",
            dtype="float64",
            conv_algorithm="reference",
        )
        export.convert(HEADS_DIR / name, tmp_path / "c.keras")
        h, w, _ = oracle.input_shape
        x = _inputs(VGG(WIDTHS, input_shape=(h or 224, w or 224, 3), seed=0))
        theirs = _keras_outputs(keras, tmp_path / "c.keras", x)
        error = relative_error(theirs, oracle(x.astype(np.float64)))
        print(f"\n{name} -> .keras: max |Keras - vgg_np float64| / max = {error:.2e}")
        # Nearly constant batch-norm channels magnify any float32 rounding there.
        assert error < HEADS_FIXTURE_REL_TOL, name


def _torch_twin(torch, model: VGG, head: tuple[Layer, ...] | None):
    """torchvision's VGG of the same widths and classifier (its adaptive pool to fc1's grid)."""
    from tests.reference.torch_vgg import TorchVGG

    if head is None:
        fc, classes, side = model.config.fc, model.classes, model.input_shape[0] // 32
    else:
        dense = [layer.units for layer in head if layer.kind == "dense"]
        fc, classes = tuple(dense[:-1]), dense[-1]
        side = 1 if head[0].kind == "global_avg" else model.input_shape[0] // 32
    return TorchVGG(
        model.config.blocks, fc, classes, pool_size=side, batch_norm=model.batch_norm is not None
    )


TORCH_MODELS = {
    **{f"head: {name}": dict(head=head) for name, head in TORCH_HEADS.items()},
    "VGG top": dict(classes=5),
    "batch norm, top": dict(classes=5, batch_norm=True),
}


@pytest.mark.torch
@pytest.mark.parametrize("kind", TORCH_MODELS)
def test_torch_loads_the_state_dict_and_computes_what_vgg_np_computes(tmp_path, kind):
    torch = pytest.importorskip("torch", reason="needs torch==2.13.0")
    arguments = dict(TORCH_MODELS[kind])
    head = arguments.pop("head", None)
    if head is not None:  # torch returns logits: the same head without its softmax
        head = arguments["head"] = (*head[:-1], Layer(head[-1].name, "dense", head[-1].units))
    else:
        arguments["classifier_activation"] = None
    model = VGG(WIDTHS, input_shape=(64, 64, 3), dtype="float64", seed=5, **arguments)
    model = _statistics(model, 5)
    export.save(model, tmp_path / "m.pth")
    net = _torch_twin(torch, model, head).double().eval()
    state = torch.load(tmp_path / "m.pth", weights_only=True)
    net.load_state_dict(state)  # strict: every key and shape torchvision's module tree has
    x = _inputs(model)
    with torch.no_grad():
        theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    error = relative_error(model(x), theirs)
    print(f"\n{kind}: max |vgg_np - torch| / max |torch| = {error:.2e} (float64)")
    assert error < FLOAT64_REL_TOL
