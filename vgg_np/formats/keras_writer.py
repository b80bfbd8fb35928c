"""Whole Keras models from a layer table: a ``.keras`` archive and a ``model.save`` ``.h5``.

The inverse of `vgg_np.formats.keras_config`, written from its tables (`KERAS_CLASSES`,
`KERAS_ACTIVATIONS`, `CONV_CONFIG`, `POOL_CONFIG`, `variable_names`): a vgg_np layer
table becomes one Keras 3 ``Functional`` model, a chain whose layers keep vgg_np's names,
which ``keras.models.load_model`` builds and loads and vgg_np reads back. Nothing here
imports Keras.

The layouts, as Keras 3 writes them (``keras/src/saving/saving_lib.py`` and
``keras/src/legacy/saving/legacy_h5_format.py``):

- ``.keras``: a zip (stored, not compressed) of ``metadata.json``, ``config.json`` (the
  ``Functional`` config: every layer with ``inbound_nodes`` naming the layer before it)
  and ``model.weights.h5``, where the variables of the k-th layer of a class sit at
  ``layers/<class in snake case>[_k]/vars/<i>`` in creation order. Keras loads them by
  that path, not by name; the ``name`` attribute of ``vars`` names the layer.
- ``.h5`` (``model.save("x.h5")``): root attributes ``model_config`` (the same JSON),
  ``keras_version`` and ``backend``; ``model_weights/`` lists every layer in its
  ``layer_names`` attribute and holds each one's variables at
  ``<layer>/<layer>/<variable>``, named by its ``weight_names`` attribute. Keras matches
  the layers holding weights to the model's in order.

vgg_np's rows map to Keras layers one to one, but for two cases. A row whose
activation its Keras class cannot carry (the batch norm of a VGG with batch norm, which
vgg_np gives its ReLU; a dropout with an activation) becomes the layer, then an
``Activation`` layer named ``<name>_<activation>``. torchvision's adaptive average pool
has no Keras layer: it is left out where the feature map already has its size (the
identity), and refused elsewhere; a free input size is then fixed at the size where it
is the identity (224x224 for torchvision's VGG16). vgg_np's provenance record, and the
class names a model records (``vgg-np train``'s), go into ``metadata.json`` (``.keras``)
or the root attributes (``.h5``), which Keras does not read.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import h5py
import numpy as np

from vgg_np._files import atomic_path
from vgg_np.formats.architecture_record import RECORD_KEY, to_record
from vgg_np.formats.contract import Provenance
from vgg_np.formats.keras_config import (
    CONV_CONFIG,
    KERAS_ACTIVATIONS,
    KERAS_CLASSES,
    POOL_CONFIG,
    variable_names,
)
from vgg_np.layers import Layer, shapes

__all__ = [
    "KERAS_VERSION",
    "KerasLayer",
    "NeedsArchitecture",
    "keras_layers",
    "model_config",
    "write_keras_model_h5",
    "write_keras_zip",
]

#: The Keras release whose files these layouts were read from and checked against
#: (tests/crosscheck/test_export.py loads them with the Keras installed).
KERAS_VERSION = "3.15.1"
#: What the ``backend`` attribute of a ``.h5`` says: never "theano" (Keras 2 would flip
#: the kernels); the values are the same on every backend.
BACKEND = "tensorflow"
#: Keras's classes whose config carries an activation; others get an ``Activation`` layer.
_WITH_ACTIVATION = ("Conv2D", "Dense", "Activation")
_KERAS_NAMES = {activation: name for name, activation in KERAS_ACTIVATIONS.items()}


class NeedsArchitecture(ValueError):
    """Writing a whole model was asked for without the model's layer table.

    Examples
    --------
    >>> issubclass(NeedsArchitecture, ValueError)
    True
    """


@dataclass(frozen=True)
class KerasLayer:
    """One Keras layer of the written model.

    Attributes
    ----------
    class_name : str
        Keras's class (``"Conv2D"``).
    name : str
        The layer's name in the file.
    config : dict
        Its config, as ``get_config`` gives it (name, dtype and trainable apart).
    source : str or None
        The vgg_np layer whose tensors it holds, None for a layer without weights.
    input_shape, output_shape : tuple
        Per image (None where the size is free).
    """

    class_name: str
    name: str
    config: dict
    source: str | None
    input_shape: tuple
    output_shape: tuple


def _class_config(layer: Layer, class_name: str) -> dict:
    """Give the config keys of `class_name` that say what `layer` computes."""
    activation = {"activation": _KERAS_NAMES[layer.activation]}
    configs: dict[str, dict] = {
        "Conv2D": {"filters": layer.units, **CONV_CONFIG, **activation, "use_bias": True},
        "MaxPooling2D": POOL_CONFIG,
        "Flatten": {"data_format": "channels_last"},
        "GlobalAveragePooling2D": {"data_format": "channels_last", "keepdims": False},
        "GlobalMaxPooling2D": {"data_format": "channels_last", "keepdims": False},
        "Dense": {"units": layer.units, **activation, "use_bias": True},
        "BatchNormalization": {
            "axis": -1,
            "momentum": 0.99,
            "epsilon": layer.eps,
            "center": True,
            "scale": True,
        },
        "Dropout": {"rate": layer.rate, "seed": None, "noise_shape": None},
        "Activation": activation,
    }
    return configs[class_name]


def _fixed_input(table: Sequence[Layer], input_shape: tuple) -> tuple[tuple, str]:
    """Give the input shape to write, and why, where an adaptive pool needs the size fixed."""
    h, w, c = input_shape
    pools = 0
    for layer in table:
        if layer.kind == "pool":
            pools += 1
        elif layer.kind == "adaptive_avg" and (h is None or w is None):
            side = layer.units * 2**pools
            return (side, side, c), (
                f"input fixed at {side}x{side}, where torchvision's adaptive average pool "
                f"{layer.name!r} is the identity (Keras has no such layer)"
            )
    return tuple(input_shape), ""


def keras_layers(table: Sequence[Layer], input_shape: tuple) -> tuple[list[KerasLayer], str]:
    """Map a vgg_np layer table to the Keras layers that compute it, in order.

    Parameters
    ----------
    table : sequence of Layer
        The model's layers (``model.layers``), a VGG base and its top or head.
    input_shape : tuple
        ``(H, W, C)`` per image, channels last; H and W may be None.

    Returns
    -------
    layers : list of KerasLayer
        The input layer first.
    note : str
        What had to change to fit Keras (an input size fixed), or "".

    Raises
    ------
    ValueError
        For torchvision's adaptive average pool where it is not the identity.

    Examples
    --------
    >>> table = [Layer("c", "conv", 4), Layer("c_bn", "batch_norm", activation="relu", eps=1e-3)]
    >>> [(k.class_name, k.name) for k in keras_layers(table, (8, 6, 3))[0]]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('InputLayer', 'input_layer'), ('Conv2D', 'c'), ('BatchNormalization', 'c_bn'),
     ('Activation', 'c_bn_relu')]
    """
    input_shape, note = _fixed_input(table, input_shape)
    found = [KerasLayer("InputLayer", "input_layer", {}, None, (), input_shape)]
    for layer, shape_in, shape_out in shapes(table, input_shape):
        if layer.kind == "adaptive_avg":
            if shape_in[:2] != (layer.units, layer.units):
                raise ValueError(
                    f"{layer.name!r}: torchvision's adaptive average pool to "
                    f"{layer.units}x{layer.units} on a {shape_in[0]}x{shape_in[1]} map has no "
                    "Keras layer; write it at the input size where it is the identity"
                )
            continue  # the identity here
        class_name = KERAS_CLASSES[layer.kind]
        carried = layer if class_name in _WITH_ACTIVATION else replace(layer, activation=None)
        holds = layer.name if variable_names_of(class_name) else None
        found.append(
            KerasLayer(
                class_name,
                layer.name,
                _class_config(carried, class_name),
                holds,
                shape_in,
                shape_out,
            )
        )
        if layer.activation is not None and class_name not in _WITH_ACTIVATION:
            name = f"{layer.name}_{layer.activation}"
            config = _class_config(layer, "Activation")
            found.append(KerasLayer("Activation", name, config, None, shape_out, shape_out))
    names = [k.name for k in found]
    if len(set(names)) != len(names):
        raise ValueError(f"the Keras layers' names are not unique: {names}")
    return found, note


def variable_names_of(class_name: str) -> list[str]:
    """List the variables of a Keras class as vgg_np writes it (biases, gamma, beta always)."""
    if class_name not in ("Conv2D", "Dense", "BatchNormalization"):
        return []
    return variable_names(class_name, {"use_bias": True, "scale": True, "center": True})


def _dtype_policy(dtype: str) -> dict:
    return {"module": "keras", "class_name": "DTypePolicy", "config": {"name": dtype}}


def _tensor(shape: tuple, dtype: str, source: str) -> dict:
    """Refer to the output of layer `source`, as a Functional config does."""
    config = {"shape": [None, *shape], "dtype": dtype, "keras_history": [source, 0, 0]}
    return {"class_name": "__keras_tensor__", "config": config}


def _layer_entry(layer: KerasLayer, previous: KerasLayer | None, dtype: str, full: bool) -> dict:
    """One layer of ``config.json`` (`full`: with the module keys of a ``.keras``)."""
    if previous is None:
        config = {"batch_shape": [None, *layer.output_shape], "dtype": dtype, "sparse": False}
        nodes: list = []
    else:
        config = {"trainable": True, "dtype": _dtype_policy(dtype), **layer.config}
        nodes = [{"args": [_tensor(layer.input_shape, dtype, previous.name)], "kwargs": {}}]
    entry: dict[str, object] = {
        "class_name": layer.class_name,
        "config": {"name": layer.name, **config},
        "name": layer.name,
        "inbound_nodes": nodes,
    }
    if full:
        entry = {"module": "keras.layers", **entry, "registered_name": None}
    if full and previous is not None:
        entry["build_config"] = {"input_shape": [None, *layer.input_shape]}
    return entry


def model_config(
    layers: Sequence[KerasLayer], *, dtype: str = "float32", name: str = "vgg_np", full: bool = True
) -> dict:
    """Return the ``Functional`` config of a chain of Keras layers (``config.json``).

    Parameters
    ----------
    layers : sequence of KerasLayer
        From `keras_layers`: the input layer first.
    dtype : str
        The compute dtype of every layer.
    name : str
        The model's name.
    full : bool, default True
        With the ``module`` keys of a ``.keras`` archive; False gives the
        ``model_config`` of a ``.h5``.

    Examples
    --------
    >>> found, _ = keras_layers([Layer("c", "conv", 4, "relu"), Layer("p", "pool")], (8, 8, 3))
    >>> config = model_config(found)
    >>> config["class_name"], [layer["class_name"] for layer in config["config"]["layers"]]
    ('Functional', ['InputLayer', 'Conv2D', 'MaxPooling2D'])
    >>> config["config"]["layers"][2]["inbound_nodes"][0]["args"][0]["config"]["keras_history"]
    ['c', 0, 0]
    """
    entries = [
        _layer_entry(layer, layers[i - 1] if i else None, dtype, full)
        for i, layer in enumerate(layers)
    ]
    body = {
        "name": name,
        "trainable": True,
        "layers": entries,
        "input_layers": [layers[0].name, 0, 0],  # one input tensor, not a list of them
        "output_layers": [layers[-1].name, 0, 0],
    }
    config: dict = {"class_name": "Functional", "config": body}
    if full:
        config = {"module": "keras.src.models.functional", **config}
        config |= {"registered_name": "Functional", "build_config": {"input_shape": None}}
    return config


def _snake_case(class_name: str) -> str:
    """Keras's ``naming.to_snake_case``: ``MaxPooling2D`` -> ``max_pooling2d``."""
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", class_name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _variables(layer: KerasLayer, weights: Mapping[str, tuple], dtype: str) -> list[np.ndarray]:
    """Return the layer's variables in Keras's creation order, cast to `dtype`."""
    if layer.source is None:
        return []
    names = variable_names(layer.class_name, layer.config)
    tensors = weights[layer.source]
    if len(tensors) != len(names):
        shapes_ = [np.shape(t) for t in tensors]
        raise ValueError(f"layer {layer.source!r}: {len(tensors)} tensors {shapes_}, Keras {names}")
    return [np.asarray(t, dtype=dtype) for t in tensors]


