"""Feedback a student can read: one HTML and one Markdown file per student and assignment.

``write_feedback(folder, reports)`` turns graded reports (the Gradescope-shaped
JSON that ``python -m autograder grade`` writes) into
``<folder>/<student or submission name>/<assignment>.html`` and ``.md``: the
total (and any late penalty), then each check's title, points and status, the
teaching message and the book section it points to.

What a student must never see, and the rule that keeps it out
(:func:`sanitize`, applied to every message before it is shown):

* **Frames outside the student's own cells.** A traceback frame is a line
  ``File "...", line N, in name`` with the source and ``^^^`` lines indented
  under it. A frame whose file is not one of the student's cells (``<cell N>``)
  is removed, with everything indented under it: grader code, hidden-check code
  and library code (``autograder/``, ``site-packages/``) never appear. One line
  says that frames were hidden.
* **Paths of the grading machine.** Every absolute path is cut to its last
  component (``/home/ta/course/autograder/run.py`` becomes ``…/run.py``), and a
  path inside a temporary folder (``/tmp``, ``/var/tmp``, ``/var/folders``,
  ``/private/var``, ``/dev/shm``, ``$TMPDIR``) becomes ``<temporary path>``
  entirely. Web addresses are left alone.
* **Hidden-check code.** Reports never carry a check's source, only its title
  and message; the frame rule above removes any that a crash would drag in.
* **Hidden checks' data** (with ``hide_hidden``, the default; the grader's
  ``--hide-hidden-inputs``). A hidden check that found a wrong value says so in
  words, without the inputs, expected values or values returned; one whose call
  raised keeps the student's own frames and the exception's type, not its
  message (which can quote the inputs). Messages that carry no data (not
  defined, wrong signature, a forbidden built-in, out of time or memory) stay.
  The instructor's JSON reports keep everything.

Every piece of text (titles, messages, names) is escaped, for HTML or
Markdown, since a student controls the messages of their own exceptions. The
page is static: inline CSS, no JavaScript, a light and a dark palette chosen by
the reader's system, a table with header cells, and text for every status so
nothing depends on colour.
"""

from __future__ import annotations

import html
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from autograder.grading.registry import BOOK_URL
from autograder.grading.report import atomic_write

MAX_MESSAGE_CHARS = 4000  # a student's exception can be megabytes; the start says what went wrong

# What each status means, in words, for a student.
STATUS_TEXT = {
    "passed": "passed",
    "failed": "wrong result",
    "missing": "not defined",
    "signature": "wrong signature",
    "forbidden": "uses a forbidden built-in",
    "not_implemented": "not implemented yet",
    "exception": "raised an exception",
    "timeout": "ran out of time",
    "memory": "ran out of memory",
    "crashed": "crashed the grader's worker",
    "invalid_notebook": "notebook could not be read",
}

# ---------------------------------------------------------------------------------------------
# Sanitising messages

_FRAME = re.compile(r'^(?P<indent>\s*)File "(?P<file>[^"]*)", line \d+')
_STUDENT_FILE = re.compile(r"<cell \d+>")
_TEMP_ROOTS = ("/tmp", "/var/tmp", "/var/folders", "/private/var", "/private/tmp", "/dev/shm")
# An absolute POSIX path: two or more components, at the start of the text or after a space, a
# quote, a bracket, "=" or ","; so URLs ("https://..."), relative paths and "</tag>" are left alone.
_COMPONENT = r"[^\s/'\"`<>()\[\]{},;:|]+"
_POSIX_PATH = re.compile(rf"(?<![^\s'\"`(\[=,])(?:/{_COMPONENT}){{2,}}/?")
_WINDOWS_PATH = re.compile(r"\b[A-Za-z]:\\(?:[^\s\\'\"`<>()|]+\\?)+")
FRAMES_HIDDEN = "[frames inside the grader or libraries are not shown]"
TEMP_PATH = "<temporary path>"


def _temp_roots() -> tuple[str, ...]:
    roots = list(_TEMP_ROOTS)
    for root in {os.environ.get("TMPDIR"), tempfile.gettempdir()}:
        if root and root.startswith("/") and root.rstrip("/") not in ("", "/"):
            roots.append(root.rstrip("/"))
    return tuple(roots)


