"""The instructor's reports: student feedback, the class summary, the similarity report.

Reports for the feedback and summary tests are graded from real notebooks
(the reference and fixtures of tests/fixtures) once per session, plus reports
written here for what a quick grading run cannot produce (late work, stray
files). The similarity tests build student notebooks the way students do:
the released exercise notebook with code typed into its solution cells.
"""

from __future__ import annotations

import copy
import html
import json
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from autograder.outputs import feedback, similarity, summary
from autograder.grading.registry import BOOK_URL

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


# ---------------------------------------------------------------------------------------------
# Notebooks


def solution_code(assignment: str) -> dict[str, str]:
    """grade_id -> the reference solution's code, as a student would type it (no nbgrader markers)."""
    notebook = json.loads((ROOT / "solutions" / assignment / f"{assignment}.ipynb").read_text(encoding="utf-8"))
    code = {}
    for cell in notebook["cells"]:
        meta = cell["metadata"].get("nbgrader", {})
        if meta.get("solution") and cell["cell_type"] == "code":
            lines = "".join(cell["source"]).splitlines(keepends=True)
            code[meta["grade_id"]] = "".join(line for line in lines
                                             if line.strip() not in ("### BEGIN SOLUTION", "### END SOLUTION"))
    return code


def released(assignment: str) -> dict:
    return json.loads((ROOT / "exercises" / assignment / f"{assignment}.ipynb").read_text(encoding="utf-8"))


def student_notebook(assignment: str, code: dict[str, str]) -> dict:
    """The released notebook with ``code`` typed into the solution cells it names."""
    notebook = released(assignment)
    found = set()
    for cell in notebook["cells"]:
        grade_id = cell["metadata"].get("nbgrader", {}).get("grade_id")
        if grade_id in code:
            cell["source"] = code[grade_id]
            found.add(grade_id)
    assert found == set(code), f"no solution cells {set(code) - found} in the released {assignment}"
    return notebook


def write(folder: Path, name: str, notebook: dict) -> Path:
    path = folder / f"{name}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(notebook, indent=1), encoding="utf-8")
    return path


def rename(code: str, names: dict[str, str]) -> str:
    for old, new in names.items():
        code = re.sub(rf"\b{old}\b", new, code)
    return code


def recomment(code: str) -> str:
    """Every comment and docstring-free line ending changed, and one comment line added per function."""
    code = re.sub(r"  # .*", "  # my own note", code)
    code = re.sub(r"^(\s*)# .*$", r"\1# rewritten in my words", code, flags=re.M)
    return re.sub(r"^(def .*\n(?:\s+\"\"\"[\s\S]*?\"\"\"\n)?)", r"\1    # step by step\n", code, flags=re.M)


def edit(code: str) -> str:
    """A copier covering tracks: renames, other comments, one call rewritten, a line added, a line reworded."""
    code = recomment(rename(code, REFERENCE_RENAMES))
    code = code.replace("torch.exp(z)", "z.exp()")
    code = code.replace("    scaled_logits = scores / temperature\n",
                        "    assert scores.ndim >= 1\n    scaled_logits = scores / temperature\n")
    return code.replace("return -chosen.mean()", "loss = -chosen.mean()\n    return loss")


# Two correct solutions of 03_softmax written independently of the reference and of each other:
# different decompositions, library calls and control flow. Only the one-liners any correct
# solution writes (log_softmax = z - logsumexp(z), perplexity = exp(cross-entropy)) coincide.
INDEPENDENT_A = {
    "softmax": '''def softmax(logits: Tensor, dim: int = -1, temperature: float = 1.0) -> Tensor:
    if not temperature > 0:
        raise ValueError("the temperature has to be > 0")
    z = logits.div(temperature)
    z = z - torch.max(z, dim=dim, keepdim=True).values
    numerators = torch.exp(z)
    return numerators.div(torch.sum(numerators, dim=dim, keepdim=True))
''',
    "logsumexp_log_softmax_cross_entropy": '''def logsumexp(logits: Tensor, dim: int = -1) -> Tensor:
    top = torch.max(logits, dim=dim, keepdim=True).values
    top = torch.nan_to_num(top, nan=0.0, posinf=0.0, neginf=0.0)
    return top + torch.sum(torch.exp(logits - top), dim=dim, keepdim=True).log()


def log_softmax(logits: Tensor, dim: int = -1) -> Tensor:
    return logits - logsumexp(logits, dim=dim)


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    n, _ = logits.shape
    if targets.shape != (n,):
        raise ValueError("targets must be one id per row of logits")
    rows = torch.arange(n)
    return -log_softmax(logits, dim=1)[rows, targets.long()].sum() / n
''',
    "perplexity": '''def perplexity(logits: Tensor, targets: Tensor) -> Tensor:
    return torch.exp(cross_entropy(logits, targets))
''',
}

