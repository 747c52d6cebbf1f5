"""Public checks for 01_tokenization: train_bpe, bpe_encode, bpe_decode."""

from __future__ import annotations

from autograder import expect
from autograder.forbidden import GROUPS
from autograder.registry import check
from tinyllm.bpe import train_bpe as reference_train

BOOK = "book/02_tokenization.html"
SIGNATURES = {"train_bpe": ["text", "vocab_size"], "bpe_encode": ["text", "merges"], "bpe_decode": ["ids", "merges"]}


def function(sub, name):
    proxy = sub.function(name, SIGNATURES[name], forbid=GROUPS["bpe"])
    if name != "train_bpe":
        return proxy
    return lambda *args: as_pairs(proxy(*args))


def as_pairs(merges):
    """Accept [[a, b], ...] as well as [(a, b), ...]: the contract is about the ids."""
    if isinstance(merges, list) and all(isinstance(m, (list, tuple)) and len(m) == 2 for m in merges):
        return [tuple(m) for m in merges]
    return merges


@check("01_tokenization", "train_bpe", points=2, book=BOOK)
def test_train_bpe_public(sub):
    """train_bpe merges the most frequent pair, breaks ties by first occurrence, never overlaps."""
    train_bpe = function(sub, "train_bpe")
    got = train_bpe("cdab cdab", 257)
    expect.equal(got, [(99, 100)], 'train_bpe("cdab cdab", 257)', inputs='"cd" and "ab" both occur twice',
                 hint="On a tie, merge the pair whose FIRST occurrence comes first: (c, d) = (99, 100) here.")
    got = train_bpe("aaaaa", 258)
    expect.equal(got, [(97, 97), (256, 256)], 'train_bpe("aaaaa", 258)',
                 hint="Merging (a, a) in a a a a a gives [aa, aa, a] (left to right, no overlaps); then "
                      "(aa, aa) = (256, 256) is the most frequent pair.")
    text = "the cat sat on the mat; the cat ate the rat."
    expect.equal(train_bpe(text, 270), reference_train(text, 270), f"train_bpe({text!r}, 270)")
    expect.raises(lambda: train_bpe("abc", 255), ValueError, "train_bpe(text, vocab_size=255)")


@check("01_tokenization", "bpe_encode", points=1, book=BOOK)
def test_bpe_encode_public(sub):
    """bpe_encode applies the merges in the order they were learned."""
    bpe_encode = function(sub, "bpe_encode")
    merges = [(97, 98), (256, 99), (257, 257)]  # ab, abc, abcabc
    expect.equal(bpe_encode("abcabcab", merges), [258, 256], 'bpe_encode("abcabcab", merges)',
                 inputs="merges [(97, 98), (256, 99), (257, 257)] (ab, abc, abcabc)")
    expect.equal(bpe_encode("", merges), [], 'bpe_encode("", merges)')
    expect.equal(bpe_encode("é", []), [195, 169], 'bpe_encode("é", [])', hint="Start from the UTF-8 bytes.")


@check("01_tokenization", "bpe_decode", points=2, book=BOOK)
def test_bpe_decode_public(sub):
    """bpe_decode inverts bpe_encode on any Unicode text and rejects unknown ids."""
    bpe_decode = function(sub, "bpe_decode")
    from tinyllm.bpe import bpe_encode

    merges = reference_train("héllo wörld, hello world! 😀😀", 280)
    for text in ["héllo wörld", "😀 and 日本語", "", "never seen: ∑ ∫ ✓"]:
        expect.equal(bpe_decode(bpe_encode(text, merges), merges), text, f"bpe_decode(bpe_encode({text!r}))",
                     hint="Join the bytes of every id, then decode the bytes as UTF-8 once, at the end.")
    expect.raises(lambda: bpe_decode([256 + len(merges)], merges), ValueError, "bpe_decode with an unknown id")