def _shorten_path(match: re.Match) -> str:
    path = match.group(0)
    if path.startswith("/"):
        if any(path == root or path.startswith(root + "/") for root in _temp_roots()):
            return TEMP_PATH
        name = PurePosixPath(path).name
    else:
        if "\\temp\\" in path.lower() or "\\tmp\\" in path.lower():
            return TEMP_PATH
        name = path.rstrip("\\").rsplit("\\", 1)[-1]
    return f"…/{name}" if name else "…"


def _drop_foreign_frames(lines: list[str]) -> list[str]:
    out: list[str] = []
    hiding: int | None = None  # indentation of the frame being hidden
    for line in lines:
        if hiding is not None:
            indent = len(line) - len(line.lstrip())
            if line.strip() and indent > hiding:
                continue  # the hidden frame's source and caret lines
            hiding = None
        frame = _FRAME.match(line)
        if frame and not _STUDENT_FILE.fullmatch(frame.group("file")):
            hiding = len(frame.group("indent"))
            if not out or out[-1].strip() != FRAMES_HIDDEN:
                out.append(frame.group("indent") + FRAMES_HIDDEN)
            continue
        out.append(line)
    return out


def sanitize(text: str) -> str:
    """The message a student may see: foreign traceback frames removed, machine paths cut.

    See the module docstring for the rule. Idempotent; the result is plain text (escape it).
    """
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[:MAX_MESSAGE_CHARS] + "\n… (message cut)"
    lines = _drop_foreign_frames(text.splitlines())
    text = "\n".join(lines)
    text = _POSIX_PATH.sub(_shorten_path, text)
    return _WINDOWS_PATH.sub(_shorten_path, text)


# ---------------------------------------------------------------------------------------------
# Reading a report


@dataclass
class CheckResult:
    name: str
    title: str
    score: float
    max_score: float
    status: str
    message: str  # sanitised, without the title and the book line
    book_url: str | None  # only a link to our book, never one a message could plant
    hidden: bool


_SEE = re.compile(r"^See: ([\w./#%:?=&+~-]+)\s*$")


HIDDEN_FAILED = ("This is a hidden check: its inputs and expected values are not shown. Your code gave a wrong "
                 "result on them; the public check of the same function shows a worked case, and the book section "
                 "below explains what is expected.")
_EXCEPTION_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*(?:Error|Exception|Warning|Interrupt|Exit))(?::.*)?$")


def hide_data(message: str, status: str) -> str:
    """A hidden check's message without the data it was run on (see the module docstring)."""
    if status == "failed":
        return HIDDEN_FAILED
    if status != "exception":
        return message
    lines = message.splitlines()
    kept, in_frame = [], False
    for line in lines:
        frame = _FRAME.match(line)
        if frame:
            in_frame = True
            kept.append(line)
            continue
        if in_frame and line.startswith((" ", "\t")):
            kept.append(line)
            continue
        in_frame = False
        found = _EXCEPTION_LINE.match(line.strip())
        if found:
            kept.append(f"{found.group('type')} (its message is not shown for a hidden check)")
        elif line.strip() == FRAMES_HIDDEN or line.startswith("Traceback"):
            kept.append(line)
    first = lines[0] if lines and not _FRAME.match(lines[0]) and not _EXCEPTION_LINE.match(lines[0].strip()) \
        and not lines[0].startswith("Traceback") else ""
    if first and not re.search(r"\d", first):
        kept.insert(0, first)  # "`softmax` raised an exception:", never a line with numbers in it
    return "\n".join(kept) or "Your code raised an exception on the hidden check's inputs (not shown)."


def parse_test(test: dict, hide_hidden: bool = True) -> CheckResult:
    """Split a check's output into its title line, its message and its book link."""
    output = str(test.get("output") or "")
    lines = output.splitlines()
    title = lines[0].strip() if lines else ""
    body = lines[1:]
    url = None
    while body and not body[-1].strip():
        body.pop()
    if body:
        see = _SEE.match(body[-1].strip())
        if see and see.group(1).startswith(BOOK_URL):
            url = see.group(1)
            body.pop()
    name = str(test.get("name") or "check")
    status = str(test.get("status") or ("passed" if test.get("score") == test.get("max_score") else "failed"))
    hidden = test.get("visibility") not in (None, "visible")
    message = sanitize("\n".join(body).strip("\n"))
    if hidden and hide_hidden and status != "passed":
        message = hide_data(message, status)
    return CheckResult(
        name=name,
        title=sanitize(title) or name,
        score=float(test.get("score") or 0.0),
        max_score=float(test.get("max_score") or 0.0),
        status=status,
        message=message,
        book_url=url,
        hidden=hidden,
    )


