"""What a student sees: checks that name the real mistake, stop a hang, and let Run All go on."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

import autograder
from autograder.grading import expect
from autograder.grading.api import CheckFailure, LocalSubmission
from autograder.grading.registry import BOOK_URL, assignment_of_target, assignments, checks_for, load_checks
from tests.conftest import HTML, ROOT
from tools.exercises import solution_namespace as namespace


def outcome(names: dict, check_id: str) -> tuple[str, str]:
    entry = next(c for c in load_checks() if c.id == check_id)
    return autograder.run_one(entry, LocalSubmission(names), names, 10.0)


# ---------------------------------------------------------------- what loading a state_dict hid


TINY_GPT_MISTAKES = {
    "untied": ("        self.lm_head.weight = self.tok_emb.weight\n", "",
               "TinyGPT_parameters_public", "failed", "not tied to tok_emb.weight"),
    "copied_not_tied": ("        self.lm_head.weight = self.tok_emb.weight\n",
                        "        with torch.no_grad():\n            self.lm_head.weight.copy_(self.tok_emb.weight)\n",
                        "TinyGPT_parameters_public", "failed", "copying the values is not tying"),
    "no_init": ("        self.apply(self._init_weights)\n", "",
                "TinyGPT_init_public", "failed", "_init_weights draws every nn.Linear and Embedding weight"),
    "count_raises": ("        return sum(p.numel() for p in self.parameters())",
                     "        raise NotImplementedError()",
                     "TinyGPT_parameters_public", "not_implemented", "`TinyGPT.num_parameters` is not written yet"),
    "count_twice": ("        return sum(p.numel() for p in self.parameters())",
                    "        return sum(p.numel() for p in self.state_dict().values())",
                    "TinyGPT_parameters_public", "failed", "counted the tied table twice"),
}


@pytest.mark.parametrize("mistake", list(TINY_GPT_MISTAKES))
def test_tiny_gpt_parts_hidden_by_loading_weights_fail_with_the_reason(mistake):
    old, new, check_id, status, phrase = TINY_GPT_MISTAKES[mistake]
    names = namespace("06_tiny_gpt", "TinyGPT", old, new)
    assert outcome(names, "TinyGPT_public")[0] == "passed"  # the forward pass with loaded weights cannot tell
    got_status, message = outcome(names, check_id)
    assert (got_status, phrase in message) == (status, True), message


def test_reference_passes_every_check():
    for assignment in assignments():
        names = namespace(assignment)
        for entry in checks_for(assignment):
            assert outcome(names, entry.id)[0] == "passed", entry.id


# ---------------------------------------------------------------- the cause, not the symptom


def test_wrong_attention_under_a_correct_multi_head_names_the_attention():
    """A correct MultiHeadAttention over a wrong attention passes with the reference attention in its place,
    and its note names the attention and what the attention's own check finds."""
    names = namespace("04_attention", "causal_mask_scaled_dot_product_attention",
                      "scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)", "scores = q @ k.transpose(-2, -1)")
    for check_id in ("MultiHeadAttention_public", "MultiHeadAttention_hidden"):
        status, message = outcome(names, check_id)
        assert status == "passed"
        assert message.startswith("passes with the reference `scaled_dot_product_attention` "
                                  "(tinyllm.attention.scaled_dot_product_attention) in place of yours: yours fails "
                                  "its own check (scaled_dot_product_attention_public)"), message
        assert "sqrt(d_k)" in message and "split" not in message.lower()
    assert outcome(names, "scaled_dot_product_attention_public")[0] == "failed"


def test_wrong_layer_norm_is_named_by_the_block_check():
    names = namespace("05_transformer_layer", "layer_norm", "var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)",
                      "var = x.var(dim=-1, keepdim=True)")
    status, message = outcome(names, "TransformerBlock_public")
    assert status == "passed" and message.startswith("passes with the reference `layer_norm`"), message
    assert "unbiased variance" in outcome(names, "layer_norm_public")[1]


def test_a_correct_dependency_is_not_blamed():
    names = namespace("04_attention", "MultiHeadAttention", "merged = heads.transpose(1, 2).contiguous().view(B, T, C)",
                      "merged = heads.contiguous().view(B, T, C)")
    status, message = outcome(names, "MultiHeadAttention_public")
    assert status == "failed" and "is the cause" not in message and "transpose" in message


