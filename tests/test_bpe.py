"""Byte-level BPE: the fast trainer and encoder equal the reference ones, text round-trips, and the
pre-split is GPT-2's, as a maintained implementation (Hugging Face ``tokenizers``) applies it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyllm.bpe import (BPETokenizer, bpe_decode, bpe_encode, bpe_encode_split, pre_split, train_bpe,
                         train_bpe_chunks, train_bpe_fast)
from tinyllm.data import read_corpus

# Small alphabets make repeated pairs, ties and runs ("aaaa") likely.
small_texts = st.text(alphabet=st.sampled_from("ab c\né😀"), max_size=80)
# ... and with letters, digits, apostrophes, punctuation and whitespace runs, many kinds of chunk.
chunky_texts = st.text(alphabet=st.sampled_from("ab 'st1 2\n\t?:é😀"), max_size=80)


@settings(max_examples=300, deadline=None)
@given(text=small_texts, extra=st.integers(0, 40))
def test_fast_trainer_equals_reference(text, extra):
    assert train_bpe_fast(text, 256 + extra) == train_bpe(text, 256 + extra)


@settings(max_examples=200, deadline=None)
@given(train_text=small_texts, text=st.text(max_size=60), extra=st.integers(0, 30))
def test_any_unicode_round_trips(train_text, text, extra):
    merges = train_bpe(train_text, 256 + extra)
    ids = bpe_encode(text, merges)
    assert bpe_decode(ids, merges) == text
    tokenizer = BPETokenizer(merges)
    assert tokenizer.encode(text) == ids
    assert tokenizer.decode(ids) == text


def test_ties_go_to_the_pair_that_occurs_first():
    # "cd" and "ab" both occur twice; "cd" occurs first.
    assert train_bpe("cdab cdab", 257) == [(ord("c"), ord("d"))]
    # After merging (a, a) in "aaaa" -> [aa, aa]: occurrences never overlap.
    assert bpe_encode("aaaaa", train_bpe("aaaaa", 257)) == [256, 256, ord("a")]


def test_training_stops_when_one_token_is_left():
    assert train_bpe("abab", 1000) == [(97, 98), (256, 256)]  # "ab", then "abab": one token left


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="at least 256"):
        train_bpe("abc", 255)
    with pytest.raises(ValueError, match="surrogate"):
        bpe_encode("a\ud800b", [])
    with pytest.raises(ValueError, match="not in the vocabulary"):
        bpe_decode([300], [])
    with pytest.raises(ValueError, match="not created before"):
        BPETokenizer([(300, 1)])


def test_save_and_load_round_trip(tmp_path):
    tokenizer = BPETokenizer.train("the cat sat on the mat, the end", 270)
    path = tmp_path / "tok.json"
    tokenizer.save(path)
    assert BPETokenizer.load(path).merges == tokenizer.merges
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not a saved BPE tokenizer"):
        BPETokenizer.load(path)


# ---------------------------------------------------------------- BPE within chunks


@settings(max_examples=300, deadline=None)
@given(text=chunky_texts, extra=st.integers(0, 40))
def test_fast_trainer_with_the_pre_split_equals_the_reference_over_chunks(text, extra):
    assert train_bpe_fast(text, 256 + extra, split=True) == train_bpe_chunks(pre_split(text), 256 + extra)


@settings(max_examples=100, deadline=None)
@given(text=small_texts, extra=st.integers(0, 20))
def test_one_chunk_is_plain_bpe(text, extra):
    assert train_bpe_chunks([text], 256 + extra) == train_bpe(text, 256 + extra)


@settings(max_examples=200, deadline=None)
@given(train_text=chunky_texts, text=st.text(max_size=60), extra=st.integers(0, 30))
def test_the_split_tokenizer_encodes_chunk_by_chunk_and_round_trips(train_text, text, extra):
    merges = train_bpe_chunks(pre_split(train_text), 256 + extra)
    ids = bpe_encode_split(text, merges)
    assert ids == [i for chunk in pre_split(text) for i in bpe_encode(chunk, merges)]
    tokenizer = BPETokenizer(merges, split=True)
    assert tokenizer.encode(text) == ids
    assert tokenizer.encode(text) == ids  # again, from its cache of encoded chunks
    assert tokenizer.decode(ids) == text


def test_no_pair_is_counted_across_chunks_and_ties_go_to_the_first_occurrence():
    a, b, c, d = map(ord, "abcd")
    assert train_bpe_chunks(["a", "b", "a", "b"], 300) == []  # "ab" occurs only across boundaries
    assert train_bpe_chunks(["ab", "cd", "cd", "ab"], 257) == [(a, b)]  # a tie, and "ab" occurs first
    assert train_bpe_chunks(["cd", "ab", "ab", "ab"], 257) == [(a, b)]  # counts add up over chunks
    assert train_bpe_chunks(["aaa"], 258) == [(a, a), (256, a)]  # within a chunk, as train_bpe
    assert train_bpe_fast("ab ab ab", 300, split=True) == [(a, b), (32, 256)]  # "ab", then " ab"
    assert train_bpe_fast("ab ab ab", 300) == train_bpe("ab ab ab", 300) != [(a, b), (32, 256)]  # unsplit


def test_the_split_tokenizer_saves_its_pre_split():
    tokenizer = BPETokenizer.train("the cat sat on the mat, the end", 270, end_of_text=True, split=True)
    again = BPETokenizer.from_json(tokenizer.to_json())
    assert again.split and again.merges == tokenizer.merges and again.end_of_text_id == tokenizer.end_of_text_id
    assert not BPETokenizer.from_json('{"merges": [[97, 98]]}').split  # saved before the pre-split existed


# ---------------------------------------------------------------- the pre-split is GPT-2's

# Text made to tell split patterns apart: contractions (upper case too), digits and other numerals,
# letters and marks of other scripts, emoji, runs of spaces, tabs and newlines, trailing whitespace.
ADVERSARIAL = [
    "I'm sure you're right: we've seen they'll go, he'd say it's done, don't you?",
    "IT'S LOUD. YOU'RE HERE, WE'VE, THEY'LL, I'M, HE'D, DON'T", "'s's 's ''s 'S rock'n'roll it’s",
    "GPT-2's 1,000,000 tokens cost $3.50 (2024) at 10:30pm, x2y3 0x1F 007",
    "٣٤٥ ½ Ⅻ ² ３４ 一二三", "naïve café, Crème brûlée; e\u0301 n\u0303", "日本語の文章を分割する。東京",
    "Привет, мир! Ελληνικά, עברית, العربية, हिन्दी, ภาษาไทย",
    "🙂🚀 👍🏽 👨\u200d👩\u200d👧 🇫🇷 ✓ ∑ ∫ →", "a b  c   d    e", "   leading and trailing   ",
    "tab\tand\t\ttabs \t mixed\t", "one\ntwo\n\nthree\n\n\nfour \n five", "?\nA: Q: x?\nA:",
    "\r\n windows\r\n", "nbsp\u00a0x ideographic\u3000x line\u2028sep nel\u0085x", " ", "  ", "\n", "", "x ",
    "<|endoftext|> def f(x):\n    return x ** 2  # done\n", "https://example.org/a?b=1&c=2 --> ... !!! ?!",
]


def byte_level_split(text: str) -> list[str]:
    """Hugging Face tokenizers' ByteLevel pre-tokenizer (GPT-2's pattern), its chunks as text again.

    ByteLevel writes each chunk's bytes in GPT-2's printable alphabet (a byte that is a visible
    character stands for itself; the others are mapped, in order, to code points from 256 on);
    mapping that alphabet back gives the chunk's bytes. Nothing is downloaded.
    """
    from tokenizers.pre_tokenizers import ByteLevel

    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    hidden = [b for b in range(256) if b not in visible]
    to_byte = {chr(b): b for b in visible} | {chr(256 + k): b for k, b in enumerate(hidden)}
    assert set(to_byte) == set(ByteLevel.alphabet())  # the alphabet as the library states it
    splitter = ByteLevel(add_prefix_space=False, use_regex=True)
    return [bytes(to_byte[ch] for ch in chunk).decode("utf-8") for chunk, _ in splitter.pre_tokenize_str(text)]


@pytest.mark.parametrize("text", ADVERSARIAL)
def test_pre_split_equals_the_reference_on_adversarial_text(text):
    assert pre_split(text) == byte_level_split(text)
    assert "".join(pre_split(text)) == text


def test_pre_split_equals_the_reference_on_the_corpus():
    corpus = read_corpus()
    chunks = pre_split(corpus)
    assert chunks == byte_level_split(corpus) and "".join(chunks) == corpus


# Characters assigned in the Unicode of this Python (unassigned ones are left out: the regex package
# may know a newer Unicode than the reference's regex engine, and classify them as letters sooner).
assigned = st.characters(exclude_categories=("Cs", "Cn"))


@settings(max_examples=200, deadline=None)
@given(text=st.text(alphabet=st.one_of(st.sampled_from(" \n\t'sStd1é😀?"), assigned), max_size=40))
def test_pre_split_equals_the_reference_on_random_text(text):
    assert pre_split(text) == byte_level_split(text)


def test_pre_split_keeps_the_usual_chunks():
    """What chapter 2 says of the pattern, one alternative at a time."""
    assert pre_split("Q: What's a token?\nA: A piece of text.") == [
        "Q", ":", " What", "'s", " a", " token", "?", "\n", "A", ":", " A", " piece", " of", " text", "."]
    assert pre_split("IT'S 2024!") == ["IT", "'", "S", " 2024", "!"]  # contractions in lower case only
    assert pre_split("a   b\n\nc ") == ["a", "  ", " b", "\n", "\n", "c", " "]  # the last space goes with "b"
    with pytest.raises(TypeError):
        pre_split(b"bytes")
