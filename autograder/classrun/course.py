"""The course file: a term's dates and policies in one place (``--course course.toml``).

Every run of the grader reads it, so a whole-class run, a one-student regrade
and a rerun next week apply the same due dates, late policy and extensions.
The instructor's reference for the file (its keys, the rules for dates and
lateness, the Canvas export) is docs/instructor.md, "The course file" and
"Canvas"; this module parses and validates it, measures lateness, and writes
``grades-canvas.csv``.
"""

from __future__ import annotations

import csv
import difflib
import re
import sys
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from autograder.classrun.submissions import UsageError
from autograder.outputs.exports import CanvasStudent

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


@dataclass(frozen=True)
class Override:
    """An instructor's score for one check of one student's submission, with the reason."""

    points: float
    reason: str


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
    # (student, assignment) -> {check id: Override}
    overrides: dict[tuple[str, str], dict[str, "Override"]] = field(default_factory=dict)

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
    _known_keys(data, {"late", "assignments", "extensions", "canvas", "overrides"}, name)
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
    schedule.overrides = _overrides(data.get("overrides", []), known, name)
    return schedule


def _overrides(entries, known: dict, name: str) -> dict[tuple[str, str], dict[str, Override]]:
    """The [[overrides]] tables, each checked against the assignment's checks."""
    from autograder.grading.registry import checks_for

    if not isinstance(entries, list):
        raise UsageError(f"{name}: overrides must be a list of tables: write each as [[overrides]]")
    result: dict[tuple[str, str], dict[str, Override]] = {}
    for n, entry in enumerate(entries, start=1):
        what = f"{name}: overrides #{n}"
        _known_keys(entry, {"student", "assignment", "check", "points", "reason"}, what)
        missing = [key for key in ("student", "assignment", "check", "points", "reason") if key not in entry]
        if missing:
            raise UsageError(f"{what} lacks {', '.join(missing)} (an override needs student, assignment, check, "
                             "points and reason)")
        student, assignment, check = str(entry["student"]), str(entry["assignment"]), str(entry["check"])
        _known_keys({assignment: None}, set(known), what)
        checks = {c.id: c for c in checks_for(assignment)}
        if check not in checks:
            close = difflib.get_close_matches(check, sorted(checks), n=1)
            hint = f" (did you mean {close[0]}?)" if close else f" (its checks: {', '.join(sorted(checks))})"
            raise UsageError(f"{what}: {assignment} has no check {check!r}{hint}")
        points = entry["points"]
        if isinstance(points, bool) or not isinstance(points, (int, float)) \
                or not 0 <= points <= checks[check].points:
            raise UsageError(f"{what}: points {points!r} for {check} must be a number from 0 to "
                             f"{checks[check].points:g}")
        reason = str(entry["reason"]).strip()
        if not reason:
            raise UsageError(f"{what}: the reason is empty (it is shown to the student and kept in the report)")
        given = result.setdefault((student, assignment), {})
        if check in given:
            raise UsageError(f"{what}: a second override of {check} for {student} ({assignment})")
        given[check] = Override(float(points), reason)
    return result


# ---------------------------------------------------------------------------------------------
# A Canvas roster (its gradebook export), for the Canvas CSV


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
