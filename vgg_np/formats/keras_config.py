"""A Keras model's own config, read as a VGG base and a head of layer-table rows.

A ``.keras`` archive (``config.json``) and a ``model.save("x.h5")`` file (root attribute
``model_config``) describe the whole model as JSON: a ``Sequential`` or ``Functional``
model whose layers may include the nested ``vgg16`` functional model of Keras
Applications. This module reads that JSON as data -- it never imports or calls Keras
and never executes anything -- and checks that it is a chain: an input, 3x3 "same"
ReLU convolutions and 2x2 max-pools (the VGG base; with batch norm, each convolution
linear and followed by ``BatchNormalization`` and ``Activation("relu")``), then a head
of ``Flatten``,
``GlobalAveragePooling2D``, ``GlobalMaxPooling2D``, ``Dense``, ``BatchNormalization``,
``Dropout`` and ``Activation`` layers. Any other layer, or a branch, is refused by name.
A key a layer's config leaves out takes Keras 3's default (`_KERAS_DEFAULTS`), not VGG's:
a Conv2D without ``activation`` is linear, which a VGG base refuses.

The base's layers get vgg_np's names (``block1_conv1`` ... by position, whatever the
file calls them; a batch norm ``block1_conv1_bn``); the head keeps its own names.

The tables here (`KERAS_CLASSES`, `KERAS_ACTIVATIONS`, `CONV_CONFIG`, `POOL_CONFIG`,
`variable_names`) are read both ways: `vgg_np.formats.keras_writer` writes the inverse.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import h5py
import numpy as np

from vgg_np.formats import _hdf5
from vgg_np.formats._common import FileFormatError, LazyArray
from vgg_np.layers import ACTIVATIONS, Layer
from vgg_np.ops import BATCH_NORM_EPS

__all__ = [
    "CONV_CONFIG",
    "KERAS_ACTIVATIONS",
    "KERAS_CLASSES",
    "POOL_CONFIG",
    "KerasModel",
    "arrays_from_keras3",
    "arrays_from_model_weights",
    "read_config",
    "tensors_of",
    "variable_names",
]

#: Keras activations vgg_np runs, by their Keras name ("linear" is no activation).
KERAS_ACTIVATIONS: dict[str, str | None] = {"linear": None, **{a: a for a in ACTIVATIONS if a}}
#: vgg_np's layer kinds (`vgg_np.layers.KINDS`) and the Keras 3 layer classes that compute
#: them: read from a config by `read_config`, written by `vgg_np.formats.keras_writer`.
#: torchvision's ``adaptive_avg`` has no Keras class.
KERAS_CLASSES: dict[str, str] = {
    "conv": "Conv2D",
    "pool": "MaxPooling2D",
    "flatten": "Flatten",
    "global_avg": "GlobalAveragePooling2D",
    "global_max": "GlobalMaxPooling2D",
    "dense": "Dense",
    "batch_norm": "BatchNormalization",
    "dropout": "Dropout",
    "activation": "Activation",
}
_KINDS = {keras: kind for kind, keras in KERAS_CLASSES.items()}
#: Deepest nesting of models inside models.
MAX_NESTING = 8
_PAIR = ("kernel_size", "strides", "dilation_rate", "pool_size")
_CHANNELS_LAST = {"data_format": "channels_last"}  # Keras's image_data_format() default
#: What a VGG base's ``Conv2D`` says (its activation aside): vgg_np's 3x3 "same" convolution.
CONV_CONFIG = {
    "kernel_size": [3, 3],
    "strides": [1, 1],
    "padding": "same",
    "dilation_rate": [1, 1],
    "groups": 1,
    **_CHANNELS_LAST,
}
#: What a VGG base's ``MaxPooling2D`` says: vgg_np's 2x2 pool, stride 2.
POOL_CONFIG = {"pool_size": [2, 2], "strides": [2, 2], "padding": "valid", **_CHANNELS_LAST}
#: What Keras 3 gives a key its config leaves out: the defaults of each layer's
#: ``__init__`` (``keras/src/layers/convolutional/conv2d.py``, ``pooling/max_pooling2d.py``,
#: ``core/dense.py``, ``normalization/batch_normalization.py``, ``reshaping/flatten.py``,
#: ``pooling/base_global_pooling.py``), read from Keras's source, not VGG's values: a Conv2D
#: without ``padding`` is "valid" and without ``activation`` linear. A missing pool
#: ``strides`` is its ``pool_size``.
_KERAS_DEFAULTS: dict[str, dict] = {
    "Conv2D": {"strides": [1, 1], "padding": "valid", "dilation_rate": [1, 1], "groups": 1,
               "activation": "linear", "use_bias": True, **_CHANNELS_LAST},
    "MaxPooling2D": {"pool_size": [2, 2], "padding": "valid", **_CHANNELS_LAST},
    "Dense": {"activation": "linear", "use_bias": True},
    "BatchNormalization": {"axis": -1, "epsilon": BATCH_NORM_EPS["keras"], "center": True,
                           "scale": True},
    "Flatten": _CHANNELS_LAST,
    "GlobalAveragePooling2D": {"keepdims": False, **_CHANNELS_LAST},
    "GlobalMaxPooling2D": {"keepdims": False, **_CHANNELS_LAST},
}  # fmt: skip
#: Keys Keras itself cannot do without (positional arguments of ``__init__``).
_REQUIRED = {
    "Conv2D": ("filters", "kernel_size"),
    "Dense": ("units",),
    "Dropout": ("rate",),
    "Activation": ("activation",),
}


@dataclass(frozen=True)
class KerasModel:
    """What a Keras config describes, in vgg_np's terms.

    Attributes
    ----------
    names : dict
        vgg_np layer name -> the Keras layer name holding its weights.
    variables : dict
        Keras layer name -> the names of its variables in creation order (``kernel``,
        ``bias``; ``gamma``, ``beta``, ``moving_mean``, ``moving_variance``).
    head : tuple of Layer or None
        The layers after the base; None when they are exactly Keras Applications' top
        (``flatten``, ``fc1``, ..., ``predictions``), which vgg_np builds itself.
    input_shape : tuple
        ``(H, W, C)`` of the input layer (None where the size is free).
    classifier_activation : str or None
        The last layer's activation.
    batch_norm : float or None
        The epsilon of the base's batch norms (one for all, as in `vgg_np.config`), None
        without them.
    """

    names: dict[str, str]
    variables: dict[str, list[str]]
    head: tuple[Layer, ...] | None
    input_shape: tuple
    classifier_activation: str | None
    batch_norm: float | None = None


def _flat_layers(config: Mapping, where: str, depth: int = 0) -> list[dict]:
    """List the layers of a model config in order, nested models expanded, chain checked."""
    if depth > MAX_NESTING:
        raise FileFormatError(f"{where}: models nested more than {MAX_NESTING} deep")
    if not isinstance(config, Mapping) or not isinstance(config.get("config"), Mapping):
        raise FileFormatError(f"{where}: its model config is not a Keras model")
    kind, body = config.get("class_name"), config["config"]
    layers = body.get("layers")
    if kind not in ("Sequential", "Functional", "Model") or not isinstance(layers, list):
        raise FileFormatError(
            f"{where}: its model config is a {kind!r}, not a Sequential or Functional model"
        )
    flat: list[dict] = []
    previous = None
    for layer in layers:
        if not isinstance(layer, Mapping) or not isinstance(layer.get("config"), Mapping):
            raise FileFormatError(f"{where}: a layer of {body.get('name')!r} is not an object")
        name = layer.get("name", layer["config"].get("name"))
        if kind != "Sequential":
            sources = _inbound(layer.get("inbound_nodes", []))
            if sources != ([previous] if previous is not None else []):
                raise FileFormatError(
                    f"{where}: layer {name!r} takes {sources or 'no input'}, not the layer "
                    f"before it ({previous!r}): vgg_np runs a chain of layers, no branches"
                )
        previous = name
        if layer.get("class_name") in ("Sequential", "Functional", "Model"):
            inner = _flat_layers(layer, where, depth + 1)
            if flat:  # an input already seen: the inner model's own input is the same
                inner = [item for item in inner if item["class_name"] != "InputLayer"]
            flat += inner
        else:
            cls = layer.get("class_name")
            if not isinstance(cls, str):
                raise FileFormatError(f"{where}: layer {name!r} has class name {cls!r}")
            full = _with_defaults(cls, layer["config"], name, where)
            flat.append({**layer, "class_name": cls, "name": name, "config": full})
    return flat


def _with_defaults(kind: str, config: Mapping, name: object, where: str) -> dict:
    """Return a layer's config with Keras's value for every key it leaves out (or nulls)."""
    missing = [key for key in _REQUIRED.get(kind, ()) if config.get(key) is None]
    if missing:
        raise FileFormatError(
            f"{where}: layer {name!r} ({kind}) has no {', '.join(missing)}, which Keras requires"
        )
    given = {key: value for key, value in config.items() if value is not None}
    full = {**_KERAS_DEFAULTS.get(kind, {}), **given}
    if kind == "MaxPooling2D" and "strides" not in given:
        full["strides"] = full["pool_size"]  # Keras: strides=None means pool_size
    for key in _PAIR:  # Keras accepts 3 for (3, 3); JSON stores tuples as lists
        if isinstance(full.get(key), int) and not isinstance(full[key], bool):
            full[key] = [full[key], full[key]]
        elif isinstance(full.get(key), list | tuple):
            full[key] = list(full[key])
    return full


def _inbound(nodes: object) -> list[str]:
    """Names of the layers a Functional layer's inbound nodes read (Keras 3 and 2)."""
    found: list[str] = []

    def visit(value: object) -> None:
        if isinstance(value, Mapping):
            history = value.get("keras_history")
            if isinstance(history, list) and history and isinstance(history[0], str):
                found.append(history[0])
                return
            for item in value.values():
                visit(item)
        elif isinstance(value, list):
            if len(value) >= 3 and isinstance(value[0], str) and isinstance(value[1], int):
                found.append(value[0])  # Keras 2: [layer, node, tensor, kwargs]
                return
            for item in value:
                visit(item)

    visit(nodes)
    return found


