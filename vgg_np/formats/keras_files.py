"""Readers of the weight files Keras users have, all through HDF5 attributes.

Layouts (each written by Keras, or by h5py and loaded back by Keras, in the tests' reference
maker, tests/reference/make_keras_reference.py):

- Keras Applications files (``vgg16_weights_tf_dim_ordering_tf_kernels.h5``): root
  attribute ``layer_names``; each layer group has ``weight_names`` such as
  ``block1_conv1_W_1:0`` naming datasets in that group.
- tf_keras / Keras 2 ``save_weights("x.h5")``: the same, with ``weight_names`` like
  ``block1_conv1/kernel:0`` (a nested path), plus ``backend`` and ``keras_version``.
- Keras 3 (and tf_keras) ``model.save("x.h5")``: the same tree under ``model_weights``.
- Keras 3 ``save_weights("x.weights.h5")``: ``layers/<class name>[_k]/vars/{0,1}``, the
  real layer name in the ``name`` attribute of ``vars``.
- Keras 3 ``.keras``: a zip holding ``model.weights.h5`` in the previous layout.

Large attributes may be split by Keras into ``layer_names0``, ``layer_names1``, ...;
values may be ``bytes`` or ``str``; an empty float array means "no weights".

A file vgg_np wrote carries its provenance in root attributes ``vgg_np.family``, ...;
any other Keras file is taken as Keras-trained (caffe preprocessing, Keras's resize).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping

import h5py
import numpy as np

from vgg_np._files import atomic_path
from vgg_np.formats import _hdf5, keras_config
from vgg_np.formats._common import (
    CHUNK,
    FileFormatError,
    LazyArray,
    check_unique,
    check_zip,
    open_regular,
    split_kernel_bias,
)
from vgg_np.formats.architecture_record import RECORD_KEY, from_record
from vgg_np.formats.contract import RECORD_PREFIX, Family, Provenance, WeightSource

KERAS_ZIP_MEMBER = "model.weights.h5"
KERAS_CONFIG_MEMBER = "config.json"
KERAS_METADATA_MEMBER = "metadata.json"
#: Largest model config read (VGG16 with a head: ~30 KB).
MAX_CONFIG = 16 << 20
#: Deepest nesting of models inside models read from a ``.weights.h5`` (a hard-link
#: cycle would otherwise recurse forever).
MAX_NESTING = 8


def _legacy_layers(
    root: h5py.Group, names: list[str], where: str
) -> dict[str, tuple[LazyArray, LazyArray]]:
    """Layers of the ``layer_names`` / ``weight_names`` layouts (all but .weights.h5)."""
    pairs = []
    for layer in names:
        if not isinstance(root.get(layer), h5py.Group):
            raise FileFormatError(f"{where}: layer {layer!r} is listed but has no group")
        group = root[layer]
        weight_names = _hdf5.strings(group.attrs, "weight_names") or []
        if not weight_names:
            continue
        missing = [w for w in weight_names if not isinstance(group.get(w), h5py.Dataset)]
        if missing:
            raise FileFormatError(f"{where}: layer {layer!r} lists weights it lacks: {missing}")
        arrays = [_hdf5.dataset(group[w], where) for w in weight_names]
        pairs.append((layer, split_kernel_bias(layer, arrays, where)))
    return check_unique(pairs, where)


def _natural_key(key: str) -> tuple[str, int]:
    """Sort ``conv2d``, ``conv2d_1``, ..., ``conv2d_10`` by their counter (Keras's order)."""
    stem, _, counter = key.rpartition("_")
    return (stem, int(counter)) if stem and counter.isdigit() else (key, -1)


def _variables(
    group: h5py.Group, key: str, where: str
) -> tuple[str, tuple[LazyArray, LazyArray]] | None:
    """Return (layer name, (kernel, bias)) of one layer group, None if it has no variables."""
    variables = group.get("vars")
    if not isinstance(variables, h5py.Group) or not len(variables):
        return None
    name = variables.attrs.get("name", key)
    name = name.decode("utf8") if isinstance(name, bytes) else str(name)
    if not all(k.isdigit() for k in variables):
        raise FileFormatError(f"{where}: the variables of layer {name!r} are not numbered")
    # Variables are numbered 0, 1, ... in creation order: HDF5 lists "10" before "2".
    arrays = [variables[k] for k in sorted(variables, key=int)]
    if not all(isinstance(a, h5py.Dataset) for a in arrays):
        raise FileFormatError(f"{where}: the variables of layer {name!r} are not all datasets")
    return name, split_kernel_bias(name, [_hdf5.dataset(a, where) for a in arrays], where)


def _keras3_layers(
    layers: h5py.Group, where: str, depth: int = 0
) -> list[tuple[str, tuple[LazyArray, LazyArray]]]:
    """Layers of a Keras 3 ``.weights.h5``: map each ``vars`` group by its name attribute."""
    if depth > MAX_NESTING:
        raise FileFormatError(f"{where}: models nested more than {MAX_NESTING} deep")
    pairs = []
    for key in sorted(layers, key=_natural_key):
        group = layers[key]
        if not isinstance(group, h5py.Group):
            raise FileFormatError(f"{where}: layer {key!r} is not a group")
        if isinstance(group.get("layers"), h5py.Group):  # a nested model: its layers inside
            pairs += _keras3_layers(group["layers"], where, depth + 1)
        if (pair := _variables(group, key, where)) is not None:
            pairs.append(pair)
    return pairs


def _layout(f: h5py.File, where: str) -> tuple[str, dict[str, tuple[LazyArray, LazyArray]]]:
    """Return (layout description, canonical lazy tensors) of a Keras HDF5 file."""
    weights = f.get("model_weights")
    if isinstance(weights, h5py.Group) and (
        (names := _hdf5.strings(weights.attrs, "layer_names")) is not None
    ):
        return "keras-h5 (model.save layout, model_weights/)", _legacy_layers(weights, names, where)
    if (names := _hdf5.strings(f.attrs, "layer_names")) is not None:
        kind = "save_weights layout" if "keras_version" in f.attrs else "Keras Applications layout"
        return f"keras-h5 ({kind})", _legacy_layers(f, names, where)
    if isinstance(f.get("layers"), h5py.Group):
        pairs = _keras3_layers(f["layers"], where)
        return "keras-weights-h5 (Keras 3 .weights.h5)", check_unique(pairs, where)
    raise FileFormatError(
        f"{where} is an HDF5 file but not a Keras weights file: no `layer_names` attribute, "
        "no `model_weights` or `layers` group"
    )


def _from_config(
    text: object,
    arrays: Callable[[keras_config.KerasModel], Mapping[str, Mapping[str, LazyArray]]],
    where: str,
) -> tuple[dict[str, tuple[LazyArray, ...]], dict[str, object]]:
    """Tensors and architecture of a whole saved model, from its own config (JSON)."""
    if isinstance(text, bytes):
        text = text.decode("utf8", "replace")
    try:
        if not isinstance(text, str):
            raise TypeError(f"a {type(text).__name__}, not text")
        config = json.loads(text)
    except (TypeError, ValueError) as error:
        raise FileFormatError(f"{where}: its model config is not JSON: {error}") from None
    model = keras_config.read_config(config, where)
    tensors = keras_config.tensors_of(model, arrays(model), where)
    info: dict[str, object] = {
        "input_shape": model.input_shape,
        "input_layout": "NHWC",
        "classifier_activation": model.classifier_activation,
    }
    if model.batch_norm is not None:
        info["batch_norm_eps"] = model.batch_norm
    return tensors, info | ({"head": model.head} if model.head else {})


def _static_size(info: dict) -> tuple[int, int] | None:
    h, w, _ = info.get("input_shape", (None, None, None))
    return (h, w) if h and w else None


def read_keras_h5(f: h5py.File, where: str) -> WeightSource:
    """Read an open (and checked, see `_hdf5.open_hdf5`) Keras HDF5 file.

    A whole model saved by ``model.save("x.h5")`` is read through its own config
    (`vgg_np.formats.keras_config`): its head comes with it.
    """
    if "model_config" in f.attrs and isinstance(f.get("model_weights"), h5py.Group):
        description = "keras-h5 (model.save layout, whole model from its config)"
        tensors, info = _from_config(
            f.attrs["model_config"],
            lambda _: keras_config.arrays_from_model_weights(f["model_weights"], where),
            where,
        )
        info |= _labels(_hdf5.text_attrs(f.attrs, RECORD_KEY), where)
        provenance = Provenance.from_record(
            _hdf5.text_attrs(f.attrs, RECORD_PREFIX), description, where
        ) or Provenance.implied(
            description,
            Family.KERAS,
            "implied by the Keras HDF5 layout (no provenance recorded)",
            input_size=_static_size(info),
        )
        return WeightSource(tensors, provenance, info, path=where)
    description, pairs = _layout(f, where)
    record = _hdf5.text_attrs(f.attrs, RECORD_PREFIX)
    provenance = Provenance.from_record(record, description, where) or Provenance.implied(
        description, Family.KERAS, "implied by the Keras HDF5 layout (no provenance recorded)"
    )
    return WeightSource(pairs, provenance, path=where)


@contextlib.contextmanager
def open_keras_zip(path: str | os.PathLike, where: str) -> Iterator[WeightSource]:
    """Open a Keras 3 ``.keras`` zip through the ``model.weights.h5`` it holds.

    Every member's declared size is checked against its stored size before the weights
    member is extracted; zipfile checks its CRC-32 as it is extracted.
    """
    with (
        open_regular(path) as fp,  # checked on the open descriptor: no FIFO swapped in
        zipfile.ZipFile(fp) as zf,
        tempfile.TemporaryDirectory() as tmp,
    ):
        check_zip(zf, where)
        # h5py needs random access: extract the member rather than seek in the zip stream.
        extracted = os.path.join(tmp, KERAS_ZIP_MEMBER)
        try:
            with zf.open(KERAS_ZIP_MEMBER) as member, open(extracted, "wb") as out:
                shutil.copyfileobj(member, out, length=CHUNK)
        except (zipfile.BadZipFile, EOFError, OSError) as error:
            raise FileFormatError(f"{where}: damaged .keras archive: {error}") from None
        config = _member(zf, KERAS_CONFIG_MEMBER, where)
        with _hdf5.open_hdf5(extracted, where) as f:
            info: dict[str, object]
            if config is None or not isinstance(f.get("layers"), h5py.Group):
                source = read_keras_h5(f, where)
                tensors, info = source.tensors, {}
                description = f"keras-zip (.keras, {source.format})"
            else:
                tensors, info = _from_config(
                    config,
                    lambda model: keras_config.arrays_from_keras3(f["layers"], model, where),
                    where,
                )
                description = "keras-zip (.keras, whole model from its config)"
            metadata = _metadata(zf, where)
            info |= _labels(metadata, where)
            provenance = Provenance.from_record(metadata, description, where) or Provenance.implied(
                description,
                Family.KERAS,
                "written by Keras (a .keras archive)",
                input_size=_static_size(info),
            )
            yield WeightSource(tensors, provenance, info, path=where)


def _labels(record: dict, where: str) -> dict:
    """Read the class names vgg_np recorded beside a whole model (`keras_writer`), if any."""
    if RECORD_KEY not in record:
        return {}
    labels = from_record(record[RECORD_KEY], where).get("labels")
    return {"labels": labels} if labels else {}


def _metadata(zf: zipfile.ZipFile, where: str) -> dict:
    """Read the archive's ``metadata.json`` (vgg_np records provenance there), {} if absent."""
    text = _member(zf, KERAS_METADATA_MEMBER, where)
    if text is None:
        return {}
    try:
        metadata = json.loads(text)
    except ValueError as error:
        raise FileFormatError(
            f"{where}: its {KERAS_METADATA_MEMBER} is not JSON: {error}"
        ) from None
    if not isinstance(metadata, dict):
        raise FileFormatError(f"{where}: its {KERAS_METADATA_MEMBER} is not a JSON object")
    return metadata


def _member(zf: zipfile.ZipFile, name: str, where: str) -> bytes | None:
    """Return a small zip member's bytes (None if absent), its size checked first."""
    if name not in zf.namelist():
        return None
    if zf.getinfo(name).file_size > MAX_CONFIG:
        raise FileFormatError(f"{where}: its {name} is larger than {MAX_CONFIG:,} bytes")
    try:
        return zf.read(name)
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise FileFormatError(f"{where}: damaged .keras archive: {error}") from None


def write_keras_h5(
    path: str | os.PathLike,
    weights: Mapping[str, tuple],
    *,
    layer_names: list[str] | None = None,
    naming: str = "applications",
    provenance: Provenance | None = None,
) -> None:
    """Write weights in the Keras Applications layout, or tf_keras's ``save_weights`` one.

    Parameters
    ----------
    path : str or os.PathLike
    weights : dict
        Keras layer name -> (kernel, bias).
    layer_names : list of str, optional
        Every layer of the model in order, parameterless ones included (they get an empty
        ``weight_names``, as Keras writes them); defaults to the keys of `weights`.
    naming : {"applications", "tf_keras"}
        ``block1_conv1_W_1:0`` dataset names in the layer group, or ``kernel:0`` names
        nested as ``block1_conv1/block1_conv1/kernel:0`` with ``backend`` and
        ``keras_version`` attributes.
    provenance : Provenance, optional
        Recorded in root attributes (see `Provenance.record`); None writes none, as Keras.
    """
    if naming not in ("applications", "tf_keras"):
        raise ValueError(f"`naming` must be 'applications' or 'tf_keras', got {naming!r}")
    layer_names = list(weights) if layer_names is None else layer_names
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["layer_names"] = np.array([n.encode() for n in layer_names])
        if naming == "tf_keras":
            f.attrs["backend"] = b"tensorflow"
            f.attrs["keras_version"] = b"2.15.0"
        for key, value in (provenance.record() if provenance else {}).items():
            f.attrs[key] = value
        for name in layer_names:
            group = f.create_group(name)
            if name not in weights:
                group.attrs["weight_names"] = np.array([])  # "no weights", as Keras writes
                continue
            if naming == "tf_keras":
                keys = [f"{name}/kernel:0", f"{name}/bias:0"]
            else:
                keys = [f"{name}_W_1:0", f"{name}_b_1:0"]
            group.attrs["weight_names"] = np.array([k.encode() for k in keys])
            for key, array in zip(keys, weights[name], strict=True):
                group.create_dataset(key, data=np.asarray(array))
