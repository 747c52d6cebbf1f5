"""Pairs of submissions whose own code is suspiciously alike.

``find_similar(entries, assignment)`` compares every pair of submissions of one
assignment and returns those scoring at least ``threshold``;
``write_similarity_report(path, assignment, pairs)`` writes them as a static
HTML page with the matching code side by side. A high score is a reason to
look, not a verdict: two students can write the same short line honestly.

**What is compared.** Only what the student wrote: the code cells whose
nbgrader metadata says ``solution: true`` (if a notebook lost that metadata,
every code cell that is not an nbgrader test cell). The released exercise
notebook (``exercises/<assignment>/<assignment>.ipynb``: signatures,
docstrings, ``raise NotImplementedError()``, the set-up cells) is starter code
every student has; every k-gram that occurs in it is removed first, so an
untouched notebook has nothing left to match.

**How (winnowing, as MOSS does; Schleimer, Wilkerson and Aiken, SIGMOD 2003).**
Each cell is split into Python tokens (``tokenize``) and normalised so that
cosmetic edits change nothing: comments, blank lines and indentation are
dropped; every identifier becomes ``V`` (renaming a variable, a parameter or a
``self.`` attribute is invisible), every number ``N``, every string ``S``;
keywords, operators, built-ins (``len``, ``range``) and attribute names after a
dot (``.exp``, ``.sum``, ``.masked_fill``: the library calls, which carry the
algorithm) are kept. Every run of ``K`` consecutive tokens is hashed
(BLAKE2b, so the same notebooks give the same scores in every run), and
winnowing keeps the smallest hash of each window of ``WINDOW`` consecutive
hashes: any match of at least ``K + WINDOW - 1`` tokens is guaranteed to be
found. Two submissions match if they share a fingerprint; then every k-gram
they share (winnowed or not) marks its tokens as matching code. A pair's score is the share of the two
submissions' own tokens (tokens not in starter k-grams) that the matching code
covers: ``(covered_a + covered_b) / (own_a + own_b)``, 1.0 for copies.
Submissions with fewer than ``MIN_OWN_TOKENS`` own tokens (nothing written
yet) are not scored.

**Why our own winnowing and not copydetect** (0.5.0, the PyPI package that does
winnowing with boilerplate removal). Both were run on the class of
``tests/test_instructor_reports.py`` (``python -m tests.test_instructor_reports
copydetect`` prints copydetect's side, after ``pip install copydetect==0.5.0``):
both give the five copies of the reference 1.0 and the edited copy over 0.9,
and keep the independent solutions low (copydetect at its defaults: at most
0.28; ours: at most 0.25), so either would do the detecting. Ours was chosen because:
(1) copydetect hashes k-grams with Python's ``hash()``, salted per process, so
once it really winnows (``guarantee_t`` > ``noise_t``) the scores change from
run to run: with a window of 6 the two independent solutions scored 0.18-0.19
under ``PYTHONHASHSEED=1`` and 0.25-0.28 under ``PYTHONHASHSEED=2`` (at its defaults the window is 1, i.e. it
keeps every k-gram and does not winnow); ours hashes with BLAKE2b and gives the
same report in every run (tested). (2) It works on files and reports matches as
character offsets of one text; a notebook has to be cut into cells and the
report must show matching lines per cell, which our tokens carry directly.
(3) Its normalisation also turns ``.exp`` or ``.masked_fill`` after a dot into
``V``, discarding the library calls that tell two algorithms apart. (4) It adds a
dependency (with its own report template, progress bars and plotting) for what
is here about 100 lines.
"""

from __future__ import annotations

import builtins
import hashlib
import html
import io
import json
import keyword
import re
import tokenize
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path

from autograder.feedback import page, safe_name, table, write_text
from autograder.notebook import neutralise_ipython

ROOT = Path(__file__).resolve().parents[1]
K = 12  # tokens per k-gram: short enough for three-line functions, long enough that "return V(V)" alone is no match
WINDOW = 6  # winnowing window: every match of K + WINDOW - 1 = 17 tokens or more is found
MIN_OWN_TOKENS = 25
THRESHOLD = 0.6  # measured (tests/test_instructor_reports.py): copies 0.95-1.0, independent solutions 0.10-0.25

_BUILTINS = frozenset(dir(builtins))


@dataclass(frozen=True)
class Token:
    text: str  # normalised
    cell: int  # index among the submission's own cells
    line: int  # 1-based, within the cell


