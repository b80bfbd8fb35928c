"""MkDocs hooks of vgg_np's site: kernels' code read from the package, math as MathML.

Source: a line ``<!-- source: vgg_np/ops/conv.py conv2d_naive -->`` in a page becomes that
function's code as the file holds it when the site is built (signature and body; the
docstring is left out, the page around it is the explanation), titled with its file and
line. Nothing is copied into the pages, so the code shown cannot go stale.

Math: ``pymdownx.arithmatex`` (generic mode) keeps ``$...$`` and ``$$...$$`` away from the
Markdown parser and wraps them in ``<span class="arithmatex">\\(...\\)</span>`` (``<div>``
and ``\\[...\\]`` for display math); this hook converts each to MathML with latex2mathml,
which browsers draw natively, so no page loads a math library from the network.
"""

from __future__ import annotations

import ast
import html
import pathlib
import re

from latex2mathml.converter import convert

ROOT = pathlib.Path(__file__).resolve().parents[2]  # the checkout: docs/mkdocs/hooks.py
_SOURCE = re.compile(r"^<!-- source: (\S+\.py) (\w+) -->$", re.M)
_MATH = re.compile(r'<(span|div) class="arithmatex">(.*?)</\1>', re.S)


def function_source(path: str, name: str) -> tuple[str, int]:
    """Return the code of top-level function `name` in `path` without its docstring, and its line.

    Raises ``ValueError`` when the file has no such function, so that a renamed kernel
    fails the (strict) build instead of leaving a hole in the page.
    """
    text = (ROOT / path).read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    for node in ast.parse(text).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
            body = lines[first - 1 : node.end_lineno]  # 1-based, inclusive
            doc = node.body[0]
            if ast.get_docstring(node) is not None:
                start, end = doc.lineno - first, doc.end_lineno - first + 1
                body = body[:start] + body[end:]
            return "".join(body), first
    raise ValueError(f"docs: {path} has no top-level function {name!r}")


def _source_block(match: re.Match) -> str:
    path, name = match.groups()
    code, line = function_source(path, name)
    title = f"{path}, line {line}: {name} (docstring left out)"
    return f'```python title="{title}"\n{code}```'


def on_page_markdown(markdown: str, **kwargs) -> str:
    """Replace every source marker of a page by the function's code, read now."""
    return _SOURCE.sub(_source_block, markdown)


def _mathml(match: re.Match) -> str:
    tag, body = match.groups()
    tex = html.unescape(body).strip()[2:-2]  # drop the \( \) or \[ \] delimiters
    return convert(tex, display="block" if tag == "div" else "inline")


def on_page_content(html_text: str, **kwargs) -> str:
    """Replace every arithmatex element of a page by its MathML."""
    return _MATH.sub(_mathml, html_text)
