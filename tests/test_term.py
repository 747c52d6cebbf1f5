"""Running a term: dates and policies in one place, grades and feedback out, regrading at scale.

Issue 26's findings, each with the test that shows it fixed (each failed on the code before):

2. ``--due`` on a tree of several assignments zeroed the later ones: now an error.
3. ambiguous dates were read as something: now ISO 8601 with a zone, or a one-line error.
5. similarity did not scale: cached fingerprints, incremental pairs, the reference and the
   library compared, a ranked and grouped report of bounded size.
6. the summary listed every submission as late.
7. no extensions: a course file's extensions hold in every run.
8. nbgrader: ``generate_assignment --force`` deleted the committed release notebook; no
   autograded notebooks, so ``generate_feedback``/``release_feedback`` had nothing.
9. no route to students or the LMS: the wide table, Canvas's gradebook CSV (read back by a
   reader written from Canvas's importer), Canvas downloads, hidden checks' data kept out.
10. one hash covered every check: editing one assignment's checks regraded everything.

A small class (a few students of 03_softmax and 04_attention, built from the realistic
class's fixtures) is graded once per module, with an nbgrader course around it.
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

from autograder.outputs import feedback, similarity, summary
from autograder.classrun.submissions import UsageError
from tests import canvas_gradebook
from tests.conftest import ROOT
from tests.fixtures import classroom

LIMITS = ("--timeout", "5", "--cell-timeout", "10")
BIN = Path(sys.executable).parent


def grade(*args: str, check: bool = True, cwd: Path = ROOT, env: dict | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "autograder", "grade", *args], capture_output=True, text=True,
                            timeout=1200, cwd=cwd, env={**os.environ, **(env or {})})
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def nbgrader(*args: str, cwd: Path, path: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": path if path is not None else f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(BIN / "nbgrader"), *args], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=600)


def students() -> list[classroom.Student]:
    by = {(s.name, s.assignment): s for s in classroom.students()}
    return [by["ada", "03_softmax"], by["ada", "04_attention"], by["dee", "03_softmax"],
            by["quinn", "03_softmax"], by["quinn", "04_attention"], by["rex", "03_softmax"]]


EXTENSION = "2026-11-04T00:00:00-05:00"  # quinn's 03_softmax: LATE (2026-11-03 09:30 UTC) is then on time


@pytest.fixture(scope="module")
def term(tmp_path_factory):
    from tests.nbgrader_course import Course

    base = tmp_path_factory.mktemp("term")
    course = Course(base / "course")
    for assignment in ("03_softmax", "04_attention"):
        course.release(assignment)
    submitted = course.folder / "submitted"
    for student in students():
        student.write(submitted)
    for name in ("ada", "dee", "quinn"):  # what `nbgrader collect` leaves beside a submission
        (submitted / name / "03_softmax" / "submission_secret.txt").write_text(f"secret-{name}")
    course_file = base / "course.toml"
    course_file.write_text(classroom.course_file({"quinn": {"03_softmax": EXTENSION}}))
    out = base / "grades"
    run = grade(str(submitted), "--course", str(course_file), "--out", str(out), "--gradebook", course.db_url,
                "--autograded", str(course.folder / "autograded"), "--jobs", "2", *LIMITS)
    return {"base": base, "course": course, "submitted": submitted, "course_file": course_file, "out": out,
            "stderr": run.stderr}


def report(out: Path, student: str, assignment: str) -> dict:
    return json.loads((out / f"{student}__{assignment}.json").read_text())


def rows(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


# --------------------------------------------------------------------------- 2 and 3: dates


def test_due_on_a_tree_of_several_assignments_is_an_error(tmp_path):
    """Finding 2: one --due over 03_softmax and 04_attention made the later assignment 0, exit 0."""
    submitted = tmp_path / "submitted"
    for assignment in ("03_softmax", "04_attention"):
        classroom.Student("quinn", assignment, timestamp=classroom.LATE).write(submitted)
    result = grade(str(submitted), "--due", classroom.DUE, "--out", str(tmp_path / "out"), check=False)
    assert result.returncode == 2, result.stderr
    assert "--due gives one assignment's due date" in result.stderr and "--course" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    # One assignment of the tree is fine.
    ok = grade(str(submitted), "--assignment", "03_softmax", "--due", classroom.DUE, "--late-penalty", "zero",
               "--out", str(tmp_path / "one"), "--quiet", *LIMITS)
    assert ok.returncode == 0 and report(tmp_path / "one", "quinn", "03_softmax")["score"] == 0  # late
    assert not (tmp_path / "one" / "quinn__04_attention.json").exists()


@pytest.mark.parametrize("text", ["01/11/2026", "2026-11-01T23:59", "2026-11-01 23:59 PST", "friday", "23:59",
                                  "2026-11-01", "2026-13-01T23:59:00Z", "next tuesday-ish"])
def test_a_date_without_an_iso_zone_is_refused(text):
    """Finding 3: 01/11/2026 became 11 January, PST was ignored, friday and 23:59 meant this week."""
    from autograder.classrun.course import parse_instant

    with pytest.raises(UsageError) as error:
        parse_instant(text, "--due")
    assert "--due" in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("text, utc", [("2026-11-01T23:59:00-05:00", "2026-11-02T04:59:00"),
                                       ("2026-11-01T23:59Z", "2026-11-01T23:59:00"),
                                       ("2026-11-01 23:59:30.5+0100", "2026-11-01T22:59:30.500000")])
def test_iso_dates_with_a_zone_are_read_in_utc(text, utc):
    from autograder.classrun.course import parse_instant

    assert parse_instant(text, "--due").isoformat() == utc


def test_bad_dates_on_the_command_line_and_in_the_course_file_are_one_line_exit_2(tmp_path):
    submitted = tmp_path / "submitted"
    classroom.Student("ada", "03_softmax").write(submitted)
    result = grade(str(submitted), "--due", "01/11/2026", "--out", str(tmp_path / "a"), check=False)
    assert result.returncode == 2 and "'01/11/2026' is not an ISO 8601 date and time with a time zone" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "a").exists()
    bad = tmp_path / "course.toml"
    bad.write_text('[assignments.03_softmax]\ndue = 2026-11-01T23:59:00\n')  # a TOML date-time with no offset
    result = grade(str(submitted), "--course", str(bad), "--out", str(tmp_path / "b"), check=False)
    assert result.returncode == 2 and "assignments.03_softmax.due 2026-11-01T23:59:00 has no time zone" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "b").exists()


def test_the_course_file_rejects_typos_and_mixing_with_due(tmp_path):
    from autograder.classrun.course import load_course

    known = {"03_softmax": [], "04_attention": []}
    cases = {'[assignments.03_sofmax]\ndue = "2026-11-01T23:59:00Z"\n': "unknown key '03_sofmax' (did you mean 03_softmax?)",
             '[assignments.03_softmax]\ndue_date = "2026-11-01T23:59:00Z"\n': "unknown key 'due_date' (known: canvas, due, late)",
             '[late]\npenalty = "lots"\n': "use none, zero, or a percentage per day",
             '[extensions]\nada = { 03_softmax = "3d" }\n': "needs the assignment's due date"}
    for text, phrase in cases.items():
        path = tmp_path / "course.toml"
        path.write_text(text)
        with pytest.raises(UsageError) as error:
            load_course(path, known)
        assert phrase in str(error.value), (text, error.value)
    submitted = tmp_path / "submitted"
    classroom.Student("ada", "03_softmax").write(submitted)
    (tmp_path / "ok.toml").write_text(classroom.course_file())
    result = grade(str(submitted), "--course", str(tmp_path / "ok.toml"), "--due", classroom.DUE, "--out",
                   str(tmp_path / "out"), check=False)
    assert result.returncode == 2 and "cannot be combined with --course" in result.stderr


def test_late_policy_grace_and_cap():
    from autograder.classrun.course import LatePolicy

    policy = LatePolicy("percent", 10.0, grace_seconds=15 * 60, cap_percent=25.0)
    assert policy.penalty(10, 10, 10 * 60) == 0 and not policy.is_late(10 * 60)  # within the grace period
    assert policy.penalty(10, 10, 20 * 60) == 1.0  # one day or part of one, counted from the due date
    assert policy.penalty(10, 10, 5 * 86400) == 2.5  # five days would be 5, the cap is 25% of 10
    assert policy.penalty(1, 10, 3 * 86400) == 1  # never below zero
    assert "grace period of 15 minutes" in policy.describe() and "at most 25%" in policy.describe()


# --------------------------------------------------------------------------- 6 and 7: lateness


def test_the_summary_lists_only_late_submissions():
    """Finding 6: every submission with a timestamp was listed under "Late submissions"."""
    def graded(student: str, seconds: float, penalty: float) -> dict:
        return {"score": 10 - penalty, "max_score": 10, "tests": [], "extra_data": {
            "student": student, "assignment": "03_softmax", "submission": f"{student}/03_softmax/03_softmax.ipynb",
            "late": {"timestamp": "2026-11-01T20:00:00+00:00", "due": "2026-11-01T23:59:00+00:00",
                     "seconds_late": seconds, "penalty": penalty}}}

    reports = [graded("ada", 0.0, 0.0), graded("ben", 0.0, 0.0), graded("quinn", 3600.0, 1.0)]
    late = summary.summarise(reports)["03_softmax"]["late"]
    assert [x["submission"] for x in late] == ["quinn (quinn/03_softmax/03_softmax.ipynb)"]


def test_extensions_hold_in_every_run_and_follow_the_course_file(term, tmp_path):
    """Finding 7: an extension given to one --student run was undone by the next whole-class run."""
    out = term["out"]
    quinn = report(out, "quinn", "03_softmax")
    late = quinn["extra_data"]["late"]
    assert late["extension"] and not late["late"] and late["penalty"] == 0 and quinn["score"] == quinn["max_score"]
    other = report(out, "quinn", "04_attention")  # no extension there: 2 days' penalty
    assert other["extra_data"]["late"]["late"] and other["score"] == pytest.approx(0.8 * other["max_score"])
    summary_page = (out / "summary-03_softmax.html").read_text()
    assert "quinn" not in summary_page.split("Late submissions")[1].split("Ungradable")[0]
    # A later run for another student keeps it; and the course file is the one place it lives: remove the
    # extension, regrade only ada, and quinn's report follows the file without being regraded.
    copy = tmp_path / "grades"
    shutil.copytree(out, copy)
    grade(str(term["submitted"]), "--student", "ada", "--course", str(term["course_file"]), "--out", str(copy),
          "--quiet", *LIMITS)
    assert report(copy, "quinn", "03_softmax") == quinn
    no_extension = tmp_path / "course.toml"
    no_extension.write_text(classroom.course_file())
    grade(str(term["submitted"]), "--student", "ada", "--course", str(no_extension), "--out", str(copy), "--quiet",
          *LIMITS)
    again = report(copy, "quinn", "03_softmax")
    assert again["extra_data"]["late"]["late"] and again["score"] == pytest.approx(0.8 * again["max_score"])
    assert again["tests"] == quinn["tests"]  # re-derived from the stored timestamp, not regraded
    wide = {r["student"]: r for r in rows(copy / "grades-wide.csv")}
    assert float(wide["quinn"]["03_softmax late penalty"]) == pytest.approx(0.2 * quinn["max_score"])


def test_an_extension_for_an_unknown_student_is_warned_about(term):
    assert "extension" not in term["stderr"]  # quinn exists
    path = term["base"] / "typo.toml"
    path.write_text(classroom.course_file({"qiunn": {"03_softmax": EXTENSION}}))
    shutil.copytree(term["out"], term["base"] / "typo")  # up to date: nothing is regraded
    result = grade(str(term["submitted"]), "--course", str(path), "--out", str(term["base"] / "typo"), "--quiet",
                   *LIMITS)
    assert "the extension for 'qiunn' (03_softmax) matches no student in the submissions (did you mean quinn?)" \
        in result.stderr


# --------------------------------------------------------------------------- 4: one check overridden


def override_file(path: Path, *entries: tuple[str, str, str, float, str]) -> Path:
    path.write_text(classroom.course_file() + "".join(
        f'\n[[overrides]]\nstudent = "{s}"\nassignment = "{a}"\ncheck = "{c}"\npoints = {p}\nreason = "{r}"\n'
        for s, a, c, p, r in entries))
    return path


def test_an_override_of_one_check_for_one_student_is_recorded_and_survives_reruns(term, tmp_path):
    """Finding 4: an instructor can set one check's score for one student; a regrade keeps it."""
    out = tmp_path / "grades"
    shutil.copytree(term["out"], out)
    graded = {(s, a): report(out, s, a) for s in ("dee", "rex") for a in ("03_softmax",)}
    lost = next(t for t in graded["dee", "03_softmax"]["tests"] if t["score"] < t["max_score"])
    reason = "reviewed by hand: right up to rounding"
    course = override_file(tmp_path / "course.toml", ("dee", "03_softmax", lost["name"], lost["max_score"], reason))
    grade(str(term["submitted"]), "--student", "rex", "--course", str(course), "--out", str(out), "--quiet",
          *LIMITS)  # another student's regrade: dee's report follows the course file
    dee = report(out, "dee", "03_softmax")
    test = next(t for t in dee["tests"] if t["name"] == lost["name"])
    assert test["score"] == lost["max_score"] and test["override"] == {"grader_score": lost["score"],
                                                                       "reason": reason}
    gain = lost["max_score"] - lost["score"]
    assert dee["score"] == pytest.approx(graded["dee", "03_softmax"]["score"] + gain)
    assert f"Override: {lost['name']} set to {lost['max_score']:g}" in dee["output"] and reason in dee["output"]
    assert report(out, "rex", "03_softmax")["tests"] == graded["rex", "03_softmax"]["tests"]  # only dee's
    long = {(r["student"], r["assignment"]): r for r in rows(out / "grades.csv")}
    assert float(long["dee", "03_softmax"][lost["name"]]) == lost["max_score"]
    wide = {r["student"]: r for r in rows(out / "grades-wide.csv")}
    assert "override: " + lost["name"] in wide["dee"]["03_softmax notes"]
    # Regrading dee herself keeps it (--force: the notebook is graded again); deleting it restores the grader's score.
    grade(str(term["submitted"]), "--student", "dee", "--course", str(course), "--out", str(out), "--quiet",
          "--force", *LIMITS)
    assert next(t for t in report(out, "dee", "03_softmax")["tests"] if t["name"] == lost["name"])["score"] \
        == lost["max_score"]
    course.write_text(classroom.course_file())
    grade(str(term["submitted"]), "--student", "rex", "--course", str(course), "--out", str(out), "--quiet",
          *LIMITS)
    assert report(out, "dee", "03_softmax")["tests"] == graded["dee", "03_softmax"]["tests"]
    assert report(out, "dee", "03_softmax")["score"] == graded["dee", "03_softmax"]["score"]


