"""Attention: scaled dot-product and multi-head (chapter 5); grouped-query with a KV cache (Part II)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from tinyllm.positional import apply_rope
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


# ----------------------------------------------------------------- Part II: the modern attention


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, n_kv_heads, T, d_k) -> (B, n_kv_heads * n_rep, T, d_k), each head repeated n_rep times in place.

    Query head h then reads key/value head h // n_rep. Same as
    ``torch.repeat_interleave(x, n_rep, dim=1)``, written as a broadcast view
    and one copy.
    """
    if n_rep == 1:
        return x
    B, n_kv, T, d_k = x.shape
    return x[:, :, None, :, :].expand(B, n_kv, n_rep, T, d_k).reshape(B, n_kv * n_rep, T, d_k)


def causal_attention(q: Tensor, k: Tensor, v: Tensor, start: int = 0) -> Tensor:
    """Causal attention of T_q queries at absolute positions start .. start + T_q - 1 over keys 0 .. T_k - 1.

    The query at absolute position p sees the keys 0..p. With start = 0 and
    T_q = T_k this is ``scaled_dot_product_attention(q, k, v, causal=True)``;
    with a KV cache the keys of earlier tokens come first, so start is the
    number of cached tokens. Equals ``F.scaled_dot_product_attention(q, k, v,
    attn_mask=~mask)`` with the mask built here.
    """
    t_query, t_key = q.shape[-2], k.shape[-2]
    query_position = start + torch.arange(t_query, device=q.device)[:, None]  # (T_q, 1)
    key_position = torch.arange(t_key, device=q.device)[None, :]  # (1, T_k)
    mask = key_position > query_position  # (T_q, T_k): True where the key is in the query's future
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (..., T_q, T_k)
    return softmax(scores.masked_fill(mask, float("-inf")), dim=-1) @ v


class KVCache:
    """The keys and values one attention layer has computed so far, (B, n_kv_heads, T, d_k) each.

    ``update`` appends the new positions along the time axis (dim -2) and
    returns everything stored; ``length`` is the number of positions stored,
    which is also the absolute position of the next token. Same as
    ``torch.cat((cached, new), dim=-2)``, kept so the next step need not
    recompute it.
    """

    def __init__(self) -> None:
        self.k: Tensor | None = None
        self.v: Tensor | None = None

    @property
    def length(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.k is None:
            self.k, self.v = k, v
        else:
            self.k = torch.cat((self.k, k), dim=-2)  # (B, n_kv_heads, length + T, d_k)
            self.v = torch.cat((self.v, v), dim=-2)
        return self.k, self.v


def multi_head_attention_cached(attn: MultiHeadAttention, x: Tensor, cache: KVCache) -> Tensor:
    """``attn(x)`` for x (B, T, d_model) continuing the tokens in ``cache``: chapter 5's attention with a KV cache.

    The same projections and head split as :class:`MultiHeadAttention`; the
    new keys and values are appended to the cache, and the new queries, at
    positions ``cache.length`` onwards, attend over everything it holds. Used
    by :class:`tinyllm.model.TinyGPTWithCache`, so that chapter 5's class
    stays as chapter 5 teaches it.
    """
    B, T, C = x.shape
    start = cache.length  # absolute position of x's first token
    q = attn.split_heads(attn.q_proj(x))  # (B, n_heads, T, d_k)
    k, v = cache.update(attn.split_heads(attn.k_proj(x)), attn.split_heads(attn.v_proj(x)))  # (B, n_heads, start + T, d_k)
    heads = causal_attention(q, k, v, start=start)
    return attn.out_proj(heads.transpose(1, 2).contiguous().view(B, T, C))


class GroupedQueryAttention(nn.Module):
    """Causal attention with n_heads query heads sharing n_kv_heads key/value heads, RoPE on q and k.

    Ainslie et al. (2023): n_kv_heads = n_heads is multi-head attention,
    n_kv_heads = 1 is multi-query attention (Shazeer, 2019); in between, query
    head h reads key/value head h // (n_heads // n_kv_heads). Fewer key/value
    heads mean a smaller KV cache. No bias, as in LLaMA. With RoPE rotating
    queries and keys, no position is added to the token vectors. Equals
    ``F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)``
    on the rotated projections.
    """

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, rope_base: float = 10000.0):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if n_kv_heads < 1 or n_heads % n_kv_heads != 0:
            raise ValueError(f"n_heads ({n_heads}) must be a multiple of n_kv_heads ({n_kv_heads})")
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.d_k = d_model // n_heads
        self.rope_base = rope_base
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, n_kv_heads * self.d_k, bias=False)
        self.v_proj = nn.Linear(d_model, n_kv_heads * self.d_k, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)

    def forward(self, x: Tensor, cache: KVCache | None = None) -> Tensor:
        """x (B, T, d_model) -> (B, T, d_model); with a cache, x continues the cached tokens."""
        B, T, C = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.d_k).transpose(1, 2)  # (B, n_heads, T, d_k)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.d_k).transpose(1, 2)  # (B, n_kv_heads, T, d_k)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.d_k).transpose(1, 2)
        start = 0 if cache is None else cache.length  # absolute position of x's first token
        q = apply_rope(q, self.rope_base, offset=start)
        k = apply_rope(k, self.rope_base, offset=start)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, n_kv_heads, start + T, d_k): the earlier tokens' too
        n_rep = self.n_heads // self.n_kv_heads
        heads = causal_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), start=start)
        return self.out_proj(heads.transpose(1, 2).contiguous().view(B, T, C))


