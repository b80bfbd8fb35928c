"""Make the fixtures of VGGs with heads of their own and with batch normalisation.

What people actually run, built with the real frameworks, with seeded NumPy weights:

- Keras 3 transfer learning (``keras`` extra, torch backend): a VGG16 base without its
  classifier under a head of one's own, at a non-square input, in two common forms:
  ``flatten_head``, a ``Sequential`` holding the nested ``vgg16`` functional model, then
  Flatten, Dense(relu), BatchNormalization, Dropout, Dense(softmax); and ``gap_head``, one
  flat functional model (the base's layers at top level) with GlobalAveragePooling2D in
  place of Flatten. Each saved with ``model.save`` as ``.keras`` and ``.h5``.
- The same exported to ONNX the two ways third parties do: Keras 3's own
  ``model.export(format="onnx")``, which drives tf2onnx (TensorFlow backend, in a
  subprocess; ``pip install tf2onnx tensorflow-cpu``) -- ``tf2onnx.convert.from_keras``
  itself fails on Keras 3 models (``KeyError: 'keras_tensor_N'``) -- and ``torch.onnx``
  (``dynamo=False``) of the same network written in torch (NCHW, Gemm, Flatten).
- torchvision's ``vgg16_bn`` layout (`torch_vgg.TorchVGG`, random init, batch-norm
  statistics from a calibration pass) as ``.pth`` and ``.safetensors``, one whose
  ``classifier`` was replaced by a head of another width, and timm's VGG layout
  (`torch_vgg.TimmVGG`: the classifier as convolutions) as ``.pth``.

Every model's output of every layer is saved beside it (NHWC, by layer or module name),
so the readers can be checked without the frameworks.

Usage::

    python tests/reference/make_heads_reference.py tiny        # tests/data/heads (committed)
    python tests/reference/make_heads_reference.py full DIR    # full-size, 240x200, into DIR
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pathlib
import subprocess
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))  # the repository

import vgg_np
from tests.reference import make_keras_reference as ref
from vgg_np import ops

DATA = pathlib.Path(__file__).resolve().parent.parent / "data" / "heads"

#: Committed fixtures: VGG16's topology at widths small enough for a few KB per file.
MICRO = vgg_np.VGGConfig(
    "vgg16", ((4, 4), (8, 8), (8, 8, 8), (8, 8, 8), (8, 8, 8)), fc=(16, 16), default_size=32
)
#: Inputs: non-square, and large enough that the last map (2x1 tiny, 7x6 full) is too,
#: so a flatten in the wrong order (H, W, C against C, H, W) changes the numbers.
SIZES = {"tiny": (64, 40), "full": (240, 200)}
HEAD_WIDTH = {"tiny": 16, "full": 256}
CLASSES = 5
SEED = 20261128


# ---------------------------------------------------------------------------------------
# Seeded weights
# ---------------------------------------------------------------------------------------


def he_normal(rng, shape) -> np.ndarray:
    """N(0, 2 / fan_in) in float32, fan_in = every axis but the last."""
    fan_in = int(np.prod(shape[:-1]))
    return (rng.standard_normal(shape) * np.sqrt(2 / fan_in)).astype(np.float32)


def small(rng, shape, scale=0.1) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def base_weights(config, rng) -> dict:
    """{block1_conv1: (kernel HWIO, bias)} for the convolutions, He-normal."""
    weights, channels = {}, 3
    for name, width in zip(config.conv_names(), [w for b in config.blocks for w in b], strict=True):
        weights[name] = (he_normal(rng, (3, 3, channels, width)), small(rng, width))
        channels = width
    return weights


def batch_norm_statistics(rng, features: np.ndarray) -> list[np.ndarray]:
    """[gamma, beta, moving_mean, moving_var]: the statistics of `features`, drifted a little."""
    c = features.shape[-1]
    mean, var = ops.batch_moments(np.asarray(features, np.float64))
    return [
        rng.uniform(0.5, 1.5, c).astype(np.float32),
        small(rng, c),
        (mean + 0.1 * np.sqrt(var) * rng.standard_normal(c)).astype(np.float32),
        (var * rng.uniform(0.7, 1.4, c)).astype(np.float32),
    ]


# ---------------------------------------------------------------------------------------
# Keras models
# ---------------------------------------------------------------------------------------


def keras_base(config, size):
    """The VGG16 base without classifier: Keras Applications' own at full size."""
    import keras

    if config is None:
        return keras.applications.VGG16(include_top=False, weights=None, input_shape=(*size, 3))
    return ref.build_keras(config, size, 0, include_top=False, name="vgg16")


def head_layers(pool: str, width: int):
    from keras import layers

    first = layers.Flatten() if pool == "flatten" else layers.GlobalAveragePooling2D()
    return [
        first,
        layers.Dense(width, activation="relu"),
        layers.BatchNormalization(),
        layers.Dropout(0.5),
        layers.Dense(CLASSES, activation="softmax"),
    ]


