"""Grading a realistic class: the right score for every student, identical on a busy machine.

The class (tests/fixtures/classroom.py) is graded twice, the second time with
--force, while two busy loops occupy both cores; every student must get the
score written down for them, and the two runs identical reports.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autograder.registry import assignments, checks_for
from tests.conftest import ROOT
from tests.fixtures import classroom

# Short limits keep the runaway cases cheap; CPU time, so load does not matter.
LIMITS = ("--timeout", "5", "--cell-timeout", "10")


def grade(*args: str, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "autograder", "grade", *args], capture_output=True, text=True,
                            timeout=1800, cwd=ROOT, env={**os.environ, **(env or {})})
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def points_by_name() -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    for assignment in assignments():
        for entry in checks_for(assignment):
            names = table.setdefault(assignment, {})
            names[entry.target] = names.get(entry.target, 0.0) + entry.points
    return table


class BusyLoops:
    """Two processes spinning on the CPU: the machine of a grader who is also doing other work."""

    def __enter__(self):
        self.loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
        return self

    def __exit__(self, *exc):
        for loop in self.loops:
            loop.kill()
            loop.wait()


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory):
    base = tmp_path_factory.mktemp("classroom")
    submitted = base / "submitted"
    students = classroom.build(submitted)
    common = (str(submitted), "--due", classroom.DUE, "--late-penalty", classroom.LATE_PENALTY, "--jobs", "2",
              *LIMITS, "--quiet")
    with BusyLoops():
        first = grade(*common, "--out", str(base / "first"))
        second = grade(*common, "--out", str(base / "second"), "--force")
    return {"base": base, "students": students, "first": base / "first", "second": base / "second",
            "stderr": first.stderr}


def report_of(folder: Path, student: classroom.Student) -> dict:
    return json.loads((folder / f"{student.name}__{student.assignment}.json").read_text())


@pytest.mark.slow
def test_the_class_is_realistic(graded_class):
    students = graded_class["students"]
    assert len(students) >= 40 and {s.assignment for s in students} == {"03_softmax", "04_attention"}


@pytest.mark.slow
@pytest.mark.parametrize("student", [s for s in classroom.students() if not s.folder],
                         ids=lambda s: f"{s.assignment}-{s.name}")
def test_every_student_gets_the_expected_score(student, graded_class):
    points = points_by_name()
    for run in ("first", "second"):
        report = report_of(graded_class[run], student)
        assert report["extra_data"]["student"] == student.name
        assert report["score"] == pytest.approx(classroom.expected_score(student, points)), report["output"]
        if not student.zero:
            failed = {t["name"] for t in report["tests"] if t["status"] != "passed"}
            expected = {c.id for c in checks_for(student.assignment) if c.target in student.fails}
            assert failed == expected, report["output"]
        assert len(report["extra_data"]["ignored"]) == student.ignored, report["extra_data"]["ignored"]
        assert bool(report["extra_data"]["late"] and report["extra_data"]["late"]["penalty"]) == student.late
        for phrase in student.notes:
            assert phrase in report["output"] + json.dumps(report["tests"]), (phrase, report["output"])


@pytest.mark.slow
def test_both_runs_give_identical_reports_and_one_row_per_student(graded_class):
    first = {p.name: p.read_bytes() for p in graded_class["first"].glob("*.json")}
    second = {p.name: p.read_bytes() for p in graded_class["second"].glob("*.json")}
    assert first == second, sorted(name for name in first if first[name] != second.get(name))
    graded = [s for s in graded_class["students"] if not s.folder]
    assert len(first) == len(graded)
    rows = list(csv.DictReader(io.StringIO((graded_class["first"] / "grades.csv").read_text())))
    assert sorted((r["student"], r["assignment"]) for r in rows) == sorted((s.name, s.assignment) for s in graded)


@pytest.mark.slow
def test_a_misspelt_assignment_folder_is_named_not_silently_dropped(graded_class):
    assert "rex/03_sofmax/ is not an assignment this grader knows (did you mean 03_softmax?)" in \
        graded_class["stderr"]


@pytest.mark.slow
def test_regrading_one_student_keeps_everyone_else(graded_class, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(graded_class["first"], out)
    submitted = graded_class["base"] / "submitted"
    LATE = ("--due", classroom.DUE, "--late-penalty", classroom.LATE_PENALTY)
    table_before = (out / "grades.csv").read_text()
    others = {p.name: p.read_bytes() for p in out.glob("*.json") if not p.name.startswith("ada__")}
    # Ada fixes nothing but resubmits: both ways of naming her regrade only her.
    for how in (["--student", "ada"], ["--student", str(submitted / "ada")]):
        grade(str(submitted), *how, "--out", str(out), "--force", "--quiet", *LIMITS, *LATE)
        assert (out / "grades.csv").read_text() == table_before
        assert {p.name: p.read_bytes() for p in out.glob("*.json") if not p.name.startswith("ada__")} == others
    grade(str(submitted / "ada"), "--out", str(out), "--force", "--quiet", *LIMITS, *LATE)
    assert (out / "grades.csv").read_text() == table_before
    report = json.loads((out / "ada__03_softmax.json").read_text())
    assert report["extra_data"]["student"] == "ada" and report["score"] == report["max_score"]


@pytest.mark.parametrize("args, phrase", [
    (["--student", "nobody"], "no such student"),
    (["--student", "/etc"], "outside the submissions folder"),
    (["--due", "next tuesday-ish"], "is not a date and time"),
    (["--late-penalty", "lots"], "use none, zero, or a percentage per day"),
    (["--assignment", "99_nothing"], "not an assignment this grader knows"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(args, phrase, tmp_path):
    submitted = tmp_path / "submitted"
    classroom.Student("ada", "03_softmax").write(submitted)
    out = tmp_path / "out"
    result = grade(str(submitted), *args, "--out", str(out), check=False)
    assert result.returncode == 2 and phrase in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not out.exists()


def test_an_empty_class_is_one_line_exit_2(tmp_path):
    (tmp_path / "submitted").mkdir()
    result = grade(str(tmp_path / "submitted"), "--out", str(tmp_path / "out"), check=False)
    assert result.returncode == 2 and "no notebooks to grade" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
