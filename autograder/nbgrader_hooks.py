"""Making nbgrader's commands safe in this course directory (installed by ``nbgrader_config.py``).

Two things went wrong with plain nbgrader here:

* nbgrader creates its gradebook by starting the ``alembic`` command by name.
  Run as ``.venv/bin/nbgrader`` without activating the virtual environment,
  ``alembic`` is not on ``PATH``, and the command fails halfway.
* ``nbgrader generate_assignment NAME --force`` deletes the release folder
  first, and our release folder is ``exercises/``, committed to the repository:
  a failure after the deletion (the missing ``alembic``, a damaged source
  notebook) left the student notebook deleted.

:func:`install` puts the ``alembic`` that sits beside the Python running
nbgrader on ``PATH``; where there is none, a command that opens the gradebook
stops before it touches anything, with one line that says what to install. And
it wraps ``generate_assignment`` so that if it fails, every release notebook it
deleted or half-wrote is put back as it was.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

# nbgrader's subcommands that open the gradebook (and so start alembic when it does not exist yet)
GRADEBOOK_COMMANDS = {"generate_assignment", "assign", "autograde", "generate_feedback", "feedback", "export", "db",
                      "formgrader"}
MISSING_ALEMBIC = ("nbgrader_config.py: nbgrader needs the `alembic` command (to create its gradebook), and there is "
                   "none beside {python} or on PATH: install the grading tools into that Python "
                   "(`pip install -e \".[grade]\"`, or `make .venv/.grade-installed`) or activate the virtual "
                   "environment that has them. Nothing was changed.")


def ensure_alembic(argv: list[str] | None = None, environ: dict | None = None) -> None:
    """Put the alembic beside this Python on PATH; stop a gradebook command (SystemExit) if there is none."""
    environ = os.environ if environ is None else environ
    here = str(Path(sys.executable).parent)
    path = environ.get("PATH", "")
    if (Path(here) / "alembic").exists() and here not in path.split(os.pathsep):
        environ["PATH"] = os.pathsep.join([here, path]) if path else here
    argv = sys.argv if argv is None else argv
    command = next((a for a in argv[1:] if not a.startswith("-")), "")
    if command in GRADEBOOK_COMMANDS and shutil.which("alembic", path=environ.get("PATH")) is None:
        raise SystemExit(MISSING_ALEMBIC.format(python=sys.executable))


def protect_release(release_directory: str | Path) -> None:
    """If ``generate_assignment`` fails, restore the release folder as it was before it started."""
    try:
        from nbgrader.converters.generate_assignment import GenerateAssignment
    except ImportError:  # not the nbgrader we know: leave it alone
        return
    if getattr(GenerateAssignment.start, "_restores_release", False):
        return
    original = GenerateAssignment.start

    def start(self) -> None:
        root = Path(self.coursedir.root or ".").resolve()
        release = (root / release_directory).resolve()
        snapshot = Path(tempfile.mkdtemp(prefix="nbgrader-release-"))
        try:
            if release.is_dir():
                shutil.copytree(release, snapshot / "release", symlinks=True)
            try:
                original(self)
            except BaseException:
                if (snapshot / "release").is_dir():
                    _restore(snapshot / "release", release)
                    self.log.error("generate_assignment failed: the release folder %s was restored as it was "
                                   "before the command", release)
                raise
        finally:
            shutil.rmtree(snapshot, ignore_errors=True)

    start._restores_release = True
    GenerateAssignment.start = start


def _restore(saved: Path, release: Path) -> None:
    """Every file of ``saved`` back in ``release`` with its old bytes (files the command added are left)."""
    for source in saved.rglob("*"):
        target = release / source.relative_to(saved)
        if source.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif not target.is_file() or target.read_bytes() != source.read_bytes():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


def install(config) -> None:
    """Called from ``nbgrader_config.py`` with its ``c``."""
    ensure_alembic()
    protect_release(config.CourseDirectory.release_directory or "release")
