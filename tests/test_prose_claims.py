"""What the prose says about learned tokens is what the build learned.

`glue` protects the numbers quoted in the prose (tests/test_book.py); this file
protects the tokens and the orderings, which drifted before when the corpus
changed and nobody re-read the sentences.

- Token literals. A code span in a chapter's prose written in the book's
  printable token notation (with ␣ for a space or ↵ for a newline), or any short
  plain code span in a chapter whose code trains or loads the tokenizer, is a
  token the prose says was learned. It must be in the vocabulary the build
  trained, or, for the toy examples of chapter 2, be printed by the chapter's
  own code. Spans that only look like tokens (Python names, hypothetical
  strings) are recognised or listed in NOT_TOKENS.
- Glued tokens. A glued phrase of quoted tokens (``tinyllm.book.quote_tokens``,
  glued under a name ending in ``_tokens``): each token must be in the
  vocabulary and printed by the chapter, so that the reader can see it beside
  the sentence that names it.
- Orderings. Where the prose states an order (the first merges, the nearest
  neighbours), the glued order must be the order the library computes or the
  chapter prints.
"""

from __future__ import annotations

import ast
import builtins
import html
import keyword
import re
from functools import lru_cache
from pathlib import Path

import jupytext
import pytest

from tests.conftest import HTML, ROOT, glued_values
from tools import notebooks

CHAPTERS = [s for s in notebooks.chapter_sources() if re.match(r"\d\d_", s.name)]

# Code spans in the prose that are not tokens the build learned.
NOT_TOKENS = {
    # hypothetical strings of the merge rules, a placeholder, pieces of the split pattern, package names
    "02_tokenization": {"aaa", "aaaa", "<unk>", "\\s+", "\\p{L}", "\\p{N}", "regex", "tokenizers", "A:"},
    "08_tiny_gpt": {"A:"},  # a piece of text inside the separator token, not a token itself
}
TOKEN_MARKS = ("␣", "↵")


def cells(source: Path):
    return jupytext.read(source, fmt="md:myst").cells


def prose(source: Path) -> str:
    """The chapter's Markdown without directives (literalinclude, admonitions) and roles."""
    text = "\n".join(c.source for c in cells(source) if c.cell_type == "markdown")
    text = re.sub(r"^(`{3,}|:{3,})\{[\w-]+\}.*?^\1\s*$", "", text, flags=re.M | re.S)
    return re.sub(r"(?<!\w)\{[\w:-]+\}`[^`]*`", "", text)  # a role, not the {L} of a span `\p{L}`


def code(source: Path) -> str:
    return "\n".join(c.source for c in cells(source) if c.cell_type == "code")


def uses_tokenizer(source: Path) -> bool:
    return bool(re.search(r"BPETokenizer|trained_tiny_gpt", code(source)))


def printed(source: Path) -> str:
    """The text the chapter's code printed, as the built page shows it beside the prose.

    (Read from the page: with MyST-NB's execution cache, the notebooks under
    _build/jupyter_execute keep no outputs for chapters taken from the cache.)
    """
    page = HTML / source.relative_to(ROOT).with_suffix(".html")
    if not page.exists():
        pytest.skip(f"{page} is missing: build the book first (make book)")
    text = page.read_text(encoding="utf-8")
    outputs = [chunk.split('class="cell docutils container', 1)[0] for chunk in text.split('class="cell_output')[1:]]
    blocks = [block for chunk in outputs for block in re.findall(r"<pre[^>]*>(.*?)</pre>", chunk, flags=re.S)]
    return "\n".join(html.unescape(re.sub(r"<[^>]+>", "", block)) for block in blocks)


def printed_pieces(source: Path) -> set[str]:
    """Every whitespace-, quote- or bracket-separated piece of text the chapter printed."""
    pieces = set()
    for line in printed(source).splitlines():
        pieces.update(p for p in re.split(r"[\s'\"\[\](){}]+|, ", line) if p)
        pieces.update(p.rstrip(",:") for p in line.split())
    return pieces


@lru_cache(maxsize=2)
def vocabulary(split: bool = True) -> frozenset[str]:
    """The printable form of every token of the tokenizer the book trains (chapters 2, 3, 8, 9, ...).

    ``split=False``: the unsplit tokenizer that chapter 2 trains first, and only chapter 2 shows.
    """
    from tinyllm.bpe import BPETokenizer, printable_token
    from tinyllm.data import read_corpus, split_corpus
    from tinyllm.model import GPTConfig

    tokenizer = BPETokenizer.train(split_corpus(read_corpus()).train, GPTConfig().vocab_size, split=split)
    return frozenset(printable_token(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size))


def learned(source: Path) -> frozenset[str]:
    """The tokens a chapter may name: the book's tokenizer's, and in chapter 2 also the unsplit one's."""
    return vocabulary() | vocabulary(split=False) if source.stem == "02_tokenization" else vocabulary()


@lru_cache(maxsize=1)
def library_names() -> frozenset[str]:
    """What the library defines: functions, classes, their arguments and attributes (not what it imports)."""
    names = set()
    for path in (ROOT / "tinyllm").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)  # dataclass fields
    return frozenset(names)


