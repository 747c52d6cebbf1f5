"""The site's maths typeset when the book is built, as MathJax draws it, rather than in the reader's browser.

MathJax in the page (``tex-chtml.js``, 264 kB) parses and typesets every formula of a
chapter in one go once the page has loaded: on Lighthouse's mobile emulation (a phone's
CPU) that was a task of 1-2 s in which the page could not answer the reader, the largest
part of the text chapters' blocking time. Here the same MathJax (the copy the site serves,
from sphinx-mathjax-offline) typesets each formula once, in Node, as SVG, and the page
holds the result: ``<mjx-container>`` with the picture (``aria-hidden``) and the formula as
MathML for screen readers (MathJax's assistive MathML, as in the browser). Each glyph's outline
is in the page once, in a hidden ``<svg>`` at the top of its body (MathJax's global font cache). Pages whose maths
is all typeset load no MathJax at all (``sphinx_site._without_unused_mathjax``).

- ``tools/typeset_maths.js`` is the Node side: one process per build, one JSON line per
  formula each way. A TeX error (MathJax's message) is a build warning, fatal under ``-W``,
  and that formula is left for MathJax in the browser.
- Without Node on PATH the pages keep their TeX and MathJax typesets it in the browser, as
  before (said once in the build's log); ``tests/test_site.py`` fails on such a site.
- What is typeset: Sphinx's inline maths (``<span class="math">\\(...\\)</span>``) and display
  maths (``<div class="math">``, with its equation number, ``\\[...\\]`` or an amsmath
  environment). A notebook output's TeX (none in this book) is left to the browser.
"""

from __future__ import annotations

import html
import importlib
import json
import re
import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "typeset_maths.js"

INLINE = re.compile(r'(<span class="math notranslate nohighlight">)\\\((.*?)\\\)(</span>)', re.DOTALL)
BODY = re.compile(r"<body\b[^>]*>")
DISPLAY = re.compile(r'(<div class="math notranslate nohighlight"[^>]*>\s*(?:<span class="eqno">.*?</span>)?)'
                     r'(.*?)(</div>)', re.DOTALL)


def mathjax_dir() -> Path:
    """The MathJax 3 that sphinx-mathjax-offline ships (and copies into the site's ``_static/mathjax``)."""
    package = importlib.import_module("sphinx-mathjax-offline")
    return Path(package.__file__).resolve().parent / "static" / "mathjax"


class Typesetter:
    """One Node process running MathJax, started at the first formula; ``None`` results without Node."""

    def __init__(self, directory: Path | None = None):
        self.directory = directory
        self.process: subprocess.Popen | None = None
        self.css = ""
        self.unavailable = shutil.which("node") is None

    def _start(self) -> None:
        self.process = subprocess.Popen(
            ["node", str(SCRIPT), str(self.directory or mathjax_dir())], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", bufsize=1)
        first = self.process.stdout.readline()
        if not first:
            error = self.process.stderr.read()
            self.close()
            raise RuntimeError(f"MathJax (node {SCRIPT.name}) did not start: {error.strip()}")
        self.css = json.loads(first)["css"]

    def typeset(self, tex: str, display: bool) -> tuple[str | None, str | None]:
        """(the formula's HTML, None), or (None, MathJax's error message); (None, None) without Node."""
        if self.unavailable:
            return None, None
        if self.process is None:
            self._start()
        self.process.stdin.write(json.dumps({"tex": tex, "display": display}) + "\n")
        answer = json.loads(self.process.stdout.readline())
        return answer.get("html"), answer.get("error")

    def glyphs(self) -> str:
        """The hidden <svg> of the glyphs the formulas since the last call use; the next page starts anew."""
        if self.unavailable or self.process is None:
            return ""
        self.process.stdin.write(json.dumps({"glyphs": True}) + "\n")
        return json.loads(self.process.stdout.readline())["html"]

    def stylesheet(self) -> str:
        if not self.unavailable and self.process is None:
            self._start()
        return self.css

    def close(self) -> None:
        if self.process is not None:
            self.process.stdin.close()
            self.process.wait(timeout=30)
            self.process = None


def typeset_page(page: str, typesetter: Typesetter, report) -> str:
    """``page`` with each inline and display formula replaced by MathJax's SVG of it.

    ``report(tex, message)`` is called for each formula MathJax rejects; that formula stays TeX.
    """
    def replace(match, display: bool):
        opening, source, closing = match.groups()
        tex = html.unescape(source).strip()
        if display and tex.startswith("\\[") and tex.endswith("\\]"):
            tex = tex[2:-2].strip()
        result, error = typesetter.typeset(tex, display)
        if error:
            report(tex, error)
        if result and display:
            # The theme lets a formula wider than the screen scroll (mjx-container{overflow:auto});
            # a region that scrolls must be reachable by keyboard (axe's scrollable-region-focusable),
            # as MathJax's menu made every formula in the browser.
            result = result.replace("<mjx-container ", '<mjx-container tabindex="0" ', 1)
        return opening + result + closing if result else match.group(0)

    typesetter.glyphs()  # none left from a page that stopped half-way
    page = INLINE.sub(lambda m: replace(m, False), page)
    page = DISPLAY.sub(lambda m: replace(m, True), page)
    glyphs = typesetter.glyphs()
    if 'jax="SVG"' not in page:
        return page
    # Before the content, so the first formulas on the screen can draw as soon as they arrive.
    return BODY.sub(lambda m: m.group(0) + glyphs, page, count=1)
