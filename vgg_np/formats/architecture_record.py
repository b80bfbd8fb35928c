"""The architecture a flat weights file cannot show by its names: batch norm and a head.

vgg_np's own ``.npz`` and Keras-layout ``.safetensors`` name tensors by layer
(``block1_conv1/kernel``), which is enough for a plain VGG: widths follow from shapes.
A VGG with batch norm needs its epsilon, and a head of one's own its layers' kinds,
activations and rates, none of which a tensor shape says. vgg_np writes them as a JSON
record beside the provenance, and reads it back strictly (a damaged record is an error,
never ignored).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from vgg_np.formats._common import FileFormatError
from vgg_np.layers import Layer

__all__ = ["RECORD_KEY", "from_record", "to_record"]

#: The key of the record: an npz member name, a safetensors ``__metadata__`` key.
RECORD_KEY = "vgg_np.architecture"
_FIELDS: dict[str, type | tuple[type, ...]] = {
    "name": str,
    "kind": str,
    "units": int,
    "activation": (str, type(None)),
}
_FLOATS = ("eps", "rate")


def to_record(info: Mapping) -> str | None:
    """JSON of ``info["head"]``, ``info["batch_norm_eps"]`` and ``info["labels"]``; None if none is.

    ``labels`` are the class names of the outputs, in order (what ``vgg-np train``
    records from the class folders); a record without them is written as before.

    Examples
    --------
    >>> to_record({"head": (Layer("gap", "global_avg"), Layer("out", "dense", 3, "softmax"))})
    '{"batch_norm": null, "head": [{"name": "gap", "kind": "global_avg", "units": 0, \
"activation": null, "eps": 0.0, "rate": 0.0}, {"name": "out", "kind": "dense", "units": 3, \
"activation": "softmax", "eps": 0.0, "rate": 0.0}]}'
    >>> from_record(to_record({"batch_norm_eps": 1e-5}), "x")
    {'batch_norm_eps': 1e-05}
    >>> from_record(to_record({"labels": ("cat", "dog")}), "x")
    {'labels': ('cat', 'dog')}
    """
    head, eps, labels = info.get("head"), info.get("batch_norm_eps"), info.get("labels")
    if not head and eps is None and not labels:
        return None
    layers = [{k: getattr(layer, k) for k in (*_FIELDS, *_FLOATS)} for layer in head or ()]
    record = {"batch_norm": eps, "head": layers or None}
    return json.dumps(record | ({"labels": list(labels)} if labels else {}))


def from_record(text: object, where: str) -> dict:
    """Parse `to_record`'s JSON into ``info`` entries (``head``, ``batch_norm_eps``).

    Raises
    ------
    FileFormatError
        If the record is not what `to_record` writes.
    """
    try:
        if not isinstance(text, (str, bytes, bytearray)):
            raise TypeError(f"a {type(text).__name__}, not JSON text")
        record = json.loads(text)
        eps, rows = record.pop("batch_norm"), record.pop("head")
        labels = _labels(record.pop("labels", None))
        if record or not (eps is None or _finite(eps)) or not (rows is None or rows):
            raise ValueError(f"unexpected entries {sorted(record)} or values")
        head = tuple(_layer(row) for row in rows or ())
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise FileFormatError(f"{where}: damaged architecture record ({error})") from None
    info: dict = {}
    if eps is not None:
        info["batch_norm_eps"] = float(eps)
    if head:
        info["head"] = head
    if labels:
        info["labels"] = labels
    return info


def _labels(labels: object) -> tuple[str, ...] | None:
    """Class names: a non-empty list of distinct, non-empty, one-line strings."""
    if labels is None:
        return None
    if not isinstance(labels, list) or not labels:
        raise ValueError(f"labels {labels!r} are not a list of names")
    bad = [n for n in labels if not isinstance(n, str) or not n.strip() or "\n" in n]
    if bad or len(set(labels)) != len(labels):
        raise ValueError(f"labels must be distinct non-empty one-line names, got {labels!r}")
    return tuple(labels)


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _layer(row: Mapping) -> Layer:
    if set(row) != {*_FIELDS, *_FLOATS}:
        raise ValueError(f"a head layer needs {sorted({*_FIELDS, *_FLOATS})}, got {sorted(row)}")
    for key, kind in _FIELDS.items():
        if not isinstance(row[key], kind) or isinstance(row[key], bool):
            raise ValueError(f"{key} {row[key]!r}")
    if not all(_finite(row[k]) and row[k] >= 0 for k in _FLOATS) or row["units"] < 0:
        raise ValueError(f"negative or non-finite sizes in {row}")
    return Layer(**row)
