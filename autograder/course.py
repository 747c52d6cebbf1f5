"""The course file: a term's dates and policies in one place (``--course course.toml``).

This docstring is the instructor-facing reference for the file (a draft section
for the instructor's guide).

Why a file
----------
A term has several assignments, each with its own due date, one late policy and
a handful of per-student extensions. Given on the command line they are easy to
get wrong (one ``--due`` applied to every assignment of a tree zeroed the later
ones) and impossible to keep consistent (an extension given to one
``--student`` run was undone by the next whole-class run). The course file
holds all of it; every run reads it, so a whole-class run, a one-student
regrade and a rerun next week agree.

The file
--------
TOML (``python -m autograder grade submitted --course course.toml``)::

    # Every date is ISO 8601 with its time zone: an offset (-05:00) or Z for UTC.
    [late]                     # the late policy of every assignment (each may have its own)
    penalty = "10%/day"        # none | zero | P%/day: P% of the assignment's points per day or part of one
    grace = "15min"            # lateness up to this costs nothing and is not counted as late (default 0)
    cap = "50%"                # the most the penalty takes, as a share of the points (default: all of them)

    [assignments.07_modern_block]
    due = 2026-11-01T23:59:00-05:00          # a TOML date-time with an offset, or the same as a string
    canvas = "Exercise 7 (48213)"            # optional: its column in the Canvas gradebook export

    [assignments.09_training]
    due = "2026-11-15T23:59:00-05:00"
    late = { penalty = "zero" }              # this assignment's own policy (any of the keys of [late])

    [extensions]                             # per student and assignment: a later due date
    alice = { 07_modern_block = "2026-11-04T23:59:00-05:00" }
    bob = { 09_training = "3d" }             # or extra time after the due date: "3d", "36h"

    [canvas]
    roster = "canvas-gradebook.csv"          # optional: Canvas's own gradebook export, to match students

Rules:

* A date without a time zone, a date alone, a date in another notation
  (``01/11/2026``, ``friday``, ``23:59 PST``) is an error: one line naming the
  key, exit status 2, nothing written. The same holds for ``--due``.
* Unknown keys and assignments the grader does not know are errors (a typo must
  not silently drop a due date), with the closest known name.
* An extension that names a student with no submission in the graded tree is
  reported as a warning (it may be a typo); it is still applied if they submit.
* Lateness is measured from nbgrader's ``timestamp.txt`` to the student's due
  date (their extension if they have one). A day is 24 hours; part of a day
  counts as a day. The grace period only decides *whether* a submission is
  late; a late one is late by its full time since the due date.
* With ``--course``, ``--due`` and ``--late-penalty`` are errors (the dates and
  the policy have one home). Without it, ``--due`` applies to one assignment
  only: a tree holding several is an error.
* Every run re-derives the lateness of every report in the output folder from
  the course file, so editing the file (a new extension) needs no regrading,
  only a rerun.

Canvas
------
``grades-canvas.csv`` is written in the format of Canvas's gradebook import:
the header ``Student, ID, SIS User ID, SIS Login ID, Section``, then one column
per assignment (``canvas = "Title (id)"`` above, or the assignment's name, which
Canvas matches by title or creates), a ``Points Possible`` row, then one row
per student with the score after any late penalty (blank where a student has
no submission, which Canvas reads as "no change"). Canvas identifies a student
by ``ID`` (its own user id), then ``SIS User ID``, then ``SIS Login ID``, then
by name; with a roster (Canvas's own gradebook export, read for those columns)
each student is matched by login, SIS id, Canvas id or name, in that order;
without one, the student's folder name goes in ``SIS Login ID`` (nbgrader's
student id is usually the login) and ``Student``. Submissions downloaded from
Canvas (``Download Submissions``: ``<name>[_late]_<userid>_<fileid>_<file>``)
carry the Canvas user id, which is used directly.
"""

from __future__ import annotations

import csv
import difflib
import re
import sys
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from autograder.submissions import UsageError

# ---------------------------------------------------------------------------------------------
# Dates

_ISO_INSTANT = re.compile(r"(?P<date>\d{4}-\d{2}-\d{2})[T ](?P<time>\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)"
                          r"(?P<zone>Z|z|[+-]\d{2}:?\d{2})")
EXAMPLE = "2026-11-01T23:59:00-05:00, or 2026-11-01T23:59:00Z for UTC"


