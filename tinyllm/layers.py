"""The pieces of a transformer layer besides attention (chapter 7); the modern block (Part II)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinyllm.attention import CrossAttention, GroupedQueryAttention, KVCache, MultiHeadAttention


def layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float = 1e-5) -> Tensor:
    """Normalise each feature vector (last dim) to mean 0, variance 1, then scale and shift.

    The variance is the biased one (divide by d_model, not d_model - 1), as in
    nn.LayerNorm; eps keeps the division finite for a constant vector.
    """
    mean = x.mean(dim=-1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps) * weight + bias


class LayerNorm(nn.Module):
    """:func:`layer_norm` with a learnable gain (init 1) and bias (init 0)."""

    def __init__(self, d_model: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: Tensor) -> Tensor:
        return layer_norm(x, self.weight, self.bias, self.eps)


class FeedForward(nn.Module):
    """Position-wise MLP: d_model -> d_ff -> d_model with a GELU between."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_ff)
        self.act = nn.GELU()  # the exact (erf) GELU, as nn.TransformerEncoderLayer; GPT-2 uses the tanh form
        self.fc2 = nn.Linear(d_ff, d_model)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))  # (B, T, d_model)


class TransformerBlock(nn.Module):
    """Pre-norm block: x + attn(ln1(x)), then + ffn(ln2(x)).

    Normalising the input of each branch (not the sum) leaves the residual path
    an identity from the first layer to the last, which keeps the gradients of
    deep stacks well scaled at initialisation (Xiong et al., 2020, could then
    train without learning-rate warm-up; most models still warm up).
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0):
        super().__init__()
        self.ln1 = LayerNorm(d_model)
        self.attn = MultiHeadAttention(d_model, n_heads, causal=True)
        self.ln2 = LayerNorm(d_model)
        self.ffn = FeedForward(d_model, d_ff)
        self.drop = nn.Dropout(dropout)  # on each branch's output, before the add

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))  # (B, T, d_model)
        x = x + self.drop(self.ffn(self.ln2(x)))
        return x


def rms_norm(x: Tensor, weight: Tensor, eps: float = 1e-6) -> Tensor:
    """Divide each feature vector (last dim) by its root mean square, then scale.

    RMSNorm (Zhang & Sennrich, 2019) is layer norm without the mean subtraction
    and without the bias: cheaper, and in practice as good, which is why LLaMA
    and most recent models use it. eps keeps the division finite for x = 0.
    Equals ``F.rms_norm(x, (d,), weight, eps)`` (and ``nn.RMSNorm``).
    """
    rms = torch.sqrt((x**2).mean(dim=-1, keepdim=True) + eps)  # (..., 1)
    return x / rms * weight


class RMSNorm(nn.Module):
    """:func:`rms_norm` with a learnable gain (init 1); no bias. Same as ``nn.RMSNorm(d_model, eps)``."""

    def __init__(self, d_model: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)


class PostNormBlock(TransformerBlock):
    """Post-norm block of the original transformer: ln1(x + attn(x)), then ln2(x + ffn(x)).

    Same submodules (and state_dict names) as :class:`TransformerBlock`, wired
    the other way: the norm sits on the residual path itself, so no identity
    path runs through the stack. Kept for comparison (chapter 7), not used by TinyGPT.
    """

    def forward(self, x: Tensor) -> Tensor:
        x = self.ln1(x + self.drop(self.attn(x)))  # (B, T, d_model)
        x = self.ln2(x + self.drop(self.ffn(x)))
        return x


def swiglu_hidden(d_model: int, multiple_of: int = 8) -> int:
    """The SwiGLU width with the parameters of a 4 * d_model GELU FFN: 2/3 of 4 * d_model, rounded up.

    A GELU FFN has two d_model x d_ff matrices, SwiGLU three; 3 * (2/3 * 4d) * d
    = 2 * 4d * d. LLaMA rounds up to a multiple of 256; tiny models to 8.
    """
    hidden = int(2 * 4 * d_model / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class SwiGLU(nn.Module):
    """Gated feed-forward (Shazeer, 2020): w_down(silu(w_gate(x)) * w_up(x)), no biases.

    The gate decides, per hidden feature, how much of w_up(x) passes. silu(z)
    = z * sigmoid(z) is ``F.silu``. Three matrices instead of two, so LLaMA
    takes d_ff = 2/3 of 4 * d_model to keep the parameter count (see
    :func:`swiglu_hidden`).
    """

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.w_gate = nn.Linear(d_model, d_ff, bias=False)
        self.w_up = nn.Linear(d_model, d_ff, bias=False)
        self.w_down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))  # (B, T, d_model)


class LlamaBlock(nn.Module):
    """The modern pre-norm block (LLaMA, Touvron et al., 2023): RMSNorm, grouped-query attention with RoPE, SwiGLU.

    x + attn(attn_norm(x)), then + ffn(ffn_norm(x)): the wiring of
    :class:`TransformerBlock`, with each part replaced by its modern successor.
    ``cache`` (a :class:`KVCache`) is passed on to the attention.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, d_ff: int, dropout: float = 0.0,
                 rope_base: float = 10000.0):
        super().__init__()
        self.attn_norm = RMSNorm(d_model)
        self.attn = GroupedQueryAttention(d_model, n_heads, n_kv_heads, rope_base)
        self.ffn_norm = RMSNorm(d_model)
        self.ffn = SwiGLU(d_model, d_ff)
        self.drop = nn.Dropout(dropout)  # on each branch's output, before the add

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.attn_norm(x), cache=cache))  # (B, T, d_model)
        x = x + self.drop(self.ffn(self.ffn_norm(x)))
        return x


