"""Public checks for 05_transformer_layer: layer_norm, FeedForward, TransformerBlock."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from autograder.grading import expect
from autograder.checks.test_04_attention import random_mha_state, torch_mha
from autograder.sandbox.forbidden import GROUPS
from autograder.grading.registry import check

BOOK = "book/07_transformer_layer.html"


def norm_function(sub):
    return sub.function("layer_norm", ["x", "weight", "bias", "eps"], forbid=GROUPS["layer_norm"])


def linear_state(prefix: str, n_in: int, n_out: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": torch.randn(n_out, n_in, generator=g) / math.sqrt(n_in),
            f"{prefix}.bias": torch.randn(n_out, generator=g) * 0.1}


def ffn_state(d_model: int, d_ff: int, seed: int, prefix: str = "") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {**linear_state(f"{prefix}fc1", d_model, d_ff, g), **linear_state(f"{prefix}fc2", d_ff, d_model, g)}


def block_state(d_model: int, d_ff: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for ln in ("ln1", "ln2"):
        state[f"{ln}.weight"] = 1 + 0.1 * torch.randn(d_model, generator=g)
        state[f"{ln}.bias"] = 0.1 * torch.randn(d_model, generator=g)
    state.update({f"attn.{k}": v for k, v in random_mha_state(d_model, seed + 1).items()})
    state.update(ffn_state(d_model, d_ff, seed + 2, prefix="ffn."))
    return state


@check("05_transformer_layer", "layer_norm", points=2, book=BOOK + "#layer-normalisation",
       reference="tinyllm.layers:layer_norm")
def test_layer_norm_public(sub):
    """layer_norm matches F.layer_norm (biased variance) on the last dimension."""
    layer_norm = norm_function(sub)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, generator=g) * 3 + 1
    weight, bias = torch.randn(8, generator=g), torch.randn(8, generator=g)
    got = layer_norm(x, weight, bias)
    unbiased = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True) + 1e-5) * weight + bias
    hint = "Normalise over the last dimension: (x - mean) / sqrt(var + eps), then * weight + bias."
    if isinstance(got, torch.Tensor) and got.shape == x.shape and torch.allclose(got, unbiased, atol=1e-4):
        hint = ("You used the unbiased variance (divide by d - 1): layer norm uses the biased one, "
                "mean((x - mean)^2) (torch.var(..., unbiased=False) or correction=0).")
    expect.close(got, F.layer_norm(x, (8,), weight, bias), "layer_norm(x, weight, bias)", x, hint=hint)
    ones, zeros = torch.ones(8), torch.zeros(8)
    normed = layer_norm(x, ones, zeros)
    expect.close(normed.mean(-1), torch.zeros(2, 3), "the mean of each normalised vector", atol=1e-5)


@check("05_transformer_layer", "FeedForward", points=1, book=BOOK + "#the-feed-forward-network",
       reference="tinyllm.layers:FeedForward")
def test_FeedForward_public(sub):
    """FeedForward is fc2(GELU(fc1(x))) with submodules fc1 and fc2."""
    FeedForward = sub.cls("FeedForward", ["d_model", "d_ff"])
    state = ffn_state(8, 32, seed=1)
    ffn = FeedForward(8, 32)
    ffn.load_state_dict(state)
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(3))
    expected = F.linear(F.gelu(F.linear(x, state["fc1.weight"], state["fc1.bias"])), state["fc2.weight"],
                        state["fc2.bias"])
    expect.close(ffn(x), expected, "FeedForward(8, 32)(x)", x,
                 hint="The exact GELU: nn.GELU() or F.gelu with its default approximate='none'.")


@check("05_transformer_layer", "TransformerBlock", points=2, book=BOOK + "#the-block-assembled")
def test_TransformerBlock_public(sub):
    """TransformerBlock with copied weights matches nn.TransformerEncoderLayer (pre-norm, GELU, causal)."""
    TransformerBlock = sub.cls("TransformerBlock", ["d_model", "n_heads", "d_ff"], forbid=GROUPS["layer_norm"])
    d_model, n_heads, d_ff, T = 16, 4, 32, 5
    state = block_state(d_model, d_ff, seed=4)
    block = TransformerBlock(d_model, n_heads, d_ff)
    block.load_state_dict(state)
    block.eval()
    reference = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True).eval()
    reference.self_attn = torch_mha({k[5:]: v for k, v in state.items() if k.startswith("attn.")}, d_model, n_heads)
    with torch.no_grad():
        for ours, theirs in (("ln1", "norm1"), ("ln2", "norm2"), ("ffn.fc1", "linear1"), ("ffn.fc2", "linear2")):
            getattr(reference, theirs).weight.copy_(state[f"{ours}.weight"])
            getattr(reference, theirs).bias.copy_(state[f"{ours}.bias"])
    x = torch.randn(2, T, d_model, generator=torch.Generator().manual_seed(5))
    mask = nn.Transformer.generate_square_subsequent_mask(T)
    expected = reference(x, src_mask=mask, is_causal=True).detach()
    with expect.blame(sub, "layer_norm", "FeedForward"):
        expect.close(block(x), expected, f"TransformerBlock({d_model}, {n_heads}, {d_ff})(x)", x,
                     hint="Pre-norm: x = x + attn(ln1(x)); then x = x + ffn(ln2(x)).")
