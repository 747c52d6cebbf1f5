"""Mutation testing of the exercise checks: how many wrong solutions do they catch?

A *mutant* is the reference solution notebook of an assignment (``solutions/``,
generated from ``tinyllm``) with one small change in the code between a
``### BEGIN SOLUTION`` and ``### END SOLUTION`` marker: the code a student
writes. The changes are mutmut's operators (``mutmut.mutation.mutators``: a
number plus one, an operator swapped, ``<`` for ``<=``, an argument removed or
replaced by ``None``, an assignment of ``None``, ``True`` for ``False``, a
string altered), applied one at a time. Each mutant is graded as a submission
by the real grader (sandboxed worker, public and hidden checks); it is
*killed* when it loses a point, and a survivor is either a weakness of the
checks or *equivalent*: it behaves as the contract asks. The equivalent ones
are listed, each with its reason, in ``autograder/contracts/<assignment>.toml``
(``[[equivalent]]``, keyed by :attr:`Mutant.key`).

Not mutated, by rule: docstrings and comments (not code), type annotations
(mutmut skips them), and the statements that raise an exception (the contract
names the exception's type, never its message; the conditions guarding them
are mutated). Decorators are kept as they are and the functions under them
mutated like the others.

    python bench/bench_mutation.py     # every mutant of every assignment, the table
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
import random
import re
import sys
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOLUTIONS = ROOT / "solutions"
CONTRACTS = ROOT / "autograder" / "contracts"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
DECORATOR = "# mutation-kept-decorator: "


@dataclass(frozen=True)
class Mutant:
    assignment: str
    cell: str  # the nbgrader grade_id of the solution cell
    function: str  # the qualified name of the function changed, e.g. "AdamW.step"
    before: str  # the changed line(s) of the reference, stripped and joined by " / "
    after: str  # the same lines in the mutant
    occurrence: int  # 1 unless the same change is made at several places of the same function
    source: str = field(repr=False, compare=False)  # the whole mutated cell

    @property
    def key(self) -> str:
        """How the equivalents list names this mutant: stable while the reference line stays the same."""
        suffix = f" #{self.occurrence}" if self.occurrence > 1 else ""
        return f"{self.function}: {self.before} -> {self.after}{suffix}"

    def notebook(self) -> dict:
        """The reference solution notebook with this mutant's cell in place of the original."""
        notebook = json.loads(_solution_path(self.assignment).read_text(encoding="utf-8"))
        for cell in notebook["cells"]:
            if cell["metadata"].get("nbgrader", {}).get("grade_id") == self.cell:
                cell["source"] = self.source
        return notebook

    def file_name(self) -> str:
        return f"{self.assignment}-{hashlib.sha1(self.key.encode()).hexdigest()[:12]}.ipynb"


def _solution_path(assignment: str) -> Path:
    return SOLUTIONS / assignment / f"{assignment}.ipynb"


def assignments() -> list[str]:
    """Every assignment the checks name that has a reference solution (discovered, never listed)."""
    from autograder.grading.registry import assignments as discovered

    return [a for a in discovered() if _solution_path(a).exists()]


def solution_cells(assignment: str) -> list[tuple[str, str]]:
    """(grade_id, source) of each solution cell of the reference notebook."""
    notebook = json.loads(_solution_path(assignment).read_text(encoding="utf-8"))
    return [(c["metadata"]["nbgrader"]["grade_id"], "".join(c["source"])) for c in notebook["cells"]
            if c["metadata"].get("nbgrader", {}).get("solution")]


def _unhide_decorators(source: str) -> str:
    return "\n".join(line.replace(DECORATOR, "@", 1) if line.lstrip().startswith(DECORATOR) else line
                     for line in source.split("\n"))


def _hide_decorators(source: str) -> str:
    """Decorators as comments: mutmut leaves decorated functions alone, and we want their bodies."""
    return "\n".join(line.replace("@", DECORATOR, 1) if line.lstrip().startswith("@") else line
                     for line in source.split("\n"))


