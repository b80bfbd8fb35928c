"""Tests of vgg_np.export and vgg_np.formats.keras_writer: whole models written as Keras 3
``.keras`` archives and ``model.save`` ``.h5`` files, and torchvision state dicts of heads,
read back by vgg_np as the same network with the same tensors; refusals and damaged files.

Real Keras and torch open the same files in tests/crosscheck/test_export.py.
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import zipfile

import h5py
import numpy as np
import pytest

from tests.conftest import HEADS_DIR, relative_error, run_vgg_np
from vgg_np import VGG, VGGConfig, export, formats
from vgg_np.config import Layer
from vgg_np.formats import keras_writer
from vgg_np.formats.contract import Family, Provenance
from vgg_np.formats.keras_config import KERAS_CLASSES

HEADS = HEADS_DIR
WIDTHS = VGGConfig("vgg16", ((4, 4), (8, 8), (8, 8, 8), (8, 8, 8), (8, 8, 8)), fc=(16, 16))
KERAS_HEAD = (
    Layer("flatten", "flatten"),
    Layer("dense", "dense", 16, "relu"),
    Layer("batch_normalization", "batch_norm", eps=1e-3),
    Layer("dropout", "dropout", rate=0.5),
    Layer("dense_1", "dense", 5, "softmax"),
)


def _statistics(model: VGG, seed: int) -> VGG:
    """Batch-norm statistics and scales that differ from 0 and 1, so a lost one shows."""
    rng = np.random.default_rng(seed)
    weights = model.weights
    for name, tensors in weights.items():
        if len(tensors) == 4:
            c = tensors[0].shape[0]
            weights[name] = tuple(
                a.astype(model.dtype)
                for a in (
                    rng.uniform(0.5, 1.5, c),
                    rng.normal(0, 0.1, c),
                    rng.normal(0, 0.1, c),
                    rng.uniform(0.5, 2.0, c),
                )
            )
    model.set_weights(weights)
    return model


#: Every model kind vgg_np builds: name -> (VGG arguments, what Keras's layers add).
MODELS = {
    "plain, top, 32x32": dict(input_shape=(32, 32, 3), classes=5),
    "plain, top, 64x40, logits": dict(
        input_shape=(64, 40, 3), classes=5, classifier_activation=None
    ),
    "no top, any size": dict(include_top=False),
    "no top, average pooling": dict(include_top=False, pooling="avg"),
    "no top, max pooling, 64x40": dict(include_top=False, pooling="max", input_shape=(64, 40, 3)),
    "batch norm, top, 64x40": dict(batch_norm=True, input_shape=(64, 40, 3), classes=5),
    "batch norm 1e-3, no top": dict(batch_norm=1e-3, include_top=False),
    "Keras head, 64x40": dict(input_shape=(64, 40, 3), head=KERAS_HEAD),
    "GAP tanh head": dict(head=(Layer("gap", "global_avg"), Layer("out", "dense", 3, "tanh"))),
    "GMP, dropout with sigmoid": dict(
        head=(
            Layer("gmp", "global_max"),
            Layer("d", "dense", 7, "relu"),
            Layer("drop", "dropout", activation="sigmoid", rate=0.2),
        )
    ),
    "activation layer head": dict(
        head=(
            Layer("gap", "global_avg"),
            Layer("logits", "dense", 4),
            Layer("probabilities", "activation", activation="softmax"),
        )
    ),
    "torchvision's adaptive pool": dict(adaptive_pool=1, classes=5),
    "float64, 64x40": dict(input_shape=(64, 40, 3), classes=5, dtype="float64"),
}
#: Kinds whose layer table Keras holds in other rows (an activation split off, a pool
#: that is the identity left out): what vgg_np reads back computes the same.
RESHAPED = {"GMP, dropout with sigmoid", "torchvision's adaptive pool"}


def build(kind: str, seed: int = 0) -> VGG:
    return _statistics(VGG(WIDTHS, seed=seed, **MODELS[kind]), seed)


def images(model: VGG, n: int = 2, seed: int = 1) -> np.ndarray:
    h, w, _ = model.input_shape
    shape = (h or 48, w or 40, 3)
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(model.dtype)


def same_weights(a: VGG, b: VGG) -> None:
    assert list(a.weights) == list(b.weights)
    for name, tensors in a.weights.items():
        assert len(tensors) == len(b.weights[name]), name
        for x, y in zip(tensors, b.weights[name], strict=True):
            assert x.dtype == y.dtype, name
            np.testing.assert_array_equal(x, y, err_msg=name)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
@pytest.mark.parametrize("kind", MODELS)
def test_a_written_model_reads_back_as_the_same_network(tmp_path, kind, suffix):
    model = build(kind)
    path = tmp_path / f"model{suffix}"
    written = export.save(model, path, layout="model" if suffix == ".h5" else None)
    assert written.startswith("keras-zip" if suffix == ".keras" else "keras-h5 (model.save")
    back = VGG.from_file(path, dtype=model.dtype)
    same_weights(model, back)
    if kind not in RESHAPED:
        assert back.layers == model.layers
    x = images(back)
    # The same table runs the same kernels: the same bits; a reshaped one, within rounding.
    expected, actual = model(x), back(x)
    if kind in RESHAPED:
        assert relative_error(actual, expected) < 1e-6, kind
    else:
        np.testing.assert_array_equal(actual, expected)
    assert back.weights_provenance.recorded and back.output_kind == model.output_kind


def test_a_keras_archive_holds_what_keras_writes(tmp_path):
    model = build("batch norm, top, 64x40")
    export.save(model, tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as zf:
        assert zf.namelist() == ["metadata.json", "config.json", "model.weights.h5"]
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
        metadata = json.loads(zf.read("metadata.json"))
        config = json.loads(zf.read("config.json"))
        zf.extract("model.weights.h5", tmp_path)
    assert metadata["keras_version"] == keras_writer.KERAS_VERSION
    assert metadata["vgg_np.family"] == "vgg_np" and metadata["vgg_np.input_size"] == "64x40"
    layers = config["config"]["layers"]
    assert config["class_name"] == "Functional" and layers[0]["class_name"] == "InputLayer"
    assert layers[0]["config"]["batch_shape"] == [None, 64, 40, 3]
    # conv (linear), batch norm, its ReLU: three Keras layers per vgg_np conv + bn pair
    assert [layer["class_name"] for layer in layers[1:5]] == [
        "Conv2D", "BatchNormalization", "Activation", "Conv2D",
    ]  # fmt: skip
    assert layers[1]["config"]["activation"] == "linear" and layers[3]["name"].endswith("_relu")
    for previous, layer in itertools.pairwise(layers):  # a chain, by name
        history = layer["inbound_nodes"][0]["args"][0]["config"]["keras_history"]
        assert history == [previous["name"], 0, 0]
    assert config["config"]["output_layers"] == [layers[-1]["name"], 0, 0]
    classes = {layer["class_name"] for layer in layers[1:]}
    assert classes <= set(KERAS_CLASSES.values())
    with h5py.File(tmp_path / "model.weights.h5") as f:
        # Keras loads by class and counter in layer order: HDF5 sorts conv2d_10 before conv2d_2.
        assert f["layers/conv2d_12/vars"].attrs["name"] == "block5_conv3"
        assert f["layers/batch_normalization_1/vars"].attrs["name"] == "block1_conv2_bn"
        np.testing.assert_array_equal(
            f["layers/batch_normalization_1/vars/3"], model.weights["block1_conv2_bn"][3]
        )
        assert f["layers/max_pooling2d_4/vars"].attrs["name"] == "block5_pool"
        assert len(f["layers/input_layer/vars"]) == 0


def test_a_model_h5_holds_what_keras_writes(tmp_path):
    model = build("Keras head, 64x40")
    export.save(model, tmp_path / "m.h5", layout="model")
    with h5py.File(tmp_path / "m.h5") as f:
        config = json.loads(f.attrs["model_config"])
        assert "module" not in config and f.attrs["vgg_np.input_size"] == "64x40"
        root = f["model_weights"]
        names = [n.decode() for n in root.attrs["layer_names"]]
        assert names[0] == "input_layer" and names[-1] == "dense_1"
        weight_names = [n.decode() for n in root["batch_normalization"].attrs["weight_names"]]
        assert weight_names == [
            "batch_normalization/gamma", "batch_normalization/beta",
            "batch_normalization/moving_mean", "batch_normalization/moving_variance",
        ]  # fmt: skip
        assert root["block1_pool"].attrs["weight_names"].dtype.kind == "f"  # empty: no weights
        np.testing.assert_array_equal(root["dense/dense/kernel"], model.weights["dense"][0])


def test_the_h5_layout_defaults_to_keras_applications_for_a_plain_vgg(tmp_path):
    plain, head = build("plain, top, 32x32"), build("Keras head, 64x40")
    assert export.save(plain, tmp_path / "a.h5") == "keras-h5 (Keras Applications layout)"
    assert export.save(head, tmp_path / "b.h5").startswith("keras-h5 (model.save layout")
    assert export.save(plain, tmp_path / "c.h5", layout="model").startswith("keras-h5 (model")
    with pytest.raises(ValueError, match="Keras Applications layout holds a plain VGG"):
        export.save(head, tmp_path / "d.h5", layout="applications")
    with pytest.raises(ValueError, match=r"applies to \.h5 only \(applications or model\)"):
        export.save(plain, tmp_path / "e.keras", layout="model")
    assert not (tmp_path / "d.h5").exists() and not (tmp_path / "e.keras").exists()


def test_provenance_travels_in_the_archive(tmp_path):
    model = build("batch norm, top, 64x40")
    provenance = Provenance(
        "pytorch (torchvision layout)", Family.TORCHVISION, "torch", "torchvision"
    )
    formats.write_weights(
        tmp_path / "m.keras", model.weights, provenance=provenance,
        info=export.architecture_info(model.network),
    )  # fmt: skip
    back = VGG.from_file(tmp_path / "m.keras")
    assert back.weights_provenance.family == Family.TORCHVISION
    assert back.weights_provenance.preprocess == "torch"
    # The file declares its last activation: not torch's logits, but what was written.
    assert back.classifier_activation == "softmax"


@pytest.mark.parametrize(
    "name",
    [
        "keras_flatten_head.keras", "keras_gap_head.h5", "vgg16_bn.pth", "timm_vgg16.pth",
        "vgg16_bn_custom_classifier.pth",
    ],
)  # fmt: skip
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_convert_writes_what_from_file_reads(tmp_path, name, suffix):
    source = VGG.from_file(HEADS / name, data_format="channels_last")
    layout = "model" if suffix == ".h5" else None
    read, written = export.convert(HEADS / name, tmp_path / f"c{suffix}", layout=layout)
    assert read.path.endswith(repr(name)[1:]) and "whole model" in written
    back = VGG.from_file(tmp_path / f"c{suffix}")
    assert back.weights_provenance.family == source.weights_provenance.family
    same_weights(source, back)
    x = images(back)
    # torchvision's free-size models are fixed where their adaptive pool is the identity.
    assert back.input_shape[:2] == (
        source.input_shape[:2] if source.input_shape[0] else x.shape[1:3]
    )
    assert relative_error(back(x), source(x)) < 1e-6


def test_convert_without_a_whole_network_still_writes_tensors(tmp_path):
    weights = {"fc1": (np.ones((4, 2), np.float32), np.zeros(2, np.float32))}
    formats.write_npz(tmp_path / "w.npz", weights)
    _, written = export.convert(tmp_path / "w.npz", tmp_path / "w.safetensors", layout="keras")
    assert written == "safetensors (Keras layout)"
    with pytest.raises(ValueError, match=r"needs the model's layer table.*no VGG convolution"):
        export.convert(tmp_path / "w.npz", tmp_path / "w.keras")
    assert not (tmp_path / "w.keras").exists()


def test_formats_alone_refuse_a_whole_model_without_its_table(tmp_path):
    model = build("plain, top, 32x32")
    model.save_weights(tmp_path / "w.npz")
    with pytest.raises(keras_writer.NeedsArchitecture, match=r"vgg_np\.export"):
        formats.convert(tmp_path / "w.npz", tmp_path / "w.keras")
    with pytest.raises(keras_writer.NeedsArchitecture):
        formats.write_weights(tmp_path / "w.h5", model.weights, layout="model")
    assert sorted(os.listdir(tmp_path)) == ["w.npz"]  # nothing half-written, no temporaries


def test_an_adaptive_pool_keras_cannot_compute_is_refused(tmp_path):
    # fc1 of a 1x1 pool on the 2x2 map of a 64x64 input: no Keras layer averages so.
    model = VGG(WIDTHS, adaptive_pool=1, input_shape=(64, 64, 3), classes=5, seed=0)
    with pytest.raises(ValueError, match=r"'avgpool'.*adaptive average pool to 1x1 on a 2x2"):
        export.save(model, tmp_path / "m.keras")
    assert not (tmp_path / "m.keras").exists()


def test_an_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    model = build("plain, top, 32x32")
    (tmp_path / "m.keras").write_bytes(b"the old file")

    def fail(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(keras_writer, "_weights_h5", fail)
    with pytest.raises(KeyboardInterrupt):
        export.save(model, tmp_path / "m.keras")
    assert sorted(os.listdir(tmp_path)) == ["m.keras"]
    assert (tmp_path / "m.keras").read_bytes() == b"the old file"


def test_a_target_that_is_a_directory_is_refused(tmp_path):
    (tmp_path / "m.keras").mkdir()
    with pytest.raises(OSError):
        export.save(build("plain, top, 32x32"), tmp_path / "m.keras")
    assert os.listdir(tmp_path) == ["m.keras"]


def _rewrite_member(path: pathlib.Path, member: str, data: bytes) -> None:
    with zipfile.ZipFile(path) as zf:
        members = {name: zf.read(name) for name in zf.namelist()}
    members[member] = data
    with zipfile.ZipFile(path, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content)


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        (b"{not json", "its metadata.json is not JSON"),
        (b"[1, 2]", "its metadata.json is not a JSON object"),
        (json.dumps({"vgg_np.family": "klingon"}).encode(), "unknown family 'klingon'"),
        (json.dumps({"vgg_np.family": "keras", "vgg_np.input_size": "0x3"}).encode(), "input size"),
    ],
)
def test_a_damaged_metadata_record_is_an_error(tmp_path, metadata, message):
    export.save(build("plain, top, 32x32"), tmp_path / "m.keras")
    _rewrite_member(tmp_path / "m.keras", "metadata.json", metadata)
    with pytest.raises(ValueError, match=message):
        VGG.from_file(tmp_path / "m.keras")


def test_a_truncated_or_altered_archive_is_an_error(tmp_path):
    export.save(build("GAP tanh head"), tmp_path / "m.keras")
    data = (tmp_path / "m.keras").read_bytes()
    (tmp_path / "cut.keras").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"cut\.keras"):
        VGG.from_file(tmp_path / "cut.keras")
    config = json.loads(zipfile.ZipFile(tmp_path / "m.keras").read("config.json"))
    config["config"]["layers"][3]["inbound_nodes"][0]["args"][0]["config"]["keras_history"][0] = (
        "input_layer"  # block1_pool reads the input: a branch
    )
    _rewrite_member(tmp_path / "m.keras", "config.json", json.dumps(config).encode())
    with pytest.raises(ValueError, match="no branches"):
        VGG.from_file(tmp_path / "m.keras")


def test_a_base_batch_norm_must_be_followed_by_its_relu(tmp_path):
    export.save(build("batch norm 1e-3, no top"), tmp_path / "m.keras")
    config = json.loads(zipfile.ZipFile(tmp_path / "m.keras").read("config.json"))
    layers = config["config"]["layers"]
    assert layers[3]["class_name"] == "Activation"
    layers[3]["config"]["activation"] = "tanh"
    _rewrite_member(tmp_path / "m.keras", "config.json", json.dumps(config).encode())
    with pytest.raises(ValueError, match=r"'block1_conv1' \(Conv2D\) has \{'activation': 'linear'"):
        VGG.from_file(tmp_path / "m.keras")


def test_base_batch_norms_with_two_epsilons_are_refused(tmp_path):
    export.save(build("batch norm 1e-3, no top"), tmp_path / "m.keras")
    config = json.loads(zipfile.ZipFile(tmp_path / "m.keras").read("config.json"))
    config["config"]["layers"][2]["config"]["epsilon"] = 1e-5
    _rewrite_member(tmp_path / "m.keras", "config.json", json.dumps(config).encode())
    with pytest.raises(ValueError, match=r"epsilons \[1e-05, 0.001\]"):
        VGG.from_file(tmp_path / "m.keras")


# -- torchvision's layout: a head that fits its classifier ---------------------------------


TORCH_HEADS = {
    "flatten, dropout": (
        Layer("flatten", "flatten"),
        Layer("hidden", "dense", 16, "relu"),
        Layer("drop", "dropout", rate=0.5),
        Layer("out", "dense", 5),
    ),
    "global average, softmax": (Layer("gap", "global_avg"), Layer("out", "dense", 5, "softmax")),
    "flatten, one dense": (Layer("flatten", "flatten"), Layer("out", "dense", 5)),
}


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("head", TORCH_HEADS)
def test_a_head_that_fits_torchvision_is_written_in_its_layout(tmp_path, head, suffix):
    # 64x64: block5_pool is 2x2, a square map torchvision's adaptive pool keeps.
    model = VGG(WIDTHS, head=TORCH_HEADS[head], input_shape=(64, 64, 3), seed=3)
    x = images(model)
    assert export.save(model, tmp_path / f"m{suffix}") == (
        f"{'pytorch' if suffix == '.pth' else 'safetensors'} (torchvision layout)"
    )
    back = VGG.from_file(tmp_path / f"m{suffix}", classifier_activation=None)
    dense = [layer.name for layer in model.head if layer.kind == "dense"]
    names = [f"fc{i}" for i in range(1, len(dense))] + ["predictions"]
    for ours, theirs in zip(dense, names, strict=True):
        for a, b in zip(model.weights[ours], back.weights[theirs], strict=True):
            np.testing.assert_array_equal(a, b, err_msg=ours)
    logits_head = (*TORCH_HEADS[head][:-1], Layer("out", "dense", 5))  # torch: no softmax
    logits = VGG(WIDTHS, head=logits_head, input_shape=(64, 64, 3), seed=3)
    assert relative_error(back(x), logits(x)) < 1e-6


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (KERAS_HEAD, r"cannot hold a head of flatten.*batch_normalization \(batch_norm"),
        ((Layer("gmp", "global_max"), Layer("out", "dense", 5)), "cannot hold a head of gmp"),
        ((Layer("gap", "global_avg"), Layer("out", "dense", 5, "sigmoid")), "cannot hold"),
        ((Layer("gap", "global_avg"), Layer("h", "dense", 5, "tanh"), Layer("o", "dense", 2)), ""),
        ((Layer("gap", "global_avg"), Layer("o", "dense", 2), Layer("d", "dropout")), ""),
    ],
)
def test_a_head_torchvision_cannot_hold_is_refused(tmp_path, head, message):
    model = VGG(WIDTHS, head=head, input_shape=(64, 40, 3), seed=0)
    for suffix in (".pth", ".safetensors"):
        with pytest.raises(ValueError, match=message or "torchvision's layout cannot hold"):
            export.save(model, tmp_path / f"m{suffix}")
    assert os.listdir(tmp_path) == []


def test_a_flatten_of_a_map_that_is_not_square_is_refused_in_torchvision_layout(tmp_path):
    # 128x32 gives a 4x1 map: 4 values per channel, which a reader would take for 2x2.
    model = VGG(WIDTHS, input_shape=(128, 32, 3), classes=5, seed=0)
    with pytest.raises(ValueError, match=r"'flatten' flattens a 4x1 map \(an input of 128x32\)"):
        export.save(model, tmp_path / "m.pth")
    square = VGG(WIDTHS, input_shape=(64, 64, 3), classes=5, seed=0)
    assert export.save(square, tmp_path / "m.pth") == "pytorch (torchvision layout)"


def test_the_convert_command_writes_a_whole_model_or_says_why_not(tmp_path):
    model = build("Keras head, 64x40")
    model.save_weights(tmp_path / "m.npz")
    result = run_vgg_np("convert", tmp_path / "m.npz", tmp_path / "m.keras")
    assert result.returncode == 0, result.stderr
    assert "-> " in result.stdout and "keras-zip (.keras, whole model)" in result.stdout
    np.testing.assert_array_equal(
        VGG.from_file(tmp_path / "m.keras")(images(model)), model(images(model))
    )
    formats.write_npz(tmp_path / "part.npz", {"fc1": model.weights["dense"]})
    for args, message in (
        (["part.npz", "part.keras"], "describes no whole network"),
        (["m.npz", "m2.npz", "--layout", "model"], "applies to .h5 only (applications or model)"),
        (["m.npz", "m.pth"], "torchvision's layout cannot hold a head"),
    ):
        result = run_vgg_np("convert", *args, cwd=tmp_path)
        assert result.returncode == 1, (args, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    assert sorted(os.listdir(tmp_path)) == ["m.keras", "m.npz", "part.npz"]


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_the_class_names_a_trained_model_records_travel_with_it(tmp_path, suffix):
    model = build("GAP tanh head")
    labels = ("cat", "dog", "axolotl")
    info = {**export.architecture_info(model.network), "labels": labels}
    provenance = Provenance("npz (vgg_np)", Family.VGG_NP, "caffe", "keras")
    formats.write_npz(tmp_path / "m.npz", model.weights, provenance=provenance, info=info)
    export.convert(
        tmp_path / "m.npz", tmp_path / f"m{suffix}", layout="model" if suffix == ".h5" else None
    )
    back = VGG.from_file(tmp_path / f"m{suffix}")
    assert back.weights_info["labels"] == labels and back.weights_provenance.preprocess == "caffe"
    if suffix == ".keras":  # a damaged record is an error, never ignored
        _rewrite_member(tmp_path / "m.keras", "metadata.json",
                        json.dumps({"vgg_np.architecture": "{not json"}).encode())  # fmt: skip
        with pytest.raises(ValueError, match="damaged architecture record"):
            VGG.from_file(tmp_path / "m.keras")