def code_names(source: Path) -> set[str]:
    """Identifiers of Python, of the chapter's code and of the library: spans naming them are code."""
    return (set(keyword.kwlist) | set(dir(builtins)) | set(library_names())
            | set(re.findall(r"[A-Za-z_]\w*", code(source))))


def token_literals(source: Path) -> list[str]:
    spans = re.findall(r"`([^`\n]+)`", prose(source))
    marked = [s for s in spans if any(mark in s for mark in TOKEN_MARKS)]
    if not uses_tokenizer(source):
        return marked
    names = code_names(source)
    plain = [s for s in spans if not any(mark in s for mark in TOKEN_MARKS)
             and len(s) <= 12 and re.fullmatch(r"[\x21-\x7e]+", s)  # printable ASCII, no spaces
             and not re.search(r"[_/=()\[\]-]|\.\w", s)  # paths, calls, attributes, arguments, commands
             and not s.isdigit() and s not in names]
    return marked + plain


def quoted(value_repr: str) -> list[str]:
    """The tokens of a glued quote_tokens phrase, from its text/plain repr ([] for anything else)."""
    value = eval(value_repr, {"__builtins__": {}})
    return re.findall(r"\u201c([^\u201d]*)\u201d", value) if isinstance(value, str) else []


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda s: s.stem)
def test_quoted_tokens_were_learned(source):
    literals = [s for s in token_literals(source) if s not in NOT_TOKENS.get(source.stem, set())]
    if not literals:
        pytest.skip(f"{source.name} quotes no learned token")
    missing = [s for s in literals if s not in learned(source) and s not in printed_pieces(source)]
    assert not missing, (
        f"{source.name} quotes {missing} as tokens, but the tokenizer the build trains has no such token "
        f"and the chapter prints none: glue the token from the code (tinyllm.book.quote_tokens), or, if it "
        f"is not meant as a learned token, add it to NOT_TOKENS")


@pytest.mark.parametrize("source", CHAPTERS, ids=lambda s: s.stem)
def test_glued_tokens_are_learned_and_shown(source):
    values = glued_values(source)
    glued = {name: quoted(value) for name, value in values.items() if name.endswith("_tokens")}
    glued = {name: tokens for name, tokens in glued.items() if tokens}  # counts such as n_val_tokens are numbers
    if not glued:
        pytest.skip(f"{source.name} glues no tokens")
    shown = printed_pieces(source)
    for name, tokens in glued.items():
        for token in tokens:
            assert token in learned(source), f"{source.name}: {name} quotes {token!r}, which is not a learned token"
            assert token in shown, f"{source.name}: {name} quotes {token!r}, which the chapter never prints"


def test_stated_orders_are_the_computed_ones():
    """The first merges (chapter 2, both tokenizers) and the nearest neighbours of `ing` (chapter 3), in order."""
    from tinyllm.bpe import BPETokenizer, printable_token
    from tinyllm.data import read_corpus, split_corpus

    chapter2, chapter3 = (ROOT / "book" / f"{name}.md" for name in ("02_tokenization", "03_embeddings"))
    glued2, glued3 = glued_values(chapter2), glued_values(chapter3)
    if not glued2 or not glued3:
        pytest.skip("build the book first (make book)")

    for name, split in (("first_merges_tokens", False), ("split_first_tokens", True)):
        tokenizer = BPETokenizer.train(split_corpus(read_corpus()).train, 400, split=split)
        first = [printable_token(tokenizer.token_bytes(256 + i)) for i in range(5)]
        assert quoted(glued2[name]) == first

    row = re.search(r"^\s*ing -> (.*)$", printed(chapter3), re.M).group(1)  # "tention 0.76, ation 0.75, ..."
    neighbours = [entry.rsplit(" ", 1)[0] for entry in row.split(", ")]
    assert quoted(glued3["ing_neighbour_tokens"]) == neighbours[: len(quoted(glued3["ing_neighbour_tokens"]))]


def test_token_literals_are_found_in_the_prose(tmp_path):
    """Sentences like the ones that once contradicted the build ("`e␣s`", "`e` sits near `re`") are checked."""
    source = tmp_path / "book" / "03_embeddings.md"
    source.parent.mkdir()
    original = (ROOT / "book" / "03_embeddings.md").read_text(encoding="utf-8")
    source.write_text(original + "\nLike `e␣s` or `␣qzx␣`, `e` sits near `er`.\n", encoding="utf-8")
    literals = token_literals(source)
    assert {"e␣s", "␣qzx␣", "er"} <= set(literals)
    assert "␣qzx␣" not in vocabulary()  # so the first test would report it


def test_every_bibliography_entry_is_cited():
    """references.bib holds the works the book cites, no more: an uncited entry is a claim without a sentence."""
    text = (ROOT / "references.bib").read_text(encoding="utf-8")
    entries = set(re.findall(r"@\w+\{([^,]+),", text))
    cited = set()
    for path in (ROOT / "book").glob("*.md"):
        for group in re.findall(r"\{cite:[pt]\}`([^`]+)`", path.read_text(encoding="utf-8")):
            cited |= {key.strip() for key in group.split(",")}
    assert not entries - cited, f"in references.bib but cited nowhere: {sorted(entries - cited)}"
