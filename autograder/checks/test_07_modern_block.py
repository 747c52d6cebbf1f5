"""Public checks for 07_modern_block: rms_norm, apply_rope, SwiGLU, GroupedQueryAttention, LlamaBlock."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from autograder.grading import expect
from autograder.sandbox.forbidden import GROUPS
from autograder.grading.registry import check

BOOK = "book/10_modern_block.html"


def loaded(make, state: dict[str, torch.Tensor], *sizes):
    """make(*sizes) (the student's class or the book's) carrying ``state``, in eval mode."""
    module = make(*sizes)
    module.load_state_dict(state)
    return module.eval()


def rope_function(sub):
    return sub.function("apply_rope", ["x", "base", "offset"], forbid=GROUPS["rope"])


def gqa_class(sub):
    return sub.cls("GroupedQueryAttention", ["d_model", "n_heads", "n_kv_heads"], forbid=GROUPS["grouped_query"])


def rope_by_complex_numbers(x: torch.Tensor, base: float = 10000.0, offset: int = 0) -> torch.Tensor:
    """RoFormer's rotation: pair (2i, 2i+1) as a complex number, times exp(i (offset + t) base^(-2i/d))."""
    T, d = x.shape[-2], x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,)
    angles = (offset + torch.arange(T, dtype=torch.float64))[:, None] * theta  # (T, d/2)
    pairs = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(pairs * torch.polar(torch.ones_like(angles), angles)).flatten(-2).to(x.dtype)


