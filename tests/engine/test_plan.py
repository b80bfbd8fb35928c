"""The measuring planner and its plan files (vgg_np.engine.measure, cache, plan).

No test here depends on timing: the planner's clock is a fake that advances by a fixed
cost per candidate whenever a layer runs, so its choices are known in advance. Every
choice the planner can make is run against the float64 reference forward and checked for
batch and thread invariance; hostile plan files (damaged, truncated, foreign, a FIFO...)
must cost a warning and a new measurement, never an error or another result.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import warnings

import numpy as np
import pytest

from tests.conftest import ENGINE_REL_TOL, FLOAT64_ENGINE_REL_TOL, relative_error
from tests.conftest import SMALL_CONFIG as SMALL
from vgg_np import VGG
from vgg_np.engine import cache, conv, measure, threads
from vgg_np.engine.conv import ConvRun
from vgg_np.engine.plan import (
    Choice,
    allowed_algorithms,
    choose_algorithm,
    default_choice,
    variations,
)
from vgg_np.layers import forward, shapes

INPUT = (64, 64, 3)


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    """A cache folder of the test's own; no plan asked for by the environment."""
    monkeypatch.setenv("VGG_NP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VGG_NP_PLAN", raising=False)
    return tmp_path / "cache"


@pytest.fixture
def every_layer_on_the_threads(monkeypatch):
    """The small network's layers are below the size the engine hands to its threads."""
    monkeypatch.setattr(threads, "MIN_PARALLEL_MACS", 0)


def cost(choice: Choice) -> float:
    """The fake seconds a candidate takes: fixed, so that the planner's choice is known."""
    algorithm = {"gemm": 3.0, "winograd-2": 2.0, "winograd-4": 1.5}[choice.algorithm]
    order = 0.3 if choice.order == "position" else 0.0
    return algorithm + order + 0.1 * choice.rows_per_chunk - 0.01 * choice.channel_block


@pytest.fixture
def fake_clock(monkeypatch):
    """A clock that advances by `cost` whenever a layer runs; counts the runs too."""
    state = {"now": 0.0, "runs": 0}
    original = ConvRun.run

    def run(self, workers, pass_state):
        state["now"] += cost(self.plan.choice)
        state["runs"] += 1
        return original(self, workers, pass_state)

    monkeypatch.setattr(ConvRun, "run", run)

    def clock() -> float:
        return state["now"]

    clock.state = state
    return clock


def measured(clock, plan="measure", **options) -> VGG:
    model = VGG(SMALL, classes=7, seed=3, classifier_activation=None, plan=plan, **options)
    model.engine.planner.clock = clock
    return model


def conv_layers(model: VGG, input_shape=INPUT):
    """(index, layer, (H, W, C, O), pool) of each convolution the engine runs."""
    layers = model.engine.layers
    for index, (layer, shape, _) in enumerate(shapes(layers, input_shape)):
        if layer.kind == "conv":
            pool = index + 1 < len(layers) and layers[index + 1].kind == "pool"
            yield index, layer, (*shape, layer.units), pool


def expected_choice(shape, pool, dtype="float32", requested="auto") -> Choice:
    """What the planner must choose with the fake clock: the search run on `cost`, from the
    built-in table's algorithm."""
    item = np.dtype(dtype).itemsize
    builtin = choose_algorithm(requested, shape[0], shape[2], dtype)
    order = sorted(allowed_algorithms(requested, dtype), key=lambda a: a != builtin)
    first = [default_choice(a, shape, item, pool) for a in order]
    return measure.search(first, lambda c: variations(c, shape, pool), lambda c, _: cost(c))


def reachable(shape, pool, dtype="float32", requested="auto") -> list[Choice]:
    """Every choice the search can end with for a layer: any algorithm, then any chunk,
    any channel blocks, any order it tries."""
    item, found = np.dtype(dtype).itemsize, set()
    for algorithm in allowed_algorithms(requested, dtype):
        base = default_choice(algorithm, shape, item, pool)
        for rows in [base, *variations(base, shape, pool)["rows"]]:
            for blocks in [rows, *variations(rows, shape, pool)["blocks"]]:
                found.update([blocks, *variations(blocks, shape, pool)["order"]])
    return sorted(found, key=repr)


