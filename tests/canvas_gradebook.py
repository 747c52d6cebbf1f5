"""A reader of Canvas's gradebook import CSV, written from Canvas's own rules, to test our export against.

Sources (read for the rules, no code taken):

* Canvas's importer, ``app/models/gradebook_importer.rb`` in instructure/canvas-lms:
  the header row, the student-information columns, the "Points Possible" row,
  read-only columns, assignment columns named ``Title (id)``, how a student is
  found (Canvas ID, then SIS User ID, then SIS Login ID, then name), the
  delimiter, and the decimal-comma converter.
* Canvas's instructor guide to importing grades (summarised by universities,
  e.g. teaching.resources.osu.edu "Import a CSV File to Carmen Grades"): the
  file needs the student's name or ID or SIS User ID, SIS Login ID, Section,
  and one column per assignment; a new column creates a new assignment; an
  existing score is overwritten.

The reader is deliberately independent of ``autograder/outputs/exports.py``: it must
reject what Canvas rejects and find what Canvas finds.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field


class InvalidHeaderRow(ValueError):
    """Canvas: "Invalid header row" (the import fails)."""


NON_ASSIGNMENT_HEADERS = ["Current Score", "Current Points", "Current Grade", "Final Score", "Final Points",
                          "Final Grade", "Override Score", "Override Grade", "Override Status"]
_TITLE_AND_ID = re.compile(r"\A(.*)\s\((\d+)\)\Z", re.S)


@dataclass
class Assignment:
    header: str
    title: str
    canvas_id: str | None
    points_possible: str | None = None


@dataclass
class StudentRow:
    name: str
    canvas_id: str
    sis_user_id: str
    sis_login_id: str
    grades: dict[str, str] = field(default_factory=dict)  # assignment header -> grade text ("" = no change)

    def identified(self) -> bool:
        """Canvas can find this student without guessing from the name alone."""
        return bool(self.canvas_id or self.sis_user_id or self.sis_login_id)


@dataclass
class Gradebook:
    assignments: list[Assignment]
    students: list[StudentRow]


def _delimiter(text: str) -> str:
    """Semicolon when it splits the first three lines into more, equally many, fields than a comma does."""
    lines = text.splitlines()[:3]
    counts = {}
    for sep in (";", ","):
        sizes = {len(next(csv.reader([line], delimiter=sep), [])) for line in lines}
        counts[sep] = sizes.pop() if len(sizes) == 1 else 0
    return ";" if counts[";"] > counts[","] else ","


def _decimal(field_text: str) -> str:
    if re.fullmatch(r"-?[0-9.,]+%?", field_text):
        parts = re.split(r"[,.]", field_text)
        last = parts.pop()
        return last if not parts else "".join(parts) + "." + last
    return field_text


def parse(text: str) -> Gradebook:
    sep = _delimiter(text)
    rows = [row for row in csv.reader(io.StringIO(text), delimiter=sep)
            if not re.fullmatch(r"[;, ]*", sep.join(row))]
    if not rows:
        raise InvalidHeaderRow("empty file")
    header = rows[0]
    if not (len(header) > 3 and "Student" in header[0] and "ID" in header[1]):
        raise InvalidHeaderRow(f"not a gradebook header: {header[:3]}")
    columns, login_col, sis_col = 3, None, None
    if re.search(r"SIS\s+Login\s+ID", header[2]):
        login_col, columns = 2, 4
    elif re.search(r"SIS\s+User\s+ID", header[2]) and re.search(r"SIS\s+Login\s+ID", header[3]):
        sis_col, login_col = 2, 3
        columns = 5 + (1 if len(header) > 4 and re.search(r"Integration\s+ID", header[4]) else 0)
    if "Section" not in header[columns - 1]:
        raise InvalidHeaderRow(f"the last student column ({header[columns - 1]!r}) is not Section")
    non_assignment = re.compile("|".join(NON_ASSIGNMENT_HEADERS))
    assignments = {}
    for index, name in enumerate(header[columns:], start=columns):
        if non_assignment.search(name):
            continue
        match = _TITLE_AND_ID.match(name)
        assignments[index] = Assignment(name, match.group(1) if match else name, match.group(2) if match else None)
    students = []
    for row in rows[1:]:
        row = [_decimal(cell) for cell in row]
        if row and "Points Possible" in row[0]:
            for index, assignment in assignments.items():
                assignment.points_possible = row[index] if index < len(row) else None
            continue
        if all(re.fullmatch(r"\s*(Muted|Manual Posting.*)?\s*", cell, flags=re.I) for cell in row):
            continue
        student = StudentRow(row[0], row[1], row[sis_col] if sis_col is not None else "",
                             row[login_col] if login_col is not None else "")
        for index, assignment in assignments.items():
            student.grades[assignment.header] = row[index].strip() if index < len(row) else ""
        students.append(student)
    return Gradebook(list(assignments.values()), students)
