"""The class's grades as tables: the long table, the wide table, and Canvas's gradebook import.

All three are built from the reports in the output folder (this run's and
earlier ones'), so a one-student regrade updates that student's cells only.

* ``grades.csv``: one row per submission (student and assignment): the score,
  the raw score before any late penalty, the penalty, the hours late, the
  statuses of the checks that did not pass, and each check's points.
* ``grades-wide.csv``: one row per student: per assignment the score, raw
  score, hours late, penalty, points possible and notes (notebooks not graded
  and why, checks that timed out, cells left out, a folder graded under
  another name), then the totals.
* ``grades-canvas.csv``: Canvas's gradebook import format (see
  :mod:`autograder.classrun.course` for the columns and how students are matched).
  It is the only LMS format written; nbgrader's gradebook (``--gradebook``,
  then ``nbgrader export``) and Gradescope's ``results.json`` (one report per
  submission) are the other routes out.
"""

from __future__ import annotations

import csv
import io
import re

from dataclasses import dataclass


def _number(value: float | None) -> str:
    """A score as Canvas and spreadsheets read it: at most two decimals, no exponent."""
    if value is None:
        return ""
    text = f"{round(float(value), 2):.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _late(report: dict) -> dict:
    return (report.get("extra_data") or {}).get("late") or {}


def raw_score(report: dict) -> float:
    late = _late(report)
    if "raw_score" in late:
        return float(late["raw_score"])
    return float(sum(t.get("score", 0) for t in report.get("tests") or []))


def hours_late(report: dict) -> float | None:
    """Hours between the due date and the submission (0 when on time; None when unknown)."""
    seconds = _late(report).get("seconds_late")
    return None if seconds is None else round(seconds / 3600, 2)


def statuses(report: dict) -> list[str]:
    return sorted({t.get("status", "") for t in report.get("tests") or [] if t.get("status") != "passed"})


def notes(report: dict) -> list[str]:
    """What an instructor should know about a submission besides its score, one phrase each."""
    out = []
    by_status: dict[str, list[str]] = {}
    for test in report.get("tests") or []:
        if test.get("status") in ("timeout", "memory", "crashed", "invalid_notebook"):
            by_status.setdefault(test["status"], []).append(test.get("name", "?"))
    for status, names in sorted(by_status.items()):
        out.append(f"{status}: {', '.join(names)}" if status != "invalid_notebook" else "no notebook could be graded")
    for line in str(report.get("output") or "").splitlines():
        left_out = re.match(r"Note: cell (\d+) (did not finish|stopped the worker)", line)
        if left_out:
            out.append(f"cell {left_out.group(1)} left out ({left_out.group(2)})")
        elif line.startswith("Note: your folder is named"):
            out.append(line.removeprefix("Note: ").split(";")[0])
    ignored = (report.get("extra_data") or {}).get("ignored") or []
    if ignored:
        out.append(f"{len(ignored)} other notebook(s) not graded: "
                   + ", ".join(str(i.get("path", "?")) for i in ignored if isinstance(i, dict)))
    for test in report.get("tests") or []:
        if isinstance(test.get("override"), dict):
            out.append(f"override: {test.get('name')} {test['override'].get('grader_score', 0):g} -> "
                       f"{test.get('score', 0):g} ({test['override'].get('reason', '')})")
    late = _late(report)
    if late.get("extension"):
        out.append(f"extension to {late.get('due')}")
    if late.get("marked_late") and not late.get("timestamp"):
        out.append("marked late by Canvas (no time given)")
    return out


def _who(report: dict) -> str:
    extra = report.get("extra_data") or {}
    return str(extra.get("student") or extra.get("submission") or "?")


def long_csv(reports: list[dict]) -> bytes:
    """One row per submission: who, which assignment, the score and how it came about, each check's points."""
    check_names: list[str] = []
    for report in reports:
        for test in report.get("tests") or []:
            if test["name"] not in check_names:
                check_names.append(test["name"])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["submission", "student", "assignment", "score", "max_score", "raw_score", "late_penalty",
                     "hours_late", "notes"] + check_names)
    for report in reports:
        extra = report.get("extra_data") or {}
        scores = {t["name"]: t["score"] for t in report.get("tests") or []}
        hours = hours_late(report)
        writer.writerow([extra.get("submission") or "", extra.get("student") or "", extra.get("assignment") or "",
                         f"{report.get('score', 0):g}", f"{report.get('max_score', 0):g}", _number(raw_score(report)),
                         _number(_late(report).get("penalty") or 0.0), "" if hours is None else _number(hours),
                         " ".join(statuses(report))]
                        + [f"{scores[name]:g}" if name in scores else "" for name in check_names])
    return out.getvalue().encode("utf-8")


