"""The plan of an extraction: its images, partitions, layer, preprocessing and weights.

Written once by `vgg_np.extract.create_store` to ``OUT.manifest/plan.json``, read back by
every process that works on the store; a rerun with other settings is refused with each
difference named (`_differences`). `weights_digest` is what ties a store to its model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from vgg_np._files import read_text
from vgg_np.formats import choose_preprocessing
from vgg_np.streams import image_paths, input_size

if TYPE_CHECKING:
    from vgg_np.model import VGG

__all__ = ["DEFAULT_PARTITION_SIZE", "Partition", "weights_digest"]

PLAN_VERSION = "vgg_np extract 2"

#: Largest plan read back (it lists every path: a million of them fit in ~200 MB).
MAX_PLAN_BYTES = 1 << 30

#: The keys of a plan, each with the type its value must have.
PLAN_KEYS: dict[str, type | tuple[type, ...]] = {
    "version": str, "layer": str, "row_shape": list, "dtype": str, "top": int,
    "partition_size": int, "preprocessing": dict, "size": (int, list), "weights_digest": str,
    "paths": list,
}  # fmt: skip

#: Rows per partition: small enough that a partition is a few minutes of a 2-core
#: machine's work at full VGG16 (~3 images/s), large enough that a cluster's per-task
#: overhead (~ms) is lost in the noise.
DEFAULT_PARTITION_SIZE = 256


@dataclass(frozen=True)
class Partition:
    """Rows ``[start, stop)`` of an extraction and the images they come from.

    Examples
    --------
    >>> Partition(2, 512, 515, ("a.jpg", "b.jpg", "c.jpg")).name
    'part-00002'
    """

    index: int
    start: int
    stop: int
    paths: tuple[str, ...]

    @property
    def name(self) -> str:
        """File stem of the partition's manifest (see the class example)."""
        return f"part-{self.index:05d}"


def weights_digest(model: VGG, layer: str | None = None) -> str:
    """Return a sha256 over `model`'s tensors (names, dtypes, shapes, bytes) and its layers.

    Every tensor each layer holds counts: kernels and biases, and a batch norm's gamma,
    beta and running statistics. So does the layer table (kinds, units, activations,
    epsilons) and the data format, with which the same tensors give other numbers: up to
    `layer` (a store's rows do not depend on what comes after it), else all of it.

    Examples
    --------
    >>> from vgg_np import VGG11
    >>> a, b = VGG11(include_top=False, seed=0), VGG11(include_top=False, seed=1)
    >>> weights_digest(a) == weights_digest(a), weights_digest(a) == weights_digest(b)
    (True, False)
    """
    digest = hashlib.sha256()
    names = [each.name for each in model.layers]
    stop = names.index(layer) + 1 if layer in names else len(names)
    table = [dataclasses.astuple(each) for each in model.layers[:stop]]
    digest.update(repr((model.data_format, table)).encode())
    for name, tensors in model.weights.items():
        for array in tensors:
            digest.update(f"{name} {array.dtype.str} {array.shape};".encode())
            digest.update(np.ascontiguousarray(array).data)
    return digest.hexdigest()


def _output_shape(model: VGG, layer: str, size: int | tuple[int, int]) -> tuple[int, ...]:
    """Per-image output shape of `layer` for a `size` input, in the model's layout."""
    h, w = (size, size) if isinstance(size, int) else size  # streams.input_size
    return model.network.output_shape(layer, (h, w, 3))  # the one shape walk


def _classifier(model: VGG) -> str | None:
    """Return the layer whose output ranks classes (``predictions``, a head's last), or None."""
    return None if model.output_kind == "features" else model.layers[-1].name


def _manifest_dir(out: str) -> str:
    return out + ".manifest"  # the whole name: f.npy and f.zarr never share a manifest


def _read_plan(out: str) -> dict:
    """Read the plan of the store at `out`: one line naming the file if it is not one."""
    path = os.path.join(_manifest_dir(out), "plan.json")
    text = read_text(path, MAX_PLAN_BYTES, "extraction plan")
    try:
        plan = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(
            f"{path} is damaged ({'empty' if not text.strip() else error}): delete "
            f"{_manifest_dir(out)} and {out} to start over"
        ) from None
    if not isinstance(plan, dict):  # a JSON array or number: no key to look up
        raise ValueError(
            f"{path} is damaged (not a JSON object): delete {_manifest_dir(out)} and {out} to "
            "start over"
        )
    if plan.get("version") not in (None, PLAN_VERSION):
        raise ValueError(
            f"{path} was written by another version of vgg_np ({plan['version']!r}, this one "
            f"reads {PLAN_VERSION!r}): delete {_manifest_dir(out)} and {out} to start over"
        )
    wrong = [k for k, kind in PLAN_KEYS.items() if not isinstance(plan.get(k), kind)]
    if not wrong and not all(isinstance(p, str) for p in plan["paths"]):
        wrong = ["paths"]
    if wrong:
        raise ValueError(
            f"{path} is damaged (bad {', '.join(wrong)}): delete {_manifest_dir(out)} and "
            f"{out} to start over"
        )
    return plan


def _plan(
    images: Iterable[str | os.PathLike],
    model: VGG,
    layer: str | None,
    top: int,
    partition_size: int,
    preprocess: str | None,
    resize: str | None,
) -> dict:
    paths = sorted({os.path.abspath(p) for p in image_paths(images)})
    if not paths:
        raise ValueError(f"no images found in {' '.join(os.fspath(p) for p in images)}")
    if not isinstance(partition_size, int) or partition_size < 1:
        raise ValueError(f"`partition_size` must be a positive int, got {partition_size!r}")
    if not isinstance(top, int) or top < 0:
        raise ValueError(f"`top` must be an int >= 0, got {top!r}")
    layer = layer or model.layers[-1].name
    size = input_size(model)
    return {
        "version": PLAN_VERSION,
        "layer": layer,
        "row_shape": list(_output_shape(model, layer, size)),
        "dtype": model.dtype.name,
        "top": top,
        "partition_size": partition_size,
        "preprocessing": asdict(
            choose_preprocessing(model.weights_provenance, preprocess=preprocess, resize=resize)
        ),
        "size": size if isinstance(size, int) else list(size),  # as JSON reads it back
        "model": repr(model),
        "weights_format": model.weights_format,
        "weights_digest": weights_digest(model, None if top else layer),
        "paths": paths,
    }


def _differences(old: dict, new: dict) -> list[str]:
    differences = []
    for key in ("layer", "top", "partition_size", "size", "dtype"):
        if old[key] != new[key]:
            differences.append(f"{key} {old[key]!r} (now {new[key]!r})")
    for key in ("mode", "resize"):  # not the reason: the same choice may be put otherwise
        if old["preprocessing"][key] != new["preprocessing"][key]:
            was, now = old["preprocessing"][key], new["preprocessing"][key]
            differences.append(f"preprocessing {key} {was!r} (now {now!r})")
    if old["weights_digest"] != new["weights_digest"]:
        differences.append("other weights or layers")
    added = len(set(new["paths"]) - set(old["paths"]))
    removed = len(set(old["paths"]) - set(new["paths"]))
    if added or removed:
        differences.append(f"other images ({added} added, {removed} removed)")
    return differences
