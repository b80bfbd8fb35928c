"""The kernels as packages (`vgg_np/ops/`, `vgg_np/backward/`): every name that worked when
each was one file still works, each kernel lives in its family's module beside its loop
definition, and no module outside `vgg_np/ops/` reaches into its private names."""

from __future__ import annotations

import ast
import importlib
import inspect
import pathlib
import re

import pytest

from tests.conftest import ROOT
from vgg_np import backward, ops

PACKAGE = ROOT / "vgg_np"

# `[n for n in dir(vgg_np.ops) if not n.startswith("_")]` when ops was one file (main at
# bbe1981), and likewise for backward.
OPS_BEFORE = [
    "ArrayLike", "BATCH_NORM_EPS", "IntOrPair", "NDArray", "Padding", "adaptive_avg_pool2d",
    "annotations", "batch_moments", "batch_norm", "batch_norm_naive", "conv2d", "conv2d_naive",
    "dense", "dense_naive", "dropout", "flatten", "fold_batch_norm", "global_avg_pool2d",
    "global_avg_pool2d_naive", "global_max_pool2d", "global_max_pool2d_naive", "im2col",
    "max_pool2d", "max_pool2d_naive", "np", "numbers", "relu", "resolve_padding", "sigmoid",
    "sigmoid_naive", "softmax", "softmax_naive", "tanh",
]  # fmt: skip
BACKWARD_BEFORE = [
    "ArrayLike", "IntOrPair", "NDArray", "Padding", "annotations", "batch_norm_backward",
    "batch_norm_backward_naive", "col2im", "col2im_naive", "conv2d_backward",
    "conv2d_backward_naive", "dense_backward", "dense_backward_naive", "dropout_backward",
    "flatten_backward", "global_avg_pool2d_backward", "global_max_pool2d_backward",
    "max_pool2d_backward", "max_pool2d_backward_naive", "np", "ops", "relu_backward",
    "sigmoid_backward", "softmax_cross_entropy", "tanh_backward",
]  # fmt: skip
# Names the single files held only because they imported them (`import numpy as np`,
# `from __future__ import annotations`, ...): nobody's API, and not in either `__all__`.
INCIDENTAL = {"ArrayLike", "NDArray", "annotations", "np", "numbers", "ops"}
# Public, though not in `__all__`: the type aliases of the signatures.
ALIASES = {"IntOrPair", "Padding"}

# The modules of each package; `_checks` is internal, but `resolve_padding` lives there.
MODULES = {
    ops: ("_checks", "activations", "conv", "frameworks", "linear", "norm", "pool"),
    backward: ("_checks", "activations", "conv", "linear", "norm", "pool"),
}


@pytest.mark.parametrize(
    ("package", "before"), [(ops, OPS_BEFORE), (backward, BACKWARD_BEFORE)], ids=["ops", "backward"]
)
def test_every_public_name_of_the_single_file_still_imports(package, before):
    public = set(before) - INCIDENTAL
    assert set(package.__all__) == public - ALIASES
    missing = sorted(name for name in public if not hasattr(package, name))
    assert not missing, f"{package.__name__} lost {missing}"
    namespace: dict = {}
    exec(f"from {package.__name__} import {', '.join(sorted(public))}", namespace)
    assert all(namespace[name] is getattr(package, name) for name in public)


def test_the_package_root_reexports_the_kernels_it_names():
    import vgg_np

    names = ["conv2d", "conv2d_naive", "dense", "dense_naive", "dropout", "flatten", "im2col",
             "max_pool2d", "max_pool2d_naive", "relu", "softmax", "softmax_naive"]  # fmt: skip
    assert set(names) <= set(vgg_np.__all__)
    assert all(getattr(vgg_np, name) is getattr(ops, name) for name in names)


@pytest.mark.parametrize("package", [ops, backward], ids=["ops", "backward"])
def test_each_public_name_is_defined_once_in_one_module_of_the_package(package):
    homes = {}
    for family in MODULES[package]:
        module = importlib.import_module(f"{package.__name__}.{family}")
        for name in set(module.__all__) & set(package.__all__):
            assert name not in homes, f"{name} in both {homes.get(name)} and {family}"
            homes[name] = family
            assert getattr(package, name) is getattr(module, name)
            if inspect.isfunction(getattr(module, name)):
                assert getattr(module, name).__module__ == module.__name__, name
    assert set(homes) == set(package.__all__)