# ----------------------------------------------------------------- Part III: encoders and cross-attention


def bidirectional_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
    """Attention in which every query sees every key that is not padding: an encoder's (chapter "Encoders").

    q (B, ..., T_q, d_k), k (B, ..., T_k, d_k), v (B, ..., T_k, d_v); the
    leading ``...`` are the heads. ``key_padding_mask`` (B, T_k) is True where
    key j of sequence b is padding: its score becomes -inf before the softmax,
    so it gets weight exactly 0 from every query, and whatever a padding
    position holds cannot change the output. Without a mask this is
    ``scaled_dot_product_attention(q, k, v)[0]``, chapter 5's attention with
    the causal mask off; with one it equals ``F.scaled_dot_product_attention(q,
    k, v, attn_mask=~key_padding_mask)`` with the mask broadcast over the heads
    and queries. A row with every key padded would have no weight to give:
    never pass one.
    """
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, ..., T_q, T_k)
    if key_padding_mask is not None:
        B, T_k = key_padding_mask.shape
        hidden = key_padding_mask.view(B, *([1] * (scores.dim() - 2)), T_k)  # (B, 1, ..., 1, T_k): every query
        scores = scores.masked_fill(hidden, float("-inf"))
    return softmax(scores, dim=-1) @ v  # (B, ..., T_q, d_v)


class CrossAttention(MultiHeadAttention):
    """Multi-head attention whose queries come from ``x`` and whose keys and values come from ``memory``.

    In an encoder-decoder the decoder's tokens ``x`` (B, T, d_model) ask and
    the encoder's output ``memory`` (B, S, d_model) answers; nothing is causal,
    since the whole source is known before the first target token is written,
    and ``memory_padding_mask`` (B, S) hides the source's padding. The same
    projections as chapter 5's :class:`MultiHeadAttention` (``q_proj``,
    ``k_proj``, ``v_proj``, ``out_proj``, bias on), so with ``memory = x`` it is
    that layer without its causal mask: an encoder's self-attention. Equals
    ``nn.MultiheadAttention(x, memory, memory, key_padding_mask=...)`` with
    the same weights.
    """

    def __init__(self, d_model: int, n_heads: int):
        super().__init__(d_model, n_heads, causal=False)

    def forward(self, x: Tensor, memory: Tensor, memory_padding_mask: Tensor | None = None) -> Tensor:
        B, T, C = x.shape
        q = self.split_heads(self.q_proj(x))  # (B, n_heads, T, d_k): the decoder's questions
        k = self.split_heads(self.k_proj(memory))  # (B, n_heads, S, d_k): the encoder's keys...
        v = self.split_heads(self.v_proj(memory))  # ... and values
        heads = bidirectional_attention(q, k, v, memory_padding_mask)  # (B, n_heads, T, d_k)
        return self.out_proj(heads.transpose(1, 2).contiguous().view(B, T, C))