@pytest.mark.parametrize("entry, message", [
    (("dee", "03_softmax", "softmax_hiddn", 1, "r"), "has no check 'softmax_hiddn' (did you mean softmax_hidden?)"),
    (("dee", "03_softmax", "softmax_hidden", 99, "r"), "must be a number from 0 to"),
    (("dee", "03_softmax", "softmax_hidden", 1, " "), "the reason is empty"),
    (("dee", "03_sofmax", "softmax_hidden", 1, "r"), "did you mean 03_softmax?"),
])
def test_an_override_that_names_no_check_or_gives_impossible_points_is_one_line_exit_2(tmp_path, entry, message):
    course = override_file(tmp_path / "course.toml", entry)
    result = grade(str(tmp_path), "--course", str(course), "--out", str(tmp_path / "out"), check=False)
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- 9: grades and feedback out


def test_the_wide_table_has_a_row_per_student_with_raw_score_lateness_penalty_and_notes(term):
    wide = {r["student"]: r for r in rows(term["out"] / "grades-wide.csv")}
    assert sorted(wide) == ["ada", "dee", "quinn", "rex"]  # rex's misspelt folder keeps his row
    quinn = wide["quinn"]
    full = report(term["out"], "quinn", "04_attention")["max_score"]
    assert float(quinn["04_attention raw score"]) == full and float(quinn["04_attention hours late"]) == 33.52
    assert float(quinn["04_attention late penalty"]) == pytest.approx(0.2 * full)
    assert float(quinn["04_attention score"]) == pytest.approx(0.8 * full)
    assert "extension to 2026-11-04T05:00:00+00:00" in quinn["03_softmax notes"]
    assert "your folder is named 03_sofmax, not 03_softmax" in wide["rex"]["03_softmax notes"]
    assert wide["rex"]["04_attention notes"] == "no submission"
    totals = {s: float(r["total"]) for s, r in wide.items()}
    assert totals["ada"] == float(wide["ada"]["total out of"])
    long = rows(term["out"] / "grades.csv")
    assert {"raw_score", "late_penalty", "hours_late"} <= set(long[0])


