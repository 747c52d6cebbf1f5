"""Finding what to grade: notebooks, folders of notebooks, and nbgrader ``submitted/`` trees.

In an nbgrader tree (``<root>/<student>/<assignment>/...``) one student and one
assignment give exactly one graded submission, chosen by this rule:

1. the notebook named after the assignment (``04_attention.ipynb``);
2. otherwise the only notebook whose name starts with the assignment's name (a
   renamed copy such as ``04_attention-Copy1.ipynb``);
3. otherwise the only notebook in the folder, whatever its name.

Checkpoints (``.ipynb_checkpoints/``) and notebooks in subfolders are never
graded. Every notebook not chosen is listed in the report as ignored, with the
reason; a folder where the rule chooses nothing (several notebooks, none named
for the assignment) gets a report that says so and scores 0, so the student's
row is never silently missing. A folder inside a student's folder that is not
an assignment the grader knows (``04_attenton``) is reported with the closest
name, never graded as an unnamed submission.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

CHECKPOINTS = ".ipynb_checkpoints"


class UsageError(Exception):
    """Bad input from the command line: one line for the instructor, exit status 2."""


@dataclass(frozen=True)
class Submission:
    path: Path | None  # None: nothing gradable was chosen (see ``problem``)
    label: str  # unique within the run, e.g. "alice/03_softmax/03_softmax.ipynb"
    student: str | None = None
    assignment: str | None = None
    ignored: tuple[tuple[str, str], ...] = ()  # (path relative to the tree, why it was not graded)
    timestamp: str | None = None  # nbgrader's timestamp.txt, as written
    problem: str | None = None  # why no notebook could be chosen

    @property
    def report_name(self) -> str:
        # In a tree, one report per student and assignment, whatever the notebook is called,
        # so that a resubmission under another name replaces the old report.
        key = f"{self.student}/{self.assignment}" if self.student and self.assignment else \
            self.label.removesuffix(".ipynb")
        return re.sub(r"[^A-Za-z0-9_.-]+", "__", key) + ".json"


@dataclass
class Found:
    submissions: list[Submission] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # told to the instructor, and kept in no report
    roots: list[Path] = field(default_factory=list)  # folders that labels are relative to (trees, folders)

    def notebook_of(self, label: str) -> Path | None:
        """Where a report's notebook is now: this run's, or one graded earlier from the same folders."""
        for submission in self.submissions:
            if submission.label == label and submission.path is not None:
                return submission.path
        for root in self.roots:
            candidate = root / label
            if label.endswith(".ipynb") and candidate.is_file():
                return candidate
        return None


def _notebooks(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*.ipynb") if CHECKPOINTS not in p.relative_to(folder).parts)


def _student_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def is_tree_root(folder: Path, known: dict) -> bool:
    """An nbgrader submitted/ folder: some <student>/<assignment>/ inside it names a known assignment."""
    try:
        return any((student / name).is_dir() for student in _student_folders(folder) for name in known)
    except OSError:
        return False


def tree_root_of(path: Path, known: dict) -> Path | None:
    """The tree root above a student folder, an assignment folder or a notebook, if there is one.

    A path inside a tree is recognised by its shape (``<root>/<student>/<assignment>[/file]``
    with a known assignment) and by nbgrader's traces: the root is called ``submitted``
    or ``autograded``, or the assignment folder holds nbgrader's ``timestamp.txt``. The
    shape alone is not enough: the course's own ``solutions/03_softmax/`` has it too.
    """
    path = path.resolve()
    if path.is_file():
        shapes = [(path.parents[2], path.parent)] if len(path.parents) > 2 else []
    elif path.name in known:
        shapes = [(path.parents[1], path)] if len(path.parents) > 1 else []
    else:  # a student folder: any of its assignment folders will do
        shapes = [(path.parent, path / name) for name in known if (path / name).is_dir()]
    for root, assignment_folder in shapes:
        if assignment_folder.name not in known:
            continue
        if root.name in ("submitted", "autograded") or (assignment_folder / "timestamp.txt").is_file():
            return root
    return None


def choose_notebook(folder: Path, assignment: str) -> tuple[Path | None, list[tuple[Path, str]], str | None]:
    """(the notebook to grade, [(ignored notebook, why)], a problem when none can be chosen)."""
    everything = sorted(folder.rglob("*.ipynb"))
    ignored = [(p, "an editor's checkpoint, never graded") for p in everything if CHECKPOINTS in
               p.relative_to(folder).parts]
    top = [p for p in everything if p.parent == folder]
    ignored += [(p, "in a subfolder of the assignment folder") for p in everything
                if p.parent != folder and CHECKPOINTS not in p.relative_to(folder).parts]
    named = folder / f"{assignment}.ipynb"
    prefixed = [p for p in top if p.stem.startswith(assignment)]
    if named in top:
        chosen, reason = named, f"not the assignment's notebook ({named.name} is graded)"
    elif len(prefixed) == 1:
        chosen, reason = prefixed[0], f"{prefixed[0].name} is graded (the only copy of {named.name})"
    elif len(top) == 1:
        chosen, reason = top[0], ""
    else:
        chosen = None
        reason = (f"{len(top)} notebooks and none named {named.name}: rename the one to grade" if top
                  else f"no notebook ({named.name} was expected)")
        return None, ignored + [(p, "ambiguous: " + reason) for p in top], reason
    ignored += [(p, reason) for p in top if p != chosen]
    return chosen, sorted(ignored), None


def read_timestamp(folder: Path) -> str | None:
    """nbgrader's timestamp.txt beside the submission (written by ``nbgrader submit``/``collect``)."""
    try:
        text = (folder / "timestamp.txt").read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


