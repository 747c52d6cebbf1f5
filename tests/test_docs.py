"""Every shell command in README.md and docs/*.md still works, so the guides cannot rot.

A command is a line of a fenced ``bash``, ``sh`` or ``console`` block (in a ``console``
block, the lines that start with ``$ ``; a trailing backslash continues a line). Each
one is either

* **run** here, when it carries no marker: keep those cheap and harmless (``--help``,
  a dry run, a read-only check); it must exit 0 and leave the checkout as it was; or
* marked in its comment with ``covered by PATH``: PATH (a test, ``.ci/run``, ...) must
  exist and mention the command's key words (its subcommand or make target, the module
  or script it runs, each of its ``--options``); or
* marked ``needs: THING``, where THING is something CI does not have, listed in
  ``NEEDS`` below with the reason.

Whatever its marker, a command of ours is also checked against its program: each
``--option`` must be one the program's parser accepts (read in this process from its
``--help``), and a ``make`` target must be a rule of the Makefile that ``make -n`` can
plan, with every ``VAR=`` it sets used by the Makefile.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import runpy
import shlex
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

# What CI lacks, and so what a command may wait for instead of a test.
NEEDS = {
    "a GPU": "CI has none; on a CPU the same code runs (tests/test_train.py)",
    "a Gradescope course": "uploading the zip is done in Gradescope's web interface",
    "a git remote": "pushing a tag needs the course's repository and its credentials",
    "a class": "an instructor's real submissions (the tests grade a realistic class of their own)",
}

FENCE = re.compile(r"^```(bash|sh|console)[ \t]*\n(.*?)^```", re.M | re.S)
PYTHONS = {"python", "python3", ".venv/bin/python"}


@dataclass(frozen=True)
class Command:
    doc: str
    line: int
    text: str  # the command, its comment removed
    comment: str

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}: {self.text}"


def split_comment(line: str) -> tuple[str, str]:
    """The command and its trailing ``# comment`` (a ``#`` outside quotes, after a space)."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def commands_in(path: Path) -> list[Command]:
    text = path.read_text(encoding="utf-8")
    found = []
    for block in FENCE.finditer(text):
        kind, body = block.groups()
        first_line = text.count("\n", 0, block.start(2)) + 1
        pending, start = "", 0
        for offset, raw in enumerate(body.splitlines()):
            if kind == "console" and not pending:
                if not raw.startswith("$ "):
                    continue  # the command's output
                raw = raw[2:]
            if not pending:
                start = first_line + offset
            if raw.rstrip().endswith("\\"):
                pending += raw.rstrip()[:-1] + " "
                continue
            command, comment = split_comment(pending + raw)
            pending = ""
            if command.strip():
                found.append(Command(path.name, start, " ".join(command.split()), comment))
    return found


COMMANDS = [command for doc in DOCS for command in commands_in(doc)]


def console_scripts() -> dict[str, str]:
    """``tiny-llm`` -> ``tinyllm.cli:main``: the project's commands, from pyproject.toml."""
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def parse(command: Command) -> tuple[str | None, list[str]]:
    """(how to load the program in this process, its arguments), or (None, args) for another program.

    ``module:NAME`` runs a module as ``python -m NAME``; ``script:PATH`` a script;
    ``entry:MOD:FUNC`` a console script of pyproject.toml.
    """
    words = shlex.split(command.text)
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words = words[1:]  # VAR=value before the program
    program, args = words[0], words[1:]
    if program in PYTHONS and args[:1] == ["-m"]:
        return f"module:{args[1]}", args[2:]
    if program in PYTHONS and args and args[0].endswith(".py"):
        return f"script:{args[0]}", args[1:]
    if program in console_scripts():
        return f"entry:{console_scripts()[program]}", args
    return None, words


def subcommand(args: list[str]) -> str | None:
    """The first word that is not an option: a subcommand, a make target (or a path, which is harmless)."""
    for word in args:
        if not word.startswith("-") and "=" not in word:
            return word
        if word.startswith("-"):
            return None  # options come after the subcommand
    return None


def long_options(args: list[str]) -> list[str]:
    return [word.split("=", 1)[0] for word in args if word.startswith("--") and len(word) > 2]


