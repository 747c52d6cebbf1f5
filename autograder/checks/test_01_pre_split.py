"""Public checks for 01_tokenization, second part: GPT-2's pre-split and BPE within its chunks."""

from __future__ import annotations

from autograder.grading import expect
from autograder.checks.test_01_tokenization import BOOK, as_pairs
from autograder.sandbox.forbidden import GROUPS
from autograder.grading.registry import check
from tinyllm.bpe import bpe_encode, bpe_encode_split, pre_split, train_bpe, train_bpe_chunks

SIGNATURES = {"pre_split": ["text"], "train_bpe_chunks": ["chunks", "vocab_size"],
              "bpe_encode_split": ["text", "merges"]}
SECTION = BOOK + "#splitting-the-text-first"


def function(sub, name):
    proxy = sub.function(name, SIGNATURES[name], forbid=GROUPS["bpe"])
    if name != "train_bpe_chunks":
        return proxy
    return lambda *args: as_pairs(proxy(*args))


# Short texts, each made to catch one wrong alternative of the pattern, with what to fix when it does.
# A pattern wrong in several places fails at its first: the hint names that place.
PROBES = [
    ("the cat sat", "A word keeps the one space before it (' ?\\p{L}+'): 'the', ' cat', ' sat', not ' ' and 'cat'."),
    ("it's, we'll, I'm, they've, he'd, you're, don't",
     "The endings 's 't 're 've 'm 'll 'd are chunks of their own, and they come first in the pattern."),
    ("IT'S YOU'LL", "Only lower-case endings are contractions (GPT-2's pattern is case-sensitive): "
                    "IT'S gives 'IT', \"'\", 'S'."),
    ("GPT-2 costs 1000 tokens in 2024, x2y3, ½ or ²",
     "Numbers are chunks of their own with their space (' ?\\p{N}+': any numeral, any length), never joined "
     "to letters: 'x2y3' is 'x', '2', 'y', '3'."),
    ("naïve Crème, 東京 and Привет", "\\p{L} is a letter of any script: 'naïve' and ' 東京' are single chunks. "
                                     "Use the regex package: Python's re has no \\p{L}."),
    ("Why?! Wow... 🙂🙂 (x)", "Anything but whitespace, letters and numerals runs together, with its space: "
                             "' ?[^\\s\\p{L}\\p{N}]+' gives '?!', ' 🙂🙂', ' ('."),
    ("a   b", "A run of whitespace leaves its last space to the word after it: '\\s+(?!\\S)' gives 'a', "
            "'  ', ' b' (a greedy '\\s+' would give '   ' and 'b')."),
    ("Why?\nA: yes\n\nQ", "A newline is not the optional space of ' ?': before a word it is a chunk of its own "
                          "('\\s+' as the last alternative)."),
    ("the end \t\n", "Whitespace at the end of the text is one chunk."),
]


@check("01_tokenization", "pre_split", points=2, book=SECTION, reference="tinyllm.bpe:pre_split")
def test_pre_split_public(sub):
    """pre_split cuts text into GPT-2's chunks: contractions, words with their space, numbers, symbols, whitespace."""
    split = function(sub, "pre_split")
    for text, hint in PROBES:
        expect.equal(split(text), pre_split(text), f"pre_split({text!r})", hint=hint)
    expect.equal(split(""), [], 'pre_split("")', hint="An empty text has no chunks.")


def chunks_hint(got, chunks, vocab_size) -> str:
    """What a wrong train_bpe_chunks result says about the code that produced it."""
    if got == train_bpe("".join(chunks), vocab_size):
        return ("These are the merges of the chunks joined into one text: count and merge pairs inside each chunk "
                "only, never across two.")
    if got == train_bpe_chunks(list(dict.fromkeys(chunks)), vocab_size):
        return "Each occurrence of a chunk counts: a chunk that occurs twice adds its pairs twice."
    return ("Count the pairs of every chunk, adding them up in the order the chunks come (so a tie goes to the "
            "pair that occurs first), then merge the winner inside every chunk.")


@check("01_tokenization", "train_bpe_chunks", points=1, book=SECTION)
def test_train_bpe_chunks_public(sub):
    """train_bpe_chunks counts and merges pairs within chunks only; counts add up, ties go to the first."""
    train = function(sub, "train_bpe_chunks")
    cases = [
        (["a", "b", "a", "b"], 300, '"ab" occurs only across chunk boundaries'),
        (["ab", "cd", "cd", "ab"], 257, '"ab" and "cd" occur twice each, "ab" first'),
        (["xy", "ab", "ab"], 257, 'the chunk "ab" occurs twice'),
        (["aaaaa"], 258, "one chunk: train_bpe's merges"),
        (["ab", "ab"], 1000, "stop when no chunk has a pair left"),
        (pre_split("the cat sat on the mat; the cat ate the rat."), 275, "the chunks of a sentence"),
    ]
    with expect.blame(sub, "pair_counts", "merge_pair"):
        for chunks, vocab_size, about in cases:
            got = train(chunks, vocab_size)
            expect.equal(got, train_bpe_chunks(chunks, vocab_size), f"train_bpe_chunks({chunks!r}, {vocab_size})",
                         inputs=about, hint=chunks_hint(got, chunks, vocab_size))


@check("01_tokenization", "train_bpe_chunks", points=1, book=SECTION)
def test_train_bpe_chunks_errors_public(sub):
    """train_bpe_chunks raises ValueError for a vocab_size below 256 (the error contract, checked apart)."""
    train = function(sub, "train_bpe_chunks")
    expect.raises(lambda: train(["abc"], 255), ValueError, "train_bpe_chunks(chunks, vocab_size=255)")


@check("01_tokenization", "bpe_encode_split", points=1, book=SECTION)
def test_bpe_encode_split_public(sub):
    """bpe_encode_split encodes each chunk of pre_split(text) on its own, so no token crosses a chunk."""
    encode = function(sub, "bpe_encode_split")
    runs = [(32, 32), (10, 10)]  # two spaces, two newlines: pairs that also meet across chunks
    learned = train_bpe_chunks(pre_split("the cat sat on the mat; the cat ate the rat."), 275)
    cases = [("a    b", runs), ("x\n\n\n\ny", runs), ("the rat sat on the cat.", learned), ("", learned)]
    with expect.blame(sub, "pre_split", "bpe_encode"):
        for text, merges in cases:
            got = encode(text, merges)
            hint = ("These are the ids of the whole text: split it with pre_split first and encode each chunk on "
                    "its own." if got == bpe_encode(text, merges) != bpe_encode_split(text, merges) else "")
            expect.equal(got, bpe_encode_split(text, merges), f"bpe_encode_split({text!r}, merges)",
                         inputs=f"merges {merges[:4]}{' ...' if len(merges) > 4 else ''}", hint=hint)