def by_student(reports: list[dict]) -> tuple[list[str], dict[str, dict[str, dict]]]:
    """(assignments in order, student -> assignment -> report)."""
    table: dict[str, dict[str, dict]] = {}
    names: set[str] = set()
    for report in reports:
        assignment = (report.get("extra_data") or {}).get("assignment")
        if not assignment:
            continue
        names.add(assignment)
        table.setdefault(_who(report), {})[assignment] = report
    return sorted(names), dict(sorted(table.items()))


def wide_csv(reports: list[dict]) -> bytes:
    """One row per student; per assignment: score, raw score, hours late, penalty, points possible, notes."""
    assignments, table = by_student(reports)
    header = ["student"]
    for a in assignments:
        header += [f"{a} score", f"{a} raw score", f"{a} hours late", f"{a} late penalty", f"{a} out of",
                   f"{a} notes"]
    header += ["total", "total out of"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    maxima = {a: max((float(r.get("max_score") or 0) for s in table.values() for n, r in s.items() if n == a),
                     default=0.0) for a in assignments}
    for student, row in table.items():
        cells, total = [student], 0.0
        for a in assignments:
            report = row.get(a)
            if report is None:
                cells += ["", "", "", "", _number(maxima[a]), "no submission"]
                continue
            hours = hours_late(report)
            total += float(report.get("score") or 0.0)
            cells += [_number(report.get("score") or 0.0), _number(raw_score(report)),
                      "" if hours is None else _number(hours), _number(_late(report).get("penalty") or 0.0),
                      _number(report.get("max_score") or 0.0), "; ".join(notes(report))]
        cells += [_number(total), _number(sum(maxima.values()))]
        writer.writerow(cells)
    return out.getvalue().encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Canvas

CANVAS_IDENTITY = ["Student", "ID", "SIS User ID", "SIS Login ID", "Section"]


@dataclass(frozen=True)
class CanvasStudent:
    """A student of the Canvas roster (read by ``autograder.classrun.course.read_canvas_roster``)."""
    name: str
    canvas_id: str = ""
    sis_user_id: str = ""
    sis_login_id: str = ""
    section: str = ""


def _simple(text: str) -> str:
    return re.sub(r"[\W_]+", "", text).lower()


def match_student(student: str, canvas_user_id: str | None, roster: list[CanvasStudent]) -> CanvasStudent | None:
    """The roster entry for one of our students: login, SIS id, Canvas id, then name (as Canvas slugs it)."""
    for key in ("sis_login_id", "sis_user_id", "canvas_id"):
        for entry in roster:
            if getattr(entry, key) and getattr(entry, key) == student:
                return entry
    if canvas_user_id:
        for entry in roster:
            if entry.canvas_id == canvas_user_id:
                return entry
    for entry in roster:  # Canvas's downloads name a student by their sortable name, slugged
        if _simple(entry.name) == _simple(student):
            return entry
    return None


def canvas_csv(reports: list[dict], roster: list[CanvasStudent] | None, columns: dict[str, str]) -> bytes:
    """The class's scores (after late penalties) as a CSV that Canvas's gradebook import reads.

    ``roster``: the course's Canvas roster (None: none given, every student named by their folder);
    ``columns``: assignment -> its Canvas column, where the course file names one.
    """
    assignments, table = by_student(reports)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CANVAS_IDENTITY + [columns.get(a, a) for a in assignments])
    maxima = [max((float(row[a].get("max_score") or 0) for row in table.values() if a in row), default=0.0)
              for a in assignments]
    writer.writerow(["Points Possible", "", "", "", ""] + [_number(m) for m in maxima])
    for student, row in table.items():
        if not any((r.get("extra_data") or {}).get("student") for r in row.values()):
            continue  # a loose notebook with no student: nothing Canvas could match
        canvas_user_id = next((str((r.get("extra_data") or {}).get("canvas_user_id")) for r in row.values()
                               if (r.get("extra_data") or {}).get("canvas_user_id")), "")
        entry = match_student(student, canvas_user_id, roster or [])
        if entry is not None:
            identity = [entry.name, entry.canvas_id, entry.sis_user_id, entry.sis_login_id, entry.section]
        else:
            identity = [student, canvas_user_id, "", "" if canvas_user_id else student, ""]
        writer.writerow(identity + [_number(row[a].get("score") or 0.0) if a in row else "" for a in assignments])
    return out.getvalue().encode("utf-8")


def unmatched_students(reports: list[dict], roster: list[CanvasStudent] | None) -> list[str]:
    """Students the Canvas roster does not know (empty without a roster)."""
    if roster is None:
        return []
    _, table = by_student(reports)
    missing = []
    for student, row in table.items():
        uid = next((str((r.get("extra_data") or {}).get("canvas_user_id") or "") for r in row.values()), "")
        if any((r.get("extra_data") or {}).get("student") for r in row.values()) and \
                match_student(student, uid, roster) is None:
            missing.append(student)
    return missing

