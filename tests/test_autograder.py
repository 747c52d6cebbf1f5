"""The autograder: sandboxed, reproducible, resumable, and honest under attack."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from autograder.sandbox import wire
from autograder.sandbox.forbidden import GROUPS
from autograder.grading.notebook import NotebookError, read_notebook
from tests.conftest import ROOT
from tests.fixtures import hostile
from tests.fixtures.submissions import MAX, all_fixtures

FIXTURES = all_fixtures()
from tests.nbgrader_course import Course


def grade(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "autograder", "grade", *args], capture_output=True, text=True,
                            timeout=1200, cwd=ROOT)
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def reports(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.json"))}


def test_rerun_skips_up_to_date_reports_and_force_regrades(tmp_path):
    source = ROOT / "solutions" / "03_softmax" / "03_softmax.ipynb"
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(source, folder / "03_softmax.ipynb")
    out = tmp_path / "out"
    first = grade(str(folder), "--out", str(out))
    assert "grading" in first.stderr  # the progress bar
    report = out / "03_softmax.json"
    stamp = report.stat().st_mtime_ns
    second = grade(str(folder), "--out", str(out))
    assert "already graded" in second.stderr and report.stat().st_mtime_ns == stamp
    grade(str(folder), "--out", str(out), "--force", "--quiet")
    assert report.stat().st_mtime_ns != stamp
    changed = json.loads(source.read_text())
    changed["cells"].append(hostile.code_cell("x = 1"))
    (folder / "03_softmax.ipynb").write_text(json.dumps(changed))
    stamp = report.stat().st_mtime_ns
    grade(str(folder), "--out", str(out), "--quiet")
    assert report.stat().st_mtime_ns != stamp  # new content, new report
    assert json.loads(report.read_text())["score"] == MAX["03_softmax"]
    assert not list(out.glob(".*.tmp"))


def test_a_second_run_on_the_same_output_folder_is_refused(tmp_path):
    from autograder.classrun.grade import OutputLock

    out = tmp_path / "out"
    lock = OutputLock(out)
    assert lock.acquire()
    result = grade(str(ROOT / "exercises" / "03_softmax"), "--out", str(out), check=False)
    assert result.returncode == 3
    assert "another grading run" in result.stderr and str(os.getpid()) in result.stderr


@pytest.mark.slow
def test_grades_with_a_python_installation_under_tmp(tmp_path):
    """The sandbox gives each worker a fresh /tmp; a venv (or checkout) under /tmp must still be seen."""
    if Path(sys.prefix) == Path(sys.base_prefix):
        pytest.skip("needs the tests to run from a virtual environment")
    copy = Path(tempfile.mkdtemp(prefix="venv-under-tmp-", dir="/tmp")) / "venv"
    try:
        linked = subprocess.run(["cp", "-al", sys.prefix, str(copy)], capture_output=True, text=True)
        if linked.returncode != 0 and "cross-device" in linked.stderr.lower():
            pytest.skip("/tmp is on another file system than the venv, so it cannot be hard-linked there")
        assert linked.returncode == 0, linked.stderr
        python = copy / "bin" / "python"
        assert subprocess.run([str(python), "-c", f"import sys; assert sys.prefix == {str(copy)!r}"]).returncode == 0
        out = tmp_path / "out"
        result = subprocess.run([str(python), "-m", "autograder", "grade", "--out", str(out),
                                 str(ROOT / "solutions" / "03_softmax" / "03_softmax.ipynb")],
                                capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert result.returncode == 0, result.stderr[-3000:]
        assert "sandbox of its own" not in result.stderr  # the shared zygote, not the fallback
        report = json.loads((out / "03_softmax.json").read_text())
        assert report["score"] == report["max_score"] == MAX["03_softmax"], report["output"]
        assert report["extra_data"]["sandbox"] == "bwrap"
    finally:
        shutil.rmtree(copy.parent, ignore_errors=True)


def test_broken_files_get_reports_and_the_run_exits_zero(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "03_softmax_empty.ipynb").write_text("")
    (folder / "03_softmax_truncated.ipynb").write_text('{"cells": [')
    out = tmp_path / "out"
    grade(str(folder), "--out", str(out), "--quiet")
    empty = json.loads((out / "03_softmax_empty.json").read_text())
    assert empty["score"] == 0 and empty["max_score"] == MAX["03_softmax"]
    assert {t["status"] for t in empty["tests"]} == {"invalid_notebook"} and "empty" in empty["output"]
    truncated = json.loads((out / "03_softmax_truncated.json").read_text())
    assert "not valid notebook JSON" in truncated["output"]
    umask = os.umask(0)
    os.umask(umask)
    assert (out / "03_softmax_truncated.json").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    again = grade(str(folder), "--out", str(out))
    assert "2 submission(s) already graded" in again.stderr  # a broken file is not regraded every run


@pytest.mark.slow
def test_scores_go_into_the_nbgrader_gradebook_and_export(tmp_path):
    course = Course(tmp_path / "course")
    course.release("03_softmax")
    fixtures = {f.name: f for f in FIXTURES if f.assignment == "03_softmax"}
    course.submit("alice", "03_softmax", fixtures["passes_all"].build())
    course.submit("bob", "03_softmax", fixtures["fails_softmax_wrong_axis"].build())
    grade(str(course.folder / "submitted"), "--out", str(tmp_path / "grades"), "--gradebook",
          course.db_url, "--quiet")
    assert course.scores("03_softmax", "alice") == {"softmax_public": 2, "softmax_hidden": 2, "logsumexp_public": 1,
                                                    "logsumexp_hidden": 1, "log_softmax_public": 1,
                                                    "log_softmax_hidden": 1, "cross_entropy_public": 2,
                                                    "cross_entropy_hidden": 2, "perplexity_public": 1, "perplexity_hidden": 1}
    assert sum(course.scores("03_softmax", "bob").values()) == fixtures["fails_softmax_wrong_axis"].score
    exported = subprocess.run([str(Path(sys.executable).parent / "nbgrader"), "export", "--to", "export.csv",
                               f"--CourseDirectory.db_url={course.db_url}"], cwd=course.folder,
                              capture_output=True, text=True, env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert exported.returncode == 0, exported.stderr
    rows = {line.split(",")[3]: line for line in (course.folder / "export.csv").read_text().splitlines()[1:]}
    full, bob = float(MAX["03_softmax"]), float(fixtures["fails_softmax_wrong_axis"].score)
    assert f",{full},{full}" in rows["alice"] and f",{bob},{full}" in rows["bob"]


# ---------------------------------------------------------------- units

def test_workers_forked_by_one_zygote_cannot_see_or_touch_each_other():
    from autograder.sandbox.host import Limits, Worker, bwrap_works, close_spawners, stage_runtime

    if not bwrap_works():
        pytest.skip("bubblewrap is not available")
    runtime = stage_runtime()
    first, second = Worker(runtime, None, Limits()), Worker(runtime, None, Limits())

    def probe(worker):
        call = {"op": "call", "target": "probe", "args": wire.encode([]), "kwargs": wire.encode({}), "forbid": []}
        response = worker.request(call, 10)
        assert response["ok"], response
        return wire.decode(response["value"])

    def run(worker, source):
        response = worker.request({"op": "cell", "index": 0, "source": source}, 40)
        assert response == {"ok": True, "error": None}, response
        return probe(worker)

    try:
        first.start()
        second.start()
        assert first.spawner is second.spawner  # one zygote, two workers
        leaves = run(first, "import os\nopen('/tmp/note', 'w').write('from the first')\n"
                            "open('/dev/shm/note', 'w').write('x')\ndef probe():\n    return os.getpid()")
        assert leaves == 1  # PID 1 of its own namespace
        seen = run(second, "import os, signal\n"
                           "def probe():\n"
                           "    try:\n"
                           "        os.kill(-1, signal.SIGKILL)  # every process it may signal, but itself\n"
                           "        alone = False\n"
                           "    except ProcessLookupError:\n"
                           "        alone = True\n"
                           "    return [alone, os.path.exists('/tmp/note'), os.path.exists('/dev/shm/note'),\n"
                           "            os.listdir('/proc'), os.listdir('/submission'), os.getuid()]")
        assert seen == [True, False, False, [], [], 65534]
        assert probe(first) == 1  # still alive after the other's kill(-1)
    finally:
        first.close()
        second.close()
        close_spawners()
        shutil.rmtree(runtime, ignore_errors=True)


def test_a_sandbox_that_does_not_start_in_time_gives_crashed_reports_and_leaves_nothing(tmp_path, monkeypatch):
    from autograder.grading.runner import grade_notebook
    from autograder.sandbox.host import Limits, close_spawners, stage_runtime

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    runtime = stage_runtime()
    try:
        report = grade_notebook(ROOT / "solutions" / "03_softmax" / "03_softmax.ipynb", runtime,
                                Limits(startup_seconds=0.001))
    finally:
        close_spawners()
        shutil.rmtree(runtime, ignore_errors=True)
    assert report["score"] == 0
    assert {t["status"] for t in report["tests"]} == {"crashed"}
    assert "did not start within 0.001 s" in report["tests"][0]["output"]
    assert not list(tmp_path.iterdir())


def test_wire_round_trips_plain_values_and_rejects_objects():
    value = {"t": torch.arange(6, dtype=torch.float32).view(2, 3), "x": (1, 2.5, float("nan"), None, "s"),
             "b": torch.tensor([True, False]), "i": [torch.tensor(7, dtype=torch.int64)]}
    back = wire.roundtrip(value)
    assert torch.equal(back["t"], value["t"]) and back["t"].dtype == torch.float32
    assert back["x"][:2] == (1, 2.5) and back["x"][2] != back["x"][2]
    assert torch.equal(back["b"], value["b"])

    class Liar(torch.Tensor):
        def __eq__(self, other):
            return True

    liar = torch.zeros(3).as_subclass(Liar)
    assert type(wire.roundtrip(liar)) is torch.Tensor  # the subclass does not survive
    with pytest.raises(wire.WireError):
        wire.encode(object())
    with pytest.raises(wire.WireError):
        wire.decode({"__tensor__": {"dtype": "float32", "shape": [4], "data": "AAAA"}})  # 3 bytes for 4 floats
    with pytest.raises(wire.WireError):
        wire.decode({"__pickle__": "gASVAAAAAAAAAACMBXBvc2l4lIwGc3lzdGVtlJOUjAJpZJSFlFKULg=="})


def test_forbidden_builtins_are_caught_through_aliases():
    from autograder.grading.api import CheckFailure, LocalSubmission

    namespace = {}
    exec("from torch.nn.functional import softmax as sm\n"
         "def softmax(logits, dim=-1, temperature=1.0):\n    return sm(logits / temperature, dim=dim)\n", namespace)
    with pytest.raises(CheckFailure, match="uses F.softmax"):
        LocalSubmission(namespace).function("softmax", ["logits", "dim", "temperature"], forbid=GROUPS["softmax"])
    namespace = {}
    exec("import torch\nclass Helper:\n    @staticmethod\n    def go(x):\n        return x.softmax(-1)\n"
         "def softmax(logits, dim=-1, temperature=1.0):\n    return Helper.go(logits)\n", namespace)
    proxy = LocalSubmission(namespace).function("softmax", ["logits", "dim", "temperature"], forbid=GROUPS["softmax"])
    with pytest.raises(CheckFailure, match="Tensor.softmax"):
        proxy(torch.zeros(2, 3))


@pytest.mark.parametrize("content,phrase", [
    (b"", "empty"),
    (b'{"cells": [', "not valid notebook JSON"),
    (b"\xff\xfe\x00garbage", "not UTF-8"),
    (json.dumps({"nbformat": 3, "worksheets": []}).encode(), "format version 3"),
    (json.dumps([1, 2, 3]).encode(), "not a Jupyter notebook"),
])
def test_unreadable_notebooks_say_why(tmp_path, content, phrase):
    path = tmp_path / "x.ipynb"
    path.write_bytes(content)
    with pytest.raises(NotebookError, match=phrase):
        read_notebook(path)


def test_cells_are_read_by_content_not_position():
    notebook = read_notebook(ROOT / "solutions" / "03_softmax" / "03_softmax.ipynb")
    runnable = [c.source for c in notebook.runnable]
    assert any("def softmax" in s for s in runnable)
    assert not any(s.startswith("check(") for s in runnable)  # test cells never run in the worker


def test_checks_depend_only_on_the_oracle_modules():
    """The checks' version hashes ORACLE_MODULES; every library module the checks use must be among them."""
    code = ("import sys\nfrom autograder.grading.registry import load_checks, ORACLE_MODULES\nload_checks()\n"
            "used = {m for m in sys.modules if m.startswith('tinyllm.')}\nprint(sorted(used - set(ORACLE_MODULES)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize("fired", ["cpu limit", "wall-clock backstop"])
def test_a_timeout_reads_the_same_whichever_guard_stopped_the_code(fired, tmp_path, monkeypatch):
    """On a machine loaded far beyond two busy loops a runaway loop can meet the backstop first: same report."""
    import autograder.grading.runner as runner
    from autograder.sandbox.host import Limits, WorkerError

    class Worker:  # answers every cell and every request with a timeout of the kind under test
        def __init__(self, *args):
            pass

        def start(self):
            pass

        def request(self, message, wall_seconds):
            if fired == "cpu limit":
                return {"ok": False, "error": {"kind": "timeout"}}
            raise WorkerError("timeout", f"{wall_seconds:g} s")

        def close(self):
            pass

    monkeypatch.setattr(runner, "Worker", Worker)
    notebook_path = tmp_path / "n.ipynb"
    notebook_path.write_text(json.dumps({"cells": [{"cell_type": "code", "source": "while True: pass",
                                                    "metadata": {}, "outputs": [], "execution_count": None}],
                                         "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    session = runner.WorkerSession(read_notebook(notebook_path), tmp_path, Limits(call_seconds=5, cell_seconds=10),
                                   "none")
    try:
        assert session._load() == (None, [])
        assert session.left_out == {0: "did not finish within its time limit (10 s of CPU time, 35 s in all)"}
        session.left_out = {0: "left out"}  # now every cell is left out: the worker starts, requests time out
        with pytest.raises(WorkerError) as raised:
            session.request({"op": "call"})
        assert (raised.value.kind, raised.value.message) == ("timeout", "5 s of CPU time, 20 s in all")
    finally:
        session.cleanup()


def test_a_checks_random_draws_do_not_depend_on_another_thread_or_on_what_ran_before():
    """--jobs grades submissions in threads of one process, and the checks' own code draws from the
    global generators (a seeded reference model, random inputs). Each check draws what it would draw
    alone, whatever another thread draws while it waits on its sandbox, and gives the caller (a
    notebook running its public checks) its generators back as they were."""
    import random
    import threading
    import time

    from autograder.grading.runner import checks_running, waiting_on_the_sandbox

    def a_check(seed: int, out: list) -> None:
        with checks_running(seed):
            draws = []
            for _ in range(40):
                draws += [torch.rand(2), torch.tensor([random.random()])]
                with waiting_on_the_sandbox():  # where a check calls the submission
                    time.sleep(0.0005)
            out.append(torch.cat(draws))

    alone: list = []
    torch.manual_seed(123)
    for seed in (1, 2):
        a_check(seed, alone)
        torch.rand(5)  # whatever ran before a check does not change its draws
    assert not torch.equal(alone[0], alone[1])
    for _ in range(3):
        together: list[list] = [[], []]
        threads = [threading.Thread(target=a_check, args=(seed, together[i])) for i, seed in enumerate((1, 2))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert torch.equal(together[0][0], alone[0]) and torch.equal(together[1][0], alone[1])
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    a_check(3, [])
    assert torch.equal(torch.rand(3), expected), "a check must leave the caller's generators as it found them"
