"""Public checks for 04_attention: scaled_dot_product_attention, MultiHeadAttention."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from autograder.grading import expect
from autograder.sandbox.forbidden import GROUPS
from autograder.grading.registry import check

BOOK = "book/05_attention.html"


def attention(sub):
    return sub.function("scaled_dot_product_attention", ["q", "k", "v", "causal"], forbid=GROUPS["attention"])


def mha_class(sub):
    return sub.cls("MultiHeadAttention", ["d_model", "n_heads", "causal"], forbid=GROUPS["multi_head"])


def random_mha_state(d_model: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
        state[f"{name}.weight"] = torch.randn(d_model, d_model, generator=g) / math.sqrt(d_model)
        state[f"{name}.bias"] = torch.randn(d_model, generator=g) * 0.1
    return state


def torch_mha(state: dict[str, torch.Tensor], d_model: int, n_heads: int) -> nn.MultiheadAttention:
    """PyTorch's own module carrying the same weights (the public oracle)."""
    module = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
    with torch.no_grad():
        module.in_proj_weight.copy_(torch.cat([state[f"{n}.weight"] for n in ("q_proj", "k_proj", "v_proj")]))
        module.in_proj_bias.copy_(torch.cat([state[f"{n}.bias"] for n in ("q_proj", "k_proj", "v_proj")]))
        module.out_proj.weight.copy_(state["out_proj.weight"])
        module.out_proj.bias.copy_(state["out_proj.bias"])
    return module.eval()


def unpack(result, what: str):
    expect.true(isinstance(result, tuple) and len(result) == 2,
                f"{what} should return a tuple (output, weights); it returned {expect.describe_tensor(result)}.")
    return result


@check("04_attention", "scaled_dot_product_attention", points=3, book=BOOK + "#scaled-dot-product-attention",
       reference="tinyllm.attention:scaled_dot_product_attention")
def test_scaled_dot_product_attention_public(sub):
    """attention matches F.scaled_dot_product_attention, scaled by sqrt(d_k), with an exact causal mask."""
    sdpa = attention(sub)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 5, 16, generator=g) for _ in range(3))
    out, weights = unpack(sdpa(q, k, v), "scaled_dot_product_attention(q, k, v)")
    expect.close(weights, torch.softmax(q @ k.transpose(-2, -1) / 4.0, dim=-1), "the attention weights",
                 "q, k, v of shape (2, 5, 16), so d_k = 16", hint="Divide the scores q k^T by sqrt(d_k) = 4 "
                 "before the softmax.")
    expect.close(out, F.scaled_dot_product_attention(q, k, v), "the attention output", "q, k, v (2, 5, 16)")
    out, weights = unpack(sdpa(q, k, v, causal=True), "scaled_dot_product_attention(q, k, v, causal=True)")
    expect.close(weights, torch.softmax((q @ k.transpose(-2, -1) / 4.0).masked_fill(
        torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf")), dim=-1), "the causal attention weights",
        "T = 5", hint="Query i may attend to keys 0..i, itself included: mask exactly the entries j > i "
                      "(torch.triu(..., diagonal=1)).")
    expect.close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), "the causal attention output")


@check("04_attention", "MultiHeadAttention", points=2, book=BOOK + "#multi-head-attention")
def test_MultiHeadAttention_public(sub):
    """MultiHeadAttention with copied weights matches nn.MultiheadAttention, causal or not."""
    MultiHeadAttention = mha_class(sub)
    d_model, n_heads, T = 16, 4, 6
    state = random_mha_state(d_model, seed=1)
    x = torch.randn(2, T, d_model, generator=torch.Generator().manual_seed(2))
    with expect.blame(sub, "scaled_dot_product_attention"):
        for causal in (False, True):
            module = MultiHeadAttention(d_model, n_heads, causal=causal)
            module.load_state_dict(state)
            module.eval()
            mask = torch.ones(T, T, dtype=torch.bool).triu(1) if causal else None
            expected, _ = torch_mha(state, d_model, n_heads)(x, x, x, attn_mask=mask, need_weights=False)
            got = module(x)
            expect.close(got, expected.detach(), f"MultiHeadAttention({d_model}, {n_heads}, causal={causal})(x)",
                         x, hint=mha_hint(got, expected.detach(), causal))


@check("04_attention", "MultiHeadAttention", points=1, book=BOOK + "#multi-head-attention")
def test_MultiHeadAttention_errors_public(sub):
    """MultiHeadAttention raises ValueError when d_model does not split into n_heads (the error contract)."""
    MultiHeadAttention = mha_class(sub)
    expect.raises(lambda: MultiHeadAttention(10, 3), ValueError, "MultiHeadAttention(10, 3)")


def mha_hint(got, expected: torch.Tensor, causal: bool) -> str:
    """A hint for what a wrong multi-head output looks like."""
    if not isinstance(got, torch.Tensor) or got.shape != expected.shape:
        return "The output has the input's shape (B, T, d_model): merge the heads back before out_proj."
    if causal:
        return ("Without the mask your module matches PyTorch's; with causal=True, position t must attend only "
                "to positions 0..t (pass causal=self.causal to the attention).")
    if torch.allclose(got[:, :1].expand_as(got), got, atol=1e-5):
        return "Every position got the same output: attention must mix the values along the time axis, per head."
    return ("Split (B, T, d_model) into (B, n_heads, T, d_k) with view + transpose, attend per head, merge back "
            "with transpose + reshape, then apply out_proj.")
