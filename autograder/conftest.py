"""pytest entry point: the checks are ordinary tests taking a ``sub`` fixture.

    pytest autograder --submission path/to/03_softmax.ipynb [--report report.json]

grades one notebook in the sandbox; only the checks of its assignment run.
Without ``--submission`` every assignment's reference solution (solutions/) is
graded: the book's own code must earn full marks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autograder.grading import api
from autograder.grading.notebook import NotebookError, read_notebook
from autograder.grading.registry import Check
from autograder.grading.runner import (WorkerSession, detect_assignment, failure_message, finish_report, run_check,
                                       test_entry)
from autograder.sandbox.host import (Limits, WorkerError, bwrap_works, close_spawners, remove_stale_folders,
                               stage_runtime)

SOLUTIONS = Path(__file__).resolve().parent.parent / "solutions"


def pytest_addoption(parser):
    group = parser.getgroup("autograder")
    group.addoption("--submission", default=None, help="the notebook to grade (default: the reference solutions)")
    group.addoption("--assignment", default=None, help="its assignment, if the file name does not say")
    group.addoption("--report", default=None, help="write the Gradescope-shaped JSON report to this file")
    group.addoption("--unsafe-no-sandbox", action="store_true", help="run without bubblewrap (trusted code only)")


def _check_of(item) -> Check | None:
    return getattr(getattr(item, "function", None), "autograder_check", None)


class Grading:
    """One worker per assignment being graded, shared by its checks."""

    def __init__(self, config):
        self.config = config
        self.isolation = "rlimits" if config.getoption("--unsafe-no-sandbox") else "bwrap"
        if self.isolation == "bwrap" and not bwrap_works():
            raise pytest.UsageError("bubblewrap (bwrap) is not available: install it (apt-get install "
                                    "bubblewrap) or pass --unsafe-no-sandbox for trusted code")
        remove_stale_folders()
        self.runtime = stage_runtime()
        self.sessions: dict[str, WorkerSession] = {}
        self.results: dict[str, list[dict]] = {}
        self.paths: dict[str, Path] = {}
        path = config.getoption("--submission")
        if path:
            notebook = read_notebook(path)
            assignment = detect_assignment(notebook, config.getoption("--assignment"))
            if assignment is None:
                raise pytest.UsageError(f"cannot tell the assignment of {path}; pass --assignment")
            self.paths[assignment] = Path(path)
            self.notebooks = {assignment: notebook}
        else:
            self.notebooks = {}
            for folder in sorted(SOLUTIONS.glob("*")):
                notebook_path = folder / f"{folder.name}.ipynb"
                if notebook_path.exists():
                    self.notebooks[folder.name] = read_notebook(notebook_path)
                    self.paths[folder.name] = notebook_path

    def submission(self, assignment: str) -> api.RemoteSubmission:
        if assignment not in self.sessions:
            self.sessions[assignment] = WorkerSession(self.notebooks[assignment], self.runtime, Limits(), self.isolation)
        return api.RemoteSubmission(self.sessions[assignment])

    def close(self) -> None:
        for session in self.sessions.values():
            session.cleanup()
        close_spawners()


def pytest_configure(config):
    config._autograder = None


def pytest_collection_modifyitems(session, config, items):
    checks = [item for item in items if _check_of(item)]
    if not checks:
        return
    try:
        config._autograder = grading = Grading(config)
    except NotebookError as error:
        raise pytest.UsageError(f"cannot grade {config.getoption('--submission')}: {error}") from None
    keep, drop = [], []
    for item in items:
        entry = _check_of(item)
        (keep if entry is None or entry.assignment in grading.notebooks else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def sub(request):
    grading = request.config._autograder
    return grading.submission(_check_of(request.node).assignment)


def pytest_pyfunc_call(pyfuncitem):
    """A check runs as the grader runs it (runner.run_check: with the reference in place of a wrong dependency)."""
    entry = _check_of(pyfuncitem)
    if entry is None or getattr(pyfuncitem.config, "_autograder", None) is None:
        return None
    status, output = run_check(entry, pyfuncitem.funcargs["sub"])
    if status != api.PASSED:
        raise api.CheckFailure(output, status)
    pyfuncitem.autograder_note = output  # a pass may carry a note (see run_check)
    return True


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    entry = _check_of(item)
    grading = item.config._autograder
    if entry is None or grading is None or report.when != "call":
        return
    if call.excinfo is None:
        status, output = api.PASSED, getattr(item, "autograder_note", "")
    elif isinstance(call.excinfo.value, api.CheckFailure):
        status, output = call.excinfo.value.status, call.excinfo.value.message
    elif isinstance(call.excinfo.value, WorkerError):
        error = call.excinfo.value
        status, output = failure_message(error.kind, entry.target, error.message, error.whole_notebook)
    else:
        return  # a bug in a check: let pytest show the full traceback
    result = test_entry(entry, status, output)
    grading.results.setdefault(entry.assignment, []).append(result)
    if status != api.PASSED:
        report.longrepr = f"[{status}] {result['output']}"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    grading = config._autograder
    if grading is None:
        return
    reports = []
    for assignment, tests in grading.results.items():
        report = finish_report(grading.paths[assignment].name, assignment, tests,
                               grading.notebooks[assignment].sha256, [], grading.isolation)
        reports.append(report)
        terminalreporter.write_line(f"autograder: {grading.paths[assignment]}: {report['score']:g} / "
                                    f"{report['max_score']:g} points")
    path = config.getoption("--report")
    if path and reports:
        Path(path).write_text(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2) + "\n")
    grading.close()