def rope_half_split(x: torch.Tensor, base: float = 10000.0, offset: int = 0) -> torch.Tensor:
    """The other common layout (GPT-NeoX, Hugging Face's rotate_half): feature i paired with i + d/2."""
    d = x.shape[-1]
    T = x.shape[-2]
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = ((offset + torch.arange(T, dtype=torch.float64))[:, None] * theta).to(x.dtype)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    rotate_half = torch.cat([-x[..., d // 2:], x[..., : d // 2]], dim=-1)
    return x * cos + rotate_half * sin


def gqa_state(d_model: int, n_heads: int, n_kv_heads: int, seed: int, prefix: str = "") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    kv = n_kv_heads * (d_model // n_heads)
    shapes = {"q_proj": (d_model, d_model), "k_proj": (kv, d_model), "v_proj": (kv, d_model),
              "out_proj": (d_model, d_model)}
    return {f"{prefix}{name}.weight": torch.randn(*shape, generator=g) / math.sqrt(shape[1])
            for name, shape in shapes.items()}


def swiglu_state(d_model: int, d_ff: int, seed: int, prefix: str = "") -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"{prefix}w_gate.weight": torch.randn(d_ff, d_model, generator=g) / math.sqrt(d_model),
            f"{prefix}w_up.weight": torch.randn(d_ff, d_model, generator=g) / math.sqrt(d_model),
            f"{prefix}w_down.weight": torch.randn(d_model, d_ff, generator=g) / math.sqrt(d_ff)}


def block_state(d_model: int, n_heads: int, n_kv_heads: int, d_ff: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {"attn_norm.weight": 1 + 0.1 * torch.randn(d_model, generator=g),
             "ffn_norm.weight": 1 + 0.1 * torch.randn(d_model, generator=g)}
    state.update(gqa_state(d_model, n_heads, n_kv_heads, seed + 1, prefix="attn."))
    state.update(swiglu_state(d_model, d_ff, seed + 2, prefix="ffn."))
    return state


def gqa_by_torch(state: dict[str, torch.Tensor], x: torch.Tensor, n_heads: int, n_kv_heads: int,
                 group=None) -> torch.Tensor:
    """The public oracle: projections, RoPE (complex form), F.scaled_dot_product_attention(enable_gqa=True).

    ``group`` replaces the key/value heads' repetition (to recognise a wrong grouping).
    """
    B, T, d_model = x.shape
    d_k = d_model // n_heads
    q = (x @ state["q_proj.weight"].T).view(B, T, n_heads, d_k).transpose(1, 2)
    k = (x @ state["k_proj.weight"].T).view(B, T, n_kv_heads, d_k).transpose(1, 2)
    v = (x @ state["v_proj.weight"].T).view(B, T, n_kv_heads, d_k).transpose(1, 2)
    q, k = rope_by_complex_numbers(q), rope_by_complex_numbers(k)
    if group is None:
        heads = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    else:
        heads = F.scaled_dot_product_attention(q, group(k), group(v), is_causal=True)
    return heads.transpose(1, 2).reshape(B, T, d_model) @ state["out_proj.weight"].T


@check("07_modern_block", "rms_norm", points=2, book=BOOK + "#rmsnorm", reference="tinyllm.layers:rms_norm")
def test_rms_norm_public(sub):
    """rms_norm matches F.rms_norm on the last dimension (no mean subtracted, no bias)."""
    rms_norm = sub.function("rms_norm", ["x", "weight", "eps"], forbid=GROUPS["rms_norm"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 8, generator=g) * 2 + 1  # a mean far from 0, so subtracting it shows
    weight = torch.randn(8, generator=g)
    got = rms_norm(x, weight)
    hint = "Divide x by sqrt(mean(x^2) + eps) over the last dimension, then multiply by weight."
    centred = x - x.mean(-1, keepdim=True)
    if isinstance(got, torch.Tensor) and got.shape == x.shape:
        if torch.allclose(got, F.rms_norm(centred, (8,), weight, 1e-6), atol=1e-4):
            hint = "You subtracted the mean: that is layer norm. RMSNorm divides x itself by its root mean square."
        elif torch.allclose(got, x / (x.pow(2).mean(-1, keepdim=True).sqrt() + 1e-6) * weight, atol=1e-6, rtol=0):
            hint = "eps goes inside the square root: sqrt(mean(x^2) + eps)."
    expect.close(got, F.rms_norm(x, (8,), weight, eps=1e-6), "rms_norm(x, weight)", x, hint=hint)
    got = rms_norm(x, weight, eps=0.5)
    hint = ""
    if isinstance(got, torch.Tensor) and got.shape == x.shape:
        if torch.allclose(got, x / (x.pow(2).mean(-1, keepdim=True).sqrt() + 0.5) * weight, atol=1e-5):
            hint = "eps goes inside the square root: sqrt(mean(x^2) + eps), not sqrt(mean(x^2)) + eps."
        elif torch.allclose(got, F.rms_norm(x, (8,), weight, eps=1e-6), atol=1e-5):
            hint = "Your rms_norm gives the result of eps=1e-6 here: use the eps it is given."
    expect.close(got, F.rms_norm(x, (8,), weight, eps=0.5), "rms_norm(x, weight, eps=0.5)", x, hint=hint)
    zeros = rms_norm(torch.zeros(1, 4), torch.ones(4))
    expect.close(zeros, torch.zeros(1, 4), "rms_norm of a zero vector", hint="eps keeps 0 / sqrt(0 + eps) finite.")


@check("07_modern_block", "apply_rope", points=1, book=BOOK + "#rope-inside-attention",
       reference="tinyllm.positional:apply_rope")
def test_apply_rope_public(sub):
    """apply_rope rotates interleaved pairs (2i, 2i+1) by (offset + t) * base^(-2i/d): the complex-number rotation."""
    rope = rope_function(sub)
    x = torch.randn(2, 3, 6, 8, generator=torch.Generator().manual_seed(1))
    got = rope(x)
    hint = ("Rotate feature pair (2i, 2i+1) at position t by the angle t * base**(-2i/d): "
            "(x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos).")
    if isinstance(got, torch.Tensor) and got.shape == x.shape and torch.allclose(got, rope_half_split(x), atol=1e-4):
        hint = ("You paired feature i with feature i + d/2 (the rotate_half layout of GPT-NeoX and Hugging Face); "
                "the exercise uses RoFormer's interleaved pairs (2i, 2i+1): x[..., 0::2] and x[..., 1::2].")
    expect.close(got, rope_by_complex_numbers(x), "apply_rope(x) for x of shape (2, 3, 6, 8)", x, atol=1e-4, hint=hint)
    shifted = rope(x, offset=5)
    hint = "offset is the position of x's first row: row t is rotated by the angle of position offset + t."
    if isinstance(shifted, torch.Tensor) and torch.allclose(shifted, rope_by_complex_numbers(x), atol=1e-4):
        hint = "Your apply_rope ignores offset: row t must be rotated as position offset + t, not t."
    expect.close(shifted, rope_by_complex_numbers(x, offset=5), "apply_rope(x, offset=5)", x, atol=1e-4, hint=hint)
    expect.close(rope(x, base=100.0), rope_by_complex_numbers(x, base=100.0), "apply_rope(x, base=100.0)", x,
                 atol=1e-4, hint="Use the base you are given: theta_i = base**(-2i/d).")
    flat = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(2))
    expect.close(rope(flat), rope_by_complex_numbers(flat), "apply_rope(x) for x of shape (3, 5, 4)", flat, atol=1e-4,
                 hint="x has shape (..., T, d_k) with any number of leading dimensions: the positions are along "
                 "dim -2 and the features along dim -1.")


@check("07_modern_block", "apply_rope", points=1, book=BOOK + "#rope-inside-attention")
def test_apply_rope_errors_public(sub):
    """apply_rope raises ValueError for an odd feature dimension (the error contract, checked apart from the values)."""
    rope = rope_function(sub)
    expect.raises(lambda: rope(torch.zeros(1, 3, 5)), ValueError, "apply_rope on an odd feature dimension (5)")


@check("07_modern_block", "SwiGLU", points=1, book=BOOK + "#swiglu", reference="tinyllm.layers:SwiGLU")
def test_SwiGLU_public(sub):
    """SwiGLU is w_down(silu(w_gate(x)) * w_up(x)) with bias-free w_gate, w_up, w_down."""
    SwiGLU = sub.cls("SwiGLU", ["d_model", "d_ff"])
    state = swiglu_state(8, 12, seed=2)
    ffn = loaded(SwiGLU, state, 8, 12)
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(3))
    gate, up = x @ state["w_gate.weight"].T, x @ state["w_up.weight"].T
    expected = (F.silu(gate) * up) @ state["w_down.weight"].T
    got = ffn(x)
    hint = "silu(z) = z * sigmoid(z) (F.silu) goes on the gate only; multiply by w_up(x), then w_down."
    if isinstance(got, torch.Tensor) and torch.allclose(got, (F.silu(up) * gate) @ state["w_down.weight"].T, atol=1e-4):
        hint = "You applied silu to w_up(x): the activation belongs on the gate, w_gate(x)."
    expect.close(got, expected, "SwiGLU(8, 12)(x)", x, hint=hint)


@check("07_modern_block", "GroupedQueryAttention", points=2, book=BOOK + "#grouped-query-attention",
       reference="tinyllm.attention:GroupedQueryAttention")
def test_GroupedQueryAttention_public(sub):
    """GroupedQueryAttention with the same weights matches F.scaled_dot_product_attention(enable_gqa=True) after RoPE."""
    GQA = gqa_class(sub)
    x = torch.randn(2, 6, 16, generator=torch.Generator().manual_seed(4))
    with expect.blame(sub, "apply_rope"):
        for n_heads, n_kv_heads in ((4, 4), (4, 2), (4, 1)):
            state = gqa_state(16, n_heads, n_kv_heads, seed=n_kv_heads)
            module = loaded(GQA, state, 16, n_heads, n_kv_heads)
            got = module(x)
            expected = gqa_by_torch(state, x, n_heads, n_kv_heads)
            hint = ("Project, split into heads, apply RoPE to q and k, let query head h read key/value head "
                    "h // (n_heads // n_kv_heads), attend causally, merge the heads, out_proj.")
            tiled = gqa_by_torch(state, x, n_heads, n_kv_heads, group=lambda t: t.repeat(1, n_heads // n_kv_heads, 1, 1))
            if n_kv_heads not in (1, n_heads) and isinstance(got, torch.Tensor) and got.shape == expected.shape \
                    and torch.allclose(got, tiled, atol=1e-4):
                hint = ("Query head h read key/value head h % n_kv_heads (torch.repeat tiles the heads). The "
                        "contract shares each key/value head among neighbouring query heads: h // (n_heads // "
                        "n_kv_heads), which is torch.repeat_interleave along the head dimension.")
            expect.close(got, expected, f"GroupedQueryAttention(16, {n_heads}, {n_kv_heads})(x)", x, atol=1e-4,
                         hint=hint)


@check("07_modern_block", "GroupedQueryAttention", points=1, book=BOOK + "#grouped-query-attention")
def test_GroupedQueryAttention_errors_public(sub):
    """GroupedQueryAttention raises ValueError when n_heads is not a multiple of n_kv_heads (the error contract)."""
    GQA = gqa_class(sub)
    expect.raises(lambda: GQA(16, 4, 3), ValueError, "GroupedQueryAttention(16, 4, 3) (4 heads do not split into 3 groups)")


@check("07_modern_block", "LlamaBlock", points=2, book=BOOK + "#the-modern-model")
def test_LlamaBlock_public(sub):
    """LlamaBlock is x + attn(attn_norm(x)), then + ffn(ffn_norm(x)), with RMSNorm, GQA and SwiGLU."""
    LlamaBlock = sub.cls("LlamaBlock", ["d_model", "n_heads", "n_kv_heads", "d_ff"], forbid=GROUPS["rms_norm"])
    d_model, n_heads, n_kv_heads, d_ff = 16, 4, 2, 24
    state = block_state(d_model, n_heads, n_kv_heads, d_ff, seed=5)
    block = loaded(LlamaBlock, state, d_model, n_heads, n_kv_heads, d_ff)
    x = torch.randn(2, 5, d_model, generator=torch.Generator().manual_seed(6))
    attn = {k[5:]: v for k, v in state.items() if k.startswith("attn.")}
    h = x + gqa_by_torch(attn, F.rms_norm(x, (d_model,), state["attn_norm.weight"], 1e-6), n_heads, n_kv_heads)
    normed = F.rms_norm(h, (d_model,), state["ffn_norm.weight"], 1e-6)
    expected = h + (F.silu(normed @ state["ffn.w_gate.weight"].T) * (normed @ state["ffn.w_up.weight"].T)) \
        @ state["ffn.w_down.weight"].T
    with expect.blame(sub, "rms_norm", "apply_rope", "SwiGLU", "GroupedQueryAttention"):
        expect.close(block(x), expected, f"LlamaBlock({d_model}, {n_heads}, {n_kv_heads}, {d_ff})(x)", x, atol=1e-4,
                     hint="Pre-norm: x = x + attn(attn_norm(x)); then x = x + ffn(ffn_norm(x)).")
