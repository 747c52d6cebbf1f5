"""Positional information for a model that would otherwise see a bag of tokens (chapter 6)."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sinusoidal_positional_encoding(seq_len: int, d_model: int, base: float = 10000.0,
                                   dtype: torch.dtype | None = None) -> Tensor:
    """The fixed encoding of Vaswani et al. (2017), shape (seq_len, d_model).

    PE[pos, 2i] = sin(pos / base^(2i/d_model)) and PE[pos, 2i+1] = cos(same angle):
    each sin/cos pair is a clock turning at its own frequency, so shifting the
    position by Delta is a fixed rotation of every pair (chapter 6). ``dtype``:
    the table's dtype (default: torch's default dtype, float32).
    """
    if d_model % 2 != 0:
        raise ValueError(f"d_model must be even (sin/cos pairs), got {d_model}")
    if seq_len < 0:
        raise ValueError(f"seq_len must be >= 0, got {seq_len}")
    # Angles in float64, then stored in the requested dtype: in float32 the angle
    # pos * inv_freq would already be off by ~1e-4 at position 2000.
    position = torch.arange(seq_len, dtype=torch.float64).unsqueeze(1)  # (T, 1)
    # 1 / base^(2i/d_model) for i = 0 .. d_model/2 - 1, computed in log space.
    inv_freq = torch.exp(
        torch.arange(0, d_model, 2, dtype=torch.float64) * (-math.log(base) / d_model)
    )  # (d_model/2,)
    angles = position * inv_freq  # (T, d_model/2)
    pe = torch.zeros(seq_len, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles)
    return pe.to(dtype or torch.get_default_dtype())


def apply_rope(x: Tensor, base: float = 10000.0, offset: int = 0) -> Tensor:
    """Rotary position embedding (Su et al., 2024) of queries or keys x: (..., T, d), d even.

    Feature pair (2i, 2i+1) of the vector at position p = offset + t is rotated
    by the angle p * base^(-2i/d), the same clocks as the sinusoidal encoding
    (RoFormer's interleaved layout). A rotation preserves lengths, and rotating
    q by p and k by p' leaves a score that depends only on p' - p: relative
    positions, with nothing added to the token vectors. ``offset`` is the
    absolute position of x's first row: with a KV cache, new tokens continue
    where the cached ones stopped. It equals viewing the pairs as complex
    numbers and multiplying by exp(i * angle):
    ``torch.view_as_real(torch.view_as_complex(x.view(..., d/2, 2)) * torch.polar(1, angle))``.
    """
    T, d = x.shape[-2], x.shape[-1]
    if d % 2 != 0:
        raise ValueError(f"the feature dimension must be even (pairs are rotated), got {d}")
    if offset < 0:
        raise ValueError(f"offset must be >= 0, got {offset}")
    # Rows offset .. offset+T-1 of the table: each row depends only on its own
    # position, so a token gets the same angles whether it comes alone or in a sequence.
    # The table in x's own dtype: float64 inputs are rotated by float64 sines and cosines.
    pe = sinusoidal_positional_encoding(offset + T, d, base, dtype=x.dtype)[offset:].to(x.device)  # (T, d)
    sin, cos = pe[:, 0::2], pe[:, 1::2]  # (T, d/2) each: sin and cos of p * theta_i
    x_even, x_odd = x[..., 0::2], x[..., 1::2]  # (..., T, d/2): the two halves of each pair
    rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)
    return rotated.flatten(-2)  # (..., T, d/2, 2) -> (..., T, d), pairs interleaved again


def alibi_slopes(n_heads: int) -> Tensor:
    """ALiBi's head slopes (Press et al., 2022): 2^(-8i/n_heads) for i = 1 .. n_heads.

    A geometric sequence, so some heads look far back and others only nearby. For
    n_heads not a power of two the paper takes the slopes of the power of two
    below and fills up with every other slope of the power of two above.
    """
    if n_heads < 1:
        raise ValueError(f"n_heads must be at least 1, got {n_heads}")
    n = 2 ** math.floor(math.log2(n_heads))  # largest power of two <= n_heads
    slopes = [2.0 ** (-8.0 * i / n) for i in range(1, n + 1)]
    extra = [2.0 ** (-8.0 * i / (2 * n)) for i in range(1, 2 * n + 1)][0::2]
    return torch.tensor(slopes + extra[: n_heads - n])  # (n_heads,)


def alibi_bias(n_heads: int, seq_len: int) -> Tensor:
    """ALiBi's additive attention bias, shape (n_heads, T, T): -slope_h * |i - j|.

    Added to the scores q_i . k_j / sqrt(d_k) before the causal mask and the
    softmax, it penalises a key linearly in its distance from the query, so no
    position vector is needed and nothing limits seq_len. Below the diagonal
    (j <= i) this is the paper's -slope_h * (i - j); above it the causal mask
    removes the entries, and the symmetric value keeps them finite and sensible
    for attention without a mask.
    """
    position = torch.arange(seq_len)
    distance = (position[:, None] - position[None, :]).abs()  # (T, T): |i - j|
    return -distance * alibi_slopes(n_heads)[:, None, None]  # (n_heads, T, T)
