"""The book on paper: what the LaTeX build (``make pdf``) needs beyond Sphinx and MyST-NB.

An interactive figure (``tinyllm.interactive``) is a cell output with only
``text/html`` (the data and a static picture, for ``_static/interactive.js``)
and ``text/plain`` (its repr). MyST-NB's LaTeX priority has no ``text/html``,
so it would print the repr; here each one becomes its static fallback instead:
the PNG as an image (Sphinx's DataURIExtractor writes it to a file), or, for the
tokenizer explorer, its example text cut into tokens and their ids.

It also prints what LaTeX alone would get wrong: CJK and emoji, which FreeFont
lacks (each run in a font that has it), chapter numbers (the site leaves the
notation, exercises and bibliography pages unnumbered, LaTeX would number them
and shift every chapter by one), and maths in headings (plain in the bookmarks).

``python -m tools.sphinx_print ARGS`` runs ``jupyter-book build ARGS`` with the
doctrees in ``_build/.doctrees-latex``: the LaTeX build reads the chapters from
the same executed cache as the site, without sharing (and rewriting) the
HTML build's environment, and never executes a chapter itself.
"""

from __future__ import annotations

import base64
import html
import re
import sys
from functools import partial
from pathlib import Path

from docutils import nodes
from sphinx.transforms.post_transforms import SphinxPostTransform

INTERACTIVE = re.compile(r'<div class="tinyllm-interactive" data-kind="(\w+)">')
PNG = re.compile(r'<img class="tinyllm-fallback" alt="([^"]*)" src="(data:image/png;base64,[^"]+)">')
TOKEN = re.compile(r'<span class="tinyllm-token[^"]*" title="id \d+">(.*?)</span>', re.DOTALL)
IDS = re.compile(r'<pre class="tinyllm-ids">(.*?)</pre>', re.DOTALL)


def static_fallback(markup: str) -> list[nodes.Node] | None:
    """The printable nodes for an interactive figure's HTML; None when the HTML is not one."""
    if not INTERACTIVE.search(markup):
        return None
    image = PNG.search(markup)
    if image:
        alt, uri = html.unescape(image.group(1)), image.group(2)
        base64.b64decode(uri.split(",", 1)[1], validate=True)  # a broken picture fails here, not in LaTeX
        return [nodes.image(uri=uri, alt=alt, candidates={"?": uri})]
    tokens, ids = TOKEN.findall(markup), IDS.search(markup)
    if tokens and ids:
        paragraph = nodes.paragraph()
        for i, token in enumerate(tokens):
            if i:
                paragraph += nodes.Text(" ")
            paragraph += nodes.literal(text=html.unescape(token))
        return [paragraph, nodes.literal_block(text=html.unescape(ids.group(1)))]
    return None


class PrintInteractiveFigures(SphinxPostTransform):
    """Replace each interactive figure's mime bundle by its static fallback, before MyST-NB picks a mime type."""

    builders = ("latex",)
    default_priority = 3  # MyST-NB's SelectMimeType is 4

    def run(self, **kwargs) -> None:
        bundles = [n for n in self.document.findall(nodes.container) if n.get("nb_element") == "mime_bundle"]
        for bundle in bundles:
            for raw in bundle.findall(nodes.raw):
                if raw.get("format") == "html":
                    printable = static_fallback(raw.astext())
                    if printable is not None:
                        bundle.replace_self(printable)
                        break


# Characters FreeFont lacks, by the command (preamble in _config.yml) that prints them in another font.
FALLBACK_FONTS = [
    (re.compile("[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]+"), r"\bookcjk"),
    (re.compile("[\U0001f000-\U0001faff]+"), r"\bookemoji"),
]


def fallback_fonts(tex: str) -> str:
    """Wrap runs of CJK and emoji in their font's command (valid in text and in Sphinx's Verbatim,
    whose commandchars are \\, { and })."""
    for pattern, command in FALLBACK_FONTS:
        tex = pattern.sub(lambda m: f"{command}{{{m.group(0)}}}", tex)
    return tex


CHAPTER = re.compile(r"^(\\chapter\{.*\})\n(.*)$", re.MULTILINE)
PART = re.compile(r"^\\part\{(.*)\}$", re.MULTILINE)


