"""Nothing is used before it is taught.

Each library function, symbol and shape convention has the chapter that
introduces it (a table here for the library and the shapes; the "introduced in"
column of book/notation.md for the symbols). A chapter may point forward in
words ("chapter 8 trains it"), but its code may not import, and its prose and
maths may not write, anything that a later chapter introduces. Each entry is
also checked to be used first where the table says, so the tables cannot go
stale.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import jupytext
import pytest

from tests.conftest import ROOT
from tools import notebooks

# Numbered chapters in reading order (the table of contents'; numbering runs on across its parts),
# keyed by the number the site shows, which is not always the file's prefix.
CHAPTERS = dict(enumerate((s for s in notebooks.chapter_sources() if re.match(r"\d\d_", s.name)), start=1))

# Where each part of the library (and of PyTorch, where a chapter explains it) is introduced.
# The most specific key wins: "tinyllm.scaling.gpt_parameters" before "tinyllm.scaling".
LIBRARY = {
    "tinyllm.data": 1,
    "tinyllm.ngram": 1,
    "tinyllm.bpe": 2,
    "tinyllm.embedding": 3,
    "tinyllm.softmax": 4,
    "tinyllm.attention": 5,
    "torch.utils.flop_counter.FlopCounterMode": 13,
    "tinyllm.positional": 6,
    "tinyllm.layers": 7,
    "tinyllm.scaling.block_parameters": 7,
    "tinyllm.scaling.count_parameters": 7,
    "tinyllm.scaling.gpt_parameters": 7,
    "tinyllm.scaling.kv_cache_bytes": 11,  # the KV cache's chapter; chapter 13 applies it to large models
    "tinyllm.model": 8,
    "tinyllm.train": 8,
    "tinyllm.optim": 8,
    "tinyllm.book.trained_tiny_gpt": 8,
    "tinyllm.book.compare_runs": 8,  # seeded, paired comparisons of training runs
    "tinyllm.book.spread": 8,
    "tinyllm.book.SEEDS": 8,
    "tinyllm.book.attention_maps": 8,
    "tinyllm.sampling.generate": 8,  # chapter 8 generates greedily and with a temperature
    "tinyllm.sampling": 9,
    "tinyllm.posttrain": 12,
    "tinyllm.scaling": 13,
    "tinyllm.quantize": 14,
    "tinyllm.speculative": 14,
    "tinyllm.answers.exact_by_teacher_forcing": 14,
    "tinyllm.induction": 16,
}
# The book's machinery, not its subject: usable anywhere.
INFRASTRUCTURE = ("tinyllm.book.glue", "tinyllm.book.setup_plots", "tinyllm.book.quote_tokens",
                  "tinyllm.colab", "tinyllm.interactive")

# Shape conventions of book/notation.md, written in prose or code comments.
SHAPES = {
    "(B, T, d_model)": 3,
    "(B, n_heads, T, d_k)": 5,
    "(B, n_heads, T, T)": 5,
}

# How each symbol of the notation page's table is recognised in a chapter's maths.
SYMBOL_PATTERNS = {
    r"$E \in \mathbb{R}^{V \times d_{\text{model}}}$": r"(?<![\\\w{])E(?![a-zA-Z}])",
    r"$n_{ij}$": r"n_\{ij\}",
    r"$z_{\max}$": r"z_\{\\max\}",
    r"$\tau$": r"\\tau\b",
    r"$W_Q, W_K, W_V, W_O$": r"W_\{?[QKVO]\b",
    r"$\mathrm{PE}(p)$": r"\\mathrm\{PE\}",
    r"$m_r$": r"\bm_\{?r\b",
    r"$W_1, W_2$": r"W_\{?[12]\b",
    r"$\eta$, $S$, $S_{\text{warm}}$": r"\\eta\b",
    r"$\mu$, $\sigma^2$": r"\\sigma\b|\\mu\b",
    r"$\varepsilon$": r"\\varepsilon",
    r"$\boldsymbol\gamma$, $\boldsymbol\beta$": r"\\boldsymbol\s*\{?\\(?:gamma|beta)",
    r"$\mathbf{m}$, $\mathbf{v}$": r"\\mathbf\{m\}",
    r"$\beta_1$, $\beta_2$": r"\\beta_\{?[12]",
    r"$\lambda$": r"\\lambda\b",
    r"$\operatorname{sigmoid}(u) = 1 / (1 + e^{-u})$": r"\\operatorname\{sigmoid\}",
    r"$\mathcal{S}$": r"\\mathcal\{S\}",
    r"$\mathcal{R}(x, y)$": r"\\mathcal\{R\}",
    r"$D_{\text{KL}}(p \,\Vert\, q)$": r"D_\{\\text\{KL\}\}",
    r"$\pi_\theta$, $\pi_{\text{ref}}$, $\beta$": r"\\pi_",
    r"$P_c$, $\alpha_{\text{ne}}$": r"\\alpha_\{\\text\{ne\}\}",
}
SIZE_PATTERNS = {  # the sizes table of the notation page, by symbol
    "$d_k$": (r"\bd_\{?k\b", 5),
    r"$d_{\text{ff}}$": (r"d_\{\\text\{ff\}\}", 7),
    "$N$": (r"(?<![\\\w{])N(?![a-zA-Z}])", 3),
    "$P$": (r"(?<![\\\w{])P(?![a-zA-Z}])", 7),
    r"$n_{\text{kv}}$": (r"n_\{\\text\{kv\}\}", 10),
    r"$P_{\text{ne}}$": (r"P_\{\\text\{ne\}\}", 13),
    r"$T_{\text{prompt}}$, $T_{\text{new}}$": (r"T_\{\\text\{(?:new|prompt)\}\}", 11),
}


def cells(source: Path):
    return jupytext.read(source, fmt="md:myst").cells


def maths(source: Path) -> str:
    """The chapter's LaTeX: $...$ and $$...$$ in its Markdown."""
    text = "\n".join(c.source for c in cells(source) if c.cell_type == "markdown")
    text = re.sub(r"^(`{3,}|:{3,})\{[\w-]+\}.*?^\1\s*$", "", text, flags=re.M | re.S)  # directives
    return "\n".join(a or b for a, b in re.findall(r"\$\$(.*?)\$\$|\$([^$\n]+)\$", text, flags=re.S))