INDEPENDENT_B = {
    "softmax": '''def softmax(logits: Tensor, dim: int = -1, temperature: float = 1.0) -> Tensor:
    if temperature <= 0:
        raise ValueError(f"bad temperature {temperature}")
    moved = (logits / temperature).transpose(dim, -1)
    out = (moved - moved.max(-1, keepdim=True).values).exp()
    out = out / out.sum(-1, keepdim=True)
    return out.transpose(dim, -1)
''',
    "logsumexp_log_softmax_cross_entropy": '''def logsumexp(logits: Tensor, dim: int = -1) -> Tensor:
    biggest = logits.amax(dim, keepdim=True)
    biggest = biggest.masked_fill(torch.isinf(biggest), 0.0)
    total = (logits - biggest).exp().sum(dim, keepdim=True)
    return biggest + total.log()


def log_softmax(logits: Tensor, dim: int = -1) -> Tensor:
    lse = logsumexp(logits, dim)
    return logits - lse


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    if logits.ndim != 2 or targets.ndim != 1 or len(targets) != len(logits):
        raise ValueError("expected (N, V) logits and (N,) targets")
    log_p = log_softmax(logits, dim=-1)
    losses = [-log_p[row, int(t)] for row, t in enumerate(targets)]
    return torch.stack(losses).mean()
''',
    "perplexity": '''def perplexity(logits: Tensor, targets: Tensor) -> Tensor:
    loss = cross_entropy(logits, targets)
    return loss.exp()
''',
}

REFERENCE_RENAMES = {"scaled": "scaled_logits", "shifted": "z", "exps": "e", "peak": "m", "log_probs": "lp",
                     "picked": "chosen", "logits": "scores", "targets": "labels"}


def similarity_class(folder: Path) -> dict[str, Path]:
    """Five copies of the reference (two verbatim, renamed, re-commented, both), two independent
    solutions, and two untouched released notebooks."""
    a = "03_softmax"
    ref = solution_code(a)
    variants = {
        "copy_1": ref,
        "copy_2": ref,
        "copy_renamed": {g: rename(c, REFERENCE_RENAMES) for g, c in ref.items()},
        "copy_recommented": {g: recomment(c) for g, c in ref.items()},
        "copy_renamed_recommented": {g: recomment(rename(c, REFERENCE_RENAMES)) for g, c in ref.items()},
        "copy_edited": {g: edit(c) for g, c in ref.items()},
        "independent_a": INDEPENDENT_A,
        "independent_b": INDEPENDENT_B,
    }
    paths = {name: write(folder, name, student_notebook(a, code)) for name, code in variants.items()}
    for name in ("starter_1", "starter_2"):
        paths[name] = write(folder, name, released(a))
    return paths


COPIES = ["copy_1", "copy_2", "copy_renamed", "copy_recommented", "copy_renamed_recommented", "copy_edited"]


# ---------------------------------------------------------------------------------------------
# Similarity


@pytest.fixture(scope="module")
def sim_class(tmp_path_factory) -> dict[str, Path]:
    return similarity_class(tmp_path_factory.mktemp("similarity"))


def test_copies_are_really_edited(sim_class):
    """The renamed and re-commented copies differ from the reference in text, not just in name."""
    texts = {name: "".join(similarity.own_cells(json.loads(p.read_text()))) for name, p in sim_class.items()}
    assert len({texts[name] for name in COPIES}) == 5  # copy_1 == copy_2, the other four differ from it and each other
    assert "z.exp()" in texts["copy_edited"] and "loss = -chosen.mean()" in texts["copy_edited"]
    assert "scaled_logits" in texts["copy_renamed"] and "# rewritten in my words" in texts["copy_recommented"]


