"""A VGG written with torch.nn in torchvision's layout, for cross-checks (needs torch).

torchvision itself cannot be installed beside the pinned torch 2.13.0 here, so this
rebuilds its module tree: ``features`` (Conv2d, ReLU, MaxPool2d), ``avgpool``
(AdaptiveAvgPool2d((7, 7))) and ``classifier`` (Linear, ReLU, Dropout, ...), so its state
dict has torchvision's keys.
"""

from __future__ import annotations

import torch
from torch import nn


class TorchVGG(nn.Module):
    """torchvision's VGG (no batch norm) for any `vgg_np.VGGConfig`."""

    def __init__(self, blocks, fc=(4096, 4096), classes=1000, pool_size=7):
        super().__init__()
        layers, channels = [], 3
        for widths in blocks:
            for width in widths:
                layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
                channels = width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
        head, inputs = [], channels * pool_size * pool_size
        for width in fc:
            head += [nn.Linear(inputs, width), nn.ReLU(inplace=True), nn.Dropout(0.5)]
            inputs = width
        head.append(nn.Linear(inputs, classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
