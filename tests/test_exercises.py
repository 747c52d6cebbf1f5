"""The exercise notebooks: generated from the library, graded by nbgrader and by our grader alike."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest

from autograder.grading.registry import assignments, checks_for
from tests.conftest import ROOT
from tests.fixtures.submissions import MAX, MISTAKES, STRENGTH, all_fixtures
from tests.nbgrader_course import Course
from tools import exercises

FIXTURES = all_fixtures()
NON_HOSTILE = FIXTURES


def test_solution_notebooks_are_current():
    problems = exercises.stale()
    assert not problems, "\n".join(problems)


@pytest.mark.slow
def test_student_notebooks_are_what_nbgrader_generates(tmp_path):
    generated = exercises.release(tmp_path)
    for path in generated:
        committed = ROOT / "exercises" / path.relative_to(tmp_path)
        assert committed.exists(), f"{committed.relative_to(ROOT)} is missing: run `make exercises`"
        assert committed.read_bytes() == path.read_bytes(), \
            f"{committed.relative_to(ROOT)} is stale: run `make exercises`"


def solution_lines(assignment: str) -> list[str]:
    """Every non-trivial line between BEGIN/END SOLUTION markers in the instructor notebook."""
    notebook = json.loads((ROOT / "solutions" / assignment / f"{assignment}.ipynb").read_text())
    lines = []
    for cell in notebook["cells"]:
        inside = False
        for line in "".join(cell["source"]).splitlines():
            if "### BEGIN SOLUTION" in line:
                inside = True
            elif "### END SOLUTION" in line:
                inside = False
            elif inside and len(line.strip()) > 12 and not line.strip().startswith("#"):
                lines.append(line.strip())
    assert lines
    return lines


@pytest.mark.parametrize("assignment", list(assignments()))
def test_student_notebook_has_no_solution_or_hidden_check(assignment):
    text = (ROOT / "exercises" / assignment / f"{assignment}.ipynb").read_text()
    notebook = json.loads(text)
    everything = json.dumps(notebook)  # every cell's source and all metadata
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "run_hidden", "autograder.hidden"):
        assert marker not in everything, f"{assignment}: the student notebook contains {marker!r}"
    sources = "\n".join("".join(cell["source"]) for cell in notebook["cells"])
    leaked = [line for line in solution_lines(assignment) if line in sources]
    assert not leaked, f"{assignment}: solution code in the student notebook: {leaked[:3]}"
    for cell in notebook["cells"]:
        meta = cell["metadata"].get("nbgrader", {})
        if meta.get("grade") and not meta.get("solution"):
            assert meta.get("locked") and "checksum" in meta, f"{assignment}: test cell {meta.get('grade_id')} unlocked"


def test_nbgrader_metadata_is_valid():
    for assignment in assignments():
        notebook = json.loads((ROOT / "solutions" / assignment / f"{assignment}.ipynb").read_text())
        ids = [c["metadata"]["nbgrader"]["grade_id"] for c in notebook["cells"] if "nbgrader" in c["metadata"]]
        assert len(ids) == len(set(ids)), f"{assignment}: duplicate grade_id"
        graded = {c["metadata"]["nbgrader"]["grade_id"]: c["metadata"]["nbgrader"]["points"]
                  for c in notebook["cells"] if c["metadata"].get("nbgrader", {}).get("grade")}
        assert graded == {c.id: c.points for c in checks_for(assignment)}, \
            f"{assignment}: test cells and registered checks differ"
        for cell in notebook["cells"]:
            meta = cell["metadata"]["nbgrader"]
            assert meta["schema_version"] == 3
            if meta["grade"]:
                assert meta["locked"] and not meta["solution"]


@pytest.mark.slow
@pytest.mark.parametrize("assignment", list(assignments()))
def test_student_notebook_runs_all_to_the_end_with_every_check_failing(assignment, tmp_path):
    """Run All on the released notebook: no cell raises, and every check cell prints its failure."""
    from nbclient import NotebookClient

    notebook = nbformat.read(ROOT / "exercises" / assignment / f"{assignment}.ipynb", as_version=4)
    client = NotebookClient(notebook, timeout=120, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError if any cell fails
    checks = [c for c in notebook.cells if c.cell_type == "code" and c.source.startswith("check(")]
    assert checks
    for cell in checks:
        printed = "".join(o.get("text", "") for o in cell.outputs)
        assert printed.startswith("\u2717 ") and "not written yet" in printed, (cell.source, printed)


# ---------------------------------------------------------------- grading the fixtures

@pytest.fixture(scope="session")
def fixture_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("submissions")
    for fixture in FIXTURES:
        fixture.write(folder)
    return folder


@pytest.fixture(scope="session")
def cli_reports(fixture_folder, tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("grades")
    result = subprocess.run([sys.executable, "-m", "autograder", "grade", str(fixture_folder), "--out", str(out),
                             "--jobs", "2", "--quiet"], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    return {path.stem: json.loads(path.read_text()) for path in out.glob("*.json")}  # "<assignment>__<name>"


def assert_expected(fixture, report: dict) -> None:
    assert report["extra_data"]["assignment"] == fixture.assignment
    got = {t["name"]: (t["status"], t["output"]) for t in report["tests"] if t["status"] != "passed"}
    assert set(got) == set(fixture.fails), f"{fixture.name}: failing checks {sorted(got)}"
    for check_id, (status, phrase) in fixture.fails.items():
        assert got[check_id][0] == status, f"{fixture.name}/{check_id}: {got[check_id]}"
        assert phrase in got[check_id][1], f"{fixture.name}/{check_id}: {got[check_id][1]!r}"
    assert report["score"] == fixture.score and report["max_score"] == MAX[fixture.assignment]


@pytest.mark.slow
@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f"{f.assignment}/{f.name}")
def test_fixture_gets_its_expected_result_from_the_cli(fixture, cli_reports):
    assert_expected(fixture, cli_reports[f"{fixture.assignment}__{fixture.name}"])


def one_per_assignment_and_status(fixtures) -> list:
    """The fewest fixtures that show each assignment's checks failing in each way its mistakes do."""
    chosen, seen = [], set()
    for fixture in fixtures:
        kinds = {(fixture.assignment, status) for status, _ in fixture.fails.values()}
        if kinds - seen:
            chosen.append(fixture)
            seen |= kinds
    return chosen


