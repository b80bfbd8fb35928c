"""One validated description of a network, which every path reads.

A `Network` is what a model *is*, apart from its weights and how it runs: the layer
table in the source framework's names, the channels-last input shape, the dtype, the
head, what the output is (`output_kind`) and where the description came from. It is
immutable and built by one function, `describe`, from `VGG`'s arguments; a weights
file's reader result gives them (`vgg_np.architecture.infer_architecture`). Every
argument is checked here, each by one small function that names the argument.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from vgg_np import layers as layer_kinds
from vgg_np.config import CONFIGS, MIN_SIZE, VGGConfig, _fmt_shape, layer_table
from vgg_np.formats.contract import Provenance
from vgg_np.formats.torchvision import TORCH_BN_EPS
from vgg_np.layers import ACTIVATIONS, KINDS, Layer, LayerShape, shapes

__all__ = ["DATA_FORMATS", "Network", "channels_last", "describe"]

#: The input layouts: (N, H, W, C) (the weights' own) or (N, C, H, W).
DATA_FORMATS = ("channels_last", "channels_first")

#: The compute dtypes; float64 is the oracle.
DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def channels_last(shape: Sequence[int | None], data_format: str, inverse: bool = False) -> tuple:
    """Convert a per-image shape ``(C, H, W)`` to ``(H, W, C)`` for channels_first.

    The one place where the two layouts meet; ``inverse=True`` goes back. Other
    shapes (channels_last, or not 3-D) are returned as they are.

    Examples
    --------
    >>> channels_last((3, 32, 40), "channels_first"), channels_last((32, 40, 3), "channels_last")
    ((32, 40, 3), (32, 40, 3))
    >>> channels_last((32, 40, 3), "channels_first", inverse=True)
    (3, 32, 40)
    """
    shape = tuple(shape)
    if data_format != "channels_first" or len(shape) != 3:
        return shape
    return (shape[2], shape[0], shape[1]) if inverse else (shape[1], shape[2], shape[0])


@dataclass(frozen=True)
class Network:
    """A validated, immutable description of a network (build it with `describe`).

    Attributes
    ----------
    config : VGGConfig
        The widths of the convolutional base (and of the standard top).
    layers : tuple of Layer
        The layer table, in the source framework's (Keras's) names.
    input_shape : tuple
        Per image, channels last ``(H, W, C)``; H and W may be None without a top.
    dtype : numpy.dtype
    data_format : {"channels_last", "channels_first"}
        The layout of the input and of 4-D outputs the user sees.
    include_top, pooling, classes, classifier_activation, adaptive_pool
        As given to `describe` (read from the head when there is one).
    batch_norm : float or None
        The epsilon of the convolutions' batch norms, or None without them.
    head : tuple of Layer or None
        A classifier of one's own after ``block5_pool``.
    provenance : Provenance or None
        Where the description came from (a weights file), None for arguments alone.
    output_kind : str
        What the last layer gives (`vgg_np.layers.output_kind`): ``"probabilities"``,
        ``"logits"``, ``"scores"``, ``"features"``.

    Examples
    --------
    >>> net = describe("vgg11", include_top=False, pooling="avg")
    >>> net.layers[-1].name, net.input_shape, net.output_kind
    ('global_average_pooling2d', (None, None, 3), 'features')
    >>> describe("vgg16", classifier_activation=None).output_kind
    'logits'
    """

    config: VGGConfig
    layers: tuple[Layer, ...]
    input_shape: tuple
    dtype: np.dtype
    data_format: str
    include_top: bool
    pooling: str | None
    classes: int
    classifier_activation: str | None
    adaptive_pool: int | None
    batch_norm: float | None
    head: tuple[Layer, ...] | None
    provenance: Provenance | None
    output_kind: str

    def arguments(self) -> dict:
        """Return the arguments of `describe` (and `VGG`) that build this network again.

        The input shape is in the user's layout (`data_format`).

        Examples
        --------
        >>> net = describe("vgg11", input_shape=(3, 64, 48), data_format="channels_first")
        >>> args = net.arguments()
        >>> args["input_shape"], describe(**args).input_shape
        ((3, 64, 48), (64, 48, 3))
        """
        given = {
            "config": self.config,
            "input_shape": channels_last(self.input_shape, self.data_format, inverse=True),
            "dtype": self.dtype.name,
            "data_format": self.data_format,
            "batch_norm": False if self.batch_norm is None else self.batch_norm,
        }
        if self.head is not None:
            return {**given, "head": self.head}
        top = ("include_top", "pooling", "classes", "classifier_activation", "adaptive_pool")
        return given | {name: getattr(self, name) for name in top}

    def replace(self, **changes: Any) -> Network:
        """Return the network described with some arguments changed, validated again.

        The input shape stays the same (channels last) unless `changes` give one, in
        the layout of their `data_format`. `changes` are `describe`'s keyword arguments
        (hence `Any`: `describe` checks each of them).

        Examples
        --------
        >>> describe("vgg11").replace(classes=10).layers[-1]
        Layer(name='predictions', kind='dense', units=10, activation='softmax')
        """
        arguments = {**self.arguments(), "provenance": self.provenance, **changes}
        if "input_shape" not in changes:  # the same input, in the layout asked for
            layout = arguments["data_format"]
            arguments["input_shape"] = channels_last(self.input_shape, layout, inverse=True)
        return describe(**arguments)

    def shapes(self, input_shape: tuple | None = None) -> list[LayerShape]:
        """Walk the per-image shapes (`vgg_np.layers.shapes`) from `input_shape` (H, W, C).

        Examples
        --------
        >>> describe("vgg16", include_top=False).shapes((64, 48, 3))[-1].output
        (2, 1, 512)
        """
        return shapes(self.layers, self.input_shape if input_shape is None else input_shape)

    def output_shape(self, layer: str, input_shape: tuple) -> tuple:
        """Return `layer`'s per-image output shape, in the user's layout (`data_format`).

        Examples
        --------
        >>> describe("vgg16", data_format="channels_first").output_shape("block5_pool", (64, 48, 3))
        (512, 2, 1)
        """
        found = {s.layer.name: s.output for s in self.shapes(input_shape)}
        if layer not in found:
            raise ValueError(
                f"`layer` must be one of this model's layers ({', '.join(found)}), got {layer!r}"
            )
        return channels_last(found[layer], self.data_format, inverse=True)

    def parameter_shapes(self) -> dict[str, tuple[tuple, ...]]:
        """Return the shape of every tensor of every layer that has some, in layer order.

        Examples
        --------
        >>> describe("vgg16", include_top=False).parameter_shapes()["block1_conv1"]
        ((3, 3, 3, 64), (64,))
        """
        found = {}
        for layer, shape, _ in self.shapes():
            kind = KINDS[layer.kind]
            if kind.parameter_shapes:
                params = kind.parameter_shapes(layer, shape)
                if any(None in p for p in params):
                    raise ValueError(f"{layer.name}: its input size is not fixed by `input_shape`")
                found[layer.name] = params
        return found

    def check_weights(self, weights: Mapping, source: str = "the weights") -> None:
        """Check that `weights` hold every tensor of this network, in its shape.

        Without the top, a classifier in `weights` (any layer not named ``block*``) is
        ignored; any other extra layer is not.

        Raises
        ------
        ValueError
            Listing every missing, extra and misshaped tensor with both shapes.

        Examples
        --------
        >>> describe("vgg11", include_top=False).check_weights({})
        Traceback (most recent call last):
        ...
        ValueError: the weights do not fit vgg11 (input ?x?x3, include_top=False, classes=1000):
          missing: block1_conv1, block2_conv1, block3_conv1, block3_conv2, block4_conv1, \
