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
import sys
import tokenize
from dataclasses import dataclass, field
from functools import cached_property
from itertools import combinations
from pathlib import Path

from autograder.outputs.feedback import page, safe_name, table, write_text
from autograder.grading.notebook import neutralise_ipython

ROOT = Path(__file__).resolve().parents[2]
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
# A class at scale: cached fingerprints, incremental comparison, the reference and the library

ALGORITHM = f"winnow-k{K}-w{WINDOW}-min{MIN_OWN_TOKENS}-v2"  # part of every cache key
TOP_PAIRS = 200  # rows of the ranked pair table; every flagged pair is in the CSV
TOP_DETAILED = 20  # pairs shown side by side
MAX_MEMBERS_SHOWN = 60  # names listed per cluster
LIBRARY = ROOT / "tinyllm"


@dataclass
class Fingerprint:
    """What comparing needs of one document, cached per notebook (``OUT/.cache/similarity/``)."""

    label: str
    key: str  # the notebook's bytes, the starter code and ALGORITHM
    hashes: "np.ndarray"  # uint64, every k-gram's hash by position
    own: "np.ndarray"  # bool per token: not covered by a starter k-gram
    fingerprints: frozenset[int]  # winnowed, starter removed
    path: Path | None = None

    @cached_property  # read once per pair: 45,000 pairs in a class of 300
    def n_own(self) -> int:
        return int(self.own.sum())


def _fingerprint(label: str, key: str, doc: Document, path: Path | None) -> Fingerprint:
    import numpy as np

    own = np.zeros(len(doc.toks), dtype=bool)
    own[sorted(doc.own)] = True
    return Fingerprint(label, key, np.array(doc.hashes, dtype=np.uint64), own, frozenset(doc.fingerprints), path)


def _cached(cache_dir: Path | None, key: str):
    """(hashes, own, fingerprints) from ``<key>.bin``: three lengths, then the three arrays' bytes.

    A raw layout rather than ``np.savez``: a class of 300 reads 300 of these on every
    regrade, and unpacking a zip per notebook cost half a second of it.
    """
    import numpy as np

    if cache_dir is None:
        return None
    try:
        data = (cache_dir / f"{key}.bin").read_bytes()
        n_hashes, n_own, n_fps = (int(n) for n in np.frombuffer(data, dtype=np.uint64, count=3))
        if len(data) != 24 + 8 * n_hashes + n_own + 8 * n_fps:
            return None
        hashes = np.frombuffer(data, dtype=np.uint64, count=n_hashes, offset=24)
        own = np.frombuffer(data, dtype=np.bool_, count=n_own, offset=24 + 8 * n_hashes)
        fps = np.frombuffer(data, dtype=np.uint64, count=n_fps, offset=24 + 8 * n_hashes + n_own)
        return hashes, own, frozenset(fps.tolist())
    except (OSError, ValueError):
        return None


def _store(cache_dir: Path | None, fp: Fingerprint) -> None:
    import numpy as np

    if cache_dir is None:
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    fps = np.array(sorted(fp.fingerprints), dtype=np.uint64)
    hashes = np.ascontiguousarray(fp.hashes, dtype=np.uint64)
    own = np.ascontiguousarray(fp.own, dtype=np.bool_)
    header = np.array([len(hashes), len(own), len(fps)], dtype=np.uint64)
    from autograder.grading.report import atomic_write

    atomic_write(cache_dir / f"{fp.key}.bin", b"".join(a.tobytes() for a in (header, hashes, own, fps)),
                 durable=False)


def fingerprints(entries: list[tuple[str, Path, str | None]], starter: set[int], starter_key: str,
                 cache_dir: Path | None) -> tuple[list[Fingerprint], list[tuple[str, str]]]:
    """Fingerprints of (label, notebook, sha256 or None) entries, from the cache where it has them."""
    out, skipped = [], []
    for label, path, sha in entries:
        try:
            data = Path(path).read_bytes() if sha is None else None
        except OSError as error:
            skipped.append((label, f"not readable as a notebook ({type(error).__name__})"))
            continue
        sha = sha or hashlib.sha256(data).hexdigest()
        key = hashlib.sha256(f"{sha}|{starter_key}|{ALGORITHM}".encode()).hexdigest()[:20]
        hit = _cached(cache_dir, key)
        if hit is not None:
            hashes, own, fps = hit
            fp = Fingerprint(label, key, hashes, own, fps, Path(path))
        else:
            docs, bad = load([(label, Path(path))], starter)
            if bad and bad[0][1].startswith("not readable"):
                skipped.append(bad[0])
                continue
            doc = docs[0] if docs else document(label, own_cells(json.loads(Path(path).read_text("utf-8"))), starter)
            fp = _fingerprint(label, key, doc, Path(path))
            _store(cache_dir, fp)
        if fp.n_own < MIN_OWN_TOKENS:
            skipped.append((label, f"too little code of its own to compare ({fp.n_own} tokens)"))
            continue
        out.append(fp)
    return out, skipped


