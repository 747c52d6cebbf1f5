"""Hidden checks for 01_tokenization: the reference BPE is the oracle on random texts."""

from __future__ import annotations

import random

from autograder.grading import expect
from autograder.checks.test_01_tokenization import BOOK, counts_in_order, function
from autograder.grading.registry import check
from tinyllm.bpe import bpe_decode, bpe_encode, merge_pair, pair_counts, train_bpe


def random_texts(seed: int, count: int):
    rng = random.Random(seed)
    for _ in range(count):
        alphabet = rng.choice(["ab", "abc ", "xyz\n", "éa😀", "aaab"])
        yield "".join(rng.choice(alphabet) for _ in range(rng.randint(5, 60)))


@check("01_tokenization", "pair_counts", points=1, book=BOOK + "#byte-pair-encoding", hidden=True)
def test_pair_counts_hidden(sub):
    """pair_counts equals the reference (counts and order) on random id lists full of runs."""
    counts = function(sub, "pair_counts")
    for text in random_texts(test_pair_counts_hidden.autograder_check.seed, 6):
        ids = list(text.encode("utf-8"))
        expect.equal(counts_in_order(counts(ids)), counts_in_order(pair_counts(ids)), "pair_counts(ids)",
                     f"the bytes of {text!r}")


@check("01_tokenization", "merge_pair", points=1, book=BOOK + "#byte-pair-encoding", hidden=True)
def test_merge_pair_hidden(sub):
    """merge_pair equals the reference on random id lists and pairs."""
    merge = function(sub, "merge_pair")
    for i, text in enumerate(random_texts(test_merge_pair_hidden.autograder_check.seed, 6)):
        ids = list(text.encode("utf-8"))
        pair = (ids[i % len(ids)], ids[(i + 1) % len(ids)])
        expect.equal(merge(ids, pair, 300 + i), merge_pair(ids, pair, 300 + i), f"merge_pair(ids, {pair}, {300 + i})",
                     f"the bytes of {text!r}")


@check("01_tokenization", "train_bpe", points=2, book=BOOK + "#the-tie-break-rule", hidden=True)
def test_train_bpe_hidden(sub):
    """train_bpe equals the reference on random texts full of ties and runs."""
    train = function(sub, "train_bpe")
    seed = test_train_bpe_hidden.autograder_check.seed
    with expect.blame(sub, "pair_counts", "merge_pair"):
        for i, text in enumerate(random_texts(seed, 8)):
            vocab_size = 256 + 3 + i * 3
            expect.equal(train(text, vocab_size), train_bpe(text, vocab_size), f"train_bpe({text!r}, {vocab_size})")


@check("01_tokenization", "bpe_encode", points=1, book=BOOK + "#encoding-and-decoding", hidden=True)
def test_bpe_encode_hidden(sub):
    """bpe_encode equals the reference on random texts and merge lists."""
    encode = function(sub, "bpe_encode")
    seed = test_bpe_encode_hidden.autograder_check.seed
    texts = list(random_texts(seed, 6))
    with expect.blame(sub, "merge_pair"):
        for train_text, text in zip(texts, reversed(texts)):
            merges = train_bpe(train_text, 275)
            expect.equal(encode(text, merges), bpe_encode(text, merges), f"bpe_encode({text!r}, merges)")


@check("01_tokenization", "bpe_decode", points=1, book=BOOK + "#encoding-and-decoding", hidden=True)
def test_bpe_decode_hidden(sub):
    """bpe_decode equals the reference, also on id lists that cut a character in two."""
    decode = function(sub, "bpe_decode")
    seed = test_bpe_decode_hidden.autograder_check.seed
    for text in random_texts(seed, 5):
        merges = train_bpe(text, 270)
        ids = bpe_encode(text, merges)
        expect.equal(decode(ids, merges), text, "bpe_decode(bpe_encode(text))", inputs=repr(text))
        expect.equal(decode(ids[1:], merges), bpe_decode(ids[1:], merges), "bpe_decode of a cut sequence",
                     hint="Decode with errors='replace': a cut multi-byte character becomes U+FFFD.")