def _tokenize_python(source: str, cell: int) -> list[Token]:
    out: list[Token] = []
    previous = ""  # the previous significant token's raw text
    before_previous = ""
    in_fstring = 0
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        kind = tokenize.tok_name[tok.type]
        if kind in ("FSTRING_START",):  # Python 3.12+: an f-string is several tokens; one S
            if not in_fstring:
                out.append(Token("S", cell, tok.start[0]))
            in_fstring += 1
            continue
        if kind == "FSTRING_END":
            in_fstring -= 1
            continue
        if in_fstring or kind in ("COMMENT", "NL", "INDENT", "DEDENT", "ENCODING", "ENDMARKER"):
            continue
        if kind == "NEWLINE":
            text = ";"
        elif kind == "NAME":
            if keyword.iskeyword(tok.string) or tok.string in _BUILTINS:
                text = tok.string
            elif previous == "." and before_previous not in ("self", "cls"):
                text = tok.string  # an attribute or method of a library object: .exp, .sum
            else:
                text = "V"
        elif kind == "NUMBER":
            text = "N"
        elif kind == "STRING":
            text = "S"
        else:
            text = tok.string
        out.append(Token(text, cell, tok.start[0]))
        before_previous, previous = previous, tok.string
    return out


_FALLBACK = re.compile(r"#[^\n]*|(?P<str>'[^'\n]*'|\"[^\"\n]*\")|(?P<num>\d[\w.]*)|(?P<name>[A-Za-z_]\w*)|(?P<op>\S)")


def _tokenize_fallback(source: str, cell: int) -> list[Token]:
    """For a cell Python cannot tokenize (an unclosed bracket): the same normalisation, by regex."""
    out = []
    for match in _FALLBACK.finditer(source):
        line = source.count("\n", 0, match.start()) + 1
        if match.group("str"):
            out.append(Token("S", cell, line))
        elif match.group("num"):
            out.append(Token("N", cell, line))
        elif match.group("name"):
            name = match.group("name")
            keep = keyword.iskeyword(name) or name in _BUILTINS or (out and out[-1].text == ".")
            out.append(Token(name if keep else "V", cell, line))
        elif match.group("op"):
            out.append(Token(match.group("op"), cell, line))
    return out


def tokens(cells: list[str]) -> list[Token]:
    """The normalised tokens of a submission's cells, in order."""
    out: list[Token] = []
    for index, source in enumerate(cells):
        source = neutralise_ipython(source)
        try:
            out += _tokenize_python(source, index)
        except (tokenize.TokenError, IndentationError, SyntaxError):
            out += _tokenize_fallback(source, index)
    return out


def kgram_hashes(toks: list[Token], k: int = K) -> list[int]:
    return [int.from_bytes(hashlib.blake2b("\x1f".join(t.text for t in toks[i:i + k]).encode(), digest_size=8).digest(),
                           "big") for i in range(len(toks) - k + 1)]


def winnow(hashes: list[int], window: int = WINDOW) -> dict[int, list[int]]:
    """Robust winnowing: the minimum hash of each window (rightmost on ties), once per position.

    Returns hash -> the k-gram positions where it was selected.
    """
    selected: dict[int, list[int]] = {}
    last = -1
    for start in range(max(1, len(hashes) - window + 1)):
        span = hashes[start:start + window]
        if not span:
            break
        low = min(span)
        position = start + max(i for i, h in enumerate(span) if h == low)
        if position != last:
            selected.setdefault(low, []).append(position)
            last = position
    return selected


# ---------------------------------------------------------------------------------------------
# Notebooks


def own_cells(notebook: dict) -> list[str]:
    """The cells a student writes: nbgrader solution cells, else every non-test code cell."""
    code = [c for c in notebook.get("cells") or [] if isinstance(c, dict) and c.get("cell_type") == "code"]

    def nbgrader(cell: dict) -> dict:
        meta = cell.get("metadata") if isinstance(cell.get("metadata"), dict) else {}
        return meta.get("nbgrader") if isinstance(meta.get("nbgrader"), dict) else {}

    def source(cell: dict) -> str:
        text = cell.get("source", "")
        return "".join(s for s in text if isinstance(s, str)) if isinstance(text, list) else str(text)

    marked = [source(c) for c in code if nbgrader(c).get("solution")]
    if marked:
        return marked
    return [source(c) for c in code if not (nbgrader(c).get("grade") and not nbgrader(c).get("solution"))]


def all_code_cells(notebook: dict) -> list[str]:
    return [("".join(c["source"]) if isinstance(c.get("source"), list) else str(c.get("source", "")))
            for c in notebook.get("cells") or [] if isinstance(c, dict) and c.get("cell_type") == "code"]


