"""The corpus (data/corpus.txt), its generator and tinyllm.data's reading and splitting."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tinyllm import data
from tinyllm.data import (
    CORPUS_PATH,
    CorpusSplits,
    corpus_path,
    read_corpus,
    split_corpus,
    split_documents,
)

ROOT = Path(__file__).resolve().parent.parent
GENERATOR = ROOT / "data" / "make_corpus.py"
QA_SHAPE = re.compile(r"Q: [^\n]*\S[?.]\nA: [^\n]*\S[.]")


@pytest.fixture(scope="module")
def corpus() -> str:
    return read_corpus(CORPUS_PATH)


@pytest.fixture(scope="module")
def splits(corpus: str) -> CorpusSplits:
    return split_corpus(corpus)


def load_generator():
    spec = importlib.util.spec_from_file_location("make_corpus", GENERATOR)
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_corpus"] = module  # dataclasses look their module up here
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules["make_corpus"]
    return module


# ---------------------------------------------------------------- the committed corpus


def test_committed_corpus_is_what_the_generator_writes(tmp_path: Path) -> None:
    out = tmp_path / "corpus.txt"
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"\d+ documents, \d+ bytes", result.stdout), result.stdout
    assert out.read_bytes() == CORPUS_PATH.read_bytes(), (
        "data/corpus.txt differs from what data/make_corpus.py generates: "
        "run `python data/make_corpus.py` and commit data/corpus.txt"
    )


def test_corpus_size_is_within_bounds() -> None:
    size = CORPUS_PATH.stat().st_size
    assert 20_000 <= size <= 60_000, f"corpus is {size} bytes, expected 20-60 KB"


def test_every_document_is_one_question_and_one_answer(corpus: str) -> None:
    documents = split_documents(corpus)
    assert 250 <= len(documents) <= 500, len(documents)
    bad = [doc for doc in documents if not QA_SHAPE.fullmatch(doc)]
    assert not bad, f"{len(bad)} documents are not 'Q: ...\\nA: ...', e.g. {bad[0]!r}"
    # Exactly one blank line between documents and one newline at the end.
    assert corpus == "\n\n".join(documents) + "\n"


def test_documents_are_distinct(corpus: str) -> None:
    documents = split_documents(corpus)
    assert len(set(documents)) == len(documents), "the generator must not repeat a document"


def test_every_question_has_one_answer(corpus: str) -> None:
    """Asked twice, a question would have two right answers, and "answered exactly" no meaning."""
    questions = [doc.split("\n")[0] for doc in split_documents(corpus)]
    assert len(set(questions)) == len(questions)


def test_every_document_fits_the_book_models_context(corpus: str) -> None:
    """End-of-text, the document and end-of-text fit the model's window of 64 tokens plus the one it predicts."""
    from tinyllm.data import training_data
    from tinyllm.model import GPTConfig

    config = GPTConfig()
    tokenizer, data = training_data(corpus, config.vocab_size, config.context_length)
    assert tokenizer.vocab_size == config.vocab_size and tokenizer.end_of_text_id == config.vocab_size - 1
    for name, sequences in data.items():
        cut = [tokenizer.decode(seq) for seq in sequences if seq[-1] != tokenizer.end_of_text_id]
        assert not cut, f"{len(cut)} {name} documents do not fit the context window, e.g. {cut[0]!r}"


def test_corpus_is_nearly_plain_ascii(corpus: str) -> None:
    non_ascii = [doc for doc in split_documents(corpus) if not doc.isascii()]
    assert len(non_ascii) <= 10, f"{len(non_ascii)} documents contain non-ASCII characters"


def test_knowledge_base_is_large_and_every_topic_is_asked_about(corpus: str) -> None:
    generator = load_generator()
    assert len(generator.ENTRIES) >= 120
    questions = "\n".join(doc.split("\n")[0] for doc in split_documents(corpus))
    missing = [e.term for e in generator.ENTRIES if f" {e.term}" not in questions]
    assert not missing, f"topics never asked about: {missing}"


# ---------------------------------------------------------------- splitting the corpus


def test_splits_are_disjoint_and_cover_every_distinct_document(corpus: str, splits: CorpusSplits) -> None:
    parts = [split_documents(part) for part in (splits.train, splits.val, splits.test)]
    sets = [set(part) for part in parts]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert sets[0] | sets[1] | sets[2] == set(split_documents(corpus))
    assert sum(len(part) for part in parts) == len(set(split_documents(corpus)))


def test_split_fractions_are_close_to_requested(splits: CorpusSplits) -> None:
    counts = {name: len(split_documents(getattr(splits, name))) for name in ("train", "val", "test")}
    total = sum(counts.values())
    for name, wanted in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        # Each document lands in a split by its hash, so a count is binomial: allow 3 standard deviations.
        assert abs(counts[name] / total - wanted) <= 3 * (wanted * (1 - wanted) / total) ** 0.5, (name, counts)