def reference_fingerprints(assignment: str, starter: set[int], cache_dir: Path | None) -> list[Fingerprint]:
    """The reference solution of the assignment and each module of the book's library, as documents."""
    sources: list[tuple[str, Path, list[str] | None]] = []
    solution = ROOT / "solutions" / assignment / f"{assignment}.ipynb"
    if solution.is_file():
        sources.append(("the reference solution", solution, None))
    for module in sorted(LIBRARY.glob("*.py")) if LIBRARY.is_dir() else []:
        sources.append((f"the book's library: tinyllm/{module.name}", module, [module.read_text(encoding="utf-8")]))
    out = []
    for label, path, cells in sources:
        try:
            data = path.read_bytes()
        except OSError:
            continue
        key = hashlib.sha256(b"ref|" + hashlib.sha256(data).digest() + f"|{ALGORITHM}".encode()).hexdigest()[:20]
        hit = _cached(cache_dir, key)
        if hit is not None:
            out.append(Fingerprint(label, key, hit[0], hit[1], hit[2], path))
            continue
        if cells is None:
            try:
                cells = own_cells(json.loads(data.decode("utf-8")))
            except ValueError:
                continue
        fp = _fingerprint(label, key, document(label, cells, set() if cells and path.suffix == ".py" else starter),
                          path)
        _store(cache_dir, fp)
        out.append(fp)
    return out


class _Coverage:
    """Which of a document's own tokens another document's k-grams cover, in numpy.

    Every k-gram hash of the run is given a small integer id; a document's "presence" is
    a boolean vector over those ids, so covering one document by another is one gather
    and a running sum (tokens p .. p + K - 1 are covered by a shared k-gram at p).
    """

    def __init__(self, docs: list[Fingerprint]):
        import numpy as np

        self.np = np
        lengths = [len(d.hashes) for d in docs]
        everything = np.concatenate([d.hashes for d in docs]) if docs else np.zeros(0, dtype=np.uint64)
        unique, inverse = np.unique(everything, return_inverse=True)
        self.size = len(unique)
        self.ids, self.windows = {}, {}
        offset = 0
        for doc, n in zip(docs, lengths):
            self.ids[doc.key] = inverse[offset:offset + n]
            offset += n
            n_tokens = len(doc.own)
            positions = np.arange(n_tokens)
            last = max(n - 1, 0)
            self.windows[doc.key] = (np.minimum(positions, last) + 1, np.maximum(0, positions - K + 1))

    def presence(self, doc: Fingerprint):
        vector = self.np.zeros(self.size + 1, dtype=bool)
        vector[self.ids[doc.key]] = True
        return vector

    def covered(self, doc: Fingerprint, other_presence) -> int:
        """How many of ``doc``'s own tokens a k-gram of the other document covers."""
        np = self.np
        ids = self.ids[doc.key]
        if not len(ids):
            return 0
        starts = other_presence[ids]
        running = np.concatenate(([0], np.cumsum(starts, dtype=np.int64)))
        hi, lo = self.windows[doc.key]
        return int(((running[hi] - running[lo]) > 0)[doc.own].sum())


@dataclass
class PairScore:
    a: str
    b: str
    score: float
    a_share: float
    b_share: float
    shared: int


@dataclass
class Reference:
    label: str  # the student
    source: str  # "the reference solution" or "the book's library: tinyllm/x.py"
    share: float  # of the student's own code
    shared: int


@dataclass
class ClassSimilarity:
    assignment: str
    threshold: float
    compared: int
    skipped: list[tuple[str, str]]
    pairs: list[PairScore]  # at or above the threshold, highest first
    references: list[Reference]  # students whose own code the reference or the library covers at the threshold
    clusters: list[list[str]]  # connected by flagged pairs, largest first
    details: list[Pair]  # the top pairs with their code, for side by side
    computed: int = 0  # pairs compared in this run (the rest came from the cache)