@pytest.mark.parametrize("package", [ops, backward], ids=["ops", "backward"])
def test_each_loop_definition_sits_above_its_fast_form_in_one_module(package):
    for name in package.__all__:
        if not name.endswith("_naive"):
            continue
        naive, fast = getattr(package, name), getattr(package, name.removesuffix("_naive"))
        assert naive.__module__ == fast.__module__, name
        above = inspect.getsourcelines(naive)[1]
        below = inspect.getsourcelines(fast)[1]
        tree = ast.parse(pathlib.Path(inspect.getsourcefile(naive)).read_text())
        between = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)
                   and above < node.lineno < below]  # fmt: skip
        # conv2d's im2col is the one function between a loop definition and its fast form.
        assert between in ([], ["im2col"]), f"{name}: {between} between it and its fast form"


def test_batch_norm_eps_is_defined_once_as_a_framework_fact():
    from vgg_np.ops import frameworks, norm

    assert ops.BATCH_NORM_EPS is frameworks.BATCH_NORM_EPS
    assert ops.BATCH_NORM_EPS == {"torch": 1e-5, "keras": 1e-3, "onnx": 1e-5}
    defined = [path.relative_to(ROOT).as_posix() for path in PACKAGE.rglob("*.py")
               if re.search(r"^BATCH_NORM_EPS\b.*=", path.read_text(), re.M)]  # fmt: skip
    assert defined == ["vgg_np/ops/frameworks.py"]
    assert "BATCH_NORM_EPS" not in vars(norm)  # norm's docstrings name it; its code never reads it


def test_the_readers_of_files_take_each_frameworks_epsilon_from_the_one_table():
    # A reader that wrote Keras's 1e-3 or ONNX's 1e-5 again could drift from the table.
    epsilons = set(ops.BATCH_NORM_EPS.values())
    readers = sorted((PACKAGE / "formats").rglob("*.py"))
    literal = [f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}" for path in readers
               for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.Constant) and node.value in epsilons
               and type(node.value) is float]  # fmt: skip
    assert not literal, literal
    users = [path.name for path in readers if "BATCH_NORM_EPS[" in path.read_text()]
    assert users == ["keras_config.py", "onnx_heads.py", "torchvision.py"], users


def private_reaches(path: pathlib.Path) -> list[str]:
    """Where `path` uses a private name of `vgg_np.ops` (``ops._x``, ``from vgg_np.ops import _x``)
    or a private module of it other than the documented `vgg_np.ops._checks`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            dunder = node.attr.startswith("__") and node.attr.endswith("__")
            if node.value.id == "ops" and node.attr.startswith("_") and not dunder:
                found.append(f"line {node.lineno}: ops.{node.attr}")
        modules = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module]
            if node.module.startswith("vgg_np.ops"):
                found += [f"line {node.lineno}: from {node.module} import {alias.name}"
                          for alias in node.names if alias.name.startswith("_")]  # fmt: skip
        elif isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        for module in modules:
            parts = module.split(".")
            if parts[:2] == ["vgg_np", "ops"] and len(parts) > 2 and parts[2].startswith("_"):
                if parts[2] != "_checks":
                    found.append(f"line {node.lineno}: imports {module}")
    return found


def test_no_module_outside_ops_reaches_its_private_names():
    paths = [path for folder in ("vgg_np", "tests", "benchmarks", "docs")
             for path in sorted((ROOT / folder).rglob("*.py"))
             if not path.is_relative_to(PACKAGE / "ops") and ".venv" not in path.parts]  # fmt: skip
    assert len(paths) > 100
    wrong = [
        f"{path.relative_to(ROOT)} {where}" for path in paths for where in private_reaches(path)
    ]
    assert not wrong, "\n".join(wrong)


def test_only_backward_uses_the_internal_checks_module():
    users = sorted(path.relative_to(PACKAGE).parts[0] for path in PACKAGE.rglob("*.py")
                   if not path.is_relative_to(PACKAGE / "ops")
                   and "vgg_np.ops._checks" in path.read_text())  # fmt: skip
    assert set(users) == {"backward"}, users


def test_the_private_name_checker_sees_each_way_in(tmp_path):
    module = tmp_path / "user.py"
    module.write_text(
        "from vgg_np import ops\n"
        "from vgg_np.ops import _hidden\n"
        "from vgg_np.ops._checks import float_array\n"
        "import vgg_np.ops._secret\n"
        "ops._float_array(1.0)\n"
        "ops.__all__\n"
    )
    assert private_reaches(module) == [
        "line 2: from vgg_np.ops import _hidden",
        "line 4: imports vgg_np.ops._secret",
        "line 5: ops._float_array",
    ]


@pytest.mark.parametrize("package", [ops, backward], ids=["ops", "backward"])
def test_the_api_page_lists_every_public_name_once(package):
    page = (ROOT / "docs" / "api" / f"{package.__name__.split('.')[1]}.md").read_text()
    assert f"::: {package.__name__}\n" in page
    listed = re.findall(r"^ {8}- (\w+)$", page, re.M)
    assert sorted(listed) == sorted(package.__all__), set(listed) ^ set(package.__all__)
