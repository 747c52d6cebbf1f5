"""Public checks for 01_tokenization: pair_counts, merge_pair, train_bpe, bpe_encode, bpe_decode."""

from __future__ import annotations

from autograder.grading import expect
from autograder.sandbox.forbidden import GROUPS
from autograder.grading.registry import check
from tinyllm.bpe import train_bpe as reference_train

BOOK = "book/02_tokenization.html"
SIGNATURES = {"pair_counts": ["ids"], "merge_pair": ["ids", "pair", "new_id"], "train_bpe": ["text", "vocab_size"],
              "bpe_encode": ["text", "merges"], "bpe_decode": ["ids", "merges"]}


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


def counts_in_order(counts):
    """A dict's items as a list, so that the order of first occurrence is compared too."""
    return list(counts.items()) if isinstance(counts, dict) else counts


@check("01_tokenization", "pair_counts", points=1, book=BOOK + "#byte-pair-encoding",
       reference="tinyllm.bpe:pair_counts")
def test_pair_counts_public(sub):
    """pair_counts counts every adjacent pair (overlaps included), in order of first occurrence."""
    pair_counts = function(sub, "pair_counts")
    ids = [1, 2, 3, 1, 2, 2, 2]
    expected = [((1, 2), 2), ((2, 3), 1), ((3, 1), 1), ((2, 2), 2)]
    got = pair_counts(ids)
    expect.true(isinstance(got, dict), f"pair_counts({ids}) should return a dict, not {expect.describe_tensor(got)}.")
    hint = ""
    if dict(counts_in_order(got)) == dict(expected):
        hint = ("The counts are right but the order is not: build the dict while scanning left to right, "
                "so each pair is inserted when it first occurs.")
    elif got.get((2, 2)) == 1:
        hint = ("Counting sees every adjacent position, overlaps included: 2 2 2 holds the pair (2, 2) twice. "
                "(It is merging that never reuses an id.)")
    expect.equal(counts_in_order(got), expected, f"list(pair_counts({ids}).items())", hint=hint)
    expect.equal(counts_in_order(pair_counts([7])), [], "pair_counts([7])", hint="One id has no pairs.")


def merge_hint(got, ids, pair, new_id) -> str:
    """What a wrong merge_pair result says about the code that produced it."""
    overlapping, i = [], 0  # the usual mistake: after a merge, move on by one id instead of two
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            overlapping.append(new_id)
        else:
            overlapping.append(ids[i])
        i += 1
    if got == overlapping:
        return ("After a merge at positions i and i + 1 the scan must go on at i + 2: yours moves on by one, "
                "so the second id of a merged pair is used again (merged or copied). With (a, a), a a a a a "
                "gives [aa, aa, a].")
    if isinstance(got, list) and len(got) == len(ids):
        return "Nothing was merged: where (ids[i], ids[i + 1]) == pair, emit new_id instead of the two ids."
    return "Scan left to right; where (ids[i], ids[i + 1]) is the pair, emit new_id and skip both."


@check("01_tokenization", "merge_pair", points=1, book=BOOK + "#byte-pair-encoding", reference="tinyllm.bpe:merge_pair")
def test_merge_pair_public(sub):
    """merge_pair replaces each occurrence left to right, never reusing an id (a a a -> [aa, a])."""
    merge_pair = function(sub, "merge_pair")
    cases = [([5, 1, 2, 1, 2, 3, 1], (1, 2), [5, 9, 9, 3, 1]), ([4, 4, 4, 4, 4], (4, 4), [9, 9, 4]),
             ([1, 2, 1], (2, 2), [1, 2, 1]), ([1, 2], (1, 2), [9])]
    for ids, pair, expected in cases:
        got = merge_pair(ids, pair, 9)
        expect.equal(got, expected, f"merge_pair({ids}, {pair}, 9)", hint=merge_hint(got, ids, pair, 9))


