"""Gradescope as Gradescope runs it, with bubblewrap unavailable.

Gradescope's autograder specification
(https://gradescope-autograders.readthedocs.io/en/latest/specs/, "File hierarchy"):
the zip has ``setup.sh`` and ``run_autograder`` at its root and is unpacked into
``/autograder/source``; ``setup.sh`` runs once, as root, when the image is built;
``run_autograder`` is copied to ``/autograder/run_autograder`` and runs from
``/autograder`` once per submission, which lies in ``/autograder/submission``;
the scores must be in ``/autograder/results/results.json``.

The harness below reproduces exactly that layout from the real zip, under a
temporary root that the scripts are pointed at (``AUTOGRADER_ROOT``), runs
``setup.sh`` (its pip install against a local wheel cache: no network) and then
``run_autograder`` as root, with a ``bwrap`` on PATH that fails as it does in a
container that forbids user namespaces. So grading falls to the sandbox's
``user`` level, which must stop the forging attack and the hostile fixtures as
bubblewrap does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from autograder.gradescope import CONSTRAINTS, build, pinned
from autograder.sandbox.host import bwrap_works, landlock_abi
from tests.conftest import ROOT
from tests.fixtures import hostile

ASSIGNMENT = "03_softmax"
FULL = hostile.MAX  # 03_softmax's points
GRADESCOPE = "/autograder"  # the documented root; the harness puts the same layout under a temporary one
SYSTEM_PYTHON = Path("/usr/bin/python3.11")  # what setup.sh builds its venv with (Ubuntu 22.04's python3.11)
# The hostile fixtures that attack the isolation: what the worker may read, write, signal, reach or
# leave behind. The others attack the grader's comparisons, the time and memory limits (rlimits
# and the grader's clocks, the same at every level) or are broken input, and each costs a run here.
ISOLATION_CASES = ["prints_perfect_score", "reads_reference_solutions", "imports_hidden_checks",
                   "searches_for_other_submissions", "spies_on_other_workers", "signals_the_grader",
                   "uses_the_network", "reads_the_environment_secrets", "fills_the_disk",
                   "leaves_background_processes", "fork_bomb"]
FAILING_BWRAP = """#!/bin/sh
# A container that forbids unprivileged user namespaces: bubblewrap is installed but cannot start.
echo "bwrap: creating new namespace failed: Operation not permitted" >&2
exit 1
"""

# A blank (released) notebook plus this cell: it edits the packaged grader and checks, writes
# results.json, and reads the hidden checks (and says so in a way the results would show).
FORGERY = '''
import glob, json, os, sys
ROOT = {root!r}
forged = """
def results(reports_dir, results_json, *args, **kwargs):
    import json as _json
    report = _json.loads(sorted(reports_dir.glob("*.json"))[0].read_text())
    for test in report["tests"]:
        test["score"], test["status"] = test["max_score"], "passed"
    report["score"] = sum(test["max_score"] for test in report["tests"])
    results_json.write_text(_json.dumps(to_gradescope(report)))
    return 0

