"""Chapter 8 as built: the trained tiny GPT answers what it was taught, and the page says so."""

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


def test_trained_model_answers_what_it_was_taught():
    values = glued()
    assert number(values, "exact_train") >= 90, "the book's model must answer >= 90% of its training questions"
    assert number(values, "real_words") >= 98, "its sampled answers must be >= 98% corpus words"
    for name in ("exact_val", "exact_test"):  # reported, not required to be high: the lesson is memorisation
        assert 0 <= number(values, name) <= 100


def test_the_chapter_reports_perplexity_against_the_baselines():
    values = glued()
    ppl_test, ppl_bigram = number(values, "ppl_test"), number(values, "ppl_bigram")
    # What the prose says: memorising cost the final model the bigram's test perplexity, which it had early on.
    assert number(values, "ppl_best_val") < ppl_bigram < ppl_test
    assert number(values, "bpb_gpt") < number(values, "bpb_byte_bigram")


def test_the_page_quotes_the_glued_test_perplexity():
    values = glued()
    if not PAGE.exists():
        pytest.skip(f"{PAGE} is missing: build the book first (`make book`)")
    text = html.unescape(re.sub(r"<[^>]+>", "", PAGE.read_text(encoding="utf-8")))
    assert f"{number(values, 'ppl_test'):.2f}" in text
    assert f"{number(values, 'ppl_bigram'):.2f}" in text
    assert f"{number(values, 'exact_train'):.0f}%" in text


def test_the_training_really_ran():
    values = glued()
    assert number(values, "train_steps") > 0 and number(values, "train_seconds") > 0
    assert number(values, "train_tokens_per_s") > 0


def test_the_training_loop_pieces_measure_as_the_prose_says():
    """Over the paired seeds, leaving warm-up out costs more than a seed moves the loss, in every seed;
    clipping and decay move it by less than a seed does."""
    values = glued()
    seed_spread = number(values, "full_seed_spread")
    assert number(values, "change_no_warmup_low") > seed_spread
    assert number(values, "early_no_warmup") < number(values, "early_full")  # faster at first, then behind
    for change in ("no_clip", "no_decay"):
        assert max(abs(number(values, f"change_{change}_low")), abs(number(values, f"change_{change}_high"))) \
            < seed_spread
    assert number(values, "first_grad_norm") > 1.0
    assert 0 < number(values, "clipped_share_low") <= number(values, "clipped_share_high") < 50
    assert number(values, "weight_norm_decay") < number(values, "weight_norm_no_decay")
    assert number(values, "adamw_vs_torch64") < 1e-12  # the book's AdamW is torch.optim.AdamW in float64
    assert number(values, "adamw_vs_torch") < 1e-4  # and up to float32 rounding
