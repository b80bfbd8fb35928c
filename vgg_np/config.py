"""The VGG family as data: configurations and the layer table built from them.

A VGG network is a table of layers: 3x3 "same" convolutions with ReLU in five blocks,
each block closed by a 2x2 max-pool, then (with the top) a flatten and three dense
layers. VGG11, 13, 16 and 19 differ only in the widths listed in `VGGConfig.blocks`,
and reduced-width variants for tests are just another `VGGConfig`. Layer names are
Keras's (``block1_conv1`` ... ``block5_pool``, ``flatten``, ``fc1``, ``fc2``,
``predictions``), so Keras weight files map by name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vgg_np.layers import Layer

__all__ = ["CONFIGS", "MIN_SIZE", "Layer", "VGGConfig", "layer_table"]

#: Each of the five max-pools halves H and W: below 2**5 pixels nothing is left.
MIN_SIZE = 32


@dataclass(frozen=True)
class VGGConfig:
    """The widths that define one member of the VGG family.

    Parameters
    ----------
    name : str
        A label, e.g. ``"vgg16"``.
    blocks : tuple of tuple of int
        Output channels of each 3x3 convolution, one tuple per block; each block ends
        with a 2x2 max-pool.
    fc : tuple of int, default (4096, 4096)
        Widths of the hidden dense layers ``fc1``, ``fc2``, ... of the classifier.
    default_size : int, default 224
        Input height and width the classifier was designed for.

    Examples
    --------
    >>> CONFIGS["vgg16"].conv_names()[:3]
    ['block1_conv1', 'block1_conv2', 'block2_conv1']
    >>> tiny = VGGConfig("tiny", ((8,), (8,), (16,), (16,), (16,)), fc=(32,), default_size=32)
    >>> len(tiny.conv_names())
    5
    """

    name: str
    blocks: tuple[tuple[int, ...], ...]
    fc: tuple[int, ...] = (4096, 4096)
    default_size: int = 224

    def conv_names(self) -> list[str]:
        """Return the Keras names of the convolutions, in order.

        Examples
        --------
        >>> CONFIGS["vgg11"].conv_names()[-2:]
        ['block5_conv1', 'block5_conv2']
        """
        return [
            f"block{b}_conv{i}"
            for b, widths in enumerate(self.blocks, start=1)
            for i in range(1, len(widths) + 1)
        ]


_W3, _W4 = (256, 256, 256), (256, 256, 256, 256)
CONFIGS: dict[str, VGGConfig] = {
    "vgg11": VGGConfig("vgg11", ((64,), (128,), (256, 256), (512, 512), (512, 512))),
    "vgg13": VGGConfig("vgg13", ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512))),
    "vgg16": VGGConfig("vgg16", ((64, 64), (128, 128), _W3, (512,) * 3, (512,) * 3)),
    "vgg19": VGGConfig("vgg19", ((64, 64), (128, 128), _W4, (512,) * 4, (512,) * 4)),
}


def layer_table(
    config: VGGConfig,
    *,
    include_top: bool = True,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: str | None = "softmax",
    adaptive_pool: int | None = None,
    batch_norm: float | None = None,
    head: Sequence[Layer] | None = None,
) -> list[Layer]:
    """Return the layers of a VGG network, in order, named as Keras names them.

    Parameters
    ----------
    config : VGGConfig
        The widths.
    include_top : bool, default True
        Append ``flatten``, the hidden dense layers and ``predictions``.
    pooling : {None, "avg", "max"}
        Without the top: a global pooling after ``block5_pool``, as in Keras.
    classes : int, default 1000
        Outputs of ``predictions``.
    classifier_activation : {"softmax", None}
        Activation of ``predictions``; None gives logits.
    adaptive_pool : int, optional
        With the top: torchvision's ``AdaptiveAvgPool2d((n, n))`` before ``flatten``,
        as the layer ``avgpool``.
    batch_norm : float, optional
        The VGG-with-batch-norm variant (torchvision's ``vgg16_bn``): each convolution,
        without its ReLU, is followed by a batch normalisation ``block{b}_conv{i}_bn``
        with this epsilon (PyTorch's 1e-5) and then the ReLU.
    head : sequence of Layer, optional
        A classifier of one's own after ``block5_pool`` (Flatten or global pooling,
        dense, batch norm, dropout ...), in place of the top and of `pooling`.

    Returns
    -------
    list of Layer

    Examples
    --------
    >>> [layer.name for layer in layer_table(CONFIGS["vgg11"])][:4]
    ['block1_conv1', 'block1_pool', 'block2_conv1', 'block2_pool']
    >>> layer_table(CONFIGS["vgg16"], include_top=False, pooling="avg")[-1].name
    'global_average_pooling2d'
    >>> layer_table(CONFIGS["vgg11"], batch_norm=1e-5)[:2]
    [Layer(name='block1_conv1', kind='conv', units=64), \
Layer(name='block1_conv1_bn', kind='batch_norm', activation='relu', eps=1e-05)]
    """
    layers = []
    for b, widths in enumerate(config.blocks, start=1):
        for i, width in enumerate(widths, start=1):
            name = f"block{b}_conv{i}"
            if batch_norm is None:
                layers.append(Layer(name, "conv", width, "relu"))
            else:
                layers.append(Layer(name, "conv", width))
                layers.append(Layer(f"{name}_bn", "batch_norm", activation="relu", eps=batch_norm))
        layers.append(Layer(f"block{b}_pool", "pool"))
    if head is not None:
        layers.extend(head)
    elif include_top:
        if adaptive_pool is not None:
            layers.append(Layer("avgpool", "adaptive_avg", adaptive_pool))
        layers.append(Layer("flatten", "flatten"))
        for i, width in enumerate(config.fc, start=1):
            layers.append(Layer(f"fc{i}", "dense", width, "relu"))
        layers.append(Layer("predictions", "dense", classes, classifier_activation))
    elif pooling == "avg":
        layers.append(Layer("global_average_pooling2d", "global_avg"))
    elif pooling == "max":
        layers.append(Layer("global_max_pooling2d", "global_max"))
    return layers


def _fmt_shape(shape: tuple) -> str:
    return "x".join("?" if s is None else str(s) for s in shape)