def parse_instant(value, what: str) -> datetime:
    """An instructor's date and time, ISO 8601 with a zone, as naive UTC (nbgrader's convention).

    ``value`` is a string or a TOML date-time. Anything else (no zone, a date
    alone, another notation) raises :class:`UsageError` naming ``what``.
    """
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise UsageError(f"{what} {value.isoformat()} has no time zone: write it with an offset, e.g. {EXAMPLE}")
        return (value - value.utcoffset()).replace(tzinfo=None)
    if isinstance(value, date) or not isinstance(value, str):
        raise UsageError(f"{what} {value!s} is not a date and time with a zone: write e.g. {EXAMPLE}")
    match = _ISO_INSTANT.fullmatch(value.strip())
    if not match:
        raise UsageError(f"{what} {value!r} is not an ISO 8601 date and time with a time zone: write e.g. {EXAMPLE}")
    zone = match.group("zone")
    zone = "+00:00" if zone in ("Z", "z") else (zone if ":" in zone else f"{zone[:3]}:{zone[3:]}")
    try:
        stamp = datetime.fromisoformat(f"{match.group('date')}T{match.group('time')}{zone}")
    except ValueError:
        raise UsageError(f"{what} {value!r} is not a valid date and time (e.g. {EXAMPLE})") from None
    return (stamp - stamp.utcoffset()).replace(tzinfo=None)


_DURATION = re.compile(r"(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>d|days?|h|hours?|min|minutes?|s|seconds?)")
_UNIT_SECONDS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(value, what: str) -> float:
    """Seconds in "3d", "36h", "15min" or "30s" (or 0)."""
    if value == 0:
        return 0.0
    match = _DURATION.fullmatch(str(value).strip().lower()) if isinstance(value, str) else None
    if not match:
        raise UsageError(f"{what} {value!r} is not a duration: write e.g. \"3d\", \"36h\" or \"15min\"")
    return float(match.group("n")) * _UNIT_SECONDS[match.group("unit")[0]]


def utc_text(stamp: datetime | None) -> str | None:
    return None if stamp is None else stamp.replace(tzinfo=timezone.utc).isoformat()


# ---------------------------------------------------------------------------------------------
# Late policy


