"""Checks: pytest-style test functions with points, found by directory.

A check is a function ``test_<id>(sub)`` decorated with :func:`check`. Public
checks live in ``autograder/checks/`` (they ship to students); hidden ones in
``autograder/hidden/`` (instructor-only, never packaged). The id doubles as
the nbgrader ``grade_id`` of the notebook test cell that runs the same check,
so the two graders score the same units.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import pkgutil
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

PACKAGE_DIR = Path(__file__).resolve().parent
BOOK_URL = "https://llm-foundations.github.io/llm-foundations/"  # html.baseurl in _config.yml

@dataclass(frozen=True)
class Check:
    id: str  # e.g. "softmax_public": the nbgrader grade_id too
    assignment: str
    target: str  # the name it tests
    points: float
    hidden: bool
    book: str  # "book/04_softmax.html#anchor", relative to BOOK_URL
    function: Callable
    seed: int  # fixed per check: both graders feed the same inputs

    @property
    def title(self) -> str:
        doc = (self.function.__doc__ or "").strip().splitlines()
        return doc[0] if doc else self.id

    @property
    def book_url(self) -> str:
        return BOOK_URL + self.book


_REGISTRY: dict[str, Check] = {}


def check(assignment: str, target: str, points: float, book: str, hidden: bool = False):
    """Register a check. The function's name is ``test_<id>``.

    The decorator is the only registration: an assignment exists because a check
    names it, and a name a submission must define exists because a check tests it
    (``tests/test_exercises.py`` proves each one is defined by the assignment's
    reference solution, so a misspelt name fails there, not silently).
    """
    if not re.fullmatch(r"\d\d_[a-z0-9_]+", assignment):
        raise ValueError(f"assignment names look like 03_softmax, not {assignment!r}")
    if not target.isidentifier():
        raise ValueError(f"a check's target is a Python name, not {target!r}")

    def register(function: Callable) -> Callable:
        if not function.__name__.startswith("test_"):
            raise ValueError(f"check functions are named test_<id>, not {function.__name__}")
        check_id = function.__name__[len("test_"):]
        seed = int(hashlib.sha256(check_id.encode()).hexdigest()[:8], 16)
        entry = Check(check_id, assignment, target, float(points), hidden, book, function, seed)
        previous = _REGISTRY.get(check_id)
        if previous is not None and previous.function.__module__ != function.__module__:
            raise ValueError(f"two checks are named test_{check_id} ({previous.function.__module__} and "
                             f"{function.__module__}): a check's id is its nbgrader grade_id and must be unique")
        _REGISTRY[check_id] = entry
        function.autograder_check = entry
        return function

    return register


def _import_folder(folder: str) -> None:
    path = PACKAGE_DIR / folder
    if not path.is_dir():
        return
    for module in sorted(pkgutil.iter_modules([str(path)]), key=lambda m: m.name):
        if module.name.startswith("test_"):
            importlib.import_module(f"autograder.{folder}.{module.name}")


def hidden_available() -> bool:
    return (PACKAGE_DIR / "hidden").is_dir()


def load_checks(include_hidden: bool = True) -> list[Check]:
    """Every registered check, in assignment and definition order."""
    _import_folder("checks")
    if include_hidden:
        _import_folder("hidden")
    table = assignments()
    checks = [c for c in _REGISTRY.values() if include_hidden or not c.hidden]
    return sorted(checks, key=lambda c: (c.assignment, table[c.assignment].index(c.target), c.hidden))


def assignments() -> dict[str, list[str]]:
    """Assignment -> the names a submission defines, discovered from the checks.

    Assignments sort by name (their number prefix); names follow the order in
    which the public checks first test them (then any tested only by hidden ones).
    """
    _import_folder("checks")
    _import_folder("hidden")
    table: dict[str, list[str]] = {}
    for entry in sorted(_REGISTRY.values(), key=lambda c: c.hidden):  # stable: definition order within each
        names = table.setdefault(entry.assignment, [])
        if entry.target not in names:
            names.append(entry.target)
    return dict(sorted(table.items()))


def checks_for(assignment: str, include_hidden: bool = True) -> list[Check]:
    return [c for c in load_checks(include_hidden) if c.assignment == assignment]


def assignment_of_target(target: str) -> str:
    for assignment, names in assignments().items():
        if target in names:
            return assignment
    raise KeyError(target)


# The library modules grading depends on: the hidden checks' oracle, and what the
# worker imports for submissions. Editing another module (the training loop, the
# book's helpers) must not invalidate every report.
ORACLE_MODULES = ["tinyllm.attention", "tinyllm.bpe", "tinyllm.embedding", "tinyllm.layers", "tinyllm.model",
                  "tinyllm.ngram", "tinyllm.optim", "tinyllm.positional", "tinyllm.posttrain", "tinyllm.quantize",
                  "tinyllm.sampling", "tinyllm.softmax", "tinyllm.speculative", "tinyllm.train"]


@functools.lru_cache(maxsize=None)  # once per process: every report of a run carries one version
def checks_version() -> str:
    """A hash of everything that decides a grade: checks, oracle library, sandbox, runner."""
    digest = hashlib.sha256()
    files = [p for p in sorted(PACKAGE_DIR.rglob("*.py")) if "__pycache__" not in p.parts]
    files += [Path(importlib.util.find_spec(name).origin) for name in ORACLE_MODULES]
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