def test_an_unwritten_helper_is_named_by_the_check_that_calls_it():
    names = namespace("03_softmax", "logsumexp_log_softmax_cross_entropy",
                      "    peak = logits.amax(dim=dim, keepdim=True)\n", "    raise NotImplementedError()\n")
    status, message = outcome(names, "cross_entropy_public")
    assert status == "passed" and "passes with the reference `log_softmax`" in message, message
    assert "passes with the reference `logsumexp`" in message and "`logsumexp` is not written yet" in message


# ---------------------------------------------------------------- separate checks for the helpers


def test_overlapping_merge_gets_its_own_hint():
    names = namespace("01_tokenization", "pair_counts_merge_pair", "i += 2  # occurrences", "i += 1  # occurrences")
    status, message = outcome(names, "merge_pair_public")
    assert status == "failed" and "the scan must go on at i + 2" in message, message
    status, message = outcome(names, "train_bpe_public")
    assert status == "passed" and message.startswith("passes with the reference `merge_pair`"), message


def test_pair_counts_in_the_wrong_order_says_so():
    names = namespace("01_tokenization", "pair_counts_merge_pair", "return counts",
                      "return dict(sorted(counts.items()))")
    status, message = outcome(names, "pair_counts_public")
    assert status == "failed" and "the order is not" in message, message


def test_logsumexp_without_keepdim_is_told_to_keep_the_dimension():
    names = namespace("03_softmax", "logsumexp_log_softmax_cross_entropy",
                      "torch.exp(logits - peak).sum(dim=dim, keepdim=True))",
                      "torch.exp(logits - peak).sum(dim=dim, keepdim=True)).squeeze(dim)")
    status, message = outcome(names, "logsumexp_public")
    assert status == "failed" and "Keep the reduced dimension" in message, message


# ---------------------------------------------------------------- showing the difference


def test_the_row_with_the_first_wrong_entry_is_printed_with_its_input():
    x = torch.arange(60, dtype=torch.float32).reshape(6, 10) / 10
    expected = torch.softmax(x, dim=-1)
    got = expected.clone()
    got[3, 4] += 0.5
    with pytest.raises(CheckFailure) as failure:
        expect.close(got, expected, "softmax(x)", x)
    lines = failure.value.message.splitlines()
    assert lines[2] == "  its row 3: [3, 3.1, 3.2, 3.3, 3.4, 3.5, 3.6, 3.7, 3.8, 3.9]"
    assert lines[3].startswith("  expected row 3: [") and lines[4].startswith("  got      row 3: [")
    assert f"{got[3, 4].item():.4g}" in lines[4] and f"{got[3, 4].item():.4g}" not in lines[3]
    assert "first wrong entry at index (3, 4)" in failure.value.message


def test_a_small_tensor_is_printed_whole():
    with pytest.raises(CheckFailure) as failure:
        expect.close(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[1.0, 2.0], [3.0, 5.0]]), "f(x)")
    assert "expected [[1, 2], [3, 5]]" in failure.value.message
    assert "got      [[1, 2], [3, 4]]" in failure.value.message


def test_the_top_k_tie_check_shows_its_input():
    exactly_k = ("keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, torch.topk(logits, k, dim=-1)"
                 ".indices, True)\n    return logits.masked_fill(~keep, float(\"-inf\"))")
    names = namespace("06_tiny_gpt", "top_k_filter", 'return logits.masked_fill(logits < kth_largest, float("-inf"))',
                      exactly_k)
    status, message = outcome(names, "top_k_filter_public")
    assert status == "failed" and "input: [[1, 5, 3, 2], [0, 2, 2, -1]]" in message, message


# ---------------------------------------------------------------- a time limit in the notebook


HANGING_MERGE = ("            i += 2  # occurrences never overlap: \"aaa\" with (a, a) gives [aa, a]\n",
                 "            pass  # forgot to advance\n")


def test_a_hanging_helper_is_stopped_and_named():
    names = namespace("01_tokenization", "pair_counts_merge_pair", *HANGING_MERGE)
    entry = next(c for c in load_checks() if c.id == "train_bpe_public")
    start = time.monotonic()
    status, message = autograder.run_one(entry, LocalSubmission(names), names, 1.0)
    assert time.monotonic() - start < 3.0
    assert status == "timeout"
    assert message.startswith("`merge_pair` (called from `train_bpe`) did not return within 1 s"), message


