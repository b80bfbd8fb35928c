"""`vgg-np predict`, `summary`, `show`, `compare` and `convert` on every format vgg_np reads,
heads of one's own and batch-norm models included (in process, through `cli.main`)."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import shutil

import numpy as np
import pytest
from PIL import Image

from tests.conftest import DATA, TINY_CONFIG
from vgg_np import VGG, formats
from vgg_np.cli import main
from vgg_np.layers import Layer
from vgg_np.preprocess import load_image, preprocess_input

HEADS = DATA / "heads"
TINY = DATA / "tiny_vgg16"
HEAD_FILES = [
    "keras_flatten_head.keras",
    "keras_flatten_head.h5",
    "keras_gap_head.keras",
    "keras_gap_head.h5",
    "keras_flatten_head_tf2onnx.onnx",
    "keras_gap_head_tf2onnx.onnx",
    "keras_flatten_head_torch.onnx",
    "keras_gap_head_torch.onnx",
    "vgg16_bn.pth",
    "vgg16_bn.safetensors",
    "vgg16_bn_custom_classifier.pth",
    "timm_vgg16.pth",
]
NEEDS = {".onnx": "onnx"}  # .pth is read without torch


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("images") / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def every_format(tmp_path_factory) -> dict[str, pathlib.Path]:
    """One weights file per format and layout vgg_np reads, each of a model with a top."""
    out = tmp_path_factory.mktemp("formats")
    files = {name: TINY / name for name in ("applications.h5", "model.h5", "model.keras")}
    files |= {n: TINY / n for n in ("tf_keras.h5", "legacy_weights.h5", "model.weights.h5")}
    for name, layout in (("w.npz", None), ("k.safetensors", "keras"), ("t.safetensors", None)):
        formats.convert(TINY / "model.h5", out / name, layout=layout)
        files[name] = out / name
    formats.convert(TINY / "model.h5", out / "t.pth")  # written and read without torch
    files["t.pth"] = out / "t.pth"
    # The exporters' two ONNX styles only where onnx is installed (the test module that
    # builds them skips at import without it, which would skip every format here).
    if importlib.util.find_spec("onnx") is not None:
        from tests.formats.test_onnx import build_graph, save

        model = VGG.from_file(TINY / "model.h5")
        for style in ("torch", "tf2onnx"):
            files[f"{style}.onnx"] = save(
                build_graph(model.weights, style=style), out, f"{style}.onnx"
            )
    return files | {name: HEADS / name for name in HEAD_FILES}


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def skip_without_reader(name: str) -> None:
    package = NEEDS.get(pathlib.Path(name).suffix)
    if package:
        pytest.importorskip(package, reason=f"reading {name} needs {package}")


def by_reader(names: list[str]) -> list:
    """`names` as parameters, those that need a package marked, so `.ci/run` runs them."""
    return [
        pytest.param(n, marks=getattr(pytest.mark, NEEDS[pathlib.Path(n).suffix]))
        if pathlib.Path(n).suffix in NEEDS
        else n
        for n in names
    ]


@pytest.mark.parametrize("name", by_reader([*HEAD_FILES, "plain formats", "plain.onnx"]))
def test_predict_on_every_format(capsys, image, every_format, name):
    skip_without_reader(name)
    if name.startswith("plain"):  # the files written by vgg_np (or its ONNX graph builder)
        onnx_only = name == "plain.onnx"
        names = [
            n for n in list(every_format)[: -len(HEAD_FILES)] if n.endswith(".onnx") == onnx_only
        ]
        assert len(names) == (2 if onnx_only else 10), names  # none silently left out
    else:
        names = [name]
    for each in names:
        path = every_format[each]
        skip_without_reader(each)
        model = VGG.from_file(path, data_format="channels_last")
        # Files that do not say how they were trained need --preprocess.
        choose = ["--preprocess", "caffe"] if model.weights_provenance.preprocess is None else []
        code, out, err = run(capsys, "predict", image, "--weights", path, "--json", "--top", "2")
        assert code == (1 if choose else 0), (each, err)
        if choose:
            assert "--preprocess" in err
            code, out, err = run(
                capsys, "predict", image, "--weights", path, "--json", "--top", "2", *choose
            )
            assert code == 0, (each, err)
        result = json.loads(out)
        # The same classes as the model itself gives on the same pixels.
        mode, resize = result["preprocess"], result["resize"]
        h, w, _ = model.input_shape
        if not (h and w) and model.weights_provenance.input_size:  # the size it records
            h, w = model.weights_provenance.input_size
        size = (h, w) if h and w and h != w else h or 224
        scores = model(preprocess_input(load_image(image, size=size, resize=resize)[None], mode))
        best = np.argsort(-scores[0], kind="stable")[:2]
        assert [int(e["wnid"]) for e in result["top"]] == best.tolist(), each
        assert all(e["label"].startswith("class ") for e in result["top"]), each  # not ImageNet


def test_predict_names_a_heads_classes_only_from_labels(capsys, image, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\nbird\nfish\nfrog\n")
    weights = HEADS / "keras_gap_head.keras"
    names = ["cat", "dog", "bird", "fish", "frog"]
    code, out, _ = run(capsys, "predict", image, "--weights", weights, "--labels", labels, "--json")
    top = json.loads(out)["top"]
    assert code == 0 and len(top) == 5
    assert all(entry["label"] == names[int(entry["wnid"])] for entry in top)
    labels.write_text("cat\ndog\n")
    code, _, err = run(capsys, "predict", image, "--weights", weights, "--labels", labels)
    assert code != 0 and "2 names" in err and "5 outputs" in err
    # A head of one's own with 1000 outputs is still not ImageNet's classifier.
    head = [Layer("gap", "global_avg"), Layer("out", "dense", 1000, "softmax")]
    VGG(TINY_CONFIG, head=head, seed=0).save_weights(tmp_path / "head1000.npz")
    code, out, _ = run(
        capsys, "predict", image, "--weights", tmp_path / "head1000.npz", "--preprocess", "caffe"
    )
    assert code == 0 and "class " in out and "n0" not in out


@pytest.mark.parametrize("name", by_reader(HEAD_FILES))
def test_convert_keeps_the_head_and_provenance(capsys, tmp_path, name):
    skip_without_reader(name)
    source = VGG.from_file(HEADS / name, data_format="channels_last")
    h, w, _ = source.input_shape
    x = np.random.default_rng(1).standard_normal((1, h or 64, w or 40, 3)).astype(np.float32)
    for target in ("c.npz", "c.safetensors"):
        extra = ["--layout", "keras"] if target.endswith("safetensors") else []
        code, _out, err = run(capsys, "convert", HEADS / name, tmp_path / target, *extra)
        assert code == 0, err
        back = VGG.from_file(tmp_path / target)
        assert back.head == source.head and back.batch_norm == source.batch_norm
        assert back.weights_provenance.family == source.weights_provenance.family
        np.testing.assert_array_equal(back(x), source(x))
    if source.head is not None:  # torchvision's layout has no place for a head: refused
        code, _, err = run(capsys, "convert", HEADS / name, tmp_path / "t.safetensors")
        assert code != 0 and "cannot hold a head" in err


@pytest.mark.parametrize("name", ["keras_flatten_head.h5", "vgg16_bn.safetensors"])
def test_summary_and_show_on_heads_and_batch_norm(capsys, image, tmp_path, name):
    code, out, _ = run(capsys, "summary", "--weights", HEADS / name)
    model = VGG.from_file(HEADS / name)
    if None in model.input_shape:  # the summary's default input
        model = VGG.from_file(HEADS / name, input_shape=(224, 224, 3))
    assert code == 0 and model.layers[-1].name in out
    assert f"{model.summary(False).parameters:,}" in out
    code, out, err = run(capsys, "show", image, "--weights", HEADS / name, "-o", tmp_path / "s.png")
    assert code == 0, err
    assert Image.open(tmp_path / "s.png").size[0] > 100


def test_compare_a_head_by_its_layer_names(capsys, tmp_path):
    with np.load(HEADS / "outputs.npz") as f:
        arrays = {k.split("/")[1]: f[k] for k in f if k.count("/") == 1 and "keras_gap" in k}
        arrays["input"] = f["x"]
    arrays = {k: v for k, v in arrays.items() if not k.startswith(("onnxruntime", "block1"))}
    np.savez(tmp_path / "acts.npz", **arrays)
    shutil.copy(HEADS / "keras_gap_head.h5", tmp_path / "m.h5")
    code, out, err = run(
        capsys,
        "compare",
        tmp_path / "m.h5",
        tmp_path / "acts.npz",
        "--layers",
        "global_average_pooling2d,dense,batch_normalization,dense_1",
    )
    assert code == 0, err
    # Every layer named, each within the tolerance (not merely a table printed).
    assert "4/4 layers compared" in out and "all 4 layers agree within tolerance" in out, out


@pytest.mark.onnx
def test_an_onnx_head_vgg_np_cannot_run_is_named(capsys, image, tmp_path):
    onnx = pytest.importorskip("onnx", reason="reading ONNX needs the onnx package")
    graph = onnx.load(HEADS / "keras_gap_head_torch.onnx")
    (relu,) = [n for n in graph.graph.node if n.name == "/head/head.3/Relu"]
    relu.op_type, relu.name = "Elu", "custom_elu"
    onnx.save(graph, tmp_path / "elu.onnx")
    model = VGG.from_file(tmp_path / "elu.onnx")
    assert not model.include_top and "node Elu 'custom_elu'" in model.weights_format
    code, _, err = run(capsys, "predict", image, "--weights", tmp_path / "elu.onnx")
    assert code != 0 and "node Elu 'custom_elu' in the head" in err
