"""Turning next-token distributions into text: greedy, temperature, top-k, top-p (chapter 9)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tinyllm.softmax import softmax


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row (ties with the k-th kept), set the rest to -inf."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if k >= logits.shape[-1]:
        return logits
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability reaches p.

    The token whose probability carries the running total across p is kept;
    the most likely token is always kept.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"p must be in (0, 1], got {p}")
    probs = softmax(logits, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs  # mass of strictly more likely tokens
    drop_sorted = mass_before >= p  # p was already reached before this token
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def apply_repetition_penalty(logits: Tensor, previous: Tensor, penalty: float) -> Tensor:
    """Make tokens already in ``previous`` less likely (Keskar et al., 2019).

    logits (B, V), previous (B, T) ids. A seen token's positive logit is
    divided by ``penalty`` and a negative one multiplied, so both move down.
    """
    if penalty <= 0:
        raise ValueError(f"repetition penalty must be positive, got {penalty}")
    if penalty == 1.0 or previous.numel() == 0:
        return logits
    seen = logits.gather(-1, previous)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(-1, previous, seen)


def sample_next_token(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick one id per row of logits (..., V) -> (...,). Temperature 0 means greedy."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = softmax(logits, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])  # multinomial wants (N, V)
    picked = torch.multinomial(flat, num_samples=1, generator=generator)
    return picked.view(probs.shape[:-1])


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: Tensor,
    max_new_tokens: int,
    repetition_penalty: float = 1.0,
    **sampling,
) -> Tensor:
    """Extend idx (B, T) by max_new_tokens sampled ids -> (B, T + max_new_tokens).

    ``sampling`` goes to :func:`sample_next_token` (temperature, top_k, top_p,
    generator). The model sees at most its context_length latest tokens.
    """
    was_training = model.training
    model.eval()
    context_length = model.config.context_length
    for _ in range(max_new_tokens):
        window = idx[:, -context_length:]  # (B, <= context_length)
        logits, _ = model(window)
        next_logits = apply_repetition_penalty(logits[:, -1, :], idx, repetition_penalty)  # (B, V)
        next_id = sample_next_token(next_logits, **sampling)  # (B,)
        idx = torch.cat([idx, next_id.unsqueeze(1)], dim=1)
    model.train(was_training)
    return idx
