"""One model shared by several threads: every call gets exactly its single-threaded result.

A thread-pooled web service, a Dask worker with several threads or a notebook's
ThreadPoolExecutor all call one model at once. The engine used to keep its activation
buffers on the model, so concurrent calls overwrote each other's layers and returned
wrong numbers without an error.
"""

from __future__ import annotations

import concurrent.futures
import threading

import numpy as np
import pytest

from tests.conftest import SMALL_CONFIG as SMALL
from vgg_np import VGG, engine


@pytest.fixture(autouse=True)
def concurrent_passes_on_the_threads(monkeypatch):
    """The small test network is below the sizes the engine hands to its threads and runs
    at once for several callers (smaller calls take turns): lift both limits."""
    monkeypatch.setattr(engine, "MIN_PARALLEL_MACS", 0)
    monkeypatch.setattr(engine, "SERIAL_MACS", 0)


CALLERS = 4
CALLS_PER_THREAD = 12


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_sharing_one_model_get_bitwise_single_threaded_results(threads):
    model = VGG(SMALL, classes=7, seed=3, threads=threads, classifier_activation=None)
    rng = np.random.default_rng(0)
    # Different batch sizes, so that concurrent calls also need different buffer shapes.
    xs = [rng.standard_normal((1 + i % 3, 64, 64, 3)).astype(np.float32) for i in range(6)]
    expected = [model(x) for x in xs]
    expected_activations = [model.activations(x) for x in xs]

    def caller(k: int) -> list[str]:
        wrong = []
        for j in range(CALLS_PER_THREAD):
            i = (k + j) % len(xs)
            if j % 2:
                if not np.array_equal(model(xs[i]), expected[i]):
                    wrong.append(f"call {i}")
            else:
                got = model.activations(xs[i])
                assert list(got) == list(expected_activations[i])
                layers = [
                    name
                    for name, y in got.items()
                    if not np.array_equal(y, expected_activations[i][name])
                ]
                if layers:
                    wrong.append(f"activations {i}: {', '.join(layers)}")
        return wrong

    with concurrent.futures.ThreadPoolExecutor(CALLERS) as pool:
        wrong = [w for ws in pool.map(caller, range(CALLERS)) for w in ws]
    calls = CALLERS * CALLS_PER_THREAD
    print(f"\n{len(wrong)} of {calls} calls from {CALLERS} threads gave wrong results")
    assert not wrong, wrong[:10]


def test_concurrent_calls_leave_the_blas_setting_as_they_found_it():
    from threadpoolctl import threadpool_info

    before = [(i["internal_api"], i["num_threads"]) for i in threadpool_info()]
    model = VGG(SMALL, classes=7, seed=3, threads=2)
    x = np.zeros((2, 64, 64, 3), np.float32)
    with concurrent.futures.ThreadPoolExecutor(CALLERS) as pool:
        list(pool.map(lambda _: model(x), range(3 * CALLERS)))
    assert [(i["internal_api"], i["num_threads"]) for i in threadpool_info()] == before


def test_blas_is_single_threaded_during_a_pass_called_from_any_thread():
    from threadpoolctl import threadpool_info

    model = VGG(SMALL, classes=7, seed=3, threads=2)
    x = np.zeros((1, 64, 64, 3), np.float32)
    model(x)  # from the main thread first, as a script or a notebook would
    seen = []

    def probe() -> None:
        passes = model.engine.run(x)
        next(passes)  # inside a pass: our threads run, so BLAS must not add its own
        seen.append([i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"])
        passes.close()

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    assert seen and set(seen[0]) == {1}, seen