def imported(source: Path) -> set[str]:
    """Fully qualified names a chapter's code imports (from X import y -> X.y), and the objects it shows."""
    names = set()
    for cell in cells(source):
        if cell.cell_type == "code":
            body = "\n".join(line for line in cell.source.splitlines() if not line.startswith(("%", "!")))
            for node in ast.walk(ast.parse(body)):
                if isinstance(node, ast.ImportFrom) and node.module:
                    names |= {f"{node.module}.{alias.name}" for alias in node.names}
                elif isinstance(node, ast.Import):
                    names |= {alias.name for alias in node.names}
        else:  # literalinclude of a library object: the chapter shows (and so teaches or uses) it
            for file, obj in re.findall(r"\{literalinclude\}\s*\.\./(\S+)\.py\s*\n(?::\w+:.*\n)*?:pyobject:\s*(\w+)",
                                        cell.source):
                names.add(f"{file.replace('/', '.')}.{obj}")
    return names


def introduced_in(name: str) -> int | None:
    if name.startswith(INFRASTRUCTURE):
        return None
    keys = [k for k in LIBRARY if name == k or name.startswith(k + ".")]
    return LIBRARY[max(keys, key=len)] if keys else None


def symbol_table() -> dict[str, int]:
    """symbol -> chapter, from the "introduced in" column of the notation page."""
    table = {}
    for row in re.findall(r"^\| (.+?) \| .+? \| chapter (\d+) \|$", (ROOT / "book" / "notation.md").read_text(), re.M):
        table[row[0]] = int(row[1])
    return table


def library_problems(chapters: dict[int, Path]) -> tuple[list[str], dict[str, int]]:
    """Uses of the library before its chapter, and the chapter where each table entry is first used."""
    problems, first_use = [], {}
    for number, source in sorted(chapters.items()):
        for name in sorted(imported(source)):
            chapter = introduced_in(name)
            if chapter is None:
                continue
            key = max((k for k in LIBRARY if name == k or name.startswith(k + ".")), key=len)
            first_use.setdefault(key, number)
            if chapter > number:
                problems.append(f"chapter {number} ({source.name}) uses {name}, introduced in chapter {chapter}")
    return problems, first_use


