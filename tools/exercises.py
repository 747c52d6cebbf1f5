"""Build the nbgrader source notebooks (solutions/) from recipes and the book's library.

    python -m tools.exercises write     # regenerate solutions/<a>/<a>.ipynb
    python -m tools.exercises release   # nbgrader generate_assignment -> exercises/
    python -m tools.exercises check     # exit 1 naming each stale solution notebook

A recipe (tools/exercise_recipes/<assignment>.md, MyST Markdown) holds the
instructions and says, per code cell, what goes there:

* tag ``setup``: the set-up cell (Colab install, ``from autograder import check``),
  followed by the cell's own lines;
* tag ``given``: ``# from: module:name`` lines, copied verbatim from the library;
* tag ``solution``: ``# from: module:name`` lines. Each function keeps its
  signature and docstring; its body goes between ``### BEGIN SOLUTION`` and
  ``### END SOLUTION`` (nbgrader replaces it by a stub for students);
* tag ``check``: a target name. It becomes a locked test cell calling
  ``check(target)`` worth the points of the check ``<target>_public``, one more
  locked cell ``check(target, part)`` for each further public check
  ``<target>_<part>_public`` (TinyGPT's ``parameters`` and ``init``), then a
  test cell whose ``### BEGIN HIDDEN TESTS`` block runs the hidden checks.

A last, locked cell prints the public points so far and what is left
(:func:`autograder.progress`).

So the solution code IS the library's code: the book, the solutions and the
grader's oracle cannot drift apart.
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import sys
import textwrap
from pathlib import Path

import jupytext
import nbformat

from tools.bookconfig import ROOT, generator_main, package_install_spec

RECIPES = ROOT / "tools" / "exercise_recipes"
SOLUTIONS = ROOT / "solutions"

SETUP = '''\
# Set-up. Where the book's library and the exercise checks are not installed (a
# fresh Colab runtime), this installs the version this notebook was made with
# (about 20 s); where they are, nothing is downloaded.
import importlib.util, subprocess, sys
if importlib.util.find_spec("autograder") is None:
    print("Installing the book's library and checks: {spec}", flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "{spec}"], check=True)

from autograder import check'''

HIDDEN = '''\
# Hidden checks run here when your notebook is graded.
### BEGIN HIDDEN TESTS
from autograder.hidden import run_hidden
run_hidden("{target}")
### END HIDDEN TESTS'''


PROGRESS = '''\
# Your public points so far, and what is left to do.
from autograder import progress
progress("{assignment}")'''


def _nbgrader(grade_id: str, *, grade: bool = False, solution: bool = False, locked: bool = False,
              points: float | None = None) -> dict:
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked, "schema_version": 3, "solution": solution}
    if points is not None:
        meta["points"] = points
    return {"nbgrader": meta}


def _object(path: str) -> tuple[str, ast.AST, list[str]]:
    module_name, _, name = path.strip().partition(":")
    module = importlib.import_module(module_name)
    source = Path(inspect.getsourcefile(module)).read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
            return name, node, source.splitlines()
    raise ValueError(f"{module_name} has no top-level {name}")


def _start(node: ast.AST) -> int:
    return min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])


def _function_with_solution(node: ast.FunctionDef, lines: list[str]) -> list[str]:
    """Signature (+ docstring, + a leading super().__init__()) kept; the rest marked as solution."""
    body = node.body
    keep_until = node.body[0].lineno - 1  # the line before the first statement
    first = 0
    if ast.get_docstring(node) is not None:
        keep_until, first = body[0].end_lineno, 1
    if first < len(body) and "super().__init__(" in ast.unparse(body[first]):
        keep_until, first = body[first].end_lineno, first + 1
    head = lines[_start(node) - 1 : keep_until]
    if first >= len(body):
        return head
    indent = " " * body[first].col_offset
    return head + [f"{indent}### BEGIN SOLUTION"] + lines[body[first].lineno - 1 : node.end_lineno] + [
        f"{indent}### END SOLUTION"]


def solution_source(path: str) -> str:
    name, node, lines = _object(path)
    if isinstance(node, ast.FunctionDef):
        return "\n".join(_function_with_solution(node, lines))
    out = lines[_start(node) - 1 : node.body[0].lineno - 1]
    previous_end = node.body[0].lineno - 1
    for item in node.body:
        start = _start(item)
        out += lines[previous_end : start - 1]  # blank lines and comments between members
        if isinstance(item, ast.FunctionDef):
            out += _function_with_solution(item, lines)
        else:
            out += lines[start - 1 : item.end_lineno]
        previous_end = item.end_lineno
    return "\n".join(out)


def given_source(path: str) -> str:
    name, node, lines = _object(path)
    return "\n".join(lines[_start(node) - 1 : node.end_lineno])


def _paths(source: str) -> list[str]:
    return [line.split("# from:", 1)[1].strip() for line in source.splitlines() if line.startswith("# from:")]


def parts(checks, target: str) -> list[str]:
    """The parts of ``target``'s further public checks: ``TinyGPT_init_public`` -> "init"."""
    prefix, suffix = f"{target}_", "_public"
    return [c.id[len(prefix):-len(suffix)] for c in checks if not c.hidden and c.target == target
            and c.id.startswith(prefix) and c.id.endswith(suffix) and c.id != f"{target}_public"]