def _expect(layer: dict, where: str, **wanted: object) -> None:
    config = layer["config"]  # with Keras's defaults (_with_defaults)
    wrong = {k: config.get(k) for k, v in wanted.items() if config.get(k) != v}
    if wrong:
        raise FileFormatError(
            f"{where}: layer {layer['name']!r} ({layer['class_name']}) has {wrong} (a key "
            f"the config leaves out takes Keras's default); vgg_np runs it with {wanted}"
        )


def _activation(layer: dict, where: str) -> str | None:
    name = layer["config"]["activation"]
    if not isinstance(name, str) or name not in KERAS_ACTIVATIONS:
        raise FileFormatError(
            f"{where}: layer {layer['name']!r} has activation {name!r}; vgg_np runs "
            f"{sorted(KERAS_ACTIVATIONS)}"
        )
    return KERAS_ACTIVATIONS[name]


def _normalised(layers: list[dict], index: int) -> bool:
    """Whether the convolution at `index` is linear, then BatchNormalization, then a ReLU."""
    following = [layer["class_name"] for layer in layers[index + 1 : index + 3]]
    return (
        layers[index]["config"]["activation"] == "linear"
        and following == ["BatchNormalization", "Activation"]
        and layers[index + 2]["config"]["activation"] == "relu"
    )