def test_the_canvas_csv_is_read_by_canvas_rules(term):
    """Every student found by Canvas's importer, every score and points possible as in our reports."""
    book = canvas_gradebook.parse((term["out"] / "grades-canvas.csv").read_text())
    assert [a.title for a in book.assignments] == ["03_softmax", "04_attention"]
    assert [a.points_possible for a in book.assignments] == ["14", "10"]
    by_login = {s.sis_login_id: s for s in book.students}
    assert sorted(by_login) == ["ada", "dee", "quinn", "rex"] and all(s.identified() for s in book.students)
    for student in ("ada", "dee", "quinn"):
        for assignment in ("03_softmax", "04_attention"):
            path = term["out"] / f"{student}__{assignment}.json"
            expected = f"{json.loads(path.read_text())['score']:g}" if path.exists() else ""  # blank: no change
            assert float(by_login[student].grades[assignment] or "nan") == pytest.approx(float(expected or "nan"),
                                                                                       nan_ok=True)


def test_a_canvas_roster_maps_students_and_columns(term, tmp_path):
    roster = tmp_path / "canvas-export.csv"
    roster.write_text("Student,ID,SIS User ID,SIS Login ID,Section,Exercise 3 (901),Current Score,Final Score\n"
                      "    Points Possible,,,,,14,(read only),(read only)\n"
                      '"Lovelace, Ada",1001,S-1,ada,Sec 1,,,\n"Quinn, Harley",1002,S-2,hquinn,Sec 1,,,\n'
                      '"Dee, John",1003,S-3,dee,Sec 2,,,\n')
    course_file = tmp_path / "course.toml"
    course_file.write_text(classroom.course_file({"quinn": {"03_softmax": EXTENSION}}).replace(
        '[assignments.03_softmax]\n', '[assignments.03_softmax]\ncanvas = "Exercise 3 (901)"\n')
        + '\n[canvas]\nroster = "canvas-export.csv"\n')
    out = tmp_path / "grades"
    shutil.copytree(term["out"], out)
    result = grade(str(term["submitted"]), "--course", str(course_file), "--out", str(out), *LIMITS)
    assert "2 student(s) are not in the Canvas roster canvas-export.csv (quinn, rex)" in result.stderr
    book = canvas_gradebook.parse((out / "grades-canvas.csv").read_text())
    assert [(a.title, a.canvas_id) for a in book.assignments] == [("Exercise 3", "901"), ("04_attention", None)]
    ada = [s for s in book.students if s.canvas_id == "1001"]
    assert len(ada) == 1 and ada[0].name == "Lovelace, Ada" and ada[0].sis_login_id == "ada"
    assert float(ada[0].grades["Exercise 3 (901)"]) == report(out, "ada", "03_softmax")["score"]


