"""The model kinds of the composition matrix (`test_matrix.py`): one file each, tiny.

Committed fixtures where they exist (tests/data/heads, tests/data/tiny_vgg16; made by
tests/reference/make_heads_reference.py), the others written at test time with the
project's own writers: a seeded VGG11 at a non-square size, torchvision's vgg16_bn with
its classifier replaced, timm's layout, a Keras head ending Dropout -> Activation, an
ONNX graph whose Softmax feeds nothing, and what ``vgg-np train`` writes (batch norms trained, too).
"""

from __future__ import annotations

import json
import pathlib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from tests.conftest import HEADS_DIR as HEADS
from tests.conftest import TINY_DIR as TINY
from vgg_np import VGG, VGGConfig, formats
from vgg_np.formats.contract import Family, Provenance
from vgg_np.formats.safetensors_file import open_safetensors, write_safetensors
from vgg_np.formats.torchvision import to_state_dict

WIDTHS = ((4, 4), (8, 8), (8, 8, 8), (8, 8, 8), (8, 8, 8))  # VGG16's topology, tiny


def _vgg11(tmp: pathlib.Path) -> pathlib.Path:
    config = VGGConfig("vgg11", ((4,), (8,), (8, 8), (8, 8), (8, 8)), fc=(16, 16))
    model = VGG(config, input_shape=(64, 40, 3), classes=5, seed=11)
    kernel, bias = model.weights["predictions"]  # logits of a few units: no saturated softmax
    model.set_weights({**model.weights, "predictions": (kernel * 0.003, bias)})
    provenance = Provenance(
        "seeded", Family.KERAS, "caffe", "keras", (64, 40), "declared Keras-trained by the test"
    )
    formats.write_weights(tmp / "vgg11.npz", model.weights, provenance=provenance)
    return tmp / "vgg11.npz"


def _new_classifier(tmp: pathlib.Path) -> pathlib.Path:
    """torchvision's vgg16_bn with ``model.classifier`` replaced (Linear, ReLU, Dropout, Linear)."""
    rng = np.random.default_rng(12)
    with open_safetensors(HEADS / "vgg16_bn.safetensors") as state:
        tensors = {k: np.asarray(v) for k, v in state.items() if k.startswith("features.")}
    tensors["classifier.0.weight"] = rng.standard_normal((16, 8 * 49)).astype(np.float32) * 0.07
    tensors["classifier.0.bias"] = rng.standard_normal(16).astype(np.float32) * 0.1
    tensors["classifier.3.weight"] = rng.standard_normal((5, 16)).astype(np.float32) * 0.35
    tensors["classifier.3.bias"] = rng.standard_normal(5).astype(np.float32) * 0.1
    write_safetensors(tmp / "new_classifier.safetensors", tensors)
    return tmp / "new_classifier.safetensors"


def _timm(tmp: pathlib.Path) -> pathlib.Path:
    """timm's layout: torchvision's features, the classifier as 7x7 and 1x1 convolutions."""
    base = VGG(VGGConfig("vgg16", WIDTHS), include_top=False, seed=13).weights
    tensors = to_state_dict(base, list(base))
    rng = np.random.default_rng(13)
    shapes = {"pre_logits.fc1": (16, 8, 7, 7), "pre_logits.fc2": (16, 16, 1, 1), "head.fc": (5, 16)}
    for module, shape in shapes.items():
        scale = np.sqrt(2 / np.prod(shape[1:]))
        tensors[f"{module}.weight"] = (rng.standard_normal(shape) * scale).astype(np.float32)
        tensors[f"{module}.bias"] = (rng.standard_normal(shape[0]) * 0.1).astype(np.float32)
    write_safetensors(tmp / "timm.safetensors", tensors)
    return tmp / "timm.safetensors"


def _dropout_activation(tmp: pathlib.Path) -> pathlib.Path:
    """The Keras Flatten head ending ``Dense (linear) -> Dropout -> Activation("softmax")``."""
    source = zipfile.ZipFile(HEADS / "keras_flatten_head.keras")
    config = json.loads(source.read("config.json"))
    layers = config["config"]["layers"]
    layers[-1]["config"]["activation"] = "linear"
    layers.append({"class_name": "Dropout", "config": {"name": "dropout_2", "rate": 0.3}})
    layers.append({"class_name": "Activation", "config": {"name": "act", "activation": "softmax"}})
    with zipfile.ZipFile(tmp / "dropout_activation.keras", "w") as target:
        for name in source.namelist():
            target.writestr(
                name, json.dumps(config) if name == "config.json" else source.read(name)
            )
    return tmp / "dropout_activation.keras"