def _base_batch_norm(layer: dict, where: str) -> float:
    """Check a base batch norm normalises the channels; return its epsilon."""
    if layer["config"]["axis"] not in (-1, [-1], 3, [3]):
        raise FileFormatError(
            f"{where}: layer {layer['name']!r} normalises axis {layer['config']['axis']!r}; "
            "vgg_np normalises the channels (axis -1)"
        )
    return float(layer["config"]["epsilon"])


def _base(layers: list[dict], where: str) -> tuple[dict, dict, set, int]:
    """Name the base's layers; return (names, variables, batch norm epsilons, head start)."""
    names, variables, eps, block, conv = {}, {}, set(), 1, 0
    index = 0
    while index < len(layers):
        layer = layers[index]
        kind = layer["class_name"]
        if kind == "Conv2D":
            normalised = _normalised(layers, index)
            _expect(layer, where, **CONV_CONFIG, activation="linear" if normalised else "relu")
            conv += 1
            names[f"block{block}_conv{conv}"] = layer["name"]
            variables[layer["name"]] = variable_names(kind, layer["config"])
            if normalised:  # Conv2D, BatchNormalization, Activation("relu"): one vgg_np row
                norm = layers[index + 1]
                eps.add(_base_batch_norm(norm, where))
                names[f"block{block}_conv{conv}_bn"] = norm["name"]
                variables[norm["name"]] = variable_names(norm["class_name"], norm["config"])
                index += 2
        elif kind == "MaxPooling2D" and conv:
            _expect(layer, where, **POOL_CONFIG)
            block, conv = block + 1, 0
        elif kind == "InputLayer" and index == 0:
            pass
        elif block > 1 and conv == 0:
            return names, variables, eps, index
        else:
            raise FileFormatError(
                f"{where}: layer {layer['name']!r} ({kind}) does not fit a VGG base (3x3 "
                "ReLU convolutions in blocks, each closed by a 2x2 max-pool)"
            )
        index += 1
    if conv:
        raise FileFormatError(f"{where}: the VGG base does not end with a max-pool")
    return names, variables, eps, len(layers)


