"""Generate the Colab notebooks paired with the book's chapters, or check they are current.

    python -m tools.notebooks write   # regenerate book/*.ipynb (after a book build: `make notebooks` does both)
    python -m tools.notebooks check   # exit 1, naming each stale or missing file

Each chapter's MyST Markdown file is the source. Its paired .ipynb is derived
from it by Jupytext, with outputs stripped, and made to read like the page:

* the values the build glued into the prose (``{glue:text}``) are written in,
  formatted as on the page. They come from the executed build
  (``_build/jupyter_execute/<chapter>.glue.json``, written by MyST-NB), so
  ``make notebooks`` builds the book first; the chapters are seeded, so a
  reader who reruns a notebook gets the same numbers (wall-clock timings aside).
  Each notebook keeps the values it quotes in its metadata (``glued``), which
  makes regenerating reproducible without a build: ``check`` renders with the
  build's values when a build is there and with the notebook's own otherwise,
  so it catches an edited chapter everywhere and outdated values after a build;
* equations carry their page numbers (``\\tag{4.1}``) and references to them read
  "Eq. 4.1", figures "Fig. 4.1", as on the page (chapter number from _toc.yml,
  then the order of labelled equations and of captioned figures);
* a figure's caption, which MyST-NB keeps in cell metadata, is a Markdown cell
  under its code cell;
* citations, cross-references and directives become plain Markdown;
* the first cell is the set-up, honest about what it does: it installs the
  student package when ``tinyllm`` is missing (pinned: see
  ``tools.bookconfig.package_install_spec``), saying so in one line, and
  imports what the chapter's cells use (``glue``, ``setup_plots``). The
  chapter's own hidden set-up cell is folded into it.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import sys
from pathlib import Path

import jupytext
import nbformat

from tools.bookconfig import ROOT, generator_main, numbered_chapters, package_install_spec, toc_files

SETUP_CELL = '''\
# Set-up. The chapter's code uses the book's library, tinyllm. Where it is not
# installed (a fresh Colab runtime), this installs the version this notebook was
# made with (about 20 s); where it is, nothing is downloaded.
import importlib.util, subprocess, sys
if importlib.util.find_spec("tinyllm") is None:
    print("Installing the book's library: {spec}", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "{spec}"], check=True)'''

BOOK_SETUP_MARK = "from tinyllm.book import"  # the chapter's own (hidden) set-up cell
EXECUTED = "_build/jupyter_execute"
PLACEHOLDER = "\u2047"  # what a value missing from the build becomes: a test and `check` look for it


def front_matter(path: Path) -> str:
    text = path.read_text(encoding="utf-8")
    return text.split("---", 2)[1] if text.startswith("---") else ""


def chapter_sources() -> list[Path]:
    """The executable chapters: files in the TOC whose front matter names a kernel."""
    sources = []
    for docname in toc_files():
        path = ROOT / f"{docname}.md"
        if path.exists() and "kernelspec:" in front_matter(path):
            sources.append(path)
    return sources


# ---------------------------------------------------------------- MyST -> Markdown

def _bib_entries() -> dict[str, str]:
    """citation key -> "Surname et al. YEAR" from references.bib (enough for a notebook)."""
    text = (ROOT / "references.bib").read_text(encoding="utf-8")
    entries = {}
    for match in re.finditer(r"@\w+\{([^,]+),(.*?)\n\}", text, flags=re.S):
        key, body = match.group(1).strip(), match.group(2)
        author = re.search(r"author\s*=\s*\{(.*?)\},\s*\n", body, flags=re.S)
        year = re.search(r"year\s*=\s*\{(\d{4})\}", body)
        names = [n.strip() for n in (author.group(1) if author else key).split(" and ")]
        surname = re.sub(r"[{}\\']", "", names[0].split(",")[0])
        suffix = " et al." if len(names) > 2 else (f" and {re.sub(r'[{}]', '', names[1].split(',')[0])}" if len(names) == 2 else "")
        entries[key] = (f"{surname}{suffix}", year.group(1) if year else "n.d.")
    return entries


def _object_source(file: Path, name: str) -> str:
    """The lines of ``name`` in file, as literalinclude's ``:pyobject:`` takes them ("Class.method" too)."""
    source = file.read_text(encoding="utf-8")
    scope: list[ast.stmt] = ast.parse(source).body
    node = None
    for part in name.split("."):
        node = next((n for n in scope if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == part), None)
        if node is None:
            raise ValueError(f"{file}: no {name!r} for literalinclude")
        scope = node.body
    start = min([node.lineno] + [d.lineno for d in node.decorator_list])
    return "\n".join(source.splitlines()[start - 1 : node.end_lineno])


