"""The Colab notebooks paired with the chapters read like the page, and run with only the student package."""

from __future__ import annotations

import html
import io
import json
import os
import re
import shutil
import subprocess
import sys
from contextlib import redirect_stdout
from pathlib import Path
from unittest import mock

import pytest

from tests.conftest import ROOT
from tools import bookconfig, notebooks

CHAPTERS = notebooks.chapter_sources()


def chapter_id(path: Path) -> str:
    return path.stem


def cells(source: Path) -> list[dict]:
    return json.loads(notebooks.paired_path(source).read_text(encoding="utf-8"))["cells"]


def text(cell: dict) -> str:
    return "".join(cell["source"])


@pytest.mark.parametrize("source", CHAPTERS, ids=chapter_id)
def test_notebook_has_no_placeholder_unresolved_label_or_captionless_figure(source):
    markdown = "\n".join(text(c) for c in cells(source) if c["cell_type"] == "markdown")
    # "{ref}`" with its backtick: the role, not the subscript of $\pi_{\text{ref}}$ (chapter 13).
    for leftover in (notebooks.PLACEHOLDER, "(printed by the code)", "{glue", "{eq}", "{numref}", "{ref}`", "{cite",
                     "the figure *", "equation ("):
        assert leftover not in markdown, f"{source.name}: the notebook still shows {leftover!r}"
    assert not re.search(r"^\$\$\s*\([\w-]+\)", markdown, flags=re.M), f"{source.name}: an equation label is left"
    listed = cells(source)
    for i, cell in enumerate(listed):
        caption = cell["metadata"].get("mystnb", {}).get("figure", {}).get("caption")
        if cell["cell_type"] == "code" and caption:
            after = listed[i + 1] if i + 1 < len(listed) else {"cell_type": None, "source": ""}
            assert after["cell_type"] == "markdown" and re.match(r"\*\*Fig\. \d+\.\d+\*\* \S", text(after)), \
                f"{source.name}: the figure of cell {i} has no caption under it"


def test_values_numbers_and_captions_are_written_in():
    """Chapter 4 as an example a reader can check against the page."""
    source = ROOT / "book" / "04_softmax.md"
    glued = json.loads(notebooks.paired_path(source).read_text(encoding="utf-8"))["metadata"]["glued"]
    markdown = "\n".join(text(c) for c in cells(source) if c["cell_type"] == "markdown")
    from myst_nb.core.variables import format_plain_text

    assert f"the vocabulary size {format_plain_text(glued['sm_vocab'], '')}" in markdown
    assert "\\tag{4.1}" in markdown and "Four facts about Eq. 4.1 are used" in markdown
    assert "**Fig. 4.1** One set of logits turned into a distribution" in markdown


@pytest.mark.parametrize("source", CHAPTERS, ids=chapter_id)
def test_equation_and_figure_numbers_are_the_pages(built_html, source):
    page = (built_html / source.relative_to(ROOT).with_suffix(".html")).read_text(encoding="utf-8")
    numbers = notebooks.Numbers()
    on_page = dict(re.findall(r'<span class="eqno">\(([\d.]+)\)<a class="headerlink" href="#equation-([\w-]+)"', page))
    mine = {label: n for label, n in numbers.equations.items() if f'id="equation-{label}"' in page}
    assert mine == {label: n for n, label in on_page.items()}, source.name
    figures = re.findall(r'<span class="caption-number">Fig\. ([\d.]+) </span>', page)
    captions = [re.match(r"\*\*Fig\. ([\d.]+)\*\*", text(c)).group(1) for c in cells(source)
                if "figure-caption" in c["metadata"].get("tags", [])]
    assert captions == figures, source.name
    # Every reference, in order, as the page writes it ("Eq. 1.3", "Fig. 4.1"), captions included.
    refs = re.findall(r'<span class="std std-numref">Fig\. ([\d.]+)</span>|href="[^"]*#equation-[\w-]+">Eq\. ([\d.]+)</a>',
                      page)
    markdown = "\n".join(re.sub(r"^\*\*Fig\. [\d.]+\*\* ", "", text(c)) for c in cells(source)
                         if c["cell_type"] == "markdown")
    assert re.findall(r"\b(Fig|Eq)\. (\d+\.\d+)", markdown) == [("Fig", f) if f else ("Eq", e) for f, e in refs], \
        source.name
    for name, n in numbers.figures.items():
        if f'id="{name}"' in page:
            assert re.search(rf'id="{name}".*?<span class="caption-number">Fig\. {re.escape(n)} </span>', page, re.S)


@pytest.mark.parametrize("source", CHAPTERS, ids=chapter_id)
def test_quoted_values_are_the_builds(source):
    """After a build, the notebook quotes what it computed (wall-clock measurements aside: they differ per run)."""
    if not notebooks.quoted_names(source):
        pytest.skip(f"{source.name} quotes no computed value")
    built = notebooks.build_values(source)
    if built is None:
        pytest.skip("no book build (_build/jupyter_execute): the notebooks keep the values they were made with")
    quoted = json.loads(notebooks.paired_path(source).read_text(encoding="utf-8"))["metadata"]["glued"]
    assert set(quoted) == set(notebooks.quoted_names(source)), f"{source.name}: run `make notebooks`"
    stale = [name for name in quoted if not notebooks.measured(source, name) and quoted[name] != built.get(name)]
    assert not stale, f"{source.name}: values changed since the notebook was made: {stale}; run `make notebooks`"