def variable_names(kind: str, config: Mapping) -> list[str]:
    """List a Keras layer's variables in creation order, from its config (with Keras's defaults).

    Examples
    --------
    >>> variable_names("Dense", {"use_bias": True})
    ['kernel', 'bias']
    >>> variable_names("BatchNormalization", {"scale": True, "center": False})
    ['gamma', 'moving_mean', 'moving_variance']
    """
    if kind == "BatchNormalization":
        return [
            *(["gamma"] if config["scale"] else []),
            *(["beta"] if config["center"] else []),
            "moving_mean",
            "moving_variance",
        ]
    return ["kernel", "bias"] if config["use_bias"] else ["kernel"]


def _head_layer(layer: dict, where: str) -> Layer:
    kind, config, name = layer["class_name"], layer["config"], layer["name"]
    if kind in ("Flatten", "GlobalAveragePooling2D", "GlobalMaxPooling2D"):
        _expect(layer, where, **{"data_format": "channels_last", **_KERAS_DEFAULTS[kind]})
        return Layer(name, _KINDS[kind])
    if kind == "Dense":
        return Layer(name, "dense", int(config["units"]), _activation(layer, where))
    if kind == "BatchNormalization":
        if config["axis"] not in (-1, [-1]):
            raise FileFormatError(
                f"{where}: layer {name!r} normalises axis {config.get('axis')!r}; vgg_np "
                "normalises the channels (axis -1)"
            )
        return Layer(name, "batch_norm", eps=float(config["epsilon"]))
    if kind == "Dropout":
        return Layer(name, "dropout", rate=float(config["rate"]))
    raise FileFormatError(
        f"{where}: layer {name!r} ({kind}) is not one vgg_np runs in a head (Flatten, "
        "GlobalAveragePooling2D, GlobalMaxPooling2D, Dense, BatchNormalization, Dropout, "
        "Activation)"
    )


