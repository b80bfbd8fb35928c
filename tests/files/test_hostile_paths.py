"""Every path a user gives is opened safely; totals, not only per-item caps; BN statistics.

The hostile files are made here at run time, small: FIFOs and endless devices where a
labels file, an activations dump or an input belongs; a dump that inflates 1000-fold or
holds complex, integer or bool values; an ONNX file of a few KB whose computed weights
add up to more than 2 GiB; an input size whose activations exceed the machine; batch
norm variances that make every output NaN. A case that would hang or fill memory on a
build without the checks runs under an alarm or a memory limit, so it fails instead.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal

import numpy as np
import pytest
from PIL import Image

from tests.conftest import HEADS_DIR as HEADS
from tests.conftest import TINY_CONFIG as TINY
from vgg_np import VGG, VGG16, cli, formats


class Hung(BaseException):
    """Raised by the alarm: not an Exception, so nothing on the way can swallow it."""


@contextlib.contextmanager
def within(seconds: int):
    """Fail (raise `Hung`) if the block takes longer than `seconds` (a blocked open)."""

    def ring(*_):
        raise Hung(f"still waiting after {seconds} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@contextlib.contextmanager
def memory_limit(extra: int):
    """Let this process map at most `extra` more bytes inside the block (then MemoryError)."""
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (used + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def one_line_error(capsys, *argv, code: int = 1) -> str:
    """Run the CLI in this process; it must fail with one line on stderr, no traceback.

    `code` 2: a path that is not a regular file is refused with the arguments, before any
    work (exit 2, as any bad argument); 1: a file refused when it is read.
    """
    with within(20):
        try:
            got = cli.main([str(a) for a in argv])
        except SystemExit as usage:  # argparse's usage error
            got = usage.code
    err = capsys.readouterr().err
    assert got == code and "Traceback" not in err, err
    if code == 2:  # argparse's usage lines, then the one line that says what is wrong
        err = err.strip().splitlines()[-1]
        assert ": error: " in err, err
    assert err.strip().count("\n") == 0, err
    return err


@pytest.fixture
def tiny(tmp_path):
    """A tiny classifier's weights file, a picture, and a matching activations dump."""
    model = VGG(TINY, input_shape=(32, 32, 3), classes=3, seed=0, classifier_activation=None)
    weights = tmp_path / "tiny.npz"
    model.save_weights(weights)
    picture = tmp_path / "cat.png"
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(picture)
    x = np.random.default_rng(0).standard_normal((1, 32, 32, 3)).astype(np.float32)
    dump = {"input": x, **model.activations(x)}
    return weights, picture, dump


# -- one safe opener ----------------------------------------------------------------------


def test_a_fifo_labels_file_is_refused_at_once(tmp_path, tiny, capsys):
    weights, picture, _ = tiny
    os.mkfifo(tmp_path / "labels")
    err = one_line_error(
        capsys, "predict", picture, "--weights", weights, "--preprocess", "caffe",
        "--labels", tmp_path / "labels", code=2,
    )  # fmt: skip
    assert f"--labels '{tmp_path / 'labels'}' is a FIFO, not a regular file" in err


@pytest.mark.parametrize("endless", ["/dev/zero", "sparse"])
def test_an_endless_or_huge_labels_file_is_refused_unread(tmp_path, tiny, capsys, endless):
    weights, picture, _ = tiny
    if endless == "sparse":  # 64 MiB of NULs that take no disk
        endless = tmp_path / "labels.txt"
        with open(endless, "wb") as f:
            f.truncate(64 << 20)
    with memory_limit(512 << 20):  # reading /dev/zero to its end would pass this
        err = one_line_error(
            capsys, "predict", picture, "--weights", weights, "--preprocess", "caffe",
            "--labels", endless, code=2 if endless == "/dev/zero" else 1,
        )  # fmt: skip
    assert str(endless) in err
    assert "character device" in err or "67,108,864 bytes, more than the 16,777,216" in err


