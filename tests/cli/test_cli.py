"""The command line, driven through its real entry point (a subprocess)."""

from __future__ import annotations

import argparse
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import TINY_DIR
from vgg_np import cli, formats
from vgg_np.cli import build_parser


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vgg_np", *args], capture_output=True, text=True, timeout=300
    )


def test_demo_prints_the_table_the_keras_agreement_and_the_timing():
    result = run("demo")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "138,357,544 = 138,344,128 weights + 13,416 biases" in out
    assert "block1_conv1                  224x224x64     3,211,264         1,728" in out
    error = float(re.search(r"max \|logit error\| / max \|logit\| = (\S+)", out)[1])
    assert error < 1e-5  # measured 3e-6 to 5e-6 against Keras
    assert re.search(r"\d+ ms per image \(best of 3\), \d+ GFLOP/s", out)
    assert "vgg-np predict photo.jpg --weights" in out


COMMANDS = list(
    next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)).choices
)


def test_the_commands_are_those_the_docstring_lists():
    assert {"demo", "predict", "summary", "show", "train", "compare", "convert"} <= set(COMMANDS)
    listed = [line.split("``")[1] for line in cli.__doc__.splitlines() if line.startswith("- ``")]
    assert listed == COMMANDS


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    result = run(command, "--help")
    assert result.returncode == 0
    assert "Example" in result.stdout and f"vgg-np {command}" in result.stdout


def test_python_m_and_the_console_script_are_the_same_program():
    script = pathlib.Path(sys.executable).parent / "vgg-np"
    if not script.exists():
        pytest.skip("the vgg-np script is not installed in this environment")
    a = subprocess.run([str(script), "--version"], capture_output=True, text=True)
    assert a.stdout == run("--version").stdout and "vgg_np" in a.stdout


def test_unknown_command_is_a_usage_error():
    result = run("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
    assert "Traceback" not in result.stderr


def tensors_of(path) -> dict:
    with formats.open_weights(path) as source:
        return {k: (np.asarray(a), np.asarray(b)) for k, (a, b) in source.tensors.items()}


def test_convert_round_trips_every_tensor(tmp_path):
    original = tensors_of(TINY_DIR / "model.keras")
    chain = ["w.npz", "w.safetensors", "w.h5", "keras_layout.safetensors", "back.npz"]
    source = TINY_DIR / "model.keras"
    for name in chain:
        target = tmp_path / name
        extra = ["--layout", "keras"] if name.startswith("keras_layout") else []
        result = run("convert", str(source), str(target), *extra)
        assert result.returncode == 0, result.stderr
        assert f"-> {target}" in result.stdout
        converted = tensors_of(target)
        assert list(converted) == list(original)
        for layer, (kernel, bias) in original.items():
            np.testing.assert_array_equal(converted[layer][0], kernel, err_msg=f"{name} {layer}")
            np.testing.assert_array_equal(converted[layer][1], bias, err_msg=f"{name} {layer}")
        source = target


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["convert", str(TINY_DIR / "model.h5"), "out.weights"], "cannot tell the format to write"),
        (
            ["convert", str(TINY_DIR / "model.h5"), "out.npz", "--layout", "keras"],
            "applies to .safetensors only",
        ),
    ],
)
def test_cli_errors_are_one_line_without_traceback(tmp_path, args, message):
    result = subprocess.run(
        [sys.executable, "-m", "vgg_np", *args],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 1
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_debug_shows_the_traceback(tmp_path):
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(b"not weights")  # a runtime error (a missing file is a usage error)
    result = run("--debug", "convert", str(damaged), str(tmp_path / "out.npz"))
    assert result.returncode != 0 and "Traceback" in result.stderr