def test_a_loop_that_swallows_the_first_stop_is_stopped_by_the_next():
    from autograder.grading.timelimit import TimeLimitExceeded, time_limit

    names: dict = {}
    exec("def stubborn():\n    for _ in range(3):\n        try:\n            while True:\n                pass\n"
         "        except BaseException:\n            pass\n    while True:\n        pass\n", names)
    start = time.monotonic()
    with pytest.raises(TimeLimitExceeded) as stop:
        with time_limit(0.5, names):
            names["stubborn"]()
    assert stop.value.stack == ["stubborn"] and time.monotonic() - start < 4.0


def test_the_time_limit_works_outside_the_main_thread_too():
    names = namespace("01_tokenization", "pair_counts_merge_pair", *HANGING_MERGE)
    entry = next(c for c in load_checks() if c.id == "merge_pair_public")
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        out=autograder.run_one(entry, LocalSubmission(names), names, 1.0)))
    worker.start()
    worker.join(timeout=20)
    assert not worker.is_alive()
    status, message = result["out"]
    assert status == "timeout" and message.startswith("`merge_pair` did not return within 1 s"), message


def test_the_time_limit_restores_the_previous_alarm():
    import signal

    names = namespace("01_tokenization")
    fired = []
    previous = signal.signal(signal.SIGALRM, lambda *a: fired.append(1))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.5)
        entry = next(c for c in load_checks() if c.id == "merge_pair_public")
        assert autograder.run_one(entry, LocalSubmission(names), names, 5.0)[0] == "passed"
        time.sleep(0.8)
        assert fired == [1]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------- Run All in the notebook, failure when graded


def test_a_failing_check_prints_and_returns_in_a_notebook_but_raises_when_graded(monkeypatch, capsys):
    names = namespace("03_softmax", "softmax", "dim=dim", "dim=0")
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    monkeypatch.delenv("AUTOGRADER_STRICT", raising=False)
    assert autograder.run_local("softmax", names, hidden=False) is False
    printed = capsys.readouterr().out
    assert printed.startswith("\u2717 softmax_public (2 points)") and "See: " + BOOK_URL in printed
    assert "sum to 1 down the columns (dim 0)" in printed  # the hint the failure calls for
    for variable, value in (("NBGRADER_EXECUTION", "autograde"), ("NBGRADER_EXECUTION", "validate"),
                            ("AUTOGRADER_STRICT", "1")):
        with monkeypatch.context() as env:
            env.setenv(variable, value)
            with pytest.raises(autograder.ChecksFailed, match="softmax: 1 of 1 checks failed"):
                autograder.run_local("softmax", names, hidden=False)