def build_flatten_head(config, size, width):
    """``Sequential([vgg16, Flatten, Dense, BatchNormalization, Dropout, Dense])``."""
    import keras

    base = keras_base(config, size)
    base.trainable = False
    return keras.Sequential([keras.Input((*size, 3)), base, *head_layers("flatten", width)])


def build_gap_head(config, size, width):
    """One flat functional model: the base's layers, then the head with global pooling."""
    import keras

    base = keras_base(config, size)
    x = base.output
    for layer in head_layers("gap", width):
        x = layer(x)
    return keras.Model(base.inputs, x, name="vgg16_gap_head")


def keras_layer_outputs(model, x) -> dict[str, np.ndarray]:
    """Every layer's output, by name, running the chain layer by layer (nested models too)."""
    import keras

    outputs = {}

    def run(m, y):
        for layer in m.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            y = run(layer, y) if isinstance(layer, keras.Model) else layer(y, training=False)
            outputs[layer.name] = keras.ops.convert_to_numpy(y)
        return y

    run(model, x)
    return outputs


def set_keras_weights(model, base: dict, rng, calibration) -> None:
    """Base weights from `base`; head weights drawn; BN statistics of `calibration`'s features."""
    import keras

    for layer in _all_layers(model):
        if layer.name in base:
            layer.set_weights(list(base[layer.name]))
    for layer in model.layers:  # the head: top level in both forms
        if isinstance(layer, keras.layers.Dense):
            n_in, n_out = layer.kernel.shape
            layer.set_weights(quiet_first(he_normal(rng, (n_in, n_out)), small(rng, n_out)))
        elif isinstance(layer, keras.layers.BatchNormalization):
            features = _output_before(model, layer, calibration)
            layer.set_weights(batch_norm_statistics(rng, features))


def quiet_first(kernel: np.ndarray, bias: np.ndarray) -> list[np.ndarray]:
    """Make output channel 0 nearly constant and positive (it passes the ReLU).

    Its batch-norm variance then falls below eps, so the fixtures tell Keras's eps (1e-3)
    from torch's (1e-5): with the wrong one that channel's output moves by far more than
    any rounding. Trained networks have such channels too.
    """
    kernel[..., 0] *= 1e-5
    bias[0] = abs(bias[0]) + 0.5
    return [kernel, bias]


def _all_layers(model):
    import keras

    for layer in model.layers:
        yield from _all_layers(layer) if isinstance(layer, keras.Model) else (layer,)


def _output_before(model, target, x):
    """The input `target` sees for `x`: the output of the layer before it in the chain."""
    outputs = keras_layer_outputs(model, x)
    names = [layer.name for layer in model.layers]
    return outputs[names[names.index(target.name) - 1]]


# ---------------------------------------------------------------------------------------
# ONNX: tf2onnx (through Keras 3's export, TensorFlow backend) and torch.onnx
# ---------------------------------------------------------------------------------------


def export_tf2onnx(keras_path: pathlib.Path, onnx_path: pathlib.Path) -> None:
    """Run Keras 3's ``model.export(format="onnx")`` (tf2onnx) in a TensorFlow-backend process."""
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3"}
    code = (  # the export refuses a model never called: call it once on zeros
        "import sys, keras, numpy as np; m = keras.saving.load_model(sys.argv[1]); "
        "m(np.zeros((1, *m.input_shape[1:]), np.float32)); "
        "m.export(sys.argv[2], format='onnx', verbose=False)"
    )
    subprocess.run([sys.executable, "-c", code, keras_path, onnx_path], env=env, check=True)


def torch_twin(model, config, size, width, pool: str):
    """`torch_vgg.KerasHeadTwin` holding the Keras `model`'s weights (NCHW, (out, in))."""
    import keras
    import torch

    from tests.reference.torch_vgg import KerasHeadTwin
    from vgg_np.formats.layouts import fc1_keras_to_torch, hwio_to_oihw, linear_to_dense

    h, w = size
    for _ in config.blocks:
        h, w = h // 2, w // 2
    channels = config.blocks[-1][-1]
    features_in = channels if pool == "gap" else channels * h * w
    net = KerasHeadTwin(config.blocks, features_in, width, CLASSES, head=pool).eval()
    model_weights = {layer.name: layer.get_weights() for layer in _all_layers(model)}
    state = {}
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    for conv, name in zip(convs, config.conv_names(), strict=True):
        kernel, bias = model_weights[name]
        state[conv] = (hwio_to_oihw(kernel), bias)
    kinds = (keras.layers.Dense, keras.layers.BatchNormalization)
    dense1, bn, dense2 = (layer.get_weights() for layer in model.layers if isinstance(layer, kinds))
    linear1, norm, linear2 = (
        m for m in net.head if isinstance(m, (torch.nn.Linear, torch.nn.BatchNorm1d))
    )
    first = fc1_keras_to_torch(dense1[0], (h, w, channels)) if pool == "flatten" else dense1[0].T
    with torch.no_grad():
        for conv, (weight, bias) in state.items():
            conv.weight.copy_(torch.from_numpy(weight.copy()))
            conv.bias.copy_(torch.from_numpy(bias))
        linear1.weight.copy_(torch.from_numpy(np.ascontiguousarray(first)))
        linear1.bias.copy_(torch.from_numpy(dense1[1]))
        for target, value in zip(
            ("weight", "bias", "running_mean", "running_var"), bn, strict=True
        ):
            getattr(norm, target).copy_(torch.from_numpy(value))
        linear2.weight.copy_(torch.from_numpy(np.ascontiguousarray(linear_to_dense(dense2[0]))))
        linear2.bias.copy_(torch.from_numpy(dense2[1]))
    return net


