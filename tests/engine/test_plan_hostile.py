"""The planner attacked: plan files holding any layout that passes the checks, plans made for
another network or dtype, the cache replaced under a loaded model, every model kind under
a measured plan.

`tests/engine/test_plan.py` runs every choice the search can *reach*; a plan file is a
user's file (copied from another machine, edited by hand, damaged), so here every layout
`check_choice` accepts is drawn, and must compute the network within its algorithm's
tolerance, bitwise the same alone and in a batch, with any threads -- or be refused.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from importlib import resources

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from tests.conftest import (
    BN_FOLD_REL_TOL,
    ENGINE_REL_TOL,
    FLOAT64_ENGINE_REL_TOL,
    relative_error,
    with_bn_statistics,
)
from tests.conftest import SMALL_CONFIG as SMALL
from vgg_np import VGG, preprocess_input
from vgg_np.engine import cache, measure, threads
from vgg_np.engine.conv import ConvRun
from vgg_np.engine.plan import Choice, allowed_algorithms, check_choice, tiles_high
from vgg_np.layers import Layer, forward, shapes

#: Not square, not a multiple of 4 or 8: Winograd's last tiles and a fused pool's odd rows.
INPUT = (44, 38, 3)
INPUT64 = (64, 64, 3)  # the standard top's input


def conv_layers(model: VGG, input_shape=INPUT):
    """(index, (H, W, C, O), pool) of each convolution the engine runs."""
    layers = model.engine.layers
    for index, (layer, shape, _) in enumerate(shapes(layers, input_shape)):
        if layer.kind == "conv":
            pool = index + 1 < len(layers) and layers[index + 1].kind == "pool"
            yield index, (*shape, layer.units), pool


def plan_document(model: VGG, choices: list[Choice], requested="auto", input_shape=INPUT):
    plans = {
        measure.layer_key(requested, model.dtype, shape, pool): choice.to_dict()
        for (_, shape, pool), choice in zip(conv_layers(model, input_shape), choices, strict=True)
    }
    return {"format": cache.FORMAT, "machine": {"version": cache.VERSION}, "plans": plans}


def reference(model: VGG, x: np.ndarray) -> dict:
    weights = {name: tuple(a.astype(np.float64) for a in t) for name, t in model.weights.items()}
    out = {}
    forward(model.layers, weights, x.astype(np.float64),
            hook=lambda layer, values: out.setdefault(layer.name, values["output"]))  # fmt: skip
    return out


@st.composite
def any_valid_choice(draw, shape, pool, dtype):
    """Any layout `check_choice` accepts for a layer: rows and blocks that need not divide."""
    algorithm = draw(st.sampled_from(allowed_algorithms("auto", dtype)))
    tiles_h = tiles_high(algorithm, shape[0], pool)
    even = 2 if algorithm == "gemm" and pool else 1
    rows = draw(st.integers(1, tiles_h // even)) * even
    block = draw(st.integers(1, shape[3]))
    choice = Choice(algorithm, rows, block, draw(st.sampled_from(("chunk", "position"))))
    check_choice(choice, shape, pool)
    return choice


def small(dtype="float32", **options) -> VGG:
    return VGG(SMALL, include_top=False, input_shape=INPUT, seed=5, dtype=dtype, **options)


LAYERS = list(conv_layers(small()))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@given(data=st.data())
def test_any_layout_a_plan_file_may_hold_computes_the_network(tmp_path_factory, dtype, data):
    choices = [data.draw(any_valid_choice(shape, pool, dtype)) for _, shape, pool in LAYERS]
    path = tmp_path_factory.mktemp("plan") / "plans.json"
    model = small(dtype)
    path.write_text(json.dumps(plan_document(model, choices)))
    rng = np.random.default_rng(7)
    image, others = rng.standard_normal((1, *INPUT)), rng.standard_normal((2, *INPUT))
    exact = reference(model, image)
    family = "winograd" if any(c.m > 1 for c in choices) else "gemm"
    tolerance = FLOAT64_ENGINE_REL_TOL if dtype == "float64" else ENGINE_REL_TOL[family]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(threads, "MIN_PARALLEL_MACS", 0)  # every layer on the threads
        alone = None
        for n_threads in (1, 2):
            pinned = small(dtype, plan=path, threads=n_threads)
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a valid pinned file: nothing to warn about
                got = [p.choice for p in pinned.engine.plans(INPUT).values()]
            assert got == choices
            if alone is None:
                alone = pinned.activations(image.astype(dtype))
                for name, y in alone.items():
                    error = relative_error(y, exact[name])
                    assert error < tolerance, (name, error, choices)
            batch = np.concatenate([others[:1], image, others[1:]]).astype(dtype)  # (3, ...)
            for name, y in pinned.activations(batch).items():
                assert np.array_equal(y[1], alone[name][0]), (n_threads, name, choices)


# -- where the plan file is ---------------------------------------------------------------------


@pytest.mark.parametrize("how", ["plan", "VGG_NP_CACHE"])
def test_a_relative_plan_path_means_the_folder_the_model_was_made_in(tmp_path, monkeypatch, how):
    """The plan file is read at the first call and written after it: a `chdir` between the
    model's creation (its engine's, for the cache folder of the environment) and its calls
    must not make it read (and pin) another folder's file."""
    made_in, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    made_in.mkdir(), elsewhere.mkdir()
    monkeypatch.delenv("VGG_NP_PLAN", raising=False)
    monkeypatch.chdir(made_in)
    if how == "plan":
        model = small(plan="plans.json")
    else:
        monkeypatch.setenv("VGG_NP_CACHE", "cache")
        model = small(plan="measure")
        assert model.engine.planner.measures  # the engine made here
    monkeypatch.setattr(measure, "BUDGET_SECONDS", 1e-9)  # one layer measured: quick
    monkeypatch.chdir(elsewhere)
    model.engine.plans(INPUT)  # the engine is made here, at the first use
    assert not list(elsewhere.iterdir())
    assert list(made_in.rglob("*.json")), list(made_in.rglob("*"))


