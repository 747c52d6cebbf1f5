"""Grading one submission: run its cells in a sandboxed worker, then every check against it."""

from __future__ import annotations

import random
import shutil
import textwrap
import threading
from contextlib import contextmanager
from pathlib import Path

import torch

from autograder.grading import api
from autograder.grading.api import CheckFailure, RemoteSubmission
from autograder.grading.report import file_sha256
from autograder.grading.notebook import Notebook, NotebookError, read_notebook
from autograder.grading.registry import assignments, Check, checks_for, checks_version
from autograder.sandbox.host import Limits, Worker, WorkerError, make_folder

MAX_RESTARTS = 3  # after a crash or timeout the next check gets a fresh worker, this many times
MAX_LEFT_OUT = 5  # cells that do not finish and are left out, before the notebook counts as unrunnable


def wall_backstop(cpu_seconds: float) -> float:
    """The wall-clock limit behind a CPU-time limit: it only catches code that sleeps or blocks signals.

    Generous, so that on a loaded machine (two jobs and two busy loops on two
    cores stretch wall-clock time 2-3x) code that would finish in its CPU time
    is never cut short by it.
    """
    return 3 * cpu_seconds + 5


def time_limit(cpu_seconds: float) -> str:
    """The limit as a report states it, whichever of the two stopped the code.

    On a machine loaded far beyond two busy loops, a runaway loop can reach the
    wall-clock backstop before its CPU limit; the report must read the same
    either way, so it never says which one fired.
    """
    return f"{cpu_seconds:g} s of CPU time, {wall_backstop(cpu_seconds):g} s in all"


# The grader grades --jobs submissions in threads of one process, and the checks' own code (the seeded
# reference models, the random inputs) draws from the process's global generators: two checks drawing at
# once would each get the other's numbers, so a mutant could pass in one run and fail in the next. That
# code therefore runs one thread at a time, from generators seeded by the check's own seed; a thread lets
# go only while it waits on its sandbox, and takes its generators back as it left them.
_CHECKS_LOCK = threading.Lock()
_HOLDER = threading.local()


def _generators() -> tuple:
    return torch.get_rng_state(), random.getstate()


def _set_generators(state: tuple) -> None:
    torch.set_rng_state(state[0])
    random.setstate(state[1])


@contextmanager
def checks_running(seed: int):
    """Run a check's own code alone, its generators seeded by ``seed``; the caller's come back after."""
    if getattr(_HOLDER, "held", False):  # a check inside a check (a re-run): the outer one holds the lock
        yield
        return
    with _CHECKS_LOCK:
        _HOLDER.held = True
        before = _generators()
        try:
            torch.manual_seed(seed)
            random.seed(seed)
            yield
        finally:
            _set_generators(before)  # a notebook's own draws go on as if no check had run
            _HOLDER.held = False


@contextmanager
def waiting_on_the_sandbox():
    """Let other threads' checks run while this one waits on its sandbox; its generators are kept."""
    if not getattr(_HOLDER, "held", False):
        yield
        return
    state = _generators()
    _HOLDER.held = False
    _CHECKS_LOCK.release()
    try:
        yield
    finally:
        _CHECKS_LOCK.acquire()
        _HOLDER.held = True
        _set_generators(state)