@dataclass
class Document:
    label: str
    cells: list[str]
    toks: list[Token]
    hashes: list[int]  # every k-gram's hash, by position
    fingerprints: set[int]  # the winnowed ones, starter hashes removed
    own: set[int]  # token positions not covered by any starter k-gram


def document(label: str, cells: list[str], starter: set[int]) -> Document:
    toks = tokens(cells)
    hashes = kgram_hashes(toks)
    boiler = set()
    for i, h in enumerate(hashes):
        if h in starter:
            boiler.update(range(i, i + K))
    fingerprints = set(winnow(hashes)) - starter
    return Document(label, cells, toks, hashes, fingerprints, set(range(len(toks))) - boiler)


@dataclass
class Pair:
    a: str
    b: str
    score: float  # (covered_a + covered_b) / (own_a + own_b)
    a_share: float  # covered_a / own_a
    b_share: float
    shared: int  # winnowed fingerprints in common
    a_cells: list[str] = field(repr=False, default_factory=list)
    b_cells: list[str] = field(repr=False, default_factory=list)
    a_lines: set[tuple[int, int]] = field(repr=False, default_factory=set)  # (cell, line) with matching code
    b_lines: set[tuple[int, int]] = field(repr=False, default_factory=set)


def compare(x: Document, y: Document) -> Pair:
    """Winnowed fingerprints say whether two documents match at all; if they do, every shared k-gram
    (not only the winnowed ones) marks matching tokens, so identical code scores exactly 1."""
    shared = len(x.fingerprints & y.fingerprints)

    def covered(doc: Document, other: Document) -> set[int]:
        if not shared:
            return set()
        theirs = set(other.hashes)
        return {i for p, h in enumerate(doc.hashes) if h in theirs for i in range(p, p + K)} & doc.own

    cx, cy = covered(x, y), covered(y, x)
    own = len(x.own) + len(y.own)
    return Pair(x.label, y.label, (len(cx) + len(cy)) / own if own else 0.0,
                len(cx) / len(x.own) if x.own else 0.0, len(cy) / len(y.own) if y.own else 0.0, shared,
                x.cells, y.cells, matching_lines(x, cx), matching_lines(y, cy))


def matching_lines(doc: Document, covered: set[int]) -> set[tuple[int, int]]:
    """The (cell, line) pairs more than half of whose own tokens are matching code."""
    total: dict[tuple[int, int], int] = {}
    hits: dict[tuple[int, int], int] = {}
    for i in doc.own:
        where = (doc.toks[i].cell, doc.toks[i].line)
        total[where] = total.get(where, 0) + 1
        hits[where] = hits.get(where, 0) + (i in covered)
    return {where for where, n in total.items() if 2 * hits[where] > n}


def starter_hashes(assignment: str, starter: Path | None = None) -> set[int]:
    """Every k-gram hash of the released exercise notebook (empty if it cannot be read)."""
    path = starter or ROOT / "exercises" / assignment / f"{assignment}.ipynb"
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return set(kgram_hashes(tokens(all_code_cells(notebook))))


def load(entries: list[tuple[str, Path]], starter: set[int]) -> tuple[list[Document], list[tuple[str, str]]]:
    """Documents for the readable submissions with enough own code; (label, why) for the others."""
    docs, skipped = [], []
    for label, path in entries:
        try:
            notebook = json.loads(Path(path).read_text(encoding="utf-8"))
            if not isinstance(notebook, dict):
                raise ValueError("not a notebook")
        except (OSError, ValueError) as error:
            skipped.append((label, f"not readable as a notebook ({type(error).__name__})"))
            continue
        doc = document(label, own_cells(notebook), starter)
        if len(doc.own) < MIN_OWN_TOKENS:
            skipped.append((label, f"too little code of its own to compare ({len(doc.own)} tokens)"))
            continue
        docs.append(doc)
    return docs, skipped


def find_similar(entries: list[tuple[str, Path]], assignment: str, threshold: float = THRESHOLD,
                 starter: Path | None = None) -> list[Pair]:
    """Every pair of ``entries`` (label, notebook path) scoring at least ``threshold``, highest first.

    ``starter`` is the released notebook whose code is excluded (default: the
    repository's ``exercises/<assignment>/<assignment>.ipynb``).
    """
    docs, _ = load(entries, starter_hashes(assignment, starter))
    return ranked_pairs(docs, threshold)