def _weights_h5(path: str, layers: Sequence[KerasLayer], weights: Mapping, dtype: str) -> None:
    """Write ``model.weights.h5``: ``layers/<class>[_k]/vars/<i>`` in the model's layer order."""
    used: dict[str, int] = {}
    with h5py.File(path, "w") as f:
        f.create_group("vars")  # the model's own variables: none
        for layer in layers:
            key = _snake_case(layer.class_name)
            used[key] = used.get(key, -1) + 1
            group = f.create_group(f"layers/{key}_{used[key]}" if used[key] else f"layers/{key}")
            variables = group.create_group("vars")
            variables.attrs["name"] = layer.name
            for i, array in enumerate(_variables(layer, weights, dtype)):
                variables.create_dataset(str(i), data=array)


def _dtype(weights: Mapping[str, tuple]) -> str:
    """Return the weights' common dtype: every layer's compute dtype."""
    arrays = [np.asarray(a) for tensors in weights.values() for a in tensors]
    return np.result_type(*arrays).name if arrays else "float32"


def _labels(info: Mapping) -> dict[str, str]:
    """Record a model's class names (``vgg-np train``'s) as vgg_np's architecture record.

    The rest of the record (head, epsilon) is the config's to say: it is written once.
    """
    record = to_record({"labels": info.get("labels")})
    return {RECORD_KEY: record} if record is not None else {}