block4_conv2, block5_conv1, block5_conv2
        """
        expected = self.parameter_shapes()
        problems = _missing(self, expected, weights) + _extra(self, expected, weights)
        misshaped = _misshaped(self, expected, weights)
        problems += misshaped
        widths = any(problem.startswith("block") for problem in misshaped)
        if widths and not any("VGG.from_file" in problem for problem in problems):
            problems.append(  # another network's convolutions: no keyword of this one fits
                "its convolutions have other widths: VGG.from_file(path) builds the network "
                "a file describes (its own head, batch norms, widths) and loads it"
            )
        if problems:
            raise ValueError(
                f"{source} do not fit {self.config.name} "
                f"(input {_fmt_shape(self.input_shape)}, include_top={self.include_top}, "
                f"classes={self.classes}):\n  " + "\n  ".join(problems)
            )

    def needs_fixed_size(self) -> bool:
        """Whether a tensor's shape depends on the input's H and W (a dense layer after a flatten).

        Examples
        --------
        >>> describe("vgg16").needs_fixed_size()
        True
        >>> describe("vgg16", include_top=False).needs_fixed_size()
        False
        """
        return _needs_fixed_size(self.layers)


def _missing(network: Network, expected: dict, weights: Mapping) -> list[str]:
    missing = [name for name in expected if name not in weights]
    if not missing:
        return []
    problems = [f"missing: {', '.join(missing)}"]
    top = {"predictions"} | {f"fc{i}" for i in range(1, len(network.config.fc) + 1)}
    notop = network.include_top and network.head is None and set(missing) >= top
    if notop and not _extra_names(network, expected, weights):  # not a head of its own
        problems.append("it has no classifier (a 'notop' file?): use include_top=False")
    return problems


def _extra_names(network: Network, expected: dict, weights: Mapping) -> list[str]:
    return [
        name
        for name in weights
        if name not in expected and (network.include_top or name.startswith("block"))
    ]


def _extra(network: Network, expected: dict, weights: Mapping) -> list[str]:
    extra = _extra_names(network, expected, weights)
    if not extra:
        return []
    # Layers this network cannot hold: a head of one's own, batch norms, other widths.
    return [
        f"not in this model: {', '.join(extra)}; VGG.from_file(path) builds the network a "
        "file describes (its own head, batch norms, widths) and loads it"
    ]


def _describe_tensors(names: tuple[str, ...], shapes: tuple[tuple, ...]) -> str:
    """Name each tensor's shape: ``kernel (3, 3, 3, 64) and bias (64,)``."""
    if len(names) != len(shapes):
        return f"{len(shapes)} tensors of shapes {shapes}"
    return " and ".join(f"{n} {s}" for n, s in zip(names, shapes, strict=True))