@pytest.mark.parametrize("which", ["dump", "input"])
def test_a_fifo_as_compare_dump_or_input_is_refused_at_once(tmp_path, tiny, capsys, which):
    weights, _, dump = tiny
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    if which == "dump":
        err = one_line_error(capsys, "compare", weights, fifo, code=2)
    else:
        del dump["input"]
        np.savez(tmp_path / "dump.npz", **dump)
        err = one_line_error(
            capsys, "compare", weights, tmp_path / "dump.npz", "--input", fifo, code=2
        )
    assert f"'{fifo}' is a FIFO, not a regular file" in err


# -- what a dump may hold ------------------------------------------------------------------


def test_a_dump_that_inflates_a_thousandfold_is_refused_before_inflating(tmp_path, tiny, capsys):
    weights, _, dump = tiny
    dump["padding"] = np.zeros(16 << 20, np.float32)  # 64 MiB of zeros deflate ~1000:1
    np.savez_compressed(tmp_path / "bomb.npz", **dump)
    assert (tmp_path / "bomb.npz").stat().st_size < 1 << 20
    with memory_limit(48 << 20):  # less than the member inflates to
        err = one_line_error(capsys, "compare", weights, tmp_path / "bomb.npz")
    assert "member 'padding.npy': declares 67,108,992 bytes" in err  # + .npy header
    assert "decompression bomb" in err


@pytest.mark.parametrize(
    ("make", "dtype"),
    [
        (lambda a: a.astype(np.complex64) + 1e6j, "complex64"),
        (lambda a: np.rint(a).astype(np.int32), "int32"),
        (lambda a: a > 0, "bool"),
    ],
)
def test_a_dump_of_non_real_values_is_refused_naming_the_array(tmp_path, tiny, capsys, make, dtype):
    weights, _, dump = tiny
    dump["block1_conv1"] = make(dump["block1_conv1"])
    np.savez(tmp_path / "dump.npz", **dump)
    err = one_line_error(capsys, "compare", weights, tmp_path / "dump.npz")
    assert f"array 'block1_conv1' holds {dtype} values" in err
    assert "real floating-point numbers" in err


def test_a_real_dump_still_compares(tmp_path, tiny, capsys):
    weights, _, dump = tiny
    np.savez_compressed(tmp_path / "dump.npz", **dump)
    assert cli.main(["compare", str(weights), str(tmp_path / "dump.npz")]) == 0
    assert "agree" in capsys.readouterr().out


# -- totals, not only per-item caps -------------------------------------------------------


@pytest.mark.onnx
def test_onnx_weights_computed_to_more_than_2_gib_in_all_are_refused_unallocated(tmp_path):
    onnx = pytest.importorskip("onnx", reason="needs the optional `onnx` package")
    from onnx import helper, numpy_helper

    from tests.formats.test_onnx import build_graph
    from tests.reference.make_keras_reference import TINY as GRAPH_TINY

    model = VGG(GRAPH_TINY, input_shape=(32, 32, 3), classes=3, seed=0)
    graph = build_graph(model.weights)
    # fc1 32 -> 2**15, fc2 2**15 -> 2**13 (1 GiB), predictions 2**13 -> 2**15 (1 GiB): each
    # within the per-tensor cap, all of them beyond the total.
    shapes = {"fc1_W": [2**15, 32], "fc1_b": [2**15], "fc2_W": [2**13, 2**15],
              "fc2_b": [2**13], "predictions_W": [2**15, 2**13],
              "predictions_b": [2**15]}  # fmt: skip
    kept = [t for t in graph.graph.initializer if t.name not in shapes]
    del graph.graph.initializer[:]
    graph.graph.initializer.extend(kept)
    for name, shape in reversed(shapes.items()):
        graph.graph.initializer.append(numpy_helper.from_array(np.array(shape), f"{name}_shape"))
        graph.graph.node.insert(0, helper.make_node("ConstantOfShape", [f"{name}_shape"], [name]))
    path = tmp_path / "small.onnx"
    onnx.save(graph, path)
    assert path.stat().st_size < 1 << 20  # the tiny base's own weights
    with memory_limit(1 << 30), pytest.raises(ValueError) as info:
        VGG.from_file(path)
    assert str(info.value).startswith(f"'{path}': its tensors take 2,15")
    assert "more than the 2,147,483,648 any VGG weights file may" in str(info.value)


