"""Make the Keras references that vgg_np's forward pass and weight readers are checked against.

Needs the optional `keras` extra (``pip install keras torch==2.13.0``) and runs Keras on
its torch backend. Weights are drawn by NumPy (`vgg_np.VGG.he_normal`, seeded) and set
into a real Keras model, which then predicts fixed inputs and writes its weights in every
Keras format. Two layouts Keras 3 can no longer write (the Keras Applications file and
tf_keras's ``save_weights("x.h5")``) are written with h5py, and Keras itself is made to
load them back, which proves their layout.

Usage::

    python tests/reference/make_keras_reference.py tiny   # the committed tests/data fixtures
    python tests/reference/make_keras_reference.py full   # the committed full-size slices
    python tests/reference/make_keras_reference.py demo   # vgg_np/data: demo image + logits

The live cross-check (tests/crosscheck/test_keras.py) imports this module and writes the
full-size files into a temporary directory instead.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pathlib
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

import h5py
import numpy as np

import vgg_np
from vgg_np.formats.keras_files import write_keras_h5

DATA = pathlib.Path(__file__).resolve().parent.parent / "data"

#: The reduced-width model of the committed fixtures: VGG16's topology, narrow layers.
TINY = vgg_np.VGGConfig(
    "vgg16-tiny",
    ((8, 8), (16, 16), (24, 24, 24), (32, 32, 32), (32, 32, 32)),
    fc=(48, 48),
    default_size=32,
)
TINY_CLASSES = 10
TINY_SEED = 20261127
FULL_SEED = 16

#: Keras-written formats; the other two are written with h5py (see module docstring).
FORMATS = (
    "applications.h5",  # Keras Applications layout (h5py), block1_conv1_W_1:0 names
    "applications_notop.h5",  # the same without the classifier
    "tf_keras.h5",  # tf_keras save_weights layout (h5py), block1_conv1/kernel:0 names
    "legacy_weights.h5",  # Keras 3's legacy save_weights_to_hdf5_group
    "model.h5",  # Keras 3 model.save("x.h5"): under model_weights/
    "model.weights.h5",  # Keras 3 save_weights
    "model.keras",  # Keras 3 .keras zip
)


def reference_images(n: int, size: int | tuple[int, int], seed: int) -> np.ndarray:
    """RGB uint8 test images: smooth gradients plus noise, so every layer sees structure.

    `size` is the side of a square image or its (height, width).
    """
    h, w = (size, size) if isinstance(size, int) else size
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:h, 0:w]
    rows, cols = rows / h, cols / w
    images = []
    for _ in range(n):
        a, b, c = rng.uniform(0, 255, 3)
        base = np.stack([a * rows, b * cols, c * (1 - rows * cols)], axis=-1)
        images.append(np.clip(base + rng.normal(0, 30, (h, w, 3)), 0, 255))
    return np.asarray(images, dtype=np.uint8)


def render_demo_image(size: int = 224) -> np.ndarray:
    """The demo picture shipped in the package: a sunset over hills, drawn with NumPy.

    Made here so that anyone may redistribute it; RGB uint8, (size, size, 3).
    """
    y, x = np.mgrid[0:size, 0:size] / size
    sky = np.stack([0.95 - 0.3 * y, 0.55 + 0.2 * y, 0.35 + 0.5 * (1 - y)], axis=-1)
    image = sky.copy()
    sun = (x - 0.68) ** 2 + (y - 0.36) ** 2 < 0.11**2
    image[sun] = (1.0, 0.85, 0.3)
    for height, phase, colour in ((0.62, 0.0, (0.25, 0.45, 0.2)), (0.74, 1.7, (0.15, 0.32, 0.12))):
        ridge = height + 0.05 * np.sin(9 * x + phase) + 0.03 * np.sin(23 * x + 2 * phase)
        image[y > ridge] = colour
    stripes = (y > 0.86) & (np.sin(60 * x + 40 * y) > 0.3)
    image[stripes] = (0.5, 0.38, 0.22)  # a ploughed field
    noise = np.random.default_rng(224).normal(0, 0.02, image.shape)
    return np.clip((image + noise) * 255, 0, 255).astype(np.uint8)


def make_demo() -> None:
    """Write the package's demo image and Keras's logits for it under the reference weights."""
    import keras
    from keras.applications.vgg16 import preprocess_input
    from PIL import Image

    package_data = pathlib.Path(vgg_np.__file__).parent / "data"
    Image.fromarray(render_demo_image()).save(package_data / "demo.png", optimize=True)
    pixels = vgg_np.load_image(package_data / "demo.png")[None]
    model = keras.applications.VGG16(weights=None, classifier_activation=None)
    set_numpy_weights(model, full_weights())
    logits = model.predict(preprocess_input(pixels.astype(np.float32)), verbose=0)
    np.savez_compressed(
        package_data / "demo_keras_reference.npz",
        logits=np.asarray(logits),
        seed=np.array(FULL_SEED),
        keras_version=np.array(keras.__version__),
    )


def build_keras(
    config: vgg_np.VGGConfig,
    input_size: int | tuple[int, int],
    classes: int,
    include_top=True,
    name: str | None = None,
):
    """A Keras functional VGG with Keras Applications' layer names and logits output.

    `input_size` is the side of a square input or its (height, width).
    """
    import keras
    from keras import layers

    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    inputs = keras.Input((h, w, 3))
    x = inputs
    for b, widths in enumerate(config.blocks, start=1):
        for i, width in enumerate(widths, start=1):
            x = layers.Conv2D(
                width, 3, padding="same", activation="relu", name=f"block{b}_conv{i}"
            )(x)
        x = layers.MaxPooling2D(2, strides=2, name=f"block{b}_pool")(x)
    if include_top:
        x = layers.Flatten(name="flatten")(x)
        for i, width in enumerate(config.fc, start=1):
            x = layers.Dense(width, activation="relu", name=f"fc{i}")(x)
        x = layers.Dense(classes, activation=None, name="predictions")(x)
    return keras.Model(inputs, x, name=name or config.name)


def keras_activations(model, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every layer's output for `x`, by layer name (the input layer excluded)."""
    import keras

    names = [layer.name for layer in model.layers[1:]]
    probe = keras.Model(model.inputs, [model.get_layer(n).output for n in names])
    outputs = probe.predict(x, verbose=0)
    return {n: np.asarray(o) for n, o in zip(names, outputs, strict=True)}