def write_plan(path, model: VGG, choose, requested="auto") -> None:
    """A plan file pinning `choose(index, shape, pool)` for each convolution of `model`."""
    plans = {
        measure.layer_key(requested, model.dtype, shape, pool): choose(index, shape, pool).to_dict()
        for index, _, shape, pool in conv_layers(model)
    }
    path.write_text(
        json.dumps({"format": cache.FORMAT, "machine": {"version": cache.VERSION}, "plans": plans})
    )


def reference(model: VGG, x: np.ndarray) -> dict:
    weights = {name: tuple(a.astype(np.float64) for a in t) for name, t in model.weights.items()}
    out = {}
    forward(model.layers, weights, x.astype(np.float64),
            hook=lambda layer, values: out.setdefault(layer.name, values["output"]))  # fmt: skip
    return out


# -- the search, on its own -----------------------------------------------------------------


def test_fastest_keeps_the_incumbent_unless_clearly_beaten_and_drops_slow_candidates():
    a, b, c = Choice("gemm", 2, 8), Choice("gemm", 4, 8), Choice("gemm", 6, 8)
    calls = []

    def timed(times):
        def time_fn(choice):
            calls.append(choice)
            return times[choice]

        return time_fn

    winner, best = measure.fastest([a, b, c], timed({a: 1.0, b: 0.99, c: 5.0}))
    assert winner == a  # 1% faster is within the noise margin
    assert calls.count(c) == 1  # 5x slower: dropped after the first turn
    assert calls.count(a) == measure.REPEATS and best == {a: 1.0, b: 0.99, c: 5.0}
    winner, _ = measure.fastest([a, b, c], timed({a: 1.0, b: 0.9, c: 5.0}))
    assert winner == b


def test_the_best_of_several_turns_counts():
    a, b = Choice("gemm", 2, 8), Choice("gemm", 4, 8)
    turns = {a: iter([1.3, 1.0, 1.0]), b: iter([1.1, 1.1, 1.1])}  # a's first run was disturbed
    winner, best = measure.fastest([b, a], lambda c: next(turns[c]))
    assert (winner, best[a]) == (a, 1.0)


def test_search_goes_stage_by_stage_from_the_best_so_far():
    shape, pool = (56, 56, 32, 64), True
    got = measure.search(
        [default_choice(a, shape, 4, pool) for a in ("winograd-4", "winograd-2", "gemm")],
        lambda c: variations(c, shape, pool),
        lambda c, stage: cost(c),
    )
    assert got.algorithm == "winograd-4" and got.order == "chunk"
    assert got.rows_per_chunk == min(c.rows_per_chunk for c in reachable(shape, pool) if c.m == 4)


# -- the planner in an engine, with a fake clock ----------------------------------------------


def test_the_planner_keeps_what_the_clock_finds_fastest_and_the_next_engine_reads_it(
    cache_dir, fake_clock
):
    model = measured(fake_clock)
    plans = model.engine.plans(INPUT)
    for _, layer, shape, pool in conv_layers(model):
        assert plans[layer.name].choice == expected_choice(shape, pool), layer.name
    assert model.engine.planner.seconds > 0
    files = list(cache_dir.iterdir())
    assert [f.name for f in files] == [cache.default_path(cache.machine(model.engine.threads)).name]
    saved = json.loads(files[0].read_text())["plans"]
    assert len(saved) == len(plans)

    runs = fake_clock.state["runs"]
    again = measured(fake_clock)
    assert {n: p.choice for n, p in again.engine.plans(INPUT).items()} == {
        n: p.choice for n, p in plans.items()
    }
    assert (
        fake_clock.state["runs"] == runs and again.engine.planner.seconds == 0
    )  # read, not measured
    x = np.random.default_rng(0).standard_normal((2, *INPUT)).astype(np.float32)
    np.testing.assert_array_equal(again(x), model(x))


def test_the_default_plan_measures_nothing_and_writes_nothing(cache_dir, fake_clock):
    model = VGG(SMALL, classes=7, seed=3)
    model(np.zeros((1, *INPUT), np.float32))
    assert not model.engine.planner.measures and model.engine.planner.seconds == 0
    assert not cache_dir.exists()
    for _, layer, shape, pool in conv_layers(model):
        expected = default_choice(model.engine.plans(INPUT)[layer.name].algorithm, shape, 4, pool)
        assert model.engine.plans(INPUT)[layer.name].choice == expected