def test_an_input_size_beyond_the_machine_is_refused_with_its_size(tmp_path, monkeypatch):
    import json
    import zipfile

    with pytest.raises(ValueError) as info:
        VGG16(include_top=False, input_shape=(30000, 30000, 3))  # 1.1 TB of activations
    assert "`input_shape` 30000x30000x3 needs 1,092,5" in str(info.value)
    assert "bytes of activations per image in float32, more than the" in str(info.value)
    # The case: a Keras config declaring 9000x9000, on a machine of 4 GB.
    monkeypatch.setattr("vgg_np.network.max_activation_bytes", lambda: 2 << 30)
    source = HEADS / "keras_gap_head.keras"
    with zipfile.ZipFile(source) as archive:
        members = {n: archive.read(n) for n in archive.namelist()}
    config = json.loads(members["config.json"])
    config["config"]["layers"][0]["config"]["batch_shape"] = [None, 9000, 9000, 3]
    members["config.json"] = json.dumps(config).encode()
    big = tmp_path / "big.keras"
    with zipfile.ZipFile(big, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with memory_limit(1 << 30), pytest.raises(ValueError) as info:
        VGG.from_file(big)
    assert "`input_shape` 9000x9000x3 needs" in str(info.value)
    assert "more than the 2,147,483,648 this machine allows" in str(info.value)


# -- batch norm statistics ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("variance", "eps", "said"),
    [(0.0, 0.0, "moving variance 0 with epsilon 0"), (-0.5, 1e-3, "moving variance -0.5 < 0")],
)
def test_unusable_batch_norm_statistics_are_refused_at_load(tmp_path, variance, eps, said):
    model = VGG(TINY, include_top=False, input_shape=(32, 32, 3), batch_norm=eps, seed=0)
    weights = model.weights
    gamma, beta, mean, var = weights["block2_conv1_bn"]
    weights["block2_conv1_bn"] = (gamma, beta, mean, np.full_like(var, variance))
    path = tmp_path / "bn.npz"
    formats.write_npz(path, weights, info={"batch_norm_eps": eps})
    with pytest.raises(ValueError) as info:
        VGG.from_file(path)
    message = str(info.value)
    assert f"'{path}'" in message and f"block2_conv1_bn ({said})" in message
    assert "NaN" in message


def test_reading_a_small_file_reserves_no_more_than_the_file(tmp_path, monkeypatch):
    """A plan, labels or JSON file of a few bytes, under a cap of 1 GiB, needs a few bytes:
    before, ``f.read(max_bytes + 1)`` reserved the whole cap first, so ``vgg-np train``
    under ``ulimit -v`` died of MemoryError reopening its feature store's 200-byte plan.
    A file that grows after its size was taken is still read whole (up to the cap)."""
    from vgg_np import _files

    path = tmp_path / "plan.json"
    path.write_bytes(b"{}" * 100)
    with memory_limit(256 << 20):
        assert _files.read_bytes(path, 1 << 30, "extraction plan") == b"{}" * 100
    real_fstat = os.fstat

    def shrunk(fd: int) -> os.stat_result:  # it held 3 bytes when its size was taken
        real = tuple(real_fstat(fd))
        return os.stat_result((*real[:6], 3, *real[7:]))

    monkeypatch.setattr(_files.os, "fstat", shrunk)
    assert _files.read_bytes(path, 1 << 30, "extraction plan") == b"{}" * 100
    with pytest.raises(_files.TooLarge, match="more than the 150"):
        _files.read_bytes(path, 150, "extraction plan")