"""
places = [ROOT] + [p for p in sys.path if os.path.isdir(p)]
for place in places:
    for path in glob.glob(place + "/**/autograder/gradescope.py", recursive=True):
        try:
            with open(path) as handle:
                text = handle.read()
            with open(path, "w") as handle:
                handle.write(text.replace('\\nif __name__ == "__main__":', forged + 'if __name__ == "__main__":'))
        except OSError:
            pass
    for path in glob.glob(place + "/**/autograder/*/test_*.py", recursive=True):
        try:
            with open(path, "a") as handle:
                handle.write("\\n# edited by a submission\\n")
        except OSError:
            pass
perfect = {{"score": {full}, "output": "forged", "tests": []}}
for target in (ROOT + "/results/results.json", "/autograder/results/results.json"):
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w") as handle:
            json.dump(perfect, handle)
    except OSError:
        pass
for path in glob.glob(ROOT + "/**/hidden/test_*.py", recursive=True):
    try:
        with open(path) as handle:
            handle.read()
    except OSError:
        continue
    raise RuntimeError("LEAKED the hidden checks: " + path)
'''


# ---------------------------------------------------------------- a local wheel cache

def _requirements(name: str) -> list[str]:
    names = []
    for text in metadata.distribution(name).requires or []:
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
            names.append(requirement.name)
    return names


def runtime_distributions() -> list[str]:
    """What setup.sh installs: the project's dependencies (no extras), theirs, and its build backend."""
    todo, seen = _requirements("llm-foundations") + ["setuptools", "wheel"], []
    while todo:
        name = todo.pop()
        if name.lower() not in {s.lower() for s in seen}:
            seen.append(name)
            todo += _requirements(name)
    return sorted(seen, key=str.lower)


def wheel_on_disk(name: str) -> Path | None:
    """The wheel pip installed an installed distribution from, where pip's configured find-links hold it.

    This machine's pip finds torch's CPU wheel in such a folder; linking it saves repacking
    about a gigabyte of installed files.
    """
    config = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    folders = [Path(word) for line in config.splitlines() if "find-links" in line.split("=", 1)[0]
               for word in line.split("=", 1)[1].strip("'\" ").split()]
    dist = metadata.distribution(name)
    prefix = f"{re.sub(r'[-_.]+', '_', dist.metadata['Name'])}-{dist.version}-".lower()
    for folder in folders:
        for wheel in sorted(folder.glob("*.whl")) if folder.is_dir() else []:
            if wheel.name.lower().startswith(prefix):
                return wheel
    return None


def repack(name: str, folder: Path) -> Path:
    """A wheel of an installed distribution, from the files its RECORD lists (no network)."""
    found = wheel_on_disk(name)
    if found is not None:
        (folder / found.name).symlink_to(found)
        return folder / found.name
    dist = metadata.distribution(name)
    info = Path(dist._path)  # the .dist-info folder
    tags = [line.split(":", 1)[1].strip().split("-") for line in (info / "WHEEL").read_text().splitlines()
            if line.startswith("Tag:")]
    tag = "-".join(".".join(dict.fromkeys(parts)) for parts in zip(*tags))  # py2-none-any, py3-none-any: py2.py3-...
    wheel = folder / f"{re.sub(r'[-_.]+', '_', dist.metadata['Name'])}-{dist.version}-{tag}.whl"
    record = []
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as archive:
        for entry in dist.files:
            path = Path(dist.locate_file(entry))
            if entry.parts[0] == ".." or "__pycache__" in entry.parts or not path.is_file():
                continue  # scripts (pip makes them from entry_points.txt) and bytecode
            if entry.parts[0] == info.name and entry.name in ("RECORD", "INSTALLER", "REQUESTED", "direct_url.json"):
                continue
            data = path.read_bytes()
            archive.writestr(entry.as_posix(), data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{entry.as_posix()},sha256={digest},{len(data)}")
        record.append(f"{info.name}/RECORD,,")
        archive.writestr(f"{info.name}/RECORD", "\n".join(record) + "\n")
    return wheel


# ---------------------------------------------------------------- the harness

def unpack(zip_path: Path, folder: Path) -> None:
    """As unzip does: with the modes the archive records (Python's extractall drops them)."""
    with zipfile.ZipFile(zip_path) as archive:
        for info in archive.infolist():
            target = folder / info.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(info))
            mode = info.external_attr >> 16
            target.chmod(mode & 0o777 if mode else 0o644)


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts
            and ".egg-info" not in str(p) and "build" not in p.relative_to(folder).parts[:1]}