def build(recipe: Path) -> nbformat.NotebookNode:
    from autograder.grading.registry import checks_for

    assignment = recipe.stem
    checks = {c.id: c for c in checks_for(assignment)}
    source_nb = jupytext.read(recipe, fmt="md:myst")
    cells = []
    counter = 0
    for cell in source_nb.cells:
        tags = cell.metadata.get("tags", [])
        if cell.cell_type == "markdown":
            counter += 1
            cells.append(nbformat.v4.new_markdown_cell(cell.source, metadata=_nbgrader(
                f"md_{counter}", locked=True)))
        elif "setup" in tags:
            code = SETUP.format(spec=package_install_spec())
            extra = cell.source.strip()
            cells.append(nbformat.v4.new_code_cell(code + ("\n" + extra if extra else ""), metadata={
                **_nbgrader("setup", locked=True), "tags": ["colab-setup"]}))
        elif "given" in tags:
            code = "\n\n\n".join(given_source(p) for p in _paths(cell.source))
            grade_id = "given_" + "_".join(p.rsplit(":", 1)[1] for p in _paths(cell.source))
            cells.append(nbformat.v4.new_code_cell(code, metadata=_nbgrader(grade_id, locked=True)))
        elif "solution" in tags:
            paths = _paths(cell.source)
            code = "\n\n\n".join(solution_source(p) for p in paths)
            grade_id = "_".join(p.rsplit(":", 1)[1] for p in paths)
            cells.append(nbformat.v4.new_code_cell(code, metadata=_nbgrader(grade_id, solution=True)))
        elif "check" in tags:
            target = cell.source.strip()
            public, hidden = checks.get(f"{target}_public"), checks.get(f"{target}_hidden")
            if public is None or hidden is None:
                raise ValueError(f"{recipe.name}: no public/hidden checks registered for {target!r}")
            cells.append(nbformat.v4.new_code_cell(f'check("{target}")', metadata=_nbgrader(
                public.id, grade=True, locked=True, points=public.points)))
            for part in parts(checks.values(), target):  # further public checks of the same name
                entry = checks[f"{target}_{part}_public"]
                cells.append(nbformat.v4.new_code_cell(f'check("{target}", "{part}")', metadata=_nbgrader(
                    entry.id, grade=True, locked=True, points=entry.points)))
            cells.append(nbformat.v4.new_code_cell(HIDDEN.format(target=target), metadata=_nbgrader(
                hidden.id, grade=True, locked=True, points=hidden.points)))
        else:
            cells.append(nbformat.v4.new_code_cell(cell.source))
    cells.append(nbformat.v4.new_code_cell(PROGRESS.format(assignment=assignment), metadata=_nbgrader(
        "progress", locked=True)))
    for i, cell in enumerate(cells):  # stable ids: regenerating changes nothing
        cell["id"] = hashlib.sha1(f"{assignment}:{i}:{cell.source}".encode()).hexdigest()[:12]
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "autograder": {"assignment": assignment},
    }
    return notebook


