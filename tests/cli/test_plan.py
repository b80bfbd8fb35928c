"""``--plan`` on every command that runs the engine: it reaches the model, and a plan file
that cannot be used whole is a usage error naming it, before any work (exit code 2).

How a command's plan is seen from outside: a plan file the user names is the planner's
cache, pinned; the layers it lacks are measured and added to it (docs/performance.md).
A file holding no entries therefore gains one per convolution exactly when the command's
engine used it.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TINY_DIR as TINY
from tests.conftest import run_vgg_np as run
from vgg_np import cli
from vgg_np.engine import cache

WEIGHTS = str(TINY / "model.h5")  # a 10-class reduced VGG16 on 32x32 inputs
#: The commands that run the engine (summary, convert and vectors never do: vectors'
#: expected outputs come from the float64 loop kernels; train's engines are built inside
#: `vgg_np.train` and read $VGG_NP_PLAN).
ENGINE_COMMANDS = ("demo", "predict", "extract", "show", "compare")


@pytest.fixture(scope="module")
def picture(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("pictures") / "a.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def activations(tmp_path_factory) -> str:
    """Keras's activations of the tiny model, keyed as ``compare`` reads them."""
    with np.load(TINY / "keras_activations.npz") as npz:
        arrays = {k.removeprefix("act/"): npz[k] for k in npz.files if k.startswith("act/")}
        arrays["input"] = npz["x"]
    path = tmp_path_factory.mktemp("dump") / "acts.npz"
    np.savez(path, **arrays)
    return str(path)


def empty_plan(path: pathlib.Path) -> pathlib.Path:
    """Write a valid plan file with no entries (as a first measuring run would begin)."""
    cache.store(path, cache.machine(2), {}, pinned=False)
    return path


def command_line(name: str, tmp_path: pathlib.Path, picture: str, activations: str) -> list:
    return {
        "demo": ["demo"],
        "predict": ["predict", picture, "--weights", WEIGHTS],
        "extract": ["extract", picture, "--weights", WEIGHTS, "-o", str(tmp_path / "f.npy")],
        "show": ["show", picture, "--weights", WEIGHTS, "-o", str(tmp_path / "maps.png")],
        "compare": ["compare", WEIGHTS, activations],
    }[name]


@pytest.mark.parametrize("name", [c for c in ENGINE_COMMANDS if c != "demo"])
def test_the_plan_file_reaches_the_engine(tmp_path, picture, activations, name, capsys):
    plan = empty_plan(tmp_path / "plans.json")
    assert main_code(*command_line(name, tmp_path, picture, activations), "--plan", plan) == 0
    entries = json.loads(plan.read_text())["plans"]
    # one entry per convolution the engine ran (the pool-fused ones say so)
    assert entries and all(" float32 " in key for key in entries), entries
    if name == "compare":  # compare runs the direct convolution, whatever the plan
        assert {choice["algorithm"] for choice in entries.values()} == {"gemm"}


def test_without_plan_nothing_is_measured(tmp_path, picture, monkeypatch, capsys):
    monkeypatch.setenv("VGG_NP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VGG_NP_PLAN", raising=False)
    assert main_code("predict", picture, "--weights", WEIGHTS) == 0
    assert not (tmp_path / "cache").exists()


def test_plan_measure_writes_the_cache_where_vgg_np_cache_says(
    tmp_path, picture, monkeypatch, capsys
):
    monkeypatch.setenv("VGG_NP_CACHE", str(tmp_path / "cache"))
    assert main_code("predict", picture, "--weights", WEIGHTS, "--plan", "measure") == 0
    (written,) = (tmp_path / "cache").iterdir()
    assert written.name.startswith("plans-") and json.loads(written.read_text())["plans"]


def test_demo_gives_its_model_the_plan(tmp_path, monkeypatch, capsys):
    plan = empty_plan(tmp_path / "plans.json")
    built = []

    def vgg16(**kwargs):
        built.append(kwargs)
        raise ValueError("stopped once built")  # the demo's VGG16 run is not the point

    monkeypatch.setattr(cli.explore, "VGG16", vgg16)
    assert main_code("demo", "--plan", plan) == 1
    assert [kwargs["plan"] for kwargs in built] == [str(plan)]


def main_code(*args) -> int:
    return cli.main([os.fspath(a) for a in args])