@pytest.mark.slow
def test_unfinished_exercise_runs_to_the_end_yet_scores_zero(tmp_path):
    """Run All (nbclient, allow_errors=False) reaches the end; nbgrader autograde and our grader give 0."""
    import nbformat
    from nbclient import NotebookClient

    from tests.nbgrader_course import Course

    assignment = "01_tokenization"
    released = ROOT / "exercises" / assignment / f"{assignment}.ipynb"
    notebook = nbformat.read(released, as_version=4)
    NotebookClient(notebook, timeout=120, kernel_name="python3", allow_errors=False,
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    public = [c.id for c in checks_for(assignment, include_hidden=False)]
    assert all(f"\u2717 {check_id}" in outputs for check_id in public)
    assert "is not written yet" in outputs and "Traceback" not in outputs

    course = Course(tmp_path / "course")
    course.release(assignment)
    course.submit("blank", assignment, released)
    scores = course.autograde(assignment, "blank")
    assert set(scores) == {c.id for c in checks_for(assignment)} and sum(scores.values()) == 0

    out = tmp_path / "grades"
    result = subprocess.run([sys.executable, "-m", "autograder", "grade", str(released), "--out", str(out), "--quiet"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(next(out.glob("*.json")).read_text())
    assert report["score"] == 0 and {t["status"] for t in report["tests"]} == {"not_implemented"}


# ---------------------------------------------------------------- links and latency


def section_ids(source: Path) -> set[str]:
    """The ids Sphinx gives the sections of a MyST chapter (docutils' make_id of each heading), and its labels."""
    from docutils.nodes import make_id

    text = re.sub(r"^```\{code-cell\}.*?^```\s*$", "", source.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {make_id(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)} | set(
        re.findall(r"^\(([\w-]+)\)=\s*$", text, flags=re.M))


def test_every_see_link_goes_to_a_section_that_exists():
    for entry in load_checks():
        page, _, anchor = entry.book.partition("#")
        assert anchor, f"{entry.id}: links to the page {page}, not to a section"
        source = ROOT / page.replace(".html", ".md")
        assert source.exists(), f"{entry.id}: {page} is not a chapter"
        assert anchor in section_ids(source), f"{entry.id}: {source.name} has no section #{anchor}"
        built = HTML / page
        if built.exists():  # after a build: the anchor is in the page itself
            assert f'id="{anchor}"' in built.read_text(encoding="utf-8"), f"{entry.id}: no #{anchor} in {page}"


@pytest.mark.alone  # reads CPU time, which grows when the other test process shares the cores
def test_every_public_check_answers_within_a_second():
    """CPU seconds of this process (the checks run in it): what a student waits for on a quiet machine,
    whatever else the test machine runs beside this test.

    CPU time still grows when the cores are shared (caches, the other hyperthread): a CI run beside the
    other test process measured 1.03 s for a check whose median is 0.72 s on a quiet machine (bench_checks).
    So a check over the limit runs twice more and keeps its fastest time, as ``timeit`` does; a check that
    is slow every time still fails.
    """
    slow = []
    for assignment in assignments():
        names = namespace(assignment)
        for entry in checks_for(assignment, include_hidden=False):
            times = []
            while len(times) < 3 and (not times or min(times) >= 1.0):
                start = time.process_time()
                status, _ = autograder.run_one(entry, LocalSubmission(names), names, 10.0)
                times.append(time.process_time() - start)
                assert status == "passed", entry.id
            if min(times) >= 1.0:
                slow.append(f"{entry.id}: {', '.join(f'{t:.2f}' for t in times)} s")
    assert not slow, slow



# ---------------------------------------------------------------- one mistake, charged once

ROPE_ROTATE_HALF = ("    x_even, x_odd = x[..., 0::2], x[..., 1::2]  # (..., T, d/2): the two halves of each pair\n"
                    "    rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)\n"
                    "    return rotated.flatten(-2)",
                    "    x_even, x_odd = x[..., : d // 2], x[..., d // 2 :]\n"
                    "    return torch.cat((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)")


def test_code_that_calls_a_wrong_dependency_passes_with_the_reference_in_its_place():
    names = namespace("07_modern_block", "apply_rope", *ROPE_ROTATE_HALF)
    mine = names["apply_rope"]
    assert outcome(names, "apply_rope_public")[0] == "failed"
    for check_id in ("GroupedQueryAttention_public", "GroupedQueryAttention_hidden", "LlamaBlock_public",
                     "LlamaBlock_hidden"):
        status, message = outcome(names, check_id)
        assert status == "passed", (check_id, message)
        assert "passes with the reference `apply_rope`" in message and "(apply_rope_public)" in message, message
        assert "rotate_half layout" in message, message  # what the dependency's own check finds
        assert names["apply_rope"] is mine  # put back: the next check runs on the student's own


def test_a_check_that_fails_with_the_reference_too_keeps_its_failure():
    names = namespace("07_modern_block", "apply_rope", *ROPE_ROTATE_HALF)
    exec(compile("_forward = GroupedQueryAttention.forward\n"
                 "def forward(self, x, cache=None):\n    return 2 * _forward(self, x, cache)\n"
                 "GroupedQueryAttention.forward = forward\n", "<cell>", "exec"), names)
    status, message = outcome(names, "GroupedQueryAttention_public")
    assert status == "failed" and message.startswith("your `apply_rope` is the cause"), message


def test_a_timeout_is_not_run_again_with_the_reference():
    names = namespace("07_modern_block", "apply_rope", *ROPE_ROTATE_HALF)
    exec(compile("def forward(self, x, cache=None):\n    while True:\n        pass\n"
                 "GroupedQueryAttention.forward = forward\n", "<cell>", "exec"), names)
    entry = next(c for c in load_checks() if c.id == "GroupedQueryAttention_public")
    start = time.perf_counter()
    status, message = autograder.run_one(entry, LocalSubmission(names), names, 1.0)
    assert status == "timeout" and time.perf_counter() - start < 1.9, message


def test_the_wrong_exception_costs_the_error_contract_check_alone():
    names = namespace("07_modern_block", "apply_rope",
                      "    if d % 2 != 0:\n        raise ValueError(f\"the feature dimension must be even (pairs are "
                      "rotated), got {d}\")\n", "    assert d % 2 == 0, f\"the feature dimension must be even, got {d}\"\n")
    failed = {c.id: outcome(names, c.id) for c in checks_for("07_modern_block")}
    failed = {k: v for k, v in failed.items() if v[0] != "passed"}
    assert list(failed) == ["apply_rope_errors_public"], failed
    assert "should raise ValueError, but" in failed["apply_rope_errors_public"][1]


def test_error_contracts_are_checked_apart_from_values():
    """A check that asks for an exception (expect.raises) asks for nothing else, and no other check of the same
    name asks for it again: the wrong exception costs one check's points."""
    mixed = []
    for entry in load_checks():  # every assignment, hidden checks included
        source = inspect.getsource(entry.function)
        asks_values = re.search(r"expect\.(?!raises)|CheckFailure\(", source)
        if "expect.raises" in source and ("_errors_" not in entry.id or asks_values):
            mixed.append(entry.id)
    assert not mixed, mixed


def blamed_by(entry) -> set[str]:
    """The functions of the notebook a check's ``expect.blame`` names."""
    names = set()
    for call in re.findall(r"expect\.blame\(sub, ([^)]*)\)", inspect.getsource(entry.function)):
        names |= set(re.findall(r'"(\w+)"', call))
    return names


def test_every_reference_can_stand_in_wherever_it_is_blamed():
    """Each check that blames functions passes on the reference solution with the references of all of them in
    their place: a reference calls nothing the check forbids the student (tinyllm.bpe.pre_split calls the forbidden
    split_pattern) and fits the code that calls it."""
    references = {c.target: c.reference for c in load_checks(include_hidden=False) if c.reference}
    ran, misfits = [], {}
    for assignment in assignments():
        names = namespace(assignment)
        for entry in checks_for(assignment):
            blamed = blamed_by(entry)
            if not blamed:
                continue
            submission = LocalSubmission(names)
            try:
                with submission.substituted({name: references[name] for name in blamed}):
                    entry.function(submission)
            except CheckFailure as failure:  # the stand-in does not fit the code that calls it
                misfits[entry.id] = failure.message
            ran.append(entry.id)
    assert len(ran) >= 20, ran  # every assignment's blaming checks, not an empty loop
    assert not misfits, misfits


def test_a_block_passes_with_the_reference_rms_norm_that_it_may_not_call_itself():
    names = namespace("07_modern_block", "rms_norm", "    rms = torch.sqrt(",
                      "    x = x - x.mean(dim=-1, keepdim=True)\n    rms = torch.sqrt(")
    status, message = outcome(names, "LlamaBlock_public")
    assert status == "passed" and "passes with the reference `rms_norm`" in message and "layer norm" in message
    names["rms_norm"] = names["F"].rms_norm  # calling the library's own is still forbidden outside a substitution
    assert outcome(names, "LlamaBlock_public")[0] == "forbidden"


def test_each_reference_is_the_object_its_solution_cell_is_made_from():
    """reference= on a public check names the library object the recipe's solution cell copies (`# from:`),
    and each function that a check of any assignment blames has one."""
    from tools.exercises import RECIPES, _paths

    declared = {c.target: c.reference for c in load_checks(include_hidden=False) if c.reference}
    assert declared
    for target, reference in declared.items():
        recipe = (RECIPES / f"{assignment_of_target(target)}.md").read_text(encoding="utf-8")
        sources = [path for path in _paths(recipe) if path.rsplit(":", 1)[1] == target]
        assert sources == [reference], (target, reference, sources)
    blamed = set().union(*(blamed_by(entry) for entry in load_checks()))  # every assignment, hidden checks too
    assert blamed and blamed <= set(declared), blamed - set(declared)
