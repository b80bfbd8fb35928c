"""The ``vgg_np.cli`` package's own rules: a command reads its parsed arguments and never
changes them (``predict -o`` passes extract's options explicitly), checked in the source
(every module) and at run time (every command, on a namespace that refuses changes); and it
configures a model through its constructor or `VGG.from_file`, never by setting an
attribute behind its back."""

from __future__ import annotations

import argparse
import ast
import hashlib
import pathlib

import numpy as np
import pytest
from PIL import Image

from tests.conftest import DATA, ROOT, TINY_CONFIG
from vgg_np import VGG, cli, hub
from vgg_np.preprocess import load_image, preprocess_input
from vgg_np.visualize import feature_map_grid

CLI = ROOT / "vgg_np" / "cli"
WEIGHTS = str(DATA / "tiny_vgg16" / "model.h5")  # a 10-class reduced VGG16 on 32x32 inputs


# -- in the source: no assignment to an attribute of a parsed namespace ------------------


def _namespaces(function: ast.FunctionDef) -> set[str]:
    """The parameters of `function` that hold parsed arguments: named args or so annotated."""
    every = [*function.args.posonlyargs, *function.args.args, *function.args.kwonlyargs]
    return {
        a.arg
        for a in every
        if a.arg == "args"
        or (a.annotation is not None and "Namespace" in ast.unparse(a.annotation))
    }


def _targets(node: ast.AST) -> list[ast.expr]:
    """What `node` binds or deletes: assignment, augmented assignment, for, with, del."""
    if isinstance(node, ast.Assign):
        found = list(node.targets)
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign, ast.For, ast.comprehension)):
        found = [node.target]
    elif isinstance(node, ast.With):
        found = [item.optional_vars for item in node.items if item.optional_vars]
    elif isinstance(node, ast.Delete):
        found = list(node.targets)
    else:
        return []
    flat = []
    while found:  # `a.x, (b.y, *c.z) = ...`
        target = found.pop()
        if isinstance(target, (ast.Tuple, ast.List)):
            found.extend(target.elts)
        elif isinstance(target, ast.Starred):
            found.append(target.value)
        else:
            flat.append(target)
    return flat


def _changes(node: ast.AST, names: set[str]) -> list[str]:
    """The changes `node` makes to attributes of `names`, as source text."""
    found = []
    for target in _targets(node):
        base = target.value if isinstance(target, (ast.Attribute, ast.Subscript)) else None
        if isinstance(target, ast.Subscript) and isinstance(base, ast.Call):  # vars(args)[k] = v
            base = base.args[0] if base.args and ast.unparse(base.func) == "vars" else None
        if isinstance(base, ast.Name) and base.id in names:
            found.append(ast.unparse(target))
    if isinstance(node, ast.Call):  # setattr(args, ...), vars(args).update(...)
        function, first = ast.unparse(node.func), node.args[0] if node.args else None
        changer = function in ("setattr", "delattr") and isinstance(first, ast.Name)
        if (changer and first.id in names) or any(
            function == f"vars({n}).{verb}" for n in names for verb in ("update", "pop")
        ):
            found.append(ast.unparse(node))
    if isinstance(node, ast.Attribute) and node.attr == "__dict__":
        if isinstance(node.value, ast.Name) and node.value.id in names:
            found.append(ast.unparse(node))
    return found


def namespace_changes(source: str, where: str = "<source>") -> tuple[list[str], int]:
    """Every change to a parsed namespace in `source`, and how many namespaces were read."""
    found, namespaces = [], 0
    for function in ast.walk(ast.parse(source, where)):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        names = _namespaces(function)
        namespaces += len(names)
        for node in ast.walk(function) if names else ():
            found += [f"{where}:{node.lineno}: {change}" for change in _changes(node, names)]
    return found, namespaces


def test_no_command_changes_its_parsed_arguments():
    modules = sorted(CLI.glob("*.py"))
    assert {p.name for p in modules} >= {"__init__.py", "_args.py", "predict.py", "train.py"}
    found, namespaces = [], 0
    for path in modules:
        changes, count = namespace_changes(path.read_text(), str(path.relative_to(ROOT)))
        found += changes
        namespaces += count
    assert not found, "commands that change their parsed arguments:\n" + "\n".join(found)
    assert namespaces >= 20  # the checker read the handlers: every run_* and check takes args


