"""What README, the docs, the CHANGELOG and ``--help`` say stays true of the code: the
command table lists the parser's commands, the dependency list is pyproject's, help lists
only the formats that can be written, file names and install lines work as written."""

from __future__ import annotations

import argparse
import ast
import re
import shlex

import pytest

import vgg_np
from tests.conftest import ROOT
from vgg_np import cli, formats, hub

README = (ROOT / "README.md").read_text()
PYPROJECT = (ROOT / "pyproject.toml").read_text()  # (tomllib is Python 3.11+)
DEPENDENCIES = ast.literal_eval(re.search(r"^dependencies = (\[.*?\])$", PYPROJECT, re.M)[1])
EXTRAS = set(
    re.findall(
        r"^([\w-]+) = \[",
        PYPROJECT.split("[project.optional-dependencies]")[1].split("\n[")[0],
        re.M,
    )
)
CHANGELOG = (ROOT / "CHANGELOG.md").read_text()
PAGES = {p.name: p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def help_texts() -> dict[str, str]:
    return {name: parser.format_help() for name, parser in subcommands().items()}


def test_readme_command_table_lists_every_command_and_no_other():
    table = README.split("## The command line")[1].split("\n\n")[1]
    listed = re.findall(r"^\| `vgg-np ([a-z-]+)", table, re.M)
    assert sorted(listed) == sorted(subcommands())
    assert len(listed) == len(set(listed))


def test_readme_dependency_list_is_pyprojects():
    sentence = re.search(r"NumPy and a few small packages \(([^)]*)\)", README)[1]
    named = {name.strip().lower() for name in sentence.replace("\n", " ").split(",")}
    required = {re.split(r"[<>=!~ \[]", d)[0].lower() for d in DEPENDENCIES}
    assert named == required - {"numpy"}


WRITABLE = {suffix for f in formats.FORMATS if f.write for suffix in f.suffixes}
SUFFIX = re.compile(r"(?<![\w/])\.(?:[a-z][a-z0-9]*)(?:\.[a-z0-9]+)?\b")


def test_convert_help_lists_as_written_only_the_formats_that_can_be_written():
    text = " ".join(help_texts()["convert"].split())
    written = text.split("write TARGET")[1].split(" is read, never written")[0]
    named = set(SUFFIX.findall(written))  # 'ONNX is read, never written'
    assert named <= WRITABLE, named - WRITABLE
    assert {f.suffixes[0] for f in formats.FORMATS if f.write} <= named
    listing = cli.build_parser().format_help()  # each command and its summary
    line = next(s for s in listing.splitlines() if s.strip().startswith("convert"))
    assert set(SUFFIX.findall(line)) <= WRITABLE and "onnx" not in line.lower()
    row = next(r for r in README.splitlines() if r.startswith("| `vgg-np convert"))
    assert "write a whole Keras model" in row and "(ONNX is read only)" in row


def test_every_help_example_uses_options_its_command_has():
    for name, text in help_texts().items():
        options = set(subcommands()[name]._option_string_actions)
        examples = text.split("Example")[-1].split(":", 1)[1]
        for line in filter(None, (e.strip() for e in examples.splitlines())):
            args = shlex.split(line)
            assert args[:2] == ["vgg-np", name], line
            assert {a for a in args if a.startswith("-")} <= options, line


PUBLISHED_NAMES = {p.filename for files in hub.PUBLISHED.values() for p in files}
WEIGHT_NAME = re.compile(r"vgg1[69]_weights[\w]*\.h5|vgg1[69][-\w]*-[0-9a-f]{8}\.pth")


@pytest.mark.parametrize("where", [*PAGES, "cli help", "demo hint"])
def test_published_weights_are_named_as_published(where):
    if where == "cli help":
        text = "\n".join(help_texts().values())
    elif where == "demo hint":
        text = cli.DEMO_HINT
    else:
        text = PAGES[where]
    names = set(WEIGHT_NAME.findall(text))
    assert names <= PUBLISHED_NAMES, names - PUBLISHED_NAMES


def test_install_lines_work_from_a_checkout():
    texts = {**PAGES, "cli help": "\n".join(help_texts().values())}
    for where, text in texts.items():
        # vgg_np is not on PyPI: "vgg_np[extra]" installs nothing; ".[extra]" from a checkout.
        assert 'install "vgg_np[' not in text and "install vgg_np" not in text, where
        for extra in re.findall(r'install "\.\[([\w,-]+)\]"', text):
            assert set(extra.split(",")) <= EXTRAS, (where, extra)


def test_the_docs_cite_nothing_a_reader_cannot_see():
    for where, text in PAGES.items():
        assert not re.search(r"\bFACTS\b", text), f"{where} cites FACTS, a file no reader has"


def test_the_changelog_matches_the_version_and_pyproject():
    unreleased = CHANGELOG.split("## [Unreleased]")[1].split("\n## [")[0]
    released = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", CHANGELOG, re.M)
    version = tuple(int(v) for v in re.match(r"(\d+)\.(\d+)\.(\d+)", vgg_np.__version__).groups())
    latest = tuple(int(v) for v in released[0].split("."))
    if unreleased.strip():  # changes since the last release: not that release's number
        assert ".dev" in vgg_np.__version__ and version > latest, vgg_np.__version__
    else:
        assert vgg_np.__version__ == released[0]
    if "\n[project.urls]" not in PYPROJECT:
        assert not re.search(r"project URLs(?! yet)", CHANGELOG), "URLs pyproject has not"
    assert f"vgg_np {vgg_np.__version__}:" in README  # the demo's output as README shows it


def test_the_demo_hint_is_current_and_in_readme():
    assert "fetch-weights" in cli.DEMO_HINT and 'weights="imagenet"' in cli.DEMO_HINT
    command = next(line for line in cli.DEMO_HINT.splitlines() if "vgg-np predict" in line)
    args = shlex.split(command.replace('"$(vgg-np fetch-weights vgg16)"', "w.h5"))
    cli.build_parser().parse_args(args[1:])  # exits 2 on a stale option
    assert cli.DEMO_HINT in README


def test_the_changelog_names_every_command_the_parser_has():
    """A command a user can run is in the CHANGELOG (fetch-weights was not)."""
    missing = [name for name in subcommands() if f"vgg-np {name}" not in CHANGELOG
               and f"`{name}`" not in CHANGELOG]  # fmt: skip
    assert not missing, f"CHANGELOG never names {missing}"
    for promise in ('weights="imagenet"', "compare_keras", "recursively"):
        assert promise in CHANGELOG, promise


def test_the_weights_help_of_predict_and_extract_names_imagenet():
    """README: commands 'then take --weights imagenet'; their --help says so too."""
    texts = help_texts()
    for name in ("predict", "extract"):
        assert "imagenet[:MODEL[:FAMILY]]" in " ".join(texts[name].split()), name
