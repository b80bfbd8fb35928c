"""Batch norms in a training step: whose running statistics, updated how.

In training a batch norm normalises with the batch's own mean and variance, and moves
its running statistics toward them for inference. The frameworks differ in how, and a
model trained here keeps the conventions of the framework its weights come from:

- PyTorch (``BatchNorm2d``, ``BatchNorm1d``): ``running = (1 - m) * running + m * batch``
  with momentum m = 0.1, the variance kept *unbiased* (the batch's ``var * M / (M - 1)``);
  a layer that is not trained still runs in training mode (``model.train()``): batch
  statistics, running ones updated.
- Keras (``BatchNormalization``): ``moving = m * moving + (1 - m) * batch`` with momentum
  m = 0.99, the variance kept *biased* (the batch's ``var``); a layer that is not trained
  (``trainable=False``) runs in inference mode: running statistics, not updated.

M is the number of values per channel in the batch (``N``, or ``N * H * W``). Both normalise
with the batch's biased variance. Sources: ``torch/nn/modules/batchnorm.py`` and ATen's
``batch_norm_cpu_update_stats_template``; ``keras/src/layers/normalization/
batch_normalization.py``. The momenta are each framework's default (a Keras config may
set another; give a `RunningStatistics` then).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from vgg_np import ops
from vgg_np.formats.contract import Family, Provenance
from vgg_np.layers import Layer

__all__ = ["STATISTICS", "RunningStatistics", "choose_statistics"]


@dataclass(frozen=True)
class RunningStatistics:
    """One framework's running statistics: see the module's table.

    Attributes
    ----------
    framework : str
    batch_weight : float
        The batch statistic's weight in the update: PyTorch's momentum (0.1), one minus
        Keras's (0.01).
    unbiased : bool
        The running variance takes the batch's unbiased variance (PyTorch).
    frozen_in_inference : bool
        A batch norm that is not trained runs on its running statistics (Keras).

    Examples
    --------
    >>> torch = STATISTICS["torch"]
    >>> mean, var = torch.update((np.zeros(1), np.ones(1)), np.array([[1.0], [3.0]]))
    >>> mean.tolist(), var.tolist()  # the batch: mean 2, variance 1 (unbiased 2)
    ([0.2], [1.1])
    """

    framework: str
    batch_weight: float
    unbiased: bool
    frozen_in_inference: bool

    def update(
        self, running: tuple[np.ndarray, np.ndarray], x: NDArray[np.floating]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Return the running mean and variance after a training step on batch `x`.

        Parameters
        ----------
        running : (mean, variance)
            The running statistics before, shape (C,).
        x : ndarray, shape (N, ..., C)
            The batch norm's input in this step.

        Returns
        -------
        (mean, variance)
            New arrays, in the dtype of the running statistics.
        """
        mean, var = ops.batch_moments(np.asarray(x, np.float64))  # (C,), biased
        count = x.size // x.shape[-1]
        if self.unbiased:
            var = var * (count / max(count - 1, 1))
        w = self.batch_weight
        old_mean, old_var = running
        new_mean = (1 - w) * old_mean.astype(np.float64) + w * mean
        new_var = (1 - w) * old_var.astype(np.float64) + w * var
        return new_mean.astype(old_mean.dtype), new_var.astype(old_var.dtype)


#: The conventions by framework name.
STATISTICS: dict[str, RunningStatistics] = {
    "torch": RunningStatistics("torch", 0.1, True, False),
    "keras": RunningStatistics("keras", 1 - 0.99, False, True),
}
#: Whose conventions a family's weights follow.
_FAMILY = {
    Family.TORCHVISION: "torch",
    Family.TIMM: "torch",
    Family.KERAS: "keras",
    Family.THEANO: "keras",
}
#: Each framework's default epsilon: a model of no known family is told by it.
_EPS = {1e-5: "torch", 1e-3: "keras"}
_DEFAULT_EPS = {framework: eps for eps, framework in _EPS.items()}