def _unused_softmax(tmp: pathlib.Path) -> pathlib.Path:
    """The torch-exported GAP head declaring its logits: its Softmax feeds nothing."""
    onnx = pytest.importorskip("onnx", reason="reading ONNX needs the onnx package")
    model = onnx.load(HEADS / "keras_gap_head_torch.onnx")
    model.graph.output[0].name = model.graph.node[-1].input[0]
    onnx.save(model, tmp / "unused_softmax.onnx")
    return tmp / "unused_softmax.onnx"


def _fine_tuned(tmp: pathlib.Path) -> pathlib.Path:
    """What ``vgg-np train`` writes: a head trained on a folder, block 5 unfrozen, its labels."""
    from vgg_np.train import fit
    from vgg_np.train.data import write_shapes_folder

    write_shapes_folder(tmp / "pictures", 3, size=40, seed=5)
    base = VGG(VGGConfig("vgg16", WIDTHS), include_top=False, input_shape=(64, 40, 3), seed=14)
    provenance = Provenance(
        "seeded", Family.KERAS, "caffe", "keras", (64, 40), "declared Keras-trained by the test"
    )
    formats.write_weights(tmp / "base.npz", base.weights, provenance=provenance)
    fit(
        tmp / "pictures", tmp / "base.npz", tmp / "fine_tuned.npz", head="gap,dense:8,dropout:0.3",
        epochs=2, unfreeze=1, batch_size=4, cache_dir=tmp / "cache", verbose=0,
    )  # fmt: skip
    return tmp / "fine_tuned.npz"


def _fine_tuned_batch_norms(tmp: pathlib.Path) -> pathlib.Path:
    """``vgg-np train`` on a torchvision vgg16_bn: block 5's batch norms and a head's bn
    trained, their running statistics moved (PyTorch's and Keras's conventions)."""
    from vgg_np.train import fit
    from vgg_np.train.data import write_shapes_folder

    write_shapes_folder(tmp / "pictures", 3, size=40, seed=5)
    base = VGG(
        VGGConfig("vgg16", WIDTHS), include_top=False, input_shape=(64, 40, 3), seed=15,
        batch_norm=True,
    )  # fmt: skip
    provenance = Provenance(
        "seeded", Family.TORCHVISION, "torch", "torchvision", (64, 40), "declared by the test"
    )
    formats.write_weights(tmp / "base.pth", base.weights, provenance=provenance)
    fit(
        tmp / "pictures", tmp / "base.pth", tmp / "fine_tuned_bn.npz", head="gap,bn,dense:8",
        epochs=2, unfreeze=1, batch_size=4, cache_dir=tmp / "cache", verbose=0,
    )  # fmt: skip
    return tmp / "fine_tuned_bn.npz"


def _committed(path: pathlib.Path) -> Callable[[pathlib.Path], pathlib.Path]:
    def build(tmp: pathlib.Path) -> pathlib.Path:
        if path.suffix == ".onnx":
            pytest.importorskip("onnx", reason="reading ONNX needs the onnx package")
        return path

    return build


@dataclass(frozen=True)
class Kind:
    """One row: how to get its file."""

    build: Callable[[pathlib.Path], pathlib.Path]


KINDS: dict[str, Kind] = {
    "VGG11, npz, 64x40": Kind(_vgg11),
    "VGG16, Keras Applications h5": Kind(_committed(TINY / "applications.h5")),
    "VGG16 notop, any size": Kind(_committed(TINY / "applications_notop.h5")),
    "vgg16_bn, torchvision": Kind(_committed(HEADS / "vgg16_bn.safetensors")),
    "torchvision, new classifier": Kind(_new_classifier),
    "timm layout, 224x224": Kind(_timm),
    "Keras Flatten head, .keras": Kind(_committed(HEADS / "keras_flatten_head.keras")),
    "Keras GAP head, .h5": Kind(_committed(HEADS / "keras_gap_head.h5")),
    "Keras Dropout->Activation head": Kind(_dropout_activation),
    "torch ONNX, GAP head": Kind(_committed(HEADS / "keras_gap_head_torch.onnx")),
    "tf2onnx ONNX, Flatten head": Kind(_committed(HEADS / "keras_flatten_head_tf2onnx.onnx")),
    "ONNX, unused Softmax": Kind(_unused_softmax),
    "vgg-np train output, npz": Kind(_fine_tuned),
    "vgg-np train output, batch norms trained": Kind(_fine_tuned_batch_norms),
}