def report_notes(report: dict) -> list[str]:
    """The report's own lines after its "N / M points" headline (e.g. a cell that raised)."""
    lines = str(report.get("output") or "").splitlines()[1:]
    return [sanitize(line) for line in lines if line.strip()]


def submission_label(report: dict) -> str:
    """The submission as the instructor named it: relative paths kept, absolute ones cut to the file name."""
    submission = str((report.get("extra_data") or {}).get("submission") or "submission")
    return PurePosixPath(submission).name if submission.startswith("/") else sanitize(submission)


def points(value: float) -> str:
    return f"{value:g}"


def describe_late(late: dict) -> str:
    due = f"due {late.get('due', '?')}" + (" (your extension)" if late.get("extension") else "")
    if late.get("timestamp") is None:
        return ("Canvas marked this submission late; its download does not say when it was submitted, so any "
                "late penalty is applied in Canvas.")
    seconds = int(late.get("seconds_late") or 0)
    if not late.get("late", seconds > 0):
        return f"Submitted {late.get('timestamp')}, {due}: on time."
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = [f"{days} d"] * bool(days) + [f"{hours} h"] * bool(hours) + [f"{minutes} min"] * bool(minutes or not (days or hours))
    text = f"Submitted {late.get('timestamp', '?')}, {due}: {' '.join(parts)} late."
    penalty = float(late.get("penalty") or 0.0)
    text += f" Late penalty: {points(penalty)} point{'' if penalty == 1 else 's'} taken off the total." if penalty \
        else " No late penalty."
    return text


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(text: str | None, fallback: str) -> str:
    """A file or folder name made from student-controlled text: no separators, no leading dot."""
    name = _SAFE.sub("_", text or "").strip("._")
    return name[:100] or fallback


# ---------------------------------------------------------------------------------------------
# Page shell shared with the class summary

CSS = """
:root { color-scheme: light dark; --fg: #1b1b1b; --bg: #ffffff; --muted: #4a4a4a; --border: #8a8a8a;
  --pass: #0b6623; --fail: #a1120f; --link: #0645ad; --code-bg: #f3f3f3; --row: #f7f7f7; }
@media (prefers-color-scheme: dark) {
  :root { --fg: #ececec; --bg: #161616; --muted: #c4c4c4; --border: #7a7a7a;
    --pass: #8fe0a6; --fail: #ffa8a3; --link: #9cc4ff; --code-bg: #242424; --row: #1f1f1f; }
}
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); background: var(--bg);
  margin: 0; }
main { max-width: 60rem; margin: 0 auto; padding: 1rem 1.25rem 3rem; }
a { color: var(--link); }
a:focus-visible { outline: 3px solid var(--link); outline-offset: 2px; }
table { border-collapse: collapse; width: 100%; margin: 1rem 0; }
caption { text-align: left; font-weight: 600; padding-bottom: .25rem; }
th, td { border: 1px solid var(--border); padding: .35rem .5rem; text-align: left; vertical-align: top; }
thead th { background: var(--row); }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
.passed { color: var(--pass); font-weight: 600; }
.notpassed { color: var(--fail); font-weight: 600; }
pre { background: var(--code-bg); color: var(--fg); padding: .75rem; overflow-x: auto; white-space: pre-wrap;
  word-break: break-word; border: 1px solid var(--border); border-radius: 4px; }
.muted { color: var(--muted); }
.score { font-size: 1.35rem; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; background: #ffffff; border: 1px solid var(--border); }
mark { background: #ffe08a; color: #1b1b1b; }
.side { display: grid; grid-template-columns: 1fr 1fr; gap: 1rem; }
@media (max-width: 50rem) { .side { grid-template-columns: 1fr; } }
"""