class WorkerSession:
    """One submission's worker, restarted after a crash or timeout.

    Time is CPU time, which machine load does not stretch: each top-level cell
    gets ``cell_seconds`` of it, each request of a check ``call_seconds`` (so an
    infinite loop in one function never starves the checks of another). A cell
    that does not finish (out of time, or it kills its process) is left out: the
    worker is restarted and the notebook replayed without it, so it costs exactly
    the names it would have defined, and the replays after a check's timeout never
    pay for it again. Forking a worker takes milliseconds (``startup_seconds``
    bounds it, and the zygote's start once per run).
    """

    def __init__(self, notebook: Notebook, runtime: Path, limits: Limits, isolation: str):
        self.notebook, self.runtime, self.limits, self.isolation = notebook, runtime, limits, isolation
        self.worker: Worker | None = None
        self.starts = 0
        self.loaded_once = False
        self.load_errors: list[dict] = []
        self.left_out: dict[int, str] = {}  # cell index -> why it was left out
        self.load_failure: WorkerError | None = None
        self.folder = make_folder("submission")
        self.copy = self.folder / "submission.ipynb"
        shutil.copyfile(notebook.path, self.copy)  # the sandbox sees this copy, nothing else

    def ensure_started(self) -> Worker:
        if self.load_failure is not None:
            raise self.load_failure
        if self.worker is not None:
            return self.worker
        if self.starts > MAX_RESTARTS:
            raise WorkerError("crashed", "not run: the worker crashed or timed out too many times")
        self.starts += 1
        while True:
            worker, errors = self._load()
            if worker is not None:
                break
            if len(self.left_out) > MAX_LEFT_OUT:
                self.load_failure = WorkerError(
                    "timeout", f"More than {MAX_LEFT_OUT} of your notebook's cells did not finish, so no check "
                    "could run. Look for infinite loops, exit(), or heavy work at the top level of cells.",
                    whole_notebook=True)
                raise self.load_failure
        self.worker = worker
        if not self.loaded_once:
            self.load_errors, self.loaded_once = errors, True
        return self.worker

    def _load(self) -> tuple[Worker | None, list[dict]]:
        """A worker that ran every cell not left out; None when a cell had to be left out (try again)."""
        worker = Worker(self.runtime, self.copy, self.limits, self.isolation)
        errors: list[dict] = []
        try:
            worker.start()
        except WorkerError as error:
            worker.close()
            self.load_failure = WorkerError(error.kind, f"Your notebook could not be run ({error.message}), so "
                                            "no check could run.", whole_notebook=True)
            raise self.load_failure from None
        for cell in self.notebook.runnable:
            if cell.index in self.left_out:
                continue
            request = {"op": "cell", "index": cell.index, "source": cell.source,
                       "cpu_seconds": self.limits.cell_seconds}
            try:
                response = worker.request(request, wall_backstop(self.limits.cell_seconds))
            except WorkerError as error:
                worker.close()
                if error.kind == "timeout":
                    why = f"did not finish within its time limit ({time_limit(self.limits.cell_seconds)})"
                else:
                    why = f"stopped the worker ({error.message})"
                self.left_out[cell.index] = why
                return None, []
            if not response.get("ok"):
                failure = response.get("error") or {}
                worker.close()
                if failure.get("kind") == "timeout":
                    why = f"did not finish within its time limit ({time_limit(self.limits.cell_seconds)})"
                else:
                    why = f"stopped the worker ({failure.get('message', '')[:200]})"
                self.left_out[cell.index] = why
                return None, []
            if isinstance(response.get("error"), dict):
                errors.append(response["error"])
        return worker, errors

    def request(self, message: dict) -> dict:
        with waiting_on_the_sandbox():
            return self._request(message)

    def _request(self, message: dict) -> dict:
        worker = self.ensure_started()
        try:
            response = worker.request({**message, "cpu_seconds": self.limits.call_seconds},
                                      wall_backstop(self.limits.call_seconds))
        except WorkerError as error:
            self.close()
            if error.kind == "timeout":  # the backstop: stated as the CPU limit is, see time_limit
                raise WorkerError("timeout", time_limit(self.limits.call_seconds)) from None
            raise
        if not response.get("ok") and (response.get("error") or {}).get("kind") == "timeout":
            self.close()  # interrupted mid-way: the next check gets a fresh worker
            raise WorkerError("timeout", time_limit(self.limits.call_seconds))
        return response

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None

    def cleanup(self) -> None:
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def detect_assignment(notebook: Notebook, hint: str | None = None) -> str | None:
    """Metadata first, then the file name, then its folders (nbgrader's submitted/<s>/<a>/)."""
    candidates = [hint, notebook.assignment, notebook.path.stem, *[p.name for p in notebook.path.parents][:3]]
    for candidate in candidates:
        if candidate in assignments():
            return candidate
    for candidate in candidates[2:]:
        for assignment in assignments():
            if candidate and candidate.startswith(assignment):
                return assignment
    return None


def failure_message(kind: str, target: str, message: str, whole_notebook: bool = False) -> tuple[str, str]:
    status = {"timeout": api.TIMEOUT, "memory": api.MEMORY}.get(kind, api.CRASHED)
    if whole_notebook:
        return status, message
    if kind == "timeout":
        return api.TIMEOUT, (f"`{target}` did not finish within the time limit ({message}). Does it loop "
                             "forever, or do far more work than needed?")
    if kind == "memory":
        return api.MEMORY, f"`{target}` ran out of memory: {message}"
    return api.CRASHED, f"while checking `{target}`: {message}"


def run_check(check: Check, submission: api.Submission) -> tuple[str, str]:
    """(status, output) of one check.

    A check that fails because a function of the notebook it calls fails its own
    check (an :class:`api.DependencyFailure` from ``expect.blame``) runs once more
    with the library's reference in place of each such function; if it passes
    then, it passes, with a note naming the wrong function, whose own checks take
    the points. Only a failure (wrong values, an exception) is re-run: a timeout,
    a crash or a forbidden function is final, so a runaway loop costs its time once.
    """
    try:
        with checks_running(check.seed):
            check.function(submission)
    except api.DependencyFailure as failure:
        return _with_references(check, submission, failure)
    except CheckFailure as failure:
        return failure.status, failure.message
    except WorkerError as error:
        return failure_message(error.kind, check.target, error.message, error.whole_notebook)
    return api.PASSED, ""


