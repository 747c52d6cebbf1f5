"""A real nbgrader course directory, built in a temporary folder, for tests."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Course:
    def __init__(self, folder: Path, cell_timeout: int = 120):
        # nbgrader starts `alembic` by name: the venv's bin must come first on PATH.
        os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        from nbgrader.apps import NbGraderAPI
        from traitlets.config import Config

        self.folder = folder
        shutil.copytree(ROOT / "solutions", folder / "solutions")
        config = Config()
        config.CourseDirectory.root = str(folder)
        config.CourseDirectory.course_id = "llm-foundations"
        config.CourseDirectory.source_directory = "solutions"
        config.CourseDirectory.release_directory = "release"
        config.CourseDirectory.db_url = f"sqlite:///{folder / 'gradebook.db'}"
        config.ExecutePreprocessor.timeout = cell_timeout
        self.db_url = config.CourseDirectory.db_url
        self.api = NbGraderAPI(config=config)

    def release(self, assignment: str) -> Path:
        result = self.api.generate_assignment(assignment, force=True)
        assert result["success"], result["log"]
        return self.folder / "release" / assignment / f"{assignment}.ipynb"

    def submit(self, student: str, assignment: str, notebook: Path | dict) -> Path:
        target = self.folder / "submitted" / student / assignment / f"{assignment}.ipynb"
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(notebook, dict):
            target.write_text(json.dumps(notebook), encoding="utf-8")
        else:
            shutil.copyfile(notebook, target)
        (target.parent / "timestamp.txt").write_text("2026-11-01 12:00:00.000000 UTC")
        return target

    def autograde(self, assignment: str, student: str) -> dict[str, float]:
        """nbgrader autograde; returns grade_id -> score for the student's notebook."""
        from nbgrader.api import Gradebook

        with Gradebook(self.db_url) as gradebook:
            if student not in {s.id for s in gradebook.students}:
                gradebook.add_student(student)
        result = self.api.autograde(assignment, student, force=True, create=True)
        assert result["success"], result["log"]
        return self.scores(assignment, student)

    def scores(self, assignment: str, student: str) -> dict[str, float]:
        from nbgrader.api import Gradebook

        with Gradebook(self.db_url) as gradebook:
            notebook = gradebook.find_submission_notebook(assignment, assignment, student)
            return {grade.name: grade.score for grade in notebook.grades}