@pytest.mark.slow
def test_fixtures_get_the_same_result_from_pytest(fixture_folder, tmp_path):
    """Plain pytest runs the same checks as the grader: every assignment's, failing in every way (the grader's
    own run covers each mistake; a pytest run per mistake took five minutes to repeat it)."""
    def run(fixture):
        report = tmp_path / f"{fixture.assignment}-{fixture.name}.json"
        notebook = fixture_folder / fixture.assignment / f"{fixture.name}.ipynb"
        result = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "autograder"), "-q", "-p",
                                 "no:cacheprovider", "--submission", str(notebook), "--report", str(report)],
                                capture_output=True, text=True, timeout=600, cwd=ROOT)
        return fixture, result, report

    with ThreadPoolExecutor(max_workers=2) as pool:
        for fixture, result, report in pool.map(run, one_per_assignment_and_status(MISTAKES) + [f for f in FIXTURES if f.name == "passes_all"][:2]):
            assert result.returncode == (0 if not fixture.fails else 1), result.stdout[-2000:]
            assert_expected(fixture, json.loads(report.read_text()))


@pytest.mark.slow
def test_nbgrader_autograde_agrees(tmp_path, cli_reports):
    """A real course: reference -> full marks, release -> 0, each mistake -> the same cells as our grader."""
    course = Course(tmp_path / "course")
    for assignment in assignments():
        release = course.release(assignment)
        course.submit("reference", assignment, ROOT / "solutions" / assignment / f"{assignment}.ipynb")
        course.submit("blank", assignment, release)
        assert sum(course.autograde(assignment, "reference").values()) == MAX[assignment]
        assert sum(course.autograde(assignment, "blank").values()) == 0
    for fixture in MISTAKES:
        student = fixture.name.replace("_", "-")
        course.submit(student, fixture.assignment, fixture.build())
        nbgrader_scores = course.autograde(fixture.assignment, student)
        ours = {t["name"]: t["score"] for t in cli_reports[f"{fixture.assignment}__{fixture.name}"]["tests"]}
        assert nbgrader_scores == ours, f"{fixture.name}: nbgrader {nbgrader_scores} vs ours {ours}"