def _head(layers: list[dict], where: str) -> tuple[list[Layer], dict]:
    head: list[Layer] = []
    variables = {}
    for layer in layers:
        if layer["class_name"] == "Activation":  # a layer of its own, with its own name
            # Keras's Dropout (or Dense) before it keeps its own output; lowering fuses.
            head.append(Layer(layer["name"], "activation", activation=_activation(layer, where)))
            continue
        head.append(_head_layer(layer, where))
        if head[-1].kind in ("dense", "batch_norm"):
            variables[layer["name"]] = variable_names(layer["class_name"], layer["config"])
    return head, variables


def _standard_top(head: list[Layer]) -> bool:
    """Whether the head is Keras Applications' own top, which `VGG` builds from widths."""
    names = [layer.name for layer in head]
    hidden = [f"fc{i}" for i in range(1, len(names) - 1)]
    return (
        names == ["flatten", *hidden, "predictions"]
        and all(layer.activation == "relu" for layer in head[1:-1])
        and head[-1].activation in ("softmax", None)
    )


def read_config(config: Mapping, where: str) -> KerasModel:
    """Read a Keras model config (the parsed ``config.json`` or ``model_config``).

    Raises
    ------
    FileFormatError
        Naming the first layer (and its class) that vgg_np cannot represent.

    Examples
    --------
    >>> conv = {"kernel_size": [3, 3], "padding": "same", "activation": "relu", "filters": 8}
    >>> pool = {"pool_size": [2, 2], "strides": [2, 2]}
    >>> layers = [
    ...     {"class_name": "InputLayer", "config": {"name": "in", "batch_shape": [None, 9, 9, 3]}},
    ...     {"class_name": "Conv2D", "config": {"name": "c", **conv}},
    ...     {"class_name": "MaxPooling2D", "config": {"name": "p", **pool}},
    ...     {"class_name": "GlobalAveragePooling2D", "config": {"name": "gap"}},
    ...     {"class_name": "Dense", "config": {"name": "out", "units": 3, "activation": "tanh"}},
    ... ]
    >>> model = read_config({"class_name": "Sequential", "config": {"layers": layers}}, "x")
    >>> model.names, [layer.kind for layer in model.head], model.input_shape
    ({'block1_conv1': 'c', 'out': 'out'}, ['global_avg', 'dense'], (9, 9, 3))
    """
    layers = _flat_layers(config, where)
    if not layers or layers[0]["class_name"] != "InputLayer":
        raise FileFormatError(f"{where}: its model config has no input layer first")
    batch_shape = layers[0]["config"].get("batch_shape") or layers[0]["config"].get(
        "batch_input_shape"
    )
    if not isinstance(batch_shape, list) or len(batch_shape) != 4:
        raise FileFormatError(
            f"{where}: its input layer has shape {batch_shape!r}, not (N, H, W, C)"
        )
    names, variables, eps, start = _base(layers, where)
    if len(eps) > 1:
        raise FileFormatError(
            f"{where}: the base's batch norms have epsilons {sorted(eps)}; vgg_np's VGG with "
            "batch norm has one for all"
        )
    head, head_variables = _head(layers[start:], where)
    activation = head[-1].activation if head else None
    head_layers = [layer for layer in head if layer.name in head_variables]
    names |= {layer.name: layer.name for layer in head_layers}
    variables |= head_variables
    # Keras Applications' own top is VGG's: `VGG` builds it from the widths.
    kept_head = tuple(head) if head and not _standard_top(head) else None
    return KerasModel(
        names, variables, kept_head, tuple(batch_shape[1:]), activation, next(iter(eps), None)
    )


def _named(
    where: str, layer: str, variables: list[str], arrays: list[LazyArray]
) -> dict[str, LazyArray]:
    if len(arrays) != len(variables):
        shapes = [tuple(a.shape) for a in arrays]
        raise FileFormatError(
            f"{where}: layer {layer!r} holds {len(arrays)} tensors {shapes}, its config "
            f"implies {variables}"
        )
    return dict(zip(variables, arrays, strict=True))


