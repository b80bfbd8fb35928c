"""Freed memory kept between training steps (`vgg_np.train.memory`): told, undone, harmless."""

from __future__ import annotations

import resource
import sys
import threading

import numpy as np
import pytest

from vgg_np.layers import Layer
from vgg_np.train import SGD, memory
from vgg_np.train.loop import Top, train_epoch

GLIBC = memory._glibc() is not None


class FakeLibc:
    """Records what `kept` asks of malloc."""

    def __init__(self):
        self.calls = []

    def mallopt(self, parameter, value):
        self.calls.append(("mallopt", parameter, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


@pytest.fixture
def fake(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(memory, "_glibc", lambda: libc)
    return libc


def test_the_outermost_block_sets_the_thresholds_and_gives_the_memory_back(fake):
    with memory.kept() as told:
        assert fake.calls == [
            ("mallopt", memory._M_MMAP_THRESHOLD, memory.MMAP_THRESHOLD),
            ("mallopt", memory._M_TRIM_THRESHOLD, memory.KEPT_TRIM_THRESHOLD),
        ]
        with memory.kept():  # nested: nothing more asked, nothing undone at its end
            pass
        assert len(fake.calls) == 2
    assert told is True
    assert fake.calls[2:] == [
        ("mallopt", memory._M_TRIM_THRESHOLD, memory.DEFAULT_TRIM_THRESHOLD),
        ("malloc_trim", 0),
    ]


def test_an_exception_inside_still_gives_the_memory_back(fake):
    with pytest.raises(RuntimeError, match="diverged"), memory.kept():
        raise RuntimeError("diverged")
    assert fake.calls[-1] == ("malloc_trim", 0)
    with memory.kept():  # and the next block is the outermost again
        pass
    assert [c[0] for c in fake.calls].count("malloc_trim") == 2


def test_blocks_in_two_threads_undo_once_when_both_have_ended(fake):
    inside, release = threading.Barrier(2), threading.Event()

    def hold():
        with memory.kept():
            inside.wait()
            release.wait()

    other = threading.Thread(target=hold)
    other.start()
    with memory.kept():
        inside.wait()
    assert ("malloc_trim", 0) not in fake.calls  # the other thread's block is still open
    release.set()
    other.join()
    assert fake.calls.count(("malloc_trim", 0)) == 1


def test_elsewhere_than_glibc_nothing_changes(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert memory._glibc() is None
    with memory.kept() as told:
        assert told is False


@pytest.mark.skipif(not GLIBC, reason="glibc's malloc only: elsewhere kept() does nothing")
def test_inside_a_block_a_large_array_freed_and_allocated_again_costs_no_page_faults():
    """What the module is for: 8 MB blocks (above glibc's default thresholds) reused."""

    def faults():
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    with memory.kept():
        np.ones(1 << 21, np.float32).sum()  # the heap grows once
        before = faults()
        for _ in range(10):
            np.ones(1 << 21, np.float32).sum()
        inside = faults() - before
    # Without it each round maps 2048 fresh 4 KiB pages (fewer with huge pages).
    assert inside < 100, f"{inside} page faults in 10 rounds of an 8 MB array"


def test_an_epoch_computes_the_same_with_the_memory_kept_or_not(monkeypatch):
    """Memory is reused, never shared: bit-identical losses and weights either way."""
    rng = np.random.default_rng(0)
    layers = [Layer("dense", "dense", 16, "relu"), Layer("predictions", "dense", 3, "softmax")]
    initial = {
        "dense": (rng.standard_normal((300, 16)) * 0.1, np.zeros(16)),
        "predictions": (rng.standard_normal((16, 3)) * 0.1, np.zeros(3)),
    }
    x = rng.standard_normal((64, 300)).astype(np.float32)
    y = rng.integers(0, 3, 64)

    def epoch():
        top = Top(layers, initial)
        batches = iter([(x[i : i + 16], y[i : i + 16]) for i in range(0, 64, 16)])
        result = train_epoch(top, batches, SGD(lr=0.1), np.random.default_rng(1))
        return result, top.weights

    kept_result, kept_weights = epoch()
    monkeypatch.setattr(memory, "_glibc", lambda: None)
    plain_result, plain_weights = epoch()
    assert kept_result == plain_result
    for name, tensors in plain_weights.items():
        for a, b in zip(tensors, kept_weights[name], strict=True):
            np.testing.assert_array_equal(a, b)


def test_fit_gives_the_memory_back_once_its_model_is_written(fake, tmp_path, monkeypatch):
    """The memory kept by the epochs stays kept through validation and the model's writing
    (no page faults at each epoch's start), and is given back once, at the end, after the
    run's arrays are freed. Before, each epoch gave it back, then validation, writing the
    model and freeing the run grew the heap again, and the process kept that: measured
    after a small run (VGG16_bn at 48x48, 40 pictures, 4 epochs, --unfreeze 1), 223-311 MB
    resident when `fit` returned against 133 MB now (what ``malloc_trim`` can reach)."""
    from vgg_np import VGG, VGGConfig
    from vgg_np.train import fit
    from vgg_np.train.data import write_shapes_folder

    trims: list[bool] = []
    output = tmp_path / "m.npz"
    monkeypatch.setattr(
        fake, "malloc_trim", lambda pad: trims.append(output.exists()) or 1, raising=True
    )
    write_shapes_folder(tmp_path / "pics", 4, size=32, seed=0)
    narrow = VGGConfig("vgg16", ((4, 4), (8, 8), (8,) * 3, (8,) * 3, (8,) * 3), fc=(8, 8))
    base = VGG(narrow, include_top=False, input_shape=(32, 32, 3), seed=0)
    fit(tmp_path / "pics", base, output, epochs=3, batch_size=8, preprocess="torch",
        cache_dir=tmp_path / "cache", verbose=0)  # fmt: skip
    assert trims == [True]
    assert memory._depth == 0


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("MALLOC_TRIM_THRESHOLD_", "100000000"),
        ("MALLOC_MMAP_THRESHOLD_", "65536"),
        ("GLIBC_TUNABLES", "glibc.malloc.trim_threshold=1048576"),
        ("GLIBC_TUNABLES", "glibc.rtld.optional_static_tls=1:glibc.malloc.mmap_threshold=4096"),
    ],
)
def test_malloc_thresholds_the_user_set_are_left_as_they_are(fake, monkeypatch, variable, value):
    """Set in the environment the process started with (what glibc reads): the user
    chose; before, `kept` replaced them for good (the trim threshold set back to glibc's
    default, not theirs)."""
    monkeypatch.setattr(memory, "_start_environment", lambda: {"HOME": "/", variable: value})
    with memory.kept() as told:
        pass
    assert told is False and fake.calls == []


def test_other_glibc_tunables_do_not_stop_it(fake, monkeypatch):
    tunables = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}
    monkeypatch.setattr(memory, "_start_environment", lambda: tunables)
    with memory.kept() as told:
        pass
    assert told is True and fake.calls[-1] == ("malloc_trim", 0)


def test_a_threshold_put_in_os_environ_later_does_not_stop_it(fake, monkeypatch):
    """Dask's nanny sets ``MALLOC_TRIM_THRESHOLD_`` in `os.environ` for the workers it
    starts; this process's malloc is unchanged, so `kept` still acts (found by the full
    suite: after the Dask tests, `kept` did nothing)."""
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    assert "MALLOC_TRIM_THRESHOLD_" not in memory._start_environment()
    with memory.kept() as told:
        pass
    assert told is True and fake.calls[-1] == ("malloc_trim", 0)


def test_a_ctrl_c_while_the_thresholds_are_set_leaves_no_block_open(fake, monkeypatch):
    """A KeyboardInterrupt landing in the setting's own calls: before, the block was
    counted but never ended, so no later block set or gave anything back, for good."""

    def interrupted(parameter, value):
        fake.calls.append(("mallopt", parameter, value))
        raise KeyboardInterrupt

    monkeypatch.setattr(fake, "mallopt", interrupted)
    with pytest.raises(KeyboardInterrupt), memory.kept():
        pass
    assert memory._depth == 0
    monkeypatch.setattr(fake, "mallopt", FakeLibc.mallopt.__get__(fake))
    with memory.kept():
        pass
    assert fake.calls[-1] == ("malloc_trim", 0) and memory._depth == 0
