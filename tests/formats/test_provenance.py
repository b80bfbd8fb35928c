"""The reader contract and provenance: every format gives one typed result through one
registry, and where weights came from travels with them through every format vgg_np
writes, so that `predict` knows their preprocessing, says why, and refuses to guess."""

from __future__ import annotations

import ast
import json
import os
import pathlib
import struct
import subprocess
import sys

import h5py
import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT, TINY_DIR
from tests.conftest import tiny_vgg16 as tiny
from vgg_np import VGG, formats
from vgg_np.formats import FORMATS, Family, Provenance, choose_preprocessing
from vgg_np.formats._common import LazyArray, flatten_pairs

WRITTEN = ["w.npz", "w.h5", "w.safetensors", "keras.safetensors", "w.pth"]


@pytest.fixture(scope="module")
def weights() -> dict:
    return tiny(weights=TINY_DIR / "model.h5").weights


def write(path: pathlib.Path, weights: dict, provenance: Provenance | None = None) -> str:
    layout = "keras" if path.name.startswith("keras") else None
    return formats.write_weights(path, weights, layout=layout, provenance=provenance)


def provenance_of(path) -> Provenance:
    with formats.open_weights(path) as source:
        return source.provenance


# ---------------------------------------------------------------------------------------
# The contract and the registry
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [*sorted(p.name for p in TINY_DIR.glob("*.h5")), "model.keras"])
def test_every_reader_returns_lazy_float_tensors_and_structured_provenance(name):
    with formats.open_weights(TINY_DIR / name) as source:
        assert isinstance(source, formats.WeightSource)
        for kernel, bias in source.tensors.values():
            assert isinstance(kernel, LazyArray) and isinstance(bias, LazyArray)
            assert kernel.dtype.kind == bias.dtype.kind == "f"
        assert source.provenance.family is Family.KERAS
        assert (source.provenance.preprocess, source.provenance.resize) == ("caffe", "keras")
        assert source.provenance.recorded is False and "Keras" in source.provenance.evidence
        assert source.format == source.provenance.description and source.layout == "keras"


@pytest.mark.parametrize("name", WRITTEN)
def test_each_writable_format_is_detected_as_the_format_that_wrote_it(tmp_path, weights, name):
    write(tmp_path / name, weights)
    suffix = pathlib.Path(name).suffix
    (writer,) = [f for f in FORMATS if suffix in f.suffixes]
    assert formats.detect_format(tmp_path / name) == writer.name


def test_the_registry_names_each_format_once_in_detection_order():
    names = [f.name for f in FORMATS]
    assert names == ["hdf5", "keras-zip", "torch", "npz", "safetensors", "onnx"]
    suffixes = [s for f in FORMATS for s in f.suffixes]
    assert len(suffixes) == len(set(suffixes))


READERS = ["keras_files", "theano", "npz", "safetensors_file", "torch_file", "onnx_graph"]