def compare_class(entries: list[tuple[str, Path, str | None]], assignment: str, threshold: float = THRESHOLD,
                  cache_dir: Path | None = None, starter: Path | None = None) -> ClassSimilarity:
    """Compare a class incrementally: fingerprints and pair results come from ``cache_dir`` when the
    notebooks have not changed, so regrading one student compares only that student's pairs."""
    starter_set = starter_hashes(assignment, starter)
    starter_key = hashlib.sha256(json.dumps(sorted(starter_set)).encode()).hexdigest()[:16]
    docs, skipped = fingerprints(entries, starter_set, starter_key, cache_dir)
    refs = reference_fingerprints(assignment, starter_set, cache_dir)
    store = _PairStore(cache_dir)
    # Only pairs that share a fingerprint can score; found once, then read from the store or compared.
    candidates = [(x, y) for x, y in combinations(sorted(docs, key=lambda d: d.label), 2)
                  if not x.fingerprints.isdisjoint(y.fingerprints)]
    todo_pairs = [(x, y) for x, y in candidates if store.get(x.key, y.key) is None]
    todo_refs = [(x, r) for x in docs for r in refs
                 if store.get(x.key, r.key) is None and not x.fingerprints.isdisjoint(r.fingerprints)]
    known = {d.key for d in docs} | {r.key for r in refs}
    if todo_pairs or todo_refs:
        coverage = _Coverage(docs + refs)
        presences: dict[str, object] = {}

        def presence(doc):
            if doc.key not in presences:
                presences[doc.key] = coverage.presence(doc)
            return presences[doc.key]

        for x, y in sorted(todo_pairs, key=lambda pair: pair[1].key):
            store.put(x.key, y.key, [coverage.covered(x, presence(y)), coverage.covered(y, presence(x)),
                                     len(x.fingerprints & y.fingerprints)])
        for x, r in sorted(todo_refs, key=lambda pair: pair[1].key):
            store.put(x.key, r.key, [coverage.covered(x, presence(r)), 0, len(x.fingerprints & r.fingerprints)])
    store.keep_only(known)
    store.save()

    pairs = []
    for x, y in candidates:
        found = store.get(x.key, y.key)
        if not found:
            continue
        cx, cy = (found[0], found[1]) if x.key <= y.key or x.key == y.key else (found[1], found[0])
        own = x.n_own + y.n_own
        score = (cx + cy) / own if own else 0.0
        if score >= threshold:
            pairs.append(PairScore(x.label, y.label, score, cx / x.n_own, cy / y.n_own, found[2]))
    pairs.sort(key=lambda p: (-p.score, p.a, p.b))
    references = []
    for x in docs:
        best = None
        for r in refs:
            found = store.get(x.key, r.key) if x.fingerprints & r.fingerprints else None
            if found:
                covered = found[0] if x.key <= r.key else found[1]
                share = covered / x.n_own
                if share >= threshold and (best is None or share > best.share):
                    best = Reference(x.label, r.label, share, found[2])
        if best is not None:
            references.append(best)
    references.sort(key=lambda r: (-r.share, r.label))
    paths = {d.label: d.path for d in docs}
    shown = sorted({label for pair in pairs[:TOP_DETAILED] for label in (pair.a, pair.b)})
    loaded = {doc.label: doc for doc in load([(label, paths[label]) for label in shown], starter_set)[0]}
    details = [compare(loaded[pair.a], loaded[pair.b]) for pair in pairs[:TOP_DETAILED]
               if pair.a in loaded and pair.b in loaded]
    return ClassSimilarity(assignment, threshold, len(docs), skipped, pairs, references, clusters_of(pairs),
                           details, computed=len(todo_pairs) + len(todo_refs))


def clusters_of(pairs: list) -> list[list[str]]:
    """Groups of submissions linked by flagged pairs (connected components), largest first."""
    parent: dict[str, str] = {}

    def root(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for pair in pairs:
        parent[root(pair.a)] = root(pair.b)
    groups: dict[str, list[str]] = {}
    for label in parent:
        groups.setdefault(root(label), []).append(label)
    return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g))


