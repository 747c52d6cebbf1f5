"""Counting language models: the unigram and bigram baselines (chapters 1 and 8).

A neural model is only worth its cost if it beats these, so every perplexity
the book reports is set beside them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class NGramLM:
    """A unigram (order 1) or bigram (order 2) model over ids 0..vocab_size-1.

    Probabilities are counts plus ``alpha`` (add-alpha smoothing), so a pair
    never seen in training still gets a small, non-zero probability.
    """

    def __init__(self, order: int, vocab_size: int, alpha: float = 0.1):
        if order not in (1, 2):
            raise ValueError(f"order must be 1 or 2, got {order}")
        if alpha <= 0:
            raise ValueError(f"alpha must be positive (zero counts would give log 0), got {alpha}")
        self.order, self.vocab_size, self.alpha = order, vocab_size, alpha
        shape = (vocab_size,) if order == 1 else (vocab_size, vocab_size)
        self.counts = torch.zeros(shape, dtype=torch.float64)

    def fit(self, ids: list[int] | Tensor) -> "NGramLM":
        ids = torch.as_tensor(ids, dtype=torch.long)
        if self.order == 1:
            self.counts += torch.bincount(ids, minlength=self.vocab_size).double()
        else:
            # Pair (a, b) becomes the single index a * V + b, counted in one pass.
            flat = ids[:-1] * self.vocab_size + ids[1:]
            pairs = torch.bincount(flat, minlength=self.vocab_size**2).double()
            self.counts += pairs.view(self.vocab_size, self.vocab_size)
        return self

    def probs(self) -> Tensor:
        """(V,) or (V, V) with rows p(next | previous); every row sums to 1."""
        smoothed = self.counts + self.alpha
        return smoothed / smoothed.sum(dim=-1, keepdim=True)

    def nll(self, ids: list[int] | Tensor) -> float:
        """Mean negative log-likelihood (nats) of each id after the first given the model."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        log_p = self.probs().log()
        if self.order == 1:
            picked = log_p[ids[1:]]
        else:
            picked = log_p[ids[:-1], ids[1:]]
        return -picked.mean().item()

    def perplexity(self, ids: list[int] | Tensor) -> float:
        return math.exp(self.nll(ids))