# ----------------------------------------------------------------- Part III: the encoder's and the decoder's blocks


class EncoderBlock(TransformerBlock):
    """Chapter 7's pre-norm block with its attention bidirectional and blind to padding: an encoder's block.

    x + attn(ln1(x)), then + ffn(ln2(x)), as :class:`TransformerBlock`, with
    the same submodules and ``state_dict`` names; only the attention differs:
    a :class:`CrossAttention` that reads its own input as memory, so that every
    position sees every other one (no causal mask), and ``key_padding_mask``
    (B, T), True at padding, keeps the padding out of every position's mix.
    Equals ``nn.TransformerEncoderLayer(d_model, n_heads, d_ff, norm_first=True,
    activation="gelu", batch_first=True)`` with the same weights and
    ``src_key_padding_mask``.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0):
        super().__init__(d_model, n_heads, d_ff, dropout)
        self.attn = CrossAttention(d_model, n_heads)  # replaces the causal self-attention

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        h = self.ln1(x)
        x = x + self.drop(self.attn(h, h, key_padding_mask))  # (B, T, d_model): memory is the input itself
        x = x + self.drop(self.ffn(self.ln2(x)))
        return x


class DecoderBlock(TransformerBlock):
    """Chapter 7's causal block with a cross-attention sublayer between its self-attention and its FFN.

    x + attn(ln1(x)) (causal self-attention over the target so far), then
    + cross_attn(ln_cross(x), memory) (the target's positions read the
    encoder's output ``memory``, its padding hidden by ``memory_padding_mask``),
    then + ffn(ln2(x)): the decoder block of the original transformer
    (Vaswani et al., 2017) and of T5, here pre-norm. Equals
    ``nn.TransformerDecoderLayer(..., norm_first=True, activation="gelu",
    batch_first=True)`` with the same weights, a causal ``tgt_mask`` and
    ``memory_key_padding_mask``.
    """

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float = 0.0):
        super().__init__(d_model, n_heads, d_ff, dropout)  # ln1, attn (causal), ln2, ffn
        self.ln_cross = LayerNorm(d_model)
        self.cross_attn = CrossAttention(d_model, n_heads)

    def forward(self, x: Tensor, memory: Tensor, memory_padding_mask: Tensor | None = None) -> Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))  # (B, T, d_model)
        x = x + self.drop(self.cross_attn(self.ln_cross(x), memory, memory_padding_mask))
        x = x + self.drop(self.ffn(self.ln2(x)))
        return x
