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

from autograder.sandbox.worker import ORACLE_MODULES

PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the autograder package
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
    # The library object that is the reference for ``target`` ("tinyllm.positional:apply_rope"), on the
    # check that decides whether a student's ``target`` is right (``<target>_public``): a check of code
    # that calls ``target`` re-runs with it substituted when the student's own fails (expect.blame).
    reference: str = ""

    @property
    def title(self) -> str:
        doc = (self.function.__doc__ or "").strip().splitlines()
        return doc[0] if doc else self.id

    @property
    def book_url(self) -> str:
        return BOOK_URL + self.book


_REGISTRY: dict[str, Check] = {}


def check(assignment: str, target: str, points: float, book: str, hidden: bool = False, reference: str = ""):
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
        if reference and not re.fullmatch(r"tinyllm(\.\w+)*:\w+", reference):
            raise ValueError(f"a reference is a library object, module:name, not {reference!r}")
        entry = Check(check_id, assignment, target, float(points), hidden, book, function, seed, reference)
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


# ORACLE_MODULES (the library modules grading depends on) is the worker's list: it imports them
# before any submission's code runs.


# Modules that write the outputs of a run (tables, pages, exports, the command line) but never
# decide a score: editing them must not regrade anyone. Every other module of the package
# (the sandbox, the runner, the worker, the check helpers: including any added later) does.
OUTPUT_MODULES = frozenset({"__main__.py", "gradescope.py", "nbgrader_hooks.py", "grading/report.py",
                            "classrun/__init__.py", "classrun/course.py", "classrun/grade.py",
                            "classrun/submissions.py", "outputs/__init__.py", "outputs/exports.py",
                            "outputs/feedback.py", "outputs/gradebook.py", "outputs/nbgrader_out.py",
                            "outputs/similarity.py", "outputs/summary.py"})
CHECK_FOLDERS = ("checks", "hidden")
_CHECK_FILE = re.compile(r"test_(\d\d_[a-z0-9_]+)\.py")


def _grading_files(package_dir: Path) -> tuple[list[Path], dict[str, list[Path]]]:
    """(the files every assignment's grade depends on, assignment -> its own check files)."""
    shared, own = [], {}
    for path in sorted(p for p in package_dir.rglob("*.py") if "__pycache__" not in p.parts):
        relative = path.relative_to(package_dir)
        match = _CHECK_FILE.fullmatch(path.name)
        if relative.parts[0] in CHECK_FOLDERS and len(relative.parts) == 2 and match:
            own.setdefault(match.group(1), []).append(path)
        elif relative.as_posix() not in OUTPUT_MODULES:
            shared.append(path)
    return shared, own


def _digest(files: list[Path], package_dir: Path) -> "hashlib._Hash":
    digest = hashlib.sha256()
    for path in files:
        name = path.relative_to(package_dir).as_posix() if path.is_relative_to(package_dir) else path.name
        digest.update(name.encode() + b"\0")
        digest.update(path.read_bytes())
    return digest


def checks_version(assignment: str | None = None, package_dir: Path | None = None) -> str:
    """A hash of everything that decides an assignment's grades.

    That is the assignment's own check files (public and hidden), the modules
    every check runs through (sandbox, runner, worker, check helpers) and the
    library modules the checks use as their oracle. Other assignments' checks
    and the modules that only write outputs (:data:`OUTPUT_MODULES`) are left
    out, so fixing one assignment's check regrades that assignment only, and a
    submission that timed out is not run again unless its notebook, its checks
    or the limits changed. ``assignment=None``: every assignment's checks.
    ``package_dir``: another copy of this package (default: this one, read once
    per process, so every report of a run carries one version).
    """
    if package_dir is None:
        return _installed_version(assignment)
    return _version(assignment, Path(package_dir))


@functools.lru_cache(maxsize=None)
def _installed_version(assignment: str | None) -> str:
    return _version(assignment, PACKAGE_DIR)


def _version(assignment: str | None, package_dir: Path) -> str:
    shared, own = _grading_files(package_dir)
    files = shared + [Path(importlib.util.find_spec(name).origin) for name in ORACLE_MODULES]
    if assignment is None:
        files += [p for name in sorted(own) for p in own[name]]
    else:
        files += sorted(_with_imports(own.get(assignment, []), package_dir))
    return _digest(files, package_dir).hexdigest()[:16]


_CHECK_IMPORT = re.compile(r"autograder\.(checks|hidden)\.(test_\d\d_[a-z0-9_]+)")


def _with_imports(files: list[Path], package_dir: Path) -> set[Path]:
    """The check files and every other check file they import, transitively (05's checks reuse 04's)."""
    found, todo = set(), list(files)
    while todo:
        path = todo.pop()
        if path in found or not path.is_file():
            continue
        found.add(path)
        for folder, module in _CHECK_IMPORT.findall(path.read_text(encoding="utf-8")):
            todo.append(package_dir / folder / f"{module}.py")
    return found