# ---------------------------------------------------------------- the notebook and the grader agree

def _message(status: str, text: str) -> str:
    """A message without the traceback frames, which name the notebook's cells differently in each place."""
    if status != "exception" and "raised an exception" not in text:  # a wrong exception quotes its traceback
        return text
    return "\n".join(line for line in text.splitlines() if not line.startswith(("  File ", "    ")))


def notebook_outcomes(fixture) -> dict[str, tuple[str, str]]:
    """What check() prints in the notebook: each check run on the names its cells define, in cell order."""
    import autograder
    from autograder.grading.api import LocalSubmission

    namespace: dict = {"__name__": "__main__"}
    for cell in fixture.build()["cells"]:
        meta = cell["metadata"].get("nbgrader", {})
        if cell["cell_type"] == "code" and not meta.get("grade") and meta.get("grade_id") != "progress":
            exec(compile("".join(cell["source"]), f"<cell {meta.get('grade_id')}>", "exec"), namespace)
    return {c.id: autograder.run_one(c, LocalSubmission(namespace), namespace, 10.0)
            for c in checks_for(fixture.assignment)}


SUBSTITUTED = [f for f in MISTAKES if f.name in ("fails_rope_pairs_i_with_i_plus_half",
                                                 "fails_rope_asserts_instead_of_value_error",
                                                 # a reference that calls book code the check forbids the student
                                                 "fails_pre_split_greedy_whitespace",
                                                 "fails_attention_no_sqrt_dk_scale")]


@pytest.mark.slow
@pytest.mark.parametrize("fixture", STRENGTH + SUBSTITUTED, ids=lambda f: f.name)
def test_notebook_and_grader_give_the_same_verdict_and_message(fixture, cli_reports):
    """Code that changes its inputs, keeps state between calls or shares it between instances, or calls a wrong
    function of its own (then checked with the reference in its place): the notebook's check() (copies of the
    inputs, the checks in cell order) says what the grader's sandboxed worker says."""
    report = cli_reports[f"{fixture.assignment}__{fixture.name}"]
    local = notebook_outcomes(fixture)
    for test in report["tests"]:
        status, text = local[test["name"]]
        lines = test["output"].split("\n")  # the title, the message, and unless passed the link to the book
        graded = "\n".join(lines[1:-1]) if test["status"] != "passed" else "\n".join(lines[1:])
        assert test["status"] == status, f"{fixture.name}/{test['name']}: grader {test['status']}, notebook {status}"
        assert _message(status, graded) == _message(status, text), f"{fixture.name}/{test['name']}"
    for check_id, (status, phrase) in fixture.fails.items():
        assert local[check_id][0] == status and phrase in local[check_id][1], (check_id, local[check_id])


def test_grading_twice_gives_identical_reports(fixture_folder):
    from autograder.grading.report import report_bytes
    from autograder.grading.runner import grade_notebook
    from autograder.sandbox.host import close_spawners, stage_runtime

    runtime = stage_runtime()
    path = fixture_folder / "03_softmax" / "fails_softmax_wrong_axis.ipynb"
    try:
        first = report_bytes(grade_notebook(path, runtime))
        second = report_bytes(grade_notebook(path, runtime))
    finally:
        close_spawners()  # the zygote would otherwise live as long as this test process
        shutil.rmtree(runtime, ignore_errors=True)
    assert first == second