def write_all_formats(model, weights: dict, out: pathlib.Path) -> dict[str, pathlib.Path]:
    """Write `model` (holding `weights`) in every format of `FORMATS`; check Keras reads them."""
    from keras.src.legacy.saving import legacy_h5_format

    out.mkdir(parents=True, exist_ok=True)
    names = [layer.name for layer in model.layers]
    head = {"flatten", "predictions"} | {n for n in names if n.startswith("fc")}
    paths = {fmt: out / fmt for fmt in FORMATS}
    write_keras_h5(paths["applications.h5"], weights, layer_names=names)
    notop = [n for n in names if n not in head]
    write_keras_h5(paths["applications_notop.h5"], weights, layer_names=notop)
    write_keras_h5(paths["tf_keras.h5"], weights, layer_names=names, naming="tf_keras")
    with h5py.File(paths["legacy_weights.h5"], "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)
    model.save(paths["model.h5"])
    model.save_weights(paths["model.weights.h5"])
    model.save(paths["model.keras"])
    # Keras must read the h5py-written layouts back to the same numbers.
    for fmt in ("applications.h5", "tf_keras.h5"):
        clone = build_keras_like(model)
        clone.load_weights(paths[fmt])
        for layer in clone.layers:
            for got, want in zip(layer.get_weights(), weights.get(layer.name, ()), strict=True):
                np.testing.assert_array_equal(got, want, err_msg=f"Keras reading {fmt}")
    return paths


def build_keras_like(model):
    """A fresh, untrained copy of `model`'s architecture."""
    import keras

    return keras.Model.from_config(model.get_config())


def set_numpy_weights(model, weights: dict) -> None:
    """Put `weights` ({name: (kernel, bias)}) into the Keras `model`."""
    for layer in model.layers:
        if layer.name in weights:
            layer.set_weights([np.asarray(a) for a in weights[layer.name]])


def checksums(weights: dict) -> dict[str, str]:
    """SHA-256 of every kernel and bias, to tell an RNG change from a numerical failure."""
    return {
        f"{name}/{part}": hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
        for name, pair in weights.items()
        for part, a in zip(("kernel", "bias"), pair, strict=True)
    }


def full_weights(seed: int = FULL_SEED) -> dict:
    """The full-size VGG16 weights of the reference: vgg_np's seeded He-normal draw."""
    return vgg_np.VGG16(seed=seed, classifier_activation=None).weights


def slice_indices(shape: tuple) -> tuple[np.ndarray, ...]:
    """Which values of a per-image activation are kept in the committed reference."""
    if len(shape) == 1:
        return (np.arange(shape[0]),)
    h, w, c = shape
    return (
        np.unique(np.linspace(0, h - 1, 7).astype(int)),
        np.unique(np.linspace(0, w - 1, 7).astype(int)),
        np.unique(np.linspace(0, c - 1, 16).astype(int)),
    )


def take_slice(activation: np.ndarray) -> np.ndarray:
    """Keep the `slice_indices` of every image of a batch of activations."""
    index = slice_indices(activation.shape[1:])
    return activation[(slice(None), *np.ix_(*index))] if len(index) == 3 else activation


def make_tiny() -> None:
    """Write the committed reduced-width fixtures into tests/data."""
    from keras.applications.vgg16 import preprocess_input

    weights = vgg_np.VGG(
        TINY, input_shape=(32, 32, 3), classes=TINY_CLASSES, seed=TINY_SEED
    ).weights
    model = build_keras(TINY, 32, TINY_CLASSES)
    set_numpy_weights(model, weights)
    pixels = reference_images(2, 32, seed=1)
    x = preprocess_input(pixels.astype(np.float32))
    out = DATA / "tiny_vgg16"
    write_all_formats(model, weights, out)
    acts = keras_activations(model, x)
    np.savez_compressed(
        out / "keras_activations.npz",
        pixels=pixels,
        x=x,
        **{f"act/{k}": v for k, v in acts.items()},
    )


def make_full_reference(out: pathlib.Path | None = None) -> dict:
    """Run full-size Keras VGG16 on two images; return (and maybe save) logits and slices."""
    import keras
    from keras.applications.vgg16 import preprocess_input

    weights = full_weights()
    model = keras.applications.VGG16(weights=None, classifier_activation=None)
    set_numpy_weights(model, weights)
    pixels = reference_images(2, 224, seed=2)
    x = preprocess_input(pixels.astype(np.float32))
    acts = keras_activations(model, x)
    ref = {
        "pixels": pixels,
        "x": x,
        "seed": np.array(FULL_SEED),
        **{f"slice/{k}": take_slice(v) for k, v in acts.items()},
    }
    if out is not None:
        np.savez_compressed(out / "keras_vgg16_reference.npz", **ref)
        sums = checksums(weights)
        (out / "keras_vgg16_weights.sha256").write_text(
            "".join(f"{digest}  {key}\n" for key, digest in sums.items())
        )
    return {"model": model, "weights": weights, "x": x, "activations": acts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["tiny", "full", "demo"])
    args = parser.parse_args(argv)
    if args.what == "tiny":
        make_tiny()
    elif args.what == "demo":
        make_demo()
    else:
        make_full_reference(DATA)
    return 0


if __name__ == "__main__":
    sys.exit(main())