def key_words(command: Command) -> list[str]:
    program, args = parse(command)
    words = long_options(args)
    if program and program.startswith("module:"):
        words.append(program.removeprefix("module:").split(".")[-1])  # tests import `from tools import notebooks`
    elif program and program.startswith("script:"):
        words.append(Path(program.removeprefix("script:")).parent.name)  # tests run a folder's scripts by glob
    if not program and args[0] == "make":
        return words + [word for word in args[1:] if "=" not in word]  # every target
    sub = subcommand(args if program else args[1:])
    if sub and not re.search(r"[/.]", sub):  # a subcommand, not a file
        words.append(sub)
    return words


@cache
def help_text(program: str, sub: str | None) -> str:
    """What ``program [sub] --help`` prints, run in this process (one import of torch for all)."""
    argv = ([sub] if sub else []) + ["--help"]
    out = io.StringIO()
    saved = sys.argv
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            kind, _, name = program.partition(":")
            sys.argv = [name, *argv]
            try:
                if kind == "module":
                    runpy.run_module(name, run_name="__main__", alter_sys=False)
                elif kind == "script":
                    runpy.run_path(str(ROOT / name), run_name="__main__")
                else:
                    module, function = name.split(":")
                    getattr(__import__(module, fromlist=[function]), function)(argv)
            except SystemExit:
                pass
    finally:
        sys.argv = saved
    return out.getvalue()


def marker(command: Command) -> tuple[str, str] | None:
    if found := re.search(r"covered by ([\w./-]+)", command.comment):
        return "covered", found.group(1).rstrip(".")
    if found := re.search(r"needs: ([^;()]+)", command.comment):
        return "needs", found.group(1).strip().rstrip(".")
    return None


def ids(command: Command) -> str:
    return f"{command.doc}:{command.line}"


def test_the_guides_have_commands():
    assert {"README.md", "instructor.md", "author.md", "contributor.md"} <= {doc.name for doc in DOCS}
    assert len(COMMANDS) >= 25, [str(command) for command in COMMANDS]


@pytest.mark.parametrize("command", [c for c in COMMANDS if marker(c)], ids=ids)
def test_a_command_not_run_here_names_what_covers_it(command):
    kind, what = marker(command)
    if kind == "needs":
        assert what in NEEDS, f"{command}: needs {what!r}, which is not in NEEDS (say there why CI cannot run it)"
        return
    path = ROOT / what
    assert path.is_file(), f"{command}: covered by {what}, which does not exist"
    text = path.read_text(encoding="utf-8")
    missing = [word for word in key_words(command) if word not in text]
    assert not missing, f"{command}: {what} never mentions {missing}"


@pytest.mark.parametrize("command", COMMANDS, ids=ids)
def test_each_option_is_one_the_program_accepts(command):
    program, args = parse(command)
    if program is None:
        return  # make, git, nbgrader, pytest: checked elsewhere or not ours
    options = long_options(args)
    if not options:
        return
    sub = subcommand(args)
    text = help_text(program, sub if sub and not re.search(r"[/.]", sub) else None)
    assert "usage" in text.lower(), f"{command}: {program} printed no usage for --help"
    unknown = [option for option in options if not re.search(rf"{re.escape(option)}\b", text)]
    assert not unknown, f"{command}: the program does not accept {unknown}"


MAKE_COMMANDS = [c for c in COMMANDS if c.text.split()[0] == "make"]


@pytest.mark.parametrize("command", MAKE_COMMANDS, ids=ids)
def test_a_make_command_is_a_target_make_can_plan(command):
    makefile = (ROOT / "Makefile").read_text()
    words = command.text.split()[1:]
    targets = [word for word in words if "=" not in word]
    for name in (word.split("=")[0] for word in words if "=" in word):
        assert re.search(rf"\$\({name}\)|^{name} \?=", makefile, re.M), f"{command}: the Makefile never uses {name}"
    for target in targets:
        assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"{command}: no rule for {target}"
    if "pdf" in targets:
        return  # its recipe runs make again in _build/latex, which exists only after a build
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # under make test
    plan = subprocess.run(["make", "-n", *words], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert plan.returncode == 0, f"{command}: make -n failed: {plan.stderr[-500:]}"


def git_state() -> str:
    """The tracked files' changes (untracked ones could come from tests running beside this one)."""
    return subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                          text=True).stdout


