"""Hidden checks for 06_tiny_gpt."""

from __future__ import annotations

import torch

from autograder.grading import expect
from autograder.checks.test_06_tiny_gpt import (BOOK_DECODING, BOOK_MODEL, library_model, pair, reference_model,
                                                student_model)
from autograder.sandbox.forbidden import GROUPS
from autograder.grading.registry import check
from tinyllm.sampling import generate as reference_generate
from tinyllm.sampling import top_k_filter as reference_top_k
from tinyllm.sampling import top_p_filter as reference_top_p


@check("06_tiny_gpt", "TinyGPT", points=2, book=BOOK_MODEL + "#the-model", hidden=True)
def test_TinyGPT_hidden(sub):
    """TinyGPT equals the reference for other sizes and sequence lengths."""
    cls = sub.cls("TinyGPT", ["config"])
    g = torch.Generator().manual_seed(test_TinyGPT_hidden.autograder_check.seed)
    for sizes, T in [(dict(n_layers=1, n_heads=2, d_model=16, d_ff=24), 1),
                     (dict(n_layers=3, n_heads=1, d_model=8, d_ff=8, context_length=5), 5)]:
        reference = reference_model(seed=T, **sizes)
        model = student_model(sub, cls, reference)
        idx = torch.randint(0, reference.config.vocab_size, (3, T), generator=g)
        logits, _ = pair(model(idx), "TinyGPT.forward(idx)")
        expect.close(logits, reference(idx)[0].detach(), "the logits", f"config {sizes}, idx of shape (3, {T})")


@check("06_tiny_gpt", "top_k_filter", points=1, book=BOOK_DECODING + "#cutting-the-tail-top-k-and-top-p", hidden=True)
def test_top_k_filter_hidden(sub):
    """top_k_filter equals the reference on random logits."""
    top_k = sub.function("top_k_filter", ["logits", "k"], forbid=GROUPS["sampling"])
    g = torch.Generator().manual_seed(test_top_k_filter_hidden.autograder_check.seed)
    for shape, k in [((3, 50), 5), ((2, 2, 9), 3), ((7,), 7), ((1, 4), 1)]:
        logits = torch.randn(*shape, generator=g)
        expect.close(top_k(logits, k), reference_top_k(logits, k), f"top_k_filter(logits, {k})", f"shape {shape}")


@check("06_tiny_gpt", "top_p_filter", points=1, book=BOOK_DECODING + "#cutting-the-tail-top-k-and-top-p", hidden=True)
def test_top_p_filter_hidden(sub):
    """top_p_filter equals the reference on random logits and p."""
    top_p = sub.function("top_p_filter", ["logits", "p"], forbid=GROUPS["sampling"])
    g = torch.Generator().manual_seed(test_top_p_filter_hidden.autograder_check.seed)
    for shape, p in [((4, 30), 0.9), ((2, 3, 10), 0.5), ((6,), 0.05), ((3, 8), 0.999)]:
        logits = torch.randn(*shape, generator=g) * 2
        expect.close(top_p(logits, p), reference_top_p(logits, p), f"top_p_filter(logits, {p})", f"shape {shape}")


@check("06_tiny_gpt", "sample_next_token", points=1, book=BOOK_DECODING + "#sampling-and-temperature", hidden=True)
def test_sample_next_token_hidden(sub):
    """sample_next_token applies temperature, top-k and top-p together and keeps batch shapes."""
    sample = sub.function("sample_next_token", ["logits", "temperature", "top_k", "top_p", "generator"],
                          forbid=GROUPS["sampling"])
    g = torch.Generator().manual_seed(test_sample_next_token_hidden.autograder_check.seed)
    logits = torch.randn(2, 3, 20, generator=g) * 3
    with expect.blame(sub, "top_k_filter", "top_p_filter"):  # a wrong filter costs its own checks' points
        ids = sample(logits, temperature=0.7, top_k=5, top_p=0.8, generator=torch.Generator().manual_seed(1))
        expect.true(isinstance(ids, torch.Tensor) and tuple(ids.shape) == (2, 3),
                    f"on logits of shape (2, 3, 20) sample_next_token should return ids of shape (2, 3); got "
                    f"{expect.describe_tensor(ids)}.")
        allowed = reference_top_p(reference_top_k(logits / 0.7, 5), 0.8).isfinite()
        picked = allowed.gather(-1, ids.long().clamp(0, 19).unsqueeze(-1)).squeeze(-1)
        expect.true(bool(picked.all()), "sample_next_token drew an id that top-k / top-p should have removed.")
    cold = sample(logits, temperature=0.01, generator=torch.Generator().manual_seed(2))
    expect.equal(cold, logits.argmax(-1), "sample_next_token at temperature 0.01", hint="A low temperature "
                 "sharpens the distribution towards the argmax.")


@check("06_tiny_gpt", "generate", points=1, book=BOOK_DECODING + "#repetition-measured", hidden=True)
def test_generate_hidden(sub):
    """generate with sampling equals the reference given the same seeded generator."""
    generate = sub.function("generate", ["model", "idx", "max_new_tokens"], forbid=GROUPS["sampling"])
    reference = reference_model(seed=test_generate_hidden.autograder_check.seed % 1000, context_length=8)
    model = library_model(sub, reference)
    prompt = torch.tensor([[7, 8, 9]])
    expected = reference_generate(reference, prompt, 15, temperature=0.9, generator=torch.Generator().manual_seed(4))
    with expect.blame(sub, "sample_next_token"):
        got = generate(model, prompt, 15, temperature=0.9, generator=torch.Generator().manual_seed(4))
        expect.equal(got, expected, "generate(model, idx, 15, temperature=0.9, generator=seeded)",
                     hint="Draw each token with sample_next_token, passing the sampling options through.")