def _misshaped(network: Network, expected: dict, weights: Mapping) -> list[str]:
    tensors = {layer.name: KINDS[layer.kind].parameters for layer in network.layers}
    problems = []
    for name, shapes_ in expected.items():
        if name not in weights:
            continue
        got = tuple(tuple(np.shape(a)) for a in weights[name])
        if got != shapes_:
            problems.append(
                f"{name}: expected {_describe_tensors(tensors[name], shapes_)}, "
                f"got {_describe_tensors(tensors[name], got)}"
            )
    return problems


def _needs_fixed_size(table: Sequence[Layer]) -> bool:
    for layer, shape, _ in shapes(table, (None, None, 3)):
        kind = KINDS[layer.kind]
        if kind.parameter_shapes and any(None in p for p in kind.parameter_shapes(layer, shape)):
            return True
    return False


# -- the checks, one per argument ---------------------------------------------------------


def _config(config: VGGConfig | str) -> VGGConfig:
    if isinstance(config, str):
        if config.lower() not in CONFIGS:
            raise ValueError(f"`config` must be one of {sorted(CONFIGS)}, got {config!r}")
        return CONFIGS[config.lower()]
    if not isinstance(config, VGGConfig):
        raise TypeError(f"`config` must be a VGGConfig or a name, got {type(config).__name__}")
    return config


def _data_format(data_format: str) -> str:
    if data_format not in DATA_FORMATS:
        raise ValueError(
            f"`data_format` must be 'channels_last' or 'channels_first', got {data_format!r}"
        )
    return data_format


