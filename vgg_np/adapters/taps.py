"""Name maps: another implementation's modules or layers named as vgg_np's, from their order.

A `Tap` says where a vgg_np layer's output is read in the artifact (a torch module, a Keras
layer, an ONNX tensor); `name_map` infers them from the layers' kinds and running order.
Framework-free: the adapters of `vgg_np.adapters` hand it the names and class names.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from vgg_np.formats.layouts import dense_names

# What a module or layer class is, by its class name (torch and Keras alike).
_KINDS = {
    "Conv2d": "conv", "Conv2D": "conv", "Linear": "dense", "Dense": "dense",
    "MaxPool2d": "pool", "MaxPooling2D": "pool", "AdaptiveAvgPool2d": "adaptive_avg",
    "Flatten": "flatten", "BatchNorm2d": "batch_norm", "BatchNormalization": "batch_norm",
    "ReLU": "activation", "Activation": "activation", "Softmax": "activation",
}  # fmt: skip


@dataclass(frozen=True)
class Tap:
    """Where a vgg_np layer's output is read in another implementation.

    Attributes
    ----------
    name : str
        The module, layer or tensor whose output (or input) equals the layer's output.
    owner : str
        The module or layer holding the weights ('' for layers without any).
    from_input : bool
        Read the input of `name` (``flatten``: the first dense layer's input).

    Examples
    --------
    >>> Tap("classifier.0", from_input=True).key
    'classifier.0:input'
    """

    name: str
    owner: str = ""
    from_input: bool = False

    @property
    def key(self) -> str:
        """The name the captured array is stored under; see the class example."""
        return f"{self.name}:input" if self.from_input else self.name


def name_map(leaves: Iterable[tuple[str, str]]) -> dict[str, Tap]:
    """Name another implementation's layers as vgg_np's, from their kinds and order.

    A convolution or dense layer's output is read after the activation right behind it
    (a torch ``ReLU`` module, a Keras ``Activation``), as vgg_np's layers include theirs;
    dropout is skipped; a pool closes a block; ``flatten`` without a layer of its own is
    the first dense layer's input; the last dense layer is ``predictions``.

    Parameters
    ----------
    leaves : iterable of (name, class name)
        The layers in the order they run, e.g. a torch module's leaf modules.

    Returns
    -------
    dict
        vgg_np layer name -> `Tap`.

    Examples
    --------
    >>> leaves = [("features.0", "Conv2d"), ("features.1", "ReLU"), ("features.2", "MaxPool2d"),
    ...           ("classifier.0", "Linear"), ("classifier.1", "ReLU"),
    ...           ("classifier.2", "Dropout"), ("classifier.3", "Linear")]
    >>> taps = name_map(leaves)
    >>> taps["block1_conv1"]
    Tap(name='features.1', owner='features.0', from_input=False)
    >>> taps["flatten"].key, taps["predictions"].name
    ('classifier.0:input', 'classifier.3')
    """
    groups: list[list] = []  # [kind, owner, output]
    for name, cls in leaves:
        kind = _KINDS.get(cls)
        if kind == "activation" and groups:
            groups[-1][2] = name
        elif kind not in (None, "activation"):
            groups.append([kind, name, name])
    n_dense = sum(kind == "dense" for kind, *_ in groups)
    dense = iter(dense_names(n_dense))
    taps: dict[str, Tap] = {}
    block, conv = 1, 0
    for kind, owner, output in groups:
        if kind == "conv":
            conv += 1
            taps[f"block{block}_conv{conv}"] = Tap(output, owner)
        elif kind == "batch_norm" and conv:
            taps[f"block{block}_conv{conv}_bn"] = Tap(output, owner)
        elif kind == "pool":
            taps[f"block{block}_pool"] = Tap(output)
            block, conv = block + 1, 0
        elif kind in ("adaptive_avg", "flatten"):
            taps["avgpool" if kind == "adaptive_avg" else "flatten"] = Tap(output)
        elif kind == "dense":
            taps.setdefault("flatten", Tap(owner, from_input=True))
            taps[next(dense)] = Tap(output, owner)
    return taps


def _named(taps: dict[str, Tap], names: Mapping[str, str] | None) -> dict[str, Tap]:
    """Put the user's `names` (vgg_np layer -> their name) over the inferred taps."""
    for layer, name in (names or {}).items():
        taps[layer] = Tap(name, taps[layer].owner if layer in taps else "")
    return taps
