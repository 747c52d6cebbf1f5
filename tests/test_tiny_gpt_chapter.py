"""Chapter 8 as built: the trained tiny GPT beats the bigram baseline, and the page says so."""

from __future__ import annotations

import html
import re

import pytest

from tests.conftest import EXECUTED, HTML, ROOT, glued_values

SOURCE = ROOT / "book" / "08_tiny_gpt.md"
GLUE = EXECUTED / "book" / "08_tiny_gpt.glue.json"
PAGE = HTML / "book" / "08_tiny_gpt.html"


def glued() -> dict[str, str]:
    if not GLUE.exists():
        pytest.skip(f"{GLUE} is missing: build the book first (`make book`) to execute chapter 8")
    return glued_values(SOURCE)


def number(values: dict[str, str], name: str) -> float:
    assert name in values, f"chapter 8 did not glue {name!r}"
    return float(values[name])


def test_trained_model_beats_the_bigram_baseline():
    values = glued()
    ppl_test, ppl_bigram = number(values, "ppl_test"), number(values, "ppl_bigram")
    assert 1.0 < ppl_test < ppl_bigram, f"test perplexity {ppl_test} is not below the bigram's {ppl_bigram}"
    assert number(values, "bpb_gpt") < number(values, "bpb_byte_bigram")


def test_the_page_quotes_the_glued_test_perplexity():
    values = glued()
    if not PAGE.exists():
        pytest.skip(f"{PAGE} is missing: build the book first (`make book`)")
    text = html.unescape(re.sub(r"<[^>]+>", "", PAGE.read_text(encoding="utf-8")))
    assert f"{number(values, 'ppl_test'):.2f}" in text
    assert f"{number(values, 'ppl_bigram'):.2f}" in text


def test_the_training_really_ran():
    values = glued()
    assert number(values, "train_steps") > 0 and number(values, "train_seconds") > 0
    assert number(values, "train_tokens_per_s") > 0