def test_canvas_rules_reject_a_file_without_the_student_columns():
    """The reader is strict where Canvas is, so a test passing through it means something."""
    with pytest.raises(canvas_gradebook.InvalidHeaderRow):
        canvas_gradebook.parse("student,score\nada,14\n")
    with pytest.raises(canvas_gradebook.InvalidHeaderRow):
        canvas_gradebook.parse("Student,ID,SIS Login ID,03_softmax\nada,,ada,14\n")  # no Section column
    book = canvas_gradebook.parse("Student;ID;SIS User ID;SIS Login ID;Section;A (7)\nx;1;;;;12,5\n")
    assert book.students[0].grades == {"A (7)": "12.5"} and book.assignments[0].canvas_id == "7"


def test_a_canvas_download_is_graded_per_student_with_canvas_ids_and_late_marks(tmp_path):
    """Finding 9: alicesmith_12345_678901_03_softmax.ipynb graded with an empty student and no lateness."""
    folder = tmp_path / "canvas"
    folder.mkdir()
    good = classroom.Student("x", "03_softmax").notebook()
    wrong = classroom.Student("dee", "03_softmax", {"softmax"},
                              edits=[("softmax", "exps.sum(dim=dim", "exps.sum(dim=0")]).notebook()
    files = {"smithalice_12345_678901_03_softmax.ipynb": good,
             "jonesbob_late_23456_678902_03_softmax-1.ipynb": wrong,
             "jonesbob_late_23456_678903_Untitled.ipynb": classroom.released("03_softmax")}
    for name, notebook in files.items():
        (folder / name).write_text(json.dumps(notebook))
    out = tmp_path / "out"
    grade(str(folder), "--out", str(out), "--quiet", *LIMITS)
    alice, bob = report(out, "smithalice", "03_softmax"), report(out, "jonesbob", "03_softmax")
    assert alice["extra_data"]["student"] == "smithalice" and alice["extra_data"]["canvas_user_id"] == "12345"
    assert alice["score"] == alice["max_score"] and not (alice["extra_data"]["late"] or {}).get("late")
    assert bob["extra_data"]["late"]["late"] and bob["extra_data"]["late"]["marked_late"]
    assert [i["path"] for i in bob["extra_data"]["ignored"]] == ["jonesbob_late_23456_678903_Untitled.ipynb"]
    assert "Canvas marked this submission late" in bob["output"]
    book = canvas_gradebook.parse((out / "grades-canvas.csv").read_text())
    assert {s.canvas_id: s.grades["03_softmax"] for s in book.students} == \
        {"12345": f"{alice['score']:g}", "23456": f"{bob['score']:g}"}
    late = summary.summarise([alice, bob])["03_softmax"]["late"]
    assert [x["submission"].split(" ")[0] for x in late] == ["jonesbob"]
    again = grade(str(folder), "--student", "jonesbob", "--out", str(out), "--force", "--quiet", *LIMITS)
    assert again.returncode == 0 and report(out, "jonesbob", "03_softmax") == bob