def choose_statistics(
    layers: Sequence[Layer],
    provenance: Provenance | None = None,
    statistics: str | RunningStatistics | Mapping[str, RunningStatistics] | None = None,
) -> tuple[dict[str, RunningStatistics], str]:
    """Choose each batch norm's running-statistics convention, and say why.

    The caller's choice first (one for every batch norm, or one per batch norm's name:
    `vgg_np.train.fit` chooses the base's and the head's apart); else the family of the
    weights (torchvision and timm: PyTorch's; Keras: Keras's); else each batch norm's
    epsilon, when it is one framework's default (PyTorch's 1e-5, as vgg_np's own
    ``batch_norm=True``; Keras's 1e-3): a torchvision base under a head built as Keras
    builds it keeps both. Any other epsilon is not guessed.

    Returns
    -------
    statistics : dict
        Batch norm name -> its `RunningStatistics` (empty without batch norms).
    reason : str

    Raises
    ------
    ValueError
        If `statistics` is not a framework's name, or nothing tells a batch norm's
        convention.

    Examples
    --------
    >>> head = [Layer("d", "dense", 4), Layer("bn", "batch_norm", eps=1e-3)]
    >>> rules, why = choose_statistics(head)
    >>> rules["bn"].framework, why
    ('keras', "keras's running statistics (bn: keras's default epsilon 0.001)")
    >>> choose_statistics(head, statistics="torch")[0]["bn"].batch_weight
    0.1
    >>> choose_statistics(head, statistics={"bn": STATISTICS["torch"]})[1]
    'given per batch norm'
    """
    norms = [layer for layer in layers if layer.kind == "batch_norm"]
    if not norms:
        return {}, "no batch norm"
    if isinstance(statistics, Mapping):
        missing = [layer.name for layer in norms if layer.name not in statistics]
        if missing:
            raise ValueError(f"`statistics` gives no convention for the batch norms {missing}")
        return {layer.name: statistics[layer.name] for layer in norms}, "given per batch norm"
    rule, why = _whole_model(provenance, statistics)
    if rule is not None:
        return {
            layer.name: rule for layer in norms
        }, f"{rule.framework}'s running statistics ({why})"
    unknown = [layer for layer in norms if layer.eps not in _EPS]
    if unknown:
        family = provenance.family.value if provenance is not None else "unknown"
        raise ValueError(
            f"which framework's running statistics batch norm {unknown[0].name!r} follows is "
            f"unknown (weights of family {family}, epsilon {unknown[0].eps}, neither PyTorch's "
            "1e-5 nor Keras's 1e-3): pass statistics='torch' or 'keras'"
        )
    rules = {layer.name: STATISTICS[_EPS[layer.eps]] for layer in norms}
    by: dict[str, list[str]] = {}
    for layer in norms:
        by.setdefault(_EPS[layer.eps], []).append(layer.name)
    parts = [
        f"{', '.join(names)}: {framework}'s default epsilon {_DEFAULT_EPS[framework]}"
        for framework, names in by.items()
    ]
    frameworks = " and ".join(f"{framework}'s" for framework in by)
    return rules, f"{frameworks} running statistics ({'; '.join(parts)})"


def _whole_model(
    provenance: Provenance | None, statistics: str | RunningStatistics | None
) -> tuple[RunningStatistics | None, str]:
    """Return the convention of every batch norm of a model: the caller's, else its family's."""
    if isinstance(statistics, RunningStatistics):
        return statistics, "given by the caller"
    if statistics is not None:
        if statistics not in STATISTICS:
            raise ValueError(
                f"`statistics` must be 'torch', 'keras' or a RunningStatistics, got {statistics!r}"
            )
        return STATISTICS[statistics], "chosen by the caller"
    family = provenance.family if provenance is not None else None
    if family in _FAMILY:
        return STATISTICS[_FAMILY[family]], f"{family.value} weights"
    return None, ""
