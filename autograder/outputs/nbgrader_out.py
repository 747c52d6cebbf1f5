"""Each student's notebook as graded, in nbgrader's ``autograded/`` layout.

``write_autograded(folder, reports)`` writes
``<folder>/<student>/<assignment>/<assignment>.ipynb`` for every report of a
student (an nbgrader tree or a Canvas download), so that nbgrader's own tools
work on our grading:

* ``nbgrader generate_feedback NAME`` reads these notebooks and the scores the
  grader wrote into the gradebook (``--gradebook``), and writes each student's
  feedback page; ``nbgrader release_feedback NAME`` hands them out through the
  exchange (it needs the ``timestamp.txt`` and ``submission_secret.txt`` that
  ``nbgrader collect`` put beside each submission: they are copied here);
* the formgrader opens them for manual review and comments.

What a notebook holds: the student's cells in their order (outputs cleared:
the grader does not run notebooks top to bottom), with nbgrader's metadata
kept only where it is the release's (the first cell of each ``grade_id`` the
released notebook has; a duplicated or invented id would break nbgrader's
lookups). Test cells show the released source, never a student's edit of it
and never the hidden tests' code, and as their output the result of the check
with that id: its status, points, message and book link, with hidden checks'
data left out (``hide_hidden``). A test cell the student deleted is added at
the end, so every check appears. The notebook is named after the assignment,
as nbgrader expects, whatever the student called the file.
"""

from __future__ import annotations

import copy
import json
import shutil
import sys
from pathlib import Path

from autograder.outputs.feedback import STATUS_TEXT, parse_test, points, safe_name
from autograder.grading.report import atomic_write, digest, module_digest, report_key

ROOT = Path(__file__).resolve().parents[2]
COPIED = ("timestamp.txt", "submission_secret.txt")  # what release_feedback reads beside the notebook


def _release(assignment: str) -> dict | None:
    try:
        return json.loads((ROOT / "exercises" / assignment / f"{assignment}.ipynb").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _nbgrader(cell: dict) -> dict:
    meta = cell.get("metadata") if isinstance(cell.get("metadata"), dict) else {}
    return meta.get("nbgrader") if isinstance(meta.get("nbgrader"), dict) else {}


def _result_output(test: dict | None, hide_hidden: bool) -> list[dict]:
    if test is None:
        return [{"output_type": "stream", "name": "stdout", "text": "This check did not run.\n"}]
    result = parse_test(test, hide_hidden)
    lines = [f"{result.title}", f"{STATUS_TEXT.get(result.status, result.status)}: "
             f"{points(result.score)} / {points(result.max_score)} points"]
    if result.status != "passed":
        if result.message:
            lines += ["", result.message]
        if result.book_url:
            lines += ["", f"Read: {result.book_url}"]
    return [{"output_type": "stream", "name": "stdout" if result.status == "passed" else "stderr",
             "text": "\n".join(lines) + "\n"}]


def autograded_notebook(student: dict | None, release: dict, report: dict, hide_hidden: bool = True) -> dict:
    """The notebook nbgrader's feedback and formgrader read for one graded submission."""
    released = {m["grade_id"]: c for c in release.get("cells", []) if (m := _nbgrader(c)).get("grade_id")}
    tests = {t.get("name"): t for t in report.get("tests") or [] if isinstance(t, dict)}
    cells, seen = [], set()
    for cell in (student or {}).get("cells") or []:
        if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw"):
            continue
        grade_id = _nbgrader(cell).get("grade_id")
        if grade_id in released and grade_id not in seen:
            seen.add(grade_id)
            reference = released[grade_id]
            meta = _nbgrader(reference)
            if meta.get("solution"):  # the student's answer, under the release's metadata
                new = copy.deepcopy(reference)
                new["source"] = cell.get("source", "")
            else:  # locked: the release's text (test cells: never the hidden tests' code)
                new = copy.deepcopy(reference)
        else:
            new = {k: copy.deepcopy(v) for k, v in cell.items() if k in ("cell_type", "source", "id")}
            new["metadata"] = {}
        cells.append(new)
    for grade_id, reference in released.items():  # test cells the student deleted: every check appears
        if grade_id not in seen and _nbgrader(reference).get("grade"):
            cells.append(copy.deepcopy(reference))
            seen.add(grade_id)
    for index, cell in enumerate(cells):
        cell.setdefault("id", f"autograded-{index}")
        if cell["cell_type"] != "code":
            cell.pop("outputs", None)
            cell.pop("execution_count", None)
            continue
        cell["execution_count"] = None
        grade_id = _nbgrader(cell).get("grade_id")
        cell["outputs"] = _result_output(tests.get(grade_id), hide_hidden) if _nbgrader(cell).get("grade") else []
    ids = set()
    for index, cell in enumerate(cells):  # nbformat: cell ids unique within the notebook
        if cell["id"] in ids:
            cell["id"] = f"{cell['id']}-{index}"
        ids.add(cell["id"])
    return {"cells": cells, "metadata": copy.deepcopy(release.get("metadata", {})), "nbformat": 4,
            "nbformat_minor": max(5, int(release.get("nbformat_minor", 5)))}


def _read(path: str | None) -> dict | None:
    if not path:
        return None
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_autograded(folder: Path, reports: list[dict], hide_hidden: bool = True, cache=None) -> list[Path]:
    """``<folder>/<student>/<assignment>/<assignment>.ipynb`` for each student's report; the paths.

    Each report's notebook is ``extra_data.notebook`` (where the run found it). With
    ``cache`` a notebook whose report and source have not changed is not written again.
    """
    folder = Path(folder)
    version = module_digest(sys.modules[__name__], sys.modules["autograder.outputs.feedback"])
    releases: dict[str, dict | None] = {}
    written = []
    for report in reports:
        extra = report.get("extra_data") or {}
        student, assignment = extra.get("student"), extra.get("assignment")
        if not student or not assignment:
            continue
        if assignment not in releases:
            releases[assignment] = _release(assignment)
        release = releases[assignment]
        if release is None:
            continue
        target = folder / safe_name(student, "student") / safe_name(assignment, "assignment") / f"{assignment}.ipynb"
        source = extra.get("notebook")
        key = digest(version, hide_hidden, report_key(report), [Path(source).with_name(n).stat().st_mtime_ns if source and Path(source).with_name(n).exists()
                      else None for n in COPIED])
        if cache is None or not cache.fresh(target, key):
            notebook = autograded_notebook(_read(source), release, report, hide_hidden)
            atomic_write(target, (json.dumps(notebook, indent=1, ensure_ascii=False) + "\n").encode("utf-8"),
                         durable=False)
            for name in COPIED:
                beside = Path(source).with_name(name) if source else None
                if beside is not None and beside.is_file():
                    shutil.copyfile(beside, target.with_name(name))
            if cache is not None:
                cache.record(target, key)
        written.append(target)
    return written
