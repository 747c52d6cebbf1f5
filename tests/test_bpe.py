"""Byte-level BPE: the fast trainer and encoder equal the reference ones, and text round-trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyllm.bpe import BPETokenizer, bpe_decode, bpe_encode, train_bpe, train_bpe_fast

# Small alphabets make repeated pairs, ties and runs ("aaaa") likely.
small_texts = st.text(alphabet=st.sampled_from("ab c\né😀"), max_size=80)


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
