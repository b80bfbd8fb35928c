"""The model's batch API: predict (bounded memory, bit-equal), features, activations(layers)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from vgg_np import VGG, VGGConfig
from vgg_np.engine import Engine

# Two convolutions in block 2 so that a convolution is followed by another and by a pool.
SMALL = VGGConfig("small", ((4,), (6, 6), (8,), (8,), (8,)), fc=(16, 12), default_size=32)


@pytest.fixture(scope="module")
def model():
    return VGG(SMALL, classes=5, seed=0)


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).standard_normal((7, 32, 32, 3)).astype(np.float32)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7, 32])
def test_predict_equals_the_whole_batch_bit_for_bit(model, x, batch_size):
    expected = model(x)
    got = model.predict(x, batch_size=batch_size, verbose=0)
    assert got.dtype == expected.dtype and got.shape == expected.shape == (7, 5)
    np.testing.assert_array_equal(got, expected)


def test_predict_reads_float64_and_channels_first_one_batch_at_a_time(x):
    last = VGG(SMALL, classes=5, seed=0)
    first = VGG(SMALL, classes=5, seed=0, data_format="channels_first", input_shape=(3, 32, 32))
    nchw = x.transpose(0, 3, 1, 2).astype(np.float64)  # (N, C, H, W), cast per batch
    np.testing.assert_array_equal(first.predict(nchw, batch_size=3, verbose=0), last(x))
    maps = first.predict(nchw, batch_size=3, verbose=0, layer="block2_conv2")
    np.testing.assert_array_equal(maps, last.features(x, "block2_conv2").transpose(0, 3, 1, 2))


def test_every_layer_alone_equals_the_full_pass(model, x):
    everything = model.activations(x)
    for name, expected in everything.items():
        np.testing.assert_array_equal(model.features(x, name), expected, err_msg=name)
        np.testing.assert_array_equal(
            model.predict(x, batch_size=4, verbose=0, layer=name), expected, err_msg=name
        )


def test_activations_of_some_layers_come_in_layer_order_and_stop_at_the_deepest(
    model, x, monkeypatch
):
    computed = []
    conv, other = Engine._conv, Engine.other

    def record_conv(self, state, index, *args, **kwargs):
        computed.append(self.layers[index].name)
        return conv(self, state, index, *args, **kwargs)

    def record_other(self, layer, *args):
        computed.append(layer.name)
        return other(self, layer, *args)

    monkeypatch.setattr(Engine, "_conv", record_conv)
    monkeypatch.setattr(Engine, "other", record_other)
    picked = model.activations(x, layers=["block3_pool", "block2_conv1"])
    assert list(picked) == ["block2_conv1", "block3_pool"]
    # block2_conv1 is followed by a convolution, block3_conv1 by its pool (fused): three
    # convolutions then nothing more.
    assert computed == ["block1_conv1", "block2_conv1", "block2_conv2", "block3_conv1"]
    computed.clear()
    model.features(x, "block2_conv2")  # a convolution asked for runs without its pool
    assert computed == ["block1_conv1", "block2_conv1", "block2_conv2"]
    computed.clear()
    assert model(x).shape == (7, 5)  # the next full pass starts afresh and runs to the end
    assert computed[-1] == "predictions"


def test_without_layers_activations_is_every_layer(model, x):
    assert list(model.activations(x)) == [layer.name for layer in model.layers]


def test_bad_layers_and_batch_sizes_are_named(model, x):
    with pytest.raises(ValueError, match=r"`layers` must name layers of this model \(block1"):
        model.features(x, "fc3")
    with pytest.raises(ValueError, match="got \\['fc1', 'nope'\\]"):
        model.activations(x, layers=["fc1", "nope"])
    with pytest.raises(ValueError, match="`layers` must name"):
        model.activations(x, layers=[])
    with pytest.raises(ValueError, match="`layers` must name"):
        model.predict(x, layer="input")
    with pytest.raises(ValueError, match="`batch_size` must be a positive int, got 0"):
        model.predict(x, batch_size=0)
    with pytest.raises(ValueError, match="`verbose` must be 'auto', 0 or 1, got 'yes'"):
        model.predict(x, verbose="yes")
    with pytest.raises(ValueError, match=r"`x` must be 4-D \(N, H, W, C\), got shape \(32, 32"):
        model.predict(x[0])


def test_predict_shows_a_progress_bar_when_asked(model, x, capsys):
    model.predict(x, batch_size=2, verbose=1)
    err = capsys.readouterr().err
    assert "7/7 images" in err and "images/s" in err and "ETA" in err
    model.predict(x, batch_size=2, verbose=0)
    assert capsys.readouterr().err == ""


# Measures the growth of the peak RSS (VmHWM, reset through /proc/self/clear_refs) over
# one call, after a warm-up call has allocated the engine's buffers for a batch.
RSS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from vgg_np import VGG16

    def rss(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024

    n, how = int(sys.argv[1]), sys.argv[2]
    model = VGG16(include_top=False, pooling="avg", seed=0, threads=1)
    x = np.random.default_rng(0).standard_normal((n, 64, 64, 3)).astype(np.float32)
    model.predict(x[:4], batch_size=4, verbose=0)  # warm-up: buffers for one batch
    before = rss("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")  # peak := now
    y = model.predict(x, batch_size=4, verbose=0) if how == "predict" else model.activations(x)
    nbytes = y.nbytes if how == "predict" else sum(a.nbytes for a in y.values())
    print(json.dumps({"growth": rss("VmHWM") - before, "output": nbytes}))
    """
)


def peak_growth(n: int, how: str) -> int:
    result = subprocess.run(
        [sys.executable, "-c", RSS_SCRIPT, str(n), how],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return json.loads(result.stdout)["growth"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_predict_memory_does_not_grow_with_the_number_of_images():
    # VGG16 without the top on 64x64 inputs: predict's buffers are sized for 4 images by
    # the warm-up, so its peak grows by ~0 MB at N=8 and at N=64. The control shows that
    # the measurement sees growth: `activations` returns every layer's output, ~3.9 MB
    # per image.
    small, large = peak_growth(8, "predict"), peak_growth(64, "predict")
    assert large < small + (20 << 20), (small, large)
    every_small, every_large = peak_growth(8, "activations"), peak_growth(64, "activations")
    assert every_large > every_small + (100 << 20), (every_small, every_large)  # it bites


def test_the_reference_forward_serves_features_and_predict_too(x):
    reference = VGG(SMALL, classes=5, seed=0, conv_algorithm="reference")
    everything = reference.activations(x[:2])
    picked = reference.activations(x[:2], layers=["fc1", "block2_conv2"])
    assert list(picked) == ["block2_conv2", "fc1"]
    np.testing.assert_array_equal(picked["fc1"], everything["fc1"])
    np.testing.assert_array_equal(
        reference.features(x[:2], "block3_pool"), everything["block3_pool"]
    )
    assert reference.predict(x[:2], batch_size=1, verbose=0).shape == (2, 5)
