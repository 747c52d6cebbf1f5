"""Grading strength: every sentence of an exercise is a check, measured by the mistakes it catches.

* The contract tables (autograder/contracts/<assignment>.toml) classify every sentence of every
  notebook's instructions, and a constraining sentence names the public check(s) that fail when
  it is broken (tools/contracts.py).
* Mutants of the reference solutions, graded by the real grader, are killed unless listed as
  equivalent with a reason (tools/mutation.py; bench/bench_mutation.py grades them all).
* The notebook and the grader give the same verdict and the same message for code that changes
  its inputs, keeps state between calls, or shares state between instances (tests/test_exercises.py,
  which grades those fixtures with the grader and nbgrader too).
"""

from __future__ import annotations

import json

import pytest

import autograder
from autograder.grading.api import LocalSubmission
from autograder.grading.registry import checks_for, load_checks
from tests.conftest import ROOT
from tools import contracts, mutation

ASSIGNMENTS = mutation.assignments()


# ---------------------------------------------------------------- the contract tables

@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_every_sentence_of_the_notebook_is_in_its_contract_table(assignment):
    """A new sentence, a changed one or a vanished one fails here until the table says which checks enforce it."""
    found = contracts.problems(assignment, {c.id: c.hidden for c in checks_for(assignment)})
    assert not found, "\n".join(found)


def test_contract_sentences_are_split_as_a_reader_reads_them():
    text = """`f(x)` does this. It returns `x` (e.g. 3), as `g` does: see $y$.

$$
a = b
$$

- one item;
- another. With two sentences."""
    assert contracts._sentences(text) == ["`f(x)` does this.", "It returns `x` (e.g. 3), as `g` does: see $y$.",
                                          "$$ a = b $$", "one item;", "another.", "With two sentences."]


BREAKS = [(assignment, entry["text"], brk) for assignment in ASSIGNMENTS
          for entry in contracts.table(assignment).get("sentence", []) for brk in entry.get("breaks", [])]


@pytest.mark.slow
@pytest.mark.parametrize("assignment, sentence, brk", BREAKS, ids=lambda v: v if isinstance(v, str) and len(v) < 30
                         else None)
def test_breaking_a_contract_sentence_fails_its_checks(assignment, sentence, brk):
    """Each listed violation of a sentence fails the checks it names (all the sentence's, unless it says which:
    some of them, a public one among them), in the notebook."""
    from tools.exercises import solution_namespace

    entry = next(e for e in contracts.table(assignment)["sentence"] if e["text"] == sentence)
    expected = brk.get("fails", entry["checks"])
    checks = {c.id: c for c in load_checks()}
    assert set(expected) <= set(entry["checks"]) and any(not checks[c].hidden for c in expected)
    names = solution_namespace(assignment, brk["cell"], brk["old"], brk["new"])
    passed = [check_id for check_id in expected
              if autograder.run_one(checks[check_id], LocalSubmission(names), names, 10.0)[0] == "passed"]
    assert not passed, f"{assignment}: breaking {sentence!r} ({brk['new']!r}) still passes {passed}"


# ---------------------------------------------------------------- mutation testing

def test_mutants_change_only_the_code_a_student_writes():
    """Between the solution markers, never a raise statement, a docstring or a decorator."""
    found = mutation.mutants("07_modern_block")
    assert len(found) > 100
    cells = dict(mutation.solution_cells("07_modern_block"))
    for mutant in found:
        original = cells[mutant.cell].split("\n")
        changed = mutant.source.split("\n")
        inside = False
        for before, after in zip(original, changed):
            if "### BEGIN SOLUTION" in before:
                inside = True
            elif "### END SOLUTION" in before:
                inside = False
            if before != after:
                assert inside and "raise " not in before and not before.lstrip().startswith(("@", '"""')), mutant.key
    keys = [m.key for m in found]
    assert len(keys) == len(set(keys)), "two mutants share a key"
    decorated = [m for m in mutation.mutants("08_fast_generation") if m.function == "beam_search"]
    assert decorated and all("@torch.no_grad()" in m.source for m in decorated)


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_listed_equivalent_mutants_exist_and_say_why(assignment):
    keys = {m.key for m in mutation.mutants(assignment)}
    for key, reason in mutation.equivalents(assignment).items():
        assert key in keys, f"{assignment}: listed as equivalent, but no mutant is {key!r} (the reference changed?)"
        assert len(reason.split()) >= 5, f"{assignment}: say why {key!r} behaves as the contract asks"


SAMPLE = 1  # mutants per assignment (MUTATION_SAMPLE=N grades more), drawn afresh from the seed of each run


@pytest.mark.slow
def test_a_seeded_sample_of_mutants_is_killed():
    """Mutants the grader must kill, a few per assignment: a weakened check fails here.

    The sample is seeded (MUTATION_SEED=N draws another, MUTATION_SAMPLE=N grades N per assignment);
    ``python bench/bench_mutation.py`` grades all of them.
    """
    import os

    seed = int(os.environ.get("MUTATION_SEED", "0"))
    count = int(os.environ.get("MUTATION_SAMPLE", SAMPLE))
    chosen = [m for assignment in ASSIGNMENTS for m in mutation.sample(mutation.mutants(assignment), count, seed)]
    outcomes = mutation.grade(chosen, jobs=2, timeout=5.0)
    survivors = [o.mutant for o in outcomes if not o.killed]
    assert not survivors, (f"seed {seed}: mutants no check kills (list them as equivalent in "
                           "autograder/contracts/<assignment>.toml, with the reason, only if they behave as the "
                           "contract asks):\n" + "\n".join(f"{m.assignment}  {m.key}" for m in survivors))


# ---------------------------------------------------------------- in the notebook

def test_a_function_that_changes_its_input_fails_in_the_notebook_with_the_input_named():
    from tools.exercises import solution_namespace

    names = solution_namespace("07_modern_block", "rms_norm", "    return x / rms * weight",
                               "    return x.div_(rms).mul_(weight)")
    entry = next(c for c in load_checks() if c.id == "rms_norm_public")
    status, message = autograder.run_one(entry, LocalSubmission(names), names, 10.0)
    assert status == "failed" and message.startswith("your `rms_norm` changed its input `x` in place"), message


def test_the_progress_cell_prints_public_points_and_what_is_left(capsys):
    from tools.exercises import solution_namespace

    names = solution_namespace("09_training", "cosine_lr", "return min_lr + (lr - min_lr) * cosine",
                               "return lr * cosine")
    exec("from autograder import progress\nprogress('09_training')", names)
    printed = capsys.readouterr().out.strip()
    points = {c.target: 0.0 for c in checks_for("09_training", include_hidden=False)}
    for c in checks_for("09_training", include_hidden=False):
        points[c.target] += c.points
    total = sum(points.values())
    assert printed == f"{total - points['cosine_lr']:g} of {total:g} public points; left: cosine_lr.", printed


def test_every_exercise_notebook_ends_with_its_progress_cell():
    for assignment in ASSIGNMENTS:
        notebook = json.loads((ROOT / "exercises" / assignment / f"{assignment}.ipynb").read_text())
        last = notebook["cells"][-1]
        assert "".join(last["source"]).endswith(f'progress("{assignment}")'), assignment
        assert last["metadata"]["nbgrader"]["locked"] and not last["metadata"]["nbgrader"]["grade"]