class _PairStore:
    """Coverage counts of compared pairs, keyed by the two fingerprints' keys (order-free)."""

    def __init__(self, cache_dir: Path | None):
        self.path = cache_dir / "pairs.json" if cache_dir is not None else None
        self.data: dict[str, list[int]] = {}
        if self.path is not None:
            try:
                loaded = json.loads(self.path.read_text(encoding="utf-8"))
                if loaded.get("algorithm") == ALGORITHM:
                    self.data = loaded.get("pairs", {})
            except (OSError, ValueError, AttributeError):
                pass
        self.changed = False

    @staticmethod
    def _key(a: str, b: str) -> str:
        return f"{a}|{b}" if a <= b else f"{b}|{a}"

    def get(self, a: str, b: str) -> list[int] | None:
        return self.data.get(self._key(a, b))

    def put(self, a: str, b: str, value: list[int]) -> None:
        if a > b:  # stored in key order: the first count is the first key's
            value = [value[1], value[0], value[2]]
        self.data[self._key(a, b)] = value
        self.changed = True

    def keep_only(self, keys: set[str]) -> None:
        stale = [k for k in self.data if not all(part in keys for part in k.split("|"))]
        for k in stale:
            del self.data[k]
        self.changed |= bool(stale)

    def save(self) -> None:
        if self.path is not None and self.changed:
            from autograder.grading.report import atomic_write

            atomic_write(self.path, json.dumps({"algorithm": ALGORITHM, "pairs": self.data}).encode("utf-8"),
                         durable=False)


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


def _names(members: list[str]) -> str:
    shown = ", ".join(members[:MAX_MEMBERS_SHOWN])
    more = len(members) - MAX_MEMBERS_SHOWN
    return shown + (f" and {more} more (every pair is in the CSV)" if more > 0 else "")


def similarity_html(result: ClassSimilarity) -> str:
    e = html.escape
    assignment, threshold = result.assignment, result.threshold
    body = [f"<h1>{e(assignment)}: similar submissions</h1>",
            f"<p>Submissions whose own code (starter code excluded) matches at a score of at least {threshold:.2f}: "
            "the share of both submissions' own tokens covered by code they share after identifiers, numbers, "
            "strings and comments are normalised. A high score is a reason to look at the code, not a verdict.</p>",
            f"<p>Submissions compared: {result.compared}. Pairs at or above the threshold: {len(result.pairs)}, in "
            f"{len(result.clusters)} group(s). Matching the reference solution or the book's library: "
            f"{len(result.references)}.</p>"]
    if result.skipped:
        body.append("<h2>Not compared</h2>\n<ul>" + "".join(f"<li>{e(label)}: {e(why)}</li>"
                                                            for label, why in result.skipped) + "</ul>")
    body.append("<h2>Matching the reference solution or the book's library</h2>")
    if result.references:
        body.append("<p>Every student has the book's library (<code>tinyllm</code>) installed and reads its code in "
                    "the book; the reference solution is generated from it. A submission most of whose own code is "
                    "theirs was copied from them, or is the reference itself.</p>")
        body.append(table("Submissions whose own code the reference or the library covers, most first",
                          ["submission", "matches", "share of its own code"],
                          [[e(r.label), e(r.source), f"{r.share:.2f}"] for r in result.references], {2}))
    else:
        body.append("<p>None.</p>")
    body.append("<h2>Groups</h2>")
    if result.clusters:
        best = {}
        for pair in result.pairs:
            for label in (pair.a, pair.b):
                best[label] = max(best.get(label, 0.0), pair.score)
        body.append(table("Submissions linked by flagged pairs (each member shares code with at least one other), "
                          "largest first", ["group", "members", "highest pair score", "submissions"],
                          [[str(n), str(len(g)), f"{max(best[m] for m in g):.2f}", e(_names(g))]
                           for n, g in enumerate(result.clusters, start=1)], {0, 1, 2}))
    else:
        body.append("<p>No pair reaches the threshold.</p>")
    body.append("<h2>Pairs</h2>")
    if not result.pairs:
        body.append("<p>No pair reaches the threshold.</p>")
    else:
        shown = result.pairs[:TOP_PAIRS]
        caption = "Pairs above the threshold, most similar first" + (
            f" (the first {len(shown)} of {len(result.pairs)}; every pair is in the CSV beside this page)"
            if len(result.pairs) > len(shown) else "")
        detailed = {(p.a, p.b): n for n, p in enumerate(result.details, start=1)}
        body.append(table(caption, ["#", "submission A", "submission B", "score", "share of A", "share of B"],
                          [[f'<a href="#pair-{detailed[(p.a, p.b)]}">{n}</a>' if (p.a, p.b) in detailed else str(n),
                            e(p.a), e(p.b), f"{p.score:.2f}", f"{p.a_share:.2f}", f"{p.b_share:.2f}"]
                           for n, p in enumerate(shown, start=1)], {0, 3, 4, 5}))
        if result.details:
            body.append(f"<h2>The {len(result.details)} closest pairs, side by side</h2>")
        for n, p in enumerate(result.details, start=1):
            body.append(f"<section id=\"pair-{n}\">\n<h3>{n}. {e(p.a)} and {e(p.b)}: score {p.score:.2f}</h3>\n"
                        "<p>Highlighted lines hold matching code.</p>\n<div class=\"side\">"
                        f"<div><h4>{e(p.a)}</h4>{_code_html(p.a_cells, p.a_lines)}</div>"
                        f"<div><h4>{e(p.b)}</h4>{_code_html(p.b_cells, p.b_lines)}</div></div>\n</section>")
    return page(f"{assignment}: similar submissions", "\n".join(body))


