"""``python -m autograder grade``: grade a notebook, a folder, or an nbgrader submitted/ tree.

What it writes into --out (default grades/):
  <name>.json          one report per submission, Gradescope's results.json shape: score,
                       max_score, tests [{name, score, max_score, status, output}], and in
                       extra_data the student, the notebook graded, the notebooks ignored
                       and why, lateness (timestamp.txt against --due) and any penalty
  grades.csv           the class table: one row per student and assignment (every report in
                       the folder, so regrading one student updates only that row), with the
                       raw score, hours late, late penalty and notes
  grades-wide.csv      one row per student: per assignment the score, raw score, hours late,
                       penalty and notes (ignored files, timeouts, cells left out); the totals
  grades-canvas.csv    the same scores in Canvas's gradebook import format (see docs/instructor.md)
  autograded/<student>/<assignment>/<assignment>.ipynb
                       each student's notebook as graded, in nbgrader's autograded/ layout, each
                       test cell showing its check's result, for nbgrader generate_feedback,
                       release_feedback and the formgrader (with --gradebook); --autograded DIR
                       writes them elsewhere (e.g. the course's own autograded/)
  feedback/<student>/<assignment>.html and .md
                       what to send each student: score per check, the teaching message,
                       the book link; never hidden-check code, tracebacks or paths
  summary-<assignment>.html
                       the class at a glance: score distribution, each check's pass rate,
                       the commonest failure messages, late and ungradable submissions
  similarity-<assignment>.html
                       submissions whose own code (starter code excluded) is suspiciously alike:
                       clusters, the closest pairs side by side, and matches with the reference
                       solution and the book's library
Dates and the late policy come from a course file (--course course.toml: due dates, the late
policy, per-student extensions; see docs/instructor.md), or for one assignment from --due
and --late-penalty, or from the gradebook's due dates. Hidden checks' inputs and expected values
stay out of what students see (--hide-hidden-inputs, the default).
With --gradebook, the scores (and timestamps and late penalties) also go into the
nbgrader gradebook, so `nbgrader export` and the formgrader show them.

In an nbgrader tree each student and assignment gives one graded notebook: the one
named after the assignment, else the only one whose name starts with it (a renamed
copy), else the only notebook there; checkpoints never. Reports are keyed by the
notebook's bytes, the version of that assignment's checks and the limits: a rerun skips
what is already graded (--force regrades), and editing one assignment's checks regrades
only that assignment. Every file is written atomically, so an interrupted run
loses nothing that finished; one output folder serves one run at a time.

Exit status: 0 when grading ran, whatever the scores; 2 for bad input (nothing is
written) or a sandbox that cannot run safely; 3 when another run holds the output folder.
"""

from __future__ import annotations

import argparse
import difflib
import fcntl
import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from autograder.classrun.course import LatePolicy, Schedule, load_course, parse_instant, read_canvas_roster, utc_text
from autograder.grading.registry import assignments, checks_for, checks_version, hidden_available
from autograder.grading.report import atomic_write, file_sha256, read_report, write_report
from autograder.classrun.submissions import Found, Submission, UsageError, find_submissions, parse_time
from autograder.sandbox.host import (PACKAGE_DIR, Limits, WorkerError, bwrap_works, close_spawners, describe,
                               remove_stale_folders, shares_a_zygote, spawner_for, stage_runtime, user_problem)


