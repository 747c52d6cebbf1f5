"""``python -m autograder grade``: grade a notebook, a folder, or an nbgrader submitted/ tree.

What it writes into --out (default grades/):
  <name>.json          one report per submission, Gradescope's results.json shape: score,
                       max_score, tests [{name, score, max_score, status, output}], and in
                       extra_data the student, the notebook graded, the notebooks ignored
                       and why, lateness (timestamp.txt against --due) and any penalty
  grades.csv           the class table: one row per student and assignment (every report in
                       the folder, so regrading one student updates only that row)
  feedback/<student>/<assignment>.html and .md
                       what to send each student: score per check, the teaching message,
                       the book link; never hidden-check code, tracebacks or paths
  summary-<assignment>.html
                       the class at a glance: score distribution, each check's pass rate,
                       the commonest failure messages, late and ungradable submissions
  similarity-<assignment>.html
                       pairs of submissions whose own code (starter code excluded) is
                       suspiciously alike, side by side
With --gradebook, the scores (and timestamps and late penalties) also go into the
nbgrader gradebook, so `nbgrader export` and the formgrader show them.

In an nbgrader tree each student and assignment gives one graded notebook: the one
named after the assignment, else the only one whose name starts with it (a renamed
copy), else the only notebook there; checkpoints never. Reports are keyed by the
notebook's bytes, the checks' version and the limits: a rerun skips what is already
graded (--force regrades). Every file is written atomically, so an interrupted run
loses nothing that finished; one output folder serves one run at a time.

Exit status: 0 when grading ran, whatever the scores; 2 for bad input (nothing is
written) or a sandbox that cannot run safely; 3 when another run holds the output folder.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from autograder.registry import assignments, checks_for, checks_version, hidden_available
from autograder.report import atomic_write, class_csv, file_sha256, read_report, write_report
from autograder.submissions import Found, LatePolicy, Submission, UsageError, find_submissions, parse_time
from autograder.sandbox import (PACKAGE_DIR, Limits, WorkerError, bwrap_works, close_spawners, describe,
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


def up_to_date(report: dict | None, sha256: str | None, version: str, isolation: str, limits: dict) -> bool:
    """Same notebook bytes, same checks, same sandbox and same limits: the score cannot differ."""
    if not report or sha256 is None:
        return False
    extra = report.get("extra_data", {})
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
    from autograder.runner import grade_notebook

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
    for leftover in out.glob(".*.tmp"):  # a report being written when a previous run was killed
        leftover.unlink(missing_ok=True)
    submissions = plan.found.submissions
    if not hidden_available():
        print("autograder: warning: the hidden checks are not installed (this is the student package), so only the "
              "public checks count; grade from the course's checkout (pip install -e \".[grade]\")", file=sys.stderr)
    for warning in plan.found.warnings:  # even with --quiet: a misspelt folder must not pass unnoticed
        print(f"autograder: warning: {warning}", file=sys.stderr)
    remove_stale_folders()
    version = checks_version()
    todo, rows = [], {}
    for submission in submissions:
        report = read_report(out / submission.report_name)
        sha256 = file_sha256(submission.path) if submission.path else None
        if submission.path is None:  # nothing to run: say why, every time (it costs nothing)
            rows[submission.label] = (submission, unchosen_report(submission))
        elif not args.force and up_to_date(report, sha256, version, isolation, limits_key(limits)):
            rows[submission.label] = (submission, report)
        else:
            todo.append(submission)
    skipped = sum(1 for s in submissions if s.path is not None) - len(todo)
    if todo:
        # What the instructor files need (matplotlib among it), imported while the zygote boots.
        from autograder import feedback, similarity, summary  # noqa: F401
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
    everything = class_reports(out)
    atomic_write(out / "grades.csv", class_csv([(r["extra_data"].get("submission") or name,
                                                 r["extra_data"].get("student"), r["extra_data"].get("assignment"),
                                                 r) for name, r in everything]))
    written = write_instructor_files(out, [with_notebook(r, plan.found) for _, r in everything],
                                     args.similarity_threshold)
    if args.gradebook:
        from autograder.gradebook import write_scores

        written_scores = write_scores(args.gradebook, [(s, r) for s, r in ordered if s.student])
        if not args.quiet:
            print(f"autograder: wrote {written_scores} submission(s) into the gradebook {args.gradebook}",
                  file=sys.stderr)
    if not args.quiet:
        print(f"autograder: {len(ordered)} submission(s) graded or checked; {len(everything)} report(s) in {out}/, "
              f"class table {out / 'grades.csv'}" + (f"; {written}" if written else ""), file=sys.stderr)
    return 0


@dataclass
class Plan:
    found: Found
    due: dict[str, datetime]  # assignment -> due date (naive UTC, nbgrader's convention)
    policy: LatePolicy


def _plan(args: argparse.Namespace) -> Plan:
    """Everything decided from the arguments before anything is written; UsageError for bad input."""
    known = assignments()
    if args.assignment is not None and args.assignment not in known:
        raise UsageError(f"--assignment {args.assignment}: not an assignment this grader knows "
                         f"({', '.join(known)})")
    policy = LatePolicy.parse(args.late_penalty)
    due_for_all = parse_time(args.due, "--due") if args.due else None
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
        due = {name: due_for_all for name in names}
    elif args.gradebook:
        from autograder.gradebook import due_dates

        due = due_dates(args.gradebook, names)
    else:
        due = {}
    return Plan(found, due, policy)


def unchosen_report(submission: Submission) -> dict:
    from autograder.runner import empty_report

    checks = checks_for(submission.assignment) if submission.assignment else []
    return empty_report(submission.label, submission.assignment,
                        f"No notebook was graded: {submission.problem}.", "invalid_notebook", checks, None)


def finish(submission: Submission, report: dict, plan: Plan) -> dict:
    """The report with what the class folder says about it: student, ignored files, lateness."""
    report = json.loads(json.dumps(report))  # a copy
    extra = report.setdefault("extra_data", {})
    extra["student"] = submission.student
    extra["ignored"] = [{"path": path, "reason": why} for path, why in submission.ignored]
    raw = sum(t["score"] for t in report.get("tests", []))
    late = None
    due = plan.due.get(submission.assignment)
    if submission.timestamp is not None:
        try:
            stamp = parse_time(submission.timestamp, "timestamp.txt")
        except UsageError:
            stamp = None
            report["output"] = report.get("output", "") + f"\nNote: timestamp.txt ({submission.timestamp!r}) " \
                "could not be read, so lateness was not judged."
        if stamp is not None:
            seconds = max(0.0, (stamp - due).total_seconds()) if due is not None else None
            penalty = plan.policy.penalty(raw, report.get("max_score", 0.0), seconds or 0.0)
            late = {"timestamp": stamp.isoformat() + "+00:00", "due": due.isoformat() + "+00:00" if due else None,
                    "seconds_late": seconds, "penalty": penalty, "policy": plan.policy.describe(),
                    "raw_score": raw}
    extra["late"] = late
    report["score"] = raw - (late["penalty"] if late else 0.0)
    lines = [line for line in report.get("output", "").splitlines() if not line.startswith("Late:")]
    if late and late["seconds_late"]:
        lines.append(f"Late: submitted {format_duration(late['seconds_late'])} after the due date; "
                     f"{late['policy']}: -{late['penalty']:g} point(s), {report['score']:g} / "
                     f"{report.get('max_score', 0):g}")
    report["output"] = "\n".join(lines)
    return report


def format_duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    days, minutes = divmod(minutes, 24 * 60)
    hours, minutes = divmod(minutes, 60)
    parts = [f"{days} d" if days else "", f"{hours} h" if hours else "", f"{minutes} min"]
    return " ".join(p for p in parts if p)


def class_reports(out: Path) -> list[tuple[str, dict]]:
    """Every report in the output folder (this run's and earlier ones'), in a stable order."""
    found = []
    for path in sorted(out.glob("*.json")):
        report = read_report(path)
        if report and isinstance(report.get("tests"), list) and isinstance(report.get("extra_data"), dict):
            found.append((path.stem, report))
    key = lambda item: (item[1]["extra_data"].get("assignment") or "", item[1]["extra_data"].get("student") or "",  # noqa: E731
                        item[1]["extra_data"].get("submission") or item[0])
    return sorted(found, key=key)


def with_notebook(report: dict, found: Found) -> dict:
    """The report, with where its notebook lies for the similarity report (in memory only: a report
    itself names no path on the grader's disk, so it reads the same from any folder)."""
    notebook = found.notebook_of(report["extra_data"].get("submission") or "")
    return {**report, "extra_data": {**report["extra_data"], "notebook": str(notebook) if notebook else None}}


def write_instructor_files(out: Path, reports: list[dict], threshold: float) -> str:
    """Feedback for each student, and the class summary and similarity report per assignment."""
    from autograder.feedback import write_feedback
    from autograder.similarity import write_similarity
    from autograder.summary import write_summary

    feedback_folder = out / "feedback"
    if feedback_folder.is_dir():  # rebuilt whole from the reports: nothing stale survives a regrade
        shutil.rmtree(feedback_folder)
    feedback = write_feedback(feedback_folder, reports)
    summaries = write_summary(out, reports)
    similarity = write_similarity(out, reports, threshold=threshold)
    return (f"feedback for {len(feedback) // 2} submission(s) in {feedback_folder}/, "
            f"{len(summaries)} class summary page(s) and {len(similarity)} similarity report(s) in {out}/")


def _progress(total: int, quiet: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="grading", unit="nb", disable=quiet or total == 0, file=sys.stderr)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="a notebook, a folder of notebooks, or an nbgrader submitted/ folder")
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
    parser.add_argument("--student", metavar="NAME", help="in an nbgrader submitted/ folder, grade only this student "
                        "(a name, or a path inside the folder); the class table keeps everyone else's row")
    parser.add_argument("--one-submission", action="store_true",
                        help="each folder is one student's upload (Gradescope): grade the one notebook the "
                             "README's rule chooses, list the others as ignored")
    parser.add_argument("--due", metavar="WHEN", help="the due date, ISO 8601 (e.g. 2026-11-01T23:59:00+00:00; no "
                        "time zone means UTC); default: the assignment's due date in --gradebook, if any")
    parser.add_argument("--late-penalty", default="none", metavar="POLICY",
                        help="what lateness (timestamp.txt after the due date) costs: none (default), zero, or a "
                             "percentage of the points per day or part of a day, e.g. 10%%/day")
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
    parser.add_argument("--unsafe-no-sandbox", action="store_true",
                        help="run submissions without bubblewrap (only for code you trust)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