def test_similarity_flags_every_copy_and_nothing_else(sim_class):
    entries = sorted(sim_class.items())
    pairs = similarity.find_similar(entries, "03_softmax")
    flagged = {frozenset((p.a, p.b)) for p in pairs}
    expected = {frozenset(pair) for pair in __import__("itertools").combinations(COPIES, 2)}
    assert flagged == expected, sorted(tuple(sorted(p)) for p in flagged ^ expected)
    # Scores of every pair below the threshold, for the record of how far apart they are.
    everything = {frozenset((p.a, p.b)): p.score for p in similarity.find_similar(entries, "03_softmax", threshold=0)}
    assert min(everything[pair] for pair in expected) >= 0.9
    independent = [s for pair, s in everything.items() if pair not in expected]
    assert max(independent) < 0.4, max(independent)


def line_of(cells: list[str], text: str) -> tuple[int, int]:
    [where] = [(c, n) for c, cell in enumerate(cells) for n, line in enumerate(cell.splitlines(), 1) if text in line]
    return where


def test_report_marks_copied_lines_not_added_ones(sim_class):
    [pair] = similarity.find_similar([("copy_1", sim_class["copy_1"]), ("copy_edited", sim_class["copy_edited"])],
                                     "03_softmax")
    assert pair.b == "copy_edited"
    assert line_of(pair.b_cells, "assert scores.ndim >= 1") not in pair.b_lines
    assert line_of(pair.b_cells, "scaled_logits = scores / temperature") in pair.b_lines
    assert line_of(pair.a_cells, "scaled = logits / temperature") in pair.a_lines
    assert not any(cell_line in pair.a_lines for cell_line in [line_of(pair.a_cells, '"""Turn logits')])  # starter


def test_attention_copies_with_renamed_attributes_are_flagged(tmp_path):
    """04_attention: a class whose self.* attributes a copier renamed still matches; the starter does not."""
    ref = solution_code("04_attention")
    renamed = {g: rename(c, {"q_proj": "to_query", "k_proj": "to_key", "v_proj": "to_value", "out_proj": "mix",
                             "split_heads": "heads_first", "merged": "joined", "weights": "attn"})
               for g, c in ref.items()}
    entries = [("a", write(tmp_path, "a", student_notebook("04_attention", ref))),
               ("b", write(tmp_path, "b", student_notebook("04_attention", renamed))),
               ("starter", write(tmp_path, "starter", released("04_attention")))]
    pairs = similarity.find_similar(entries, "04_attention", threshold=0)
    assert [(p.a, p.b) for p in pairs] == [("a", "b")] and pairs[0].score == 1.0


def test_starter_code_alone_is_not_compared(sim_class):
    docs, skipped = similarity.load([(n, sim_class[n]) for n in ("starter_1", "starter_2", "copy_1")],
                                    similarity.starter_hashes("03_softmax"))
    assert [d.label for d in docs] == ["copy_1"]
    assert [label for label, _ in skipped] == ["starter_1", "starter_2"]
    # Without the starter code excluded, the two untouched notebooks would be identical: the exclusion matters.
    docs, skipped = similarity.load([(n, sim_class[n]) for n in ("starter_1", "starter_2")], set())
    assert len(docs) == 2 and similarity.compare(*docs).score == 1.0


def test_similarity_is_the_same_in_every_process(sim_class):
    """Hashes are BLAKE2b, not Python's salted hash(): other PYTHONHASHSEEDs give the same scores."""
    script = ("import json, sys; from pathlib import Path; from autograder.outputs import similarity as s;"
              "e = sorted((n, Path(p)) for n, p in json.loads(sys.argv[1]).items());"
              "print(json.dumps([(p.a, p.b, p.score) for p in s.find_similar(e, '03_softmax', threshold=0)]))")
    entries = json.dumps({n: str(p) for n, p in sim_class.items()})
    runs = {subprocess.run([PYTHON, "-c", script, entries], capture_output=True, text=True, check=True, cwd=ROOT,
                           env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}).stdout for seed in ("1", "2")}
    assert len(runs) == 1 and json.loads(runs.pop())


