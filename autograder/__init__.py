"""Checks for the LLM Foundations exercises, and the autograder that runs them.

In an exercise notebook::

    from autograder import check
    check("softmax")        # runs the public checks on this notebook's softmax

A failing check prints what went wrong and lets the notebook go on, so that
Run All reaches the end of an unfinished exercise. Where a notebook is graded
(``nbgrader autograde``, nbgrader's Validate button: both set
``NBGRADER_EXECUTION``; or ``AUTOGRADER_STRICT=1``) a failing check raises
instead, which is how nbgrader tells a failed test cell. ``python -m autograder
grade`` never relies on either: it runs the checks itself.

Instructors grade submissions with ``python -m autograder grade`` (see docs/instructor.md).
"""

from __future__ import annotations

import inspect
import os

__version__ = "0.1.0"

# Seconds a check may run in a notebook before it is stopped (the sandboxed
# grader has its own limit, `--timeout`, 10 s by default; nbgrader gets the same).
NOTEBOOK_TIME_LIMIT = 5.0
GRADING_TIME_LIMIT = 10.0


class ChecksFailed(AssertionError):
    """Raised by a failing check where a failure must be an error (nbgrader)."""


def strict() -> bool:
    """Whether a failing check raises: under nbgrader (autograde or validate) or AUTOGRADER_STRICT=1."""
    return bool(os.environ.get("NBGRADER_EXECUTION")) or os.environ.get("AUTOGRADER_STRICT") == "1"


def time_limit_seconds() -> float:
    value = os.environ.get("AUTOGRADER_TIME_LIMIT")
    if value:
        return float(value)
    return GRADING_TIME_LIMIT if strict() else NOTEBOOK_TIME_LIMIT


def run_one(entry, submission, namespace: dict, seconds: float) -> tuple[str, str]:
    """(status, message) of one check run against the notebook's own names, within ``seconds``."""
    import importlib
    import sys

    from autograder.grading import api
    from autograder.grading.runner import run_check
    from autograder.grading.timelimit import TimeLimitExceeded, time_limit
    from tinyllm.train import cpu_threads

    # Imports a check's code triggers the first time (torch.optim's Optimizer imports torch._dynamo: 4-7 s)
    # are made before the clock starts: the limit is for the student's code.
    for module in getattr(sys.modules.get(entry.function.__module__), "IMPORT_BEFORE_TIMING", ()):
        importlib.import_module(module)
    try:
        # One thread: the checks' tensors are tiny, and on a busy machine torch's
        # thread pool makes them many times slower (the generate check: 12 s vs 0.2 s).
        with cpu_threads(1), time_limit(seconds, namespace):
            return run_check(entry, submission)
    except TimeLimitExceeded as stop:
        if not stop.stack:
            return api.TIMEOUT, f"the check did not finish within {seconds:g} s."
        culprit, caller = stop.stack[-1], stop.stack[0]
        called = f" (called from `{caller}`)" if caller != culprit else ""
        return api.TIMEOUT, (f"`{culprit}`{called} did not return within {seconds:g} s, so the check was "
                             f"stopped. Look for a loop in `{culprit}` that never ends: does every pass "
                             "move forward (an index that advances, a list that shrinks)?")


# The last outcome of each public check in this kernel: check id -> (the objects it ran on, status).
_OUTCOMES: dict[str, tuple[tuple, str]] = {}
# Set in the grader's worker, where a notebook's progress cell must do nothing.
in_grader = False


def _objects(assignment: str, namespace: dict) -> tuple:
    """What a check's outcome depends on: the objects the notebook binds to each name of the assignment."""
    from autograder.grading.registry import assignments

    return tuple(id(namespace.get(name)) for name in assignments()[assignment])


def run_local(target: str, namespace: dict, hidden: bool, part: str | None = None) -> bool:
    """Run the checks for ``target`` against ``namespace`` and print feedback; True if all passed.

    Raises :class:`ChecksFailed` (or NotImplementedError for unwritten code)
    when one fails and :func:`strict` says failures must be errors.
    """
    from autograder.grading.api import NOT_IMPLEMENTED, LocalSubmission
    from autograder.grading.registry import assignment_of_target, checks_for

    try:
        assignment = assignment_of_target(target)
    except KeyError:
        raise ValueError(f"no checks for {target!r}") from None
    checks = [c for c in checks_for(assignment, include_hidden=hidden) if c.target == target and c.hidden == hidden]
    if not hidden:
        wanted = f"{target}_{part}_public" if part else f"{target}_public"
        checks = [c for c in checks if c.id == wanted]
        if not checks:
            raise ValueError(f"no check {wanted!r}")
    submission = LocalSubmission(namespace)
    failed, unwritten = [], False
    seconds = time_limit_seconds()
    for entry in checks:
        status, output = run_one(entry, submission, namespace, seconds)
        if not hidden:
            _OUTCOMES[entry.id] = (_objects(assignment, namespace), status)
        points = f"{entry.points:g} point{'s' if entry.points != 1 else ''}"
        if status == "passed":
            print(f"\u2713 {entry.id} ({points}): {entry.title}" + (f"\n{output}\n" if output else ""))
        elif status == NOT_IMPLEMENTED:
            print(f"\u2717 {entry.id} ({points}): {output}")
            unwritten = True
            failed.append(entry.id)
        else:
            # What went wrong first; what the check asks for after it.
            print(f"\u2717 {entry.id} ({points}): {output}\n(The check: {entry.title})\nSee: {entry.book_url}\n")
            failed.append(entry.id)
    if failed and strict():
        if unwritten:
            raise NotImplementedError(f"{target} is not written yet")
        raise ChecksFailed(f"{target}: {len(failed)} of {len(checks)} checks failed ({', '.join(failed)})")
    return not failed


def check(target: str, part: str | None = None) -> None:
    """Run the public check of ``target`` (e.g. "softmax") on the calling notebook's code.

    ``part`` names a further check of the same name (``check("TinyGPT", "init")``).
    """
    caller = inspect.currentframe().f_back
    run_local(target, caller.f_globals, hidden=False, part=part)


def progress(assignment: str) -> None:
    """Print the public points the notebook's code earns so far and the names still to do.

    The last cell of every exercise notebook calls it. A check already run on
    the same definitions is not run again; the others run quietly now (where
    the notebook is graded, they count as left instead: its test cells ran).
    """
    if in_grader:
        return
    from autograder.grading.api import LocalSubmission
    from autograder.grading.registry import assignments, checks_for

    namespace = inspect.currentframe().f_back.f_globals
    key = _objects(assignment, namespace)
    earned = total = 0.0
    left: list[str] = []
    submission = LocalSubmission(namespace)
    for entry in checks_for(assignment, include_hidden=False):
        known = _OUTCOMES.get(entry.id)
        if known is not None and known[0] == key:
            status = known[1]
        elif strict():  # graded (nbgrader): its test cells have run; a check they did not run counts as left
            status = "not run"
        else:
            status, _ = run_one(entry, submission, namespace, time_limit_seconds())
            _OUTCOMES[entry.id] = (key, status)
        total += entry.points
        if status == "passed":
            earned += entry.points
        elif entry.target not in left:
            left.append(entry.target)
    names = assignments()[assignment]
    left.sort(key=names.index)
    print(f"{earned:g} of {total:g} public points; "
          + (f"left: {', '.join(left)}." if left else "every public check passes."))