def test_code_uses_only_what_earlier_chapters_introduced():
    problems, first_use = library_problems(CHAPTERS)
    assert not problems, "\n".join(problems)
    stale = [f"{key}: the table says chapter {LIBRARY[key]}, first used in chapter {first_use.get(key)}"
             for key in LIBRARY if first_use.get(key) != LIBRARY[key]]
    assert not stale, "\n".join(stale)


def test_shapes_are_not_used_before_they_are_introduced():
    for shape, chapter in SHAPES.items():
        users = [n for n, s in sorted(CHAPTERS.items()) if shape in s.read_text(encoding="utf-8")]
        assert users and users[0] == chapter, f"{shape} is introduced in chapter {chapter}, first written in {users[:1]}"


def test_symbols_are_not_used_before_they_are_introduced():
    table = symbol_table()
    assert set(SYMBOL_PATTERNS) <= set(table), "every pattern names a row of the notation page's symbol table"
    checks = {symbol: (SYMBOL_PATTERNS[symbol], chapter) for symbol, chapter in table.items() if symbol in SYMBOL_PATTERNS}
    checks |= SIZE_PATTERNS
    for symbol, (pattern, chapter) in checks.items():
        users = [n for n, s in sorted(CHAPTERS.items()) if re.search(pattern, maths(s))]
        assert users and users[0] == chapter, (
            f"{symbol} is introduced in chapter {chapter}, but first written in chapter {users[:1]}")


@pytest.mark.parametrize("symbol, meaning, pattern, chapters", [
    ("m", "the ALiBi slope only", r"(?<![\\\w{])m(?![a-zA-Z}])", {6}),
    ("W", "a generic weight matrix only in the notation page; E is the embedding table", r"(?<![\\\w{])W(?![a-zA-Z_}])", set()),
    ("N", "the positions a loss averages over (13 names Kaplan's N, once)", r"(?<![\\\w{])N(?![a-zA-Z}])", {3, 4, 13}),
    ("P", "a number of parameters", r"(?<![\\\w{])P(?![a-zA-Z}])", {7, 13}),
    ("\\sigma", "layer norm's standard deviation only (the logistic function is written sigmoid)",
     r"\\sigma\b", {7}),
    ("\\beta", "DPO's coefficient only, without index or bold (Adam's are beta_1, beta_2; layer norm's shift "
     "is bold)", r"(?<!\\boldsymbol)(?<!\\boldsymbol\{)(?<!\\boldsymbol )\\beta(?![_a-zA-Z])", {12}),
    ("\\beta_1, \\beta_2", "Adam's decay rates only", r"\\beta_\{?[12]", {8}),
    ("\\boldsymbol\\beta", "layer norm's shift only", r"\\boldsymbol\s*\{?\\beta", {7}),
    ("\\lambda", "AdamW's weight decay only", r"\\lambda\b", {8}),
    ("n_heads, n_layers", "never: the notation page writes h and L", r"n_\{\\text\{(?:heads|layers)\}\}", set()),
])
def test_a_symbol_keeps_one_meaning(symbol, meaning, pattern, chapters):
    """The symbols that once meant three things each (issue 14) appear only where their one meaning lives."""
    users = {n for n, s in CHAPTERS.items() if re.search(pattern, maths(s))}
    assert users <= chapters, f"${symbol}$ ({meaning}) is written in chapters {sorted(users - chapters)}"


def test_positions_count_from_zero():
    """No chapter writes a sequence from position 1 (x_1 ... x_T) or sums over positions from t = 1 to T."""
    for number, source in CHAPTERS.items():
        text = maths(source)
        assert not re.search(r"\(x_\{?1\}?\s*,\s*\\dots|\\(?:sum|prod)_\{t=1\}\^(?:\{T\}|T(?![-\w]))|x_\{1:T\}", text), \
            f"chapter {number} counts positions from 1"


def test_the_old_order_would_fail(monkeypatch):
    """With positional encoding before attention, as before issue 14, the check names the problem."""
    swapped = dict(CHAPTERS)
    swapped[5], swapped[6] = CHAPTERS[6], CHAPTERS[5]
    monkeypatch.setitem(LIBRARY, "tinyllm.positional", 5)
    monkeypatch.setitem(LIBRARY, "tinyllm.attention", 6)
    problems, _ = library_problems(swapped)
    assert any("uses tinyllm.attention.scaled_dot_product_attention, introduced in chapter 6" in p
               for p in problems), problems