def number_like_the_site(tex: str, numbered: set[str]) -> str:
    """Chapter and part numbers as on the site, so that "chapter 8" in the prose is chapter 8 here.

    LaTeX numbers every chapter, so the notation page would be chapter 1 and every chapter
    one more than the site says. A page the table of contents leaves unnumbered (notation,
    exercises, bibliography) is set with secnumdepth -1: in the contents, unnumbered, and
    it does not step the counter (commands in the preamble, _config.yml). The parts are the
    contents' captions ("Part II: modern LLMs"), printed as they are, without "Part III".
    """
    def chapter(match):
        doc = re.search(r"\\detokenize\{([^}]*)::doc\}", match.group(2))
        state = r"\booknumbered" if doc and doc.group(1) in numbered else r"\bookunnumbered"
        return f"{state}\n{match.group(0)}"

    def part(match):
        title = match.group(1)
        return rf"\cleardoublepage\phantomsection\addcontentsline{{toc}}{{part}}{{{title}}}\part*{{{title}}}"

    return PART.sub(part, CHAPTER.sub(chapter, tex))


def _rewrite_tex(app, exception) -> None:
    if exception is None and app.builder.name == "latex":
        numbered = {doc for doc, numbers in app.env.toc_secnumbers.items() if numbers}
        for tex in Path(app.outdir).glob("*.tex"):
            text = number_like_the_site(fallback_fonts(tex.read_text(encoding="utf-8")), numbered)
            tex.write_text(text, encoding="utf-8")


SUBSCRIPT = str.maketrans("0123456789aehijklmnoprstuvx", "₀₁₂₃₄₅₆₇₈₉ₐₑₕᵢⱼₖₗₘₙₒₚᵣₛₜᵤᵥₓ")


def plain_maths(latex: str) -> str:
    """Inline maths of a heading as bookmark text: ``\\sqrt{d_k}`` reads √dₖ."""
    text = latex.replace(r"\sqrt", "√")
    text = re.sub(r"_(\w|\{\w+\})", lambda m: m.group(1).strip("{}").translate(SUBSCRIPT), text)
    return re.sub(r"\\[a-zA-Z]+|[{}\\^_$]", "", text).strip()


class BookmarkableTitles(SphinxPostTransform):
    """Maths in a heading: typeset in the page, plain text in the PDF's bookmarks (hyperref
    cannot put \\( ... \\) in them and drops the maths with a warning)."""

    builders = ("latex",)
    default_priority = 5

    def run(self, **kwargs) -> None:
        for title in self.document.findall(nodes.title):
            for maths in list(title.findall(nodes.math)):
                source = maths.astext()
                maths.replace_self(nodes.raw("", rf"\texorpdfstring{{\protect\({source}\protect\)}}"
                                                 rf"{{{plain_maths(source)}}}", format="latex"))


def setup(app):
    app.add_post_transform(PrintInteractiveFigures)
    app.add_post_transform(BookmarkableTitles)
    app.connect("build-finished", _rewrite_tex)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


def _refuse_to_execute(notebook, *args, **kwargs):
    raise RuntimeError("a chapter is not in the executed cache (or its cell changed since): the PDF prints "
                       "what the site shows, so run `python -m tools.execute_book` (make pdf does) and fix "
                       "any chapter that fails there first")


def main(argv: list[str]) -> None:
    import jupyter_book.sphinx as jb_sphinx
    import myst_nb.core.execute.cache as nb_cache
    from jupyter_book.cli.main import main as jupyter_book

    doctrees = Path(__file__).resolve().parent.parent / "_build" / ".doctrees-latex"
    # The CLI imports build_sphinx from this module when it runs: patched here, it gets our doctrees.
    jb_sphinx.build_sphinx = partial(jb_sphinx.build_sphinx, doctreedir=doctrees)
    # MyST-NB executes a chapter it does not find in the cache; here that is an error instead.
    nb_cache.single_nb_execution = _refuse_to_execute
    jupyter_book(["build", *argv])  # exits with the build's status


if __name__ == "__main__":
    main(sys.argv[1:])