def ranked_pairs(docs: list[Document], threshold: float) -> list[Pair]:
    pairs = [compare(x, y) for x, y in combinations(sorted(docs, key=lambda d: d.label), 2)]
    return sorted((p for p in pairs if p.score >= threshold), key=lambda p: (-p.score, p.a, p.b))


# ---------------------------------------------------------------------------------------------
# The report


def _code_html(cells: list[str], lines: set[tuple[int, int]]) -> str:
    out = []
    for index, source in enumerate(cells):
        if not any(cell == index for cell, _ in lines):
            continue  # only the cells that hold matching code
        rendered = []
        for number, text in enumerate(source.splitlines(), start=1):
            escaped = html.escape(text) or " "
            rendered.append(f"<mark>{escaped}</mark>" if (index, number) in lines else escaped)
        out.append(f"<p class=\"muted\">cell {index + 1} of the student's own cells</p><pre>"
                   + "\n".join(rendered) + "</pre>")
    return "\n".join(out) or "<p>(no matching code)</p>"


def similarity_html(assignment: str, pairs: list[Pair], threshold: float, compared: int | None = None,
                    skipped: list[tuple[str, str]] = ()) -> str:
    e = html.escape
    body = [f"<h1>{e(assignment)}: similar submissions</h1>",
            f"<p>Pairs whose own code (starter code excluded) matches at a score of at least {threshold:.2f}: "
            "the share of both submissions' own tokens covered by code they share after identifiers, numbers, "
            "strings and comments are normalised. A high score is a reason to look at the code below, "
            "not a verdict.</p>"]
    if compared is not None:
        body.append(f"<p>Submissions compared: {compared}.</p>")
    if skipped:
        body.append("<h2>Not compared</h2>\n<ul>" + "".join(f"<li>{e(label)}: {e(why)}</li>" for label, why in skipped)
                    + "</ul>")
    body.append("<h2>Pairs</h2>")
    if not pairs:
        body.append("<p>No pair reaches the threshold.</p>")
    else:
        body.append(table("Pairs above the threshold, most similar first",
                          ["#", "submission A", "submission B", "score", "share of A", "share of B"],
                          [[f'<a href="#pair-{n}">{n}</a>', e(p.a), e(p.b), f"{p.score:.2f}", f"{p.a_share:.2f}",
                            f"{p.b_share:.2f}"] for n, p in enumerate(pairs, start=1)], {0, 3, 4, 5}))
        for n, p in enumerate(pairs, start=1):
            body.append(f"<section id=\"pair-{n}\">\n<h3>{n}. {e(p.a)} and {e(p.b)}: score {p.score:.2f}</h3>\n"
                        "<p>Highlighted lines hold matching code.</p>\n<div class=\"side\">"
                        f"<div><h4>{e(p.a)}</h4>{_code_html(p.a_cells, p.a_lines)}</div>"
                        f"<div><h4>{e(p.b)}</h4>{_code_html(p.b_cells, p.b_lines)}</div></div>\n</section>")
    return page(f"{assignment}: similar submissions", "\n".join(body))


def write_similarity_report(path: Path, assignment: str, pairs: list[Pair], threshold: float = THRESHOLD,
                            compared: int | None = None, skipped: list[tuple[str, str]] = ()) -> Path:
    """Write the HTML report of ``pairs`` to ``path`` (a folder gets ``similarity-<assignment>.html``)."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / f"similarity-{safe_name(assignment, 'unknown_assignment')}.html"
    write_text(path, similarity_html(assignment, pairs, threshold, compared, skipped))
    return path


def write_similarity(folder: Path, reports: list[dict], threshold: float = THRESHOLD) -> list[Path]:
    """From graded reports: ``<folder>/similarity-<assignment>.html`` per assignment; returns the paths.

    Each report's notebook is ``extra_data.notebook`` (else ``extra_data.submission``), labelled by
    its student (else its submission path); reports without an assignment are left out.
    """
    groups: dict[str, list[tuple[str, Path]]] = {}
    for report in reports:
        extra = report.get("extra_data") or {}
        assignment, notebook = extra.get("assignment"), extra.get("notebook") or extra.get("submission")
        if assignment and notebook:
            groups.setdefault(assignment, []).append((str(extra.get("student") or extra.get("submission")),
                                                      Path(notebook)))
    written = []
    for assignment, entries in sorted(groups.items()):
        docs, skipped = load(entries, starter_hashes(assignment))
        pairs = ranked_pairs(docs, threshold)
        path = Path(folder) / f"similarity-{safe_name(assignment, 'unknown_assignment')}.html"
        written.append(write_similarity_report(path, assignment, pairs, threshold, len(docs), skipped))
    return written