RUN = [c for c in COMMANDS if not marker(c)]


@pytest.mark.parametrize("command", RUN, ids=ids)
def test_a_command_with_no_marker_runs(command):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    before = git_state()
    result = subprocess.run(command.text, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{command}: exit status {result.returncode}\n{result.stderr[-2000:]}"
    assert git_state() == before, f"{command}: changed the checkout"


def test_every_guide_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text()
    for guide in (ROOT / "docs").glob("*.md"):
        assert f"docs/{guide.name}" in readme, f"README.md does not link docs/{guide.name}"


def test_the_markers_are_understood(tmp_path):
    """The parser behind the tests above, on the forms the guides use."""
    sample = tmp_path / "sample.md"
    sample.write_text("```console\n$ make help   # lists the targets\nmake book  output\n```\n"
                      "```bash\npython -m autograder grade submitted \\\n    --out grades --course course.toml"
                      "   # covered by tests/test_term.py\n# a comment line\n"
                      "git push origin fall-2026  # needs: a git remote\n```\n")
    found = commands_in(sample)
    assert [c.text for c in found] == ["make help",
                                       "python -m autograder grade submitted --out grades --course course.toml",
                                       "git push origin fall-2026"]
    assert [c.line for c in found] == [2, 6, 9]
    assert [marker(c) for c in found] == [None, ("covered", "tests/test_term.py"), ("needs", "a git remote")]
    assert key_words(found[1]) == ["--out", "--course", "autograder", "grade"]
    assert key_words(found[0]) == ["help"]


def test_the_contract_table_names_every_assignment_and_name_the_checks_test():
    """docs/author.md's table of the exercises' contracts against the checks the registry discovers."""
    from autograder.grading.registry import assignments

    text = (ROOT / "docs" / "author.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(\d\d_\w+)` \| (.*) \|$", text, re.M))
    discovered = assignments()
    assert set(rows) == set(discovered), "docs/author.md's contract table and autograder/checks/ list other assignments"
    for assignment, names in discovered.items():
        listed = {re.split(r"[.(]", code)[0] for code in re.findall(r"`([^`]+)`", rows[assignment])}
        missing = [name for name in names if name not in listed]
        assert not missing, f"docs/author.md: {assignment}'s row does not name {missing}, which its checks test"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_links_between_the_guides_resolve(doc):
    for target, anchor in re.findall(r"\]\(((?!https?:)[^)#\s]*)(?:#([^)\s]+))?\)", doc.read_text(encoding="utf-8")):
        path = (doc.parent / target).resolve() if target else doc
        assert path.exists(), f"{doc.name}: link to missing {target}"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.M)
            assert anchor in {github_anchor(h) for h in headings}, f"{doc.name}: no heading {anchor!r} in {path.name}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_every_path_the_guides_name_exists(doc):
    text = doc.read_text(encoding="utf-8")
    folders = "autograder|tinyllm|tools|bench|tests|book|docs|data|requirements|exercises|solutions|_static|\\.ci"
    named = re.findall(rf"`((?:{folders})/[\w./-]*)`", text)
    written = {"bench/results/"}  # where a full benchmark run stores its figures
    missing = [path for path in named if "NN" not in path and path not in written and not (ROOT / path).exists()]
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"


def test_the_map_of_the_grader_places_every_module():
    """docs/contributor.md's table of autograder/ by responsibility names each module once, and only real ones."""
    text = (ROOT / "docs" / "contributor.md").read_text(encoding="utf-8")
    section = text.split("### autograder", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| [^|]+ \| (.+) \|$", section, re.M)[2:]  # past the header and its rule
    mapped = [name for row in rows for name in re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", row))]
    grader = ROOT / "autograder"
    modules = {path.stem for path in grader.rglob("*.py")  # the entry points (__init__, __main__, ...) included
               if not {"checks", "hidden"} & set(path.relative_to(grader).parts)}
    modules |= {path.name for path in grader.iterdir() if path.is_dir() and path.name not in ("checks", "hidden")
                and (path / "__init__.py").exists()}
    assert sorted(set(mapped) - modules) == [], "docs/contributor.md maps modules that autograder/ does not have"
    assert sorted(modules - set(mapped)) == [], "docs/contributor.md does not place these modules of autograder/"
