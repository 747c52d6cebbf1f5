"""Gradescope packaging: ``make gradescope`` builds one autograder zip per assignment.

A course too large for one machine can grade on Gradescope's fleet: each
submission runs in its own container, where ``setup.sh`` has installed this
package (with the hidden checks) and ``run_autograder`` grades the submitted
notebook with ``python -m autograder grade`` and writes
``/autograder/results/results.json``. The student's code still runs in the
sandboxed worker (bubblewrap when the container allows it, otherwise resource
limits as an unprivileged user), so it cannot write the results file itself:
the grader writes it last, from values it checked in its own process.

    python -m autograder.gradescope build DEST [ASSIGNMENT...]
    python -m autograder.gradescope results REPORTS_DIR RESULTS_JSON
"""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from pathlib import Path

from autograder.registry import assignments as known_assignments
from autograder.report import atomic_write, read_report

PACKAGE_DIR = Path(__file__).resolve().parent
ROOT = PACKAGE_DIR.parent

SETUP_SH = r"""#!/usr/bin/env bash
# Runs once when Gradescope builds the autograder image (Ubuntu, as root).
set -euo pipefail
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv python3-pip bubblewrap util-linux
python3 -m venv /autograder/venv
# The CPU build of PyTorch: the checks need no GPU, and it is a tenth of the size.
/autograder/venv/bin/pip install -q --index-url https://download.pytorch.org/whl/cpu "torch>=2.1"
/autograder/venv/bin/pip install -q /autograder/source
"""

RUN_AUTOGRADER = r"""#!/usr/bin/env bash
# Gradescope calls this for every submission; it must always write results.json.
set -u
ROOT="${AUTOGRADER_ROOT:-/autograder}"
PY="${AUTOGRADER_PYTHON:-$ROOT/venv/bin/python}"
cd "$ROOT/source"   # the packaged checks (hidden ones included) come first on sys.path
ASSIGNMENT="$(cat ASSIGNMENT)"
OUT="$(mktemp -d)"
mkdir -p "$ROOT/results"
SANDBOX=""
"$PY" -c "import sys; from autograder.sandbox import bwrap_works; sys.exit(0 if bwrap_works() else 1)" \
  || SANDBOX="--unsafe-no-sandbox"   # containers that forbid user namespaces: limits only
"$PY" -m autograder grade "$ROOT/submission" --assignment "$ASSIGNMENT" --one-submission \
  --out "$OUT" --jobs 1 --quiet $SANDBOX
"$PY" -m autograder.gradescope results "$OUT" "$ROOT/results/results.json"
"""


def _copy_source(destination: Path) -> None:
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "gradescope_build")
    shutil.copytree(ROOT / "tinyllm", destination / "tinyllm", ignore=ignore)  # follows the corpus link
    shutil.copytree(PACKAGE_DIR, destination / "autograder", ignore=ignore)  # hidden checks included
    shutil.copy2(ROOT / "pyproject.toml", destination / "pyproject.toml")
    shutil.copy2(ROOT / "README.md", destination / "README.md")


def build(destination: Path, assignments: list[str] | None = None) -> list[Path]:
    """Write <destination>/<assignment>.zip for each assignment."""
    destination.mkdir(parents=True, exist_ok=True)
    staging = destination / "gradescope_build"
    shutil.rmtree(staging, ignore_errors=True)
    source = staging / "source"
    _copy_source(source)
    written = []
    for assignment in assignments or list(known_assignments()):
        if assignment not in known_assignments():
            raise ValueError(f"unknown assignment {assignment!r}")
        (source / "ASSIGNMENT").write_text(assignment + "\n")
        target = destination / f"{assignment}.zip"
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, text in (("setup.sh", SETUP_SH), ("run_autograder", RUN_AUTOGRADER)):
                info = zipfile.ZipInfo(name)
                info.external_attr = 0o755 << 16  # executable, as Gradescope requires
                archive.writestr(info, text)
            for path in sorted(source.rglob("*")):
                if path.is_file():
                    archive.write(path, f"source/{path.relative_to(source).as_posix()}")
        written.append(target)
    shutil.rmtree(staging, ignore_errors=True)
    return written


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


def results(reports_dir: Path, results_json: Path) -> int:
    reports = [r for r in (read_report(p) for p in sorted(reports_dir.glob("*.json"))) if r]
    if not reports:
        payload = {"score": 0.0, "output": "No notebook (.ipynb) was found in the submission. Upload your "
                   "exercise notebook.", "tests": []}
    else:
        # One report: the grader chose the notebook by the README's rule (--one-submission),
        # the same rule as for an nbgrader folder, and lists what it ignored.
        payload = to_gradescope(reports[0])
        for item in reports[0].get("extra_data", {}).get("ignored", []):
            payload["output"] += f"\nNot graded: {item['path']} ({item['reason']})."
    atomic_write(results_json, (json.dumps(payload, indent=2) + "\n").encode("utf-8"))
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "build":
        for path in build(Path(argv[1]), argv[2:] or None):
            print(path)
        return 0
    if len(argv) == 3 and argv[0] == "results":
        return results(Path(argv[1]), Path(argv[2]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
