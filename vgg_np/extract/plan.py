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
from vgg_np.engine import cache
from vgg_np.engine.measure import layer_key
from vgg_np.formats import choose_preprocessing
from vgg_np.layers import shapes
from vgg_np.streams import image_paths, input_size

if TYPE_CHECKING:
    from vgg_np.model import VGG

__all__ = ["DEFAULT_PARTITION_SIZE", "Partition", "convolutions", "weights_digest"]

PLAN_VERSION = "vgg_np extract 2"

#: Largest plan read back (it lists every path: a million of them fit in ~200 MB).
MAX_PLAN_BYTES = 1 << 30

#: The keys of a plan, each with the type its value must have.
PLAN_KEYS: dict[str, type | tuple[type, ...]] = {
    "version": str, "layer": str, "row_shape": list, "dtype": str, "top": int,
    "partition_size": int, "preprocessing": dict, "size": (int, list), "weights_digest": str,
    "paths": list,
}  # fmt: skip

#: In the manifest: the convolutions' choices the rows are computed with, as a plan file
#: (`vgg_np.extract.plan.plan_file`) that ``plan=`` takes to resume with the same ones.
PLANS_FILE = "conv-plans.json"

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


def _engine_input(model: VGG) -> tuple[int, int, int]:
    """Per-image input ``(H, W, C)`` the store's images reach the engine with."""
    size = input_size(model)
    h, w = (size, size) if isinstance(size, int) else size
    return h, w, model.input_shape[-1]


def convolutions(model: VGG) -> dict[str, str]:
    """Return how `model` computes each convolution of a store's rows, beyond its weights.

    ``conv_algorithm`` as asked, then per engine step the fields of its
    `vgg_np.engine.plan.Choice` that may change the numbers (algorithm, tile rows per
    chunk, output channels per block: another of them may change a row's last bits). A
    store records it and refuses a resume or a partition run by a model that computes
    otherwise (another ``conv_algorithm`` or ``plan``, another measurement), so that its
    rows are what one run writes. With ``plan="measure"`` this measures what is not cached.

    Examples
    --------
    >>> from vgg_np import VGG11
    >>> convolutions(VGG11(include_top=False, input_shape=(32, 32, 3), seed=0))["block3_conv1"]
    'winograd-2 rows=4 block=128'
    >>> convolutions(VGG11(include_top=False, seed=0, conv_algorithm="reference"))
    {'conv_algorithm': 'reference'}
    """
    found = {"conv_algorithm": model.conv_algorithm}
    if model.conv_algorithm == "reference":
        return found  # the reference forward: no engine, no choices
    for name, conv in model.engine.plans(_engine_input(model)).items():
        c = conv.choice
        found[name] = "naive" if c is None else (
            f"{c.algorithm} rows={c.rows_per_chunk} block={c.channel_block}")  # fmt: skip
    return found


def plan_file(model: VGG) -> str | None:
    """Return `model`'s convolution choices for a store's images as a plan file's text.

    Given as ``plan=`` to another model (`vgg_np.engine.measure.Planner`), the file pins
    the same choices, on any machine: the way to resume a store with a model that would
    measure otherwise. None for the reference forward and the naive loops.

    Examples
    --------
    >>> from vgg_np import VGG11
    >>> text = plan_file(VGG11(include_top=False, input_shape=(32, 32, 3), seed=0))
    >>> len(json.loads(text)["plans"])
    8
    """
    if model.conv_algorithm in ("reference", "naive"):
        return None
    engine, plans = model.engine, {}
    found = engine.plans(_engine_input(model))
    for layer, shape, _ in shapes(engine.layers, _engine_input(model)):
        if layer.kind == "conv":
            conv, shape = found[layer.name], (*shape, layer.units)  # (H, W, C, O)
            assert conv.choice is not None  # only the naive loops choose nothing
            key = layer_key(engine.conv_algorithm, conv.kernel.dtype, shape, conv.pool)
            plans[key] = conv.choice.to_dict()
    document = {"format": cache.FORMAT, "machine": {"version": cache.VERSION}, "plans": plans}
    return json.dumps(document, indent=1) + "\n"


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
    recorded = plan.get("convolutions", {})
    if not isinstance(recorded, dict) or not all(isinstance(v, str) for v in recorded.values()):
        wrong.append("convolutions")
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
        "convolutions": convolutions(model),
        "paths": paths,
    }