# -- every model kind under a measured plan -------------------------------------------------------


def pictures(shape: tuple) -> np.ndarray:
    """Three crops of the bundled picture, caffe-preprocessed: ``(3, H, W, 3)``.

    Pictures, as the tolerances were measured on: Gaussian noise (zero-mean, so outputs
    that cancel) takes the built-in plan's F(4x4) layers to 7e-6 of max |y| (measured).
    """
    picture = np.asarray(Image.open(resources.files("vgg_np") / "data" / "demo.png").convert("RGB"))
    h, w, _ = shape
    crops = [picture[40 * k : 40 * k + h, 50 * k : 50 * k + w] for k in range(3)]
    return preprocess_input(np.stack(crops).astype(np.float32))  # (3, H, W, 3)


def hashed_cost(choice: Choice) -> float:
    """Fake seconds that rank the candidates in no pattern (the winners are arbitrary)."""
    digest = hashlib.blake2b(repr(choice).encode(), digest_size=4).digest()
    return 1.0 + int.from_bytes(digest, "little") / 2**32


#: Every kind of network the planner may meet, and its per-image input.
KINDS = {
    "vgg11": (32, 40, 3), "vgg13": (32, 40, 3), "vgg16": (32, 40, 3), "vgg19": (32, 40, 3),
    "batch norm": (48, 40, 3), "head": (56, 36, 3), "top": INPUT64,
}  # fmt: skip


