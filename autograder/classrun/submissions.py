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
name. When the student has no folder by that closest name, the misspelt one
is graded as that assignment, with a note in the report and a warning (the
student keeps their row); otherwise it is not graded, and the warning says so.

**Canvas downloads.** A folder of notebooks named as Canvas's "Download
Submissions" names them (``<name>[_late]_<canvas user id>_<file id>_<file>``,
e.g. ``smithalice_12345_678901_07_modern_block.ipynb``) is read as one
submission per Canvas user: the student is the name part (the user id where
Canvas left the name out, under anonymous grading, or where two students share
a name), the same rule picks the notebook among a student's files, and the
report carries the Canvas user id (for the Canvas gradebook export) and
Canvas's own "late" mark.
"""

from __future__ import annotations

import dataclasses
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
    note: str | None = None  # said in the report (e.g. a misspelt folder graded under its assignment's name)
    canvas_user_id: str | None = None  # a Canvas download's user id
    marked_late: bool = False  # Canvas's download named the file as late

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
    chosen, more, problem = choose_among([(p, p.name) for p in top], assignment)
    return chosen, sorted(ignored + more), problem


def choose_among(candidates: list[tuple[Path, str]], assignment: str
                 ) -> tuple[Path | None, list[tuple[Path, str]], str | None]:
    """The rule above, over (path, the name the student gave the file) pairs at one level."""
    expected = f"{assignment}.ipynb"
    named = [p for p, name in candidates if name == expected]
    prefixed = [(p, name) for p, name in candidates if Path(name).stem.startswith(assignment)]
    if named:
        chosen, reason = named[0], f"not the assignment's notebook ({expected} is graded)"
    elif len(prefixed) == 1:
        chosen, reason = prefixed[0][0], f"{prefixed[0][1]} is graded (the only copy of {expected})"
    elif len(candidates) == 1:
        chosen, reason = candidates[0][0], ""
    else:
        reason = (f"{len(candidates)} notebooks and none named {expected}: rename the one to grade" if candidates
                  else f"no notebook ({expected} was expected)")
        return None, [(p, "ambiguous: " + reason) for p, _ in candidates], reason
    return chosen, [(p, reason) for p, _ in candidates if p != chosen], None


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
        names = {folder.name for folder in folders}
        for folder in folders:
            student, name = student_folder.name, folder.name
            note = None
            if name not in known:
                close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
                count = len(_notebooks(folder))
                if close and close[0] not in names and count:
                    if only_assignment and close[0] != only_assignment:
                        continue
                    found.warnings.append(f"{student}/{name}/ is not an assignment this grader knows: graded as "
                                          f"{close[0]} (the closest name), and its report says so")
                    note = (f"Note: your folder is named {name}, not {close[0]}; it was graded as {close[0]}. "
                            "Name it exactly so next time.")
                    name = close[0]
                else:
                    hint = f" (did you mean {close[0]}? {student} has a {close[0]}/ folder too)" if close else ""
                    found.warnings.append(f"{student}/{name}/ is not an assignment this grader knows{hint}: its "
                                          f"{count} notebook(s) were not graded")
                    continue
            if only_assignment and name != only_assignment:
                continue
            chosen, ignored, problem = choose_notebook(folder, name)
            label = f"{student}/{folder.name}/{chosen.name if chosen else ''}"
            found.submissions.append(Submission(
                chosen, label, student, name,
                tuple((p.relative_to(root).as_posix(), why) for p, why in ignored),
                read_timestamp(folder), problem, note))
        stray = [p for p in student_folder.glob("*.ipynb")]
        for path in stray:
            found.warnings.append(f"{path.relative_to(root).as_posix()} is not inside an assignment folder: "
                                  "not graded")


# Canvas's "Download Submissions": <sortable name, only word characters, lower case>[_late]_<user id>_<file id>_<the
# file's name>; the name is left out under anonymous grading.
CANVAS_FILE = re.compile(r"^(?:(?P<name>.+?)_)??(?P<late>late_)?(?P<uid>\d+)_(?P<fid>\d+)_(?P<file>.+\.ipynb)$")


def is_canvas_download(folder: Path) -> bool:
    notebooks = [p for p in folder.glob("*.ipynb")]
    return bool(notebooks) and all(CANVAS_FILE.match(p.name) for p in notebooks)


def _canvas_submissions(folder: Path, known: dict, assignment: str | None, found: Found) -> None:
    """One submission per Canvas user in a flat download folder."""
    by_user: dict[str, list[tuple[Path, re.Match]]] = {}
    for path in sorted(folder.glob("*.ipynb")):
        match = CANVAS_FILE.match(path.name)
        by_user.setdefault(match.group("uid"), []).append((path, match))
    if assignment is None:
        guesses = {a for files in by_user.values() for _, m in files for a in known if m.group("file").startswith(a)}
        if len(guesses) != 1:
            raise UsageError(f"{folder} is a Canvas download: say which assignment it holds with --assignment "
                             f"({', '.join(sorted(guesses)) or 'its file names do not say'})")
        assignment = guesses.pop()
    slugs: dict[str, set[str]] = {}
    for uid, files in by_user.items():
        slugs.setdefault(files[0][1].group("name") or uid, set()).add(uid)
    for uid, files in sorted(by_user.items()):
        slug = files[0][1].group("name") or uid
        student = slug if len(slugs[slug]) == 1 else f"{slug}-{uid}"
        chosen, ignored, problem = choose_among([(p, m.group("file")) for p, m in files], assignment)
        late = any(m.group("late") for p, m in files if p == chosen)
        label = chosen.name if chosen else f"{student}/{assignment}.ipynb"
        found.submissions.append(Submission(
            chosen, label, student, assignment, tuple((p.name, why) for p, why in ignored), None, problem,
            canvas_user_id=uid, marked_late=late))
    found.roots.append(folder)


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
        if path.is_dir() and is_canvas_download(path):
            everyone = Found()
            _canvas_submissions(path, known, assignment, everyone)
            if student is not None:
                chosen = [s for s in everyone.submissions if student in (s.student, s.canvas_user_id)]
                if not chosen:
                    close = difflib.get_close_matches(student, [s.student for s in everyone.submissions], n=1)
                    hint = f" (did you mean {close[0]}?)" if close else ""
                    raise UsageError(f"--student {student}: no such student in the Canvas download {raw}{hint}")
                everyone.submissions = chosen
            found.submissions += everyone.submissions
            found.roots += everyone.roots
            continue
        if student is not None:
            raise UsageError(f"--student needs an nbgrader submitted/ folder (<student>/<assignment>/) or a Canvas "
                             f"download, and {raw} is neither")
        if path.is_file():
            found.submissions.append(Submission(path, path.name, None, assignment))
            continue
        found.roots.append(path)
        for notebook in _notebooks(path):
            found.submissions.append(Submission(notebook, notebook.relative_to(path).as_posix(), None, assignment))
    labels = [s.label for s in found.submissions]
    if len(set(labels)) != len(labels):  # two folders with the same relative names: prefix with the argument
        found.submissions = [dataclasses.replace(s, label=s.path.as_posix() if s.path else s.label)
                             for s in found.submissions]
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