def _head(head: Sequence[Layer]) -> tuple[Layer, ...]:
    head = tuple(head)
    wrong = [layer for layer in head if not isinstance(layer, Layer)]
    if wrong or not head:
        raise TypeError(f"`head` must be a non-empty sequence of Layer, got {wrong or head!r}")
    runnable = set(KINDS) - {"conv", "pool"}
    bad = [
        f"{layer.name} (kind {layer.kind!r}, activation {layer.activation!r})"
        for layer in head
        if layer.kind not in runnable or layer.activation not in ACTIVATIONS
    ]
    if bad:
        raise ValueError(
            f"`head` has layers vgg_np cannot run after the base: {', '.join(bad)}; "
            f"kinds {sorted(runnable)}, activations {sorted(a for a in ACTIVATIONS if a)} or None"
        )
    names = [layer.name for layer in head]
    if len(set(names)) != len(names) or any(n.startswith("block") for n in names):
        raise ValueError(f"`head` layer names must be unique and not block*, got {names}")
    return head


def _positive_int(value: object, name: str, optional: bool = False) -> int | None:
    if optional and value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        none = "None or " if optional else ""
        raise ValueError(f"`{name}` must be {none}a positive int, got {value!r}")
    return value


def _pooling(pooling: str | None) -> str | None:
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"`pooling` must be None, 'avg' or 'max', got {pooling!r}")
    return pooling


def _classifier_activation(activation: str | None) -> str | None:
    if activation not in ("softmax", None):
        raise ValueError(f"`classifier_activation` must be 'softmax' or None, got {activation!r}")
    return activation


def _batch_norm(batch_norm: bool | float) -> float | None:
    if batch_norm is True:
        return TORCH_BN_EPS
    if batch_norm is False:
        return None
    if isinstance(batch_norm, bool) or not isinstance(batch_norm, float) or batch_norm < 0:
        raise ValueError(
            f"`batch_norm` must be a bool or a non-negative float eps, got {batch_norm!r}"
        )
    return batch_norm


def _dtype(dtype: npt.DTypeLike) -> np.dtype:
    try:
        found = np.dtype(dtype)
    except TypeError:  # not a dtype at all
        found = None
    if found is None or found not in DTYPES:
        raise ValueError(f"`dtype` must be float16, float32 or float64, got {dtype!r}")
    return found


def _input_shape(
    input_shape: Sequence[int | None] | None, data_format: str, table: Sequence[Layer], size: int
) -> tuple:
    static = _needs_fixed_size(table)  # e.g. fc1 after a flatten fixes the input size
    if input_shape is None:
        return (size, size, 3) if static else (None, None, 3)
    if len(tuple(input_shape)) != 3:
        raise ValueError(f"`input_shape` must have 3 entries, got {input_shape!r}")
    h, w, c = channels_last(input_shape, data_format)
    if not isinstance(c, int) or c < 1:
        raise ValueError(f"`input_shape` must give a positive channel count, got {input_shape!r}")
    if static and (h is None or w is None):
        raise ValueError(
            f"with include_top=True `input_shape` must be static, got {input_shape!r}; "
            "pass include_top=False for inputs of any size"
        )
    if any(s is not None and (not isinstance(s, int) or s < MIN_SIZE) for s in (h, w)):
        order = "(C, H, W) with channels_first" if data_format == "channels_first" else "(H, W, C)"
        raise ValueError(
            f"`input_shape` height and width must be at least {MIN_SIZE}, got {input_shape!r} "
            f"as {order}"
        )
    return (h, w, c)


def max_activation_bytes() -> int:
    """Return the most bytes one image's activations may take: half the memory it may use.

    The memory is the machine's physical memory, or less where this process is held to
    less (its address-space limit, ``ulimit -v``). A network whose input size needs more
    (every layer's output for one image, in its dtype) is refused when it is described,
    naming the size, rather than failing in the middle of a batch with a `MemoryError`.

    Examples
    --------
    >>> max_activation_bytes() > 61_000_000  # VGG16 at 224x224 in float32 needs ~61 MB
    True
    """
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): assume 16 GB
        memory = 16 << 30
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource  # POSIX only

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit != resource.RLIM_INFINITY:
            memory = min(memory, limit)
    return memory // 2