def pairs_csv(result: ClassSimilarity) -> bytes:
    import csv

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["submission_a", "submission_b", "score", "share_of_a", "share_of_b"])
    for p in result.pairs:
        writer.writerow([p.a, p.b, f"{p.score:.3f}", f"{p.a_share:.3f}", f"{p.b_share:.3f}"])
    for r in result.references:
        writer.writerow([r.label, r.source, f"{r.share:.3f}", f"{r.share:.3f}", ""])
    return out.getvalue().encode("utf-8")


def write_similarity_report(path: Path, assignment: str, pairs: list[Pair], threshold: float = THRESHOLD,
                            compared: int | None = None, skipped: list[tuple[str, str]] = ()) -> Path:
    """Write the HTML report of ``pairs`` (from :func:`find_similar`) to ``path`` (a folder gets
    ``similarity-<assignment>.html``)."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / f"similarity-{safe_name(assignment, 'unknown_assignment')}.html"
    scores = [PairScore(p.a, p.b, p.score, p.a_share, p.b_share, p.shared) for p in pairs]
    result = ClassSimilarity(assignment, threshold, compared if compared is not None else 0, list(skipped), scores,
                             [], clusters_of(scores), list(pairs[:TOP_DETAILED]))
    write_text(path, similarity_html(result))
    return path


def write_similarity(folder: Path, reports: list[dict], threshold: float = THRESHOLD, cache=None) -> list[Path]:
    """From graded reports: ``<folder>/similarity-<assignment>.html`` (and ``.csv``, every flagged pair)
    per assignment; returns the HTML paths.

    Each report's notebook is ``extra_data.notebook`` (else ``extra_data.submission``), labelled by
    its student (else its submission path); reports without an assignment are left out. Fingerprints
    and pair results are cached in ``<folder>/.cache/similarity/<assignment>/``; with ``cache`` (an
    :class:`autograder.grading.report.OutputCache`) a page whose inputs have not changed is not rebuilt.
    """
    from autograder.grading.report import digest, module_digest

    groups: dict[str, list[tuple[str, Path, str | None]]] = {}
    for report in reports:
        extra = report.get("extra_data") or {}
        assignment, notebook = extra.get("assignment"), extra.get("notebook") or extra.get("submission")
        if assignment and notebook:
            groups.setdefault(assignment, []).append((str(extra.get("student") or extra.get("submission")),
                                                      Path(notebook), extra.get("sha256")))
    version = module_digest(sys.modules[__name__])
    written = []
    for assignment, entries in sorted(groups.items()):
        name = safe_name(assignment, "unknown_assignment")
        path = Path(folder) / f"similarity-{name}.html"
        key = digest(version, threshold, sorted((label, str(nb), sha) for label, nb, sha in entries),
                     _library_digest(assignment))
        if cache is not None and cache.fresh(path, key):
            written.append(path)
            continue
        result = compare_class(entries, assignment, threshold, cache_dir=Path(folder) / ".cache" / "similarity" / name)
        write_text(path, similarity_html(result))
        from autograder.grading.report import atomic_write

        atomic_write(path.with_suffix(".csv"), pairs_csv(result), durable=False)
        if cache is not None:
            cache.record(path, key)
        written.append(path)
    return written


def _library_digest(assignment: str) -> str:
    h = hashlib.sha256()
    for path in [ROOT / "solutions" / assignment / f"{assignment}.ipynb",
                 ROOT / "exercises" / assignment / f"{assignment}.ipynb", *sorted(LIBRARY.glob("*.py"))]:
        try:
            h.update(path.read_bytes())
        except OSError:
            pass
    return h.hexdigest()[:16]