def test_tokens_normalise_names_and_keep_library_calls():
    a = similarity.tokens(["def f(x):\n    # note\n    total = x.exp().sum(dim=-1)  # why\n    return len(total)\n"])
    b = similarity.tokens(["def g(y):\n    s = y.exp().sum(dim=-2)\n\n    return len(s)\n"])
    assert [t.text for t in a] == [t.text for t in b]
    assert "exp" in [t.text for t in a] and "len" in [t.text for t in a]
    c = similarity.tokens(["def f(x):\n    total = x.log().sum(dim=-1)\n    return len(total)\n"])
    assert [t.text for t in a] != [t.text for t in c]
    assert similarity.tokens(["def f(x:\n    return x\n"])  # a syntax error still tokenizes


def test_winnow_guarantees_long_matches():
    """Any shared run of K + WINDOW - 1 k-grams shares a fingerprint (the winnowing guarantee)."""
    import random
    rng = random.Random(0)
    for _ in range(50):
        hashes = [rng.getrandbits(64) for _ in range(rng.randrange(1, 80))]
        chosen = similarity.winnow(hashes, 4)
        positions = sorted(p for ps in chosen.values() for p in ps)
        for start in range(len(hashes) - 4 + 1):
            assert any(start <= p < start + 4 for p in positions)


def test_similarity_report_escapes_code_and_names(tmp_path):
    a = student_notebook("03_softmax", {"softmax": INDEPENDENT_A["softmax"] + "\n# <script>alert('a')</script>\n"})
    pa, pb = write(tmp_path, "a", a), write(tmp_path, "b", a)
    pairs = similarity.find_similar([("<b>eve</b>", pa), ("mallory", pb)], "03_softmax")
    assert len(pairs) == 1 and pairs[0].score == 1.0
    out = similarity.write_similarity_report(tmp_path, "03_softmax", pairs, compared=2)
    text = out.read_text()
    assert out.name == "similarity-03_softmax.html"
    assert "<script>" not in text and "&lt;script&gt;" in text and "<b>eve</b>" not in text
    assert "<mark>" in text  # the matching lines are highlighted
    assert_valid_page(text)


# ---------------------------------------------------------------------------------------------
# Reports graded from real notebooks


def grade_class(folder: Path, notebooks: dict[str, dict], assignment: str = "03_softmax") -> list[dict]:
    """Grade ``notebooks`` laid out as an nbgrader submitted/ tree, one student per notebook."""
    for student, notebook in notebooks.items():
        write(folder / "submitted" / student / assignment, assignment, notebook)
    out = folder / "out"
    subprocess.run([PYTHON, "-m", "autograder", "grade", str(folder / "submitted"), "--out", str(out), "--jobs", "1"],
                   check=True, cwd=ROOT, capture_output=True)
    reports = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    for report in reports:  # where each notebook lies, as the CLI tells the similarity report (never in the file)
        report["extra_data"]["notebook"] = str(folder / "submitted" / report["extra_data"]["submission"])
    return reports


@pytest.fixture(scope="module")
def graded(tmp_path_factory) -> list[dict]:
    """Reports of a small class: the reference, the fixture mistakes and three broken submissions."""
    from tests.fixtures import hostile
    from tests.fixtures.submissions import MISTAKES, PASSES
    notebooks = {f.name: f.build() for f in PASSES + MISTAKES if f.assignment == "03_softmax"}
    for case in hostile.CASES:
        if case.name in ("syntax_error_in_softmax_cell",):
            notebooks[case.name] = case.build()
    notebooks["raises_script"] = hostile.with_softmax(
        "raise ValueError('<script>alert(1)</script> in /tmp/grader-x1/work/secret.py')")
    folder = tmp_path_factory.mktemp("class")
    # A truncated upload: not JSON.
    broken = folder / "submitted" / "truncated_upload" / "03_softmax" / "03_softmax.ipynb"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(json.dumps(hostile.reference()).encode()[:300])
    reports = grade_class(folder, notebooks)
    assert sorted(r["extra_data"]["student"] for r in reports) == sorted([*notebooks, "truncated_upload"])
    return reports


def by_name(reports: list[dict], student: str) -> dict:
    [report] = [r for r in reports if r["extra_data"]["student"] == student]
    return report