def chapter_numbers() -> dict[str, int]:
    """label (ch-...) -> the number the site gives that chapter."""
    numbers = {}
    for number, source in CHAPTERS.items():
        label = re.search(r"^\((ch-[\w-]+)\)=", source.read_text(encoding="utf-8"), re.M)
        assert label, f"{source.name} has no (ch-...)= label"
        numbers[label.group(1)] = number
    return numbers


def test_chapter_numbers_in_cross_references_are_the_sites():
    """{ref}`chapter 5 <ch-attention>`: the number written must be the one the site shows for the label."""
    numbers = chapter_numbers()
    wrong = []
    for path in sorted((ROOT / "book").glob("*.md")):
        text = path.read_text(encoding="utf-8")
        for written, label in re.findall(r"\{ref\}`(?:[Cc]hapters? )?(\d+)\s*<(ch-[\w-]+)>`", text):
            if label in numbers and int(written) != numbers[label]:
                wrong.append(f"{path.name}: {{ref}} to {label} says {written}, the site numbers it {numbers[label]}")
    assert not wrong, "\n".join(wrong)


def test_the_introduction_lists_the_chapters_the_table_of_contents_numbers():
    """intro.md's chapter list is the site's: every numbered chapter, its number and its title, in order.

    The list once stopped at "10. Where this goes next" while the sidebar numbered a Part II;
    a chapter added to _toc.yml without a line in the introduction (or one renamed) fails here.
    """
    listed = re.findall(r"^(\d+)\. \*\*(.+?)\*\*", (ROOT / "book" / "intro.md").read_text(encoding="utf-8"), re.M)
    titles = {n: re.search(r"^# (.+)$", s.read_text(encoding="utf-8"), re.M).group(1) for n, s in CHAPTERS.items()}
    assert [(int(n), title) for n, title in listed] == sorted(titles.items()), (
        "book/intro.md must list every numbered chapter of _toc.yml as 'N. **Title**', in order")


# Terms a chapter defines (its first use in that chapter's prose is the emphasised one, *term*); a chapter
# before it may name the term only in a paragraph that points to the defining chapter ({ref} to its label).
TERMS = {
    "KV cache": (r"\bKV[ -]?cache", 11),
    "memory-bound": (r"\bmemory-bound", 11),
    "KL divergence": (r"\bKL divergence", 12),
    "arithmetic intensity": (r"\barithmetic intensity", 13),
}


def prose_paragraphs(source: Path) -> list[str]:
    """The chapter's prose, paragraph by paragraph, lines joined: no code, no directive (objectives, quiz)."""
    text = "\n".join(c.source for c in cells(source) if c.cell_type == "markdown")
    text = re.sub(r"^(`{3,}|:{3,})\{[\w-]+\}.*?^\1\s*$", "", text, flags=re.M | re.S)
    return [" ".join(p.split()) for p in re.split(r"\n\s*\n", text) if p.strip()]


@pytest.mark.parametrize("term", sorted(TERMS))
def test_a_term_is_defined_where_it_is_first_used(term):
    pattern, chapter = TERMS[term]
    numbers = chapter_numbers()
    early, first_use = [], None
    for number, source in sorted(CHAPTERS.items()):
        for paragraph in prose_paragraphs(source):
            if not re.search(pattern, paragraph):
                continue
            points_ahead = any(numbers.get(label, 0) >= chapter
                               for label in re.findall(r"\{ref\}`[^`]*<(ch-[\w-]+)>`", paragraph))
            if number < chapter and not points_ahead:
                early.append(f"chapter {number}: {paragraph[:120]}")
            if number == chapter and first_use is None:
                first_use = paragraph
    assert not early, f"{term!r} (defined in chapter {chapter}) is used before it without pointing there:\n" + \
        "\n".join(early)
    assert first_use is not None, f"chapter {chapter} never uses {term!r}"
    match = re.search(pattern, first_use)
    assert first_use[match.start() - 1 : match.start()] == "*" and first_use[match.end() : match.end() + 1] == "*", (
        f"chapter {chapter} first uses {term!r} without defining it (*{term}*): {first_use[:160]}")


def test_the_term_check_catches_a_term_used_too_early(monkeypatch):
    monkeypatch.setitem(TERMS, "KV cache", (TERMS["KV cache"][0], 12))  # as if chapter 12 defined it
    with pytest.raises(AssertionError, match="used before it"):
        test_a_term_is_defined_where_it_is_first_used("KV cache")
