"""Writing autograder scores into an nbgrader gradebook (``--gradebook``).

The gradebook must know the assignment (``nbgrader generate_assignment`` with
that database). Each graded submission becomes nbgrader's submission for that
student, and each check's score becomes the ``auto_score`` of the test cell
with the same ``grade_id``, so ``nbgrader export`` and the formgrader show
them. Writers take an exclusive lock, so concurrent runs take turns. nbgrader
commits each new student and submission record itself (each an atomic SQLite
commit); all the scores are then set in one transaction, which a killed run
rolls back: the gradebook is never half-written, and a rerun completes it.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path


def database_url(target: str) -> str:
    return target if "://" in target else f"sqlite:///{Path(target).resolve()}"


def write_scores(target: str, graded: list) -> int:
    """``graded``: (Submission with .student, report) pairs. Returns how many were written."""
    # nbgrader starts `alembic` by name; find the one installed beside this Python.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    from nbgrader.api import Gradebook, MissingEntry
    from nbgrader.utils import parse_utc

    url = database_url(target)
    lock_path = Path(url.removeprefix("sqlite:///") + ".autograder-lock") if url.startswith("sqlite:///") else None
    lock = open(lock_path, "a+") if lock_path else None
    if lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # concurrent runs take turns
    written = 0
    try:
        with Gradebook(url) as gradebook:
            session = gradebook.db
            try:
                for submission, report in graded:
                    assignment = report.get("extra_data", {}).get("assignment")
                    if not assignment:
                        continue
                    try:
                        gradebook.find_assignment(assignment)
                    except MissingEntry:
                        raise ValueError(f"the gradebook has no assignment {assignment!r}: run nbgrader "
                                         "generate_assignment with this database first") from None
                    gradebook.update_or_create_student(submission.student)
                    try:
                        record = gradebook.find_submission(assignment, submission.student)
                    except MissingEntry:
                        record = gradebook.add_submission(assignment, submission.student)
                    notebook = assignment  # our notebooks are named after their assignment
                    late = report.get("extra_data", {}).get("late") or {}
                    if late.get("timestamp"):  # nbgrader export shows it, and the penalty
                        record.timestamp = parse_utc(late["timestamp"])
                    for submitted in record.notebooks:
                        submitted.late_submission_penalty = float(late.get("penalty") or 0.0) \
                            if submitted.name == notebook else 0.0
                    for test in report["tests"]:
                        try:
                            grade = gradebook.find_grade(test["name"], notebook, assignment, submission.student)
                        except MissingEntry:
                            continue
                        grade.auto_score = float(test["score"])
                        grade.needs_manual_grade = False
                    written += 1
                session.commit()
            except BaseException:
                session.rollback()
                raise
    finally:
        if lock:
            fcntl.flock(lock, fcntl.LOCK_UN)
            lock.close()
    return written


def due_dates(target: str, names: set[str]) -> dict:
    """Assignment -> its due date in the gradebook (naive UTC), for those that have one."""
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    from nbgrader.api import Gradebook, MissingEntry

    found = {}
    with Gradebook(database_url(target)) as gradebook:
        for name in sorted(names):
            try:
                assignment = gradebook.find_assignment(name)
            except MissingEntry:
                continue
            if assignment.duedate is not None:
                found[name] = assignment.duedate
    return found
