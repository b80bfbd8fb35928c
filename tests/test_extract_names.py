"""`vgg_np.extract` became a package (plan, manifest, store, run): every name it had as one
module still answers at `vgg_np.extract.NAME`, and is the object its new home defines."""

from __future__ import annotations

import importlib
import pickle
import subprocess
import sys

import pytest

import vgg_np.extract

# Every public name `vgg_np/extract.py` defined before the split, with its new home.
NAMES = {
    "CHECK_BYTES": "store",
    "DEFAULT_PARTITION_SIZE": "plan",
    "ExtractResult": "run",
    "MAX_MANIFEST_BYTES": "manifest",
    "MAX_PLAN_BYTES": "plan",
    "PLAN_KEYS": "plan",
    "PLAN_VERSION": "plan",
    "Partition": "plan",
    "PartitionResult": "run",
    "SUFFIXES": "store",
    "Store": "store",
    "ZARR_CHUNK_BYTES": "store",
    "create_store": "store",
    "extract": "run",
    "interrupted_resumes": "run",
    "open_store": "store",
    "run_partition": "run",
    "top_classes": "vgg_np.preprocess",
    "weights_digest": "plan",
}

# `__all__` before the split: `from vgg_np.extract import *` gives the same names.
ALL = [
    "ExtractResult", "Partition", "PartitionResult", "Store", "create_store", "extract",
    "interrupted_resumes", "open_store", "run_partition", "top_classes", "weights_digest",
]  # fmt: skip


@pytest.mark.parametrize("name", sorted(NAMES))
def test_every_old_name_answers_and_is_its_new_home_s_object(name):
    home = NAMES[name]
    module = importlib.import_module(home if "." in home else f"vgg_np.extract.{home}")
    assert getattr(vgg_np.extract, name) is getattr(module, name)


def test_the_star_import_gives_the_old_names():
    assert sorted(vgg_np.extract.__all__) == sorted(ALL)
    namespace: dict = {}
    exec("from vgg_np.extract import *", namespace)
    assert sorted(n for n in namespace if not n.startswith("__")) == sorted(ALL)


def test_a_fresh_import_of_every_submodule_leaves_the_function_extract_in_place():
    # A submodule named like a public name would replace it on the package once imported.
    code = (
        "import vgg_np.extract.plan, vgg_np.extract.manifest, vgg_np.extract.store, "
        "vgg_np.extract.run, vgg_np.extract as e; "
        "print(callable(e.extract), e.extract.__module__, type(e.run_partition).__name__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.split() == ["True", "vgg_np.extract.run", "function"]


def test_partitions_pickle_by_their_new_address():
    # Dask ships partitions to workers: they must unpickle on a worker with this code.
    partition = vgg_np.extract.Partition(1, 256, 258, ("a.png", "b.png"))
    data = pickle.dumps(partition)
    assert b"vgg_np.extract.plan" in data
    assert pickle.loads(data) == partition
