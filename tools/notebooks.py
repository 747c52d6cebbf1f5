"""Generate the Colab notebooks paired with the book's chapters, or check they are current.

    python -m tools.notebooks write   # regenerate book/*.ipynb from book/*.md
    python -m tools.notebooks check   # exit 1, naming each stale or missing file

Each chapter's MyST Markdown file is the source. Its paired .ipynb is derived
from it by Jupytext, with outputs stripped, a first cell that installs the
book's library in Colab (the repository URL comes from _config.yml), and the
MyST-only markup (citations, glued numbers, cross-references, directives)
rewritten as plain Markdown that Colab can display.
"""

from __future__ import annotations

import ast
import os
import hashlib
import re
import sys
from pathlib import Path

import jupytext
import nbformat

from tools.bookconfig import ROOT, generator_main, package_install_spec, toc_files

SETUP_CELL = '''\
# Set-up for Google Colab: install the book's library (tinyllm) when it is missing.
# Locally, and when the book is built, it is already installed and this does nothing.
import importlib.util, subprocess, sys
if importlib.util.find_spec("tinyllm") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "{spec}"], check=True)'''


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
    source = file.read_text(encoding="utf-8")
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            return "\n".join(source.splitlines()[start - 1 : node.end_lineno])
    raise ValueError(f"{file}: no top-level {name!r} for literalinclude")


def myst_to_markdown(text: str, chapter_dir: Path) -> str:
    bib = _bib_entries()

    def cite(match):
        keys = [k.strip() for k in match.group(2).split(",")]
        if match.group(1) == "t":
            return "; ".join(f"{bib[k][0]} ({bib[k][1]})" for k in keys)
        return "(" + "; ".join(f"{bib[k][0]}, {bib[k][1]}" for k in keys) + ")"

    def directive(match):
        name, arg, body = match.group(2), match.group(3).strip(), match.group(4)
        options = dict(re.findall(r"^:(\w+):\s*(.*)$", body, flags=re.M))
        body = re.sub(r"^:\w+:.*\n?", "", body, flags=re.M).strip("\n")
        if name == "literalinclude":
            file = Path(os.path.normpath(chapter_dir / arg))
            code = _object_source(file, options["pyobject"]) if "pyobject" in options else file.read_text()
            return f"From `{file.relative_to(ROOT)}`:\n\n```python\n{code}\n```"
        title = arg or name.capitalize()
        quoted = "\n".join(f"> {line}" if line else ">" for line in body.splitlines())
        return f"> **{title}**\n>\n{quoted}"

    text = re.sub(r"^\(([\w-]+)\)=\s*$\n?", "", text, flags=re.M)  # labels
    text = re.sub(r"^(`{3,}|:{3,})\{([\w-]+)\}([^\n]*)\n(.*?)^\1\s*$", directive, text, flags=re.M | re.S)
    text = re.sub(r"\{cite:(p|t)\}`([^`]+)`", cite, text)
    text = re.sub(r"\{glue:text\}`([\w-]+)(?::[^`]*)?`", r"`\1` (printed by the code)", text)
    text = re.sub(r"\{(?:ref|numref|doc)\}`([^`<]+?)\s*<[^`]+>`", r"\1", text)
    text = re.sub(r"\{numref\}`([^`]+)`", r"the figure *\1*", text)
    text = re.sub(r"\{eq\}`([^`]+)`", r"equation (\1)", text)
    text = re.sub(r"\{ref\}`([^`]+)`", r"\1", text)
    text = re.sub(r"^(\$\$)\s*\(([\w-]+)\)\s*$", r"\1", text, flags=re.M)  # equation labels
    return text


# ---------------------------------------------------------------- notebooks

def build_notebook(source: Path) -> nbformat.NotebookNode:
    notebook = jupytext.read(source, fmt="md:myst")
    cells = [nbformat.v4.new_code_cell(SETUP_CELL.format(spec=package_install_spec()),
                                       metadata={"tags": ["colab-setup"]})]
    for cell in notebook.cells:
        metadata = {k: v for k, v in cell.metadata.items() if k in ("tags", "mystnb")}
        if cell.cell_type == "markdown":
            cells.append(nbformat.v4.new_markdown_cell(myst_to_markdown(cell.source, source.parent), metadata=metadata))
        elif cell.cell_type == "code":
            cells.append(nbformat.v4.new_code_cell(cell.source, metadata=metadata))
    for i, cell in enumerate(cells):  # stable ids: regenerating changes nothing
        cell["id"] = hashlib.sha1(f"{i}:{cell.source}".encode()).hexdigest()[:12]
    out = nbformat.v4.new_notebook(cells=cells)
    out.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "colab": {"provenance": []},
    }
    return out


def render(source: Path) -> str:
    return nbformat.writes(build_notebook(source), version=4) + "\n"


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
        elif target.read_text(encoding="utf-8") != render(source):
            problems.append(f"{rel}: stale, {source.relative_to(ROOT)} changed since it was generated; run `make notebooks`")
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