@dataclass
class Gradescope:
    base: Path
    root: Path
    env: dict[str, str]
    setup_seconds: float
    source_digest: dict[str, str] = field(default_factory=dict)

    def submit(self, files: dict[str, bytes], env: dict[str, str] | None = None) -> tuple[int, dict, str]:
        """One submission, as Gradescope runs it: a fresh submission folder, run_autograder from the root."""
        for folder in ("submission", "results"):
            shutil.rmtree(self.root / folder, ignore_errors=True)
            (self.root / folder).mkdir()
        for name, data in files.items():
            (self.root / "submission" / name).write_bytes(data)
        result = subprocess.run([str(self.root / "run_autograder")], cwd=self.root, capture_output=True, text=True,
                                timeout=900, env={**self.env, **(env or {})})
        results = json.loads((self.root / "results" / "results.json").read_text())
        return result.returncode, results, result.stderr


@pytest.fixture(scope="module")
def gradescope():
    if os.geteuid() != 0:
        pytest.skip("Gradescope runs setup.sh and run_autograder as root, and so must this test (CI runs as root)")
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"setup.sh builds its venv with {SYSTEM_PYTHON} (Ubuntu 22.04's python3.11), missing here")
    # Under /tmp, not pytest's folders (0700): the sandbox user must reach the venv, as on Gradescope.
    base = Path(tempfile.mkdtemp(prefix="gradescope-test-"))
    base.chmod(0o755)
    user = f"agtest{os.getpid()}"
    try:
        wheels = base / "wheels"
        wheels.mkdir()
        for name in runtime_distributions():
            repack(name, wheels)
        (zip_path,) = build(base / "zips", [ASSIGNMENT])
        root = base / "autograder"
        unpack(zip_path, root / "source")
        (base / "bin").mkdir()
        (base / "bin" / "bwrap").write_text(FAILING_BWRAP)
        (base / "bin" / "bwrap").chmod(0o755)
        (base / "tmp").mkdir(mode=0o755)
        env = {"PATH": f"{base / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "LANG": "C.UTF-8", "HOME": str(base), "TMPDIR": str(base / "tmp"), "AUTOGRADER_ROOT": str(root),
               "AUTOGRADER_SANDBOX_USER": user, hostile.SECRET_NAME: "the grader's secret"}
        started = time.monotonic()
        setup = subprocess.run(["bash", str(root / "source" / "setup.sh")], cwd=root / "source", capture_output=True,
                               text=True, timeout=900,
                               env={**env, "AUTOGRADER_SYSTEM_PACKAGES": "0", "PIP_NO_INDEX": "1",
                                    "PIP_FIND_LINKS": str(wheels), "PIP_CONFIG_FILE": os.devnull})
        assert setup.returncode == 0, setup.stdout[-3000:] + setup.stderr[-3000:]
        shutil.rmtree(wheels)
        # Gradescope copies run_autograder to /autograder/run_autograder and runs it from there.
        shutil.copy2(root / "source" / "run_autograder", root / "run_autograder")
        harness = Gradescope(base, root, env, time.monotonic() - started)
        harness.source_digest = tree_digest(root / "source")
        yield harness
    finally:
        subprocess.run(["userdel", user], capture_output=True)
        subprocess.run(["groupdel", user], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def running_as(user: str, wait: float = 5.0) -> list[str]:
    """The user's live processes (zombies are dead: a killed worker's may wait a moment for init)."""
    deadline = time.monotonic() + wait
    while True:
        listing = subprocess.run(["ps", "-u", user, "-o", "pid=,stat=,args="], capture_output=True, text=True).stdout
        alive = [line for line in listing.splitlines() if not line.split()[1].startswith("Z")]
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def notebook(cells_from: Path, extra: list[str] = ()) -> bytes:
    data = json.loads(cells_from.read_text())
    data["cells"] += [hostile.code_cell(source) for source in extra]
    return json.dumps(data).encode()


# ---------------------------------------------------------------- the zip

def test_the_zip_has_gradescopes_documented_layout(tmp_path):
    (zip_path,) = build(tmp_path, [ASSIGNMENT])
    with zipfile.ZipFile(zip_path) as archive:
        names = set(archive.namelist())
        modes = {name: archive.getinfo(name).external_attr >> 16 for name in names}
        read = lambda name: archive.read(name).decode()  # noqa: E731
        # The spec: setup.sh and run_autograder at the root of the archive (not in a folder), executable.
        assert {"setup.sh", "run_autograder"} <= names and not any(n.startswith("source/") for n in names)
        assert modes["setup.sh"] & 0o111 and modes["run_autograder"] & 0o111
        # The root is /autograder/source: what setup.sh installs from there, and what run_autograder reads.
        assert {"pyproject.toml", "README.md", CONSTRAINTS, "ASSIGNMENT", "autograder/gradescope.py",
                "tinyllm/__init__.py", f"autograder/hidden/test_{ASSIGNMENT}.py"} <= names
        # Every module of the grader's layers travels (a subpackage the copy left out would fail only there).
        layers = {p.relative_to(ROOT).as_posix() for p in (ROOT / "autograder").glob("*/*.py")
                  if p.parent.name not in ("checks", "hidden")}
        assert "autograder/sandbox/worker.py" in layers and layers <= names
        assert read("ASSIGNMENT").strip() == ASSIGNMENT
        assert read(CONSTRAINTS) == (ROOT / CONSTRAINTS).read_text()  # the pins ship with it
        setup, run = read("setup.sh"), read("run_autograder")
    # Both default to Gradescope's root and find their files where the spec puts them.
    assert f'ROOT="${{AUTOGRADER_ROOT:-{GRADESCOPE}}}"' in setup and f'ROOT="${{AUTOGRADER_ROOT:-{GRADESCOPE}}}"' in run
    assert 'SOURCE="$ROOT/source"' in setup and 'cd "$ROOT/source"' in run and "$ROOT/results/results.json" in run
    # torch pinned to the constraints' version, the CPU build; everything else exactly as constrained.
    assert f"torch=={pinned('torch')} " in setup.replace("\n", " ") and pinned("torch") == "2.13.0"
    assert "https://download.pytorch.org/whl/cpu" in setup and f'-c "$SOURCE/{CONSTRAINTS}" "$SOURCE"' in setup
    for script in (setup, run):
        assert subprocess.run(["bash", "-n", "-c", script]).returncode == 0


# ---------------------------------------------------------------- run as Gradescope runs it

@pytest.mark.slow
def test_setup_installs_exactly_the_pinned_versions(gradescope):
    python = gradescope.root / "venv" / "bin" / "python"
    listing = subprocess.run([str(python), "-m", "pip", "list", "--format", "json"], capture_output=True, text=True,
                             env=gradescope.env)
    installed = {item["name"].lower(): item["version"] for item in json.loads(listing.stdout)}
    assert installed["torch"].split("+")[0] == pinned("torch")
    pins = {line.split("==")[0].lower(): line.split("==")[1] for line in (ROOT / CONSTRAINTS).read_text().splitlines()
            if "==" in line and not line.startswith("#")}
    for name in runtime_distributions():
        if name.lower() in pins and name.lower() != "torch":
            assert installed[name.lower()] == pins[name.lower()], name


@pytest.mark.slow
def test_the_forging_attack_scores_nothing(gradescope):
    """Today's zip gave this 14/14 (the blank notebook's honest score is 0): it edited the packaged grader."""
    blank = ROOT / "exercises" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    attack = notebook(blank, [FORGERY.format(root=str(gradescope.root), full=FULL)])
    for env in ({}, {"AUTOGRADER_NO_LANDLOCK": "1"}):  # file permissions alone must hold too
        status, results, stderr = gradescope.submit({f"{ASSIGNMENT}.ipynb": attack}, env)
        assert status == 0, stderr[-3000:]
        assert results["score"] == 0 and sum(t["max_score"] for t in results["tests"]) == FULL, results["output"]
        assert "LEAKED" not in results["output"] and "forged" not in results["output"]
        assert results["extra_data"]["isolation"]["level"] == "user"
        assert results["extra_data"]["isolation"]["landlock_abi"] == (0 if env else landlock_abi())
        assert "Isolation: user" in results["output"]
        assert tree_digest(gradescope.root / "source") == gradescope.source_digest  # nothing was edited


@pytest.mark.slow
@pytest.mark.parametrize("name", ISOLATION_CASES)
def test_hostile_fixtures_score_as_in_bubblewrap(gradescope, name):
    case = next(c for c in hostile.CASES if c.name == name)
    if name == "reads_reference_solutions" and not landlock_abi():
        pytest.skip("without Landlock the sandbox user can read this machine's world-readable checkout "
                    "(on Gradescope there is none)")
    content = case.build()
    status, results, stderr = gradescope.submit(
        {f"{ASSIGNMENT}.ipynb": content if isinstance(content, bytes) else json.dumps(content).encode()})
    assert status == 0, stderr[-3000:]
    assert results["extra_data"]["isolation"]["level"] == "user"
    # The scores tests/test_hardening.py proves bubblewrap gives (statuses may differ: an error here
    # where bubblewrap shows an empty folder; the points cannot).
    assert results["score"] == case.score, results["output"]
    failed = {t["name"] for t in results["tests"] if t["status"] != "passed"}
    assert failed == set(case.fails), results["output"]
    assert not running_as(gradescope.env["AUTOGRADER_SANDBOX_USER"]), "processes of the sandbox user survived"


@pytest.mark.slow
def test_the_reference_solution_gets_full_marks(gradescope):
    reference = (ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").read_bytes()
    status, results, stderr = gradescope.submit({"my upload.ipynb": reference})
    assert status == 0, stderr[-3000:]
    assert results["score"] == FULL and all(t["status"] == "passed" for t in results["tests"]), results["output"]
    assert results["extra_data"]["isolation"]["level"] == "user"
    hidden = [t for t in results["tests"] if t["name"].endswith("_hidden")]
    assert hidden and all(t["visibility"] == "after_published" for t in hidden)
    assert not list((gradescope.base / "tmp").iterdir()), "temporary folders were left behind"


@pytest.mark.slow
def test_no_safe_isolation_grades_nothing_and_says_so(gradescope):
    reference = (ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").read_bytes()
    status, results, stderr = gradescope.submit({f"{ASSIGNMENT}.ipynb": reference},
                                                {"AUTOGRADER_SANDBOX_USER": "no-such-user-here"})
    assert status != 0 and "could not run safely" in stderr
    assert results["score"] == 0 and results["tests"] == [] and "could not run safely" in results["output"]
    assert results["extra_data"]["isolation"] is None
    # A Python installation the sandbox user could change (the grader imports from it) is refused too.
    site_packages = next((gradescope.root / "venv" / "lib").glob("python3*/site-packages"))
    site_packages.chmod(0o757)
    try:
        status, results, stderr = gradescope.submit({f"{ASSIGNMENT}.ipynb": reference})
    finally:
        site_packages.chmod(0o755)
    assert status != 0 and f"can write {site_packages}" in results["output"] and results["tests"] == []


@pytest.mark.slow
def test_bubblewrap_is_chosen_where_it_starts(gradescope):
    if not bwrap_works():
        pytest.skip("bubblewrap cannot start on this machine")
    reference = (ROOT / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").read_bytes()
    path = gradescope.env["PATH"].split(":", 1)[1]  # without the failing bwrap
    status, results, stderr = gradescope.submit({f"{ASSIGNMENT}.ipynb": reference}, {"PATH": path})
    assert status == 0, stderr[-3000:]
    assert results["score"] == FULL and results["extra_data"]["isolation"]["level"] == "bwrap"
