"""The docs run: their `>>>` examples are executed, generated tables match the code, and
every figure and page they link to exists."""

from __future__ import annotations

import doctest
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
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
