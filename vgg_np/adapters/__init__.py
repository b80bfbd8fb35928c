"""Adapters: run another VGG by its own names, check its weights, compare it with vgg_np.

Each adapter takes the reference weights from a file the user names (or
``weights="imagenet"``), never only from the thing under test. When the artifact carries
weights of its own (a torch module's state dict, a Keras model's layers, an ONNX graph's
initializers), `vgg_np.weight_diff.diff_weights` compares them with the reference tensor
by tensor first and names, for each one that differs, the transform that would make them
equal (transposed, flipped, swapped channels, scaled, fc1's flatten order...).

The activations are captured by the artifact's own names: a torch module's by its module
names (a map inferred from its module tree, `torch_layer_names`), a Keras model's by its
layer names, an ONNX graph's by its node outputs. `vgg_np.compare.compare_activations`
then compares them row by row.

The adapters live one framework to a module (`torch_modules`, `keras_models`,
`onnx_graphs`); the name maps (`taps`) and the reference and comparison they share
(`reference`) need no framework. Every name is importable from here.
"""

from __future__ import annotations

from vgg_np.adapters.keras_models import compare_keras
from vgg_np.adapters.onnx_graphs import compare_onnx
from vgg_np.adapters.taps import Tap, name_map
from vgg_np.adapters.torch_modules import compare_torch, torch_layer_names

__all__ = ["Tap", "compare_keras", "compare_onnx", "compare_torch", "name_map", "torch_layer_names"]
