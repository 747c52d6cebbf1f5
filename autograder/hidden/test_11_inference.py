"""Hidden checks for 11_inference: the reference on varied shapes, group sizes, vocabularies, models and settings."""

from __future__ import annotations

import torch

from autograder.grading import expect
from autograder.checks.test_11_inference import (BOOK, accept_function, check_distribution, draws, generate_function,
                                                 ids_of, library_model, pair, quantizer, reference_model,
                                                 sampled_generation, sampled_text)
from autograder.grading.registry import check
from tinyllm.quantize import dequantize as reference_dequantize
from tinyllm.quantize import dequantize_int4 as reference_dequantize_int4
from tinyllm.quantize import quantize_int4 as reference_int4
from tinyllm.quantize import quantize_int8 as reference_int8
from tinyllm.sampling import generate as reference_generate


def matrices(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tied = torch.tensor([[1.0, -1.0, 0.3], [0.0, 0.0, 0.0], [-2e-3, 1e-3, 5e-4]])  # +-max in one row; zeros; tiny
    wide = torch.randn(16, 64, generator=g) * 0.02
    wide[:, 7] *= 40  # an outlier column: every row's extreme sits in it
    return [torch.randn(1, 1, generator=g), torch.randn(3, 5, generator=g) * 3, tied, wide]


@check("11_inference", "quantize_int8", points=1, book=BOOK + "#symmetric-absmax-one-scale-per-row", hidden=True)
def test_quantize_int8_hidden(sub):
    """quantize_int8 equals the reference on varied shapes, a row with +max and -max, zeros and tiny values."""
    fn = quantizer(sub, "quantize_int8", ["w"])
    for w in matrices(test_quantize_int8_hidden.autograder_check.seed % 1000):
        codes, scale = pair(fn(w), f"quantize_int8(w) for w of shape {tuple(w.shape)}")
        expected_codes, expected_scale = reference_int8(w)
        expect.close(scale, expected_scale, f"quantize_int8's scale for w of shape {tuple(w.shape)}", w, rtol=1e-5,
                     atol=1e-12)
        expect.equal(expect.tensor(codes, "quantize_int8's codes").dtype, torch.int8, "the dtype of the codes")
        expect.equal(codes, expected_codes, f"quantize_int8's codes for w of shape {tuple(w.shape)}", w)


@check("11_inference", "dequantize", points=1, book=BOOK + "#symmetric-absmax-one-scale-per-row", hidden=True)
def test_dequantize_hidden(sub):
    """dequantize inverts quantize_int8 to within half a step of every row, as the reference does."""
    fn = quantizer(sub, "dequantize", ["q", "scale"])
    for w in matrices(test_dequantize_hidden.autograder_check.seed % 1000):
        codes, scale = reference_int8(w)
        got = fn(codes, scale)
        expect.close(got, reference_dequantize(codes, scale), f"dequantize of w's codes for w {tuple(w.shape)}", w,
                     atol=1e-9)
        expect.true(bool(((got - w).abs() <= scale / 2 + 1e-7).all()),
                    f"dequantize(quantize_int8(w)) is off by more than half a step s_i / 2 for w {tuple(w.shape)}.")


@check("11_inference", "quantize_int4", points=1, book=BOOK + "#four-bits-one-scale-per-group", hidden=True)
def test_quantize_int4_hidden(sub):
    """quantize_int4 equals the reference for group sizes from 1 to a whole row."""
    fn = quantizer(sub, "quantize_int4", ["w", "group_size"])
    g = torch.Generator().manual_seed(test_quantize_int4_hidden.autograder_check.seed % 1000)
    for shape, group in (((2, 8), 8), ((5, 32), 4), ((4, 6), 1), ((1, 6), 3), ((3, 64), 16)):
        w = torch.randn(*shape, generator=g)
        w[0, : group] = 0.0  # the first group of the first row is zeros
        codes, scales = pair(fn(w, group), f"quantize_int4(w, {group}) for w {shape}")
        expected_codes, expected_scales = reference_int4(w, group)
        expect.close(scales, expected_scales, f"quantize_int4(w, {group})'s scales for w {shape}", w, rtol=1e-5,
                     atol=1e-12)
        expect.equal(codes, expected_codes, f"quantize_int4(w, {group})'s codes for w {shape}", w)
    # The error contract (ValueError for a size that does not divide) is quantize_int4_errors_public's alone.


@check("11_inference", "dequantize_int4", points=1, book=BOOK + "#four-bits-one-scale-per-group", hidden=True)
def test_dequantize_int4_hidden(sub):
    """dequantize_int4 equals the reference and inverts quantize_int4 to within half a group's step."""
    fn = quantizer(sub, "dequantize_int4", ["q", "scales", "group_size"])
    g = torch.Generator().manual_seed(test_dequantize_int4_hidden.autograder_check.seed % 1000)
    for shape, group in (((2, 8), 8), ((5, 32), 4), ((1, 6), 1)):
        w = torch.randn(*shape, generator=g)
        codes, scales = reference_int4(w, group)
        got = fn(codes, scales, group)
        expect.close(got, reference_dequantize_int4(codes, scales, group),
                     f"dequantize_int4(q, scales, {group}) for w {shape}", w, atol=1e-6)
        step = scales.repeat_interleave(group, dim=1)
        expect.true(bool(((got - w).abs() <= step / 2 + 1e-6).all()),
                    f"dequantize_int4(quantize_int4(w, {group})) is off by more than half a step for w {shape}.")


@check("11_inference", "speculative_accept", points=2, book=BOOK + "#checking-the-rule-exactly-on-a-small-vocabulary",
       hidden=True)
def test_speculative_accept_hidden(sub):
    """speculative_accept's output distribution on other vocabularies and k (0, 1, 3); greedy (one-hot) cases."""
    fn = accept_function(sub)
    seed = test_speculative_accept_hidden.autograder_check.seed % 1000
    p = torch.tensor([[0.1, 0.2, 0.3, 0.4]])  # k = 0: one token from p[0]
    check_distribution(draws(fn, p, torch.zeros(0, 4), 300, seed), p, torch.zeros(0, 4),
                       "speculative_accept with k = 0 (no draft)")
    p = torch.tensor([[0.05, 0.15, 0.3, 0.5], [0.7, 0.1, 0.1, 0.1]])
    q = torch.tensor([[0.4, 0.4, 0.1, 0.1]])
    check_distribution(draws(fn, p, q, 500, seed + 1), p, q, "speculative_accept with V = 4, k = 1")
    p = torch.tensor([[0.3, 0.7], [0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    q = torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.1, 0.9]])
    check_distribution(draws(fn, p, q, 500, seed + 2), p, q, "speculative_accept with V = 2, k = 3")
    # Greedy: one-hot rows. The draft agrees twice, then disagrees: [agreed, agreed, the target's token].
    p = torch.eye(5)[[1, 4, 2, 0]]
    q = torch.eye(5)[[1, 4, 3]]
    got = ids_of(fn(p, q, torch.tensor([1, 4, 3]), generator=torch.Generator().manual_seed(seed)),
                 "speculative_accept with one-hot p and q", 5, 3)
    expect.equal(list(got), [1, 4, 2], "speculative_accept(p, q, draft=[1, 4, 3]) with one-hot rows (greedy)",
                 hint="Accepted while the draft's token is the target's; at the first disagreement, the target's token.")


@check("11_inference", "speculative_generate", points=3, book=BOOK + "#the-loop", hidden=True)
def test_speculative_generate_hidden(sub):
    """Greedy equality for other models, k and lengths (0, 1, k > length); sampled tokens stay in the target's
    top-k, and the first one is distributed as the target's."""
    fn = generate_function(sub)
    seed = test_speculative_generate_hidden.autograder_check.seed % 1000
    with expect.blame(sub, "speculative_accept"):
        for i, (target_sizes, draft_sizes, prompt, n, k) in enumerate([
                (dict(n_kv_heads=1), "noisy", [[9]], 20, 2),
                (dict(), dict(n_layers=1, d_model=16, n_heads=2, n_kv_heads=1), [[9, 3]], 15, 3),
                (dict(n_kv_heads=4, n_layers=1), dict(n_layers=1), [[1, 2, 3, 4, 5, 6]], 7, 8),
                (dict(), dict(n_layers=1), [[4, 4]], 1, 4),
                (dict(), dict(n_layers=1), [[2, 7]], 0, 3)]):
            target = reference_model(seed=40 + i, **target_sizes)
            draft = library_model(sub, reference_model(seed=50 + i, noise_of=target) if draft_sizes == "noisy"
                                  else reference_model(seed=50 + i, **draft_sizes))
            prompt = torch.tensor(prompt)
            expect.equal(fn(library_model(sub, target), draft, prompt, n, k=k, temperature=0),
                         reference_generate(target, prompt, n, temperature=0),
                         f"speculative_generate(target, draft, idx, {n}, k={k}, temperature=0)", prompt)
        target = reference_model(seed=60)
        prompt = torch.tensor([[11, 12, 13]])
        for trial in range(3):
            draft = library_model(sub, reference_model(seed=61 + trial, n_layers=1))
            sampled_text(fn, target, library_model(sub, target), draft, prompt, 10, k=3, top_k=2, seed=seed + trial)

    sampled_generation(sub, fn, seed=1 + seed, generations=200)