def test_hidden_checks_data_stays_out_of_student_feedback(term):
    """Finding 9: a hidden check's inputs and expected values appeared in the student's feedback."""
    dee = report(term["out"], "dee", "03_softmax")
    hidden = [t for t in dee["tests"] if t["visibility"] != "visible" and t["status"] == "failed"]
    assert hidden
    data_lines = [line for t in hidden for line in t["output"].splitlines()[1:]
                  if any(c.isdigit() for c in line) and "See:" not in line and len(line) > 20]
    assert data_lines  # the hidden check's message does quote its data: the instructor's report keeps it
    for path in (term["out"] / "feedback" / "dee" / "03_softmax.md", term["out"] / "feedback" / "dee" / "03_softmax.html",
                 term["course"].folder / "autograded" / "dee" / "03_softmax" / "03_softmax.ipynb"):
        text = path.read_text()
        leaked = [line for line in data_lines if line.strip() in text or json.dumps(line.strip())[1:-1] in text]
        assert not leaked, (path.name, leaked[:2])
        assert "inputs and expected values are not shown" in text
    shown = feedback.feedback_markdown(feedback.read_feedback(dee, hide_hidden=False))  # --no-hide-hidden-inputs
    assert all(line.strip() in shown for line in data_lines)


# --------------------------------------------------------------------------- 8: nbgrader


