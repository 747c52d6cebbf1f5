"""Writing reports so that an interrupted run never leaves a half-written file."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, data: bytes, durable: bool = True) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename over ``path``.

    ``durable=False`` skips the two fsyncs: for files derived from the reports (feedback, pages,
    caches), which a rerun rewrites, where a thousand fsyncs would cost more than the grading.
    A reader still never sees a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide reports from the course's other staff
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    if not durable:
        return
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


class OutputCache:
    """What each derived file of an output folder was made from, so a run rewrites only what changed.

    ``fresh(path, key)`` is true when ``path`` exists and was last written from inputs whose
    digest is ``key``; ``record(path, key)`` notes a write. Kept in ``OUT/.cache/outputs.json``;
    a missing or damaged record only means files are written again.
    """

    def __init__(self, out: Path):
        self.out = Path(out)
        self.root = os.path.abspath(self.out)
        self.path = self.out / ".cache" / "outputs.json"
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        self.keys: dict[str, str] = data if isinstance(data, dict) else {}
        self.changed = False

    def _name(self, path: Path) -> str:
        path = os.path.abspath(path)  # no resolve(): a thousand files, no symlinks to follow
        return path[len(self.root) + 1:] if path.startswith(self.root + os.sep) else path

    def fresh(self, path: Path, key: str) -> bool:
        if self.keys.get(self._name(path)) != key:
            return False
        try:  # derived files are written without fsync: after a crash one may be empty
            return os.stat(path).st_size > 0
        except OSError:
            return False

    def record(self, path: Path, key: str) -> None:
        name = self._name(path)
        if self.keys.get(name) != key:
            self.keys[name] = key
            self.changed = True

    def forget(self, path: Path) -> None:
        if self.keys.pop(self._name(path), None) is not None:
            self.changed = True

    def save(self) -> None:
        if self.changed:
            atomic_write(self.path, json.dumps(self.keys, sort_keys=True).encode("utf-8"), durable=False)
            self.changed = False


def report_key(report: dict) -> str:
    """A digest of what a report says (its notebook's whereabouts aside).

    The writers of a run's derived files all key on it. A run computes it once per report and
    keeps it on its in-memory copy as ``__key`` (see ``grade.with_notebook``); a dict without one
    is digested here.
    """
    if "__key" in report:
        return report["__key"]
    extra = {k: v for k, v in (report.get("extra_data") or {}).items() if k != "notebook"}
    return digest({k: v for k, v in report.items() if k != "extra_data"}, extra)


def digest(*parts) -> str:
    """A short key for ``OutputCache``: the SHA-256 of the parts, JSON-encoded."""
    import hashlib

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:24]


def module_digest(*modules) -> str:
    """The bytes of the modules that write a file: editing one of them rewrites its files."""
    import hashlib

    h = hashlib.sha256()
    for module in modules:
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:16]
