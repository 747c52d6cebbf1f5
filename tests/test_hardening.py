"""Hardening: hostile, broken and interrupted grading, with nothing lost and nothing leaked."""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.conftest import HTML, ROOT
from tests.fixtures import hostile
from tests.fixtures.submissions import all_fixtures
from tests.nbgrader_course import Course

HIDDEN = ROOT / "autograder" / "hidden"


def run_grader(*args: str, tmpdir: Path, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "autograder", "grade", *args, "--quiet"], capture_output=True,
                            text=True, timeout=1800, cwd=ROOT, env={**os.environ, "TMPDIR": str(tmpdir), **(env or {})})
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def reports(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.json"))}


def leftover_workers() -> list[str]:
    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in listing.splitlines() if "autograder.sandbox.worker" in line or hostile.MARKER in line]


def hidden_source_lines() -> set[str]:
    """Lines only the hidden checks have (not imports, decorators, blank lines, or lines the public checks share)."""
    def meaningful(folder: Path) -> set[str]:
        lines = set()
        for path in folder.glob("*.py"):
            for line in path.read_text().splitlines():
                text = line.strip()
                if len(text) > 30 and not text.startswith(("from ", "import ", "#", '"""', "@check", "def test_")):
                    lines.add(text)
        return lines

    lines = meaningful(HIDDEN) - meaningful(HIDDEN.parent / "checks")
    assert len(lines) > 20
    return lines


def leaked_lines(text: str, lines: set[str]) -> list[str]:
    """Hidden lines that occur in text as whole statements (`x = f()` must not match inside `max = f()`)."""
    # The substring test first: it rules out nearly every line at once (the site is 40 MB of text).
    return [line for line in lines if line in text and re.search(r"(?<![\w.])" + re.escape(line), text)]


def normal_fixtures():
    return [f for f in all_fixtures() if f.assignment == "03_softmax"]


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    """One class run: every hostile case beside ordinary submissions; and a run of the ordinary ones alone."""
    base = tmp_path_factory.mktemp("hostile")
    tmpdir = base / "tmp"
    tmpdir.mkdir()
    normal = base / "normal"
    for fixture in normal_fixtures():
        fixture.write(normal)
    mixed = base / "mixed"
    shutil.copytree(normal, mixed)
    hostile.write_all(mixed)
    env = {hostile.SECRET_NAME: "the grader's secret"}
    started = time.monotonic()
    # A short cell limit: the case that blocks every signal in a top-level loop is caught by the
    # wall-clock backstop behind it, which the default (120 s of CPU time) would make 6 minutes.
    limits = ("--cell-timeout", "10")
    run_grader(str(mixed), "--out", str(base / "out"), "--jobs", "2", *limits, tmpdir=tmpdir, env=env)
    seconds = time.monotonic() - started
    run_grader(str(normal), "--out", str(base / "baseline"), "--jobs", "2", *limits, tmpdir=tmpdir, env=env)
    return {"out": base / "out", "baseline": base / "baseline", "mixed": mixed, "tmpdir": tmpdir,
            "seconds": seconds}


def test_the_suite_has_at_least_25_cases_in_every_family():
    names = [case.name for case in hostile.CASES]
    assert len(names) >= 25 and len(set(names)) == len(names)
    families = {"cheats_": 3, "loops_": 2, "calls_os_exit": 1, "allocates": 1, "fork_bomb": 1, "thread_bomb": 1,
                "prints_perfect": 1, "reads_": 2, "uses_the_network": 1, "signals_": 1, "invalid_json": 1}
    for prefix, count in families.items():
        assert sum(name.startswith(prefix) for name in names) >= count, prefix


@pytest.mark.slow
@pytest.mark.parametrize("case", hostile.CASES, ids=lambda c: c.name)
def test_hostile_case_gets_exactly_its_report(case, hostile_run):
    report = json.loads((hostile_run["out"] / f"03_softmax__{case.name}.json").read_text())
    got = {t["name"]: (t["status"], t["output"]) for t in report["tests"] if t["status"] != "passed"}
    assert set(got) == set(case.fails), f"{case.name}: {got}"
    for check_id, (status, phrase) in case.fails.items():
        assert got[check_id][0] == status and phrase in got[check_id][1], f"{case.name}/{check_id}: {got[check_id]}"
    assert report["score"] == case.score and report["max_score"] == hostile.MAX
    assert report["extra_data"]["assignment"] == "03_softmax"


