"""Positional schemes added for chapter 6: rotary embeddings (RoPE) and ALiBi biases."""

from __future__ import annotations

import math

import pytest
import torch

from tinyllm.attention import causal_mask
from tinyllm.positional import alibi_bias, alibi_slopes, apply_rope
from tinyllm.softmax import softmax


# ---------------------------------------------------------------- RoPE

def test_rope_rotates_a_two_dimensional_vector_by_its_position():
    # d = 2: one pair with frequency base^0 = 1, so position m turns (1, 0) by m radians.
    x = torch.tensor([[1.0, 0.0]] * 3)  # (T=3, d=2)
    expected = torch.tensor([[1.0, 0.0], [math.cos(1), math.sin(1)], [math.cos(2), math.sin(2)]])
    torch.testing.assert_close(apply_rope(x), expected)


def test_rope_uses_one_frequency_per_interleaved_pair():
    # d = 4, base = 100: pair (0, 1) turns by m, pair (2, 3) by m * 100^(-2/4) = m / 10.
    x = torch.tensor([[0.0, 1.0, 0.0, 1.0]] * 2)  # (T=2, d=4)
    expected = torch.tensor([
        [0.0, 1.0, 0.0, 1.0],  # position 0: no rotation
        [-math.sin(1), math.cos(1), -math.sin(0.1), math.cos(0.1)],
    ])
    torch.testing.assert_close(apply_rope(x, base=100.0), expected)


def test_rope_preserves_norms_and_batch_dimensions():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 7, 16)  # (B, n_heads, T, d_k)
    y = apply_rope(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    # Each (batch, head) slice is rotated the same way: positions count along dim -2 only.
    torch.testing.assert_close(y[1, 2], apply_rope(x[1, 2]))


def test_rope_scores_depend_only_on_the_offset():
    torch.manual_seed(1)
    T, d = 9, 8
    q, k = torch.randn(d), torch.randn(d)
    q_rot = apply_rope(q.expand(T, d))  # (T, d): the same query placed at every position m
    k_rot = apply_rope(k.expand(T, d))
    scores = q_rot @ k_rot.T  # (T, T): scores[m, n] = <R(m) q, R(n) k>
    for offset in range(-(T - 1), T):
        diagonal = scores.diagonal(offset)  # all (m, n) with n - m = offset
        torch.testing.assert_close(diagonal, diagonal[:1].expand_as(diagonal), atol=1e-5, rtol=1e-5)
    # ... and does depend on the offset (otherwise the test above proves nothing).
    assert not torch.allclose(scores.diagonal(0)[0], scores.diagonal(1)[0])
    # Offset 0 is the plain dot product.
    torch.testing.assert_close(scores[4, 4], q @ k, atol=1e-5, rtol=1e-5)


def test_rope_rejects_odd_feature_dimension():
    with pytest.raises(ValueError, match="even"):
        apply_rope(torch.zeros(3, 5))


# ---------------------------------------------------------------- ALiBi

def test_alibi_slopes_power_of_two_heads():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -i for i in range(1, 9)]))
    torch.testing.assert_close(alibi_slopes(4), torch.tensor([2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8]))
    torch.testing.assert_close(alibi_slopes(1), torch.tensor([2.0 ** -8]))


def test_alibi_slopes_other_head_counts_follow_the_paper():
    # 6 heads: the 4-head slopes, then every other 8-head slope (2^-1, 2^-3).
    expected = torch.tensor([2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8, 2.0 ** -1, 2.0 ** -3])
    torch.testing.assert_close(alibi_slopes(6), expected)
    with pytest.raises(ValueError):
        alibi_slopes(0)


def test_alibi_bias_values_for_a_small_case():
    bias = alibi_bias(2, 3)
    distance = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [2.0, 1.0, 0.0]])
    assert bias.shape == (2, 3, 3)
    torch.testing.assert_close(bias[0], -distance / 16)  # slope 2^(-8*1/2)
    torch.testing.assert_close(bias[1], -distance / 256)  # slope 2^(-8*2/2)
    assert (bias.diagonal(dim1=1, dim2=2) == 0).all()


def test_alibi_under_a_causal_mask_equals_the_papers_key_position_bias():
    # Below the diagonal the bias is slope * (j - i); the softmax ignores the -slope * i
    # that is constant along a row, so adding slope * j gives the same weights.
    torch.manual_seed(2)
    n_heads, T = 4, 6
    scores = torch.randn(n_heads, T, T)
    mask = causal_mask(T, T)
    ours = softmax((scores + alibi_bias(n_heads, T)).masked_fill(mask, float("-inf")))
    key_only = alibi_slopes(n_heads)[:, None, None] * torch.arange(T)  # (n_heads, 1, T)
    theirs = softmax((scores + key_only).masked_fill(mask, float("-inf")))
    torch.testing.assert_close(ours, theirs)
