"""Scaled dot-product attention and multi-head self-attention (chapter 6)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from tinyllm.softmax import softmax


def causal_mask(t_query: int, t_key: int, device: torch.device | None = None) -> Tensor:
    """(t_query, t_key) bool mask, True where query i must NOT see key j (j > i)."""
    return torch.ones(t_query, t_key, dtype=torch.bool, device=device).triu(diagonal=1)


def scaled_dot_product_attention(
    q: Tensor, k: Tensor, v: Tensor, causal: bool = False
) -> tuple[Tensor, Tensor]:
    """softmax(q k^T / sqrt(d_k)) v for q (..., T_q, d_k), k (..., T_k, d_k), v (..., T_k, d_v).

    Returns (output (..., T_q, d_v), weights (..., T_q, T_k)). Dividing by
    sqrt(d_k) keeps the scores' variance near 1 whatever d_k is, so the softmax
    does not saturate. With ``causal`` query i only attends to keys 0..i.
    """
    d_k = q.shape[-1]
    scores = q @ k.transpose(-2, -1) / math.sqrt(d_k)  # (..., T_q, T_k)
    if causal:
        mask = causal_mask(q.shape[-2], k.shape[-2], device=q.device)
        scores = scores.masked_fill(mask, float("-inf"))
    weights = softmax(scores, dim=-1)  # each row sums to 1
    return weights @ v, weights


class MultiHeadAttention(nn.Module):
    """n_heads attentions side by side, each on a d_model/n_heads slice of the features."""

    def __init__(self, d_model: int, n_heads: int, causal: bool = True):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model = d_model
        self.n_heads = n_heads
        self.d_k = d_model // n_heads
        self.causal = causal
        # Separate projections (not one fused matrix) so each has a readable name.
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def split_heads(self, x: Tensor) -> Tensor:
        """(B, T, d_model) -> (B, n_heads, T, d_k)."""
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.d_k).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape  # batch, sequence length, d_model
        q = self.split_heads(self.q_proj(x))  # (B, n_heads, T, d_k)
        k = self.split_heads(self.k_proj(x))
        v = self.split_heads(self.v_proj(x))
        heads, _ = scaled_dot_product_attention(q, k, v, causal=self.causal)  # (B, n_heads, T, d_k)
        merged = heads.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, d_model)
        return self.out_proj(merged)