def _check(info: Mapping, path: str | os.PathLike) -> tuple[list[KerasLayer], str]:
    table, input_shape = info.get("layers"), info.get("input_shape")
    if not table or input_shape is None:
        raise NeedsArchitecture(
            f"{os.fspath(path)!r}: a whole Keras model needs the model's layer table and input "
            "shape, not only its weights (vgg_np.export.save or .convert, `vgg-np convert`, "
            "give them)"
        )
    return keras_layers(table, tuple(input_shape))


def write_keras_zip(
    path: str | os.PathLike, weights: Mapping[str, tuple], provenance: Provenance, info: Mapping
) -> str:
    """Write a whole model as a Keras 3 ``.keras`` archive, atomically.

    Parameters
    ----------
    path : str or os.PathLike
    weights : mapping
        vgg_np layer name -> its tensors (Keras layout).
    provenance : Provenance
        Recorded in ``metadata.json``.
    info : mapping
        ``layers`` (the layer table) and ``input_shape`` (``(H, W, C)``).

    Returns
    -------
    str
        What was written.

    Raises
    ------
    NeedsArchitecture
        Without the layer table.
    ValueError
        For a layer Keras cannot compute (see `keras_layers`).
    """
    layers, note = _check(info, path)
    dtype = _dtype(weights)
    metadata = {"keras_version": KERAS_VERSION, **provenance.record(), **_labels(info)}
    config = model_config(layers, dtype=dtype, name=info.get("name", "vgg_np"))
    with atomic_path(path) as tmp, tempfile.TemporaryDirectory(dir=os.path.dirname(tmp)) as work:
        h5 = os.path.join(work, "model.weights.h5")
        _weights_h5(h5, layers, weights, dtype)
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
            zf.writestr("metadata.json", json.dumps(metadata))
            zf.writestr("config.json", json.dumps(config))
            zf.write(h5, "model.weights.h5")
    return "keras-zip (.keras, whole model)" + (f"; {note}" if note else "")