def page(title: str, body: str) -> str:
    """A complete static HTML page: ``title`` is plain text, ``body`` is already-escaped HTML."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        f"{body}\n</main>\n</body>\n</html>\n"
    )


def status_html(status: str) -> str:
    words = STATUS_TEXT.get(status, status)
    css = "passed" if status == "passed" else "notpassed"
    mark = "✓" if status == "passed" else "✗"
    return f'<span class="{css}"><span aria-hidden="true">{mark} </span>{html.escape(words)}</span>'


def table(caption: str, columns: list[str], rows: list[list[str]], numeric: set[int] = frozenset()) -> str:
    """An accessible table: ``caption`` and ``columns`` are plain text, ``rows`` already-escaped HTML.

    The first cell of each row is its header (``th scope="row"``); columns whose
    index is in ``numeric`` are right-aligned.
    """
    def cls(i: int) -> str:
        return ' class="num"' if i in numeric else ""

    head = "".join(f'<th scope="col"{cls(i)}>{html.escape(c)}</th>' for i, c in enumerate(columns))
    body = "\n".join("<tr>" + "".join(f'<th scope="row"{cls(i)}>{cell}</th>' if i == 0 else f"<td{cls(i)}>{cell}</td>"
                                     for i, cell in enumerate(row)) + "</tr>" for row in rows)
    return (f"<table>\n<caption>{html.escape(caption)}</caption>\n<thead><tr>{head}</tr></thead>\n"
            f"<tbody>\n{body}\n</tbody>\n</table>")


def write_text(path: Path, text: str) -> None:
    """Atomically, and readable by others: feedback and summaries are meant to be handed out.

    Without fsync: these pages are derived from the reports, and a rerun writes them again.
    """
    atomic_write(path, text.encode("utf-8"), durable=False)
    os.chmod(path, 0o644)


# ---------------------------------------------------------------------------------------------
# One student's feedback


@dataclass
class Feedback:
    student: str | None
    submission: str
    assignment: str
    score: float
    max_score: float
    late: dict | None
    notes: list[str]
    ignored: list[tuple[str, str]]
    checks: list[CheckResult]


def read_feedback(report: dict, hide_hidden: bool = True) -> Feedback:
    extra = report.get("extra_data") or {}
    ignored = [(sanitize(str(item.get("path", ""))), sanitize(str(item.get("reason", ""))))
               for item in extra.get("ignored") or [] if isinstance(item, dict)]
    return Feedback(
        student=extra.get("student") or None,
        submission=submission_label(report),
        assignment=str(extra.get("assignment") or "unknown_assignment"),
        score=float(report.get("score") or 0.0),
        max_score=float(report.get("max_score") or 0.0),
        late=extra.get("late") or None,
        notes=report_notes(report),
        ignored=ignored,
        checks=[parse_test(test, hide_hidden) for test in report.get("tests") or [] if isinstance(test, dict)],
    )


def feedback_html(fb: Feedback) -> str:
    e = html.escape
    who = f" for {fb.student}" if fb.student else ""
    parts = [f"<h1>{e(fb.assignment)}: feedback{e(who)}</h1>",
             f"<p class=\"muted\">Submission: <code>{e(fb.submission)}</code></p>",
             f"<p class=\"score\"><strong>Score: {points(fb.score)} / {points(fb.max_score)}</strong></p>"]
    if fb.late:
        parts.append(f"<p><strong>Late:</strong> {e(describe_late(fb.late))}</p>")
    if fb.notes:
        parts.append("<h2>Notes on the notebook</h2>\n<ul>" + "".join(f"<li>{e(n)}</li>" for n in fb.notes) + "</ul>")
    if fb.ignored:
        parts.append("<h2>Other files in your folder (not graded)</h2>\n<ul>"
                     + "".join(f"<li><code>{e(p)}</code>: {e(r)}</li>" for p, r in fb.ignored) + "</ul>")
    rows = [[e(c.title) + (' <span class="muted">(hidden check)</span>' if c.hidden else ""),
             f"{points(c.score)} / {points(c.max_score)}", status_html(c.status)] for c in fb.checks]
    parts.append("<h2>Checks</h2>\n" + table("Each check, the points it gave and its result",
                                             ["Check", "Points", "Result"], rows, numeric={1}))
    todo = [c for c in fb.checks if c.status != "passed"]
    if todo:
        parts.append("<h2>What to fix</h2>")
        for c in todo:
            section = [f"<section>\n<h3>{e(c.title)}</h3>",
                       f"<p>{status_html(c.status)}: {points(c.score)} / {points(c.max_score)} points "
                       f"<span class=\"muted\">(check <code>{e(c.name)}</code>)</span></p>"]
            if c.message:
                section.append(f"<pre>{e(c.message)}</pre>")
            if c.book_url:
                section.append(f"<p>Read: <a href=\"{e(c.book_url, quote=True)}\">{e(c.book_url)}</a></p>")
            parts.append("\n".join(section) + "\n</section>")
    else:
        parts.append("<p>Every check passed.</p>")
    return page(f"{fb.assignment}: feedback{who}", "\n".join(parts))


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>()#+!|~-])")


def md_escape(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", text)


def md_code(text: str) -> str:
    """A fenced block longer than any run of backticks inside, so the text cannot close it."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def feedback_markdown(fb: Feedback) -> str:
    who = f" for {fb.student}" if fb.student else ""
    out = [f"# {md_escape(fb.assignment)}: feedback{md_escape(who)}", "",
           f"Submission: {md_escape(fb.submission)}", "",
           f"**Score: {points(fb.score)} / {points(fb.max_score)}**", ""]
    if fb.late:
        out += [f"**Late:** {md_escape(describe_late(fb.late))}", ""]
    if fb.notes:
        out += ["## Notes on the notebook", ""] + [f"* {md_escape(n)}" for n in fb.notes] + [""]
    if fb.ignored:
        out += ["## Other files in your folder (not graded)", ""]
        out += [f"* {md_escape(p)}: {md_escape(r)}" for p, r in fb.ignored] + [""]
    out += ["## Checks", "", "| Check | Points | Result |", "|---|---:|---|"]
    for c in fb.checks:
        hidden = " (hidden check)" if c.hidden else ""
        out.append(f"| {md_escape(c.title)}{hidden} | {points(c.score)} / {points(c.max_score)} "
                   f"| {md_escape(STATUS_TEXT.get(c.status, c.status))} |")
    out.append("")
    todo = [c for c in fb.checks if c.status != "passed"]
    if todo:
        out += ["## What to fix", ""]
        for c in todo:
            out += [f"### {md_escape(c.title)}", "",
                    f"{md_escape(STATUS_TEXT.get(c.status, c.status))}: {points(c.score)} / {points(c.max_score)} points "
                    f"(check {md_escape(c.name)})", ""]
            if c.message:
                out += [md_code(c.message), ""]
            if c.book_url:
                out += [f"Read: <{c.book_url}>", ""]
    else:
        out += ["Every check passed.", ""]
    return "\n".join(out)