def _protected_lines(source: str) -> set[int]:
    """1-based lines nobody may mutate: outside the solution markers, and raise statements."""
    import ast

    lines = source.split("\n")
    protected, inside = set(), False
    for number, line in enumerate(lines, start=1):
        if BEGIN in line:
            inside = True
        elif END in line:
            inside = False
        if not inside or BEGIN in line:
            protected.add(number)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Raise):
            protected.update(range(node.lineno, node.end_lineno + 1))
    return protected


def _function_at(source: str) -> dict[int, str]:
    """Line -> the qualified name of the innermost function (or class) holding it."""
    import ast

    where: dict[int, str] = {}

    def visit(node, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                for line in range(child.lineno, child.end_lineno + 1):
                    where[line] = name
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return where


def mutate_source(source: str) -> list[tuple[int, str]]:
    """Each mutmut mutation of ``source``'s solution code: (first changed line, mutated source)."""
    import libcst as cst
    from mutmut.mutation.file_mutation import MutationVisitor
    from mutmut.mutation.mutators import mutation_operators
    from mutmut.mutation.pragma_handling import IgnoredCode

    hidden = _hide_decorators(source)
    module = cst.parse_module(hidden)
    wrapper = cst.MetadataWrapper(module)
    visitor = MutationVisitor(mutation_operators, IgnoredCode(_protected_lines(hidden), set(), set()))
    mutated_module = wrapper.visit(visitor)
    results, seen = [], set()
    original = source.split("\n")
    for mutation in visitor.mutations:
        code = _unhide_decorators(mutated_module.deep_replace(mutation.original_node, mutation.mutated_node).code)
        if code == source or code in seen:
            continue
        seen.add(code)
        changed = next(i for i, (a, b) in enumerate(zip(original, code.split("\n"))) if a != b)
        results.append((changed + 1, code))
    return results


def _changed_lines(before: str, after: str) -> tuple[str, str]:
    old, new = before.split("\n"), after.split("\n")
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    removed, added = [], []
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "equal":
            removed += old[i1:i2]
            added += new[j1:j2]
    clean = lambda lines: " / ".join(re.sub(r"\s+#.*$", "", line).strip() for line in lines)  # noqa: E731
    return clean(removed), clean(added)


def mutants(assignment: str) -> list[Mutant]:
    """Every mutant of ``assignment``'s reference solution, in cell and line order."""
    return list(_mutants(assignment, _solution_path(assignment).read_bytes()))


@functools.lru_cache(maxsize=None)
def _mutants(assignment: str, notebook: bytes) -> tuple[Mutant, ...]:
    found: list[Mutant] = []
    counts: dict[str, int] = {}
    for cell, source in solution_cells(assignment):
        functions = _function_at(source)
        for line, code in mutate_source(source):
            before, after = _changed_lines(source, code)
            function = functions.get(line, cell)
            base = f"{function}: {before} -> {after}"
            counts[base] = counts.get(base, 0) + 1
            found.append(Mutant(assignment, cell, function, before, after, counts[base], code))
    return tuple(found)


# ---------------------------------------------------------------- grading

@dataclass
class Outcome:
    mutant: Mutant
    score: float
    max_score: float
    failed: dict[str, str]  # check id -> status, for every check the mutant did not pass

    @property
    def killed(self) -> bool:
        return self.score < self.max_score


def grade(mutants: Iterable[Mutant], jobs: int = 2, timeout: float = 10.0, progress=None) -> list[Outcome]:
    """Grade each mutant with the real grader (sandboxed worker, public and hidden checks)."""
    import shutil
    import tempfile

    from autograder.grading.runner import grade_notebook
    from autograder.sandbox.host import Limits, bwrap_works, close_spawners, shares_a_zygote, spawner_for, stage_runtime

    mutants = list(mutants)
    isolation = "bwrap" if bwrap_works() else "rlimits"  # the reference code and its mutants are trusted
    limits = Limits(call_seconds=timeout)
    runtime = stage_runtime()
    folder = Path(tempfile.mkdtemp(prefix="mutants-"))
    try:
        if shares_a_zygote(isolation):
            spawner_for(runtime, isolation, limits)

        def one(mutant: Mutant) -> Outcome:
            path = folder / mutant.file_name()
            path.write_text(json.dumps(mutant.notebook()), encoding="utf-8")
            report = grade_notebook(path, runtime, limits, isolation, mutant.assignment)
            failed = {t["name"]: t["status"] for t in report["tests"] if t["status"] != "passed"}
            if progress is not None:
                progress(mutant)
            return Outcome(mutant, report["score"], report["max_score"], failed)

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            return list(pool.map(one, mutants))
    finally:
        close_spawners()
        shutil.rmtree(runtime, ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)


def grade_in_notebook(mutants: Iterable[Mutant], timeout: float = 20.0, progress=None) -> list[Outcome]:
    """A quicker screen than :func:`grade`: each mutant's cells run in this process, as in the notebook, and its
    checks (public and hidden) run as the notebook's ``check()`` runs them, the mutated function's own checks
    first, stopping at the first that fails. A killed mutant so costs one or two checks, not all of them; the
    verdict is the grader's (tests/test_exercises.py holds the notebook and the grader to the same verdicts), and
    ``failed`` names only the first failing check. ``timeout`` is wall-clock seconds per check."""
    import autograder
    from autograder.grading.api import LocalSubmission
    from autograder.grading.registry import checks_for

    found = []
    for mutant in mutants:
        namespace: dict = {"__name__": "__main__"}
        failed: dict[str, str] = {}
        try:
            for cell in mutant.notebook()["cells"]:
                meta = cell["metadata"].get("nbgrader", {})
                if cell["cell_type"] == "code" and not meta.get("grade") and meta.get("grade_id") != "progress":
                    exec(compile("".join(cell["source"]), f"<cell {meta.get('grade_id')}>", "exec"), namespace)
        except Exception as error:  # noqa: BLE001 - a mutant whose cells fail loses every point
            failed["<cells>"] = f"exception: {type(error).__name__}"
        checks = sorted(checks_for(mutant.assignment), key=lambda c: c.target != mutant.function.split(".")[0])
        if not failed:
            for entry in checks:
                status, _ = autograder.run_one(entry, LocalSubmission(namespace), namespace, timeout)
                if status != "passed":
                    failed[entry.id] = status
                    break
        if progress is not None:
            progress(mutant)
        total = sum(c.points for c in checks_for(mutant.assignment))
        found.append(Outcome(mutant, 0.0 if failed else total, total, failed))
    return found


# ---------------------------------------------------------------- the equivalents list

def contract_path(assignment: str) -> Path:
    return CONTRACTS / f"{assignment}.toml"


def equivalents(assignment: str) -> dict[str, str]:
    """Mutant key -> why it is equivalent (behaves as the contract asks), from the assignment's contract file."""
    path = contract_path(assignment)
    if not path.exists():
        return {}
    from tools.contracts import table

    return {entry["mutant"]: entry["reason"] for entry in table(assignment).get("equivalent", [])}


def sample(found: list[Mutant], count: int, seed: int) -> list[Mutant]:
    """A seeded sample of ``count`` non-equivalent mutants (all of them when there are fewer)."""
    if not found:
        return []
    listed = equivalents(found[0].assignment)
    candidates = [m for m in found if m.key not in listed]
    return sorted(random.Random(seed).sample(candidates, min(count, len(candidates))), key=found.index)


def main(argv: list[str]) -> int:
    """``python -m tools.mutation list ASSIGNMENT``: print every mutant's key."""
    if len(argv) == 2 and argv[0] == "list":
        for mutant in mutants(argv[1]):
            print(mutant.key)
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
