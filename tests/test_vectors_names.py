"""`vgg_np.vectors` became a package (cases, files, run): every name it had as one module
still answers at `vgg_np.vectors.NAME`, and is the object its new home defines."""

from __future__ import annotations

import importlib

import pytest

import vgg_np.vectors

# Every public name `vgg_np/vectors.py` defined before the split, with its new home.
NAMES = {
    "Case": "cases",
    "CaseResult": "run",
    "DOT_TOL": "cases",
    "DROPOUT_RTOL": "cases",
    "ENCODINGS": "files",
    "KERNEL_OF_OP": "run",
    "NARROW_VGG16": "cases",
    "SOFTMAX_TOL": "cases",
    "VectorsReport": "run",
    "evaluate": "cases",
    "kernel_cases": "cases",
    "layer_cases": "cases",
    "load_case": "files",
    "run_vectors": "run",
    "write_vectors": "files",
}

# `__all__` before the split (`layer_cases` was public but not in it).
ALL = [
    "ENCODINGS", "KERNEL_OF_OP", "NARROW_VGG16", "Case", "CaseResult", "VectorsReport",
    "evaluate", "kernel_cases", "load_case", "run_vectors", "write_vectors",
]  # fmt: skip


@pytest.mark.parametrize("name", sorted(NAMES))
def test_every_old_name_answers_and_is_its_new_home_s_object(name):
    module = importlib.import_module(f"vgg_np.vectors.{NAMES[name]}")
    assert getattr(vgg_np.vectors, name) is getattr(module, name)


def test_the_star_import_gives_the_old_names():
    assert sorted(vgg_np.vectors.__all__) == sorted(ALL)
    namespace: dict = {}
    exec("from vgg_np.vectors import *", namespace)
    assert sorted(n for n in namespace if not n.startswith("__")) == sorted(ALL)


def test_no_submodule_is_named_like_a_public_name():
    # `import vgg_np.vectors.run` sets the attribute `run` on the package: a public name
    # spelled like a submodule would be replaced by the module once it is imported.
    import pkgutil

    submodules = {m.name for m in pkgutil.iter_modules(vgg_np.vectors.__path__)}
    assert submodules == {"cases", "files", "run"}
    assert not submodules & set(NAMES)