def write_feedback(folder: Path, reports: list[dict], hide_hidden: bool = True, cache=None,
                   prune: bool = False) -> list[Path]:
    """Write ``<folder>/<student or submission>/<assignment>.html`` and ``.md`` for each report.

    Returns the paths written (HTML then Markdown for each report, in the order of
    ``reports``). Two reports that would share a file name (the same submission
    name in two folders, no student) are told apart by a numeric suffix, in order.
    With ``cache`` (an :class:`autograder.grading.report.OutputCache`) a file whose report
    has not changed is not written again; ``prune`` removes files in ``folder``
    that no report produces (a student's feedback never outlives their report).
    """
    from autograder.grading.report import digest, module_digest, report_key

    folder = Path(folder)
    written: list[Path] = []
    taken: set[Path] = set()
    version = module_digest(sys.modules[__name__])
    for report in reports:
        extra = report.get("extra_data") or {}
        owner = safe_name(extra.get("student") or PurePosixPath(submission_label(report)).stem, "submission")
        base = folder / owner / safe_name(str(extra.get("assignment") or "unknown_assignment"), "unknown_assignment")
        candidate, n = base, 1
        while candidate in taken:
            n += 1
            candidate = base.with_name(f"{base.name}-{n}")
        taken.add(candidate)
        key = digest(version, hide_hidden, report_key(report))
        fb = None
        for suffix, render in ((".html", feedback_html), (".md", feedback_markdown)):
            path = candidate.with_name(candidate.name + suffix)
            if cache is None or not cache.fresh(path, key):
                fb = fb or read_feedback(report, hide_hidden)
                write_text(path, render(fb))
                if cache is not None:
                    cache.record(path, key)
            written.append(path)
    if prune and folder.is_dir():
        keep = set(written)
        for path in sorted(folder.rglob("*"), reverse=True):
            if path.is_file() and path not in keep:
                path.unlink()
                if cache is not None:
                    cache.forget(path)
            elif path.is_dir() and not any(path.iterdir()):
                path.rmdir()
    return written