def test_set_up_cell_says_what_it_installs_and_defines_what_chapters_use():
    code = text(cells(CHAPTERS[0])[0])
    spec = bookconfig.package_install_spec()
    assert re.search(r"@v\d+\.\d+\.\d+$|@[0-9a-f]{40}$|@[\w.-]+$", spec) and not spec.endswith("@main")
    printed = io.StringIO()
    with mock.patch("subprocess.run") as run, mock.patch("importlib.util.find_spec", return_value=None), \
            redirect_stdout(printed):
        names: dict = {}
        exec(code, names)
    assert printed.getvalue() == f"Installing the book's library: {spec}\n"
    assert run.call_args.args[0][-1] == spec
    assert callable(names["glue"]) and names["glue"]("x", 3) == 3
    for source in CHAPTERS:  # the chapter's own hidden set-up is folded in, its comment gone
        sources = [text(c) for c in cells(source)]
        assert "Colab does not need this cell" not in "".join(sources)
        folded = notebooks.BOOK_SETUP_MARK in source.read_text(encoding="utf-8")
        assert sum("from tinyllm.book import glue" in s for s in sources) == int(folded)


def test_the_pin_follows_the_config(monkeypatch):
    config = bookconfig.config()
    config["repository"]["package_ref"] = "fall-2026"
    monkeypatch.setattr(bookconfig, "config", lambda: config)
    assert bookconfig.package_install_spec().endswith("@fall-2026")
    del config["repository"]["package_ref"]
    assert bookconfig.package_install_spec().endswith(f"@v{bookconfig.version()}")


def test_the_notebooks_install_the_last_commit_of_the_student_package():
    """`make pin` after a change to the package: Colab installs exactly the code the checks ran here."""
    last = bookconfig.last_package_commit()
    if last is None:
        pytest.skip("no git history here (a shallow clone or an unpacked archive)")
    ref = bookconfig.package_ref()
    if not re.fullmatch(r"[0-9a-f]{40}", ref):  # an instructor's tag: it must hold the package as it is now
        resolved = subprocess.run(["git", "rev-parse", "--verify", "-q", f"{ref}^{{commit}}"], cwd=ROOT,
                                  capture_output=True, text=True).stdout.strip()
        assert resolved, f"package_ref {ref!r} is not a commit or tag of this repository"
        ref = resolved
    assert ref == last, "the student package changed since the pin: run `make pin`, commit _config.yml, " \
        "then `make notebooks exercises` (and commit them)"


def test_regenerating_without_a_build_changes_nothing(monkeypatch, tmp_path):
    """`check` without _build uses the values kept in each notebook: reproducible, and still catches edits."""
    source = ROOT / "book" / "04_softmax.md"
    committed = notebooks.paired_path(source).read_text(encoding="utf-8")
    assert notebooks.render(source, notebooks.committed_values(source)) == committed
    edited = tmp_path / "book" / source.name
    edited.parent.mkdir()
    (tmp_path / "tinyllm").symlink_to(ROOT / "tinyllm")  # what the chapter's literalinclude reads
    shutil.copy(ROOT / "references.bib", tmp_path / "references.bib")
    monkeypatch.setattr(notebooks, "ROOT", tmp_path)
    edited.write_text(source.read_text(encoding="utf-8").replace("## Temperature", "## Temperature, again"))
    shutil.copy(notebooks.paired_path(source), notebooks.paired_path(edited))
    assert notebooks.render(edited, notebooks.committed_values(edited)) != \
        notebooks.paired_path(edited).read_text(encoding="utf-8")


# ---------------------------------------------------------------- a fresh environment, as in Colab


@pytest.fixture(scope="module")
def student_venv(tmp_path_factory) -> Path:
    """A fresh venv with the student package from this checkout (and a kernel to run notebooks), nothing else."""
    venv = tmp_path_factory.mktemp("student") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    constraints = ROOT / "requirements" / f"constraints-py{sys.version_info[0]}{sys.version_info[1]}.txt"
    install = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT), "ipykernel"]
    if constraints.exists():
        install += ["-c", str(constraints)]  # torch: the pinned CPU wheel, never a CUDA build
    subprocess.run(install, check=True, timeout=1200)
    version = subprocess.run([str(python), "-c", "import torch; print(torch.__version__)"], capture_output=True,
                             text=True, check=True).stdout.strip()
    assert "+cpu" in version or not sys.platform.startswith("linux"), f"the venv got torch {version}"
    return venv


@pytest.mark.slow
@pytest.mark.parametrize("source", CHAPTERS, ids=chapter_id)
def test_chapter_notebook_runs_top_to_bottom_with_only_the_student_package(student_venv, source, tmp_path):
    import nbformat
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient

    kernels = tmp_path / "kernels"
    subprocess.run([str(student_venv / "bin" / "python"), "-m", "ipykernel", "install", "--prefix", str(kernels),
                    "--name", "student"], check=True, capture_output=True)
    manager = KernelSpecManager(kernel_dirs=[str(kernels / "share" / "jupyter" / "kernels")])
    notebook = nbformat.read(notebooks.paired_path(source), as_version=4)
    env = {**os.environ, "MPLBACKEND": "Agg"}
    # Training the chapter-8 model takes a minute; a build left it in its cache, and a fresh run reuses it.
    if (ROOT / "_build" / "models").is_dir():
        env["TINYLLM_CACHE"] = str(ROOT / "_build" / "models")
    kernel = KernelManager(kernel_name="student", kernel_spec_manager=manager)
    client = NotebookClient(notebook, km=kernel, timeout=600, allow_errors=False,
                            resources={"metadata": {"path": str(tmp_path)}})
    try:
        with mock.patch.dict(os.environ, env):
            client.execute()
    finally:  # nbclient leaves a kernel it was handed running: each chapter's would stay, holding its memory
        if kernel.has_kernel:
            kernel.shutdown_kernel(now=True)
    first = "".join(o.get("text", "") for o in notebook.cells[0].get("outputs", []))
    assert first == "", "the set-up cell installed something although the package was there"