def _tree_submissions(root: Path, known: dict, students: list[Path], only_assignment: str | None,
                      found: Found) -> None:
    for student_folder in students:
        folders = sorted(p for p in student_folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        for folder in folders:
            student, name = student_folder.name, folder.name
            if name not in known:
                close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
                hint = f" (did you mean {close[0]}?)" if close else ""
                count = len(_notebooks(folder))
                found.warnings.append(f"{student}/{name}/ is not an assignment this grader knows{hint}: its "
                                      f"{count} notebook(s) were not graded")
                continue
            if only_assignment and name != only_assignment:
                continue
            chosen, ignored, problem = choose_notebook(folder, name)
            label = f"{student}/{name}/{chosen.name if chosen else ''}"
            found.submissions.append(Submission(
                chosen, label, student, name,
                tuple((p.relative_to(root).as_posix(), why) for p, why in ignored),
                read_timestamp(folder), problem))
        stray = [p for p in student_folder.glob("*.ipynb")]
        for path in stray:
            found.warnings.append(f"{path.relative_to(root).as_posix()} is not inside an assignment folder: "
                                  "not graded")


def find_submissions(paths: list[str], known: dict, assignment: str | None = None,
                     student: str | None = None, one_submission: bool = False) -> Found:
    """Expand files, folders and nbgrader trees; UsageError for bad input.

    ``one_submission``: each folder is one student's upload (Gradescope's
    submission/ folder), and the rule above picks its notebook.
    """
    found = Found()
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise UsageError(f"no such file or folder: {raw}")
        if one_submission and path.is_dir():
            if assignment is None:
                raise UsageError("--one-submission needs --assignment")
            chosen, ignored, problem = choose_notebook(path, assignment)
            found.submissions.append(Submission(
                chosen, chosen.name if chosen else f"{assignment}.ipynb", None, assignment,
                tuple((p.relative_to(path).as_posix(), why) for p, why in ignored), None, problem))
            continue
        root = path if path.is_dir() and is_tree_root(path, known) else tree_root_of(path, known)
        if root is not None:
            students = _student_folders(root)
            only_assignment = assignment
            if path.resolve() != root.resolve():
                relative = path.resolve().relative_to(root.resolve()).parts
                students = [root / relative[0]]
                if len(relative) > 1:
                    only_assignment = relative[1]
            if student is not None:
                students = [select_student(root, student, known)]
            _tree_submissions(root, known, students, only_assignment, found)
            found.roots.append(root)
            continue
        if student is not None:
            raise UsageError(f"--student needs an nbgrader submitted/ folder (<student>/<assignment>/), and "
                             f"{raw} is not one")
        if path.is_file():
            found.submissions.append(Submission(path, path.name, None, assignment))
            continue
        found.roots.append(path)
        for notebook in _notebooks(path):
            found.submissions.append(Submission(notebook, notebook.relative_to(path).as_posix(), None, assignment))
    labels = [s.label for s in found.submissions]
    if len(set(labels)) != len(labels):  # two folders with the same relative names: prefix with the argument
        found.submissions = [Submission(s.path, s.path.as_posix() if s.path else s.label, s.student, s.assignment,
                                        s.ignored, s.timestamp, s.problem) for s in found.submissions]
    return found


def select_student(root: Path, name: str, known: dict) -> Path:
    """The student folder --student names: a name, or a path inside the tree."""
    candidate = Path(name)
    if len(candidate.parts) > 1 or candidate.is_absolute():
        try:
            relative = candidate.resolve().relative_to(root.resolve()).parts
        except ValueError:
            raise UsageError(f"--student {name}: the path is outside the submissions folder {root}") from None
        if not relative:
            raise UsageError(f"--student {name}: that is the whole submissions folder, not a student")
        name = relative[0]
    folder = root / name
    if name.startswith(".") or not folder.is_dir():
        students = [p.name for p in _student_folders(root)]
        close = difflib.get_close_matches(name, students, n=1)
        hint = f" (did you mean {close[0]}?)" if close else f" ({len(students)} students there)"
        raise UsageError(f"--student {name}: no such student in {root}{hint}")
    return folder


# ---------------------------------------------------------------- lateness

def parse_time(text: str, what: str) -> datetime:
    """A time as naive UTC (nbgrader's convention): ISO 8601, or nbgrader's 'YYYY-MM-DD HH:MM:SS.f TZ'.

    The same reading as ``nbgrader.utils.parse_utc``, without importing nbgrader (a second
    per run); a test compares the two.
    """
    import dateutil.parser
    import dateutil.tz

    try:
        parts = text.strip().split(" ")
        if len(parts) == 3:  # nbgrader's timestamp.txt: date, time, zone name or numeric offset
            zone = parts[2]
            tz = dateutil.tz.tzoffset(None, _offset_seconds(zone)) if re.fullmatch(r"[+-]\d{4}", zone) \
                else dateutil.tz.gettz(zone)
            stamp = dateutil.parser.parse(" ".join(parts[:2] + ["TZ"]), tzinfos={"TZ": tz})
        else:
            stamp = dateutil.parser.parse(text)
    except (ValueError, OverflowError, TypeError):
        raise UsageError(f"{what} {text!r} is not a date and time: use ISO 8601, e.g. 2026-11-01T23:59:00+00:00 "
                         "(no time zone means UTC)") from None
    if stamp.tzinfo is not None:
        stamp = (stamp - stamp.utcoffset()).replace(tzinfo=None)
    return stamp


def _offset_seconds(zone: str) -> int:
    sign = -1 if zone[0] == "-" else 1
    return sign * (int(zone[1:3]) * 3600 + int(zone[3:5]) * 60)


@dataclass(frozen=True)
class LatePolicy:
    """What lateness costs: nothing (default), everything, or a percentage of the points per day or part."""

    kind: str = "none"  # none | zero | percent
    percent_per_day: float = 0.0

    @classmethod
    def parse(cls, text: str) -> "LatePolicy":
        text = text.strip().lower()
        if text in ("none", "zero"):
            return cls(text)
        match = re.fullmatch(r"(\d+(?:\.\d+)?)%/day", text)
        if not match or not 0 < float(match.group(1)) <= 100:
            raise UsageError(f"--late-penalty {text!r}: use none, zero, or a percentage per day such as 10%/day")
        return cls("percent", float(match.group(1)))

    def penalty(self, score: float, max_score: float, seconds_late: float) -> float:
        """Points taken off a score (never below zero)."""
        if seconds_late <= 0 or self.kind == "none":
            return 0.0
        if self.kind == "zero":
            return score
        days = -(-seconds_late // 86400)  # a day or part of one
        return min(score, round(max_score * self.percent_per_day / 100 * days, 6))

    def describe(self) -> str:
        return {"none": "no penalty", "zero": "late work scores 0"}.get(
            self.kind, f"{self.percent_per_day:g}% of the points per day or part of a day late")
