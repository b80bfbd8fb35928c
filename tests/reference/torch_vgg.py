"""VGGs written with torch.nn in torchvision's and timm's layouts, for cross-checks (need torch).

Neither torchvision nor timm imports beside the pinned torch 2.13.0 here (torchvision
0.28's compiled operators do not register: "operator torchvision::nms does not exist",
and timm imports torchvision), so these rebuild their module trees, so that the state
dicts have the real keys:

- `TorchVGG`: torchvision's ``VGG`` / ``make_layers`` (``vgg16``, ``vgg16_bn``):
  ``features`` (Conv2d, [BatchNorm2d,] ReLU, MaxPool2d), ``avgpool``
  (AdaptiveAvgPool2d((7, 7))) and ``classifier`` (Linear, ReLU, Dropout, ...);
- `TimmVGG`: timm 1.0.31's ``timm.models.vgg.VGG``: the same ``features``, then
  ``pre_logits`` (``ConvMlp``: the first classifier layers as a 7x7 and a 1x1
  convolution) and ``head`` (``ClassifierHead``: global average pool, dropout, Linear ``fc``);
- `KerasHeadTwin`: a VGG base under a transfer-learning head (Flatten or global average
  pooling, Linear, ReLU, BatchNorm1d, Dropout, Linear, Softmax), the twin of the Keras
  models of ``make_heads_reference.py``, for ``torch.onnx`` exports.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional


def vgg_features(blocks, batch_norm: bool = False, bn_eps: float = 1e-5) -> nn.Sequential:
    """torchvision's ``make_layers``: conv 3x3, [BatchNorm2d,] ReLU per width; pool per block."""
    layers, channels = [], 3
    for widths in blocks:
        for width in widths:
            layers.append(nn.Conv2d(channels, width, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width, eps=bn_eps))
            layers.append(nn.ReLU(inplace=True))
            channels = width
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


class TorchVGG(nn.Module):
    """torchvision's VGG (with or without batch norm) for any `vgg_np.VGGConfig`.

    `classifier` may be given to stand for a fine-tuned model whose classifier was
    replaced (``model.classifier = nn.Sequential(...)``).
    """

    def __init__(
        self, blocks, fc=(4096, 4096), classes=1000, pool_size=7, batch_norm=False, classifier=None
    ):
        super().__init__()
        self.features = vgg_features(blocks, batch_norm)
        self.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
        if classifier is None:
            head, inputs = [], blocks[-1][-1] * pool_size * pool_size
            for width in fc:
                head += [nn.Linear(inputs, width), nn.ReLU(inplace=True), nn.Dropout(0.5)]
                inputs = width
            head.append(nn.Linear(inputs, classes))
            classifier = nn.Sequential(*head)
        self.classifier = classifier

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


class ConvMlp(nn.Module):
    """timm's ``ConvMlp``: fc1 (KxK conv), act1, drop, fc2 (1x1 conv), act2.

    A map smaller than the kernel is first average-pooled *up* to it, as timm does.
    """

    def __init__(self, in_features, out_features, kernel_size=7, drop_rate=0.2):
        super().__init__()
        self.input_kernel_size = kernel_size
        self.fc1 = nn.Conv2d(in_features, out_features, kernel_size, bias=True)
        self.act1 = nn.ReLU(True)
        self.drop = nn.Dropout(drop_rate)
        self.fc2 = nn.Conv2d(out_features, out_features, 1, bias=True)
        self.act2 = nn.ReLU(True)

    def forward(self, x):
        k = self.input_kernel_size
        if x.shape[-2] < k or x.shape[-1] < k:
            x = functional.adaptive_avg_pool2d(x, (max(k, x.shape[-2]), max(k, x.shape[-1])))
        return self.act2(self.fc2(self.drop(self.act1(self.fc1(x)))))


class SelectAdaptivePool2d(nn.Module):
    """timm's ``SelectAdaptivePool2d(pool_type='avg', flatten=True)``: ``pool``, ``flatten``."""

    def __init__(self):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)

    def forward(self, x):
        return self.flatten(self.pool(x))


class ClassifierHead(nn.Module):
    """timm's ``ClassifierHead`` with ``pool_type='avg'``: pool to 1x1, flatten, drop, fc."""

    def __init__(self, in_features, classes, drop_rate=0.0):
        super().__init__()
        self.global_pool = SelectAdaptivePool2d()
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_features, classes)

    def forward(self, x):
        return self.fc(self.drop(self.global_pool(x)))


class TimmVGG(nn.Module):
    """timm's VGG: torchvision's ``features``, then ``pre_logits`` and ``head``."""

    def __init__(self, blocks, hidden=4096, classes=1000, batch_norm=False):
        super().__init__()
        self.features = vgg_features(blocks, batch_norm)
        self.pre_logits = ConvMlp(blocks[-1][-1], hidden, 7)
        self.head = ClassifierHead(hidden, classes)

    def forward(self, x):
        return self.head(self.pre_logits(self.features(x)))


class KerasHeadTwin(nn.Module):
    """A VGG base under a transfer-learning head, laid out as torch would write it.

    ``head="flatten"``: Flatten (C, H, W order), Linear, ReLU, BatchNorm1d, Dropout,
    Linear, Softmax; ``head="gap"``: AdaptiveAvgPool2d(1) and Flatten instead of Flatten.
    `bn_eps` should be Keras's 1e-3 when the weights come from a Keras model.
    """

    def __init__(self, blocks, features_in, width, classes, head="flatten", bn_eps=1e-3):
        super().__init__()
        self.features = vgg_features(blocks)
        pool = [nn.AdaptiveAvgPool2d(1)] if head == "gap" else []
        self.head = nn.Sequential(
            *pool,
            nn.Flatten(1),
            nn.Linear(features_in, width),
            nn.ReLU(),
            nn.BatchNorm1d(width, eps=bn_eps),
            nn.Dropout(0.5),
            nn.Linear(width, classes),
            nn.Softmax(dim=1),
        )

    def forward(self, x):
        return self.head(self.features(x))
