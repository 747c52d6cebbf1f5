"""Hidden checks for 10_post_training: the reference on varied shapes, ranks, betas and edge cases."""

from __future__ import annotations

import torch
from torch import nn

from autograder.grading import expect
from autograder.checks.test_10_post_training import (BOOK, dpo_function, library_function, loss_function,
                                                     prompt_and_answer, trained_layer)
from autograder.grading.registry import check
from tinyllm.posttrain import LoRALinear as ReferenceLoRA
from tinyllm.posttrain import dpo_loss as reference_dpo
from tinyllm.posttrain import sequence_logprob as reference_logprob
from tinyllm.posttrain import sft_loss as reference_sft


def reference_layer(state: dict[str, torch.Tensor], rank: int, alpha: float) -> ReferenceLoRA:
    out_features, in_features = state["base.weight"].shape
    layer = ReferenceLoRA(nn.Linear(in_features, out_features, bias="base.bias" in state), rank, alpha)
    layer.load_state_dict(state)
    return layer


@check("10_post_training", "sft_loss", points=1, book=BOOK + "#the-loss-on-the-answer-only", hidden=True)
def test_sft_loss_hidden(sub):
    """sft_loss equals the reference on varied shapes, a single masked position and an all-true mask."""
    fn = loss_function(sub, "sft_loss")
    for B, T, V, seed in [(1, 5, 7, 0), (4, 9, 30, 1), (2, 3, 2, 2)]:
        logits, targets, mask = prompt_and_answer(B, T, V, seed + test_sft_loss_hidden.autograder_check.seed % 1000)
        expect.close(fn(logits, targets, mask), reference_sft(logits, targets, mask),
                     f"sft_loss for logits {(B, T, V)}", atol=1e-4)
    logits, targets, _ = prompt_and_answer(2, 4, 5, seed=3)
    one = torch.zeros(2, 4, dtype=torch.bool)
    one[1, 2] = True
    expect.close(fn(logits, targets, one), reference_sft(logits, targets, one), "sft_loss with one masked position",
                 atol=1e-4)
    every = torch.ones(2, 4, dtype=torch.bool)
    expect.close(fn(logits, targets, every), reference_sft(logits, targets, every),
                 "sft_loss with every position masked (the plain cross-entropy)", atol=1e-4)


@check("10_post_training", "sequence_logprob", points=1, book=BOOK + "#dpo", hidden=True)
def test_sequence_logprob_hidden(sub):
    """sequence_logprob equals the reference on varied shapes, including a row with nothing masked."""
    fn = loss_function(sub, "sequence_logprob")
    for B, T, V, seed in [(1, 4, 6, 4), (5, 8, 17, 5)]:
        logits, targets, mask = prompt_and_answer(B, T, V, seed)
        mask[0] = False  # an empty answer: log p = 0
        expect.close(fn(logits, targets, mask), reference_logprob(logits, targets, mask),
                     f"sequence_logprob for logits {(B, T, V)} (row 0 has no masked position)", atol=1e-4)


@check("10_post_training", "LoRALinear", points=2, book=BOOK + "#lora-from-scratch", hidden=True)
def test_LoRALinear_hidden(sub):
    """LoRALinear and merged() equal the reference at several ranks and alphas, with and without a bias."""
    g = torch.Generator().manual_seed(test_LoRALinear_hidden.autograder_check.seed)
    for out_features, in_features, rank, alpha, bias in [(3, 5, 1, 1.0, True), (8, 4, 4, 32.0, False),
                                                         (6, 6, 6, 3.0, True)]:
        layer, _, state = trained_layer(sub, out_features, in_features, rank, alpha, seed=rank + 10, bias=bias)
        reference = reference_layer(state, rank, alpha)
        x = torch.randn(2, 3, in_features, generator=g)
        what = f"LoRALinear(Linear({in_features}, {out_features}, bias={bias}), rank={rank}, alpha={alpha})"
        expect.close(layer(x), reference(x).detach(), f"{what}(x)", atol=1e-4)
        merged = library_function(sub, "merged_state")(layer)
        expected = {k: v.detach() for k, v in reference.merged().state_dict().items()}
        expect.equal(sorted(merged), sorted(expected), f"the parameters of {what}.merged()")
        for name in expected:
            expect.close(merged[name], expected[name], f"{what}.merged().{name}", atol=1e-4)


@check("10_post_training", "dpo_loss", points=1, book=BOOK + "#dpo", hidden=True)
def test_dpo_loss_hidden(sub):
    """dpo_loss equals the reference for several betas and batch sizes, and stays finite for large margins."""
    dpo = dpo_function(sub)
    g = torch.Generator().manual_seed(test_dpo_loss_hidden.autograder_check.seed)
    for n, beta in [(1, 0.1), (7, 1.0), (4, 0.01)]:
        pc, pr, rc, rr = (torch.randn(n, generator=g) * 5 - 20 for _ in range(4))
        expect.close(dpo(pc, pr, rc, rr, beta=beta), reference_dpo(pc, pr, rc, rr, beta),
                     f"dpo_loss for a batch of {n}, beta={beta}", atol=1e-5)
    big = torch.tensor([-1.0, -500.0])
    low = torch.tensor([-500.0, -1.0])
    zero = torch.zeros(2)
    expect.close(dpo(big, low, zero, zero, beta=1.0), reference_dpo(big, low, zero, zero, 1.0),
                 "dpo_loss with margins of +499 and -499 (beta=1)", atol=1e-4,
                 hint="log(sigmoid(z)) overflows for large |z|: use F.logsigmoid.")