@pytest.mark.slow
def test_student_package_alone_passes_public_checks_with_reference_code(tmp_path):
    """As in Colab: a fresh venv with only the student package, a student notebook with the answers pasted in."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    constraints = ROOT / "requirements" / f"constraints-py{sys.version_info[0]}{sys.version_info[1]}.txt"
    install = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT)]
    if constraints.exists():
        install += ["-c", str(constraints)]
    subprocess.run(install, check=True, timeout=900)
    probe = subprocess.run([str(python), "-c", "import autograder, tinyllm, importlib.util, pathlib;"
                            "print(importlib.util.find_spec('autograder.hidden') is None);"
                            "print(sorted(p.name for p in pathlib.Path(autograder.__file__).parent.iterdir()))"],
                           capture_output=True, text=True, cwd=tmp_path, check=True)
    assert probe.stdout.splitlines()[0] == "True", "the student package contains the hidden checks"
    for assignment in assignments():
        student = json.loads((ROOT / "exercises" / assignment / f"{assignment}.ipynb").read_text())
        reference = json.loads((ROOT / "solutions" / assignment / f"{assignment}.ipynb").read_text())
        answers = {c["metadata"]["nbgrader"]["grade_id"]: "".join(c["source"]) for c in reference["cells"]
                   if c["metadata"].get("nbgrader", {}).get("solution")}
        code = []
        for cell in student["cells"]:
            if cell["cell_type"] != "code":
                continue
            grade_id = cell["metadata"].get("nbgrader", {}).get("grade_id")
            code.append(answers.get(grade_id, "".join(cell["source"])))  # paste the answer into each solution cell
        script = tmp_path / f"{assignment}.py"
        script.write_text("\n\n".join(code))
        # What passes is checked here, not how fast (tests/test_checks.py times the checks alone): in one CI
        # run beside other tests, speculative_generate_public, the slowest public check, did not pass here.
        env = {**os.environ, "AUTOGRADER_TIME_LIMIT": "60"}
        result = subprocess.run([str(python), str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=300,
                                env=env)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        passed = re.findall(r"^\u2713 (\w+)", result.stdout, re.M)
        assert sorted(passed) == sorted(c.id for c in checks_for(assignment, include_hidden=False))


def test_every_discovered_name_is_defined_by_the_reference_solution():
    """Assignments and names come from the checks' decorators: a misspelt one fails here."""
    import ast

    table = assignments()
    assert table, "no checks were discovered"
    for assignment, names in table.items():
        source = ROOT / "solutions" / assignment / f"{assignment}.ipynb"
        assert source.exists(), f"a check names assignment {assignment!r}, but {source.relative_to(ROOT)} is missing"
        notebook = json.loads(source.read_text(encoding="utf-8"))
        defined = set()
        for cell in notebook["cells"]:
            if cell["cell_type"] == "code":
                tree = ast.parse("".join(cell["source"]))
                defined |= {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        missing = [name for name in names if name not in defined]
        assert not missing, f"{assignment}: checks test {missing}, which the reference solution does not define"


TRAINING = [f for f in FIXTURES if f.assignment == "09_training"]


@pytest.mark.parametrize("fixture", TRAINING, ids=lambda f: f.name)
def test_training_mistakes_cost_exactly_their_checks_in_the_notebook(fixture):
    """09_training without the sandbox: each mistake fails its checks with its message and loses their points."""
    import autograder
    from autograder.grading.api import LocalSubmission

    names = exercises.solution_namespace(fixture.assignment, fixture.cell, fixture.old, fixture.new)
    score, failed = 0.0, {}
    for entry in checks_for(fixture.assignment):
        status, message = autograder.run_one(entry, LocalSubmission(names), names, 10.0)
        if status == "passed":
            score += entry.points
        else:
            failed[entry.id] = (status, message)
    assert set(failed) == set(fixture.fails), f"{fixture.name}: failing checks {sorted(failed)}"
    for check_id, (status, phrase) in fixture.fails.items():
        assert failed[check_id][0] == status and phrase in failed[check_id][1], failed[check_id]
    assert score == fixture.score


# ---------------------------------------------------------------- 10_post_training: each mistake costs its points

POST_TRAINING_MISTAKES = {
    "mask_on_the_prompt": (
        "sft_loss", "    log_probs = log_softmax(logits, dim=-1)  # (B, T, V)\n    safe",
        "    loss_mask = ~loss_mask\n    log_probs = log_softmax(logits, dim=-1)  # (B, T, V)\n    safe",
        {"sft_loss_public": ("failed", "You scored the prompt"), "sft_loss_hidden": ("failed", "wrong values")}, 13),
    "mean_over_all_positions": (
        "sft_loss", "return -(picked * mask).sum() / mask.sum()", "return -(picked * mask).mean()",
        {"sft_loss_public": ("failed", "mean over all B * T positions"),
         "sft_loss_hidden": ("failed", "wrong values")}, 13),
    "sft_loss_uses_builtin": (
        "sft_loss", "    log_probs = log_softmax(logits, dim=-1)  # (B, T, V)\n    safe",
        "    log_probs = F.log_softmax(logits, dim=-1)\n    safe",
        {"sft_loss_public": ("forbidden", "uses F.log_softmax"), "sft_loss_hidden": ("forbidden", "F.log_softmax")}, 13),
    "lora_scaled_by_alpha": (
        "LoRALinear", "self.scaling = alpha / rank", "self.scaling = alpha",
        {"LoRALinear_public": ("failed", "You scaled the update by alpha"),
         "LoRALinear_merged_public": ("failed", "You scaled the update by alpha"),
         "LoRALinear_hidden": ("failed", "wrong values")}, 12),
    "lora_b_not_zero": (
        "LoRALinear", "self.lora_b = nn.Parameter(torch.zeros(", "self.lora_b = nn.Parameter(torch.randn(",
        {"LoRALinear_init_public": ("failed", "the layer changes before training")}, 15),
    "dpo_preference_flipped": (
        "dpo_loss",
        "margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)",
        "margin = (policy_rejected_logps - ref_rejected_logps) - (policy_chosen_logps - ref_chosen_logps)",
        {"dpo_loss_public": ("failed", "The preference is flipped"), "dpo_loss_hidden": ("failed", "wrong values")},
        14),
    "dpo_without_beta": (
        "dpo_loss", "F.logsigmoid(beta * margin)", "F.logsigmoid(margin)",
        {"dpo_loss_public": ("failed", "You left out beta"), "dpo_loss_hidden": ("failed", "wrong values")}, 14),
}


def check_results(assignment: str, names: dict, timeout: float = 10.0) -> dict[str, tuple[str, float, str]]:
    """Every check of the assignment run on a notebook's names: id -> (status, points, message)."""
    import autograder
    from autograder.grading.api import LocalSubmission

    results = {}
    for entry in checks_for(assignment):
        status, message = autograder.run_one(entry, LocalSubmission(names), names, timeout)
        results[entry.id] = (status, entry.points, message)
    return results


def post_training_results(names: dict) -> dict[str, tuple[str, float, str]]:
    return check_results("10_post_training", names)


def test_post_training_reference_scores_full_marks():
    results = post_training_results(exercises.solution_namespace("10_post_training"))
    assert {status for status, _, _ in results.values()} == {"passed"}, results
    assert sum(points for _, points, _ in results.values()) == 17


@pytest.mark.parametrize("mistake", list(POST_TRAINING_MISTAKES))
def test_post_training_mistake_loses_exactly_its_points(mistake):
    cell, old, new, fails, score = POST_TRAINING_MISTAKES[mistake]
    results = post_training_results(exercises.solution_namespace("10_post_training", cell, old, new))
    failed = {check_id: (status, message) for check_id, (status, _, message) in results.items() if status != "passed"}
    assert sorted(failed) == sorted(fails), {k: v[1][:300] for k, v in failed.items()}
    for check_id, (status, phrase) in fails.items():
        assert failed[check_id][0] == status and phrase in failed[check_id][1], failed[check_id][1]
    assert sum(points for status, points, _ in results.values() if status == "passed") == score


# ---------------------------------------------------------------- 01_tokenization: the pre-split's mistakes

PATTERN = '''        r"'s|'t|'re|'ve|'m|'ll|'d",  # an English contraction's ending (lower case only: "IT'S" gives "'", "S")
        r" ?\\p{L}+",  # a run of letters (any script), with the one space before it if there is one
        r" ?\\p{N}+",  # a run of digits or other numerals, with its space
        r" ?[^\\s\\p{L}\\p{N}]+",  # a run of anything else but whitespace (punctuation, emoji), with its space
        r"\\s+(?!\\S)",  # whitespace, leaving the last space before a non-space to the chunk that follows
'''
# A wrong split costs pre_split's checks alone: bpe_encode_split's pass with the reference pre_split in its place.
WRONG_SPLIT = {"pre_split_hidden": ("failed", "returned the wrong result")}
TOKENIZATION_MISTAKES = {  # name: (cell, old, new, {check id: (status, phrase)}, score); the other checks pass
    "no_leading_space": ("split_pattern_pre_split", PATTERN,
                         PATTERN.replace('r" ?\\p{L}+"', 'r"\\p{L}+"').replace('r" ?\\p{N}+"', 'r"\\p{N}+"')
                         .replace('r" ?[^', 'r"[^'),
                         {"pre_split_public": ("failed", "A word keeps the one space before it"), **WRONG_SPLIT}, 19),
    "greedy_whitespace": ("split_pattern_pre_split", 'r"\\s+(?!\\S)",', "",
                          {"pre_split_public": ("failed", "leaves its last space to the word after it"),
                           **WRONG_SPLIT}, 19),
    "digits_joined_to_letters": ("split_pattern_pre_split", 'r" ?\\p{L}+"', 'r" ?[\\p{L}\\p{N}]+"',
                                 {"pre_split_public": ("failed", "never joined to letters"),
                                  "pre_split_hidden": ("failed", "returned the wrong result")}, 19),
    "digits_three_at_a_time": ("split_pattern_pre_split", 'r" ?\\p{N}+"', 'r" ?\\p{N}{1,3}"',
                               {"pre_split_public": ("failed", "any numeral, any length"),
                                "pre_split_hidden": ("failed", "returned the wrong result")}, 19),
    "contractions_any_case": ("split_pattern_pre_split", "return regex.findall(split_pattern(), text)",
                              "return regex.findall(split_pattern(), text, flags=regex.IGNORECASE)",
                              {"pre_split_public": ("failed", "Only lower-case endings"),
                               "pre_split_hidden": ("failed", "returned the wrong result")}, 19),
    "no_contractions": ("split_pattern_pre_split", "r\"'s|'t|'re|'ve|'m|'ll|'d\",  #", "#",
                        {"pre_split_public": ("failed", "are chunks of their own"),
                         "pre_split_hidden": ("failed", "returned the wrong result")}, 19),
    "merges_across_chunks": ("train_bpe_chunks", "    sequences = [list(to_bytes(chunk)) for chunk in chunks]\n",
                             "    sequences = [list(to_bytes(''.join(chunks)))]\n",
                             {"train_bpe_chunks_public": ("failed", "never across two"),
                              "train_bpe_chunks_hidden": ("failed", "never across two")}, 19),
    "distinct_chunks_counted_once": ("train_bpe_chunks",
                                     "    sequences = [list(to_bytes(chunk)) for chunk in chunks]\n",
                                     "    sequences = [list(to_bytes(chunk)) for chunk in dict.fromkeys(chunks)]\n",
                                     {"train_bpe_chunks_public": ("failed", "Each occurrence of a chunk counts"),
                                      "train_bpe_chunks_hidden": ("failed", "Each occurrence of a chunk counts")}, 19),
    "encodes_without_splitting": ("bpe_encode_split", "for chunk in pre_split(text)", "for chunk in [text]",
                                  {"bpe_encode_split_public": ("failed", "split it with pre_split first"),
                                   "bpe_encode_split_hidden": ("failed", "returned the wrong result")}, 20),
}


def tokenization_results(names: dict) -> dict[str, tuple[str, float, str]]:
    return check_results("01_tokenization", names, timeout=30.0)


def test_tokenization_reference_scores_full_marks():
    results = tokenization_results(exercises.solution_namespace("01_tokenization"))
    assert {status for status, _, _ in results.values()} == {"passed"}, results
    assert sum(points for _, points, _ in results.values()) == MAX["01_tokenization"]


@pytest.mark.parametrize("mistake", list(TOKENIZATION_MISTAKES))
def test_tokenization_mistake_loses_exactly_its_points(mistake):
    """Each mistake of the second part fails its checks with a message naming it, and costs exactly their points."""
    cell, old, new, fails, score = TOKENIZATION_MISTAKES[mistake]
    results = tokenization_results(exercises.solution_namespace("01_tokenization", cell, old, new))
    failed = {check_id: (status, message) for check_id, (status, _, message) in results.items() if status != "passed"}
    assert sorted(failed) == sorted(fails), {k: v[1][:300] for k, v in failed.items()}
    for check_id, (status, phrase) in fails.items():
        assert failed[check_id][0] == status and phrase in failed[check_id][1], failed[check_id][1]
    assert sum(points for status, points, _ in results.values() if status == "passed") == score


# ---------------------------------------------------------------- 11_inference: more mistakes, each costing its points

INFERENCE_MISTAKES = {  # beside the graded fixtures of tests/fixtures/submissions.py
    "scale from the largest value, not magnitude": (
        "quantize_int8_dequantize", "w.abs().amax(dim=1, keepdim=True)", "w.amax(dim=1, keepdim=True)",
        {"quantize_int8_public": ("failed", "largest ABSOLUTE value"), "quantize_int8_hidden": ("failed", "wrong values")},
        19),
    "a zero row divided by zero": (
        "quantize_int8_dequantize", "    scale = torch.where(scale == 0, torch.ones_like(scale), scale)\n    codes",
        "    codes",
        {"quantize_int8_public": ("failed", "a row of zeros"), "quantize_int8_hidden": ("failed", "wrong values")}, 19),
    "codes left as floats": (
        "quantize_int8_dequantize", "-127, 127).to(torch.int8)", "-127, 127)",
        {"quantize_int8_public": ("failed", "torch.int8"), "quantize_int8_hidden": ("failed", "dtype")}, 19),
    "dequantize without the scale": (
        "quantize_int8_dequantize", "return q.float() * scale", "return q.float()",
        {"dequantize_public": ("failed", "each row times its own scale"), "dequantize_hidden": ("failed", "wrong values")},
        20),
    "int4 with one scale per row": (
        "quantize_int4_dequantize_int4", "groups.abs().amax(dim=-1)",
        "groups.abs().amax(dim=(-2, -1), keepdim=True)[..., 0].expand(-1, in_features // group_size)",
        {"quantize_int4_public": ("failed", "one scale per row, not one per group"),
         "quantize_int4_hidden": ("failed", "wrong values")}, 20),
    "int4 groups strided, not consecutive": (
        "quantize_int4_dequantize_int4", "groups = w.reshape(out_features, in_features // group_size, group_size)",
        "groups = w.reshape(out_features, group_size, in_features // group_size).transpose(1, 2)",
        {"quantize_int4_public": ("failed", "Your groups are strided"), "quantize_int4_hidden": ("failed", "wrong values")},
        20),
    "int4 without the ValueError": (
        "quantize_int4_dequantize_int4", "    if group_size < 1 or in_features % group_size != 0:\n"
        "        raise ValueError(f\"group_size {group_size} does not divide the {in_features} input features\")\n", "",
        # The error contract's own check alone: one mistake, charged once.
        {"quantize_int4_errors_public": ("failed", "should raise ValueError")}, 21),
    "uniforms from the global generator": (
        "speculative_accept", "    u = torch.rand(k, generator=generator)", "    u = torch.rand(k)",
        {"speculative_accept_public": ("failed", "Draw every random number from `generator`")}, 20),
    "drafts the most likely token while sampling": (
        "speculative_generate", "            token = torch.multinomial(q, 1, generator=generator)",
        "            token = q.argmax(dim=-1, keepdim=True)",
        {"speculative_generate_public": ("failed", "Draw each draft token from q"),
         "speculative_generate_hidden": ("failed", "not its most likely token")}, 17),
    "two target calls per round": (
        "speculative_generate", "        logits = extend(target_model, target_caches, proposed)  # (1, tokens new to the target, V)",
        "        first = extend(target_model, target_caches, proposed[:, :-1])\n"
        "        logits = torch.cat([first, extend(target_model, target_caches, proposed)], dim=1)",
        {"speculative_generate_calls_public": ("failed", "called the target 3 times more than needed")}, None),
}


@pytest.mark.parametrize("mistake", list(INFERENCE_MISTAKES))
def test_inference_mistake_loses_exactly_its_points(mistake):
    import autograder
    from autograder.grading.api import LocalSubmission

    cell, old, new, fails, score = INFERENCE_MISTAKES[mistake]
    names = exercises.solution_namespace("11_inference", cell, old, new)
    # The cell's functions and what calls them: quantization and speculative decoding share no code, so the checks
    # of the other half pass as the reference's do (test_exercises' graded fixtures run all of them).
    half = ("quantize_int8", "dequantize", "quantize_int4", "dequantize_int4") if cell.startswith("quantize") else (
        "speculative_accept", "speculative_generate")
    results = {entry.id: (*autograder.run_one(entry, LocalSubmission(names), names, 30.0), entry.points)
               if entry.target in half else ("passed", "", entry.points) for entry in checks_for("11_inference")}
    failed = {check_id: (status, message) for check_id, (status, message, _) in results.items() if status != "passed"}
    for check_id, (status, phrase) in fails.items():
        assert check_id in failed and failed[check_id][0] == status and phrase in failed[check_id][1], \
            failed.get(check_id, "passed")
    if score is not None:
        assert sorted(failed) == sorted(fails), {k: v[1][:300] for k, v in failed.items()}
        assert sum(points for status, _, points in results.values() if status == "passed") == score


# ---------------------------------------------------------------- 12_encoders: the other mistakes the chapter names

ENCODER_MISTAKES = {  # beside the graded fixtures of tests/fixtures/submissions.py (padding masked, keys from x)
    "loss over every position": (
        "masked_lm_loss", "return cross_entropy(logits[scored], labels[scored])",
        "return cross_entropy(logits.flatten(0, 1), labels.clamp(min=0).flatten())",
        {"masked_lm_loss_public": ("failed", "You scored every position"),
         "masked_lm_loss_hidden": ("failed", "wrong values")}, 15),
    "every chosen token becomes [MASK]": (
        "mask_tokens", "    inputs = torch.where(chosen & (action < 0.8), torch.full_like(ids, mask_id), ids)\n"
        "    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)\n",
        "    inputs = torch.where(chosen, torch.full_like(ids, mask_id), ids)\n",
        {"mask_tokens_recipe_public": ("failed", "Every chosen token became [MASK]"),
         "mask_tokens_hidden": ("failed", "")}, None),
    "the causal mask left on": (
        "bidirectional_attention", "    return softmax(scores, dim=-1) @ v",
        "    scores = scores.masked_fill(torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1), float(\"-inf\"))\n"
        "    return softmax(scores, dim=-1) @ v",
        {"bidirectional_attention_public": ("failed", "You left the causal mask on"),
         # The CrossAttention checks pass with the reference bidirectional_attention in its place.
         "bidirectional_attention_hidden": ("failed", "wrong values")}, 14),
}


@pytest.mark.parametrize("mistake", list(ENCODER_MISTAKES))
def test_encoder_mistake_loses_exactly_its_points(mistake):
    import autograder
    from autograder.grading.api import LocalSubmission

    cell, old, new, fails, score = ENCODER_MISTAKES[mistake]
    names = exercises.solution_namespace("12_encoders", cell, old, new)
    results = {entry.id: (*autograder.run_one(entry, LocalSubmission(names), names, 30.0), entry.points)
               for entry in checks_for("12_encoders")}
    failed = {check_id: (status, message) for check_id, (status, message, _) in results.items() if status != "passed"}
    for check_id, (status, phrase) in fails.items():
        assert check_id in failed and failed[check_id][0] == status and phrase in failed[check_id][1], \
            failed.get(check_id, "passed")
    if score is not None:
        assert sorted(failed) == sorted(fails), {k: v[1][:300] for k, v in failed.items()}
        assert sum(points for status, _, points in results.values() if status == "passed") == score
