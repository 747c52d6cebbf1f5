"""The built book: executed, clean, citing real works, and opening in Colab."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

from tests.conftest import ROOT, glued_values
from tools import bookconfig, notebooks

CHAPTERS = notebooks.chapter_sources()


def chapter_id(path: Path) -> str:
    return path.stem


def page(built_html: Path, source: Path) -> str:
    return (built_html / source.relative_to(ROOT)).with_suffix(".html").read_text(encoding="utf-8")


def test_every_toc_entry_is_built(built_html):
    for docname in bookconfig.toc_files():
        assert (built_html / f"{docname}.html").exists(), f"{docname}.md was not built"
    assert len(CHAPTERS) >= 1


@pytest.mark.parametrize("source", CHAPTERS, ids=chapter_id)
def test_chapter_has_executed_outputs_and_no_errors(built_html, source):
    text = page(built_html, source)
    assert "cell_output" in text, f"{source.name}: no executed output in the page"
    for marker in ("Traceback (most recent call last)", 'class="output traceback', 'class="output error',
                   'class="output stderr'):
        assert marker not in text, f"{source.name}: the page shows an error or stderr output ({marker})"


@pytest.mark.parametrize("source", CHAPTERS, ids=chapter_id)
def test_no_cell_echoes_a_glued_value(source):
    """``glue`` returns its value, so a cell ending in a bare ``glue(...)`` prints a raw float under the code."""
    import ast

    from tools.execute_book import read_notebook

    for cell in read_notebook(source).cells:
        if cell.cell_type != "code":
            continue
        try:
            body = ast.parse(cell.source).body
        except SyntaxError:  # shell or magic lines
            continue
        last = body[-1] if body else None
        if (isinstance(last, ast.Expr) and isinstance(last.value, ast.Call)
                and getattr(last.value.func, "id", None) == "glue" and len(last.value.args) >= 2):
            line = cell.source.splitlines()[last.end_lineno - 1].split("  #")[0].rstrip()
            assert line.endswith(";"), f"{source.name}: end `{line.strip()}` with ';' or the page shows its value"


NUMBERED_CHAPTERS = [s for s in CHAPTERS if re.match(r"\d\d_", s.name)]


@pytest.mark.parametrize("source", NUMBERED_CHAPTERS, ids=chapter_id)
def test_chapter_follows_the_template(built_html, source):
    """Objectives, at least one figure drawn by its code, a citation, a summary, an exercises link."""
    markdown = source.read_text(encoding="utf-8")
    text = page(built_html, source)
    assert "Learning objectives" in markdown, source.name
    assert "{cite:p}" in markdown or "{cite:t}" in markdown, f"{source.name} cites nothing"
    assert re.search(r'<img[^>]+src="(\.\./_images/|data:image/png)', text), f"{source.name}: no figure drawn by code"
    assert re.search(r'href="[^"]*bibliography\.html#id\d+"|class="reference internal" href="bibliography', text), \
        f"{source.name}: no citation link in the page"
    for section in ("## Summary", "## Exercises"):
        assert section in markdown, f"{source.name} has no {section[3:]} section"
    assert "colab.research.google.com/github/" in text.split('id="exercises"')[-1], \
        f"{source.name}: the Exercises section has no Open-in-Colab link"


@pytest.mark.parametrize("source", CHAPTERS, ids=chapter_id)
def test_numbers_quoted_in_prose_are_the_computed_ones(built_html, source):
    """Each {glue:text} in the prose appears in the page, formatted from the value the code computed."""
    quoted = re.findall(r"\{glue:text\}`([\w-]+)(?::([^`]*))?`", source.read_text(encoding="utf-8"))
    if not quoted:
        pytest.skip(f"{source.name} quotes no computed number")
    values = glued_values(source)
    text = html.unescape(re.sub(r"<[^>]+>", "", page(built_html, source)))
    for name, fmt in quoted:
        assert name in values, f"{source.name}: prose quotes {name!r} but no cell glued it"
        value = eval(values[name], {"__builtins__": {}})  # a repr of a plain number
        rendered = format(value, fmt) if fmt else str(value)
        assert rendered in text, f"{source.name}: {name} = {rendered} is not in the page"


@pytest.mark.parametrize("source", CHAPTERS, ids=chapter_id)
def test_colab_button_targets_the_paired_notebook(built_html, source):
    text = page(built_html, source)
    links = re.findall(r'href="(https://colab\.research\.google\.com/github/[^"]+)"', text)
    assert links, f"{source.name}: no Colab launch button"
    expected = bookconfig.colab_url(source.relative_to(ROOT).with_suffix(".ipynb").as_posix())
    assert html.unescape(links[0]) == expected
    target = ROOT / html.unescape(links[0]).split("/blob/", 1)[1].split("/", 1)[1]
    assert target.exists(), f"{source.name}: Colab link points at missing {target.relative_to(ROOT)}"


def test_paired_notebooks_are_current():
    problems = notebooks.stale_notebooks()
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("source", CHAPTERS, ids=chapter_id)
def test_notebook_first_cell_installs_only_when_missing(source):
    nb = json.loads(notebooks.paired_path(source).read_text(encoding="utf-8"))
    first = nb["cells"][0]
    assert first["cell_type"] == "code" and "colab-setup" in first["metadata"]["tags"]
    code = "".join(first["source"])
    assert bookconfig.package_install_spec() in code
    assert not any(cell.get("outputs") for cell in nb["cells"] if cell["cell_type"] == "code")

    with mock.patch("subprocess.run") as run:
        exec(code, {})  # tinyllm is importable here: nothing to do
        run.assert_not_called()
    with mock.patch("subprocess.run") as run, mock.patch("importlib.util.find_spec", return_value=None):
        exec(code, {})  # as in a fresh Colab runtime
        args = run.call_args.args[0]
        assert args[1:4] == ["-m", "pip", "install"] and bookconfig.package_install_spec() in args


def cited_keys() -> set[str]:
    keys = set()
    for path in (ROOT / "book").glob("*.md"):
        for group in re.findall(r"\{cite:[pt]\}`([^`]+)`", path.read_text(encoding="utf-8")):
            keys.update(k.strip() for k in group.split(","))
    return keys


def bib_entries() -> dict[str, str]:
    text = (ROOT / "references.bib").read_text(encoding="utf-8")
    return {m.group(1).strip(): m.group(2) for m in re.finditer(r"@\w+\{([^,]+),(.*?)\n\}", text, re.S)}


def test_every_citation_key_resolves():
    missing = cited_keys() - set(bib_entries())
    assert not missing, f"cited but not in references.bib: {sorted(missing)}"


def test_bibliography_entries_are_complete():
    for key, body in bib_entries().items():
        fields = set(re.findall(r"^\s*(\w+)\s*=", body, re.M))
        assert {"author", "title", "year"} <= fields, f"{key}: needs author, title and year"
        assert fields & {"journal", "booktitle", "publisher", "institution", "howpublished"}, f"{key}: no venue"


def test_bibliography_page_lists_cited_works(built_html):
    text = html.unescape(re.sub(r"<[^>]+>", "", (built_html / "book" / "bibliography.html").read_text(encoding="utf-8")))
    text = " ".join(text.split())
    entries = bib_entries()
    for key in cited_keys():
        title = re.search(r"title\s*=\s*\{(.*?)\},\s*\n", entries[key], re.S).group(1)
        title = re.sub(r"[{}\\]", "", title).replace("---", "\u2014").replace("--", "\u2013")
        words = title.split()[:4]  # the start of the title, as BibTeX typesets it
        assert " ".join(words).lower() in text.lower(), f"{key}: {' '.join(words)!r} is not on the bibliography page"


@pytest.mark.slow
def test_broken_inputs_fail_the_build_naming_the_file(tmp_path):
    """A failing cell, an unknown citation key and a stale notebook are each reported by file name."""
    book = tmp_path / "book"
    (book / "book").mkdir(parents=True)
    (book / "references.bib").write_text((ROOT / "references.bib").read_text())
    (book / "_config.yml").write_text((ROOT / "_config.yml").read_text())
    # The config's local Sphinx extensions (tools/), the files it names (_static/, tools/latex/).
    shutil.copytree(ROOT / "tools", book / "tools", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "_static", book / "_static")
    shutil.copytree(ROOT / "book" / "_vendor", book / "book" / "_vendor")
    (book / "_toc.yml").write_text(
        "format: jb-book\nroot: book/index\nchapters:\n  - file: book/broken_cell\n  - file: book/bad_cite\n"
    )
    front = (ROOT / "book" / "01_language_modelling.md").read_text().split("---", 2)[1]
    (book / "book" / "index.md").write_text("# Scratch\n\n```{bibliography}\n```\n")
    (book / "book" / "broken_cell.md").write_text(
        f"---{front}---\n# Broken\n\n```{{code-cell}} ipython3\n1 / 0\n```\n"
    )
    (book / "book" / "bad_cite.md").write_text(f"---{front}---\n# Bad\n\nSee {{cite:p}}`no_such_key2099`.\n")
    result = subprocess.run(
        [str(Path(sys.executable).parent / "jupyter-book"), "build", "-n", "-W", "--keep-going", str(book)],
        capture_output=True, text=True, timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "broken_cell" in output and "ZeroDivisionError" in output
    assert "bad_cite" in output and "no_such_key2099" in output


def test_stale_notebook_is_named(tmp_path, monkeypatch):
    source = tmp_path / "book" / "01_language_modelling.md"
    source.parent.mkdir()
    original = ROOT / "book" / "01_language_modelling.md"
    source.write_text(original.read_text() + "\nA new sentence.\n")
    (tmp_path / "book" / "01_language_modelling.ipynb").write_text(notebooks.render(original))
    (tmp_path / "references.bib").write_text((ROOT / "references.bib").read_text())
    (tmp_path / "tinyllm").symlink_to(ROOT / "tinyllm")
    monkeypatch.setattr(notebooks, "ROOT", tmp_path)
    monkeypatch.setattr(notebooks, "chapter_sources", lambda: [source])
    problems = notebooks.stale_notebooks()
    assert problems == [
        "book/01_language_modelling.ipynb: stale, book/01_language_modelling.md changed since it "
        "was generated; run `make notebooks`"
    ]


def test_links_set_once_agree_with_config():
    """The repository and site URLs live in _config.yml; code that runs without it must agree."""
    from autograder.grading.registry import BOOK_URL
    from tinyllm import colab

    url, branch = bookconfig.repository()
    assert (colab.REPOSITORY, colab.BRANCH) == (url, branch)
    assert BOOK_URL == bookconfig.config()["html"]["baseurl"]
    assert colab.colab_url("x.ipynb") == bookconfig.colab_url("x.ipynb")


def test_every_exercise_is_linked_from_the_book(built_html):
    from tinyllm.colab import EXERCISES, colab_url, exercise_path

    index = (built_html / "book" / "exercises.html").read_text(encoding="utf-8")
    chapters = "".join(page(built_html, source) for source in CHAPTERS)
    for assignment in EXERCISES:
        link = html.escape(colab_url(exercise_path(assignment)))
        assert link in index, f"the exercises page does not link {assignment}"
        assert link in chapters, f"no chapter links {assignment}"
        assert (ROOT / exercise_path(assignment)).exists()


# The content column shows about this many characters of code; a longer line is cut off at its edge.
COLUMN = 80


def part_chapters(caption_start: str) -> list[Path]:
    """The chapters of the _toc.yml parts whose caption starts with ``caption_start``."""
    import yaml

    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    return [ROOT / f"{entry['file']}.md" for part in toc["parts"] if part["caption"].startswith(caption_start)
            for entry in part["chapters"]]


PART_TWO = part_chapters("Part II:")


def test_part_two_is_found():
    assert [p.stem for p in PART_TWO][:2] == ["10_modern_block", "11_fast_generation"]


@pytest.mark.parametrize("source", PART_TWO, ids=chapter_id)
def test_code_lines_fit_the_content_column(source):
    """Part II's code is read on the page without scrolling sideways (Part I has yet to follow)."""
    long = []
    for cell in jupytext_cells(source):
        if cell.cell_type == "code":
            long += [line for line in cell.source.splitlines() if len(line) > COLUMN]
    assert not long, f"{source.name}: {len(long)} code lines longer than {COLUMN} characters:\n" + "\n".join(long)


@pytest.mark.parametrize("source", PART_TWO, ids=chapter_id)
def test_printed_output_fits_the_column_and_comes_in_one_block_per_cell(built_html, source):
    """What a cell prints is read without scrolling, and a loop's lines form one block, not one box each."""
    text = page(built_html, source)
    outputs = re.findall(r'<div class="cell_output docutils container">(.*?)</div>\s*</div>\s*</div>', text, re.S)
    assert outputs, f"{source.name}: no cell output found in the page"
    long, split = [], []
    for output in outputs:
        if output.count('class="output stream') > 1:
            split.append(output[:200])
        for block in re.findall(r"<pre>(.*?)</pre>", output, re.S):
            lines = html.unescape(re.sub(r"<[^>]+>", "", block)).splitlines()
            long += [line for line in lines if len(line) > COLUMN]
    assert not split, f"{source.name}: a cell's printed lines are split into several blocks: {split[:2]}"
    assert not long, f"{source.name}: printed lines longer than {COLUMN} characters:\n" + "\n".join(long)


def jupytext_cells(source: Path):
    import jupytext

    return jupytext.read(source, fmt="md:myst").cells