def make(kind: str, **options) -> VGG:
    """A model of `kind` (`KINDS`), seeded: the same weights for any `options`."""
    shape = KINDS[kind]
    if kind.startswith("vgg"):
        return VGG(kind, include_top=False, input_shape=shape, seed=1, **options)
    if kind == "batch norm":
        model = VGG(SMALL, batch_norm=True, include_top=False, input_shape=shape, seed=2, **options)
        return with_bn_statistics(model)
    if kind == "head":
        head = [Layer("gap", "global_avg"), Layer("dense", "dense", 5, "relu"),
                Layer("out", "dense", 3)]  # fmt: skip
        return VGG(SMALL, seed=3, input_shape=shape, head=head, **options)
    return VGG(SMALL, classes=7, seed=4, classifier_activation=None, **options)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_every_model_kind_under_a_measured_plan_matches_the_reference_and_the_default(
    tmp_path, monkeypatch, kind, dtype
):
    monkeypatch.setenv("VGG_NP_CACHE", str(tmp_path))
    monkeypatch.delenv("VGG_NP_PLAN", raising=False)
    monkeypatch.setattr(threads, "MIN_PARALLEL_MACS", 0)
    clock = {"now": 0.0}
    original = ConvRun.run

    def run(self, workers, state):
        clock["now"] += hashed_cost(self.plan.choice)
        return original(self, workers, state)

    monkeypatch.setattr(ConvRun, "run", run)
    shape = KINDS[kind]
    measured = make(kind, plan="measure", dtype=dtype)
    measured.engine.planner.clock = lambda: clock["now"]
    default = make(kind, dtype=dtype)
    choices = {n: p.choice for n, p in measured.engine.plans(shape).items()}
    assert measured.engine.planner.seconds > 0
    assert choices != {n: p.choice for n, p in default.engine.plans(shape).items()}
    x = pictures(shape).astype(dtype)
    exact = reference(measured, x[1:2])
    bn = kind == "batch norm" and dtype == "float32"
    tolerance = {"float64": FLOAT64_ENGINE_REL_TOL, "float32": ENGINE_REL_TOL["auto"]}[dtype]
    tolerance = BN_FOLD_REL_TOL if bn else tolerance
    alone, by_default = measured.activations(x[1:2]), default.activations(x[1:2])
    worst = {}
    for name, y in alone.items():
        worst[name] = relative_error(y, exact[name])
        assert worst[name] < tolerance, (kind, name, worst[name], choices.get(name))
        assert relative_error(by_default[name], exact[name]) < tolerance, (kind, name)
    for name, y in measured.activations(x).items():  # in a batch: the same bits
        assert np.array_equal(y[1], alone[name][0]), (kind, name)
    name = max(worst, key=worst.get)
    print(f"\n{kind} {dtype}: worst {name} {worst[name]:.1e} (tolerance {tolerance:.0e})")


@pytest.mark.parametrize(
    "content", [b'{"name": "my settings", "lr": 0.1}', b"[1, 2]", b"{truncated", b"\x89PNG"]
)
def test_a_plan_path_naming_a_file_that_is_not_a_plan_file_is_never_overwritten(
    tmp_path, monkeypatch, content
):
    """plan="settings.json" by mistake: vgg_np measures, warns, and leaves the user's file."""
    monkeypatch.setattr(measure, "BUDGET_SECONDS", 1e-9)  # one layer measured: quick
    path = tmp_path / "settings.json"
    path.write_bytes(content)
    model = small(plan=path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.engine.plans(INPUT)
    messages = [str(w.message) for w in caught]
    assert path.read_bytes() == content
    assert any("not saved" in m for m in messages), messages
    assert [p.name for p in tmp_path.iterdir()] == ["settings.json"]  # no leftovers


def test_a_plan_file_replaced_under_a_loaded_model_changes_nothing_it_computes(tmp_path):
    """The file is read once per engine: replaced afterwards (another process measured,
    a user copied one in), the loaded model keeps its choices and its bits; a new model
    reads the new file."""
    path = tmp_path / "plans.json"
    ours = [Choice("gemm", 2 if pool else 1, shape[3]) for _, shape, pool in LAYERS]
    theirs = [Choice("winograd-2", 1, max(1, shape[3] // 3)) for _, shape, _ in LAYERS]
    path.write_text(json.dumps(plan_document(small(), ours)))
    x = pictures(INPUT)
    model = small(plan=path)
    before = model(x)
    path.write_text(json.dumps(plan_document(small(), theirs)))
    np.testing.assert_array_equal(model(x), before)
    assert [p.choice for p in model.engine.plans(INPUT).values()] == ours
    fresh = small(plan=path)
    assert [p.choice for p in fresh.engine.plans(INPUT).values()] == theirs
    assert relative_error(fresh(x), before) < ENGINE_REL_TOL["winograd"]
