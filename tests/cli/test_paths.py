"""Every command path on the models it accepts: batch norm, heads of one's own, non-square.

Each test here is a bug the first user of a new model kind met: `extract` on any batch
norm model failed unpacking its four BN tensors as (kernel, bias); on a Keras head
`predict -o` asked for a layer called "predictions" and `extract --top` refused; a
non-square head was refused by `extract` while `predict` took it; one unreadable image
alone in a batch stopped `predict` on a non-square head; the weights digest skipped
nothing only because it crashed on BN statistics.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from tests.conftest import HEADS_DIR as HEADS
from tests.conftest import relative_error
from vgg_np import VGG, VGGConfig
from vgg_np.cli import main
from vgg_np.extract import weights_digest
from vgg_np.streams import ImageStream

BN = HEADS / "vgg16_bn.safetensors"
FLATTEN_HEAD = HEADS / "keras_flatten_head.keras"  # a 64x40 input, a head of its own
GAP_HEAD = HEADS / "keras_gap_head.h5"
# The engine against itself on other batch compositions (the same kernels): a few ulps.
SAME_ENGINE_REL_TOL = 1e-6


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(7)
    paths = []
    for i, (h, w) in enumerate([(50, 60), (70, 45), (64, 64)]):
        path = folder / f"p{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(str(path))
    (folder / "zz_broken.png").write_bytes(b"not a picture")
    return paths


def expected_rows(weights, paths, **kwargs) -> np.ndarray:
    """What the model gives the stream of `paths`, one batch per image."""
    model = VGG.from_file(weights, data_format="channels_last", **kwargs)
    stream = ImageStream.for_model(paths, model, batch_size=1)
    return np.concatenate([model(batch) for _, batch in stream])


def test_extract_on_a_batch_norm_model(tmp_path, pictures, capsys):
    out = tmp_path / "bn.npy"
    assert main(["extract", *pictures, "--weights", str(BN), "-o", str(out), "--top", "2"]) == 0
    rows = np.load(out)
    assert relative_error(rows, expected_rows(BN, sorted(pictures))) < SAME_ENGINE_REL_TOL


@pytest.mark.parametrize("weights", [FLATTEN_HEAD, GAP_HEAD], ids=["flatten", "gap"])
def test_predict_output_file_on_a_keras_head(tmp_path, pictures, capsys, weights):
    out = tmp_path / "p.npy"
    assert main(["predict", *pictures, "--weights", str(weights), "-o", str(out)]) == 0
    rows = np.load(out)
    assert rows.shape == (3, 5)
    assert relative_error(rows, expected_rows(weights, sorted(pictures))) < SAME_ENGINE_REL_TOL
    assert np.allclose(rows.sum(axis=1), 1, atol=1e-5)  # the head's softmax


def test_extract_top_on_a_keras_head(tmp_path, pictures, capsys):
    out = tmp_path / "e.npy"
    argv = ["extract", *pictures, "--weights", str(GAP_HEAD), "-o", str(out), "--top", "2"]
    assert main([*argv, "--layer", "global_average_pooling2d"]) == 0
    assert np.load(out).shape == (3, 8)  # block5 channels
    manifest = out.parent / "e.npy.manifest"
    entries = [json.loads(line) for f in manifest.glob("*.jsonl") for line in f.open()]
    scores = expected_rows(GAP_HEAD, sorted(pictures))
    for entry in sorted(entries, key=lambda e: e["row"]):
        best = np.argsort(-scores[entry["row"]])[:2]
        assert [int(wnid) for wnid, _, _ in entry["top"]] == best.tolist()


def test_extract_takes_a_non_square_head_as_predict_does(tmp_path, pictures, capsys):
    out = tmp_path / "f.npy"
    assert main(["extract", *pictures, "--weights", str(FLATTEN_HEAD), "-o", str(out)]) == 0
    plan = json.loads((out.parent / "f.npy.manifest" / "plan.json").read_text())
    assert plan["size"] == [64, 40]
    rows = np.load(out)
    assert relative_error(rows, expected_rows(FLATTEN_HEAD, sorted(pictures))) < 1e-6
    # A rerun resumes the same store (the size read back from JSON is the same size).
    assert main(["extract", *pictures, "--weights", str(FLATTEN_HEAD), "-o", str(out)]) == 0
    assert "3 done before" in capsys.readouterr().out


def test_one_bad_image_alone_in_a_batch_on_a_non_square_head(pictures, capsys):
    broken = str(pathlib.Path(pictures[0]).parent / "zz_broken.png")
    argv = ["predict", pictures[0], broken, "--weights", str(FLATTEN_HEAD), "--batch-size", "1"]
    assert main(argv) == 1  # an image skipped
    out, err = capsys.readouterr()
    assert out.startswith(pictures[0]) and "zz_broken.png" not in out
    assert "skipping" in err and "1 of 2 images skipped" in err


def test_the_digest_covers_batch_norm_statistics():
    model = VGG.from_file(BN)
    before = weights_digest(model)
    for name, tensors in model.weights.items():
        for index in range(len(tensors)):
            changed = [np.array(t, copy=True) for t in tensors]
            changed[index].flat[0] += 1
            model.set_weights({**model.weights, name: tuple(changed)})
            assert weights_digest(model) != before, (name, index)
            model.set_weights({**model.weights, name: tensors})
    assert weights_digest(model) == before


@pytest.mark.onnx
def test_extract_feeds_a_torch_onnx_graph_its_own_layout(tmp_path, pictures, capsys):
    pytest.importorskip("onnx", reason="reading ONNX needs the onnx package")
    weights, out = HEADS / "keras_gap_head_torch.onnx", tmp_path / "o.npy"  # NCHW input
    argv = ["extract", *pictures, "--weights", str(weights), "-o", str(out)]
    assert main([*argv, "--layer", "block5_conv3"]) == 0
    model = VGG.from_file(weights)
    assert model.data_format == "channels_first"
    maps = np.load(out)  # in the model's layout: (N, C, H, W)
    assert maps.shape == (3, 8, 4, 2)
    nhwc = VGG.from_file(weights, data_format="channels_last")
    batch = next(iter(ImageStream.for_model(sorted(pictures), nhwc, batch_size=3)))[1]
    expected = nhwc.features(batch, "block5_conv3").transpose(0, 3, 1, 2)
    assert relative_error(maps, expected) < SAME_ENGINE_REL_TOL


@pytest.mark.onnx
def test_compare_a_torch_onnx_graph_with_a_dump(tmp_path, capsys):
    pytest.importorskip("onnx", reason="reading ONNX needs the onnx package")
    weights = HEADS / "keras_gap_head_torch.onnx"
    reference = VGG.from_file(weights, data_format="channels_last", conv_algorithm="reference")
    x = np.random.default_rng(1).standard_normal((1, 64, 40, 3)).astype(np.float32) * 50
    np.savez(tmp_path / "dump.npz", input=x, **reference.activations(x))
    assert main(["compare", str(weights), str(tmp_path / "dump.npz"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["passed"]


def test_a_non_square_plain_model_loads_back_from_its_npz(tmp_path):
    config = VGGConfig("vgg11", ((4,), (8,), (8, 8), (8, 8), (8, 8)), fc=(16,))
    model = VGG(config, input_shape=(64, 40, 3), classes=3, seed=0)
    model.save_weights(tmp_path / "w.npz")
    loaded = VGG.from_file(tmp_path / "w.npz")
    assert loaded.input_shape == (64, 40, 3)
    x = np.random.default_rng(0).standard_normal((1, 64, 40, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded(x), model(x))