def _with_references(check: Check, submission: api.Submission, failure: api.DependencyFailure) -> tuple[str, str]:
    # Never the check's own target: a check of KVCache that finds KVCache wrong charges KVCache, as it should.
    references = {name: reference for name, _, _, reference in failure.wrong if reference and name != check.target}
    if not references or submission.substituting:
        return failure.status, failure.message
    try:
        with submission.substituted(references), checks_running(check.seed):
            check.function(submission)
    except (CheckFailure, WorkerError):
        return failure.status, failure.message  # wrong with the references too: the first failure stands
    notes = []
    for name, check_id, found, reference in failure.wrong:
        if name in references:
            notes.append(f"passes with the reference `{name}` ({reference.replace(':', '.')}) in place of yours: "
                         f"yours fails its own check ({check_id}), which takes the points. What it finds:\n"
                         + textwrap.indent(found, "  | "))
    return api.PASSED, "\n".join(notes)


def test_entry(check: Check, status: str, output: str) -> dict:
    passed = status == api.PASSED
    if passed:  # a pass may carry a note (it needed the reference of a wrong dependency)
        text = f"{check.title}\n{output}" if output else check.title
    else:
        text = f"{check.title}\n{output}\nSee: {check.book_url}"
    return {
        "name": check.id,
        "score": check.points if passed else 0.0,
        "max_score": check.points,
        "status": status,
        "output": text,
        "visibility": "after_published" if check.hidden else "visible",
    }


def empty_report(submission: str, assignment: str | None, message: str, status: str,
                 checks: list[Check], sha256: str | None) -> dict:
    tests = [test_entry(c, status, message) for c in checks]
    return finish_report(submission, assignment, tests, sha256, notes=[message], sandbox=None)


def finish_report(submission: str, assignment: str | None, tests: list[dict], sha256: str | None,
                  notes: list[str], sandbox: str | None) -> dict:
    score = sum(t["score"] for t in tests)
    max_score = sum(t["max_score"] for t in tests)
    lines = [f"{assignment or 'unknown assignment'}: {score:g} / {max_score:g} points"] + notes
    return {
        "score": score,
        "max_score": max_score,
        "output": "\n".join(lines),
        "tests": tests,
        "extra_data": {
            "submission": submission,
            "assignment": assignment,
            "sha256": sha256,
            "checks_version": checks_version(assignment),
            "sandbox": sandbox,
        },
    }


def grade_notebook(path: str | Path, runtime: Path, limits: Limits = Limits(), isolation: str = "bwrap",
                   assignment: str | None = None, include_hidden: bool = True, label: str | None = None) -> dict:
    """The Gradescope-shaped report for one notebook. Never raises for a bad submission."""
    path = Path(path)
    label = label or path.name
    try:
        notebook = read_notebook(path)
    except NotebookError as error:
        found = assignment if assignment in assignments() else detect_assignment(
            Notebook(path=path, sha256=""), assignment)
        checks = checks_for(found, include_hidden) if found else []
        # Keyed by the file's bytes like any report, so a rerun does not regrade it until it changes.
        return empty_report(label, found, f"This file could not be graded: {error}.", "invalid_notebook",
                            checks, file_sha256(path))
    found = detect_assignment(notebook, assignment)
    if found is None:
        return empty_report(label, None, "Could not tell which assignment this notebook is for (name the "
                            "file after it, e.g. 03_softmax.ipynb, or pass --assignment).",
                            "invalid_notebook", [], notebook.sha256)
    checks = checks_for(found, include_hidden)
    session = WorkerSession(notebook, runtime, limits, isolation)
    tests = []
    try:
        submission = RemoteSubmission(session)
        for check in checks:
            status, output = run_check(check, submission)
            tests.append(test_entry(check, status, output))
    finally:
        session.cleanup()
    notes = [f"Note: cell {index} {why}; it was left out (the checks ran on what the other cells define)."
             for index, why in sorted(session.left_out.items())]
    notes += [f"Note: cell {e.get('cell')} raised {e.get('type')}: {str(e.get('message', ''))[:300]} "
              "(the checks still ran on what the notebook defines)." for e in session.load_errors
              if isinstance(e, dict) and e.get("type") != "NotImplementedError"]
    return finish_report(label, found, tests, notebook.sha256, notes, isolation)
