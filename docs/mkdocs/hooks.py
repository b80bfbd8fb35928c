"""MkDocs hooks of vgg_np's site: math becomes MathML when the site is built.

``pymdownx.arithmatex`` (generic mode) keeps ``$...$`` and ``$$...$$`` away from the
Markdown parser and wraps them in ``<span class="arithmatex">\\(...\\)</span>`` (``<div>``
and ``\\[...\\]`` for display math); this hook converts each to MathML with latex2mathml,
which browsers draw natively, so no page loads a math library from the network.
"""

from __future__ import annotations

import html
import re

from latex2mathml.converter import convert

_MATH = re.compile(r'<(span|div) class="arithmatex">(.*?)</\1>', re.S)


def _mathml(match: re.Match) -> str:
    tag, body = match.groups()
    tex = html.unescape(body).strip()[2:-2]  # drop the \( \) or \[ \] delimiters
    return convert(tex, display="block" if tag == "div" else "inline")


def on_page_content(html_text: str, **kwargs) -> str:
    """Replace every arithmatex element of a page by its MathML."""
    return _MATH.sub(_mathml, html_text)