class Numbers:
    """Equation and figure numbers as the page shows them: "4.1" for the first of chapter 4."""

    def __init__(self):
        self.equations: dict[str, str] = {}  # equation label -> number
        self.figures: dict[str, str] = {}  # figure name -> number
        self.chapter_of: dict[str, int] = {}  # file stem -> chapter number
        for chapter, docname in enumerate(numbered_chapters(), start=1):
            path = ROOT / f"{docname}.md"
            if path.exists():
                self._read(chapter, path)

    def _read(self, chapter: int, path: Path) -> None:
        text = path.read_text(encoding="utf-8")
        text = re.sub(r"^```\{code-cell\}.*?^```\s*$", lambda m: _figure_marker(m.group(0)), text, flags=re.M | re.S)
        for n, label in enumerate(re.findall(r"^\$\$\s*\(([\w-]+)\)\s*$", text, flags=re.M), start=1):
            self.equations[label] = f"{chapter}.{n}"
        for n, name in enumerate(re.findall(r"^FIGURE (\S*)$", text, flags=re.M), start=1):
            if name != "-":
                self.figures[name] = f"{chapter}.{n}"
        self.chapter_of[path.stem] = chapter

    def figure_number(self, source: Path, index: int) -> str:
        """The number of the ``index``-th captioned figure (from 1) of ``source``."""
        return f"{self.chapter_of[source.stem]}.{index}"


def _figure_marker(cell: str) -> str:
    """A code cell reduced to a line saying whether it makes a numbered figure (and its name)."""
    figure = _figure_metadata(cell)
    return f"FIGURE {figure.get('name') or '-'}" if figure.get("caption") else ""


def _figure_metadata(cell_text: str) -> dict:
    import yaml

    match = re.match(r"```\{code-cell\}[^\n]*\n---\n(.*?)\n---\n", cell_text, flags=re.S)
    if not match:
        return {}
    meta = yaml.safe_load(match.group(1)) or {}
    return ((meta.get("mystnb") or {}).get("figure")) or {}