@pytest.mark.alone  # lists every process of the machine: no other test file may grade beside it
@pytest.mark.slow
def test_hostile_cases_change_no_other_report_and_leave_nothing_behind(hostile_run):
    graded = reports(hostile_run["out"])
    for name, data in reports(hostile_run["baseline"]).items():
        assert graded[name] == data, f"{name} differs when graded beside the hostile submissions"
    assert len(graded) == len(hostile.CASES) + len(normal_fixtures())
    csv_rows = (hostile_run["out"] / "grades.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + len(graded)
    assert not list(hostile_run["tmpdir"].iterdir()), "temporary folders were left behind"
    assert not leftover_workers(), leftover_workers()
    assert not (hostile_run["mixed"] / "03_softmax" / "results.json").exists()


# Where a process in bwrap may not make namespaces of its own (as under Ubuntu's AppArmor
# restriction of unprivileged user namespaces), every worker gets a bubblewrap sandbox of its own. Its zygote and keeper
# share that sandbox, so two cases differ there, and only for themselves: spies_on_other_workers
# sees them in /proc, and signals_the_grader kills them with kill(-1).
FALLBACK_CASES = ["loops_forever_ignoring_sigalrm", "calls_os_exit_in_softmax", "fork_bomb",
                  "leaves_background_processes", "reads_reference_solutions", "searches_for_other_submissions",
                  "uses_the_network", "fills_the_disk", "reads_the_environment_secrets", "cheats_patched_comparisons"]


@pytest.mark.alone  # lists every process of the machine: no other test file may grade beside it
@pytest.mark.slow
def test_one_sandbox_per_worker_where_namespaces_cannot_nest(tmp_path):
    cases = [case for case in hostile.CASES if case.name in FALLBACK_CASES]
    assert len(cases) == len(FALLBACK_CASES)
    folder = tmp_path / "in"
    for case in cases:
        case.write(folder)
    normal = normal_fixtures()
    for fixture in normal:
        fixture.write(tmp_path / "normal")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {"AUTOGRADER_NO_NESTING": "1", hostile.SECRET_NAME: "the grader's secret"}
    run_grader(str(folder), "--out", str(tmp_path / "out"), "--jobs", "2", tmpdir=tmpdir, env=env)
    run_grader(str(tmp_path / "normal"), "--out", str(tmp_path / "normal_out"), tmpdir=tmpdir, env=env)
    run_grader(str(tmp_path / "normal"), "--out", str(tmp_path / "nested_out"), tmpdir=tmpdir)
    for case in cases:
        report = json.loads((tmp_path / "out" / f"03_softmax__{case.name}.json").read_text())
        got = {t["name"]: t["status"] for t in report["tests"] if t["status"] != "passed"}
        assert got == {check: status for check, (status, _) in case.fails.items()}, case.name
        assert report["score"] == case.score, case.name
    assert reports(tmp_path / "normal_out") == reports(tmp_path / "nested_out")  # same grades either way
    # Proof that the fallback ran: a worker there sees its own sandbox's zygote and keeper.
    spy = next(case for case in hostile.CASES if case.name == "spies_on_other_workers")
    spy.write(tmp_path / "spy")
    run_grader(str(tmp_path / "spy"), "--out", str(tmp_path / "spy_out"), tmpdir=tmpdir, env=env)
    report = json.loads((tmp_path / "spy_out" / "03_softmax__spies_on_other_workers.json").read_text())
    assert "sees processes" in report["tests"][0]["output"], report["tests"][0]["output"]
    assert not list(tmpdir.iterdir()), "temporary folders were left behind"
    assert not leftover_workers(), leftover_workers()


@pytest.mark.slow
def test_feedback_never_shows_hidden_check_source(hostile_run):
    lines = hidden_source_lines()
    for path in hostile_run["out"].glob("*.json"):
        text = json.dumps(json.loads(path.read_text()))
        leaked = leaked_lines(text, lines)
        assert not leaked, f"{path.name} shows hidden-check source: {leaked[:2]}"


# ---------------------------------------------------------------- faults in the grader

def make_class(folder: Path, count: int) -> None:
    variants = [f for f in all_fixtures() if f.assignment == "02_embeddings"]
    for i in range(count):
        notebook = variants[i % len(variants)].build()
        notebook["cells"].append(hostile.code_cell(f"student_number = {i}"))
        target = folder / f"student{i:03d}" / "02_embeddings" / "02_embeddings.ipynb"
        target.parent.mkdir(parents=True)
        target.write_text(json.dumps(notebook))


@pytest.mark.alone  # lists every process of the machine: no other test file may grade beside it
@pytest.mark.slow
def test_sigkill_at_random_points_loses_nothing(tmp_path):
    submitted = tmp_path / "submitted"
    make_class(submitted, 100)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    baseline = tmp_path / "baseline"
    run_grader(str(submitted), "--out", str(baseline), "--jobs", "2", tmpdir=tmpdir)
    out = tmp_path / "out"
    rng = random.Random(20261123)
    command = [sys.executable, "-m", "autograder", "grade", str(submitted), "--out", str(out), "--jobs", "2", "--quiet"]
    killed = []
    for attempt in range(4):
        process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "TMPDIR": str(tmpdir)},
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        killed.append(process.pid)
        # Kill once a random number of further reports exist, plus a random moment, so the
        # kill lands mid-run however fast this machine grades.
        target = len(list(out.glob("*.json"))) + rng.randint(5, 15)
        deadline = time.monotonic() + 600
        while len(list(out.glob("*.json"))) < target and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.3))
        process.send_signal(signal.SIGKILL)
        process.wait()
        time.sleep(0.5)  # the kernel delivers the workers' parent-death signals
        for path in out.glob("*.json"):
            json.loads(path.read_text())  # never half-written
        assert not leftover_workers(), f"attempt {attempt}: {leftover_workers()}"
    partial = len(list(out.glob("*.json")))
    run_grader(str(submitted), "--out", str(out), "--jobs", "2", tmpdir=tmpdir)
    assert 0 < partial < 100, f"the kills should land mid-run ({partial} reports before the last run)"
    assert reports(out) == reports(baseline)
    assert (out / "grades.csv").read_bytes() == (baseline / "grades.csv").read_bytes()
    assert not list(out.glob(".*.tmp"))
    assert not list(tmpdir.iterdir()), "temporary folders were left behind"
    groups = [g for base in ("/sys/fs/cgroup", "/sys/fs/cgroup/pids") for pid in killed
              for g in Path(base).glob(f"autograder-{pid}-*")]
    assert not groups, f"the killed graders' cgroups were not removed: {groups}"


