"""Checks for the LLM Foundations exercises, and the autograder that runs them.

In an exercise notebook::

    from autograder import check
    check("softmax")        # runs the public checks on this notebook's softmax

Instructors grade submissions with ``python -m autograder grade`` (see README).
"""

from __future__ import annotations

import inspect

__version__ = "0.1.0"


def run_local(target: str, namespace: dict, hidden: bool) -> None:
    """Run the checks for ``target`` against ``namespace``; print feedback; raise if any fails."""
    from autograder.api import LocalSubmission
    from autograder.registry import assignment_of_target, checks_for
    from autograder.runner import run_check

    try:
        assignment = assignment_of_target(target)
    except KeyError:
        raise ValueError(f"no checks for {target!r}") from None
    checks = [c for c in checks_for(assignment, include_hidden=hidden) if c.target == target and c.hidden == hidden]
    submission = LocalSubmission(namespace)
    failed, unwritten = [], False
    for entry in checks:
        status, output = run_check(entry, submission)
        points = f"{entry.points:g} point{'s' if entry.points != 1 else ''}"
        if status == "passed":
            print(f"\u2713 {entry.id} ({points}): {entry.title}")
        elif status == "not_implemented":
            print(f"\u2717 {entry.id} ({points}): {output}")
            unwritten = True
            failed.append(entry.id)
        else:
            print(f"\u2717 {entry.id} ({points}): {entry.title}\n{output}\nSee: {entry.book_url}\n")
            failed.append(entry.id)
    if unwritten:
        raise NotImplementedError(f"{target} is not written yet")
    if failed:
        raise AssertionError(f"{target}: {len(failed)} of {len(checks)} checks failed ({', '.join(failed)})")


def check(target: str) -> None:
    """Run the public checks for ``target`` (e.g. "softmax") on the calling notebook's code."""
    caller = inspect.currentframe().f_back
    run_local(target, caller.f_globals, hidden=False)
