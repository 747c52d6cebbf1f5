"""Gradescope packaging: ``make gradescope`` builds one autograder zip per assignment.

A course too large for one machine can grade on Gradescope's fleet. The zip
follows Gradescope's autograder specification
(https://gradescope-autograders.readthedocs.io/en/latest/specs/, "File hierarchy"):
``setup.sh`` and ``run_autograder`` sit at the root of the archive, which
Gradescope unpacks into ``/autograder/source/``; ``setup.sh`` runs there once, as
root, when the image is built; ``run_autograder`` is copied to
``/autograder/run_autograder`` and runs, from ``/autograder``, once per
submission, which lies in ``/autograder/submission/``; the scores go to
``/autograder/results/results.json``. So the zip's root holds this package (with
the hidden checks), the book's library, ``pyproject.toml``, the pinned versions
(``requirements/constraints-py311.txt``) and ``ASSIGNMENT``.

Isolation, chosen explicitly and written into results.json (output and
``extra_data.isolation``): bubblewrap where it starts; else the sandbox's
``user`` level (an unprivileged user, Landlocked where the kernel allows, see
:mod:`autograder.sandbox.host`), after the grader has made ``/autograder``'s
private parts root's alone and checked, as that user, that it cannot reach
them. If neither can run, nothing is graded: results.json says why, with a
score of 0, and ``run_autograder`` fails. It never grades unsandboxed.

    python -m autograder.gradescope build DEST [ASSIGNMENT...]
    python -m autograder.gradescope run [ROOT]        (what run_autograder does; ROOT: /autograder)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path

from autograder.grading.registry import assignments as known_assignments
from autograder.grading.report import atomic_write, read_report

PACKAGE_DIR = Path(__file__).resolve().parent
ROOT = PACKAGE_DIR.parent
CONSTRAINTS = "requirements/constraints-py311.txt"  # Python 3.11: what setup.sh installs
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def pinned(name: str, constraints: Path = ROOT / CONSTRAINTS) -> str:
    """The exact version the constraints file pins ``name`` to."""
    for line in constraints.read_text().splitlines():
        if line.split("==")[0].strip().lower() == name.lower() and "==" in line:
            return line.split("==", 1)[1].strip()
    raise ValueError(f"{constraints} pins no version of {name}")


SETUP_SH = r"""#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder's image, after unpacking the
# zip into /autograder/source (https://gradescope-autograders.readthedocs.io/en/latest/specs/).
# Choose the Ubuntu 22.04 base image: it has Python 3.11, which requirements/constraints-py311.txt pins for.
set -euo pipefail
ROOT="${AUTOGRADER_ROOT:-/autograder}"
SOURCE="$ROOT/source"
SANDBOX_USER="${AUTOGRADER_SANDBOX_USER:-autograder-sandbox}"
# Python 3.11 and bubblewrap, the sandbox of choice. AUTOGRADER_SYSTEM_PACKAGES=0 skips this step
# (the project's tests, whose machine has both and no network).
if [ "${AUTOGRADER_SYSTEM_PACKAGES:-1}" != 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3.11 python3.11-venv bubblewrap
fi
# Where bubblewrap cannot start (Docker forbids the user namespaces it needs), each worker runs as
# this unprivileged user instead ("user" in autograder/sandbox/host.py).
id -u "$SANDBOX_USER" >/dev/null 2>&1 || useradd --system --user-group --no-create-home \
  --home-dir /nonexistent --shell /usr/sbin/nologin "$SANDBOX_USER"
/usr/bin/python3.11 -m venv "$ROOT/venv"
PIP=("$ROOT/venv/bin/python" -m pip install --disable-pip-version-check --no-input -q)
# torch alone from PyTorch's CPU index (the checks need no GPU, and it is a tenth of the size);
# then everything else exactly as the project pins it. pip's own variables (PIP_NO_INDEX,
# PIP_FIND_LINKS) point both at a local wheel cache instead.
"${PIP[@]}" --no-deps --index-url "${AUTOGRADER_TORCH_INDEX:-@PYTORCH_CPU_INDEX@}" torch==@TORCH@
"${PIP[@]}" -c "$SOURCE/@CONSTRAINTS@" "$SOURCE"
"$ROOT/venv/bin/python" -m pip check
"""

RUN_AUTOGRADER = r"""#!/usr/bin/env bash
# Gradescope copies this file to /autograder/run_autograder and runs it, as root, from /autograder,
# once per submission (https://gradescope-autograders.readthedocs.io/en/latest/specs/). The grading
# is `python -m autograder.gradescope run`; this script only makes sure results.json says something
# when Python itself cannot start.
set -u
ROOT="${AUTOGRADER_ROOT:-/autograder}"
cd "$ROOT/source" || exit 1   # the packaged grader and its hidden checks come first on sys.path
"$ROOT/venv/bin/python" -m autograder.gradescope run "$ROOT"
status=$?
if [ ! -s "$ROOT/results/results.json" ]; then
  mkdir -p "$ROOT/results"
  printf '{"score": 0.0, "tests": [], "output": "The autograder failed before it could grade (status %s): this submission was not graded. Please tell your instructor."}\n' "$status" > "$ROOT/results/results.json"
  [ "$status" -ne 0 ] || status=1
fi
exit "$status"
"""


def _scripts() -> dict[str, str]:
    setup = SETUP_SH.replace("@TORCH@", pinned("torch")).replace("@CONSTRAINTS@", CONSTRAINTS)
    return {"setup.sh": setup.replace("@PYTORCH_CPU_INDEX@", PYTORCH_CPU_INDEX), "run_autograder": RUN_AUTOGRADER}


def _copy_source(destination: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "gradescope_build")
    shutil.copytree(ROOT / "tinyllm", destination / "tinyllm", ignore=ignore)  # follows the corpus link
    shutil.copytree(PACKAGE_DIR, destination / "autograder", ignore=ignore)  # hidden checks included
    for name in ("pyproject.toml", "README.md", CONSTRAINTS):
        (destination / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, destination / name)


def build(destination: Path, assignments: list[str] | None = None) -> list[Path]:
    """Write <destination>/<assignment>.zip for each assignment: the root of each is /autograder/source."""
    destination.mkdir(parents=True, exist_ok=True)
    staging = destination / "gradescope_build"
    shutil.rmtree(staging, ignore_errors=True)
    _copy_source(staging)
    scripts = _scripts()
    written = []
    for assignment in assignments or list(known_assignments()):
        if assignment not in known_assignments():
            raise ValueError(f"unknown assignment {assignment!r}")
        target = destination / f"{assignment}.zip"
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, text in {**scripts, "ASSIGNMENT": assignment + "\n"}.items():
                info = zipfile.ZipInfo(name)
                info.external_attr = (0o755 if name in scripts else 0o644) << 16  # scripts executable
                archive.writestr(info, text)
            for path in sorted(staging.rglob("*")):
                if path.is_file():
                    archive.write(path, path.relative_to(staging).as_posix())
        written.append(target)
    shutil.rmtree(staging, ignore_errors=True)
    return written


# ---------------------------------------------------------------- grading on Gradescope

def to_gradescope(report: dict) -> dict:
    """Gradescope's results.json: per test passed/failed; our finer status leads the output."""
    tests = []
    for test in report.get("tests", []):
        status = test.get("status", "failed")
        output = test.get("output", "")
        if status != "passed":
            output = f"[{status}] {output}"
        tests.append({"name": test["name"], "score": test["score"], "max_score": test["max_score"],
                      "status": "passed" if status == "passed" else "failed", "output": output,
                      "visibility": test.get("visibility", "visible")})
    return {"score": report.get("score", 0.0), "output": report.get("output", ""), "tests": tests,
            "extra_data": report.get("extra_data", {})}


def results(reports_dir: Path, results_json: Path, isolation: dict) -> None:
    """results.json from the grader's own report (never from anything the submission wrote)."""
    reports = [r for r in (read_report(p) for p in sorted(reports_dir.glob("*.json"))) if r]
    if not reports:
        payload = {"score": 0.0, "output": "No notebook (.ipynb) was found in the submission. Upload your "
                   "exercise notebook.", "tests": [], "extra_data": {}}
    else:
        # One report: the grader chose the notebook by the rule in docs/instructor.md (--one-submission),
        # the same rule as for an nbgrader folder, and lists what it ignored.
        payload = to_gradescope(reports[0])
        for item in reports[0].get("extra_data", {}).get("ignored", []):
            payload["output"] += f"\nNot graded: {item['path']} ({item['reason']})."
    payload["output"] += f"\nIsolation: {isolation['level']} ({isolation['summary']})."
    payload["extra_data"] = {**payload.get("extra_data", {}), "isolation": isolation}
    atomic_write(results_json, (json.dumps(payload, indent=2) + "\n").encode("utf-8"))


def refuse(results_json: Path, problem: str) -> int:
    """No safe isolation: grade nothing, and say so loudly (results.json, and stderr for the instructor)."""
    message = (f"Grading could not run safely, so this submission was not graded (the 0 is not a grade): "
               f"{problem}. Please tell your instructor; resubmitting will not help until the autograder is fixed.")
    print(f"autograder: {message}", file=sys.stderr)
    payload = {"score": 0.0, "output": message, "tests": [],
               "extra_data": {"isolation": None, "error": f"no safe isolation: {problem}"}}
    results_json.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(results_json, (json.dumps(payload, indent=2) + "\n").encode("utf-8"))
    return 1


def lock_down(root: Path) -> list[Path]:
    """Make what a submission must not reach root's alone; returns those paths.

    The grader and its hidden checks (source/), the results, the upload itself and
    Gradescope's submission metadata (other students' names among it). The
    virtual environment stays readable: it holds only public code.
    """
    (root / "results").mkdir(exist_ok=True)
    private = [root / "source", root / "results", root / "submission", root / "submission_metadata.json",
               root / "run_autograder"]
    for path in private:
        if path.exists():
            path.chmod(0o600 if path.suffix == ".json" else 0o700)
    return [p for p in private if p.exists()] + [root / "source" / "autograder" / "hidden"]


def choose_isolation(protected: list[Path]) -> tuple[str | None, str]:
    """The strongest isolation that can run here, or (None, why none can)."""
    from autograder.sandbox.host import bwrap_works, user_problem

    if bwrap_works():
        return "bwrap", ""
    problem = user_problem(protected)
    if problem is None:
        return "user", ""
    return None, f"bubblewrap cannot start here, and the unprivileged-user isolation cannot run: {problem}"


def run(root: Path) -> int:
    """Grade /autograder/submission into /autograder/results/results.json (Gradescope's layout)."""
    from autograder.__main__ import main as autograder_main
    from autograder.sandbox.host import describe

    results_json = root / "results" / "results.json"
    protected = lock_down(root)
    results_json.unlink(missing_ok=True)  # whatever is there was not written by this run
    isolation, problem = choose_isolation(protected)
    if isolation is None:
        return refuse(results_json, problem)
    assignment = (root / "source" / "ASSIGNMENT").read_text().strip()
    out = Path(tempfile.mkdtemp(prefix="autograder-gradescope-"))  # root's alone (0700)
    try:
        if any((root / "submission").rglob("*.ipynb")):  # else results() says that none was uploaded
            status = autograder_main(["grade", str(root / "submission"), "--assignment", assignment,
                                      "--one-submission", "--out", str(out), "--jobs", "1", "--quiet",
                                      "--isolation", isolation])
            if status != 0:
                return refuse(results_json, f"the grader stopped with status {status} (see the output above)")
        results(out, results_json, describe(isolation))
    finally:
        shutil.rmtree(out, ignore_errors=True)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "build":
        for path in build(Path(argv[1]), argv[2:] or None):
            print(path)
        return 0
    if argv[:1] == ["run"] and len(argv) <= 2:
        return run(Path(argv[1] if len(argv) == 2 else os.environ.get("AUTOGRADER_ROOT", "/autograder")))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