class OutputLock:
    """An exclusive lock on the output folder, released by the kernel if the process dies."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / ".autograder.lock"
        self.handle = open(self.path, "a+")

    def acquire(self) -> bool:
        try:
            fcntl.flock(self.handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.write(str(os.getpid()))
        self.handle.flush()
        return True

    def holder(self) -> str:
        try:
            return self.path.read_text().strip() or "?"
        except OSError:
            return "?"


def up_to_date(report: dict | None, sha256: str | None, assignment: str | None, isolation: str,
               limits: dict) -> bool:
    """Same notebook bytes, same checks of its assignment, same sandbox and limits: the score cannot differ.

    A report whose notebook timed out is kept like any other: it is graded again only when its
    notebook, its assignment's checks or the limits change (never for another assignment's edit).
    """
    if not report or sha256 is None:
        return False
    extra = report.get("extra_data", {})
    version = checks_version(assignment or extra.get("assignment"))
    return extra.get("sha256") == sha256 and extra.get("checks_version") == version and \
        extra.get("sandbox") in (isolation, None) and extra.get("limits") == limits


def limits_key(limits: Limits) -> dict:
    return {"timeout": limits.call_seconds, "cell_timeout": limits.cell_seconds, "memory_mb": limits.memory_bytes >> 20}


def run(args: argparse.Namespace) -> int:
    # The zygote imports torch for 2 s or so; so does this process, for the checks. Start the
    # zygote first (nothing of it is kept if the arguments turn out bad) and let both import at once.
    isolation = "rlimits" if args.unsafe_no_sandbox else args.isolation
    limits = Limits(call_seconds=max(args.timeout, 0.001), cell_seconds=max(args.cell_timeout, 0.001),
                    memory_bytes=args.memory * 2**20)
    runtime = stage_runtime() if isolation != "bwrap" or bwrap_works() else None  # removed at the end
    if runtime is not None and isolation == "bwrap" and shares_a_zygote(isolation):
        try:
            spawner_for(runtime, isolation, limits, wait=False)
        except WorkerError:
            pass  # tried again, and reported, once it is needed
    try:
        plan = _plan(args)
    except UsageError as error:  # bad input: one line, exit 2, nothing written
        _stop_sandbox(runtime)
        print(f"autograder: {error}", file=sys.stderr)
        return 2
    try:
        return _grade(args, plan, isolation, limits, runtime)
    finally:
        _stop_sandbox(runtime)


def _stop_sandbox(runtime: Path | None) -> None:
    close_spawners()
    if runtime is not None:
        shutil.rmtree(runtime, ignore_errors=True)


def _grade(args: argparse.Namespace, plan: "Plan", isolation: str, limits: Limits, runtime: Path | None) -> int:
    from autograder.grading.runner import grade_notebook

    if isolation == "bwrap" and not bwrap_works():
        print("autograder: bubblewrap (bwrap) is not available, so submissions cannot be sandboxed. Install it "
              "(Debian/Ubuntu: apt-get install bubblewrap); where it cannot start (a container), run as root with "
              "--isolation user; or, for trusted notebooks only, pass --unsafe-no-sandbox.", file=sys.stderr)
        return 2
    out = Path(args.out)
    lock = OutputLock(out)
    if isolation == "user":
        # The grader, the hidden checks, the reference solutions and the reports must be out of reach.
        problem = user_problem([PACKAGE_DIR, PACKAGE_DIR.parent / "solutions", out])
        if problem:
            print(f"autograder: --isolation user cannot grade safely here: {problem}.", file=sys.stderr)
            return 2
        if args.jobs > 1 and not args.quiet:
            print("autograder: --isolation user grades one submission at a time (its workers share one user)",
                  file=sys.stderr)
        args.jobs = 1
        if not args.quiet:
            print(f"autograder: isolation: {describe(isolation)['summary']}", file=sys.stderr)
    if not lock.acquire():
        print(f"autograder: another grading run (pid {lock.holder()}) is writing to {out}; wait for it to "
              "finish or choose another --out folder.", file=sys.stderr)
        return 3
    for leftover in out.rglob(".*.tmp"):  # a file being written when a previous run was killed
        leftover.unlink(missing_ok=True)
    submissions = plan.found.submissions
    if not hidden_available():
        print("autograder: warning: the hidden checks are not installed (this is the student package), so only the "
              "public checks count; grade from the course's checkout (pip install -e \".[grade]\")", file=sys.stderr)
    for warning in plan.found.warnings:  # even with --quiet: a misspelt folder must not pass unnoticed
        print(f"autograder: warning: {warning}", file=sys.stderr)
    remove_stale_folders()
    todo, rows = [], {}
    for submission in submissions:
        report = read_report(out / submission.report_name)
        sha256 = file_sha256(submission.path) if submission.path else None
        if submission.path is None:  # nothing to run: say why, every time (it costs nothing)
            rows[submission.label] = (submission, unchosen_report(submission))
        elif not args.force and up_to_date(report, sha256, submission.assignment, isolation, limits_key(limits)):
            rows[submission.label] = (submission, report)
        else:
            todo.append(submission)
    skipped = sum(1 for s in submissions if s.path is not None) - len(todo)
    if todo:
        # What the instructor files need, imported while the zygote boots.
        from autograder.outputs import feedback, similarity, summary  # noqa: F401
        try:  # from this thread, which outlives the run: the sandbox dies with the thread that started it
            if shares_a_zygote(isolation):
                spawner_for(runtime, isolation, limits)
            elif not args.quiet:
                print("autograder: processes inside bubblewrap may not create namespaces here, so each submission "
                      "gets a sandbox of its own (as isolated, but about 2 s slower each)", file=sys.stderr)
        except WorkerError as error:
            print(f"autograder: the sandbox could not start: {error.message}", file=sys.stderr)
            return 2
    else:
        close_spawners()  # started on speculation; every report was up to date
    progress = _progress(len(todo), args.quiet)
    if skipped and not args.quiet:
        print(f"autograder: {skipped} submission(s) already graded (unchanged); --force regrades them",
              file=sys.stderr)

    def grade_one(submission: Submission) -> tuple[Submission, dict]:
        report = grade_notebook(submission.path, runtime, limits, isolation, submission.assignment,
                                label=submission.label)
        report["extra_data"]["limits"] = limits_key(limits)
        return submission, report

    try:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = [pool.submit(grade_one, s) for s in todo]
            for future in as_completed(futures):
                submission, report = future.result()
                rows[submission.label] = (submission, report)
                write_report(out / submission.report_name, finish(submission, report, plan))
                progress.update(1)
                progress.set_postfix_str(f"{submission.label}: {report['score']:g}/{report['max_score']:g}")
    finally:
        progress.close()
        close_spawners()
    ordered = []
    for submission in submissions:
        if submission.label not in rows:
            continue
        before = read_report(out / submission.report_name)
        report = finish(submission, rows[submission.label][1], plan)
        if report != before:  # lateness and ignored files are re-derived every run (the due date may change)
            write_report(out / submission.report_name, report)
        ordered.append((submission, report))
    loaded: dict[Path, dict | None] = {}
    if plan.rederive_all:  # a course file: every report in the folder follows it, not only this run's
        this_run = {s.report_name for s in submissions}
        for path in sorted(out.glob("*.json")):
            report = loaded[path] = read_report(path)
            if path.name in this_run or not report or not isinstance(report.get("extra_data"), dict):
                continue
            updated = rederive(report, plan.schedule)
            if updated != report:
                write_report(path, updated)
                loaded[path] = updated
    everything = class_reports(out, loaded)
    written = write_outputs(out, [with_notebook(r, plan.found) for _, r in everything], plan, args)
    if args.gradebook:
        from autograder.outputs.gradebook import write_scores

        written_scores = write_scores(args.gradebook, [(s, r) for s, r in ordered if s.student])
        if not args.quiet:
            print(f"autograder: wrote {written_scores} submission(s) into the gradebook {args.gradebook}",
                  file=sys.stderr)
    if not args.quiet:
        print(f"autograder: {len(ordered)} submission(s) graded or checked; {len(everything)} report(s) in {out}/, "
              f"class tables {out / 'grades.csv'}, grades-wide.csv and grades-canvas.csv"
              + (f"; {written}" if written else ""), file=sys.stderr)
    return 0


@dataclass
class Plan:
    found: Found
    schedule: Schedule
    rederive_all: bool = False  # a course file: re-derive lateness of every report in --out
    autograded: Path | None = None


def _plan(args: argparse.Namespace) -> Plan:
    """Everything decided from the arguments before anything is written; UsageError for bad input."""
    known = assignments()
    if args.assignment is not None and args.assignment not in known:
        raise UsageError(f"--assignment {args.assignment}: not an assignment this grader knows "
                         f"({', '.join(known)})")
    if args.course and (args.due or args.late_penalty):
        given = " and ".join(o for o, v in (("--due", args.due), ("--late-penalty", args.late_penalty)) if v)
        raise UsageError(f"{given} cannot be combined with --course: the course file holds every due date and the "
                         "late policy (edit it there)")
    policy = LatePolicy.parse(args.late_penalty) if args.late_penalty else LatePolicy()
    due_for_all = parse_instant(args.due, "--due") if args.due else None
    schedule = load_course(args.course, known) if args.course else Schedule(default_policy=policy)
    if args.timeout <= 0 or args.cell_timeout <= 0 or args.jobs < 1 or args.memory < 256:
        raise UsageError("--timeout and --cell-timeout must be positive, --jobs at least 1, --memory at least 256")
    if not 0 < args.similarity_threshold <= 1:
        raise UsageError("--similarity-threshold is a share of the code: more than 0, at most 1")
    found = find_submissions(args.paths, known, args.assignment, args.student, args.one_submission)
    if not found.submissions:
        detail = f" ({'; '.join(found.warnings)})" if found.warnings else ""
        raise UsageError(f"no notebooks to grade in {' '.join(args.paths)}{detail}")
    names = {s.assignment for s in found.submissions if s.assignment}
    if due_for_all is not None:
        if len(names) > 1:
            raise UsageError(f"--due gives one assignment's due date, and {' '.join(args.paths)} holds "
                             f"{len(names)} ({', '.join(sorted(names))}): give each its own in a course file "
                             "(--course course.toml), or grade one with --assignment NAME")
        schedule.due = {name: due_for_all for name in names}
        schedule.source = "--due"
    elif args.course:
        students = {s.student for s in found.submissions if s.student}
        if args.student is None:
            for kind, given in (("extension", schedule.extensions), ("override", schedule.overrides)):
                for student, assignment in sorted(given):
                    if student not in students:
                        close = difflib.get_close_matches(student, sorted(students), n=1)
                        hint = f" (did you mean {close[0]}?)" if close else ""
                        found.warnings.append(f"{schedule.source}: the {kind} for {student!r} ({assignment}) "
                                              f"matches no student in the submissions{hint}")
    elif args.gradebook:
        from autograder.outputs.gradebook import due_dates

        schedule.due = due_dates(args.gradebook, names)
        schedule.source = "the gradebook"
    autograded = Path(args.autograded) if args.autograded else None
    return Plan(found, schedule, rederive_all=bool(args.course), autograded=autograded)


def unchosen_report(submission: Submission) -> dict:
    from autograder.grading.runner import empty_report

    checks = checks_for(submission.assignment) if submission.assignment else []
    return empty_report(submission.label, submission.assignment,
                        f"No notebook was graded: {submission.problem}.", "invalid_notebook", checks, None)


def finish(submission: Submission, report: dict, plan: Plan) -> dict:
    """The report with what the class folder says about it: student, ignored files, notes, lateness."""
    report = json.loads(json.dumps(report))  # a copy
    extra = report.setdefault("extra_data", {})
    extra["student"] = submission.student
    extra["ignored"] = [{"path": path, "reason": why} for path, why in submission.ignored]
    if submission.canvas_user_id:
        extra["canvas_user_id"] = submission.canvas_user_id
    lines = [line for line in report.get("output", "").splitlines()
             if not line.startswith(("Late:", "Note: timestamp.txt", "Note: your folder is named"))]
    if submission.note:
        lines.append(submission.note)
    stamp = None
    if submission.timestamp is not None:
        try:
            stamp = parse_time(submission.timestamp, "timestamp.txt")
        except UsageError:
            lines.append(f"Note: timestamp.txt ({submission.timestamp!r}) could not be read, so lateness was "
                         "not judged.")
    report["output"] = "\n".join(lines)
    late = None
    if stamp is not None or submission.marked_late:
        late = {"timestamp": utc_text(stamp), "marked_late": submission.marked_late}
    extra["late"] = late
    return apply_lateness(report, plan.schedule)


def rederive(report: dict, schedule: Schedule) -> dict:
    """A report of an earlier run, its lateness judged again by ``schedule`` (from its stored timestamp)."""
    return apply_lateness(report, schedule)


def apply_lateness(report: dict, schedule: Schedule) -> dict:
    """The report with ``extra_data.late``, the score and the "Late:" line set from its stored timestamp
    and ``schedule`` (a new dict; ``report`` is not changed)."""
    report = apply_overrides({**report, "extra_data": dict(report.get("extra_data") or {})}, schedule)
    extra = report["extra_data"]
    raw = sum(t["score"] for t in report.get("tests", []))
    max_score = report.get("max_score", 0.0)
    late, stored = None, extra.get("late")
    if stored and (stored.get("timestamp") or stored.get("marked_late")):
        assignment, student = extra.get("assignment"), extra.get("student")
        due = schedule.due_for(student, assignment)
        policy = schedule.policy_for(assignment)
        late = {"timestamp": stored.get("timestamp"), "due": utc_text(due.at),
                "extension": due.extended_from is not None, "class_due": utc_text(due.extended_from),
                "policy": policy.describe(), "raw_score": raw, "marked_late": bool(stored.get("marked_late"))}
        if stored.get("timestamp"):
            stamp = stored_time(stored["timestamp"])
            seconds = max(0.0, (stamp - due.at).total_seconds()) if due.at is not None else None
            late.update(seconds_late=seconds, late=policy.is_late(seconds),
                        penalty=policy.penalty(raw, max_score, seconds or 0.0))
        else:  # Canvas marked it late, and its download does not say when it was submitted
            late.update(seconds_late=None, late=True, penalty=0.0)
    extra["late"] = late
    report["score"] = raw - (late["penalty"] if late else 0.0)
    lines = [line for line in report.get("output", "").splitlines() if not line.startswith("Late:")]
    if late and late["late"] and late["seconds_late"]:
        whose = " (your extended due date)" if late["extension"] else ""
        lines.append(f"Late: submitted {format_duration(late['seconds_late'])} after the due date{whose}; "
                     f"{late['policy']}: -{late['penalty']:g} point(s), {report['score']:g} / {max_score:g}")
    elif late and late["late"]:
        lines.append("Late: Canvas marked this submission late; its download does not say when it was "
                     "submitted, so no penalty was taken here (Canvas's late policy applies in Canvas)")
    report["output"] = "\n".join(lines)
    return report


def apply_overrides(report: dict, schedule: Schedule) -> dict:
    """The report with the course file's overrides for its student and assignment, and only those.

    An overridden test keeps the grader's score under ``override.grader_score``, so that a
    later run (with the override changed or gone) starts from what the grader gave.
    """
    extra = report["extra_data"]
    wanted = schedule.overrides.get((extra.get("student") or "", extra.get("assignment") or ""), {})
    tests, lines = [], []
    for test in report.get("tests", []):
        test = dict(test)
        earlier = test.pop("override", None)
        if earlier is not None:
            test["score"] = earlier["grader_score"]
        override = wanted.get(test.get("name"))
        if override is not None:
            test["override"] = {"grader_score": test["score"], "reason": override.reason}
            test["score"] = override.points
            lines.append(f"Override: {test['name']} set to {override.points:g} / {test['max_score']:g} by the "
                         f"instructor (the grader gave {test['override']['grader_score']:g}): {override.reason}")
        tests.append(test)
    kept = [line for line in report.get("output", "").splitlines() if not line.startswith("Override:")]
    return {**report, "tests": tests, "output": "\n".join(kept + lines)}


def stored_time(text: str) -> datetime:
    """A timestamp as reports store it (ISO 8601, UTC offset) as naive UTC; other forms as nbgrader's."""
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        return parse_time(text, "timestamp")
    return (stamp - stamp.utcoffset()).replace(tzinfo=None) if stamp.utcoffset() is not None else stamp