def myst_to_markdown(text: str, chapter_dir: Path, values: dict[str, str] | None = None,
                     numbers: Numbers | None = None) -> str:
    from myst_nb.core.variables import format_plain_text

    bib = _bib_entries()
    values = values or {}
    numbers = numbers or Numbers()

    def cite(match):
        keys = [k.strip() for k in match.group(2).split(",")]
        if match.group(1) == "t":
            return "; ".join(f"{bib[k][0]} ({bib[k][1]})" for k in keys)
        return "(" + "; ".join(f"{bib[k][0]}, {bib[k][1]}" for k in keys) + ")"

    def directive(match):
        name, arg, body = match.group(2), match.group(3).strip(), match.group(4)
        options = dict(re.findall(r"^:(\w+):\s*(.*)$", body, flags=re.M))
        body = re.sub(r"^:\w+:.*\n?", "", body, flags=re.M).strip("\n")
        if name == "quiz":  # self-check questions, each answer in a <details> block
            from tools.quiz import to_markdown
            return to_markdown(body)
        if name == "literalinclude":
            file = Path(os.path.normpath(chapter_dir / arg))
            code = _object_source(file, options["pyobject"]) if "pyobject" in options else file.read_text()
            return f"From `{file.relative_to(ROOT)}`:\n\n```python\n{code}\n```"
        title = arg or name.capitalize()
        quoted = "\n".join(f"> {line}" if line else ">" for line in body.splitlines())
        return f"> **{title}**\n>\n{quoted}"

    def glued(match):
        name, fmt = match.group(1), match.group(2) or ""
        if name not in values:
            return PLACEHOLDER + name
        return format_plain_text(values[name], fmt)

    def equation(match):
        return f"Eq. {numbers.equations.get(match.group(1), PLACEHOLDER + match.group(1))}"

    def figure(match):
        return f"Fig. {numbers.figures.get(match.group(1), PLACEHOLDER + match.group(1))}"

    def tagged(match):
        label = match.group(1)
        return f"\\tag{{{numbers.equations.get(label, PLACEHOLDER + label)}}}\n$$"

    text = re.sub(r"^\(([\w-]+)\)=\s*$\n?", "", text, flags=re.M)  # labels
    text = re.sub(r"^(`{3,}|:{3,})\{([\w-]+)\}([^\n]*)\n(.*?)^\1\s*$", directive, text, flags=re.M | re.S)
    text = re.sub(r"\{cite:(p|t)\}`([^`]+)`", cite, text)
    text = re.sub(r"\{glue:text\}`([\w-]+)(?::([^`]*))?`", glued, text)
    text = re.sub(r"\{(?:ref|numref|doc)\}`([^`<]+?)\s*<[^`]+>`", r"\1", text)
    text = re.sub(r"\{numref\}`([^`]+)`", figure, text)
    text = re.sub(r"\{eq\}`([^`]+)`", equation, text)
    text = re.sub(r"\{ref\}`([^`]+)`", r"\1", text)
    text = re.sub(r"^\$\$\s*\(([\w-]+)\)\s*$", tagged, text, flags=re.M)  # numbered equations
    return text


def build_values(source: Path) -> dict[str, str] | None:
    """name -> text/plain of each value the executed build glued for ``source`` (None: no build)."""
    path = ROOT / EXECUTED / source.relative_to(ROOT).with_suffix(".glue.json")
    if not path.exists():
        return None
    return {name: output["data"]["text/plain"] for name, output in json.loads(path.read_text(encoding="utf-8")).items()}


def committed_values(source: Path) -> dict[str, str]:
    """The values the committed notebook quotes (its metadata), {} when there is none."""
    path = paired_path(source)
    if not path.exists():
        return {}
    return json.loads(path.read_text(encoding="utf-8")).get("metadata", {}).get("glued", {})


def measured(source: Path, name: str) -> bool:
    """Whether glued value ``name`` is a wall-clock measurement, which differs from run to run."""
    if re.search(r"seconds|_ms$|per_s$|speedup|_time", name):
        return True
    clock = r"perf_counter|time\.time|timeit|monotonic"
    for cell in re.findall(r"^```\{code-cell\}.*?^```\s*$", source.read_text(encoding="utf-8"), flags=re.M | re.S):
        line = re.search(rf"glue\(\s*[\"']{re.escape(name)}[\"'],(.*)$", cell, flags=re.M)
        if line:
            timed = set(re.findall(rf"^\s*(\w+)\s*=.*(?:{clock})", cell, flags=re.M))  # x = time.perf_counter() - start
            return bool(re.search(clock, line.group(1))) or any(
                re.search(rf"\b{re.escape(v)}\b", line.group(1)) for v in timed)
    return False


def quoted_names(source: Path) -> list[str]:
    return sorted(set(re.findall(r"\{glue:text\}`([\w-]+)", source.read_text(encoding="utf-8"))))


# ---------------------------------------------------------------- notebooks

