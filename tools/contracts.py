"""Contract tables: every sentence of an exercise's instructions, and the checks that fail when it is broken.

An assignment's instructions are what its notebook tells a student: the
markdown cells and the docstrings of the code the student writes (the
solution cells' functions, classes and methods). ``autograder/contracts/
<assignment>.toml`` classifies each of their sentences:

    [[sentence]]
    text = "`rms_norm(x, weight, eps=1e-6)` normalises the last dimension, as `F.rms_norm`."
    checks = ["rms_norm_public", "rms_norm_hidden"]     # the checks that fail when it is broken

    [[sentence]]
    text = "Chapter: [A modern block](https://...)."
    note = "where to read"                              # constrains nothing: why

A constraining sentence names at least one public check (a mistake a hidden
check can catch is one a student can see in the notebook too). ``breaks``
(optional) are realistic violations of the sentence, made in a solution cell
(``{cell, old, new}`` as in ``tools.exercises.solution_namespace``, and
``fails``: the checks it must fail, by default all the sentence's); the test
grades each one and requires those checks to fail. The same file lists
the mutants that behave as the contract asks (``[[equivalent]]``, see
:mod:`tools.mutation`).

    python -m tools.contracts skeleton ASSIGNMENT   # print the table's sentences for a new assignment
    python -m tools.contracts check                 # exit 1 naming each unclassified or vanished sentence
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "solutions"
CONTRACTS = ROOT / "autograder" / "contracts"

# A sentence ends at . ? ! or : followed by space and a capital, a backtick, a quote or a formula.
_END = re.compile(r"(?<=[.?!])\s+(?=[A-Z`$(\"'*])")
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "al.", "Fig.", "Eq.")
_ITEM = re.compile(r"^\s*(?:[-*]|\d{1,2}\.)\s+")


def _split(paragraph: str) -> list[str]:
    text = re.sub(r"\s+", " ", paragraph).strip()
    if not text:
        return []
    pieces, start = [], 0
    for match in _END.finditer(text):
        head = text[start:match.start()]
        if head.endswith(_ABBREVIATIONS) or head.endswith(".."):
            continue
        pieces.append(head)
        start = match.end()
    pieces.append(text[start:])
    return [p.strip() for p in pieces if p.strip()]


def _paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs; display maths, list items and headings on their own."""
    out, current, in_math = [], [], False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("$$"):
            if current and not in_math:
                out.append("\n".join(current))
                current = []
            current.append(line)
            if in_math or (stripped.count("$$") == 2 and len(stripped) > 2):
                out.append("\n".join(current))
                current, in_math = [], False
            else:
                in_math = True
            continue
        if in_math:
            current.append(line)
            continue
        if not stripped or stripped.startswith("#") or _ITEM.match(line):
            if current:
                out.append("\n".join(current))
            current = [] if not stripped or stripped.startswith("#") else [_ITEM.sub("", line)]
            continue
        current.append(line)
    if current:
        out.append("\n".join(current))
    return out


def _sentences(text: str) -> list[str]:
    found = []
    for paragraph in _paragraphs(text):
        if paragraph.lstrip().startswith("$$"):
            found.append(re.sub(r"\s+", " ", paragraph).strip())
        else:
            found += _split(paragraph)
    return found


def _docstrings(source: str) -> list[tuple[str, str]]:
    """(qualified name, docstring) of every function, class and method defined in ``source``."""
    found = []

    def visit(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                doc = ast.get_docstring(child)
                if doc:
                    found.append((prefix + child.name, doc))
                visit(child, f"{prefix}{child.name}.")

    visit(ast.parse(source), "")
    return found


def instructions(assignment: str) -> list[str]:
    """Every sentence the notebook of ``assignment`` tells a student, in notebook order (duplicates once)."""
    notebook = json.loads((SOLUTIONS / assignment / f"{assignment}.ipynb").read_text(encoding="utf-8"))
    found: list[str] = []
    for cell in notebook["cells"]:
        source = "".join(cell["source"])
        meta = cell["metadata"].get("nbgrader", {})
        if cell["cell_type"] == "markdown":
            found += _sentences(source)
        elif meta.get("solution"):
            for _, doc in _docstrings(source):
                found += _sentences(doc)
    unique = []
    for sentence in found:
        if sentence not in unique:
            unique.append(sentence)
    return unique


def _toml(path: Path) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads(path.read_text(encoding="utf-8"))


def table(assignment: str) -> dict:
    path = CONTRACTS / f"{assignment}.toml"
    return _toml(path) if path.exists() else {}


def problems(assignment: str, check_ids: dict[str, bool]) -> list[str]:
    """What is wrong with an assignment's table: ``check_ids`` maps each of its check ids to whether it is hidden."""
    path = CONTRACTS / f"{assignment}.toml"
    if not path.exists():
        return [f"{assignment}: no contract table ({path.relative_to(ROOT)}); start one with "
                f"`python -m tools.contracts skeleton {assignment}`"]
    entries = table(assignment).get("sentence", [])
    text = instructions(assignment)
    listed = [e.get("text", "") for e in entries]
    found = []
    for sentence in text:
        if sentence not in listed:
            found.append(f"{assignment}: a sentence of the notebook is not in its contract table: {sentence!r}")
    for entry in entries:
        sentence, checks = entry.get("text", ""), entry.get("checks", [])
        if sentence not in text:
            found.append(f"{assignment}: the contract table has a sentence the notebook no longer says: {sentence!r}")
        if listed.count(sentence) > 1:
            found.append(f"{assignment}: the sentence is listed twice: {sentence!r}")
        if not checks and not entry.get("note"):
            found.append(f"{assignment}: a sentence with no check and no note saying why it needs none: {sentence!r}")
        unknown = [c for c in checks if c not in check_ids]
        if unknown:
            found.append(f"{assignment}: unknown check ids {unknown} for {sentence!r}")
        if checks and all(check_ids.get(c, True) for c in checks):
            found.append(f"{assignment}: only hidden checks for {sentence!r}: name the public check that fails too")
    return found


def skeleton(assignment: str) -> str:
    """A table to start from: every sentence, none classified yet."""
    out = [f"# The contract of {assignment}: each sentence of its notebook and the checks that fail when it is",
           "# broken (tools/contracts.py). A sentence that constrains nothing says why in `note`.", ""]
    for sentence in instructions(assignment):
        out += ["[[sentence]]", f"text = {json.dumps(sentence, ensure_ascii=False)}", "checks = []", ""]
    return "\n".join(out)


def main(argv: list[str]) -> int:
    from autograder.grading.registry import assignments, checks_for

    if len(argv) == 2 and argv[0] == "skeleton":
        print(skeleton(argv[1]))
        return 0
    if argv == ["check"]:
        found = []
        for assignment in assignments():
            found += problems(assignment, {c.id: c.hidden for c in checks_for(assignment)})
        print("\n".join(found) or "every sentence of every notebook is in its contract table")
        return 1 if found else 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