def test_the_checker_sees_every_way_of_changing_a_namespace():
    source = """
def run(args):
    args.layer, args.size = "fc2", 1
    args.top += 1
    for args.x in range(3):
        pass
    del args.top
    setattr(args, "y", 1)
    vars(args)["z"] = 2
    vars(args).update(w=3)
    args.__dict__["v"] = 4

def check(parsed: argparse.Namespace):
    parsed.weights = "x"

def fine(args, model):
    model.layer = args.layer  # not a namespace
    copy = argparse.Namespace(**{**vars(args), "weights": "w"})
    return copy.weights
"""
    found, namespaces = namespace_changes(source)
    changed = sorted(line.split(": ", 1)[1] for line in found)
    assert changed == sorted(
        [
            "args.size",
            "args.layer",
            "args.top",
            "args.x",
            "args.top",
            "setattr(args, 'y', 1)",
            "vars(args)['z']",
            "vars(args).update(w=3)",
            "args.__dict__",
            "parsed.weights",
        ]
    ), changed
    assert namespaces == 3


def attribute_assignments(source: str, where: str = "<source>") -> list[str]:
    """Every assignment to an attribute of any object in `source` (``x.a = ...``, setattr)."""
    found = []
    for node in ast.walk(ast.parse(source, where)):
        targets = [t for t in _targets(node) if isinstance(t, ast.Attribute)]
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("setattr", "delattr"):
            targets.append(node)
        found += [f"{where}:{node.lineno}: {ast.unparse(t)}" for t in targets]
    return found


def test_the_cli_sets_no_attribute_of_any_object():
    """A model is configured by its arguments (``VGG.from_file(..., conv_algorithm=...)``)."""
    found = []
    for path in sorted(CLI.glob("*.py")):
        found += attribute_assignments(path.read_text(), str(path.relative_to(ROOT)))
    assert not found, "attributes set by the CLI:\n" + "\n".join(found)


def test_the_attribute_checker_sees_a_model_changed_behind_its_back():
    source = """
def run_show(args):
    model = VGG.from_file(args.weights)
    if model.batch_norm:
        model.conv_algorithm = "reference"
    setattr(model, "threads", 1)
    model.weights["x"] = 1  # the model's own mapping: a subscript, not an attribute
"""
    found = [line.split(": ", 1)[1] for line in attribute_assignments(source)]
    assert sorted(found) == ["model.conv_algorithm", "setattr(model, 'threads', 1)"], found


# -- at run time: every command on a namespace that refuses changes ----------------------


class NamespaceChanged(AssertionError):
    """A command changed its parsed arguments (no handler of the CLI catches this)."""


class FrozenNamespace(argparse.Namespace):
    """The parsed arguments as a command receives them, refusing every change."""

    def __setattr__(self, name, value):
        raise NamespaceChanged(f"a command set args.{name} = {value!r}")

    def __delattr__(self, name):
        raise NamespaceChanged(f"a command deleted args.{name}")


@pytest.fixture
def frozen(monkeypatch) -> list[FrozenNamespace]:
    """Make `cli.main` hand every command a frozen namespace; return those it made."""
    made, build = [], cli.build_parser

    def build_frozen() -> argparse.ArgumentParser:
        parser = build()
        parse = parser.parse_args

        def parse_frozen(argv=None):
            args = FrozenNamespace()
            args.__dict__.update(vars(parse(argv)))
            made.append(args)
            return args

        parser.parse_args = parse_frozen
        return parser

    monkeypatch.setattr(cli, "build_parser", build_frozen)
    return made


def test_the_frozen_namespace_refuses_a_change(frozen):
    args = cli.build_parser().parse_args(["summary"])
    with pytest.raises(NamespaceChanged, match=r"args\.model = 'vgg19'"):
        args.model = "vgg19"
    with pytest.raises(NamespaceChanged, match=r"deleted args\.model"):
        del args.model
    assert (args.model, frozen) == ("vgg16", [args])


@pytest.fixture
def picture(tmp_path) -> str:
    path = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (36, 40, 3), np.uint8)).save(path)
    return str(path)


def _dump(tmp_path: pathlib.Path, picture: str) -> str:
    """An activations dump of WEIGHTS on `picture`, in float64: what compare must accept."""
    model = VGG.from_file(WEIGHTS, dtype="float64")
    x = np.random.default_rng(1).normal(size=(2, 32, 32, 3))
    path = tmp_path / "dump.npz"
    np.savez(path, input=x, **model.activations(x))
    return str(path)