# A report as the grader shows it could be, with what must never reach a student: grader and library
# frames, hidden-check source lines, temporary and machine paths, and markup in a student's message.
LEAKY_OUTPUT = """cross_entropy agrees with the reference on random sizes and extreme logits.
`cross_entropy` raised an exception:
Traceback (most recent call last):
  File "/home/ta/course/autograder/hidden/test_03_softmax.py", line 74, in test_cross_entropy_hidden
    expected = reference.cross_entropy(SECRET_LOGITS, SECRET_TARGETS)
               ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "<cell 4>", line 9, in cross_entropy
    return -lp[rows, targets].mean() + oops
  File "/usr/lib/python3/dist-packages/torch/_tensor.py", line 41, in wrapped
    return f(*args, **kwargs)
  File "/tmp/autograder-abc123/zygote/worker.py", line 12, in call
    result = fn(*args)
NameError: name 'oops' is not defined <img src=x onerror=alert(1)> (see /tmp/autograder-abc123/work/nb.ipynb, /srv/grading/tina/04.ipynb)
See: https://llm-foundations.github.io/llm-foundations/book/04_softmax.html#cross-entropy-computed-stably"""

LATE = {"timestamp": "2026-11-02T10:00:00+00:00", "due": "2026-11-01T23:59:00+00:00", "seconds_late": 36060,
        "penalty": 1.0}


def leaky_report(base: dict) -> dict:
    report = copy.deepcopy(base)
    [index] = [i for i, t in enumerate(report["tests"]) if t["name"] == "cross_entropy_hidden"]
    report["tests"][index] = dict(report["tests"][index], score=0.0, status="exception", output=LEAKY_OUTPUT)
    report["extra_data"].update(student="tina<i>", submission="tina<i>/03_softmax/03_softmax.ipynb", late=LATE,
                                ignored=[{"path": "tina<i>/03_softmax/Untitled.ipynb",
                                          "reason": "not the assignment's notebook"}])
    report["score"] = report["score"] - report["tests"][index]["max_score"] - LATE["penalty"]
    return report


class Page(HTMLParser):
    """Collects what the tests look at: tags, links, table header scopes, text."""

    def __init__(self):
        super().__init__()
        self.tags, self.links, self.th_scopes, self.text, self.imgs, self.event_handlers = [], [], [], [], [], []
        self.html_lang = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.event_handlers += [name for name in attrs if name.startswith("on")]
        if tag == "html":
            self.html_lang = attrs.get("lang")
        if tag == "a":
            self.links.append(attrs.get("href"))
        if tag == "th":
            self.th_scopes.append(attrs.get("scope"))
        if tag == "img":
            self.imgs.append(attrs)

    def handle_data(self, data):
        self.text.append(data)


def parse(text: str) -> Page:
    p = Page()
    p.feed(text)
    return p


def assert_valid_page(text: str) -> Page:
    p = parse(text)
    assert p.html_lang == "en"
    assert "script" not in p.tags and "<script" not in text.lower() and not p.event_handlers
    assert "h1" in p.tags and all(scope in ("col", "row") for scope in p.th_scopes)
    assert "prefers-color-scheme: dark" in text and "<link" not in text  # inline CSS, light and dark
    return p


def test_feedback_files_one_per_student_and_assignment(graded, tmp_path):
    loose = copy.deepcopy(by_name(graded, "passes_all"))
    loose["extra_data"].update(student=None, submission="/home/ta/inbox/loose_notebook.ipynb")
    reports = graded + [leaky_report(by_name(graded, "passes_all")), loose, copy.deepcopy(loose)]
    paths = feedback.write_feedback(tmp_path, reports)
    assert len(paths) == 2 * len(reports) and len(set(paths)) == len(paths)
    assert tmp_path / "fails_softmax_wrong_axis" / "03_softmax.md" in paths
    assert tmp_path / "tina_i" / "03_softmax.html" in paths  # the student's name, made safe for a file name
    # No student: the submission's name; a second one of the same name does not overwrite the first.
    assert {tmp_path / "loose_notebook" / "03_softmax.md", tmp_path / "loose_notebook" / "03_softmax-2.md"} <= set(paths)
    for path in paths:
        assert path.stat().st_mode & 0o644 == 0o644