def render(recipe: Path) -> str:
    return nbformat.writes(build(recipe), version=4) + "\n"


def target_path(recipe: Path) -> Path:
    return SOLUTIONS / recipe.stem / f"{recipe.stem}.ipynb"


def recipes() -> list[Path]:
    return sorted(RECIPES.glob("*.md"))


def stale() -> list[str]:
    problems = []
    for recipe in recipes():
        target = target_path(recipe)
        if not target.exists():
            problems.append(f"{target.relative_to(ROOT)}: missing; run `make solutions`")
        elif target.read_text(encoding="utf-8") != render(recipe):
            problems.append(f"{target.relative_to(ROOT)}: stale (its recipe, the library or the checks "
                            "changed); run `make solutions`")
    return problems


def release(destination: Path, assignments: list[str] | None = None) -> list[Path]:
    """Run nbgrader's generate_assignment for each assignment into ``destination``.

    A throw-away gradebook is used: the release must not depend on (or touch) an
    instructor's gradebook, and nbgrader needs one to compute cell checksums.
    """
    import os
    import tempfile

    from nbgrader.apps import NbGraderAPI

    # nbgrader runs `alembic` by name when it creates a gradebook: it must find
    # the one installed beside this Python, even when the venv is not activated.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    from traitlets.config import Config

    names = assignments or [r.stem for r in recipes()]
    with tempfile.TemporaryDirectory() as scratch:
        config = Config()
        config.CourseDirectory.root = str(ROOT)
        config.CourseDirectory.source_directory = "solutions"
        config.CourseDirectory.release_directory = str(destination)
        config.CourseDirectory.db_url = f"sqlite:///{scratch}/gradebook.db"
        config.CourseDirectory.course_id = "llm-foundations"
        config.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
        api = NbGraderAPI(config=config)
        for name in names:
            result = api.generate_assignment(name, force=True)
            if not result["success"]:
                raise RuntimeError(f"nbgrader generate_assignment {name} failed:\n{result['log']}")
    return [destination / name / f"{name}.ipynb" for name in names]


def write_all() -> list[Path]:
    written = []
    for recipe in recipes():
        target = target_path(recipe)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(render(recipe), encoding="utf-8")
        written.append(target)
    return written


def solution_namespace(assignment: str, cell: str | None = None, old: str = "", new: str = "") -> dict:
    """The names the reference solution notebook defines, as a notebook's globals.

    ``old`` is replaced by ``new`` in the solution cell whose grade_id is
    ``cell`` first (a student's mistake); test cells are not run.
    """
    import json

    notebook = json.loads(target_path(RECIPES / f"{assignment}.md").read_text(encoding="utf-8"))
    names: dict = {"__name__": "__main__"}
    changed = False
    for c in notebook["cells"]:
        meta = c["metadata"].get("nbgrader", {})
        source = "".join(c["source"])
        if c["cell_type"] != "code" or meta.get("grade") or meta.get("grade_id") == "progress":
            continue
        if meta.get("grade_id") == cell:
            if old not in source:
                raise ValueError(f"{old!r} is not in cell {cell!r}")
            source, changed = source.replace(old, new), True
        exec(compile(source, f"<cell {meta.get('grade_id')}>", "exec"), names)
    if cell is not None and not changed:
        raise ValueError(f"{assignment} has no solution cell {cell!r}")
    return names


def main(argv: list[str]) -> int:
    return generator_main(argv, __doc__, {"write": write_all, "release": lambda: release(ROOT / "exercises")},
                          stale)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