@pytest.mark.slow
def test_gradebook_survives_interrupted_runs(tmp_path):
    course = Course(tmp_path / "course")
    course.release("02_embeddings")
    make_class(course.folder / "submitted", 30)
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    out = tmp_path / "grades"
    run_grader(str(course.folder / "submitted"), "--out", str(out), tmpdir=tmpdir)  # reports first
    database = course.folder / "gradebook.db"
    command = [sys.executable, "-m", "autograder", "grade", str(course.folder / "submitted"), "--out", str(out),
               "--gradebook", str(database), "--quiet"]
    rng = random.Random(7)
    for _ in range(4):  # reports are up to date, so these runs go straight to the gradebook
        process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "TMPDIR": str(tmpdir)})
        time.sleep(rng.uniform(1.0, 4.0))
        process.send_signal(signal.SIGKILL)
        process.wait()
        with sqlite3.connect(database) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    run_grader(str(course.folder / "submitted"), "--out", str(out), "--gradebook", str(database), tmpdir=tmpdir)
    expected = {f.name: f.score for f in all_fixtures() if f.assignment == "02_embeddings"}
    variants = [f for f in all_fixtures() if f.assignment == "02_embeddings"]
    for i in range(30):
        scores = course.scores("02_embeddings", f"student{i:03d}")
        assert sum(scores.values()) == expected[variants[i % len(variants)].name]


# ---------------------------------------------------------------- leaks

def test_built_book_has_no_hidden_or_instructor_material(built_html):
    lines = hidden_source_lines()
    markers = ("run_hidden", "autograder.hidden", "BEGIN HIDDEN TESTS", "BEGIN SOLUTION")
    for path in list(built_html.rglob("*.html")) + list(built_html.rglob("*.js")) + list(built_html.rglob("*.ipynb")):
        text = path.read_text(encoding="utf-8", errors="replace")
        for marker in markers:
            assert marker not in text, f"{path.relative_to(built_html)} contains {marker!r}"
        leaked = leaked_lines(text, lines)
        assert not leaked, f"{path.relative_to(built_html)} contains hidden-check source: {leaked[:2]}"


@pytest.mark.slow
def test_student_package_wheel_has_no_hidden_checks_or_solutions(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(tmp_path)],
                   check=True, timeout=600)
    (wheel,) = tmp_path.glob("*.whl")
    lines = hidden_source_lines()
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert not [n for n in names if "hidden" in n or n.startswith(("solutions/", "tests/", "exercises/"))], names
        assert any(n.startswith("autograder/checks/") for n in names)
        assert "tinyllm/_data/corpus.txt" in names
        for name in names:
            text = archive.read(name).decode("utf-8", errors="replace")
            leaked = leaked_lines(text, lines)
            assert not leaked, f"{name} contains hidden-check source"


def test_student_notebooks_have_no_hidden_check_source():
    lines = hidden_source_lines()
    for path in (ROOT / "exercises").rglob("*.ipynb"):
        text = path.read_text()
        assert not leaked_lines(text, lines), path
        assert not re.search(r"run_hidden|autograder\.hidden", text), path
