"""Extraction on a Dask cluster: the local store bit for bit, a worker killed mid-partition,
a client killed mid-run, the weights loaded once per worker, and the CLI's cluster options.

The cluster tests (marker `dask`) start a LocalCluster of two worker processes on
127.0.0.1 and are skipped with the reason when the `dask` extra is missing; .ci/run
installs it and runs them. The last tests need no cluster.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from tests.conftest import ROOT
from vgg_np import VGG, VGGConfig
from vgg_np.cli import main
from vgg_np.distributed import (
    ClusterError,
    connect,
    engine_options,
    extract_on_cluster,
    load_model,
)
from vgg_np.extract import extract, open_store

# A reduced-width VGG16 on 64x64 inputs: about 20 ms per image per engine thread, so a
# partition of 16 images lasts long enough to be caught mid-run.
NARROW = VGGConfig(
    "narrow", ((16, 16), (32, 32), (64,) * 3, (128,) * 3, (128,) * 3), fc=(64, 64), default_size=64
)
IMAGES, BAD = 95, "img017b.png"
# What every run here uses. One engine thread everywhere, local reference included: the
# engine's dense layers (the top-class scores here) depend on the thread count.
SETTINGS = {"layer": "fc2", "top": 3, "partition_size": 16, "batch_size": 4, "preprocess": "caffe"}
OPTIONS = {"threads": 1}
CLI_SETTINGS = ["--layer", "fc2", "--top", "3", "--partition-size", "16", "--batch-size", "4",
                "--threads", "1", "--preprocess", "caffe"]  # fmt: skip

dask = pytest.mark.dask


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Generated pictures (one damaged) and narrow weights in a file."""
    root = tmp_path_factory.mktemp("distributed")
    folder = root / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(IMAGES):
        pixels = rng.integers(0, 256, (72, 80, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:03d}.png")
    (folder / BAD).write_bytes((folder / "img000.png").read_bytes()[:100])
    weights = root / "narrow.npz"
    VGG(NARROW, classes=10, seed=0).save_weights(weights)
    return {"root": root, "images": folder, "weights": weights}


@pytest.fixture(scope="module")
def local(job):
    """The local run's result: the reference every cluster run must reproduce."""
    model = load_model(job["weights"], OPTIONS)
    return extract([job["images"]], job["root"] / "local.npy", model, **SETTINGS, verbose=0)


def assert_same_store(local, out) -> None:
    """Rows equal bit for bit (NaN rows included) and every manifest file byte for byte."""
    reference, other = open_store(local.out), open_store(out)
    rows, expected = np.asarray(other.read()), np.load(reference.out)
    assert rows.dtype == expected.dtype and rows.shape == expected.shape
    bits, expected_bits = rows.view(np.uint32), expected.view(np.uint32)  # float32 rows
    differ = (bits != expected_bits).reshape(len(rows), -1).any(axis=1)
    assert not differ.any(), f"{differ.sum()} of {len(rows)} rows differ: {np.flatnonzero(differ)}"
    names = sorted(os.listdir(reference.manifest_dir))
    assert sorted(os.listdir(other.manifest_dir)) == names  # no journal left behind
    for name in names:
        a = pathlib.Path(reference.manifest_dir, name).read_bytes()
        b = pathlib.Path(other.manifest_dir, name).read_bytes()
        assert a == b, f"{name} differs"
    bad = [e for e in other.manifest() if e["status"] == "error"]
    assert [pathlib.Path(e["path"]).name for e in bad] == [BAD]
    assert "damaged or truncated" in bad[0]["reason"]


@pytest.fixture(scope="module")
def client():
    pytest.importorskip("distributed", reason="needs the dask extra: pip install '.[dask]'")
    pytest.importorskip("zarr", reason="needs the dask extra: pip install '.[dask]'")
    with connect(workers=2) as client:
        yield client


@dask
def test_two_workers_write_the_local_store_and_load_the_weights_once_each(client, job, local):
    statuses, skipped = [], []
    result = extract_on_cluster(
        [job["images"]], job["root"] / "two.npy", job["weights"], client, options=OPTIONS,
        **SETTINGS, verbose=0, on_task=statuses.append, on_skip=lambda p, r: skipped.append(p),
    )  # fmt: skip
    assert_same_store(local, job["root"] / "two.npy")
    assert (result.images, result.written, result.failed, result.failed_total) == (96, 96, 1, 1)
    assert (result.shape, result.layer) == (local.shape, local.layer)
    assert [pathlib.Path(p).name for p in skipped] == [BAD]
    # Six tasks on two processes, each process loading the weights on its first task only.
    pids = {s["pid"] for s in statuses}
    assert len(statuses) == 6 and len(pids) == 2
    assert all(s["model_loads"] == 1 for s in statuses), [s["model_loads"] for s in statuses]


@dask
def test_the_scheduler_option_writes_zarr_and_prints_the_local_summary(client, job, local, capsys):
    out = job["root"] / "cluster.zarr"
    code = main(["extract", str(job["images"]), "--weights", str(job["weights"]), "-o", str(out),
                 *CLI_SETTINGS, "--scheduler", client.scheduler.address, "--json",
                 "--progress"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1, captured.err  # one picture skipped (BAD): exit 1, as in every command
    assert_same_store(local, out)
    summary = json.loads(captured.out)
    expected = local.to_dict()
    for key in ("layer", "images", "written", "failed", "already_done", "failed_total",
                "preprocessing"):  # fmt: skip
        assert summary[key] == expected[key], key
    assert f"Dask scheduler {client.scheduler.address}: 2 workers, 2 threads" in captured.err
    # The bar's last state: every image, the rate, every task.
    assert re.search(r"\] 96/96 images [0-9.]+ images/s ETA [0-9:]+, 6/6 tasks", captured.err)


def kill_a_worker_mid_partition(client, manifest_dir: str, batches: int) -> tuple[str, int]:
    """SIGKILL the worker running a partition whose journal holds at least one batch and
    fewer than half of them; return the partition's name and the pid killed."""
    pids = client.run(os.getpid)  # address -> pid
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for journal in glob.glob(os.path.join(manifest_dir, "part-*.journal.jsonl")):
            with open(journal) as file:
                rows = file.read().count("\n")
            if not 0 < rows < SETTINGS["batch_size"] * batches // 2:
                continue
            name = os.path.basename(journal).split(".")[0]
            for address, keys in client.processing().items():
                if any(name in str(key) for key in keys):
                    os.kill(pids[address], signal.SIGKILL)
                    return name, pids[address]
        time.sleep(0.002)
    raise AssertionError("no partition was seen mid-run")


@dask
def test_a_worker_killed_mid_partition_has_it_rerun_elsewhere(client, job, local):
    out = job["root"] / "killed.npy"
    manifest_dir = f"{out}.manifest"
    killed, statuses = {}, []

    def on_task(status):
        statuses.append(status)
        if not killed:  # after the first task: the others are running
            batches = SETTINGS["partition_size"] // SETTINGS["batch_size"]
            killed["name"], killed["pid"] = kill_a_worker_mid_partition(
                client, manifest_dir, batches
            )
            complete = os.path.exists(os.path.join(manifest_dir, f"{killed['name']}.jsonl"))
            assert not complete, "the partition finished before its worker was killed"

    result = extract_on_cluster([job["images"]], out, job["weights"], client, options=OPTIONS,
                                **SETTINGS, verbose=0, on_task=on_task)  # fmt: skip
    assert_same_store(local, out)
    assert (result.written + result.already_done, result.failed_total) == (96, 1)
    index = int(killed["name"].split("-")[1])
    (rerun,) = [s for s in statuses if s["result"]["index"] == index]
    assert rerun["pid"] != killed["pid"]
    # The rerun resumed after the batches the killed worker had journaled.
    assert rerun["result"]["already_done"] > 0
    assert rerun["result"]["already_done"] + rerun["result"]["written"] == 16


@dask
def test_a_partition_that_ends_every_worker_stops_the_run_in_one_error(job):
    pytest.importorskip("distributed", reason="needs the dask extra: pip install '.[dask]'")
    import dask

    out = job["root"] / "fatal.npy"
    manifest_dir = f"{out}.manifest"
    # No retry allowed: the first worker killed under a partition ends the run.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), connect(workers=1) as one:
        batches = SETTINGS["partition_size"] // SETTINGS["batch_size"]
        killed = []

        def on_task(status):
            if not killed:
                killed.append(kill_a_worker_mid_partition(one, manifest_dir, batches)[0])

        with pytest.raises(ClusterError, match=r"fatal\.npy: every worker it was given died"):
            extract_on_cluster([job["images"]], out, job["weights"], one, options=OPTIONS,
                               **SETTINGS, verbose=0, on_task=on_task)  # fmt: skip
    # What was written stays: a rerun resumes from the partitions complete before the kill.
    pending = [p.name for p in open_store(out).pending()]
    assert killed[0] in pending and 0 < len(pending) < IMAGES // SETTINGS["partition_size"] + 1


def wait_until_idle(client, seconds: float = 60) -> None:
    """Wait for tasks a dead client left running (Dask cannot stop a running task)."""
    deadline = time.monotonic() + seconds
    while any(client.processing().values()):
        assert time.monotonic() < deadline, "the workers stayed busy"
        time.sleep(0.05)


@dask
def test_a_killed_client_is_resumed_from_the_manifest(client, job, local, capsys):
    out = job["root"] / "resumed.npy"
    manifest_dir = f"{out}.manifest"
    command = [sys.executable, "-m", "vgg_np", "extract", str(job["images"]), "--weights",
               str(job["weights"]), "-o", str(out), *CLI_SETTINGS,
               "--scheduler", client.scheduler.address]  # fmt: skip
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": path},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not glob.glob(os.path.join(manifest_dir, "part-*[0-9].jsonl")):
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "no partition completed in 120 s"
            time.sleep(0.005)
    finally:
        process.kill()
        process.wait()
    done_before = len(glob.glob(os.path.join(manifest_dir, "part-*[0-9].jsonl")))
    assert 0 < done_before < 6
    # Rerun on a new local cluster while the old one may still finish what it was running:
    # both write the same bytes.
    code = main(["extract", str(job["images"]), "--weights", str(job["weights"]), "-o", str(out),
                 *CLI_SETTINGS, "--workers", "2", "--json"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1, captured.err  # BAD is skipped in the store, whichever run wrote it
    wait_until_idle(client)
    assert_same_store(local, out)
    summary = json.loads(captured.out)
    assert summary["already_done"] >= 16 * done_before
    assert summary["already_done"] + summary["written"] == 96
    assert "Dask scheduler tcp://127.0.0.1:" in captured.err  # the local cluster's


# -- no cluster needed ---------------------------------------------------------------------


def test_scheduler_and_workers_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["extract", "x.png", "--weights", "w.npz", "-o", "o.npy", "--workers", "2",
              "--scheduler", "tcp://127.0.0.1:8786"])  # fmt: skip
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


def test_without_dask_the_cluster_options_fail_in_one_line(job, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    code = main(["extract", str(job["images"]), "--weights", str(job["weights"]), "-o",
                 str(job["root"] / "never.npy"), "--workers", "2"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        "vgg-np: error: running on a Dask cluster needs the optional dask extra: "
        'pip install ".[dask]" from a checkout of vgg_np (or dask[distributed] and zarr)'
    )  # vgg_np is not on PyPI: "vgg_np[dask]" installs nothing
    assert not (job["root"] / "never.npy").exists()


def test_load_model_reloads_a_replaced_file(tmp_path):
    path = tmp_path / "w.npz"
    VGG(NARROW, classes=10, seed=0).save_weights(path)
    first = load_model(path, OPTIONS)
    assert load_model(path, OPTIONS) is first
    VGG(NARROW, classes=10, seed=1).save_weights(tmp_path / "other.npz")
    os.replace(tmp_path / "other.npz", path)
    second = load_model(path, OPTIONS)
    assert second is not first
    assert not np.array_equal(second.weights["fc2"][0], first.weights["fc2"][0])


def test_engine_options_share_the_cpus_between_local_workers():
    cpus = len(os.sched_getaffinity(0))
    assert engine_options(1) == {"threads": cpus}
    assert engine_options(2 * cpus) == {"threads": 1}
    assert engine_options(None) == {} and engine_options(4, threads=2) == {"threads": 2}


@pytest.fixture
def silent_scheduler():
    """A TCP server on 127.0.0.1 that accepts every connection and never says a word."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for connection in accepted:
        connection.close()


@dask
def test_a_scheduler_that_never_answers_is_given_up_after_the_timeout(
    job, silent_scheduler, capsys
):
    pytest.importorskip("distributed", reason="needs the dask extra: pip install '.[dask]'")
    start = time.monotonic()
    code = main(["extract", str(job["images"]), "--weights", str(job["weights"]), "-o",
                 str(job["root"] / "never.npy"), "--scheduler", silent_scheduler,
                 "--cluster-timeout", "2"])  # fmt: skip
    assert code == 1 and time.monotonic() - start < 60
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"vgg-np: error: {silent_scheduler}: cannot reach the Dask scheduler within 2 s: no "
        "answer (is it a Dask scheduler?) (a longer wait: --cluster-timeout)"
    )
    assert not (job["root"] / "never.npy").exists()


@dask
def test_a_cluster_without_workers_is_given_up_after_the_timeout(job):
    distributed = pytest.importorskip("distributed", reason="needs the dask extra")
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as cluster:
        start = time.monotonic()
        with pytest.raises(ClusterError, match=r"no worker joined within 1 s; start some \(dask"):
            with connect(cluster.scheduler_address, timeout=1):
                pass
        assert time.monotonic() - start < 30


def test_the_timeout_must_be_a_positive_number():
    with pytest.raises(ValueError, match=r"`timeout` must be a positive number of seconds, got 0"):
        with connect("tcp://127.0.0.1:1", timeout=0):
            pass
