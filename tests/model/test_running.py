"""vgg_np._running (how a VGG runs) and `hub.weights_path`, moved out of the model file:
what the model's calls rely on, checked on the functions themselves."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from tests.conftest import TINY_CONFIG as TINY
from vgg_np import VGG, _running, formats, hub
from vgg_np.layers import Layer

# A dropout with no activation of its own: the identity, sharing the dense layer's step.
DENSE_THEN_DROPOUT = (
    Layer("flatten", "flatten"),
    Layer("dense", "dense", 5),
    Layer("dropout", "dropout", rate=0.5),
)


def test_prepare_input_without_cast_is_a_view_predict_can_slice():
    # predict reads a memory map one batch at a time: the whole input must not be copied.
    model = VGG(TINY, include_top=False, seed=0, data_format="channels_first")
    x = np.zeros((3, 3, 32, 32), np.float64)  # (N, C, H, W), not the model's dtype
    view = _running.prepare_input(x, model.network, None, cast=False)
    assert view.shape == (3, 32, 32, 3) and view.dtype == np.float64
    assert np.shares_memory(view, x)
    cast = _running.prepare_input(x, model.network, None)
    assert cast.dtype == np.float32 and not np.shares_memory(cast, x)


def test_only_timm_weights_refuse_a_feature_map_larger_than_their_pre_logits():
    model = VGG(TINY, include_top=False, seed=0)
    x = np.zeros((1, 256, 256, 3), np.float32)  # an 8-pixel last feature map
    assert _running.prepare_input(x, model.network, formats.Family.TORCHVISION).shape == x.shape
    with pytest.raises(ValueError, match=r"8-pixel feature map: timm's VGG"):
        _running.prepare_input(x, model.network, formats.Family.TIMM)


@pytest.mark.parametrize("algorithm", ["reference", "auto"])
def test_run_keeps_what_is_asked_and_only_the_last_output_otherwise(algorithm):
    model = VGG(TINY, head=DENSE_THEN_DROPOUT, seed=0, conv_algorithm=algorithm)
    lowered = None if algorithm == "reference" else model._lowered()
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    run = _running.run(model.layers, model.weights, x, False, lowered)
    assert [name for name, _ in run] == ["dropout"]
    picked = _running.run(model.layers, model.weights, x, {"block2_pool", "dense"}, lowered)
    order = [layer.name for layer in model.layers]
    names = [name for name, _ in picked]  # the reference forward gives the last one too
    assert {"block2_pool", "dense"} <= set(names) and names == sorted(names, key=order.index)
    every = _running.run(model.layers, model.weights, x, True, lowered)
    assert [name for name, _ in every] == [layer.name for layer in model.layers]


def test_an_identity_layer_sharing_its_step_gets_its_own_copy():
    # The engine drops the dropout: `dense` and `dropout` are one step's output. A caller
    # writing into one must not change the other.
    model = VGG(TINY, head=DENSE_THEN_DROPOUT, seed=0)
    lowered = model._lowered()
    assert lowered[0].names["dropout"] == lowered[0].names["dense"] == "dense"  # one step
    x = np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype(np.float32)
    out = dict(_running.run(model.layers, model.weights, x, {"dense", "dropout"}, lowered))
    np.testing.assert_array_equal(out["dense"], out["dropout"])
    assert not np.shares_memory(out["dense"], out["dropout"])


def test_the_torchvision_warning_points_at_the_line_that_built_the_model(tmp_path, monkeypatch):
    # It moved from the model file to the hub: its stacklevel must still name the caller.
    path = tmp_path / "t-0.pth"
    VGG(TINY, include_top=False, seed=0).save_weights(tmp_path / "t-0.npz")
    (tmp_path / "t-0.npz").rename(path)  # any format: readers go by content
    keras = hub.Published("keras", "k.h5", "http://invalid/k.h5", "md5", "0" * 32)
    torch = hub.Published("torchvision", "t-0.pth", "http://invalid/t-0.pth", "sha256", "0" * 8)
    monkeypatch.setitem(hub.PUBLISHED, ("tiny", False), (keras, torch))
    monkeypatch.setattr(hub, "resolve", lambda *args, **kwargs: path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        VGG(TINY, weights="imagenet", include_top=False)
    assert [str(w.message)[:61] for w in caught] == [
        "weights='imagenet': no Keras file of tiny is cached, so torch"
    ]
    assert caught[0].filename == __file__


def test_weights_path_passes_a_path_through_and_refuses_a_url():
    assert hub.weights_path("w.h5", "vgg16", True, False, False) == "w.h5"
    with pytest.raises(ValueError, match=r"got the URL 'ftp://x/w\.h5': download it"):
        hub.weights_path("ftp://x/w.h5", "vgg16", True, False, False)
