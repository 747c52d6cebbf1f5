"""The book as one PDF (``make pdf``), read back with pdftotext.

The fixture runs ``make pdf`` once (after ``make book``, the chapters are in the
executed cache: nothing runs again, and the LaTeX build refuses to execute a
chapter itself), then every test reads the PDF's text: each chapter under the
number the site gives it, the bibliography with every entry, the computed
numbers the prose quotes, the self-check questions, and nothing left unrendered
(no "??" reference, no LaTeX or MyST source, no Python repr of a figure).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import unicodedata
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, glued_values

pytestmark = pytest.mark.slow

PDF = ROOT / "_build" / "pdf" / "book.pdf"


def toc_pages() -> list[tuple[str, int | None]]:
    """(source path, the chapter number the site shows or None) in book order, as _toc.yml lists them."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    pages, number = [], 0
    for part in toc["parts"]:
        for chapter in part["chapters"]:
            if part.get("numbered"):
                number += 1
            pages.append((chapter["file"], number if part.get("numbered") else None))
    return pages


def title(source: str) -> str:
    text = (ROOT / f"{source}.md").read_text(encoding="utf-8")
    return re.search(r"^# (.+)$", text, re.MULTILINE).group(1).strip()


def flat(text: str) -> str:
    """Text with the PDF's line breaks and typography undone: ligatures, curly quotes, spacing."""
    text = unicodedata.normalize("NFKC", text).replace("\u2019", "'").replace("\u2018", "'")
    return " ".join(text.split())


def squeezed(text: str) -> str:
    """Letters and digits only, lower case: robust to hyphenation at line ends and to bibliography styles."""
    return re.sub(r"[^0-9a-z]", "", unicodedata.normalize("NFKD", text).lower())


@pytest.fixture(scope="module")
def pdf() -> Path:
    if shutil.which("xelatex") is None or shutil.which("pdftotext") is None:
        pytest.fail("TeX Live or pdftotext is missing: run tools/system_deps.sh pdf (make test does, as root)")
    subprocess.run(["make", "pdf"], cwd=ROOT, check=True)
    return PDF


@pytest.fixture(scope="module")
def text(pdf) -> str:
    return subprocess.run(["pdftotext", str(pdf), "-"], check=True, capture_output=True, text=True).stdout


def test_page_count_is_sane(pdf):
    info = subprocess.run(["pdfinfo", str(pdf)], check=True, capture_output=True, text=True).stdout
    pages = int(re.search(r"^Pages:\s+(\d+)", info, re.MULTILINE).group(1))
    assert 150 <= pages <= 400, f"the PDF has {pages} pages (230 when this test was written)"


@pytest.mark.parametrize("source,number", toc_pages(), ids=[s for s, _ in toc_pages()])
def test_every_chapter_is_there_under_the_sites_number(text, source, number):
    """The contents list the chapter, numbered as on the site, and its pages carry it in their header."""
    name = flat(title(source))
    lines = [flat(line) for line in text.splitlines()]
    if number is None:
        assert lines.count(name) >= 2, f"{name!r} is not in the contents and as a heading"
        assert not any(re.fullmatch(rf"\d+ {re.escape(name)}", line) for line in lines), \
            f"{name!r} is unnumbered on the site but numbered in the PDF"
    else:
        assert f"{number} {name}" in lines, f"the contents have no chapter {number}, {name!r}"
        assert f"Chapter {number}. {name}" in lines, f"no page is headed 'Chapter {number}. {name}'"


def test_bibliography_lists_every_work(text):
    from pybtex.database import parse_file
    from pybtex.richtext import Text

    pages = text.split("Every work cited in the book, in one list.")[-1]
    # Without the running heads and page numbers that interrupt an entry at a page break.
    bibliography = squeezed("\n".join(line for line in pages.splitlines()
                                       if line.strip("\f") not in ("Bibliography", "LLM Foundations")
                                       and not line.strip("\f").isdigit()))
    missing = []
    for key, entry in parse_file(str(ROOT / "references.bib")).entries.items():
        work = squeezed(Text.from_latex(entry.fields["title"]).render_as("text"))[:40]
        if work not in bibliography or entry.fields["year"] not in bibliography:
            missing.append(key)
    assert not missing, f"not in the PDF's bibliography: {missing}"


def test_citations_and_cross_references_resolve(text):
    assert "??" not in text, "an unresolved reference or citation prints as ??"
    assert re.search(r"\[Vaswani et al\., 2017", flat(text)), "author-year citations are missing"
    assert re.search(r"Eq\. 5\.\d", text), "equation references (Eq. N.M) are missing"


# Source that should have been typeset: LaTeX (maths, Sphinx's and our own commands), MyST roles
# and directives, Markdown fences, and the repr of an output that should have been a picture.
UNRENDERED = [
    r"\\frac", r"\\begin\{", r"\\end\{", r"\$\$", r"\\\(", r"\\\)", r"\\mathbf", r"\\sphinx", r"\\PYG",
    r"\\book(cjk|emoji)", r"\{(math|glue|glue:text|cite:p|cite:t|ref|numref|eq|doc|quiz|figure|code-cell)\}",
    r"^:::", r"^```", r"<tinyllm\.interactive", r"<Figure size", r"<IPython\.",
]


def test_nothing_is_left_unrendered(text):
    found = {pattern: m.group(0) for pattern in UNRENDERED
             if (m := re.search(pattern, text, re.MULTILINE))}
    assert not found, f"source text in the PDF: {found}"


def test_the_executed_outputs_are_printed(text):
    """Every number the prose quotes from the code ({glue:text}), formatted as the site shows it."""
    page = flat(text)
    missing = []
    for source, _ in toc_pages():
        path = ROOT / f"{source}.md"
        values = glued_values(path)
        for name, fmt in re.findall(r"\{glue:text\}`([\w-]+)(?::([^`]*))?`", path.read_text(encoding="utf-8")):
            value = eval(values[name], {"__builtins__": {}})  # a repr of a plain value
            rendered = flat(format(value, fmt) if fmt else str(value))
            if rendered not in page:
                missing.append(f"{path.name}: {name} = {rendered}")
    assert not missing, f"computed values missing from the PDF: {missing}"
    # A printed cell output (chapter 2) and the tokenizer explorer's static fallback, in the fonts
    # that cover CJK and emoji.
    assert "U+65E5 3 byte(s): e6 97 a5" in page and "日本語" in page and "🤖" in page


def test_figures_are_printed(pdf, text):
    images = subprocess.run(["pdfimages", "-list", str(pdf)], check=True, capture_output=True, text=True).stdout
    assert len(images.splitlines()) - 2 >= 60, "fewer pictures than the book's figures"
    assert len(re.findall(r"^Fig\. \d+\.\d+:", text, re.MULTILINE)) >= 30, "figure captions are missing"


def test_self_check_questions_are_printed_with_their_answers(text):
    chapters = sum(1 for _, number in toc_pages() if number is not None)
    assert text.count("Check your understanding") >= 2 * chapters  # contents and heading
    assert len(re.findall(r"^Answers$", text, re.MULTILINE)) == chapters
    assert len(re.findall(r"^Question 1: [A-E]\.$", text, re.MULTILINE)) >= 1
    assert text.count("Not quite:") >= 2 * chapters
