"""The autograder's layers import only downwards (tools/layout.py), and a wrong import is caught.

The map: the sandbox imports nothing of the grader; grading one notebook imports
the sandbox; the outputs import grading (never the sandbox); the class run
imports them all; the checks import only the API written for them. The tests
below run the same reading of imports (with :mod:`ast`) over the real package
and over small synthetic packages that each hold one import of the wrong kind.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tools import layout

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "autograder"


def test_the_package_has_no_import_against_the_direction():
    assert layout.violations() == []
    assert layout.unplaced() == []


def test_every_layer_is_a_package_whose_docstring_says_what_it_may_import():
    for name in layout.MAY_IMPORT:
        init = PACKAGE / name / "__init__.py"
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and "May import:" in doc, name
        allowed = doc.split("May import:", 1)[1]
        # the docstring names every layer its rule allows, and no layer it forbids
        for other in layout.MAY_IMPORT:
            if other == name:
                continue
            said = f"autograder.{other}" in allowed.split("Never", 1)[0]
            assert said == (other in layout.MAY_IMPORT[name]), (name, other)


def test_the_layers_are_ordered_without_a_cycle():
    """Each layer may import only layers listed before it: the rules form an order, not a loop."""
    seen: list[str] = []
    for name, below in layout.MAY_IMPORT.items():
        assert set(below) <= set(seen), name
        seen.append(name)


def test_the_package_root_imports_nothing_when_imported():
    """Every layer may import the package itself (the worker sets its in_grader flag): safe only
    because its __init__ imports no module of the package until a function of it runs."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text(encoding="utf-8"))
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert not [n for n in top if (getattr(n, "module", None) or "").startswith("autograder")
                or any(a.name.startswith("autograder") for a in n.names)]


def test_the_reading_finds_the_imports_it_must():
    """The parser sees imports inside functions, relative imports and `from package import module`."""
    found = {(i.source, i.target) for i in layout.imports()}
    assert ("autograder.grading.runner", "autograder.sandbox.host") in found  # at the top
    assert ("autograder.classrun.grade", "autograder.outputs.feedback") in found  # inside a function
    assert ("autograder.grading.api", "autograder.sandbox.wire") in found  # from autograder.sandbox import wire
    assert ("autograder.checks.test_03_softmax", "autograder.grading.expect") in found


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    """A copy of autograder/'s tree with every module empty but the given ones."""
    root = tmp_path / "autograder"
    for path in layout.modules().values():
        copy = root / path.relative_to(PACKAGE)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_text("")
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


WRONG = {
    "the sandbox imports grading": ("sandbox/worker.py", "from autograder.grading import registry\n"),
    "the sandbox imports the class run, late": ("sandbox/host.py", "def f():\n    import autograder.classrun.grade\n"),
    "grading imports the class run": ("grading/runner.py", "from autograder.classrun.submissions import Found\n"),
    "grading imports an output": ("grading/runner.py", "from autograder.outputs import feedback\n"),
    "grading imports an output, relatively": ("grading/runner.py", "from ..outputs import feedback\n"),
    "an output imports the sandbox": ("outputs/summary.py", "from autograder.sandbox.host import Limits\n"),
    "an output imports the class run": ("outputs/exports.py", "from autograder.classrun.course import Schedule\n"),
    "a layer imports an entry point": ("classrun/grade.py", "from autograder import gradescope\n"),
    "a check imports the runner": ("checks/test_03_softmax.py", "from autograder.grading.runner import run_check\n"),
    "a check imports the sandbox's host": ("checks/test_03_softmax.py", "import autograder.sandbox.host\n"),
    "a public check imports a hidden one": ("checks/test_04_attention.py",
                                             "from autograder.hidden.test_04_attention import x\n"),
}
RIGHT = {
    "grading imports the sandbox": ("grading/runner.py", "from autograder.sandbox.host import Worker\n"),
    "grading imports the sandbox, relatively": ("grading/api.py", "from ..sandbox import wire\n"),
    "an output imports grading": ("outputs/feedback.py", "from autograder.grading.report import atomic_write\n"),
    "the class run imports an output": ("classrun/grade.py", "def f():\n    from autograder.outputs import summary\n"),
    "the worker sets the package's flag": ("sandbox/worker.py", "import autograder\n"),
    "an entry point imports the class run": ("__main__.py", "from autograder.classrun import grade\n"),
    "a check imports the check API": ("checks/test_03_softmax.py",
                                      "from autograder.grading import expect\nfrom autograder.sandbox.forbidden import GROUPS\n"),
    "a hidden check imports a public one": ("hidden/test_04_attention.py",
                                            "from autograder.checks.test_04_attention import BOOK\n"),
}


@pytest.mark.parametrize("case", sorted(WRONG))
def test_an_import_against_the_direction_is_caught(tmp_path, case):
    path, text = WRONG[case]
    root = _package(tmp_path, {path: text})
    found = layout.violations(root)
    source = "autograder." + path.removesuffix(".py").replace("/", ".")
    assert [v.source for v in found] == [source], case


@pytest.mark.parametrize("case", sorted(RIGHT))
def test_an_import_along_the_direction_passes(tmp_path, case):
    path, text = RIGHT[case]
    assert layout.violations(_package(tmp_path, {path: text})) == [], case


def test_a_module_outside_the_map_is_named(tmp_path):
    root = _package(tmp_path, {"scoring/points.py": "x = 1\n"})
    assert layout.unplaced(root) == ["autograder.scoring.points"]


def test_the_command_prints_the_map_and_fails_on_a_wrong_import(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "tools.layout"], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for name in layout.MAY_IMPORT:
        assert f"\n{name}/: " in ok.stdout
    assert "0 against the direction." in ok.stdout
    root = _package(tmp_path, dict([WRONG["an output imports the sandbox"]]))
    bad = subprocess.run([sys.executable, "-m", "tools.layout", "--root", str(root)], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 1
    assert "autograder.outputs.summary (line 1) imports autograder.sandbox.host" in bad.stdout


def test_the_contributors_guide_lists_every_module_in_its_layer():
    """docs/contributor.md's table of the grader: each layer's row names exactly that layer's modules."""
    text = (ROOT / "docs" / "contributor.md").read_text(encoding="utf-8")
    for name in layout.MAY_IMPORT:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}/`"))
        modules_cell = re.sub(r"\([^)]*\)", "", row.split("|")[2])  # the modules, without what each does
        listed = {m for m in re.findall(r"`(\w+)`", modules_cell)}
        actual = {m.rsplit(".", 1)[1] for m in layout.modules() if layout.part_of(m) == name and m.count(".") == 2}
        assert listed == actual, name
        allowed_cell = row.split("|")[3]
        assert set(re.findall(r"`(\w+)`", allowed_cell)) == set(layout.MAY_IMPORT[name]), name
