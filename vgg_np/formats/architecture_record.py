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
    """JSON of ``info["head"]`` and ``info["batch_norm_eps"]``; None if neither is there.

    Examples
    --------
    >>> to_record({"head": (Layer("gap", "global_avg"), Layer("out", "dense", 3, "softmax"))})
    '{"batch_norm": null, "head": [{"name": "gap", "kind": "global_avg", "units": 0, \
"activation": null, "eps": 0.0, "rate": 0.0}, {"name": "out", "kind": "dense", "units": 3, \
"activation": "softmax", "eps": 0.0, "rate": 0.0}]}'
    >>> from_record(to_record({"batch_norm_eps": 1e-5}), "x")
    {'batch_norm_eps': 1e-05}
    """
    head, eps = info.get("head"), info.get("batch_norm_eps")
    if not head and eps is None:
        return None
    layers = [{k: getattr(layer, k) for k in (*_FIELDS, *_FLOATS)} for layer in head or ()]
    return json.dumps({"batch_norm": eps, "head": layers or None})


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
    return info


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