def format_duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{days} d" if days else "", f"{hours} h" if hours else "", f"{minutes} min"]
    return " ".join(p for p in parts if p)


def class_reports(out: Path, loaded: dict[Path, dict | None] | None = None) -> list[tuple[str, dict]]:
    """Every report in the output folder (this run's and earlier ones'), in a stable order.

    ``loaded``: reports already read from the folder this run (path -> report), not read again.
    """
    found = []
    loaded = loaded or {}
    for path in sorted(out.glob("*.json")):
        report = loaded[path] if path in loaded else read_report(path)
        if report and isinstance(report.get("tests"), list) and isinstance(report.get("extra_data"), dict):
            found.append((path.stem, report))
    key = lambda item: (item[1]["extra_data"].get("assignment") or "", item[1]["extra_data"].get("student") or "",  # noqa: E731
                        item[1]["extra_data"].get("submission") or item[0])
    return sorted(found, key=key)


def with_notebook(report: dict, found: Found) -> dict:
    """The report, with where its notebook lies for the similarity report (in memory only: a report
    itself names no path on the grader's disk, so it reads the same from any folder)."""
    from autograder.grading.report import report_key

    notebook = found.notebook_of(report["extra_data"].get("submission") or "")
    return {**report, "extra_data": {**report["extra_data"], "notebook": str(notebook) if notebook else None},
            "__key": report_key(report)}