def _check_memory(shape: tuple, table: Sequence[Layer], dtype: np.dtype) -> tuple:
    """Refuse an input size whose activations of one image exceed `max_activation_bytes`."""
    if None in shape:
        return shape
    values = math.prod(shape) + sum(math.prod(s.output) for s in shapes(table, shape))
    total = values * dtype.itemsize  # every layer's output, as `activations` keeps them
    if total > (limit := max_activation_bytes()):
        raise ValueError(
            f"`input_shape` {shape[0]}x{shape[1]}x{shape[2]} needs {total:,} bytes of "
            f"activations per image in {dtype.name}, more than the {limit:,} this machine "
            "allows (half the memory this process may use): give a smaller input size"
        )
    return shape


def _top(
    include_top: bool,
    pooling: str | None,
    classes: int,
    classifier_activation: str | None,
    adaptive_pool: int | None,
) -> dict:
    """Check the standard top's arguments (without a head of one's own)."""
    include_top = bool(include_top)
    adaptive_pool = _positive_int(adaptive_pool, "adaptive_pool", optional=True)
    return {
        "include_top": include_top,
        "pooling": _pooling(pooling),
        "classes": _positive_int(classes, "classes"),
        "classifier_activation": _classifier_activation(classifier_activation),
        "adaptive_pool": adaptive_pool if include_top else None,
    }


def _from_head(head: tuple[Layer, ...]) -> dict:
    """Read the top's arguments from a head of one's own."""
    dense = [layer for layer in head if layer.kind == "dense"]
    return {
        "include_top": True,
        "pooling": None,
        "classes": dense[-1].units if dense else 0,
        "classifier_activation": head[-1].activation,
        "adaptive_pool": None,
    }


def describe(
    config: VGGConfig | str = "vgg16",
    *,
    include_top: bool = True,
    input_shape: tuple | None = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
    dtype: str | np.dtype = "float32",
    data_format: str = "channels_last",
    adaptive_pool: int | None = None,
    batch_norm: bool | float = False,
    head: Sequence[Layer] | None = None,
    provenance: Provenance | None = None,
) -> Network:
    """Check a network's arguments and describe it: the one way a `Network` is built.

    Parameters are `vgg_np.model.VGG`'s (see there); `provenance` records where they
    came from (a weights file). With a `head`, `include_top`, `pooling`, `classes`,
    `classifier_activation` and `adaptive_pool` are read from it, not given.

    Returns
    -------
    Network

    Raises
    ------
    ValueError, TypeError
        Naming the argument, what was expected and what was given.

    Examples
    --------
    >>> net = describe("vgg11", input_shape=(3, 64, 48), data_format="channels_first")
    >>> net.input_shape, net.layers[0]
    ((64, 48, 3), Layer(name='block1_conv1', kind='conv', units=64, activation='relu'))
    >>> describe("vgg11", classes=0)
    Traceback (most recent call last):
    ...
    ValueError: `classes` must be a positive int, got 0
    """
    config, data_format = _config(config), _data_format(data_format)
    if head is not None:
        head = _head(head)
        top = _from_head(head)
    else:
        top = _top(include_top, pooling, classes, classifier_activation, adaptive_pool)
    eps = _batch_norm(batch_norm)
    found_dtype = _dtype(dtype)
    table = tuple(
        layer_table(
            config,
            include_top=top["include_top"],
            pooling=top["pooling"],
            classes=top["classes"],
            classifier_activation=top["classifier_activation"],
            adaptive_pool=top["adaptive_pool"],
            batch_norm=eps,
            head=head,
        )
    )
    return Network(
        config=config,
        layers=table,
        input_shape=_check_memory(
            _input_shape(input_shape, data_format, table, config.default_size), table, found_dtype
        ),
        dtype=found_dtype,
        data_format=data_format,
        batch_norm=eps,
        head=head,
        provenance=provenance,
        output_kind=layer_kinds.output_kind(table),
        **top,
    )