def test_feedback_shows_scores_messages_and_book_links(graded, tmp_path):
    report = by_name(graded, "fails_softmax_wrong_axis")
    feedback.write_feedback(tmp_path, [report])
    text = (tmp_path / "fails_softmax_wrong_axis" / "03_softmax.html").read_text()
    p = assert_valid_page(text)
    plain = html.unescape("".join(p.text))
    assert f"Score: {report['score']:g} / {report['max_score']:g}" in plain
    for test in report["tests"]:
        title = test["output"].splitlines()[0]
        assert title in plain and f"{test['score']:g} / {test['max_score']:g}" in plain
    failed = [t for t in report["tests"] if t["status"] != "passed"]
    assert failed
    for test in failed:
        message = test["output"].splitlines()[1]
        if test["visibility"] == "visible":
            assert message in plain
        else:  # a hidden check's inputs and expected values stay out (--hide-hidden-inputs, the default)
            assert feedback.HIDDEN_FAILED in plain
    book_links = [link for link in p.links if link.startswith(BOOK_URL)]
    assert len(book_links) == len(failed)
    md = (tmp_path / "fails_softmax_wrong_axis" / "03_softmax.md").read_text()
    assert f"**Score: {report['score']:g} / {report['max_score']:g}**" in md and f"<{book_links[0]}>" in md


def test_feedback_never_shows_grader_internals(graded, tmp_path):
    report = leaky_report(by_name(graded, "passes_all"))
    feedback.write_feedback(tmp_path, [report], hide_hidden=False)
    for suffix in (".html", ".md"):
        text = (tmp_path / "tina_i" / f"03_softmax{suffix}").read_text()
        plain = html.unescape(text)
        for secret in ("/tmp/", "autograder-abc123", "/home/ta", "/srv/grading", "SECRET_LOGITS", "reference.",
                       "hidden/test_03_softmax.py", "dist-packages", "worker.py", "result = fn"):
            assert secret not in plain, (suffix, secret)
        # What the student needs stays: their own frame and line, the error, the file names.
        for kept in ('File "<cell 4>", line 9, in cross_entropy', "NameError: name 'oops' is not defined",
                     "…/04.ipynb", feedback.TEMP_PATH, feedback.FRAMES_HIDDEN, "10 h 1 min late",
                     "1 point taken off", "Untitled.ipynb"):
            assert kept in plain, (suffix, kept)
    text = (tmp_path / "tina_i" / "03_softmax.html").read_text()
    assert_valid_page(text)
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text and "<i>" not in text
    md = (tmp_path / "tina_i" / "03_softmax.md").read_text()
    assert "tina\\<i\\>" in md  # escaped outside code blocks too


def test_feedback_of_real_exception_escapes_markup(graded, tmp_path):
    report = by_name(graded, "raises_script")
    feedback.write_feedback(tmp_path, [report])
    text = (tmp_path / "raises_script" / "03_softmax.html").read_text()
    assert_valid_page(text)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text and "/tmp/grader-x1" not in text
    assert "ValueError: &lt;script&gt;alert(1)&lt;/script&gt; in &lt;temporary path&gt;" in text


def test_writers_accept_sparse_reports_and_stay_in_their_folder(tmp_path):
    """Reports missing fields, an unknown assignment, a student name that is a path: no crash, no escape."""
    reports = [{"score": 0, "max_score": 0, "tests": []},
               {"tests": [{"name": "x"}], "extra_data": {"submission": "../../x.ipynb"}},
               {"extra_data": {"assignment": None, "student": "../../etc"},
                "tests": [{"name": "a", "score": 1, "max_score": 1, "status": "passed", "output": "A"}]}]
    out = tmp_path / "out"
    written = feedback.write_feedback(out, reports) + summary.write_summary(out, reports)
    assert len(written) == 2 * 3 + 1
    assert all(path.resolve().is_relative_to(out) for path in written)
    assert (out / "etc" / "unknown_assignment.html").exists()
    assert similarity.write_similarity(out, reports) == []  # no assignment, nothing to compare
    assert summary.write_summary(out, []) == [] and feedback.write_feedback(out, []) == []


def test_sanitize_rule():
    s = feedback.sanitize
    assert s("see https://example.org/a/b and </tag>") == "see https://example.org/a/b and </tag>"
    assert s("open('/work/course/solutions/x.ipynb')") == "open('…/x.ipynb')"
    assert s("at /var/tmp/abc/def and C:\\Users\\me\\AppData\\Local\\Temp\\x.py") == (
        f"at {feedback.TEMP_PATH} and {feedback.TEMP_PATH}")
    assert s("a/b and 1/2 and /x") == "a/b and 1/2 and /x"  # relative paths, fractions, one component: kept
    frames = '  File "<cell 2>", line 1, in f\n    x()\n  File "/opt/lib/y.py", line 3, in x\n    y()\n    ^\nE: z'
    assert s(frames) == f'  File "<cell 2>", line 1, in f\n    x()\n  {feedback.FRAMES_HIDDEN}\nE: z'
    assert s(s(frames)) == s(frames)
    assert s("x" * 10_000).endswith("(message cut)")