def write_outputs(out: Path, reports: list[dict], plan: Plan, args: argparse.Namespace) -> str:
    """The class tables and exports, and each student's feedback and autograded notebook."""
    from autograder.outputs.exports import canvas_csv, long_csv, unmatched_students, wide_csv

    roster = read_canvas_roster(plan.schedule.roster) if plan.schedule.roster is not None else None
    missing = unmatched_students(reports, roster)
    if missing:
        print(f"autograder: warning: {len(missing)} student(s) are not in the Canvas roster "
              f"{plan.schedule.roster.name} ({', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''}): "
              "grades-canvas.csv names them by their folder (SIS Login ID)", file=sys.stderr)
    atomic_write(out / "grades.csv", long_csv(reports))
    atomic_write(out / "grades-wide.csv", wide_csv(reports))
    atomic_write(out / "grades-canvas.csv", canvas_csv(reports, roster, plan.schedule.canvas_columns))
    return write_instructor_files(out, reports, args.similarity_threshold, hide_hidden=args.hide_hidden_inputs,
                                  autograded=plan.autograded or out / "autograded")


def write_instructor_files(out: Path, reports: list[dict], threshold: float, hide_hidden: bool = True,
                           autograded: Path | None = None) -> str:
    """Feedback for each student, the class summary and similarity report per assignment, and the
    autograded notebooks; each file rewritten only when what it shows changed."""
    from autograder.outputs.feedback import write_feedback
    from autograder.outputs.nbgrader_out import write_autograded
    from autograder.grading.report import OutputCache
    from autograder.outputs.similarity import write_similarity
    from autograder.outputs.summary import write_summary

    cache = OutputCache(out)
    feedback_folder = out / "feedback"
    feedback = write_feedback(feedback_folder, reports, hide_hidden=hide_hidden, cache=cache, prune=True)
    summaries = write_summary(out, reports, cache=cache)
    similarity = write_similarity(out, reports, threshold=threshold, cache=cache)
    notebooks = write_autograded(autograded, reports, hide_hidden=hide_hidden, cache=cache) if autograded else []
    cache.save()
    return (f"feedback for {len(feedback) // 2} submission(s) in {feedback_folder}/, "
            f"{len(summaries)} class summary page(s) and {len(similarity)} similarity report(s) in {out}/"
            + (f", {len(notebooks)} autograded notebook(s) in {autograded}/" if autograded else ""))