def arrays_from_keras3(
    layers: h5py.Group, model: KerasModel, where: str
) -> dict[str, dict[str, LazyArray]]:
    """``{layer: {variable: array}}`` from a Keras 3 ``model.weights.h5``'s ``layers`` group.

    Each layer's ``vars`` group names its layer in the ``name`` attribute and numbers its
    variables in creation order; nested models hold their own ``layers`` group.
    """
    found: dict[str, list[LazyArray]] = {}

    def visit(name: str, group: object) -> None:
        if name.endswith("vars") and isinstance(group, h5py.Group) and len(group):
            layer = group.attrs.get("name", "")
            layer = layer.decode("utf8") if isinstance(layer, bytes) else str(layer)
            if layer in found or not all(k.isdigit() for k in group):
                raise FileFormatError(f"{where}: layer {layer!r} is stored twice or misnumbered")
            found[layer] = [_hdf5.dataset(group[k], where) for k in sorted(group, key=int)]

    layers.visititems(visit)
    return {
        layer: _named(where, layer, model.variables[layer], arrays)
        for layer, arrays in found.items()
        if layer in model.variables
    }


def arrays_from_model_weights(root: h5py.Group, where: str) -> dict[str, dict[str, LazyArray]]:
    """``{layer: {variable: array}}`` from ``model.save("x.h5")``'s ``model_weights``.

    Every weight name ends ``.../<layer>/<variable>`` (a nested model's layers all sit in
    its group, a Sequential prefixes its own name).
    """
    found: dict[str, dict[str, LazyArray]] = {}
    for group_name in _hdf5.strings(root.attrs, "layer_names") or []:
        group = root.get(group_name)
        if not isinstance(group, h5py.Group):
            raise FileFormatError(f"{where}: layer {group_name!r} is listed but has no group")
        for weight in _hdf5.strings(group.attrs, "weight_names") or []:
            parts = weight.removesuffix(":0").split("/")
            if len(parts) < 2 or not isinstance(group.get(weight), h5py.Dataset):
                raise FileFormatError(f"{where}: layer {group_name!r} lists weight {weight!r}")
            found.setdefault(parts[-2], {})[parts[-1]] = _hdf5.dataset(group[weight], where)
    return found


def tensors_of(
    model: KerasModel, arrays: Mapping[str, Mapping[str, LazyArray]], where: str
) -> dict[str, tuple[LazyArray, ...]]:
    """Canonical tensors from each Keras layer's variables (``{layer: {variable: array}}``).

    Missing optional variables get their neutral values: a zero bias (``use_bias=False``),
    gamma 1 and beta 0 (a batch norm without ``scale`` or ``center``).
    """
    missing = [keras for keras in model.names.values() if keras not in arrays]
    if missing:
        raise FileFormatError(f"{where}: its config names layers with no weights: {missing}")
    tensors: dict[str, tuple[LazyArray, ...]] = {}
    for name, keras in model.names.items():
        found = arrays[keras]
        if sorted(found) != sorted(model.variables[keras]):
            raise FileFormatError(
                f"{where}: layer {keras!r} holds {sorted(found)}, its config implies "
                f"{model.variables[keras]}"
            )
        if "moving_mean" in found:
            c = found["moving_mean"].shape
            ones, zeros = _constant(c, 1.0, found), _constant(c, 0.0, found)
            tensors[name] = (
                found.get("gamma", ones),
                found.get("beta", zeros),
                found["moving_mean"],
                found["moving_variance"],
            )
        else:
            kernel = found["kernel"]
            tensors[name] = (kernel, found.get("bias", _constant(kernel.shape[-1:], 0.0, found)))
    return tensors


def _constant(shape: tuple[int, ...], value: float, found: Mapping[str, LazyArray]) -> LazyArray:
    dtype = next(iter(found.values())).dtype
    return LazyArray(tuple(shape), dtype, lambda: np.full(shape, value, dtype))
