"""The parallel execution step of the book build (tools/execute_book.py) and the model cache's keys."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT
from tools import execute_book
from tools.execute_book import chapters, inputs_hash, library_closure, read_notebook


def test_every_executed_page_of_the_table_of_contents_is_found_in_book_order():
    names = [p.stem for p in chapters()]
    assert names[:3] == ["01_language_modelling", "02_tokenization", "03_embeddings"]
    assert {"08_tiny_gpt", "10_modern_block", "11_fast_generation", "exercises"} <= set(names)
    assert "intro" not in names and "notation" not in names  # no code: nothing to execute


def test_a_chapter_depends_on_the_modules_it_imports_and_what_they_import():
    modules = library_closure(["from tinyllm.book import trained_tiny_gpt\nimport torch"])
    assert "book" in modules and "__init__" in modules
    closure = library_closure(["from tinyllm.attention import causal_attention"])
    assert {"attention", "positional", "softmax"} <= set(closure) and "train" not in closure
    assert library_closure(["%matplotlib inline"]) == ["__init__"]  # not Python: nothing followed


def test_a_library_change_reaches_only_the_chapters_that_import_it(tmp_path, monkeypatch):
    package = tmp_path / "tinyllm"
    (package / "_data").mkdir(parents=True)
    for name, source in {"__init__": "", "softmax": "X = 1\n", "bpe": "Y = 1\n",
                         "attention": "from tinyllm.softmax import X\n"}.items():
        (package / f"{name}.py").write_text(source)
    (package / "_data" / "corpus.txt").write_text("text")
    monkeypatch.setattr(execute_book, "PACKAGE", package)

    class Notebook:
        def __init__(self, code):
            self.cells = [type("Cell", (), {"cell_type": "code", "source": code})()]

    attention_chapter, bpe_chapter = Notebook("from tinyllm.attention import X"), Notebook("import tinyllm.bpe")
    before = inputs_hash(attention_chapter), inputs_hash(bpe_chapter)
    (package / "softmax.py").write_text("X = 2\n")  # imported by attention, not by bpe
    after = inputs_hash(attention_chapter), inputs_hash(bpe_chapter)
    assert after[0] != before[0] and after[1] == before[1]
    (package / "_data" / "corpus.txt").write_text("other text")  # every chapter reads the corpus
    assert inputs_hash(bpe_chapter) != after[1]


def test_the_chapters_are_read_as_myst_nb_reads_them():
    notebook = read_notebook(chapters()[0])
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    assert any(c.cell_type == "code" for c in notebook.cells)


def test_the_model_cache_key_follows_the_training_code_imports():
    from tinyllm.book import training_modules

    modules = training_modules()
    assert {"train", "model", "optim", "positional", "layers", "attention", "data", "bpe"} <= set(modules)
    assert "sampling" not in modules and "book" not in modules
    assert "book" in training_modules(extra=("book",))  # chapter 10's variants are built in tinyllm.book


@pytest.mark.slow
def test_executing_the_chapters_in_another_order_glues_the_same_values(tmp_path):
    """The build ran the chapters longest first, two at a time; run them again in reverse book order.

    Every glued value except wall-clock measurements must be identical. The
    trained models come from the build's model cache (training on one thread
    gives the same weights whichever process trains: see test_modern's
    compare_runs test), so this checks that no chapter depends on which
    chapters ran before or beside it.
    """
    from tools.notebooks import measured

    built = execute_book.glued_values()
    missing = [str(p.relative_to(ROOT)) for p in chapters() if str(p.relative_to(ROOT)) not in built]
    assert not missing, f"the build's cache lacks {missing}: run `make book` first"
    lines: list[str] = []
    ran = execute_book.execute(jobs=2, cache_path=tmp_path / "cache", order="reverse", log=lines.append)
    failed = [line for line in lines if " failed after " in line]
    assert set(ran) == set(built), "\n".join(failed) or f"not executed: {set(built) - set(ran)}"
    again = execute_book.glued_values(tmp_path / "cache")
    assert set(again) == set(built), "a chapter changed while the test ran"
    differences = {
        (chapter, name): (value, again[chapter].get(name))
        for chapter, values in built.items() for name, value in values.items()
        if not measured(ROOT / chapter, name) and again[chapter].get(name) != value
    }
    assert not differences, differences


def test_a_fresh_clone_starts_with_the_chapters_that_train_models():
    from tools.execute_book import expected_seconds

    guesses = {p.stem: expected_seconds(p, read_notebook(p), {}) for p in chapters()}
    first_two = sorted(guesses, key=guesses.get, reverse=True)[:2]
    assert set(first_two) <= {"08_tiny_gpt", "10_modern_block", "12_post_training"}, first_two
    measured = {"book/04_softmax.md": {"seconds": 5000.0}}  # once measured, the measurement decides
    softmax = next(p for p in chapters() if p.stem == "04_softmax")
    assert expected_seconds(softmax, read_notebook(softmax), measured) == 5000.0