def test_every_command_runs_on_a_frozen_namespace(frozen, tmp_path, picture, capsys):
    out = tmp_path
    commands = [
        ["predict", picture, "--weights", WEIGHTS, "--top", "2", "--json"],
        ["predict", picture, "--weights", WEIGHTS, "-o", out / "p.npy"],
        ["extract", picture, "--weights", WEIGHTS, "--layer", "fc1", "--top", "1",
         "-o", out / "e.npy"],
        ["summary", "--model", "vgg11", "--no-top", "--input-shape", "32", "32"],
        ["summary", "--weights", WEIGHTS],
        ["show", "--filters", "--weights", WEIGHTS, "-o", out / "f.png"],
        ["show", picture, "--weights", DATA / "heads" / "vgg16_bn.pth", "-o", out / "s.png"],
        ["train", "--epochs", "1", "--train", "8", "--test", "4", "--batch-size", "4"],
        ["compare", WEIGHTS, _dump(tmp_path, picture), "--oracle"],
        ["convert", WEIGHTS, out / "w.npz"],
        ["vectors", out / "cases", "--narrow", "--npy"],
        ["demo"],
    ]  # fmt: skip
    for command in commands:
        assert cli.main([str(part) for part in command]) == 0, (command, capsys.readouterr())
    assert len(frozen) == len(commands)  # each ran on its frozen namespace
    assert {args.command for args in frozen} == set(
        cli.build_parser()._subparsers._group_actions[0].choices
    ) - {"fetch-weights"}
    probabilities = np.load(out / "p.npy")  # predict -o still writes what it ranks
    np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)
    assert np.load(out / "e.npy").shape == (1, 48)  # extract's own --layer fc1


def test_weights_imagenet_and_fetch_weights_on_a_frozen_namespace(
    frozen, tmp_path, monkeypatch, capsys
):
    """``--weights imagenet`` becomes the cached file in a new namespace, not the parsed one."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = hub.cache_dir("torchvision")
    folder.mkdir(parents=True)
    path = folder / "vgg11-8a719046.pth"  # any format: readers go by content
    VGG(TINY_CONFIG, include_top=False, input_shape=(32, 32, 3), seed=0).save_weights(path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
    published = hub.Published("torchvision", path.name, "http://x.invalid/", "sha256", sha)
    monkeypatch.setitem(hub.PUBLISHED, ("vgg11", True), (published,))
    assert cli.main(["summary", "--weights", "imagenet:vgg11"]) == 0
    assert f"{path} (npz" in capsys.readouterr().out
    assert frozen[-1].weights == "imagenet:vgg11"  # the parsed value, as given
    assert cli.main(["fetch-weights", "vgg11", "--family", "torchvision"]) == 0
    assert capsys.readouterr().out.strip() == str(path)


def test_show_on_a_batch_norm_model_leaves_the_model_as_loaded(monkeypatch, tmp_path, picture):
    """A batch-norm convolution's own output comes from the engine as it was built (it
    answers every layer name), not from an algorithm the CLI set after loading."""
    changed, setattr_ = [], VGG.__setattr__

    def watch(model, name, value):
        if name in ("conv_algorithm", "threads") and name in vars(model):
            changed.append((name, value))
        setattr_(model, name, value)

    monkeypatch.setattr(VGG, "__setattr__", watch)
    out = tmp_path / "s.png"
    bn = DATA / "heads" / "vgg16_bn.pth"
    args = ["show", picture, "--weights", str(bn), "--layer", "block2_conv1", "-o", str(out)]
    assert cli.main(args) == 0
    assert changed == []
    base = {"include_top": False, "head": None, "input_shape": None}
    model = VGG.from_file(bn, **base)  # what show loads, run as built
    maps = model.activations(preprocess_input(load_image(picture)[None]), ["block2_conv1"])
    block2_conv1 = maps["block2_conv1"][0]  # (112, 112, C) from a 224x224 picture
    expected = feature_map_grid(block2_conv1, scale=max(1, 56 // block2_conv1.shape[0]))
    np.testing.assert_array_equal(np.asarray(Image.open(out)), expected)
    model.conv_algorithm = "gemm"  # the watch sees a change after construction
    assert changed == [("conv_algorithm", "gemm")]