def damaged(tmp_path: pathlib.Path) -> dict[str, tuple[pathlib.Path, str]]:
    """Plan files no command may use, and what the refusal says about each."""
    (tmp_path / "truncated.json").write_text('{"format": "vgg_np engine plans", "mach')
    (tmp_path / "other.json").write_text('{"format": "something else"}')
    old = json.loads(empty_plan(tmp_path / "old.json").read_text())
    old["machine"]["version"] = cache.VERSION + 1
    (tmp_path / "old.json").write_text(json.dumps(old))
    bad = json.loads(empty_plan(tmp_path / "bad_entry.json").read_text())
    bad["plans"] = {"auto float32 32x32x3->8 pool": {"algorithm": "fft"}}
    (tmp_path / "bad_entry.json").write_text(json.dumps(bad))
    (tmp_path / "folder.json").mkdir()
    return {
        "missing": (tmp_path / "missing.json", "no such plan file"),
        "truncated": (tmp_path / "truncated.json", "is damaged (not JSON)"),
        "not a plan": (tmp_path / "other.json", "is not a vgg_np plan file"),
        "other version": (tmp_path / "old.json", "another version of vgg_np"),
        "bad entry": (tmp_path / "bad_entry.json", "'auto float32 32x32x3->8 pool'"),
        "folder": (tmp_path / "folder.json", "is a directory, not a regular plan file"),
    }


@pytest.mark.parametrize("name", ENGINE_COMMANDS)
def test_an_unusable_plan_file_is_a_usage_error_naming_it(
    tmp_path, picture, activations, name, capsys
):
    line = command_line(name, tmp_path / "out", picture, activations)  # out/ does not exist:
    (tmp_path / "out").mkdir()  # created only so that -o is valid; nothing may be written
    for what, (path, says) in damaged(tmp_path).items():
        before = path.read_bytes() if path.is_file() else None
        with pytest.raises(SystemExit) as stopped:
            main_code(*line, "--plan", path)
        error = capsys.readouterr().err.splitlines()
        assert stopped.value.code == 2, what
        assert error[0].startswith("usage:") and sum("error" in e for e in error) == 1, error
        assert str(path) in error[-1] and says in error[-1], (what, error)
        assert error[-1].startswith(f"vgg-np {name}: error: argument --plan: "), error
        assert (path.read_bytes() if path.is_file() else None) == before  # left as it was
        assert list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("value", ["plans.txt", "fastest", ".json", ""])
def test_plan_is_default_measure_or_a_json_file(value, capsys):
    with pytest.raises(SystemExit) as stopped:
        main_code("predict", "x.png", "--weights", WEIGHTS, "--plan", value)
    assert stopped.value.code == 2
    assert "must be default, measure or a plan file FILE.json" in capsys.readouterr().err


def test_a_fifo_as_plan_is_refused_without_blocking(tmp_path, picture):
    fifo = tmp_path / "plans.json"
    os.mkfifo(fifo)
    result = run("predict", picture, "--weights", WEIGHTS, "--plan", fifo)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"vgg-np predict: error: argument --plan: {str(fifo)!r} is a FIFO, not a regular plan file"
    )


def test_every_engine_command_documents_plan():
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices  # argparse keeps them here
    for name in ENGINE_COMMANDS:
        text = commands[name].format_help()
        assert "--plan {default,measure,FILE.json}" in text and "$VGG_NP_CACHE" in text, name


@pytest.mark.onnx
@pytest.mark.onnxruntime
def test_compare_onnx_runs_its_reference_on_the_plan(tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="compare --onnx runs the graph in onnxruntime")
    weights = TINY.parent / "heads" / "keras_gap_head_torch.onnx"
    x = tmp_path / "x.npy"
    np.save(x, np.random.default_rng(1).standard_normal((1, 3, 64, 40)).astype(np.float32))
    plan = empty_plan(tmp_path / "plans.json")
    main_code("compare", weights, "--onnx", "--input", x, "--plan", plan)  # passed or not
    assert json.loads(plan.read_text())["plans"]


def test_extract_on_a_cluster_gives_each_task_the_plan(tmp_path, picture, monkeypatch):
    plan = empty_plan(tmp_path / "plans.json")
    line = ["extract", picture, "--weights", WEIGHTS, "-o", "f.npy", "--workers", "2"]
    monkeypatch.chdir(tmp_path)  # a plan file named relative to here goes by its absolute path
    args = cli.build_parser().parse_args([*line, "--plan", "plans.json", "--threads", "1"])
    measured = cli.build_parser().parse_args([*line, "--plan", "measure"])
    assert cli.predict._cluster_engine_options(args) == {"threads": 1, "plan": str(plan)}
    assert cli.predict._cluster_engine_options(measured)["plan"] == "measure"
