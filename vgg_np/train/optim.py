"""Adam beside `vgg_np.train.step.SGD`, and both optimizers' state as arrays for checkpoints.

`Adam` is PyTorch's ``torch.optim.Adam`` (and Keras's ``Adam`` with ``epsilon`` given as
PyTorch places it): bias-corrected first and second moments, L2 weight decay added to
the gradient. `make_optimizer` builds either by name; `optimizer_state` and
`load_optimizer_state` turn an optimizer's state into named arrays and back, so that a
run resumed from a checkpoint takes the very steps an uninterrupted run takes.
"""

from __future__ import annotations

import numpy as np

from vgg_np.train.step import SGD, _Trainable, state_arrays, update_in_chunks

__all__ = ["OPTIMIZERS", "Adam", "load_optimizer_state", "make_optimizer", "optimizer_state"]

#: Optimizer names and their default learning rates (PyTorch's for Adam; SGD's is the
#: usual fine-tuning rate of torchvision's transfer-learning tutorial, 1e-3, times 10 for
#: a head trained from scratch).
OPTIMIZERS = {"adam": 1e-3, "sgd": 1e-2}


class Adam:
    """Adam as PyTorch defines it: ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g**2``.

    ``w -= lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)``, with
    ``g = grad + weight_decay * w``; the moments are kept in the weights' dtype, as
    PyTorch keeps them.

    Examples
    --------
    >>> from vgg_np.model import VGG, VGGConfig
    >>> tiny = VGGConfig("tiny", ((2,), (2,), (4,), (4,), (4,)), fc=(8,), default_size=32)
    >>> model = VGG(tiny, classes=3, seed=0, classifier_activation=None)
    >>> before = model.weights["predictions"][1].copy()
    >>> Adam(lr=0.1).step(model, {"predictions": (np.zeros((8, 3)), np.ones(3))})
    >>> model.weights["predictions"][1] - before  # the first step is lr * sign(g)
    array([-0.1, -0.1, -0.1], dtype=float32)
    """

    def __init__(
        self,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        if lr <= 0 or not all(0 <= b < 1 for b in betas) or eps <= 0 or weight_decay < 0:
            raise ValueError(
                "need lr > 0, 0 <= betas < 1, eps > 0 and weight_decay >= 0, got "
                f"{lr}, {betas}, {eps}, {weight_decay}"
            )
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay
        self.t = 0
        self.moments: dict[str, list[np.ndarray]] = {}  # m then v for each trained tensor

    def step(self, model: _Trainable, gradients: dict) -> None:
        """Update the model's weights in place from `gradients` (see the class example)."""
        self.t += 1
        weights = model.weights
        for name, grads in gradients.items():
            # The first len(grads) tensors train; the rest (running statistics) stay.
            trained, kept = weights[name][: len(grads)], weights[name][len(grads) :]
            slots = state_arrays(self.moments, name, trained, 2)  # m, v per tensor
            in_place = getattr(model, "owns_weights", False)
            new = [
                self._update(w, g, slots[2 * i], slots[2 * i + 1], in_place=in_place)
                for i, (w, g) in enumerate(zip(trained, grads, strict=True))
            ]
            weights[name] = (*new, *kept)
        model.set_weights(weights)

    def _update(
        self, w: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, *, in_place: bool
    ) -> np.ndarray:
        """Return the new `w` (`vgg_np.train.step.update_in_chunks`); `m` and `v` in place.

        The class's formulas, each element by the operations (and roundings) of the
        whole-tensor expressions ``g = grad + decay * w``, ``m = b1 * m + (1 - b1) * g``,
        ``v = b2 * v + (1 - b2) * g * g`` and ``w - lr * ((m / c1) / (sqrt(v / c2) + eps))``.
        """
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t  # the bias corrections
        decay, lr, eps = self.weight_decay, self.lr, self.eps
        w_flat, m_flat, v_flat = np.ravel(w), m.reshape(-1), v.reshape(-1)
        g_flat = np.ravel(np.asarray(g, w.dtype))

        def chunk(c: slice, out: np.ndarray, scratch: list[np.ndarray]) -> None:
            a, b = scratch
            ws, ms, vs = w_flat[c], m_flat[c], v_flat[c]
            gs = g_flat[c]
            if decay:
                gs = np.add(gs, np.multiply(ws, decay, out=a), out=a)
            ms *= b1
            ms += np.multiply(gs, 1 - b1, out=b)
            vs *= b2
            vs += np.multiply(np.multiply(gs, 1 - b2, out=b), gs, out=b)
            denominator = np.add(np.sqrt(np.divide(vs, c2, out=b), out=b), eps, out=b)
            update = np.divide(np.divide(ms, c1, out=a), denominator, out=a)
            np.subtract(ws, np.multiply(update, lr, out=a), out=out)

        return update_in_chunks(w, chunk, in_place=in_place, scratch=2)


def make_optimizer(
    name: str, lr: float | None = None, *, momentum: float = 0.9, weight_decay: float = 0.0
) -> SGD | Adam:
    """Build ``"adam"`` or ``"sgd"`` (momentum `momentum`) at `lr` (default `OPTIMIZERS`).

    Examples
    --------
    >>> make_optimizer("adam").lr, make_optimizer("sgd", 0.1).momentum
    (0.001, 0.9)
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"`optimizer` must be one of {sorted(OPTIMIZERS)}, got {name!r}")
    lr = OPTIMIZERS[name] if lr is None else lr
    if name == "adam":
        return Adam(lr, weight_decay=weight_decay)
    return SGD(lr, momentum=momentum, weight_decay=weight_decay)


def optimizer_state(optimizer: SGD | Adam) -> tuple[dict, dict[str, np.ndarray]]:
    """Return an optimizer's scalars (JSON) and its per-tensor arrays, named ``layer/i``.

    Examples
    --------
    >>> adam = Adam()
    >>> adam.moments["fc1"] = [np.ones(2), np.zeros(2)]
    >>> scalars, arrays = optimizer_state(adam)
    >>> scalars, sorted(arrays)
    ({'t': 0}, ['fc1/0', 'fc1/1'])
    """
    slots = optimizer.moments if isinstance(optimizer, Adam) else optimizer.velocity
    arrays = {f"{name}/{i}": a for name, tensors in slots.items() for i, a in enumerate(tensors)}
    return ({"t": optimizer.t} if isinstance(optimizer, Adam) else {}), arrays


def load_optimizer_state(
    optimizer: SGD | Adam, scalars: dict, arrays: dict[str, np.ndarray]
) -> None:
    """Give an optimizer the state `optimizer_state` returned (copies of the arrays).

    Examples
    --------
    >>> adam = Adam()
    >>> load_optimizer_state(adam, {"t": 3}, {"fc1/0": np.ones(2), "fc1/1": np.zeros(2)})
    >>> adam.t, len(adam.moments["fc1"])
    (3, 2)
    """
    slots: dict[str, list[np.ndarray]] = {}
    for key in sorted(arrays, key=lambda k: (k.rsplit("/", 1)[0], int(k.rsplit("/", 1)[1]))):
        # C order: SGD updates its velocity in place through a flat view.
        slots.setdefault(key.rsplit("/", 1)[0], []).append(np.array(arrays[key], order="C"))
    if isinstance(optimizer, Adam):
        optimizer.t, optimizer.moments = int(scalars["t"]), slots
    else:
        optimizer.velocity = slots