def test_book_link_must_point_into_the_book():
    test = {"name": "c", "score": 0, "max_score": 1, "status": "failed",
            "output": "title\nwrong\nSee: https://evil.example/phish"}
    assert feedback.parse_test(test).book_url is None
    test["output"] = f"title\nwrong\nSee: {BOOK_URL}book/04_softmax.html#x"
    assert feedback.parse_test(test).book_url == f"{BOOK_URL}book/04_softmax.html#x"


def test_similarity_from_graded_reports(graded, tmp_path):
    """The fixture mistakes are the reference with one line changed: copies of each other, all flagged."""
    [path] = similarity.write_similarity(tmp_path, graded)
    assert path == tmp_path / "similarity-03_softmax.html"
    text = path.read_text()
    assert_valid_page(text)
    plain = html.unescape("".join(parse(text).text))
    assert "passes_all and fails_softmax_wrong_axis" in plain or "fails_softmax_wrong_axis and passes_all" in plain
    assert "truncated_upload: not readable as a notebook" in plain
    assert "Submissions compared: 7." in plain


def test_summary_numbers_equal_the_reports(graded, tmp_path):
    import statistics
    reports = graded + [leaky_report(by_name(graded, "passes_all"))]
    s = summary.summarise(reports)["03_softmax"]
    scores = [r["score"] for r in reports]
    assert s["submissions"] == len(reports) == 9
    assert s["mean"] == pytest.approx(statistics.fmean(scores)) and s["median"] == statistics.median(scores)
    assert (s["min"], s["max"]) == (min(scores), max(scores))
    assert sum(d["count"] for d in s["distribution"]) == len(reports)
    assert s["distribution"][-1]["count"] == scores.count(s["max_score"]) >= 1
    for check in s["checks"]:
        results = [t for r in reports for t in r["tests"] if t["name"] == check["name"]]
        assert check["passed"] == sum(t["status"] == "passed" for t in results)
        assert check["submissions"] == len(results)
        assert sum(check["statuses"].values()) == len(results)
    assert [u["submission"] for u in s["ungradable"]] == ["truncated_upload (truncated_upload/03_softmax/03_softmax.ipynb)"]
    assert [(x["seconds_late"], x["penalty"]) for x in s["late"]] == [(36060, 1.0)]
    # The wrong-axis mistake's softmax_public failure is counted under its message's first line.
    wrong_axis = by_name(reports, "fails_softmax_wrong_axis")
    [test] = [t for t in wrong_axis["tests"] if t["name"] == "softmax_public"]
    line = test["output"].splitlines()[1]
    [group] = [f for f in s["failures"] if (f["check"], f["message"]) == ("softmax_public", line)]
    holders = [r["extra_data"]["student"] for r in reports for t in r["tests"]
               if t["name"] == "softmax_public" and t["output"].splitlines()[1:2] == [line]]
    assert group["count"] == len(holders) >= 1
    assert [label.split(" ")[0] for label in group["submissions"]] == sorted(holders)
    # Every failure counted once: the counts add up to the failed (gradable) results.
    failed = sum(t["status"] not in ("passed", "invalid_notebook", "crashed") for r in reports for t in r["tests"])
    assert sum(f["count"] for f in s["failures"]) == failed or len(s["failures"]) == summary.TOP_FAILURES


