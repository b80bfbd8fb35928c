"""The package's shape: the kernels import with NumPy alone, every module imports only
modules above it in README's module table (the map of the code), and the type checker's
configuration catches a wrong argument type."""

from __future__ import annotations

import ast
import importlib.util
import os
import pathlib
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "vgg_np"

# The packages the model and formats use that the kernels must not need.
HEAVY = ("h5py", "PIL", "threadpoolctl", "scipy")

# Runs in a fresh interpreter: imports of HEAVY fail, as on a machine without them.
BLOCKED_IMPORT = f"""
import sys

class Block:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {HEAVY!r}:
            raise ImportError(f"{{name}} is blocked by the test")

sys.meta_path.insert(0, Block())
try:
    import h5py
except ImportError:
    pass
else:
    sys.exit("the blocker did not block h5py")

import numpy as np
import vgg_np.backward, vgg_np.layers, vgg_np.ops
from vgg_np.layers import Layer, forward

x = np.ones((1, 4, 4, 1))
table = [Layer("c", "conv", 1, "relu"), Layer("p", "pool")]
y = forward(table, {{"c": (np.ones((3, 3, 1, 1)), np.zeros(1))}}, x)
assert y.shape == (1, 2, 2, 1) and y.max() == 9.0, y
print(sorted(m for m in sys.modules if m.partition(".")[0] in {HEAVY!r}))
"""


def test_kernels_and_reference_forward_import_with_numpy_alone():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", BLOCKED_IMPORT], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def module_order() -> list[str]:
    """The modules of README's 'Layout of the code' table, top to bottom, then __main__."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Layout of the code", 1)[1].split("\n\n", 2)[1]
    return [*re.findall(r"^\| `vgg_np/(\w+)(?:\.py|/)` \|", table, re.M), "__main__"]


def unit(path: pathlib.Path) -> str:
    """A module's place in the map: formats' submodules all sit at `formats`."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def imported_units(path: pathlib.Path) -> set[str]:
    """The vgg_np modules `path` imports, anywhere in it (function bodies included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "vgg_np":  # `from vgg_np import ops, __version__`
                names = [f"vgg_np.{alias.name}" for alias in node.names]
            else:  # `from vgg_np.ops import relu`
                names = [node.module]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "vgg_np" and len(parts) > 1 and parts[1] != "__version__":
                found.add(parts[1])
    return found


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_the_map_lists_every_module():
    order = module_order()
    assert order[:3] == ["ops", "backward", "layers"], order
    missing = sorted({unit(p) for p in MODULES} - set(order))
    assert not missing, f"modules missing from README's module table: {missing}"


def test_each_module_imports_only_modules_above_it():
    order = module_order()
    wrong, checked = [], 0
    for path in MODULES:
        here = unit(path)
        for other in imported_units(path):
            checked += 1
            if other != here and (other not in order or order.index(other) > order.index(here)):
                wrong.append(f"{path.relative_to(ROOT)} imports vgg_np.{other}")
    assert not wrong, "imports against README's module order:\n" + "\n".join(wrong)
    assert checked > 20  # the imports were read: model alone imports five modules


def test_the_checker_sees_an_import_against_the_order(tmp_path):
    module = tmp_path / "ops.py"
    module.write_text("def f():\n    from vgg_np.model import VGG\n    from vgg_np import train\n")
    assert imported_units(module) == {"model", "train"}


def type_checking_names() -> dict[str, str]:
    """Name -> module of the imports under `if TYPE_CHECKING:` in vgg_np/__init__.py."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name)
        if node.test.id == "TYPE_CHECKING"
    )
    return {
        alias.name: node.module
        for node in block.body
        if isinstance(node, ast.ImportFrom) and node.module
        for alias in node.names
    }


def test_type_checkers_see_every_lazy_export_where_it_is_defined():
    # Type checkers read the TYPE_CHECKING imports, Python runs __getattr__ over _EXPORTS:
    # the two must name the same things in the same modules.
    import vgg_np

    assert type_checking_names() == vgg_np._EXPORTS
    assert len(vgg_np._EXPORTS) > 20


# A user's script: each line marked WRONG passes an argument of a wrong type to a public
# function (a model's builder, a kernel, a lazy export of `vgg_np`, a method); the others
# are right and must pass, so the check cannot succeed by reporting every line.
PROBE = """
import numpy as np

import vgg_np
from vgg_np import ops
from vgg_np.model import VGG, VGG16

x = np.zeros((1, 32, 32, 3), np.float32)
model = VGG16(include_top=False, classes=10, seed=0)
pooled = ops.max_pool2d(x, 2, padding="valid")
ready = vgg_np.preprocess_input(x, mode="torch")
VGG16(classes="ten")  # WRONG
VGG(input_shape=(32, 32, 3), threads="2")  # WRONG
ops.max_pool2d(x, pool_size="2")  # WRONG
vgg_np.preprocess_input(x, mode=3)  # WRONG
model.features(x, layer=5)  # WRONG
"""


@pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None, reason="mypy (in the `dev` extra) is not installed"
)
def test_the_type_checker_catches_a_wrong_argument_type(tmp_path):
    # The project's own [tool.mypy] configuration, over vgg_np's source as a user's script
    # imports it; a cache of its own so that no earlier run's state is trusted.
    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")]
    command += ["--cache-dir", str(tmp_path / "cache"), str(probe)]
    env = {**os.environ, "MYPYPATH": str(ROOT)}
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp_path)
    wrong = {n for n, line in enumerate(PROBE.splitlines(), 1) if line.endswith("# WRONG")}
    errors = re.findall(r"^(?:.*[/\\])?probe\.py:(\d+): error: (.*)$", done.stdout, re.MULTILINE)
    print(done.stdout)  # the checker's own words, for a failure
    assert done.returncode == 1, done.stdout + done.stderr
    assert {int(line) for line, _ in errors} == wrong
    assert all(message.endswith("[arg-type]") for _, message in errors)