def test_vgg_np_plan_in_the_environment_opts_in(cache_dir, monkeypatch):
    monkeypatch.setenv("VGG_NP_PLAN", "measure")
    assert VGG(SMALL, seed=0).engine.planner.measures
    monkeypatch.setenv("VGG_NP_PLAN", "fastest")
    with pytest.raises(ValueError, match=r"\$VGG_NP_PLAN"):
        VGG(SMALL, seed=0)


@pytest.mark.parametrize(
    ("plan", "error", "match"),
    [
        ("fast", ValueError, "`plan` must be 'default', 'measure' or the path of a plan file"),
        ("plans.txt", ValueError, r"\(\.json\), got 'plans.txt'"),
        (3, TypeError, "`plan` must be"),
    ],
)
def test_a_bad_plan_argument_is_refused_when_the_model_is_built(plan, error, match):
    with pytest.raises(error, match=match):
        VGG(SMALL, seed=0, plan=plan)


def test_a_spent_budget_runs_the_built_in_choices_and_saves_nothing(
    cache_dir, fake_clock, monkeypatch
):
    monkeypatch.setattr(measure, "BUDGET_SECONDS", 0.0)
    model = measured(fake_clock)
    plans = model.engine.plans(INPUT)
    assert fake_clock.state["runs"] == 0 and not cache_dir.exists()
    for _, layer, shape, pool in conv_layers(model):
        assert plans[layer.name].choice == default_choice(
            plans[layer.name].algorithm, shape, 4, pool
        )


def test_another_blas_or_thread_count_is_another_plan_file(monkeypatch):
    two = cache.default_path(cache.machine(2))
    assert cache.default_path(cache.machine(1)) != two
    libraries = [{**lib, "architecture": "Haswell"} for lib in threads.blas_libraries()]
    monkeypatch.setattr(cache, "blas_libraries", lambda: libraries)
    assert cache.default_path(cache.machine(2)) != two


def test_a_plan_file_named_by_the_user_pins_its_choices_and_gains_the_missing_ones(
    tmp_path, fake_clock
):
    path = tmp_path / "plans.json"
    model = measured(fake_clock, plan=path)
    layers = list(conv_layers(model))
    slowest = {}  # pinned: what the clock would never choose
    for index, _, shape, pool in layers[:3]:
        slowest[index] = default_choice("gemm", shape, 4, pool)
    write_plan(path, model, lambda index, shape, pool: default_choice("gemm", shape, 4, pool))
    document = json.loads(path.read_text())
    document["plans"] = dict(list(document["plans"].items())[:3])
    path.write_text(json.dumps(document))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # from another machine, yet no warning: pinned
        plans = model.engine.plans(INPUT)
    for index, layer, shape, pool in layers:
        want = slowest.get(index) or expected_choice(shape, pool)
        assert plans[layer.name].choice == want, layer.name
    assert len(json.loads(path.read_text())["plans"]) == len(layers)


# -- hostile plan files -----------------------------------------------------------------------


def machine_file(model: VGG):
    return cache.default_path(cache.machine(model.engine.threads))


def valid_document(model: VGG, **changes) -> dict:
    plans = {
        measure.layer_key("auto", "float32", shape, pool): expected_choice(shape, pool).to_dict()
        for _, _, shape, pool in conv_layers(model)
    }
    return {"format": cache.FORMAT, "machine": cache.machine(model.engine.threads),
            "plans": plans, **changes}  # fmt: skip