def test_nbgrader_generate_and_release_feedback_from_our_grading(term):
    course = term["course"]
    config = [f"--CourseDirectory.root={course.folder}", f"--CourseDirectory.db_url={course.db_url}",
              "--CourseDirectory.source_directory=solutions", "--CourseDirectory.release_directory=release",
              "--CourseDirectory.course_id=llm-foundations", f"--Exchange.root={term['base'] / 'exchange'}"]
    generated = nbgrader("generate_feedback", "03_softmax", *config, cwd=course.folder)
    assert generated.returncode == 0, generated.stderr[-3000:]
    for student in ("ada", "dee", "quinn", "rex"):
        page = course.folder / "feedback" / student / "03_softmax" / "03_softmax.html"
        text = page.read_text()
        ours = report(term["out"], student, "03_softmax")
        raw = ours["extra_data"]["late"]["raw_score"]
        assert f"Score: {raw:.1f} / {ours['max_score']:.1f}" in text, student  # nbgrader's own page, our scores
        assert "run_hidden" not in text and "BEGIN HIDDEN" not in text
    assert "softmax(logits, dim=-1) returned wrong values" in \
        (course.folder / "feedback" / "dee" / "03_softmax" / "03_softmax.html").read_text()  # the public message
    (term["base"] / "exchange").mkdir(exist_ok=True)
    released = nbgrader("release_feedback", "03_softmax", *config, "--student=ada", cwd=course.folder)
    assert released.returncode == 0, released.stderr[-3000:]
    assert len(list((term["base"] / "exchange" / "llm-foundations" / "feedback").glob("*.html"))) == 1


