"""The command line behaves as its peers do: input paths checked before the weights load,
one exit-code rule for skipped pictures, a progress report on stderr from the first image
(a bar on a terminal, bounded lines in a log) that never mixes into stdout."""

from __future__ import annotations

import io
import json
import os
import pathlib
import sys
import types

import numpy as np
import pytest
from PIL import Image

from tests.conftest import HEADS_DIR, ROOT
from tests.conftest import TINY_DIR as TINY
from tests.conftest import run_vgg_np as run
from vgg_np import progress
from vgg_np.progress import Progress

WEIGHTS = str(TINY / "model.h5")  # a 10-class reduced VGG16 on 32x32 inputs


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> pathlib.Path:
    """Ten small pictures and one damaged one."""
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    for i in range(10):
        picture = rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)
        Image.fromarray(picture).save(folder / f"img{i:02d}.png")
    (folder / "img99.png").write_bytes(b"\x89PNG\r\n\x1a\n damaged")
    return folder


# ---------------------------------------------------------------------------------------
# Input paths are checked before the weights load
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_weights(tmp_path_factory) -> str:
    """A damaged weights file: an error about it would show that loading had begun."""
    path = tmp_path_factory.mktemp("w") / "damaged.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n not really")
    return str(path)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["predict", "{folder}/img00.png", "missing.png", "--weights", "{weights}"],
         "IMAGE_OR_DIR missing.png: no such file or directory"),
        (["extract", "missing_dir/", "--weights", "{weights}", "-o", "f.npy"],
         "IMAGE_OR_DIR missing_dir/: no such file"),
        (["predict", "{folder}", "--weights", "missing.h5"], "--weights missing.h5: no such file"),
        (["predict", "{folder}", "--weights", "{folder}"], "is a directory, not a regular file"),
        (["predict", "{folder}", "--weights", "{weights}", "--labels", "labels.txt"],
         "--labels labels.txt: no such file"),
        (["show", "missing.png", "--weights", "{weights}", "-o", "maps.png"],
         "IMAGE missing.png: no such file"),
        (["compare", "{weights}", "acts.npz"], "ACTIVATIONS acts.npz: no such file"),
        (["compare", "{weights}", "{folder}/img00.png", "--input", "x.npy"],
         "--input x.npy: no such file"),
        (["convert", "missing.h5", "out.npz"], "SOURCE missing.h5: no such file"),
        (["vectors", "cases", "--weights", "missing.h5"], "--weights missing.h5: no such file"),
    ],
)  # fmt: skip
def test_a_missing_input_is_a_usage_error_before_the_weights_load(
    tmp_path, folder, slow_weights, args, named
):
    args = [a.format(folder=folder, weights=slow_weights) for a in args]
    result = run(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and "usage:" in result.stderr
    assert "not really" not in result.stderr and "damaged" not in result.stderr.split("error:")[1]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_fifo_as_weights_is_refused_without_blocking(tmp_path, folder):
    fifo = tmp_path / "weights.h5"
    os.mkfifo(fifo)
    result = run("predict", str(folder), "--weights", str(fifo))
    assert result.returncode == 2 and "is a FIFO, not a regular file" in result.stderr


# ---------------------------------------------------------------------------------------
# One exit-code rule: a skipped picture is exit code 1, in every command
# ---------------------------------------------------------------------------------------


def test_a_skipped_picture_is_exit_1_in_predict_and_extract_alike(tmp_path, folder):
    predict = run("predict", str(folder), "--weights", WEIGHTS)
    extract = run("extract", str(folder), "--weights", WEIGHTS, "-o", str(tmp_path / "f.npy"))
    to_file = run("predict", str(folder), "--weights", WEIGHTS, "-o", str(tmp_path / "p.npy"))
    for result in (predict, extract, to_file):
        assert result.returncode == 1, result.stderr
        assert "skipping" in result.stderr and "img99.png" in result.stderr
    assert predict.stdout.count("  1. ") == 10  # the others are still classified
    again = run("extract", str(folder), "--weights", WEIGHTS, "-o", str(tmp_path / "f.npy"))
    assert again.returncode == 1  # the store still holds the skipped picture's NaN row


def test_no_skipped_picture_is_exit_0(tmp_path, folder):
    good = [str(p) for p in sorted(folder.glob("img0*.png"))]
    assert run("predict", *good, "--weights", WEIGHTS).returncode == 0
    result = run("extract", *good, "--weights", WEIGHTS, "-o", str(tmp_path / "f.npy"))
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------
# Progress: on stderr, from the first image, fit for logs, never in stdout
# ---------------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_is_drawn_before_the_first_update():
    out = Terminal()
    bar = Progress(512, stream=out)
    assert out.getvalue().startswith("\r[......") and "0/512 images" in out.getvalue()
    bar.close()


def test_off_a_terminal_progress_is_whole_lines_at_a_bounded_rate(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    out = io.StringIO()
    with Progress(1000, stream=out) as bar:
        for _ in range(999):  # one image every 0.1 s: 100 s in all
            clock[0] += 0.1
            bar.update(1)
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and out.getvalue().endswith("\n")
    assert lines[0].split()[1] == "0/1000" and lines[-1].split()[1] == "999/1000"
    assert len(lines) == 2 + 99 // progress.LINE_SECONDS  # first, every 10 s, last
    out = Terminal()
    with Progress(1000, stream=out) as bar:  # a terminal: redrawn in place, 5 per second
        for _ in range(100):
            clock[0] += 0.1
            bar.update(1)
    assert 30 <= out.getvalue().count("\r") <= 51 and out.getvalue().count("\n") == 1


def test_write_line_lifts_the_bar_off_the_terminal_line(capsys):
    terminal = Terminal()
    with Progress(3, stream=terminal) as bar:
        progress.write_line("cat.jpg: tabby")
        bar.update(3)
    assert capsys.readouterr().out == "cat.jpg: tabby\n"
    drawn = terminal.getvalue()
    assert "\r\x1b[K" in drawn and drawn.index("\r\x1b[K") < drawn.index("\r[...", 1)


def test_progress_and_json_never_share_stdout(tmp_path, folder):
    result = run("predict", str(folder), "--weights", WEIGHTS, "--json", "--progress")
    assert result.returncode == 1  # img99.png skipped
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 10
    first = result.stderr.index("0/11 images")
    assert first < result.stderr.index("11/11 images") and result.stderr.count("11/11") == 1
    result = run(
        "extract", str(folder), "--weights", WEIGHTS, "--json", "--batch-size", "4",
        "-o", str(tmp_path / "f.npy"),
    )  # fmt: skip
    assert json.loads(result.stdout)["written"] == 11  # the summary alone on stdout
    assert "0/11 images" in result.stderr  # on by default in a log: more than one batch


def test_in_a_notebook_with_ipywidgets_progress_is_a_widget(monkeypatch):
    shown = []

    class Widget:
        def __init__(self, *children, **values):
            self.children, self.value, self.max = children, values.get("value", ""), 0
            self.__dict__.update(values)

    widgets = types.SimpleNamespace(IntProgress=Widget, HTML=Widget, HBox=Widget)
    monkeypatch.setitem(sys.modules, "ipywidgets", widgets)
    monkeypatch.setitem(sys.modules, "IPython.display", types.SimpleNamespace(display=shown.append))
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    kernel_stream = type("OutStream", (io.StringIO,), {"__module__": "ipykernel.iostream"})()
    with Progress(10, stream=kernel_stream) as bar:
        (box,) = shown
        progress_bar, label = box.children[0]
        assert (progress_bar.value, progress_bar.max) == (0, 10)  # shown before any image
        bar.update(10)
    assert progress_bar.value == 10 and label.value.startswith("10/10 images")
    assert kernel_stream.getvalue() == ""  # no text lines beside the widget
    monkeypatch.delitem(sys.modules, "ipywidgets")  # without ipywidgets: lines, as in a log
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    with Progress(10, stream=kernel_stream) as bar:
        bar.update(10)
    assert kernel_stream.getvalue().count("\n") == 2


def test_predict_output_is_what_it_ranks_and_the_docs_say_so(tmp_path):
    """A torchvision classifier ends in logits: `predict -o` stores the probabilities it
    ranks, `extract` the logits; README and --help must not say they store the same."""
    from vgg_np import cli

    bn = str(HEADS_DIR / "vgg16_bn.pth")
    picture = tmp_path / "a.png"
    Image.new("RGB", (40, 30), (200, 40, 10)).save(picture)
    assert cli.main(["predict", str(picture), "--weights", bn, "-o", str(tmp_path / "p.npy")]) == 0
    assert cli.main(["extract", str(picture), "--weights", bn, "-o", str(tmp_path / "e.npy")]) == 0
    probabilities, logits = np.load(tmp_path / "p.npy"), np.load(tmp_path / "e.npy")
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    np.testing.assert_allclose(probabilities, shifted / shifted.sum(1, keepdims=True), atol=1e-6)
    help_text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["predict"]
                         .format_help().split())  # fmt: skip
    readme = (ROOT / "README.md").read_text()
    for text in (help_text, readme):
        assert "as extract does" not in text and "as `extract` does" not in text
        assert "extract keeps its logits" in text or "`extract` stores its logits" in text


def test_no_page_calls_a_skipped_picture_not_an_error():
    """Skipped pictures make exit code 1 in predict and extract alike: no text may say
    a bad image is 'not an error' (README's exit-code rule)."""
    from vgg_np import cli

    extract_help = cli.build_parser()._subparsers._group_actions[0].choices["extract"]
    for text in ((ROOT / "README.md").read_text(), extract_help.format_help()):
        text = " ".join(text.split())
        assert "reason, never an error" not in text and "reason, not an error" not in text


def test_compare_names_its_missing_images_by_the_option_given(tmp_path, capsys):
    """compare's pictures come by --images: a missing one is named so, not IMAGE_OR_DIR."""
    from vgg_np import cli

    with pytest.raises(SystemExit) as info:
        cli.main(["compare", WEIGHTS, WEIGHTS, "--images", str(tmp_path / "nope.png")])
    assert info.value.code == 2
    assert f"--images {tmp_path / 'nope.png'}: no such file" in capsys.readouterr().err
