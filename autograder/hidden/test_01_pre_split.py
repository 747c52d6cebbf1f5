"""Hidden checks for 01_tokenization, second part: the library's pre-split and chunk BPE are the oracle."""

from __future__ import annotations

import random

from autograder.grading import expect
from autograder.checks.test_01_pre_split import SECTION, chunks_hint, function
from autograder.grading.registry import check
from tinyllm.bpe import bpe_encode_split, pre_split, train_bpe_chunks
from tinyllm.data import read_corpus

# Characters that make every alternative of the pattern, and the seams between them, likely.
ALPHABET = ["a", "b", "T", "S", "é", "東", "1", "9", "½", "'", "s", "t", "?", ".", "🙂", " ", " ", " ", "\n", "\t",
            "\u00a0"]


def random_texts(seed: int, count: int, longest: int = 40):
    rng = random.Random(seed)
    for _ in range(count):
        yield "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, longest)))


@check("01_tokenization", "pre_split", points=1, book=SECTION, hidden=True)
def test_pre_split_hidden(sub):
    """pre_split equals GPT-2's split on the book's corpus and on random text full of seams."""
    split = function(sub, "pre_split")
    corpus = read_corpus()
    got, expected = split(corpus), pre_split(corpus)
    if isinstance(got, list) and got != expected:  # show where the chunks part, not the start of 8,000 chunks
        k = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
        got, expected = got[max(0, k - 3) : k + 4], expected[max(0, k - 3) : k + 4]
        expect.equal(got, expected, f"pre_split(the book's corpus)[{max(0, k - 3)}:{k + 4}]",
                     inputs=f"data/corpus.txt; the chunks differ from chunk {k} on")
    expect.equal(got, expected, "pre_split(the book's corpus)")
    seams = "IT'S WE'LL I'D they'RE 2024-12-31 1234567 x9y 8½ ²³ 'S'T"  # upper-case endings, long numbers
    for text in [seams, *random_texts(test_pre_split_hidden.autograder_check.seed, 40)]:
        expect.equal(split(text), pre_split(text), f"pre_split({text!r})")


@check("01_tokenization", "train_bpe_chunks", points=2, book=SECTION, hidden=True)
def test_train_bpe_chunks_hidden(sub):
    """train_bpe_chunks equals the reference on the chunks of random texts and of a slice of the corpus."""
    train = function(sub, "train_bpe_chunks")
    seed = test_train_bpe_chunks_hidden.autograder_check.seed
    cases = [(pre_split(text), 256 + 3 + 4 * i) for i, text in enumerate(random_texts(seed, 6, longest=80))]
    cases.append((pre_split(read_corpus()[:1500]), 300))
    with expect.blame(sub, "pair_counts", "merge_pair"):
        for chunks, vocab_size in cases:
            got = train(chunks, vocab_size)
            why = chunks_hint(got, chunks, vocab_size)
            expect.equal(got, train_bpe_chunks(chunks, vocab_size), f"train_bpe_chunks(chunks, {vocab_size})",
                         inputs=f"{len(chunks)} chunks: {chunks[:8]!r}{' ...' if len(chunks) > 8 else ''}", hint=why)


@check("01_tokenization", "bpe_encode_split", points=1, book=SECTION, hidden=True)
def test_bpe_encode_split_hidden(sub):
    """bpe_encode_split equals the reference on random texts, with merges learned from other random texts."""
    encode = function(sub, "bpe_encode_split")
    texts = list(random_texts(test_bpe_encode_split_hidden.autograder_check.seed, 8, longest=60))
    runs = "a  b   c\n\n\nd    e"  # runs of spaces and newlines: pairs that also meet across chunks
    with expect.blame(sub, "pre_split", "bpe_encode"):
        for train_text, text in zip(texts, reversed(texts)):
            merges = train_bpe_chunks(pre_split((train_text + runs) * 3), 280)
            text = text + runs[::-1]
            expect.equal(encode(text, merges), bpe_encode_split(text, merges), f"bpe_encode_split({text!r}, merges)")