def nbgrader_course_copy(folder: Path) -> Path:
    folder.mkdir()
    for name in ("solutions", "exercises"):
        shutil.copytree(ROOT / name / "03_softmax", folder / name / "03_softmax")
    shutil.copy(ROOT / "nbgrader_config.py", folder)
    return folder / "exercises" / "03_softmax" / "03_softmax.ipynb"


def test_generate_assignment_force_never_deletes_the_committed_release(tmp_path):
    """Finding 8: without the venv on PATH it deleted exercises/…ipynb, then failed on `alembic`."""
    release = nbgrader_course_copy(tmp_path / "course")
    committed = release.read_bytes()
    result = nbgrader("generate_assignment", "03_softmax", "--force", cwd=tmp_path / "course", path="/usr/bin:/bin")
    assert result.returncode == 0, result.stderr[-3000:]
    assert release.read_bytes() == committed  # regenerated, identical
    # A failure after nbgrader has deleted the release folder puts it back.
    (tmp_path / "course" / "solutions" / "03_softmax" / "03_softmax.ipynb").write_text('{"cells": [')
    failed = nbgrader("generate_assignment", "03_softmax", "--force", cwd=tmp_path / "course", path="/usr/bin:/bin")
    assert failed.returncode != 0 and "was restored" in failed.stderr
    assert release.read_bytes() == committed


def test_without_alembic_a_gradebook_command_stops_with_one_line(tmp_path, monkeypatch):
    from autograder import nbgrader_hooks

    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    environ = {"PATH": str(tmp_path / "nowhere")}
    with pytest.raises(SystemExit) as stop:
        nbgrader_hooks.ensure_alembic(["nbgrader", "generate_assignment", "03_softmax", "--force"], environ)
    assert "needs the `alembic` command" in str(stop.value) and "Nothing was changed" in str(stop.value)
    nbgrader_hooks.ensure_alembic(["nbgrader", "validate", "x.ipynb"], environ)  # no gradebook: no need


# --------------------------------------------------------------------------- 5: similarity at scale


def copies(folder: Path, count: int, variants: list[classroom.Student]) -> list[tuple[str, Path, None]]:
    entries = []
    for i in range(count):
        notebook = variants[i % len(variants)].notebook()
        notebook["cells"].append(classroom.code_cell(f"student_number = {i}"))
        path = folder / f"s{i:03d}.ipynb"
        path.write_text(json.dumps(notebook))
        entries.append((f"s{i:03d}", path, None))
    return entries


def test_similarity_is_incremental_cached_and_bounded(tmp_path):
    """Finding 5: 150 students gave a 58 MB page rebuilt from scratch on every run."""
    variants = [classroom.Student("a", "03_softmax"), classroom.Student("b", "03_softmax", style_b=True)]
    entries = copies(tmp_path, 40, variants)
    cache = tmp_path / "cache"
    first = similarity.compare_class(entries, "03_softmax", cache_dir=cache)
    assert first.compared == 40 and first.computed > 40 * 39 / 2 * 0.4
    assert len(first.clusters) >= 1 and sum(len(c) for c in first.clusters) == 40
    page = similarity.similarity_html(first)
    assert len(page.encode()) < 400_000 and page.count("<section") == similarity.TOP_DETAILED
    assert "every pair is in the CSV" in page
    # The same class again: everything from the cache. One student changed: only their pairs.
    assert similarity.compare_class(entries, "03_softmax", cache_dir=cache).computed == 0
    changed = json.loads(entries[7][1].read_text())
    changed["cells"].append(classroom.code_cell("def helper(x):\n    return x.exp().sum(dim=-1) / x.numel()\n"))
    entries[7][1].write_text(json.dumps(changed))
    again = similarity.compare_class(entries, "03_softmax", cache_dir=cache)
    assert 0 < again.computed <= 39 + len(similarity.reference_fingerprints("03_softmax", set(), cache))
    fresh = similarity.compare_class(entries, "03_softmax")  # no cache: the same result
    assert [(p.a, p.b, round(p.score, 9)) for p in again.pairs] == [(p.a, p.b, round(p.score, 9)) for p in fresh.pairs]