@dataclass(frozen=True)
class LatePolicy:
    """What lateness costs: nothing, everything, or a share of the points per day or part of one.

    ``grace_seconds``: lateness up to this is not late. ``cap_percent``: the most a
    penalty takes, as a percentage of the assignment's points.
    """

    kind: str = "none"  # none | zero | percent
    percent_per_day: float = 0.0
    grace_seconds: float = 0.0
    cap_percent: float = 100.0

    @classmethod
    def parse(cls, text: str, what: str = "--late-penalty") -> "LatePolicy":
        text = str(text).strip().lower()
        if text in ("none", "zero"):
            return cls(text)
        match = re.fullmatch(r"(\d+(?:\.\d+)?)%/day", text)
        if not match or not 0 < float(match.group(1)) <= 100:
            raise UsageError(f"{what} {text!r}: use none, zero, or a percentage per day such as 10%/day")
        return cls("percent", float(match.group(1)))

    def is_late(self, seconds_late: float | None) -> bool:
        return bool(seconds_late) and seconds_late > self.grace_seconds

    def penalty(self, score: float, max_score: float, seconds_late: float) -> float:
        """Points taken off a score (never below zero, never above the cap)."""
        if not self.is_late(seconds_late) or self.kind == "none":
            return 0.0
        cap = max_score * self.cap_percent / 100
        if self.kind == "zero":
            return round(min(score, cap), 6)
        days = -(-seconds_late // 86400)  # a day or part of one
        return round(min(score, cap, max_score * self.percent_per_day / 100 * days), 6)

    def describe(self) -> str:
        text = {"none": "no penalty", "zero": "late work scores 0"}.get(
            self.kind, f"{self.percent_per_day:g}% of the points per day or part of a day late")
        if self.grace_seconds:
            text += f", after a grace period of {_duration_words(self.grace_seconds)}"
        if self.cap_percent < 100 and self.kind != "none":
            text += f", at most {self.cap_percent:g}% of the points"
        return text


def _duration_words(seconds: float) -> str:
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size and seconds % size == 0:
            n = int(seconds // size)
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds:g} s"


def _policy(table: dict, what: str, base: LatePolicy | None = None) -> LatePolicy:
    _known_keys(table, {"penalty", "grace", "cap"}, what)
    base = base or LatePolicy()
    kind = LatePolicy.parse(table["penalty"], f"{what}.penalty") if "penalty" in table else base
    grace = parse_duration(table["grace"], f"{what}.grace") if "grace" in table else base.grace_seconds
    cap = base.cap_percent
    if "cap" in table:
        match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*%", str(table["cap"]).strip())
        if not match or not 0 <= float(match.group(1)) <= 100:
            raise UsageError(f"{what}.cap {table['cap']!r} is not a percentage of the points, e.g. \"50%\"")
        cap = float(match.group(1))
    return LatePolicy(kind.kind, kind.percent_per_day, grace, cap)


def _known_keys(table: dict, known: set[str], what: str) -> None:
    if not isinstance(table, dict):
        raise UsageError(f"{what} must be a table of keys, not {type(table).__name__}")
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(str(key), sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (known: {', '.join(sorted(known))})"
            raise UsageError(f"{what}: unknown key {key!r}{hint}")


# ---------------------------------------------------------------------------------------------
# The schedule a run uses


@dataclass(frozen=True)
class Due:
    at: datetime | None  # naive UTC; None: no due date
    extended_from: datetime | None = None  # the class's due date, when this student has an extension


@dataclass
class Schedule:
    """Due dates, extensions and late policies for a run (from a course file, ``--due`` or the gradebook)."""

    due: dict[str, datetime] = field(default_factory=dict)
    policies: dict[str, LatePolicy] = field(default_factory=dict)
    default_policy: LatePolicy = LatePolicy()
    extensions: dict[tuple[str, str], datetime] = field(default_factory=dict)  # (student, assignment) -> due
    canvas_columns: dict[str, str] = field(default_factory=dict)  # assignment -> Canvas column header
    roster: Path | None = None
    source: str = ""  # where the dates came from, for messages

    def due_for(self, student: str | None, assignment: str | None) -> Due:
        base = self.due.get(assignment or "")
        extended = self.extensions.get((student or "", assignment or ""))
        if extended is not None:
            return Due(extended, base)
        return Due(base)

    def policy_for(self, assignment: str | None) -> LatePolicy:
        return self.policies.get(assignment or "", self.default_policy)


def load_course(path: str | Path, known: dict) -> Schedule:
    """Read and check a course file; UsageError (one line) for anything wrong."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10: the grade extra installs tomli
        import tomli as tomllib

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--course {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UsageError(f"--course {path}: cannot be read ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise UsageError(f"{path.name}: not valid TOML ({error})") from None
    name = path.name
    _known_keys(data, {"late", "assignments", "extensions", "canvas"}, name)
    default = _policy(data.get("late", {}), f"{name}: [late]")
    schedule = Schedule(default_policy=default, source=name)
    assignments = data.get("assignments", {})
    _known_keys(assignments, set(known), f"{name}: [assignments]") if assignments else None
    for assignment, table in assignments.items():
        what = f"{name}: assignments.{assignment}"
        _known_keys(table, {"due", "late", "canvas"}, what)
        if "due" in table:
            schedule.due[assignment] = parse_instant(table["due"], f"{what}.due")
        if "late" in table:
            schedule.policies[assignment] = _policy(table["late"], f"{what}.late", default)
        if "canvas" in table:
            schedule.canvas_columns[assignment] = str(table["canvas"])
    extensions = data.get("extensions", {})
    if not isinstance(extensions, dict):
        raise UsageError(f"{name}: [extensions] must be a table: student = {{ assignment = \"date\" }}")
    for student, table in extensions.items():
        what = f"{name}: extensions.{student}"
        _known_keys(table, set(known), what)
        for assignment, value in table.items():
            key = f"{what}.{assignment}"
            if isinstance(value, str) and _DURATION.fullmatch(value.strip().lower()):
                if assignment not in schedule.due:
                    raise UsageError(f"{key}: extra time needs the assignment's due date "
                                     f"(assignments.{assignment}.due), or give a date and time")
                schedule.extensions[(student, assignment)] = schedule.due[assignment] + timedelta(
                    seconds=parse_duration(value, key))
            else:
                schedule.extensions[(student, assignment)] = parse_instant(value, key)
    canvas = data.get("canvas", {})
    _known_keys(canvas, {"roster"}, f"{name}: [canvas]")
    if "roster" in canvas:
        roster = (path.parent / str(canvas["roster"])).resolve()
        if not roster.is_file():
            raise UsageError(f"{name}: canvas.roster {canvas['roster']!r}: no such file")
        schedule.roster = roster
    return schedule


# ---------------------------------------------------------------------------------------------
# A Canvas roster (its gradebook export), for the Canvas CSV


@dataclass(frozen=True)
class CanvasStudent:
    name: str
    canvas_id: str = ""
    sis_user_id: str = ""
    sis_login_id: str = ""
    section: str = ""


def read_canvas_roster(path: Path) -> list[CanvasStudent]:
    """The students of a Canvas gradebook export: its identity columns, whatever else it holds."""
    with open(path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.reader(handle))
    if not rows or not rows[0] or "Student" not in rows[0][0]:
        raise UsageError(f"canvas.roster {path.name}: not a Canvas gradebook export (its first column is not Student)")
    header = [h.strip() for h in rows[0]]

    def column(row: list[str], title: str) -> str:
        return row[header.index(title)].strip() if title in header and header.index(title) < len(row) else ""

    students = []
    for row in rows[1:]:
        if not row or not row[0].strip() or "Points Possible" in row[0]:
            continue
        if all(re.fullmatch(r"\s*(Muted|Manual Posting.*)?\s*", cell, flags=re.I) for cell in row):
            continue
        students.append(CanvasStudent(row[0].strip(), column(row, "ID"), column(row, "SIS User ID"),
                                      column(row, "SIS Login ID"), column(row, "Section")))
    return students
