"""A head given as text (``--head gap,dense:256,dropout:0.5``) as the project's layer table.

A head is what sits on a VGG base after ``block5_pool``: the layers of one's own that
`vgg_np.network.describe` accepts (``head=``), as Keras's transfer-learning guides
build them. `parse_head` reads a comma-separated spec, names each layer as Keras names
it (``dense``, ``dense_1``, ``dropout`` ...) and ends it with the classifier,
``predictions``: a dense layer of one unit per class with a softmax, Keras's
``Dense(classes, activation="softmax")``. ``vgg`` is Keras's own top
(``include_top=True``: Flatten, fc1 and fc2 of 4096 with ReLU); ``vgg:256`` the same with
narrower hidden layers.

=================  ===========================================  ======================
item               layer                                        Keras
=================  ===========================================  ======================
``flatten``        ``flatten`` (H, W, C order)                  ``Flatten()``
``gap``            ``global_average_pooling2d``                 ``GlobalAveragePooling2D()``
``gmp``            ``global_max_pooling2d``                     ``GlobalMaxPooling2D()``
``dense:N``        ``dense``: N units, ReLU (``dense:N:tanh``,  ``Dense(N, "relu")``
                   ``:sigmoid``, ``:linear``)
``dropout:R``      ``dropout`` at rate R in [0, 1)              ``Dropout(R)``
``bn``             ``batch_normalization``, epsilon 1e-3        ``BatchNormalization()``
``vgg[:N]``        ``flatten``, ``fc1``, ``fc2`` (N=4096)       ``VGG16(include_top=True)``
=================  ===========================================  ======================
"""

from __future__ import annotations

import math

from vgg_np.layers import Layer, shapes

__all__ = ["HEAD_ITEMS", "KERAS_BN_EPS", "describe_head", "parse_head"]

#: Keras's BatchNormalization epsilon (PyTorch's is 1e-5).
KERAS_BN_EPS = 1e-3

#: The items of a head spec and what each becomes (the module docstring has the table).
HEAD_ITEMS = ("flatten", "gap", "gmp", "dense:N[:activation]", "dropout:R", "bn", "vgg[:N]")

#: Activations a hidden dense layer may take, by the names Keras gives them.
_ACTIVATIONS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid", "linear": None}

#: Keras's base name of each kind (the first is ``dense``, then ``dense_1`` ...).
_KERAS_NAMES = {
    "flatten": "flatten",
    "global_avg": "global_average_pooling2d",
    "global_max": "global_max_pooling2d",
    "dense": "dense",
    "dropout": "dropout",
    "batch_norm": "batch_normalization",
}


def _bad(spec: str, item: str, why: str) -> ValueError:
    return ValueError(
        f"`head` {spec!r}: {item!r} {why}; items are {', '.join(HEAD_ITEMS)} "
        "(e.g. 'gap,dense:256,dropout:0.5')"
    )