def test_split_fractions_follow_other_requests() -> None:
    text = "\n\n".join(f"Q: What is item {i}?\nA: Item {i} is an item." for i in range(5_000))
    splits = split_corpus(text, val_fraction=0.25, test_fraction=0.05)
    counts = [len(split_documents(part)) for part in (splits.train, splits.val, splits.test)]
    for count, wanted in zip(counts, (0.7, 0.25, 0.05)):
        assert abs(count / 5_000 - wanted) <= 0.02, counts


def test_split_texts_are_documents_joined_by_blank_lines(splits: CorpusSplits) -> None:
    for part in (splits.train, splits.val, splits.test):
        assert part.endswith("\n") and not part.endswith("\n\n")
        assert part == "\n\n".join(split_documents(part)) + "\n"


def test_split_keeps_the_original_order(corpus: str, splits: CorpusSplits) -> None:
    position = {doc: i for i, doc in reversed(list(enumerate(split_documents(corpus))))}
    for part in (splits.train, splits.val, splits.test):
        indices = [position[doc] for doc in split_documents(part)]
        assert indices == sorted(indices)


def test_split_is_deterministic_and_does_not_depend_on_order(corpus: str, splits: CorpusSplits) -> None:
    assert split_corpus(corpus) == splits
    shuffled = split_documents(corpus)
    random.Random(0).shuffle(shuffled)
    again = split_corpus("\n\n".join(shuffled))
    for name in ("train", "val", "test"):
        assert set(split_documents(getattr(again, name))) == set(split_documents(getattr(splits, name)))


def test_split_does_not_depend_on_python_hash_seed(splits: CorpusSplits) -> None:
    # Python's hash() of a str changes from one process to the next; the split must not.
    code = (
        "import hashlib\n"
        "from tinyllm.data import read_corpus, split_corpus\n"
        "s = split_corpus(read_corpus())\n"
        "print(hashlib.sha256((s.train + s.val + s.test).encode()).hexdigest())\n"
    )
    digests = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        result = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT,
            timeout=120, check=True,
        )
        digests.add(result.stdout.strip())
    here = hashlib.sha256((splits.train + splits.val + splits.test).encode()).hexdigest()
    assert digests == {here}


def test_duplicates_are_removed_before_splitting() -> None:
    documents = [f"Q: What is item {i}?\nA: Item {i} is an item." for i in range(300)]
    text = "\n\n".join(documents + documents[:100])  # a third of them twice
    splits = split_corpus(text)
    parts = [split_documents(part) for part in (splits.train, splits.val, splits.test)]
    everything = [doc for part in parts for doc in part]
    assert sorted(everything) == sorted(documents)


def test_split_documents_handles_messy_blank_lines() -> None:
    text = "\n\n  first\nline two  \n\n\n \t \nsecond\r\n\r\nthird\n\n\n"
    assert split_documents(text) == ["first\nline two", "second", "third"]
    assert split_documents("") == []


@pytest.mark.parametrize(
    ("val", "test", "message"),
    [
        (-0.1, 0.1, r"val_fraction must be in \[0, 1\)"),
        (0.1, 1.0, r"test_fraction must be in \[0, 1\)"),
        (float("nan"), 0.1, r"val_fraction must be in \[0, 1\)"),
        (0.5, 0.5, r"must be below 1"),
        (0.6, 0.7, r"must be below 1"),
    ],
)
def test_bad_fractions_are_rejected(corpus: str, val: float, test: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_corpus(corpus, val_fraction=val, test_fraction=test)


def test_an_empty_split_is_an_error(corpus: str) -> None:
    with pytest.raises(ValueError, match="would be empty"):
        split_corpus("Q: Only one?\nA: Only one.")
    with pytest.raises(ValueError, match="the val split would be empty"):
        split_corpus(corpus, val_fraction=0.0)


# ---------------------------------------------------------------- reading the corpus


def test_corpus_path_is_the_checkout_file_else_the_package_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    assert corpus_path() == CORPUS_PATH == ROOT / "data" / "corpus.txt"
    monkeypatch.setattr(data, "CORPUS_PATH", ROOT / "no-such-folder" / "corpus.txt")
    fallback = corpus_path()
    assert fallback.parts[-3:] == ("tinyllm", "_data", "corpus.txt")


def test_read_corpus_defaults_to_the_corpus(corpus: str) -> None:
    assert read_corpus() == corpus
    assert read_corpus(str(CORPUS_PATH)) == corpus


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        read_corpus(missing)


@pytest.mark.parametrize("content", [b"", b"  \n\n\t\n"])
def test_empty_file_is_a_clear_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="is empty"):
        read_corpus(path)


def test_non_utf8_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("Q: Caf\u00e9?\nA: Yes.".encode("latin-1"))
    with pytest.raises(ValueError, match=r"not valid UTF-8.*byte offset 6"):
        read_corpus(path)


def test_windows_line_endings_give_the_same_documents(tmp_path: Path, corpus: str) -> None:
    path = tmp_path / "crlf.txt"
    path.write_bytes(corpus.replace("\n", "\r\n").encode("utf-8"))
    assert read_corpus(path) == corpus