@pytest.mark.parametrize("reader", READERS)
def test_no_reader_imports_another_reader(reader):
    package = pathlib.Path(formats.__file__).parent
    tree = ast.parse((package / f"{reader}.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("vgg_np.formats"):
            imported.add(node.module.removeprefix("vgg_np.formats").lstrip("."))
            imported.update(a.name for a in node.names if node.module == "vgg_np.formats")
    assert not imported & (set(READERS) - {reader}), imported


def test_layout_conversions_live_in_layouts_not_in_a_reader():
    from vgg_np.formats import layouts, torchvision

    for name in ("oihw_to_hwio", "fc1_torch_to_keras", "chw_rows_to_hwc", "flattened_grid"):
        assert getattr(layouts, name).__module__ == "vgg_np.formats.layouts"
        assert not hasattr(torchvision, name) or getattr(torchvision, name) is getattr(
            layouts, name
        )


# ---------------------------------------------------------------------------------------
# Provenance travels with the weights
# ---------------------------------------------------------------------------------------

KERAS_224 = Provenance(
    "keras-h5 (Keras Applications layout)", Family.KERAS, "caffe", "keras", (224, 224)
)


@pytest.mark.parametrize("name", WRITTEN)
def test_every_writer_records_provenance_and_its_reader_gives_it_back(tmp_path, weights, name):
    write(tmp_path / name, weights, KERAS_224)
    read = provenance_of(tmp_path / name)
    assert read.recorded
    assert (read.family, read.preprocess, read.resize, read.input_size) == (
        Family.KERAS,
        "caffe",
        "keras",
        (224, 224),
    )
    assert read.source == KERAS_224.description
    assert "recorded in the file by vgg_np" in read.evidence


@pytest.mark.parametrize("name", WRITTEN)
def test_weights_of_unknown_origin_are_recorded_as_unknown_not_guessed(tmp_path, weights, name):
    write(tmp_path / name, weights)  # no provenance given
    read = provenance_of(tmp_path / name)
    assert read.recorded and read.family is Family.UNKNOWN and read.preprocess is None
    with pytest.raises(ValueError, match="which preprocessing they expect is unknown"):
        choose_preprocessing(read, where=name)


def test_keras_weights_converted_to_torchvision_safetensors_keep_keras_preprocessing(tmp_path):
    # The README's recipe: before, the file recorded nothing and predict assumed torchvision.
    target = tmp_path / "w.safetensors"
    _, written = formats.convert(TINY_DIR / "model.h5", target)
    assert written == "safetensors (torchvision layout)"
    model = VGG.from_file(target)
    provenance = model.weights_provenance
    assert provenance.family is Family.KERAS and provenance.recorded
    choice = choose_preprocessing(provenance)
    assert (choice.mode, choice.resize) == ("caffe", "keras")
    assert "recorded in the file by vgg_np" in choice.reason and "keras-h5" in choice.reason


def test_provenance_survives_a_chain_of_conversions(tmp_path):
    source = TINY_DIR / "model.keras"
    for name in ["a.npz", "b.safetensors", "c.h5", "d.safetensors", "e.npz"]:
        layout = "keras" if name.startswith("d") else None
        formats.convert(source, tmp_path / name, layout=layout)
        source = tmp_path / name
    read = provenance_of(source)
    assert (read.family, read.preprocess, read.resize) == (Family.KERAS, "caffe", "keras")
    assert read.source.startswith("keras-zip")  # the original file, not the last hop


def test_torchvision_weights_in_keras_layout_keep_torchvision_conventions(tmp_path, weights):
    torchvision = Provenance("pytorch (torchvision layout)", Family.TORCHVISION, "torch",
                             "torchvision")  # fmt: skip
    write(tmp_path / "keras.safetensors", weights, torchvision)
    model = VGG.from_file(tmp_path / "keras.safetensors")
    choice = choose_preprocessing(model.weights_provenance)
    assert (choice.mode, choice.resize) == ("torch", "torchvision")
    assert model.adaptive_pool == 1  # torchvision's VGG pools to fc1's grid: any input size


def test_layouts_only_one_framework_writes_imply_their_family(tmp_path, weights):
    # A torchvision state dict written by the `safetensors` package records nothing.
    from vgg_np.formats.safetensors_file import write_safetensors
    from vgg_np.formats.torchvision import conv_names, to_state_dict

    write_safetensors(tmp_path / "hub.safetensors", to_state_dict(weights, conv_names(weights)))
    read = provenance_of(tmp_path / "hub.safetensors")
    assert (read.family, read.recorded) == (Family.TORCHVISION, False)
    assert choose_preprocessing(read).mode == "torch"
    # vgg_np's own flat names fit any family: nothing is implied.
    np.savez(tmp_path / "old.npz", **flatten_pairs(weights))
    read = provenance_of(tmp_path / "old.npz")
    assert read.family is Family.UNKNOWN and not read.recorded
    with pytest.raises(ValueError, match=r"unknown \(no provenance recorded.*'caffe' for Keras"):
        choose_preprocessing(read)


def test_the_users_choice_overrides_and_says_what_the_file_suggested():
    choice = choose_preprocessing(KERAS_224, preprocess="torch")
    assert (choice.mode, choice.resize) == ("torch", "torchvision")
    assert "chosen by the user" in choice.reason and "'caffe'" in choice.reason
    unknown = Provenance("npz (vgg_np)", Family.UNKNOWN, evidence="no provenance recorded")
    choice = choose_preprocessing(unknown, preprocess="caffe", resize="torchvision")
    assert (choice.mode, choice.resize) == ("caffe", "torchvision")


def test_save_weights_records_where_the_weights_came_from(tmp_path):
    model = tiny(weights=TINY_DIR / "model.h5")
    model.save_weights(tmp_path / "w.npz")
    read = provenance_of(tmp_path / "w.npz")
    assert (read.family, read.input_size, read.source) == (
        Family.KERAS,
        (32, 32),
        "keras-h5 (model.save layout, whole model from its config)",
    )
    model.set_weights(model.he_normal(0))  # other weights: the file's provenance no longer holds
    assert model.weights_provenance.family is Family.VGG_NP
    model.save_weights(tmp_path / "seeded.npz")
    assert provenance_of(tmp_path / "seeded.npz").preprocess is None


@pytest.mark.parametrize(
    ("record", "match"),
    [
        ({"vgg_np.family": "caffe2"}, "unknown family 'caffe2'"),
        ({"vgg_np.family": "keras", "vgg_np.preprocess": "bgr"}, "gives preprocess 'bgr'"),
        ({"vgg_np.family": "keras", "vgg_np.input_size": "224"}, "gives input size '224'"),
        ({"vgg_np.preprocess": "caffe"}, "damaged vgg_np provenance record"),
    ],
)
def test_a_damaged_provenance_record_is_an_error_not_ignored(tmp_path, weights, record, match):
    path = tmp_path / "w.h5"
    write(path, weights)
    with h5py.File(path, "r+") as f:
        for key in list(f.attrs):
            if key.startswith("vgg_np."):
                del f.attrs[key]
        f.attrs.update(record)
    with pytest.raises(ValueError, match=match):
        provenance_of(path)


def test_safetensors_metadata_of_other_tools_is_not_a_record(tmp_path, weights):
    path = tmp_path / "w.safetensors"
    write(path, weights, KERAS_224)
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"] = {"format": "pt"}  # what Hugging Face writes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (length - len(text)) if len(text) <= length else b""
    assert len(text) == length
    path.write_bytes(data[:8] + text + data[8 + length :])
    read = provenance_of(path)
    assert (read.family, read.recorded) == (Family.TORCHVISION, False)


# ---------------------------------------------------------------------------------------
# `vgg-np predict` uses it
# ---------------------------------------------------------------------------------------


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vgg_np", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("images") / "a.png"
    pixels = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_predict_on_converted_keras_weights_uses_keras_preprocessing_and_says_why(tmp_path, image):
    # The README's recipe; before, predict took these for torchvision weights.
    target = tmp_path / "w.safetensors"
    converted = run("convert", str(TINY_DIR / "model.h5"), str(target))
    assert converted.returncode == 0, converted.stderr
    result = run("predict", str(image), "--weights", str(target), "--json")
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout)
    assert (record["preprocess"], record["resize"]) == ("caffe", "keras")
    assert "preprocessing 'caffe', resize 'keras' (keras weights, recorded in the file" in (
        result.stderr
    )
    assert "keras-h5 (model.save layout" in result.stderr  # where they came from


def test_predict_refuses_to_guess_and_takes_the_users_choice(tmp_path, image, weights):
    path = tmp_path / "w.npz"
    np.savez(path, **flatten_pairs(weights))  # no provenance recorded: any family fits
    refused = run("predict", str(image), "--weights", str(path))
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "which preprocessing they expect is unknown" in refused.stderr
    assert "--preprocess" in refused.stderr
    chosen = run("predict", str(image), "--weights", str(path), "--preprocess", "torch")
    assert chosen.returncode == 0, chosen.stderr
    assert "preprocessing 'torch', resize 'torchvision' (chosen by the user)" in chosen.stderr
