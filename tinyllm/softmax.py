"""Softmax, log-sum-exp and the cross-entropy loss, computed stably (chapter 4).

Written without ``F.softmax``/``F.log_softmax``/``F.cross_entropy`` so that the
arithmetic is visible; tests prove them equal to PyTorch's built-ins.
"""

from __future__ import annotations

import torch
from torch import Tensor


def softmax(logits: Tensor, dim: int = -1, temperature: float = 1.0) -> Tensor:
    """Turn logits into probabilities along ``dim``: exp(z_i / tau) / sum_j exp(z_j / tau).

    Subtracting the maximum first changes nothing mathematically (it cancels in
    the ratio) but keeps every exponent <= 0, so exp() cannot overflow.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    scaled = logits / temperature
    shifted = scaled - scaled.amax(dim=dim, keepdim=True)
    exps = torch.exp(shifted)
    return exps / exps.sum(dim=dim, keepdim=True)


def logsumexp(logits: Tensor, dim: int = -1) -> Tensor:
    """log(sum_j exp(z_j)) along ``dim`` (kept), with the same max-shift as softmax."""
    peak = logits.amax(dim=dim, keepdim=True)
    # A row of all -inf would give inf - inf = nan; shift by 0 there instead.
    peak = torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))
    return peak + torch.log(torch.exp(logits - peak).sum(dim=dim, keepdim=True))


def log_softmax(logits: Tensor, dim: int = -1) -> Tensor:
    """log p_i = z_i - logsumexp(z): exact even where softmax underflows to 0."""
    return logits - logsumexp(logits, dim=dim)


def cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean negative log-likelihood of ``targets`` under ``softmax(logits)``.

    logits: (N, V) unnormalised scores; targets: (N,) integer ids in [0, V).
    """
    if logits.dim() != 2 or targets.dim() != 1 or logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"expected logits (N, V) and targets (N,), got {tuple(logits.shape)} "
            f"and {tuple(targets.shape)}"
        )
    log_probs = log_softmax(logits, dim=-1)  # (N, V)
    picked = log_probs.gather(1, targets.long().unsqueeze(1)).squeeze(1)  # (N,)
    return -picked.mean()


def perplexity(logits: Tensor, targets: Tensor) -> Tensor:
    """exp(cross-entropy): the effective number of equally likely next tokens."""
    return torch.exp(cross_entropy(logits, targets))
