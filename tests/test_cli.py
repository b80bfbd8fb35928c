"""The command line, driven through its real entry point (a subprocess)."""

from __future__ import annotations

import re
import subprocess
import sys


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vgg_np", *args], capture_output=True, text=True, timeout=300
    )


def test_demo_checks_a_vgg_layer_against_float64():
    result = run("demo")
    assert result.returncode == 0, result.stderr
    error = float(re.search(r"max error / max \|y\| vs float64 = (\S+)", result.stdout)[1])
    assert error < 1e-5  # float32 im2col conv: measured ~4e-7
    assert "equal to the naive loop: True" in result.stdout


def test_help_has_an_example():
    result = run("demo", "--help")
    assert result.returncode == 0
    assert "Example: vgg-np demo" in result.stdout


def test_unknown_command_is_a_usage_error():
    result = run("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
    assert "Traceback" not in result.stderr
