"""Reading a submitted notebook safely, in the grader (no code runs here).

A submission is judged by the names its code cells define, not by cell
positions or ids: deleted, duplicated or reordered cells are fine, as long as
running the code cells top to bottom defines the names (nbgrader's
cell-position assumptions are what this avoids). Cells the grader must not run
are skipped: nbgrader test cells (they call the checks). IPython syntax (``%magic``, ``!shell``) is neutralised, since the
sandbox has no shell worth calling.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

MAX_NOTEBOOK_BYTES = 200 * 2**20  # a 50 MB notebook full of outputs is fine; 200 MB is not a notebook


class NotebookError(Exception):
    """The file cannot be graded; the message says why, for the student."""


@dataclass
class CodeCell:
    index: int  # position among all cells, for messages ("cell 7")
    source: str
    grade_id: str | None = None
    is_test: bool = False


@dataclass
class Notebook:
    path: Path
    sha256: str
    cells: list[CodeCell] = field(default_factory=list)
    assignment: str | None = None

    @property
    def runnable(self) -> list[CodeCell]:
        return [c for c in self.cells if not c.is_test]


_MAGIC = re.compile(r"^(\s*)([%!]).*$")


def neutralise_ipython(source: str) -> str:
    """Replace line magics and shell escapes by ``pass`` (keeping indentation); drop cell magics."""
    if source.lstrip().startswith("%%"):
        return ""
    return "\n".join(_MAGIC.sub(r"\1pass", line) for line in source.splitlines())


def read_notebook(path: str | Path) -> Notebook:
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as error:
        raise NotebookError(f"the file cannot be read ({error.strerror})") from None
    if size > MAX_NOTEBOOK_BYTES:
        raise NotebookError(f"the file is {size / 2**20:.0f} MB; notebooks over "
                            f"{MAX_NOTEBOOK_BYTES // 2**20} MB are not graded (clear the outputs and resubmit)")
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if not data.strip():
        raise NotebookError("the file is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise NotebookError(f"the file is not UTF-8 text (bad byte at offset {error.start}); "
                            "is it really a .ipynb notebook?") from None
    try:
        content = json.loads(text)
    except json.JSONDecodeError as error:
        raise NotebookError(f"the file is not valid notebook JSON (line {error.lineno}, column "
                            f"{error.colno}: {error.msg}); it may be truncated or not a notebook") from None
    except RecursionError:
        raise NotebookError("the file is not a notebook (JSON nested too deeply)") from None
    if not isinstance(content, dict) or "cells" not in content and "worksheets" not in content:
        raise NotebookError("the file is JSON but not a Jupyter notebook (no cells)")
    major = content.get("nbformat")
    if major != 4:
        raise NotebookError(f"the notebook is saved in format version {major}; open it in a current "
                            "Jupyter (or Colab) and save it again (version 4 is needed)")
    cells = content.get("cells")
    if not isinstance(cells, list):
        raise NotebookError("the notebook's cells are malformed")
    notebook = Notebook(path=path, sha256=digest)
    meta = content.get("metadata")
    if isinstance(meta, dict) and isinstance(meta.get("autograder"), dict):
        assignment = meta["autograder"].get("assignment")
        notebook.assignment = assignment if isinstance(assignment, str) else None
    for index, cell in enumerate(cells):
        if not isinstance(cell, dict) or cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        if isinstance(source, list):
            source = "".join(s for s in source if isinstance(s, str))
        if not isinstance(source, str):
            continue
        cell_meta = cell.get("metadata") if isinstance(cell.get("metadata"), dict) else {}
        nbgrader = cell_meta.get("nbgrader") if isinstance(cell_meta.get("nbgrader"), dict) else {}
        is_test = bool(nbgrader.get("grade")) and not nbgrader.get("solution")
        grade_id = nbgrader.get("grade_id") if isinstance(nbgrader.get("grade_id"), str) else None
        notebook.cells.append(CodeCell(index, neutralise_ipython(source), grade_id, is_test))
    return notebook