def test_summary_page_shows_the_same_numbers(graded, tmp_path):
    reports = graded + [leaky_report(by_name(graded, "passes_all"))]
    [path] = summary.write_summary(tmp_path, reports)
    assert path.name == "summary-03_softmax.html"
    text = path.read_text()
    p = assert_valid_page(text)
    s = summary.summarise(reports)["03_softmax"]
    cells = [c.strip() for c in p.text if c.strip()]
    assert cells[cells.index("out of") + 1:cells.index("out of") + 7] == [
        str(s["submissions"]), f"{s['mean']:.2f}", f"{s['median']:g}", f"{s['min']:g}", f"{s['max']:g}",
        f"{s['max_score']:g}"]
    for check in s["checks"]:
        assert f"{check['passed']} / {check['submissions']}" in cells
    # Two figures, each an inline SVG image with alt text; no file or network fetch.
    assert len(p.imgs) == 2
    for img in p.imgs:
        assert img["src"].startswith("data:image/svg+xml;base64,") and len(img["alt"]) > 40
    # Each figure is well-formed SVG with one bar per row of its table, each as long as its number says.
    import base64
    import xml.etree.ElementTree as ET

    scores_svg, rates_svg = (ET.fromstring(base64.b64decode(img["src"].split(",", 1)[1])) for img in p.imgs)
    svg = "{http://www.w3.org/2000/svg}"
    bars = [r for r in scores_svg.iter(f"{svg}rect") if r.get("width") != "100%"]
    assert len(bars) == len(s["distribution"])
    heights = [float(b.get("height")) for b in bars]
    busiest = max(range(len(bars)), key=lambda i: s["distribution"][i]["count"])
    assert all(h <= heights[busiest] for h in heights)
    rates = [float(r.get("width")) for r in rates_svg.iter(f"{svg}rect") if r.get("width") != "100%"]
    assert len(rates) == len(s["checks"])
    full = max(rates) / max(c["pass_rate"] for c in s["checks"])
    assert rates == pytest.approx([full * c["pass_rate"] for c in s["checks"]], abs=0.1)
    assert "&lt;script&gt;" in text  # the student's message, escaped, among the common failures
    assert summary.summary_html(s) == text  # the same reports give the same page


def test_first_meaningful_line():
    f = summary.first_meaningful_line
    assert f("`f` raised an exception:\n  File \"<cell 1>\", line 1\n    x\nKeyError: 'a'", "exception") == "KeyError: 'a'"
    assert f("\nf(x) returned wrong values.\n  input: ...", "failed") == "f(x) returned wrong values."
    assert f("", "timeout") == "ran out of time"


@pytest.mark.slow
def test_independent_solutions_are_correct(tmp_path):
    """The independent solutions the similarity test relies on earn full marks from the grader."""
    reports = grade_class(tmp_path, {name: student_notebook("03_softmax", code) for name, code
                                     in (("independent_a", INDEPENDENT_A), ("independent_b", INDEPENDENT_B))})
    assert len(reports) == 2
    for report in reports:
        assert report["score"] == report["max_score"], [t["output"] for t in report["tests"] if t["status"] != "passed"]


def copydetect_scores(window: int = 1) -> dict[str, tuple[float, float]]:
    """copydetect 0.5.0's scores for every pair of the similarity class (the comparison in
    autograder/outputs/similarity.py's docstring). Needs ``pip install copydetect==0.5.0``; not a test."""
    import io
    import itertools
    import logging
    import tempfile

    import numpy as np
    from copydetect import CodeFingerprint, compare_files

    logging.disable(logging.WARNING)  # copydetect warns about empty slices
    paths = similarity_class(Path(tempfile.mkdtemp()))
    noise = 25  # copydetect's default noise threshold (characters of filtered code)
    starter = "\n\n".join(similarity.all_code_cells(released("03_softmax")))
    boilerplate = np.unique(np.array(list(CodeFingerprint("starter.py", noise, 1, fp=io.StringIO(starter)).hashes)))
    prints = {name: CodeFingerprint(f"{name}.py", noise, window, boilerplate=boilerplate,
                                    fp=io.StringIO("\n\n".join(similarity.own_cells(json.loads(p.read_text())))))
              for name, p in sorted(paths.items())}
    scores = {}
    for a, b in itertools.combinations(sorted(prints), 2):
        _, (sa, sb), _ = compare_files(prints[a], prints[b])
        scores[f"{a} / {b}"] = (round(float(sa), 3), round(float(sb), 3))
    return scores


if __name__ == "__main__" and sys.argv[1:2] == ["copydetect"]:
    # PYTHONHASHSEED=1 .venv/bin/python -m tests.test_instructor_reports copydetect [WINDOW]
    for pair, (sa, sb) in copydetect_scores(int(sys.argv[2]) if len(sys.argv) > 2 else 1).items():
        print(f"{sa:6.3f} {sb:6.3f}  {pair}")
