"""The docs run: their `>>>` examples are executed, generated tables match the code, and
every figure and page they link to exists."""

from __future__ import annotations

import doctest
import re
import subprocess
import sys

import pytest

from tests.conftest import ROOT

PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_examples_in_the_page_run(page):
    flags = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS
    result = doctest.testfile(str(page), module_relative=False, optionflags=flags, verbose=False)
    assert result.failed == 0, (
        f"{result.failed} of {result.attempted} examples failed in {page.name}"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_point_to_files_that_exist(page):
    for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
        if target.startswith(("http://", "https://")):
            continue
        assert (page.parent / target).exists(), f"{page.name} links to missing {target}"


def test_vgg16_page_table_is_what_the_code_prints():
    page = (ROOT / "docs" / "vgg16.md").read_text()
    block = re.search(r"<!-- summary:vgg16 -->\n```text\n(.*?)\n```", page, re.S)[1]
    printed = subprocess.run(
        [sys.executable, "-m", "vgg_np", "summary"], capture_output=True, text=True, check=True
    ).stdout.rstrip()
    assert block == printed


PUBLIC_MODULES = [
    "vgg_np.ops", "vgg_np.backward", "vgg_np.layers", "vgg_np.engine.lowering", "vgg_np.engine",
    "vgg_np.engine.plan", "vgg_np.engine.measure", "vgg_np.engine.cache",
    "vgg_np.config", "vgg_np.network",
    "vgg_np.summary", "vgg_np.architecture", "vgg_np.model", "vgg_np.formats",
    "vgg_np.preprocess", "vgg_np.diagnose", "vgg_np.compare", "vgg_np.visualize", "vgg_np.train",
    "vgg_np.train.fit", "vgg_np.train.data", "vgg_np.train.heads", "vgg_np.train.loop",
    "vgg_np.train.optim", "vgg_np.train.features", "vgg_np.train.checkpoint",
    "vgg_np.train.report", "vgg_np.train.plan",
    "vgg_np.vectors",
    "vgg_np.progress", "vgg_np.hub", "vgg_np.streams", "vgg_np.extract",
    "vgg_np.distributed", "vgg_np.adapters", "vgg_np.weight_diff",
]  # fmt: skip


def public_objects():
    import importlib
    import inspect

    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                yield f"{module_name}.{name}", obj, True
                if inspect.isclass(obj):
                    for attr, member in vars(obj).items():
                        if attr.startswith("_"):
                            continue
                        if isinstance(member, classmethod):
                            member = member.__func__
                        if inspect.isfunction(member) or isinstance(member, property):
                            yield f"{module_name}.{name}.{attr}", member, False
    from vgg_np.cli import main

    yield "vgg_np.cli.main", main, True


def test_every_public_function_and_class_has_an_example():
    import inspect

    missing = []
    for name, obj, top_level in public_objects():
        doc = inspect.getdoc(obj) or ""
        # Functions and classes show their own example; a method may point to its class's.
        if ">>>" not in doc and (top_level or "example" not in doc.lower()):
            missing.append(name)
    assert not missing, f"no runnable example in: {', '.join(missing)}"


def test_every_public_module_has_an_api_page():
    pages = "".join(p.read_text() for p in (ROOT / "docs" / "api").glob("*.md"))
    missing = [m for m in PUBLIC_MODULES if f"::: {m}\n" not in pages]
    assert not missing, f"no API reference page for {', '.join(missing)}"


def test_every_page_and_notebook_is_in_the_site_navigation():
    nav = (ROOT / "docs" / "mkdocs" / "mkdocs.yml").read_text()
    pages = [p for p in (ROOT / "docs").glob("*.md") if p.name != "README.md"]
    notebooks = sorted((ROOT / "docs" / "notebooks").iterdir())
    missing = [p.name for p in pages if f": {p.name}\n" not in nav]
    missing += [p.name for p in notebooks if f": notebooks/{p.name}\n" not in nav]
    assert not missing, f"not in docs/mkdocs/mkdocs.yml's nav: {', '.join(missing)}"


def test_notebooks_are_text_without_outputs():
    # jupytext percent scripts: readable diffs, and nothing executed is committed.
    for path in sorted((ROOT / "docs" / "notebooks").iterdir()):
        assert path.suffix == ".py", f"{path.name}: keep notebooks as jupytext percent .py"
        text = path.read_text()
        assert "format_name: percent" in text and text.count("# %%") >= 5, path.name


NUMBERS = {"no": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7}
# "`conv2d_naive` computes exactly that, as four loops", "`dense_naive` is two loops, ..."
LOOP_WORDS = re.compile(
    r"`[^`]*?\b(\w+_naive)`([^.;`]{0,60}?)\b(" + "|".join(NUMBERS) + r") (?:nested )?loops?\b"
)


def naive_kernels() -> dict[str, object]:
    from vgg_np import backward, ops

    return {name: getattr(module, name) for module in (ops, backward)
            for name in module.__all__ if name.endswith("_naive")}  # fmt: skip


def test_every_naive_kernel_is_described_with_the_loops_its_code_has():
    import ast
    import inspect
    import textwrap

    kernels = naive_kernels()
    said: dict[str, list[tuple[str, str]]] = {}
    for page in PAGES:
        for name, _, number in LOOP_WORDS.findall(page.read_text()):
            said.setdefault(name, []).append((page.name, number))
    wrong = []
    for name, function in kernels.items():
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        loops = sum(isinstance(node, ast.For) for node in ast.walk(tree))
        wrong += [f"{page} says {number} loops in {name}, its code has {loops}"
                  for page, number in said.get(name, []) if NUMBERS[number] != loops]  # fmt: skip
    missing = sorted(set(kernels) - set(said))
    assert not missing, f"no page says how many loops these have: {', '.join(missing)}"
    assert not wrong, "\n".join(wrong)
