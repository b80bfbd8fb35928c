"""Lowering: from the user's layer table to the engine's plan, by passes that keep its meaning.

The engine runs fewer, larger steps than the network has layers: a batch norm folded into
the convolution before it, dropout (the identity at inference) gone, an activation that
Keras writes as a layer of its own fused into the dense layer before it. Each of these is
a named pass over a `Plan`; each keeps the network's function and records, in
`Plan.names`, which step's output is each user layer's output. A pass never drops an
activation, and never merges away a layer whose output was asked for (`keep`): the
network the user built stays what it is, only how it runs changes.

The passes, in order (`PASSES`):

- `split_activations`: a convolution whose activation the engine cannot fuse (anything
  but ReLU) runs linear, followed by an ``activation`` step under the user's name.
- `remove_dropouts`: a ``dropout`` row without activation is gone and its name answers
  with the step before it; one with an activation becomes an ``activation`` step.
- `fold_batch_norms`: a ``batch_norm`` right after a linear convolution or dense layer
  becomes part of it (`vgg_np.ops.fold_batch_norm`), named as the batch norm.
- `fuse_activations`: an ``activation`` step right after a linear dense layer (or a
  linear convolution, for ReLU) becomes that layer's activation.

Every pass is tested against `vgg_np.layers.forward` on every user layer it keeps a name
for (tests/engine/test_lowering.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from vgg_np import ops
from vgg_np.layers import Layer

__all__ = [
    "PASSES",
    "Plan",
    "fold_batch_norms",
    "fuse_activations",
    "lower",
    "remove_dropouts",
    "split_activations",
]

#: The activations the engine applies inside a convolution's epilogue (pool before it:
#: exact, ReLU being monotonic); any other runs as an ``activation`` step after it.
CONV_EPILOGUE = (None, "relu")


@dataclass(frozen=True)
class Plan:
    """The steps the engine runs, their tensors, and where each user layer's output is.

    Attributes
    ----------
    steps : tuple of Layer
        The engine's layer table (step names are user names, or ``NAME/linear`` for a
        convolution split from its activation).
    weights : dict
        Step name -> tensors, Keras layout.
    names : dict
        User layer name -> the step whose output equals that layer's output. A user
        layer merged away (a convolution folded with its batch norm) has no entry: lower
        again with its name in `keep` to get it.
    keep : frozenset of str
        The user layers whose outputs the passes were told to keep.

    Examples
    --------
    >>> table = [Layer("d", "dense", 3), Layer("drop", "dropout", activation="softmax")]
    >>> plan = lower(table, {"d": (np.eye(3), np.zeros(3))})
    >>> plan.steps, plan.names
    ((Layer(name='drop', kind='dense', units=3, activation='softmax'),), {'drop': 'drop'})
    """

    steps: tuple[Layer, ...]
    weights: dict
    names: dict[str, str]
    keep: frozenset[str] = field(default=frozenset())

    def merge(self, index: int, step: Layer, tensors: tuple | None) -> Plan:
        """Replace steps `index` and `index` + 1 by `step`; names of the first are lost.

        See `fold_batch_norms` for an example.
        """
        first, second = self.steps[index], self.steps[index + 1]
        weights = {k: v for k, v in self.weights.items() if k not in (first.name, second.name)}
        if tensors is not None:
            weights[step.name] = tensors
        names = {user: s for user, s in self.names.items() if s != first.name}
        names |= {user: step.name for user, s in self.names.items() if s == second.name}
        steps = (*self.steps[:index], step, *self.steps[index + 2 :])
        return replace(self, steps=steps, weights=weights, names=names)

    def mergeable(self, index: int) -> bool:
        """Whether step `index` may disappear into the next: no kept user layer needs it.

        See `lower` for an example.
        """
        name = self.steps[index].name
        return not any(s == name and user in self.keep for user, s in self.names.items())


def split_activations(plan: Plan) -> Plan:
    """Run a convolution whose activation is not ReLU linear, then an ``activation`` step.

    Examples
    --------
    >>> table = [Layer("c", "conv", 2, "sigmoid")]
    >>> plan = lower(table, {"c": (np.ones((3, 3, 1, 2)), np.zeros(2))}, passes=())
    >>> split_activations(plan).steps
    (Layer(name='c/linear', kind='conv', units=2), Layer(name='c', kind='activation', \
activation='sigmoid'))
    """
    steps, weights = [], dict(plan.weights)
    for step in plan.steps:
        if step.kind != "conv" or step.activation in CONV_EPILOGUE:
            steps.append(step)
            continue
        linear = Layer(f"{step.name}/linear", "conv", step.units)
        assert linear.name not in weights, f"step {linear.name} exists already"
        weights[linear.name] = weights.pop(step.name)
        steps += [linear, Layer(step.name, "activation", activation=step.activation)]
    return replace(plan, steps=tuple(steps), weights=weights)


def remove_dropouts(plan: Plan) -> Plan:
    """Drop ``dropout`` steps (the identity at inference), keeping their activations.

    A dropout without activation answers with the step before it; one with an
    activation (Keras's ``Dropout`` then ``Activation("softmax")``) becomes an
    ``activation`` step of that name.

    Examples
    --------
    >>> table = [Layer("d", "dense", 3), Layer("drop", "dropout", rate=0.5)]
    >>> plan = remove_dropouts(lower(table, {"d": (np.eye(3), np.zeros(3))}, passes=()))
    >>> [s.name for s in plan.steps], plan.names
    (['d'], {'d': 'd', 'drop': 'd'})
    """
    steps: list[Layer] = []
    names = dict(plan.names)
    for step in plan.steps:
        if step.kind != "dropout":
            steps.append(step)
        elif step.activation is None and steps:
            names[step.name] = names[steps[-1].name]  # the same values
        else:
            steps.append(Layer(step.name, "activation", activation=step.activation))
    return replace(plan, steps=tuple(steps), names=names)


def _merge_pairs(plan: Plan, merged: Callable[[Plan, Layer, Layer], tuple | None]) -> Plan:
    """Merge each step into the one before it where `merged` gives ``(step, tensors)``."""
    index = 0
    while index + 1 < len(plan.steps):
        first, second = plan.steps[index], plan.steps[index + 1]
        result = merged(plan, first, second) if plan.mergeable(index) else None
        if result is None:
            index += 1
        else:
            plan = plan.merge(index, *result)
    return plan


def _folded(plan: Plan, first: Layer, second: Layer) -> tuple | None:
    if second.kind != "batch_norm" or first.kind not in ("conv", "dense") or first.activation:
        return None
    step = Layer(second.name, first.kind, first.units, second.activation)
    if step.kind == "conv" and step.activation not in CONV_EPILOGUE:
        return None  # it stays a batch norm with its activation
    kernel, bias = plan.weights[first.name]
    gamma, beta, mean, var = plan.weights[second.name]
    folded = ops.fold_batch_norm(kernel, bias, gamma, beta, mean, var, eps=second.eps)
    dtype = np.result_type(kernel)
    return step, tuple(a.astype(dtype, copy=False) for a in folded)


def fold_batch_norms(plan: Plan) -> Plan:
    """Fold each ``batch_norm`` step into the linear convolution or dense step before it.

    The pair becomes one step of the first's kind, named as the batch norm and with its
    activation, whose kernel and bias are ``K * s`` and ``(b - mean) * s + beta``,
    ``s = gamma / sqrt(var + eps)`` (in the weights' dtype). The convolution's own
    output (before the batch norm) is then no step's: its name leaves `Plan.names`.

    Examples
    --------
    >>> table = [Layer("c", "conv", 2), Layer("c_bn", "batch_norm", activation="relu", eps=0.0)]
    >>> weights = {"c": (np.ones((3, 3, 1, 2)), np.zeros(2)),
    ...            "c_bn": (np.array([2.0, 1.0]), np.zeros(2), np.zeros(2), np.ones(2))}
    >>> plan = fold_batch_norms(lower(table, weights, passes=()))
    >>> plan.steps, plan.names, plan.weights["c_bn"][0][..., 0].sum()
    ((Layer(name='c_bn', kind='conv', units=2, activation='relu'),), {'c_bn': 'c_bn'}, \
np.float64(18.0))
    """
    return _merge_pairs(plan, _folded)


def _fused(plan: Plan, first: Layer, second: Layer) -> tuple | None:
    if second.kind != "activation" or first.activation is not None:
        return None
    if first.kind == "dense" or (first.kind == "conv" and second.activation in CONV_EPILOGUE):
        step = Layer(second.name, first.kind, first.units, second.activation)
        return step, plan.weights[first.name]
    return None


def fuse_activations(plan: Plan) -> Plan:
    """Make an ``activation`` step the activation of the linear dense (or conv) step before it.

    Examples
    --------
    >>> table = [Layer("d", "dense", 3), Layer("act", "activation", activation="softmax")]
    >>> plan = fuse_activations(lower(table, {"d": (np.eye(3), np.zeros(3))}, passes=()))
    >>> plan.steps, plan.names
    ((Layer(name='act', kind='dense', units=3, activation='softmax'),), {'act': 'act'})
    """
    return _merge_pairs(plan, _fused)


#: The passes `lower` runs, in order.
PASSES: tuple[Callable[[Plan], Plan], ...] = (
    split_activations,
    remove_dropouts,
    fold_batch_norms,
    fuse_activations,
)


def lower(
    layers: Sequence[Layer],
    weights: Mapping[str, tuple],
    keep: frozenset[str] | set[str] = frozenset(),
    *,
    passes: Sequence[Callable[[Plan], Plan]] = PASSES,
) -> Plan:
    """Lower a layer table to the engine's plan by `passes`, keeping the outputs of `keep`.

    Parameters
    ----------
    layers : sequence of Layer
        The user's layer table.
    weights : mapping
        Layer name -> tensors.
    keep : set of str, optional
        User layers whose own outputs must stay a step's output (no pass merges them
        away), e.g. a convolution of a batch-norm VGG asked for by ``features``.
    passes : sequence of callable, default PASSES

    Returns
    -------
    Plan

    Examples
    --------
    >>> table = [Layer("c", "conv", 2), Layer("c_bn", "batch_norm", activation="relu")]
    >>> weights = {"c": (np.ones((3, 3, 1, 2)), np.zeros(2)), "c_bn": (np.ones(2),) * 4}
    >>> [s.name for s in lower(table, weights).steps]
    ['c_bn']
    >>> [s.name for s in lower(table, weights, keep={"c"}).steps]
    ['c', 'c_bn']
    """
    names = {layer.name: layer.name for layer in layers}
    plan = Plan(tuple(layers), dict(weights), names, frozenset(keep))
    for apply in passes:
        plan = apply(plan)
    return plan