def build_notebook(source: Path, values: dict[str, str] | None = None) -> nbformat.NotebookNode:
    """The paired notebook of ``source``; ``values`` are the glued values (default: the build's, else the notebook's)."""
    if values is None:
        values = build_values(source)
        if values is None:
            values = committed_values(source)
    numbers = Numbers()
    notebook = jupytext.read(source, fmt="md:myst")
    setup = SETUP_CELL.format(spec=package_install_spec())
    cells = []
    figures = 0
    for cell in notebook.cells:
        metadata = {k: v for k, v in cell.metadata.items() if k in ("tags", "mystnb")}
        if cell.cell_type == "markdown":
            cells.append(nbformat.v4.new_markdown_cell(myst_to_markdown(cell.source, source.parent, values, numbers),
                                                       metadata=metadata))
        elif cell.cell_type == "code" and BOOK_SETUP_MARK in cell.source and "remove-cell" in metadata.get("tags", []):
            own = [line for line in cell.source.splitlines() if not line.startswith("#") and line.strip()]
            setup += "\n" + "\n".join(own)  # folded into the set-up cell: the chapter's cells need glue()
        elif cell.cell_type == "code":
            cells.append(nbformat.v4.new_code_cell(cell.source, metadata=metadata))
            caption = (metadata.get("mystnb") or {}).get("figure", {}).get("caption")
            if caption:
                figures += 1
                text = myst_to_markdown(" ".join(str(caption).split()), source.parent, values, numbers)
                cells.append(nbformat.v4.new_markdown_cell(f"**Fig. {numbers.figure_number(source, figures)}** {text}",
                                                           metadata={"tags": ["figure-caption"]}))
    cells.insert(0, nbformat.v4.new_code_cell(setup, metadata={"tags": ["colab-setup"]}))
    for i, cell in enumerate(cells):  # stable ids: regenerating changes nothing
        cell["id"] = hashlib.sha1(f"{i}:{cell.source}".encode()).hexdigest()[:12]
    out = nbformat.v4.new_notebook(cells=cells)
    quoted = {name: values[name] for name in quoted_names(source) if name in values}
    out.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
        "glued": quoted,  # the values written into the prose, from the build that made this notebook
    }
    return out


def render(source: Path, values: dict[str, str] | None = None) -> str:
    return nbformat.writes(build_notebook(source, values), version=4) + "\n"


def paired_path(source: Path) -> Path:
    return source.with_suffix(".ipynb")


def stale_notebooks() -> list[str]:
    """Messages, one per chapter whose paired notebook is missing or out of date."""
    problems = []
    sources = chapter_sources()
    for source in sources:
        target = paired_path(source)
        rel = target.relative_to(ROOT)
        if not target.exists():
            problems.append(f"{rel}: missing (paired with {source.relative_to(ROOT)}); run `make notebooks`")
            continue
        built = build_values(source)
        committed = committed_values(source)
        if built is not None:  # a wall-clock measurement differs from build to build: not a reason to regenerate
            built = {name: committed.get(name, value) if measured(source, name) else value
                     for name, value in built.items()}
        if target.read_text(encoding="utf-8") != render(source, committed if built is None else built):
            reason = f"{source.relative_to(ROOT)} changed" if built is None else \
                f"{source.relative_to(ROOT)} or the values its build computed changed"
            problems.append(f"{rel}: stale, {reason} since it was generated; run `make notebooks`")
        elif PLACEHOLDER in target.read_text(encoding="utf-8"):
            problems.append(f"{rel}: quotes values no build has computed; build the book, then `make notebooks`")
    paired = {paired_path(s) for s in sources}
    for orphan in sorted((ROOT / "book").glob("*.ipynb")):
        if orphan not in paired:
            problems.append(f"{orphan.relative_to(ROOT)}: no chapter .md in _toc.yml pairs with it; delete it")
    return problems


def write_all() -> list[Path]:
    written = []
    for source in chapter_sources():
        paired_path(source).write_text(render(source), encoding="utf-8")
        written.append(paired_path(source))
    return written


def main(argv: list[str]) -> int:
    return generator_main(argv, __doc__, {"write": write_all}, stale_notebooks)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