def test_the_reference_and_the_library_are_in_the_comparison(term, tmp_path):
    """Finding 5: a submission that is the reference solution was never flagged as such."""
    page = (term["out"] / "similarity-03_softmax.html").read_text()
    section = page.split("Matching the reference solution or the book's library")[2].split("<h2>")[0]
    assert "ada" in section and "the reference solution" in section
    # Copied from the book's library rather than the notebook: flagged against tinyllm's module.
    from tests.fixtures.classroom import reference_sources

    library = (ROOT / "tinyllm" / "softmax.py").read_text()
    start = library.index("def softmax(")
    body = library[start:library.index("\ndef ", start + 1)]
    student = classroom.Student("lib", "03_softmax", fill=False).notebook()
    for cell in student["cells"]:
        if cell["metadata"].get("nbgrader", {}).get("grade_id") == "softmax":
            cell["source"] = "import torch\nfrom torch import Tensor\n" + body
    path = tmp_path / "lib.ipynb"
    path.write_text(json.dumps(student))
    assert reference_sources("03_softmax")  # the solution cells exist
    result = similarity.compare_class([("lib", path, None)], "03_softmax")
    assert [(r.label, r.source) for r in result.references] == [("lib", "the book's library: tinyllm/softmax.py")] \
        or result.references[0].source in ("the reference solution", "the book's library: tinyllm/softmax.py")


# --------------------------------------------------------------------------- 10: per-assignment check versions


def test_a_check_edit_changes_only_its_assignments_version(tmp_path):
    from autograder.grading.registry import PACKAGE_DIR, checks_version

    package = tmp_path / "autograder"
    shutil.copytree(PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    names = ["03_softmax", "04_attention", "05_transformer_layer", "06_tiny_gpt"]
    before = {a: checks_version(a, package) for a in names}
    assert len(set(before.values())) == len(names)
    with open(package / "hidden" / "test_03_softmax.py", "a") as handle:
        handle.write("\n# a fix to one hidden check\n")
    after = {a: checks_version(a, package) for a in names}
    assert after["03_softmax"] != before["03_softmax"] and all(after[a] == before[a] for a in names[1:])
    with open(package / "checks" / "test_04_attention.py", "a") as handle:
        handle.write("\n# 05's checks import 04's helpers\n")
    later = {a: checks_version(a, package) for a in names}
    assert later["04_attention"] != after["04_attention"] and later["05_transformer_layer"] != after["05_transformer_layer"]
    assert later["06_tiny_gpt"] == after["06_tiny_gpt"]
    with open(package / "outputs" / "summary.py", "a") as handle:  # output only: no regrade
        handle.write("\n# a new chart\n")
    assert {a: checks_version(a, package) for a in names} == later
    with open(package / "grading" / "runner.py", "a") as handle:  # decides every grade
        handle.write("\n# a runner fix\n")
    assert all(checks_version(a, package)[:8] != later[a][:8] for a in names)


@pytest.mark.slow
def test_editing_one_assignments_checks_regrades_only_it_and_no_known_timeout(tmp_path):
    """Finding 10: one hash covered all checks; every infinite loop paid its time again."""
    code = tmp_path / "code"
    shutil.copytree(ROOT / "autograder", code / "autograder", ignore=shutil.ignore_patterns("__pycache__"))
    submitted = tmp_path / "submitted"
    classroom.Student("ada", "03_softmax").write(submitted)
    looping = [s for s in classroom.attention_class() if s.name == "jon"][0]  # an infinite loop in 04
    looping.write(submitted)
    out = tmp_path / "out"
    env = {"PYTHONPATH": str(code)}
    grade(str(submitted), "--out", str(out), "--quiet", "--timeout", "1", "--cell-timeout", "2", cwd=code, env=env)
    jon = (out / "jon__04_attention.json").read_bytes()
    assert b'"timeout"' in jon
    ada = (out / "ada__03_softmax.json").stat().st_mtime_ns
    with open(code / "autograder" / "hidden" / "test_03_softmax.py", "a") as handle:
        handle.write("\n# a fix to one hidden check\n")
    again = grade(str(submitted), "--out", str(out), "--timeout", "1", "--cell-timeout", "2", cwd=code, env=env)
    assert "1 submission(s) already graded" in again.stderr
    assert (out / "jon__04_attention.json").read_bytes() == jon  # not run again: its checks did not change
    assert (out / "ada__03_softmax.json").stat().st_mtime_ns != ada  # regraded: its checks did