def _convolutions_differ(recorded: dict | None, now: dict) -> str | None:
    """Say how convolutions computed as `now` differ from a store's `recorded`; None if not.

    Stores written before the record (no ``convolutions`` in their plan) are not checked.
    """
    if recorded is None:
        return None
    engine = ("the engine", "the reference forward")
    was, then = (engine[d.get("conv_algorithm") == "reference"] for d in (recorded, now))
    if was != then:
        return f"convolutions run otherwise ({then}, the store's rows by {was})"
    steps = sorted((set(recorded) | set(now)) - {"conv_algorithm"})
    changed = [f"{name} {recorded.get(name, '-')} -> {now.get(name, '-')}"
               for name in steps if recorded.get(name) != now.get(name)]  # fmt: skip
    if not changed:
        return None
    more = f" and {len(changed) - 2} more" if len(changed) > 2 else ""
    return f"convolutions run otherwise ({'; '.join(changed[:2])}{more})"


def _differences(old: dict, new: dict) -> list[str]:
    """Say how the plan `new` differs from a store's `old` plan: every setting, every path."""
    differences = _row_differences(old, new)
    if old["partition_size"] != new["partition_size"]:
        was, now = old["partition_size"], new["partition_size"]
        differences.append(f"partition_size {was!r} (now {now!r})")
    added = len(set(new["paths"]) - set(old["paths"]))
    removed = len(set(old["paths"]) - set(new["paths"]))
    if added or removed:
        differences.append(f"other images ({added} added, {removed} removed)")
    return differences


def _row_differences(old: dict, new: dict) -> list[str]:
    """Say what makes the rows of plan `old` other numbers than plan `new`'s, for one image.

    Layer, classes named, input size, dtype, row shape, preprocessing, weights and
    convolutions: a store that differs in none of them holds, for an image both list,
    the very row `new` would compute (`vgg_np.extract.seeding` copies it).
    """
    differences = []
    for key in ("layer", "top", "size", "dtype"):
        if old[key] != new[key]:
            differences.append(f"{key} {old[key]!r} (now {new[key]!r})")
    for key in ("mode", "resize"):  # not the reason: the same choice may be put otherwise
        if old["preprocessing"][key] != new["preprocessing"][key]:
            was, now = old["preprocessing"][key], new["preprocessing"][key]
            differences.append(f"preprocessing {key} {was!r} (now {now!r})")
    if old["weights_digest"] != new["weights_digest"]:
        differences.append("other weights or layers")
    convolutions_now = _convolutions_differ(old.get("convolutions"), new["convolutions"])
    if convolutions_now:
        differences.append(convolutions_now)
    if not differences and old["row_shape"] != new["row_shape"]:  # a plan written otherwise
        differences.append(f"row_shape {old['row_shape']!r} (now {new['row_shape']!r})")
    return differences


def _pin_hint(manifest_dir: str, problems: list[str], recorded: dict | None) -> str:
    """How to compute with the store's convolutions, if theirs is among the `problems`."""
    if not any(p.startswith("convolutions") for p in problems) or not recorded:
        return ""
    algorithm = recorded.get("conv_algorithm")
    path = os.path.join(manifest_dir, PLANS_FILE)
    if algorithm == "reference" or not os.path.isfile(path):
        return f" (the store's model had conv_algorithm={algorithm!r})"
    return (f" (to resume, give the model conv_algorithm={algorithm!r} and plan={path!r}; "
            f"for vgg-np: --plan {path})")  # fmt: skip