def write_keras_model_h5(
    path: str | os.PathLike, weights: Mapping[str, tuple], provenance: Provenance, info: Mapping
) -> str:
    """Write a whole model as Keras's ``model.save("x.h5")`` does, atomically.

    Parameters and errors are `write_keras_zip`'s; the provenance goes into root
    attributes.
    """
    layers, note = _check(info, path)
    dtype = _dtype(weights)
    config = model_config(layers, dtype=dtype, name=info.get("name", "vgg_np"), full=False)
    versions = {"keras_version": KERAS_VERSION, "backend": BACKEND}
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs.update({**versions, "model_config": json.dumps(config)})
        f.attrs.update({**provenance.record(), **_labels(info)})
        root = f.create_group("model_weights")
        root.attrs.update({**versions, "layer_names": np.array([k.name.encode() for k in layers])})
        for layer in [*layers, KerasLayer("", "top_level_model_weights", {}, None, (), ())]:
            group = root.create_group(layer.name)
            arrays = _variables(layer, weights, dtype) if layer.class_name else []
            names = variable_names(layer.class_name, layer.config) if arrays else []
            # An empty float array says "no weights", as Keras writes it.
            keys = [f"{layer.name}/{name}".encode() for name in names]
            group.attrs["weight_names"] = np.array(keys) if keys else np.array([])
            for key, array in zip(keys, arrays, strict=True):
                group.create_dataset(key.decode(), data=array)
    return "keras-h5 (model.save layout, whole model)" + (f"; {note}" if note else "")
