"""Writing reports so that an interrupted run never leaves a half-written file."""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide reports from the course's other staff
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def file_sha256(path: Path) -> str | None:
    """What a report is keyed by: the submitted file's bytes (None when it cannot be read)."""
    import hashlib

    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def report_bytes(report: dict) -> bytes:
    return (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def write_report(path: Path, report: dict) -> None:
    atomic_write(path, report_bytes(report))


def read_report(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def class_csv(rows: list[tuple[str, str | None, str | None, dict]]) -> bytes:
    """One row per submission: who, which assignment, the total and each check's points."""
    check_names: list[str] = []
    for _, _, _, report in rows:
        for test in report.get("tests", []):
            if test["name"] not in check_names:
                check_names.append(test["name"])
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["submission", "student", "assignment", "score", "max_score", "notes"] + check_names)
    for submission, student, assignment, report in rows:
        scores = {t["name"]: t["score"] for t in report.get("tests", [])}
        statuses = sorted({t["status"] for t in report.get("tests", []) if t["status"] != "passed"})
        writer.writerow([submission, student or "", assignment or report.get("extra_data", {}).get("assignment") or "",
                         f"{report.get('score', 0):g}", f"{report.get('max_score', 0):g}", " ".join(statuses)]
                        + [f"{scores[name]:g}" if name in scores else "" for name in check_names])
    return out.getvalue().encode("utf-8")
