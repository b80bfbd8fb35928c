"""Modules split into packages by job (`vgg_np.extract`, `vgg_np.vectors`, `vgg_np.adapters`):
every name each had as one module still answers at its old address, and is the object its new
home defines."""

from __future__ import annotations

import importlib
import pickle
import pkgutil
import subprocess
import sys

import pytest

# Every public name each module defined before its split -> the submodule that holds it now.
NAMES = {
    "vgg_np.adapters": {
        "Tap": "taps", "compare_keras": "keras_models", "compare_onnx": "onnx_graphs",
        "compare_torch": "torch_modules", "name_map": "taps", "torch_layer_names": "torch_modules",
    },
    "vgg_np.extract": {
        "CHECK_BYTES": "store", "DEFAULT_PARTITION_SIZE": "plan", "ExtractResult": "run",
        "MAX_MANIFEST_BYTES": "manifest", "MAX_PLAN_BYTES": "plan", "PLAN_KEYS": "plan",
        "PLAN_VERSION": "plan", "Partition": "plan", "PartitionResult": "run",
        "SUFFIXES": "store", "Store": "store", "ZARR_CHUNK_BYTES": "store",
        "create_store": "store", "extract": "run", "interrupted_resumes": "run",
        "open_store": "store", "run_partition": "run", "weights_digest": "plan",
        "top_classes": "vgg_np.preprocess",  # beside decode_predictions now
        "remove_store": "seeding", "seed_store": "seeding",  # added since the split
    },
    "vgg_np.vectors": {
        "Case": "cases", "CaseResult": "run", "DOT_TOL": "cases", "DROPOUT_RTOL": "cases",
        "ENCODINGS": "files", "KERNEL_OF_OP": "run", "NARROW_VGG16": "cases",
        "SOFTMAX_TOL": "cases", "VectorsReport": "run", "evaluate": "cases",
        "kernel_cases": "cases", "layer_cases": "cases", "load_case": "files",
        "run_vectors": "run", "write_vectors": "files",
    },
}  # fmt: skip

# `__all__` before the split (vectors' `layer_cases` was public but not in it).
ALL = {
    "vgg_np.adapters": [
        "Tap", "compare_keras", "compare_onnx", "compare_torch", "name_map", "torch_layer_names",
    ],
    "vgg_np.extract": [
        "ExtractResult", "Partition", "PartitionResult", "Store", "create_store", "extract",
        "interrupted_resumes", "open_store", "run_partition", "top_classes", "weights_digest",
        "remove_store", "seed_store",  # added since (seeding.py): every old name still there
    ],
    "vgg_np.vectors": [
        "ENCODINGS", "KERNEL_OF_OP", "NARROW_VGG16", "Case", "CaseResult", "VectorsReport",
        "evaluate", "kernel_cases", "load_case", "run_vectors", "write_vectors",
    ],
}  # fmt: skip

# Submodules that hold only what their siblings share, no public name.
HELPERS = {"vgg_np.adapters": {"reference"}}

OLD_NAMES = [(package, name) for package, names in NAMES.items() for name in sorted(names)]


@pytest.mark.parametrize(("package", "name"), OLD_NAMES)
def test_every_old_name_answers_and_is_its_new_home_s_object(package, name):
    home = NAMES[package][name]
    module = importlib.import_module(home if "." in home else f"{package}.{home}")
    assert getattr(importlib.import_module(package), name) is getattr(module, name)


@pytest.mark.parametrize("package", sorted(NAMES))
def test_the_star_import_gives_the_old_names(package):
    assert sorted(importlib.import_module(package).__all__) == sorted(ALL[package])
    namespace: dict = {}
    exec(f"from {package} import *", namespace)
    assert sorted(n for n in namespace if not n.startswith("__")) == sorted(ALL[package])


@pytest.mark.parametrize("package", sorted(NAMES))
def test_no_submodule_is_named_like_a_public_name(package):
    # Importing `package.run` sets the attribute `run` on the package: a public name spelled
    # like a submodule would be replaced by the module once it is imported.
    path = importlib.import_module(package).__path__
    submodules = {module.name for module in pkgutil.iter_modules(path)}
    homes = set(NAMES[package].values()) - {"vgg_np.preprocess"}
    assert homes | HELPERS.get(package, set()) == submodules
    assert not submodules & set(NAMES[package])


def test_a_fresh_import_of_every_submodule_leaves_the_function_extract_in_place():
    code = (
        "import vgg_np.extract.plan, vgg_np.extract.manifest, vgg_np.extract.store, "
        "vgg_np.extract.run, vgg_np.extract.seeding, vgg_np.extract as e; "
        "print(callable(e.extract), e.extract.__module__, type(e.run_partition).__name__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.split() == ["True", "vgg_np.extract.run", "function"]


def test_partitions_pickle_by_their_new_address():
    # Dask ships partitions to workers: they must unpickle on a worker with this code.
    from vgg_np.extract import Partition

    partition = Partition(1, 256, 258, ("a.png", "b.png"))
    data = pickle.dumps(partition)
    assert b"vgg_np.extract.plan" in data
    assert pickle.loads(data) == partition