@check("01_tokenization", "train_bpe", points=1, book=BOOK + "#the-tie-break-rule")
def test_train_bpe_public(sub):
    """train_bpe merges the most frequent pair, breaks ties by first occurrence, never overlaps."""
    train_bpe = function(sub, "train_bpe")
    with expect.blame(sub, "pair_counts", "merge_pair"):
        got = train_bpe("cdab cdab", 257)
        expect.equal(got, [(99, 100)], 'train_bpe("cdab cdab", 257)', inputs='"cd" and "ab" both occur twice',
                     hint="On a tie, merge the pair whose FIRST occurrence comes first: (c, d) = (99, 100) here.")
        got = train_bpe("aaaaa", 258)
        expect.equal(got, [(97, 97), (256, 256)], 'train_bpe("aaaaa", 258)',
                     hint="Merging (a, a) in a a a a a gives [aa, aa, a] (left to right, no overlaps); then "
                          "(aa, aa) = (256, 256) is the most frequent pair.")
        expect.equal(train_bpe("abab", 300), [(97, 98), (256, 256)], 'train_bpe("abab", 300)',
                     hint="Once the text is a single token there is no pair left: stop early, with fewer merges "
                          "than vocab_size - 256.")
        text = "the cat sat on the mat; the cat ate the rat."
        expect.equal(train_bpe(text, 270), reference_train(text, 270), f"train_bpe({text!r}, 270)")


@check("01_tokenization", "train_bpe", points=1, book=BOOK + "#the-tie-break-rule")
def test_train_bpe_errors_public(sub):
    """train_bpe raises ValueError for a vocab_size below 256 (the error contract, checked apart from the values)."""
    train_bpe = function(sub, "train_bpe")
    expect.raises(lambda: train_bpe("abc", 255), ValueError, "train_bpe(text, vocab_size=255)")


@check("01_tokenization", "bpe_encode", points=1, book=BOOK + "#encoding-and-decoding",
       reference="tinyllm.bpe:bpe_encode")
def test_bpe_encode_public(sub):
    """bpe_encode applies the merges in the order they were learned."""
    bpe_encode = function(sub, "bpe_encode")
    merges = [(97, 98), (256, 99), (257, 257)]  # ab, abc, abcabc
    with expect.blame(sub, "merge_pair"):
        expect.equal(bpe_encode("abcabcab", merges), [258, 256], 'bpe_encode("abcabcab", merges)',
                     inputs="merges [(97, 98), (256, 99), (257, 257)] (ab, abc, abcabc)")
        expect.equal(bpe_encode("", merges), [], 'bpe_encode("", merges)')
        expect.equal(bpe_encode("é", []), [195, 169], 'bpe_encode("é", [])', hint="Start from the UTF-8 bytes.")


@check("01_tokenization", "bpe_decode", points=1, book=BOOK + "#encoding-and-decoding")
def test_bpe_decode_public(sub):
    """bpe_decode inverts bpe_encode on any Unicode text."""
    bpe_decode = function(sub, "bpe_decode")
    from tinyllm.bpe import bpe_encode

    merges = reference_train("héllo wörld, hello world! 😀😀", 280)
    for text in ["héllo wörld", "😀 and 日本語", "", "never seen: ∑ ∫ ✓"]:
        expect.equal(bpe_decode(bpe_encode(text, merges), merges), text, f"bpe_decode(bpe_encode({text!r}))",
                     hint="Join the bytes of every id, then decode the bytes as UTF-8 once, at the end.")
    expect.equal(bpe_decode([0, 104, 105], []), "\x00hi", "bpe_decode([0, 104, 105], [])",
                 hint="Every id from 0 to 255 is a byte, id 0 included (the byte 0).")
    expect.equal(bpe_decode([104, 195], []), "h\ufffd", "bpe_decode([104, 195], []): 195 is the first byte of a "
                 "two-byte character, cut off", hint="Bytes that are not valid UTF-8 (a character cut in two) "
                 "become U+FFFD: decode with errors='replace'.")


@check("01_tokenization", "bpe_decode", points=1, book=BOOK + "#encoding-and-decoding")
def test_bpe_decode_errors_public(sub):
    """bpe_decode raises ValueError for an id it has no bytes for (the error contract, checked apart)."""
    bpe_decode = function(sub, "bpe_decode")
    merges = reference_train("héllo wörld, hello world! 😀😀", 280)
    expect.raises(lambda: bpe_decode([256 + len(merges)], merges), ValueError, "bpe_decode with an unknown id")
    expect.raises(lambda: bpe_decode([-1], merges), ValueError, "bpe_decode with the id -1")