def export_torch_onnx(net, size, path: pathlib.Path) -> None:
    import torch

    example = torch.zeros((1, 3, *size))
    torch.onnx.export(
        net,
        (example,),
        str(path),
        dynamo=False,
        input_names=["input"],
        output_names=["probabilities"],
        dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}},
    )


def onnxruntime_output(path: pathlib.Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


# ---------------------------------------------------------------------------------------
# torchvision vgg16_bn and timm VGG state dicts
# ---------------------------------------------------------------------------------------


def torch_module_outputs(net, x_nchw) -> dict[str, np.ndarray]:
    """Every leaf module's output for `x_nchw`, by module path, as NHWC (or (N, F))."""
    import torch

    outputs, hooks = {}, []
    for name, module in net.named_modules():
        if len(list(module.children())) == 0:
            hooks.append(
                module.register_forward_hook(
                    lambda m, i, o, name=name: outputs.__setitem__(name, o.detach().clone())
                )
            )
    with torch.no_grad():
        net(x_nchw)
    for hook in hooks:
        hook.remove()
    return {k: _to_nhwc(v.numpy()) for k, v in outputs.items()}


def _to_nhwc(a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 2, 3, 1) if a.ndim == 4 else a


def has_batch_norm(net) -> bool:
    import torch

    return any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())


def randomise(net, seed: int, calibration) -> None:
    """Seeded parameters; batch-norm running statistics from one pass over `calibration`."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0, (2 / fan_in) ** 0.5, generator=generator)
                module.bias.normal_(0, 0.1, generator=generator)
                if has_batch_norm(net) and isinstance(module, torch.nn.Conv2d):  # `quiet_first`
                    module.weight[0] *= 1e-5
                    module.bias[0] = module.bias[0].abs() + 0.5
            elif isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                module.weight.uniform_(0.5, 1.5, generator=generator)
                module.bias.normal_(0, 0.1, generator=generator)
                module.momentum = None  # a cumulative average: the calibration set's statistics
    net.train()
    with torch.no_grad():
        net(calibration)
    net.eval()
    for module in net.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.momentum = 0.1


def torch_models(config, calibration_nhwc, width):
    """The torchvision-style and timm-style models of the fixtures, seeded and calibrated.

    ``vgg16_bn_custom_classifier`` stands for the usual fine-tuning recipe,
    ``model.classifier = nn.Sequential(nn.Linear(25088, 256), nn.ReLU(), nn.Dropout(0.4),
    nn.Linear(256, classes))``.
    """
    import torch

    from tests.reference.torch_vgg import TimmVGG, TorchVGG

    calibration = torch.from_numpy(calibration_nhwc.transpose(0, 3, 1, 2).copy())
    custom = torch.nn.Sequential(
        torch.nn.Linear(config.blocks[-1][-1] * 49, width),
        torch.nn.ReLU(True),
        torch.nn.Dropout(0.4),
        torch.nn.Linear(width, CLASSES),
    )
    models = {
        "vgg16_bn": TorchVGG(config.blocks, config.fc, 10, batch_norm=True),
        "vgg16_bn_custom_classifier": TorchVGG(config.blocks, batch_norm=True, classifier=custom),
        "timm_vgg16": TimmVGG(config.blocks, config.fc[0], 10),
    }
    for offset, net in enumerate(models.values()):
        randomise(net, SEED + offset, calibration)
    # Fine-tuned from vgg16_bn: the same features under the new classifier.
    models["vgg16_bn_custom_classifier"].features.load_state_dict(
        models["vgg16_bn"].features.state_dict()
    )
    return models


def save_torch_fixtures(config, width, out, x_nhwc, calibration, notes: dict) -> dict:
    """Write the torch models' state dicts; return their outputs (see `compact`)."""
    import safetensors.torch
    import torch

    x = torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())
    arrays = {}
    for name, net in torch_models(config, calibration, width).items():
        state = net.state_dict()
        torch.save(state, out / f"{name}.pth")
        if name == "vgg16_bn":
            safetensors.torch.save_file(
                {k: v.contiguous() for k, v in state.items()}, out / f"{name}.safetensors"
            )
        outputs, modules = torch_module_outputs(net, x), dict(net.named_modules())
        with torch.no_grad():  # the same weights in float64: an oracle free of torch's rounding
            arrays[f"{name}/float64_output"] = copy.deepcopy(net).double()(x.double()).numpy()
        # In `features` only the block outputs (after ReLU, after each pool), as Keras has
        # them; the fine-tuned model's features are vgg16_bn's, stored once.
        block = (torch.nn.ReLU, torch.nn.MaxPool2d)
        shared = name == "vgg16_bn_custom_classifier"
        outputs = {
            k: v
            for k, v in outputs.items()
            if not k.startswith("features.") or (isinstance(modules[k], block) and not shared)
        }
        arrays.update(compact(name, outputs))
        notes[name] = {
            "state_dict": {k: [str(v.dtype), list(v.shape)] for k, v in state.items()},
            "modules": [f"{k}: {type(m).__name__}" for k, m in net.named_modules() if k],
        }
    return arrays


