"""``python -m autograder grade``: grade a notebook, a folder, or an nbgrader submitted/ tree.

Each submission gets a JSON report in the output folder (Gradescope's
results.json shape) and the class gets ``grades.csv``. Reports are keyed by the
submission's content and the checks' version: a rerun skips what is already
graded (``--force`` regrades), and every report is written atomically, so an
interrupted run loses nothing that finished. One output folder serves one run at
a time: a second concurrent run is refused with a message.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from autograder.registry import assignments, checks_version
from autograder.report import atomic_write, class_csv, read_report, write_report
from autograder.runner import grade_notebook
from autograder.sandbox import (Limits, WorkerError, bwrap_works, close_spawners, remove_stale_folders,
                               shares_a_zygote, spawner_for, stage_runtime)


@dataclass(frozen=True)
class Submission:
    path: Path
    label: str  # unique within the run, e.g. "alice/03_softmax/03_softmax.ipynb"
    student: str | None = None
    assignment: str | None = None

    @property
    def report_name(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "__", self.label.removesuffix(".ipynb")) + ".json"


def find_submissions(paths: list[str], assignment: str | None = None) -> list[Submission]:
    """Expand files and folders; an nbgrader tree gives <student>/<assignment>/<notebook>."""
    found: list[Submission] = []
    for raw in paths:
        path = Path(raw)
        if path.is_file():
            found.append(Submission(path, path.name, None, assignment))
            continue
        if not path.is_dir():
            raise FileNotFoundError(f"no such file or folder: {raw}")
        for notebook in sorted(path.rglob("*.ipynb")):
            if ".ipynb_checkpoints" in notebook.parts:
                continue
            relative = notebook.relative_to(path)
            student = found_assignment = None
            if len(relative.parts) == 3 and relative.parts[1] in assignments():  # nbgrader submitted/ layout
                student, found_assignment = relative.parts[0], relative.parts[1]
            found.append(Submission(notebook, relative.as_posix(), student, found_assignment or assignment))
    labels = [s.label for s in found]
    duplicates = {label for label in labels if labels.count(label) > 1}
    if duplicates:  # two folders with the same relative names: prefix with the argument
        found = [Submission(s.path, s.path.as_posix(), s.student, s.assignment) for s in found]
    return found


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


def up_to_date(report: dict | None, sha256: str | None, version: str, isolation: str) -> bool:
    if not report or sha256 is None:
        return False
    extra = report.get("extra_data", {})
    return extra.get("sha256") == sha256 and extra.get("checks_version") == version and \
        extra.get("sandbox") in (isolation, None)


def file_sha256(path: Path) -> str | None:
    import hashlib

    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    lock = OutputLock(out)
    if not lock.acquire():
        print(f"autograder: another grading run (pid {lock.holder()}) is writing to {out}; wait for it to "
              "finish or choose another --out folder.", file=sys.stderr)
        return 3
    for leftover in out.glob(".*.tmp"):  # a report being written when a previous run was killed
        leftover.unlink(missing_ok=True)
    isolation = "rlimits" if args.unsafe_no_sandbox else "bwrap"
    if isolation == "bwrap" and not bwrap_works():
        print("autograder: bubblewrap (bwrap) is not available, so submissions cannot be sandboxed. Install it "
              "(Debian/Ubuntu: apt-get install bubblewrap) or, for trusted notebooks only, pass "
              "--unsafe-no-sandbox.", file=sys.stderr)
        return 2
    try:
        submissions = find_submissions(args.paths, args.assignment)
    except FileNotFoundError as error:
        print(f"autograder: {error}", file=sys.stderr)
        return 2
    remove_stale_folders()
    limits = Limits(call_seconds=args.timeout, cell_seconds=args.cell_timeout, memory_bytes=args.memory * 2**20)
    version = checks_version()
    todo, rows = [], {}
    for submission in submissions:
        report = read_report(out / submission.report_name)
        if not args.force and up_to_date(report, file_sha256(submission.path), version, isolation):
            rows[submission.label] = (submission, report)
        else:
            todo.append(submission)
    skipped = len(submissions) - len(todo)
    runtime = stage_runtime() if todo else None
    if runtime is not None:
        try:  # from this thread, which outlives the run: the sandbox dies with the thread that started it
            if shares_a_zygote(isolation):
                spawner_for(runtime, isolation, limits)
            elif not args.quiet:
                print("autograder: processes inside bubblewrap may not create namespaces here, so each submission "
                      "gets a sandbox of its own (as isolated, but about 2 s slower each)", file=sys.stderr)
        except WorkerError as error:
            shutil.rmtree(runtime, ignore_errors=True)
            print(f"autograder: the sandbox could not start: {error.message}", file=sys.stderr)
            return 2
    progress = _progress(len(todo), args.quiet)
    if skipped and not args.quiet:
        print(f"autograder: {skipped} submission(s) already graded (unchanged); --force regrades them",
              file=sys.stderr)

    def grade_one(submission: Submission) -> tuple[Submission, dict]:
        report = grade_notebook(submission.path, runtime, limits, isolation, submission.assignment,
                                label=submission.label)
        if submission.student:
            report["extra_data"]["student"] = submission.student
        write_report(out / submission.report_name, report)
        return submission, report

    try:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futures = [pool.submit(grade_one, s) for s in todo]
            for future in as_completed(futures):
                submission, report = future.result()
                rows[submission.label] = (submission, report)
                progress.update(1)
                progress.set_postfix_str(f"{submission.label}: {report['score']:g}/{report['max_score']:g}")
    finally:
        progress.close()
        close_spawners()
        if runtime is not None:
            shutil.rmtree(runtime, ignore_errors=True)
    ordered = [rows[s.label] for s in submissions if s.label in rows]
    atomic_write(out / "grades.csv", class_csv([(s.label, s.student, s.assignment, r) for s, r in ordered]))
    if args.gradebook:
        from autograder.gradebook import write_scores

        written = write_scores(args.gradebook, [(s, r) for s, r in ordered if s.student])
        if not args.quiet:
            print(f"autograder: wrote {written} submission(s) into the gradebook {args.gradebook}", file=sys.stderr)
    if not args.quiet:
        total = len(ordered)
        print(f"autograder: {total} submission(s), reports in {out}/, class table {out / 'grades.csv'}",
              file=sys.stderr)
    return 0


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
    parser.add_argument("--assignment", choices=list(assignments()), help="the assignment, when file names do not say")
    parser.add_argument("--force", action="store_true", help="regrade submissions whose report is up to date")
    parser.add_argument("--gradebook", metavar="DB", help="also write the scores into this nbgrader gradebook "
                        "(a path to gradebook.db or an sqlite:/// URL)")
    parser.add_argument("--unsafe-no-sandbox", action="store_true",
                        help="run submissions without bubblewrap (only for code you trust)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