def _count(text: str, spec: str, item: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1 << 20:
        raise _bad(spec, item, "needs a whole number of units from 1 to 1048576")
    return int(text)


def _item(spec: str, item: str) -> list[tuple[str, dict]]:
    """Return one item's layers as ``(kind, fields)`` pairs, names not given yet."""
    word, *args = item.split(":")
    if word in ("flatten", "gap", "gmp", "bn") and not args:
        kind = {"gap": "global_avg", "gmp": "global_max", "bn": "batch_norm"}.get(word, word)
        return [(kind, {"eps": KERAS_BN_EPS} if kind == "batch_norm" else {})]
    if word == "dense" and len(args) in (1, 2):
        activation = args[1] if len(args) == 2 else "relu"
        if activation not in _ACTIVATIONS:
            known = list(_ACTIVATIONS)
            raise _bad(spec, item, f"has activation {activation!r}, not one of {known}")
        units = _count(args[0], spec, item)
        return [("dense", {"units": units, "activation": _ACTIVATIONS[activation]})]
    if word == "dropout" and len(args) == 1:
        try:
            rate = float(args[0])
        except ValueError:
            rate = math.nan
        if not 0 <= rate < 1:
            raise _bad(spec, item, "needs a rate in [0, 1)")
        return [("dropout", {"rate": rate})]
    if word == "vgg" and len(args) <= 1:
        units = _count(args[0], spec, item) if args else 4096
        hidden = {"units": units, "activation": "relu"}
        fc1, fc2 = ("dense", {**hidden, "name": "fc1"}), ("dense", {**hidden, "name": "fc2"})
        return [("flatten", {}), fc1, fc2]
    raise _bad(spec, item, "is not an item")


def parse_head(spec: str, classes: int, *, input_shape: tuple = (7, 7, 512)) -> tuple[Layer, ...]:
    """Return the layers of a head spec, ending with ``predictions`` (softmax over `classes`).

    Parameters
    ----------
    spec : str
        Comma-separated items (the module docstring's table), e.g.
        ``"gap,dense:256,dropout:0.5"``. The smallest is ``"gap"`` (or ``"flatten"``):
        ``predictions`` straight on the pooled features.
    classes : int
        Outputs of ``predictions``: at least 2.
    input_shape : tuple, default (7, 7, 512)
        ``block5_pool``'s per-image shape, to check that every dense layer gets a vector.

    Returns
    -------
    tuple of Layer
        For `vgg_np.VGG` (``head=``) and `vgg_np.network.describe`.

    Raises
    ------
    ValueError
        Naming the item that is not one, and a head whose dense layer would meet a
        feature map (a ``flatten``, ``gap`` or ``gmp`` must come first).

    Examples
    --------
    >>> [(layer.name, layer.kind, layer.units) for layer in parse_head("gap,dense:256", 3)]
    [('global_average_pooling2d', 'global_avg', 0), ('dense', 'dense', 256), \
('predictions', 'dense', 3)]
    >>> parse_head("gap,dropout:0.5,dense:8:tanh,dropout:0.2", 2)[3]
    Layer(name='dropout_1', kind='dropout', rate=0.2)
    >>> [layer.name for layer in parse_head("vgg:64", 2)]
    ['flatten', 'fc1', 'fc2', 'predictions']
    >>> parse_head("dense:8", 2)
    Traceback (most recent call last):
    ...
    ValueError: `head` 'dense:8': dense meets the feature map of shape (7, 7, 512): \
begin with flatten, gap or gmp
    """
    if not isinstance(spec, str):
        raise TypeError(f"`head` must be a string such as 'gap,dense:256', got {spec!r}")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise ValueError(f"`classes` must be an int >= 2, got {classes!r}")
    items = [item.strip() for item in spec.split(",")] if spec.strip() else []
    if any(not item for item in items):
        raise _bad(spec, "", "is empty (two commas in a row?)")
    rows = [row for item in items for row in _item(spec, item)]
    rows.append(("dense", {"units": classes, "activation": "softmax", "name": "predictions"}))
    counts: dict[str, int] = {}
    head = []
    for kind, fields in rows:
        if "name" not in fields:
            n = counts.get(kind, 0)
            counts[kind] = n + 1
            fields = {**fields, "name": _KERAS_NAMES[kind] + (f"_{n}" if n else "")}
        head.append(Layer(kind=kind, **fields))
    for layer, shape, _ in shapes(head, input_shape):
        if layer.kind == "dense" and len(shape) != 1:
            raise ValueError(
                f"`head` {spec!r}: {layer.kind} meets the feature map of shape {shape}: "
                "begin with flatten, gap or gmp"
            )
    return tuple(head)


def describe_head(head: tuple[Layer, ...]) -> str:
    """Write a head back as a spec (without its ``predictions``): `parse_head`'s inverse.

    Examples
    --------
    >>> describe_head(parse_head("gap, dense:256, dropout:0.5", 4))
    'gap,dense:256,dropout:0.5'
    >>> describe_head(parse_head("gmp,dense:8:linear,bn", 4))
    'gmp,dense:8:linear,bn'
    """
    words = {"global_avg": "gap", "global_max": "gmp", "batch_norm": "bn", "flatten": "flatten"}
    items = []
    for layer in head:
        if layer.name == "predictions":
            continue
        if layer.kind == "dense":
            activation = "linear" if layer.activation is None else layer.activation
            suffix = "" if activation == "relu" else f":{activation}"
            items.append(f"dense:{layer.units}{suffix}")
        elif layer.kind == "dropout":
            items.append(f"dropout:{layer.rate:g}")
        else:
            items.append(words[layer.kind])
    return ",".join(items)