def _progress(total: int, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="grading", unit="nb", disable=quiet or total == 0, file=sys.stderr)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="a notebook, a folder of notebooks, an nbgrader submitted/ folder, or a folder of "
                             "Canvas's Download Submissions (<name>[_late]_<user id>_<file id>_<file>.ipynb)")
    parser.add_argument("--out", default="grades", help="folder for the reports and grades.csv (default: grades)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="submissions graded in parallel (default: the number of CPUs)")
    parser.add_argument("--timeout", type=float, default=Limits.call_seconds,
                        help="CPU seconds for each call a check makes into a submission (default: %(default)s): "
                             "an infinite loop in one function costs only that function's checks")
    parser.add_argument("--cell-timeout", type=float, default=Limits.cell_seconds,
                        help="CPU seconds for each top-level cell (default: %(default)s, as nbgrader): a cell "
                             "that does not finish is left out and costs only the names it would define. CPU "
                             "time, not wall-clock time, so a busy machine gives the same scores; a wall-clock "
                             "limit of 3x + 5 s catches code that sleeps")
    parser.add_argument("--memory", type=int, default=Limits.memory_bytes // 2**20,
                        help="address-space limit per worker in MB (default: %(default)s)")
    parser.add_argument("--assignment", help="the assignment, when file names do not say (e.g. 03_softmax)")
    parser.add_argument("--student", metavar="NAME", help="in an nbgrader submitted/ folder or a Canvas download, grade "
                        "only this student (a name, a path inside the folder, or a Canvas user id); the class "
                        "tables keep everyone else's row")
    parser.add_argument("--one-submission", action="store_true",
                        help="each folder is one student's upload (Gradescope): grade the one notebook the "
                             "rule of docs/instructor.md chooses, list the others as ignored")
    parser.add_argument("--course", metavar="FILE", help="the course file (TOML): each assignment's due date, the "
                        "late policy (per-day percentage, grace period, cap), per-student extensions, Canvas "
                        "columns; every run honours it (see docs/instructor.md)")
    parser.add_argument("--due", metavar="WHEN", help="one assignment's due date, ISO 8601 with a time zone (e.g. "
                        "2026-11-01T23:59:00-05:00, or ...Z for UTC); an error where the submissions hold several "
                        "assignments (use --course); default: the assignment's due date in --gradebook, if any")
    parser.add_argument("--late-penalty", metavar="POLICY",
                        help="with --due: what lateness (timestamp.txt after the due date) costs: none (default), "
                             "zero, or a percentage of the points per day or part of a day, e.g. 10%%/day")
    parser.add_argument("--force", action="store_true", help="regrade submissions whose report is up to date")
    parser.add_argument("--similarity-threshold", type=float, default=0.6, metavar="SHARE",
                        help="flag pairs whose own code (starter code excluded) is at least this share alike "
                             "(default: %(default)s; copies score 1.0, independent correct solutions about 0.1-0.3)")
    parser.add_argument("--gradebook", metavar="DB", help="also write the scores into this nbgrader gradebook "
                        "(a path to gradebook.db or an sqlite:/// URL)")
    parser.add_argument("--isolation", choices=("bwrap", "user"), default="bwrap",
                        help="how submissions are isolated: bwrap (default), or user where bubblewrap cannot start "
                             "(containers): as root, each worker runs as the unprivileged user autograder-sandbox "
                             "(AUTOGRADER_SANDBOX_USER), Landlocked where the kernel allows; the grader checks "
                             "first that this user cannot reach the grader, the checks or the reports")
    parser.add_argument("--autograded", metavar="DIR", help="where the autograded notebooks go, in nbgrader's "
                        "<student>/<assignment>/ layout (default: OUT/autograded; the course's autograded/ folder "
                        "lets nbgrader generate_feedback and the formgrader find them)")
    parser.add_argument("--hide-hidden-inputs", action=argparse.BooleanOptionalAction, default=True,
                        help="keep hidden checks' inputs and expected values out of what students see (feedback "
                             "files, autograded notebooks): they learn which hidden check failed and why in "
                             "words, not its data (default: on; --no-hide-hidden-inputs shows everything)")
    parser.add_argument("--unsafe-no-sandbox", action="store_true",
                        help="run submissions without bubblewrap (only for code you trust)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