# ---------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------

#: Activations larger than this (values per image) are kept as `ref.take_slice` samples.
FULL_LIMIT = 512


def compact(model: str, outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``{model}/{layer}`` -> output, or ``{model}/{layer}/slice`` -> `ref.take_slice` of it.

    The large early maps are sampled on a 7x7x16 grid (`ref.slice_indices`), so the
    fixtures stay small; every later layer is kept whole.
    """
    kept = {}
    for name, value in outputs.items():
        if value.ndim == 4 and value[0].size > FULL_LIMIT:
            kept[f"{model}/{name}/slice"] = ref.take_slice(value)
        else:
            kept[f"{model}/{name}"] = value
    return kept


def make(kind: str, out: pathlib.Path) -> dict:
    """Write every fixture of `kind` ("tiny" or "full") into `out`; return what was observed."""
    import keras

    out.mkdir(parents=True, exist_ok=True)
    config = MICRO if kind == "tiny" else vgg_np.CONFIGS["vgg16"]
    keras_config = MICRO if kind == "tiny" else None  # full size: Keras Applications' VGG16
    size, width = SIZES[kind], HEAD_WIDTH[kind]
    rng = np.random.default_rng(SEED)
    pixels = ref.reference_images(2, size, seed=SEED)
    x = keras.applications.vgg16.preprocess_input(pixels.astype(np.float32))
    calibration = ref.reference_images(8, size, seed=SEED + 1)
    calibration = keras.applications.vgg16.preprocess_input(calibration.astype(np.float32))
    base = base_weights(config, rng)
    notes: dict = {"input": list(x.shape), "keras": keras.__version__}
    arrays = {"x": x}
    for pool, build in (("flatten", build_flatten_head), ("gap", build_gap_head)):
        keras.backend.clear_session()  # layer names as in a fresh session: dense, dense_1, ...
        model = build(keras_config, size, width)
        set_keras_weights(model, base, rng, calibration)
        stem = f"keras_{pool}_head"
        model.save(out / f"{stem}.keras")
        model.save(out / f"{stem}.h5")
        acts = keras_layer_outputs(model, x)
        np.testing.assert_allclose(
            acts[model.layers[-1].name], model.predict(x, verbose=0), rtol=1e-6
        )
        arrays.update(compact(stem, acts))
        export_tf2onnx(out / f"{stem}.keras", out / f"{stem}_tf2onnx.onnx")
        twin = torch_twin(model, config, size, width, pool)
        export_torch_onnx(twin, size, out / f"{stem}_torch.onnx")
        for exporter, layout in (("tf2onnx", x), ("torch", x.transpose(0, 3, 1, 2).copy())):
            result = onnxruntime_output(out / f"{stem}_{exporter}.onnx", layout)
            arrays[f"{stem}/onnxruntime_{exporter}"] = result
        notes[stem] = {
            "layers": [f"{layer.name}: {type(layer).__name__}" for layer in model.layers],
            "config": json.loads(json.dumps(model.get_config(), default=str)),
        }
    arrays.update(save_torch_fixtures(config, width, out, x, calibration, notes))
    np.savez_compressed(out / "outputs.npz", **arrays)
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["tiny", "full"])
    parser.add_argument("out", nargs="?", type=pathlib.Path, help="default: tests/data/heads")
    parser.add_argument("--notes", type=pathlib.Path, help="write the observed layouts here")
    args = parser.parse_args(argv)
    notes = make(args.kind, args.out or DATA)
    if args.notes:
        args.notes.write_text(json.dumps(notes, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