def damage(kind: str, path, model: VGG) -> None:
    """Put a hostile plan file of `kind` where `model`'s engine reads its plans."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(valid_document(model))
    first_key = next(iter(valid_document(model)["plans"]))
    writers = {
        "empty": lambda: path.write_bytes(b""),
        "truncated": lambda: path.write_text(text[: len(text) // 2]),
        "binary": lambda: path.write_bytes(bytes(range(256)) * 8),
        "a list": lambda: path.write_text("[1, 2, 3]"),
        "another format": lambda: path.write_text(json.dumps({"format": "keras"})),
        "another version": lambda: path.write_text(
            json.dumps(valid_document(model, machine={"version": 999}))
        ),
        "another machine": lambda: path.write_text(
            json.dumps(
                valid_document(
                    model,
                    machine={**cache.machine(model.engine.threads), "cpu": {"model": "other"}},
                )
            )
        ),
        "no plans": lambda: path.write_text(json.dumps(valid_document(model, plans=[1]))),
        "bad entry": lambda: path.write_text(
            json.dumps(valid_document(model, plans={first_key: {"algorithm": "fft"}}))
        ),
        "bool for an int": lambda: path.write_text(
            json.dumps(
                valid_document(
                    model,
                    plans={
                        first_key: {
                            "algorithm": "gemm",
                            "rows_per_chunk": True,
                            "channel_block": 8,
                            "order": "chunk",
                        }
                    },
                )
            )
        ),
        "a choice that does not fit": lambda: path.write_text(
            json.dumps(
                valid_document(model, plans={first_key: Choice("winograd-4", 10**6, 8).to_dict()})
            )
        ),
        "deep nesting": lambda: path.write_text("[" * 200_000),
        "too large": lambda: path.write_bytes(b" " * (cache.MAX_BYTES + 1)),
        "a FIFO": lambda: os.mkfifo(path),
        "a folder": lambda: path.mkdir(),
    }
    writers[kind]()


WARNINGS = {
    "empty": "damaged", "truncated": "damaged", "binary": "damaged",
    "a list": "not a vgg_np plan file", "another format": "not a vgg_np plan file",
    "another version": "another version", "another machine": "another machine",
    "no plans": "damaged", "bad entry": "not a plan entry|unknown algorithm",
    "bool for an int": "not a plan entry", "a choice that does not fit": "does not fit",
    "deep nesting": "damaged", "too large": "more than", "a FIFO": "FIFO",
    "a folder": "directory",
}  # fmt: skip


@pytest.mark.parametrize("kind", list(WARNINGS))
def test_a_hostile_plan_file_costs_a_warning_and_a_new_measurement(cache_dir, fake_clock, kind):
    clean = measured(fake_clock)
    x = np.random.default_rng(1).standard_normal((2, *INPUT)).astype(np.float32)
    path = machine_file(clean)
    damage(kind, path, clean)
    model = measured(fake_clock)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plans = model.engine.plans(INPUT)
    messages = [str(w.message) for w in caught if w.category is RuntimeWarning]
    assert any(re.search(WARNINGS[kind], m) for m in messages), messages
    if kind in ("a FIFO", "a folder"):
        assert any("not saved" in m for m in messages), messages
    for _, layer, shape, pool in conv_layers(model):
        assert plans[layer.name].choice == expected_choice(shape, pool), (kind, layer.name)
    fresh = VGG(SMALL, classes=7, seed=3, classifier_activation=None, plan=path.parent / "x.json")
    fresh.engine.planner.clock = fake_clock
    np.testing.assert_array_equal(model(x), fresh(x))  # the same numbers as measuring afresh
    if kind in ("a FIFO", "a folder"):
        assert not path.is_file()  # never replaced
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert len(cache.load(path, cache.machine(model.engine.threads))) == len(plans)


def test_an_unwritable_cache_folder_warns_and_the_model_still_runs(
    tmp_path, monkeypatch, fake_clock
):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("VGG_NP_CACHE", str(blocker / "vgg_np"))
    model = measured(fake_clock)
    x = np.ones((1, *INPUT), np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = model(x)
    messages = [str(w.message) for w in caught]
    assert any("Not a directory" in m for m in messages), messages  # reading it
    assert any("cannot save the measured plans" in m for m in messages), messages
    assert y.shape == (1, 7) and np.isfinite(y).all()


def test_processes_writing_one_plan_file_at_once_leave_a_valid_file(tmp_path):
    path, description = tmp_path / "plans.json", cache.machine(2)
    problems = []

    def writer(k: int) -> None:
        for j in range(15):
            cache.store(path, description, {f"layer {k} {j}": Choice("gemm", 1 + j, 8)}, False)

    def reader() -> None:
        for _ in range(60):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                cache.load(path, description)
            problems.extend(str(w.message) for w in caught)

    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        list(pool.map(lambda f: f(), [lambda k=k: writer(k) for k in range(4)] + [reader]))
    assert not problems, problems[:3]
    entries = cache.load(path, description)
    assert entries and all(choice.algorithm == "gemm" for choice in entries.values())
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]  # no leftovers


# -- every choice computes the network ----------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_choice_the_planner_can_make_is_within_tolerance_and_invariant(
    tmp_path, dtype, every_layer_on_the_threads
):
    model = VGG(SMALL, classes=7, seed=3, classifier_activation=None, dtype=dtype)
    layers = list(conv_layers(model))
    options = {index: reachable(shape, pool, dtype) for index, _, shape, pool in layers}
    rng = np.random.default_rng(2)
    image, others = rng.standard_normal((1, *INPUT)), rng.standard_normal((2, *INPUT))
    exact = reference(model, image)
    checked = 0
    for k in range(max(len(o) for o in options.values())):
        path = tmp_path / f"plan{k}.json"
        write_plan(
            path, model, lambda index, shape, pool, k=k: options[index][k % len(options[index])]
        )
        chosen = [options[index][k % len(options[index])] for index in options]
        family = "winograd" if any(c.m > 1 for c in chosen) else "gemm"
        tolerance = FLOAT64_ENGINE_REL_TOL if dtype == "float64" else ENGINE_REL_TOL[family]
        alone = None
        for n_threads in (1, 2):
            pinned = VGG(SMALL, classes=7, seed=3, classifier_activation=None, dtype=dtype,
                         plan=path, threads=n_threads)  # fmt: skip
            assert [p.choice for p in pinned.engine.plans(INPUT).values()] == chosen
            got = pinned.activations(image.astype(dtype))
            if alone is None:
                alone = got
                for name, y in got.items():
                    assert relative_error(y, exact[name]) < tolerance, (k, name)
            batch = np.concatenate([others[:1], image, others[1:]]).astype(dtype)  # (3, ...)
            for name, y in pinned.activations(batch).items():
                assert np.array_equal(y[1], alone[name][0]), (k, n_threads, name)
            checked += 1
    print(f"\n{dtype}: {checked} plans x threads, {sum(map(len, options.values()))} choices")
    assert checked == 2 * max(len(o) for o in options.values()) >= 8


@pytest.mark.parametrize("group_bytes", [conv.POSITION_BYTES, 1])  # 1: a chunk per group
def test_the_position_order_gives_the_same_bits_as_the_chunk_order(
    tmp_path, every_layer_on_the_threads, monkeypatch, group_bytes
):
    monkeypatch.setattr(conv, "POSITION_BYTES", group_bytes)
    model = VGG(SMALL, classes=7, seed=3, classifier_activation=None)
    x = np.random.default_rng(3).standard_normal((3, *INPUT)).astype(np.float32)
    results = {}
    for order in ("chunk", "position"):
        for algorithm in ("winograd-4", "winograd-2", "gemm"):
            path = tmp_path / f"{order}-{algorithm}.json"
            write_plan(path, model, lambda index, shape, pool, a=algorithm, o=order: Choice(
                a, 2 if a == "gemm" and pool else 1, max(1, shape[3] // 2), o))  # fmt: skip
            results[order, algorithm] = VGG(
                SMALL, classes=7, seed=3, classifier_activation=None, plan=path, threads=2
            ).activations(x)
    for algorithm in ("winograd-4", "winograd-2", "gemm"):
        for name, y in results["chunk", algorithm].items():
            assert np.array_equal(y, results["position", algorithm][name]), (algorithm, name)


@pytest.mark.parametrize("algorithm", ["winograd-4", "winograd-2", "gemm"])
def test_a_band_of_tile_rows_computes_exactly_those_output_rows(algorithm):
    """The planner times large layers on a band of rows: it must be that layer's work."""
    from vgg_np.engine.conv import ConvRun, Pass
    from vgg_np.engine.layout import Buffers, padded
    from vgg_np.engine.threads import Workers

    model = VGG(SMALL, classes=7, seed=3)
    engine = model.engine
    index, _, shape, pool = next(conv_layers(model))
    plan = engine._conv_plan(index, Choice(algorithm, 2 if pool else 1, 8), shape, pool)
    x = np.random.default_rng(4).standard_normal((2, *shape[:3])).astype(np.float32)
    source = padded(*x.shape, plan.m, x.dtype, tiles_h=plan.tiles_h)
    source.interior()[...] = x
    h_out = shape[0] // 2 if pool else shape[0]
    full, band = (np.zeros((2, h_out, h_out, shape[3]), np.float32) for _ in range(2))
    workers, rows = Workers(1), 4 if pool or algorithm == "gemm" else 2
    ConvRun(plan, source, list(full), pool).run(workers, Pass(Buffers()))
    ConvRun(plan, source, list(band), pool, rows).run(workers, Pass(Buffers()))
    done = rows * plan.m // (2 if pool else 1)  # output rows of the band
    np.testing.assert_array_equal(band[:, :done], full[:, :done])
    assert not band[:, done:].any() and full[:, done:].any()
