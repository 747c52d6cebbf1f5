"""TinyGPT: a decoder-only transformer small enough to train on a laptop CPU (chapter 8)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from tinyllm.embedding import Embedding
from tinyllm.attention import KVCache, multi_head_attention_cached
from tinyllm.layers import LayerNorm, LlamaBlock, RMSNorm, TransformerBlock
from tinyllm.softmax import cross_entropy


ARCHITECTURES = ("gpt2", "llama")


@dataclass
class GPTConfig:
    vocab_size: int = 400  # 256 bytes + 144 BPE merges: short sequences, small tables
    context_length: int = 64  # the longest seq_len the model sees (learned positions)
    d_model: int = 64  # width of every token's vector
    n_layers: int = 2  # transformer blocks
    n_heads: int = 4  # d_k = d_model / n_heads = 16 features per head
    d_ff: int = 256  # feed-forward width, the usual 4 * d_model
    dropout: float = 0.05  # light: the corpus is small, the model smaller
    # Part II. "gpt2": TinyGPT (learned positions, LayerNorm, GELU, multi-head attention);
    # "llama": TinyLlama (RoPE, RMSNorm, SwiGLU, grouped-query attention), see make_model.
    arch: str = "gpt2"
    n_kv_heads: int | None = None  # llama: key/value heads shared by the query heads (None: n_heads)
    # llama: pair i turns by rope_base^(-2i/d_k) per position; the slowest pair (i = d_k/2 - 1) turns
    # once in 2 pi * rope_base^((d_k - 2)/d_k) positions: about 19,900 for d_k = 16.
    rope_base: float = 10000.0
    # False: attention-only blocks, each feed-forward branch switched off by make_model (the
    # models of tinyllm.induction); the blocks then add only attention to the residual stream.
    feed_forward: bool = True

    def __post_init__(self) -> None:
        problems = []
        if self.vocab_size < 256:
            problems.append(f"vocab_size must be at least 256 (byte-level), got {self.vocab_size}")
        if self.context_length < 1:
            problems.append(f"context_length must be at least 1, got {self.context_length}")
        for name in ("d_model", "n_layers", "n_heads", "d_ff"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.n_heads >= 1 and self.d_model % self.n_heads != 0:
            problems.append(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.arch not in ARCHITECTURES:
            problems.append(f"arch must be one of {', '.join(ARCHITECTURES)}, got {self.arch!r}")
        if self.arch == "gpt2" and self.n_kv_heads not in (None, self.n_heads):
            problems.append("n_kv_heads is for arch='llama' (TinyGPT's attention has n_heads key/value heads)")
        if self.n_kv_heads is not None and (self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads != 0):
            problems.append(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({self.n_kv_heads})")
        if self.arch == "llama" and self.n_heads >= 1 and (self.d_model // self.n_heads) % 2 != 0:
            problems.append(f"RoPE rotates feature pairs: d_model / n_heads must be even, got "
                            f"{self.d_model // self.n_heads}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def kv_heads(self) -> int:
        """The number of key/value heads (n_heads unless grouped-query attention shares them)."""
        return self.n_heads if self.n_kv_heads is None else self.n_kv_heads


class TinyGPT(nn.Module):
    """Token + position embeddings, a stack of pre-norm blocks, a final norm, a tied output layer."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.tok_emb = Embedding(config.vocab_size, config.d_model)
        self.pos_emb = Embedding(config.context_length, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(config.d_model, config.n_heads, config.d_ff, config.dropout)
            for _ in range(config.n_layers)
        )
        self.ln_f = LayerNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        # Weight tying (Press & Wolf, 2017): reading a token in and scoring it out
        # share one table, which saves vocab_size * d_model parameters.
        self.lm_head.weight = self.tok_emb.weight
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Small normal weights as in GPT-2: activations start near unit scale. (GPT-2 also scales
        # its residual layers by 1/sqrt(2 n_layers); the book's model does not, see chapter 8.)
        if isinstance(module, (nn.Linear, Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def num_parameters(self) -> int:
        """Distinct parameters (the tied table counts once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        B, T = idx.shape  # batch, seq_len
        if T > self.config.context_length:
            raise ValueError(
                f"sequence of length {T} exceeds context_length {self.config.context_length}"
            )
        positions = torch.arange(T, device=idx.device)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(positions))  # (B, T, d_model)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = cross_entropy(logits.view(B * T, -1), targets.reshape(B * T))
        return logits, loss


class TinyLlama(nn.Module):
    """The modern decoder (LLaMA-style) at TinyGPT's sizes: RoPE inside attention, so no position table.

    Token embeddings, a stack of :class:`LlamaBlock` (RMSNorm, grouped-query
    attention with RoPE, SwiGLU), a final RMSNorm, a tied output layer. With
    ``caches`` (one :class:`KVCache` per block) idx
    continues the tokens already cached: generation feeds one new token per
    call instead of the whole sequence (chapter "Fast generation").
    """

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.tok_emb = Embedding(config.vocab_size, config.d_model)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            LlamaBlock(config.d_model, config.n_heads, config.kv_heads, config.d_ff, config.dropout,
                       config.rope_base)
            for _ in range(config.n_layers)
        )
        self.norm_f = RMSNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied, as in TinyGPT
        self.apply(TinyGPT._init_weights)

    def num_parameters(self) -> int:
        """Distinct parameters (the tied table counts once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: Tensor, targets: Tensor | None = None,
                caches: list[KVCache] | None = None) -> tuple[Tensor, Tensor | None]:
        B, T = idx.shape  # batch, seq_len
        start = 0 if caches is None else caches[0].length  # tokens already cached
        if start + T > self.config.context_length:
            raise ValueError(
                f"sequence of length {start + T} exceeds context_length {self.config.context_length}"
            )
        x = self.drop(self.tok_emb(idx))  # (B, T, d_model): no position added; RoPE is in attention
        for i, block in enumerate(self.blocks):
            x = block(x, cache=None if caches is None else caches[i])
        logits = self.lm_head(self.norm_f(x))  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = cross_entropy(logits.view(B * T, -1), targets.reshape(B * T))
        return logits, loss


class TinyGPTWithCache(nn.Module):
    """A TinyGPT read with one :class:`KVCache` per block: ``forward(idx, targets=None, caches=None)`` as TinyLlama's.

    Chapter 8's TinyGPT takes the whole sequence on every call. This wrapper
    shares its modules (the weights are not copied) and runs the same layers,
    with two changes when ``caches`` is given: positions continue from
    ``caches[0].length`` in the position table, and each block's attention
    appends the new keys and values to its cache and reads all of them
    (:func:`~tinyllm.attention.multi_head_attention_cached`). The learned
    position table still ends at context_length.
    """

    def __init__(self, model: TinyGPT):
        super().__init__()
        self.model = model
        self.config = model.config
        self.train(model.training)  # a new module is in training mode: take the model's instead

    def num_parameters(self) -> int:
        return self.model.num_parameters()

    def forward(self, idx: Tensor, targets: Tensor | None = None,
                caches: list[KVCache] | None = None) -> tuple[Tensor, Tensor | None]:
        if caches is None:
            return self.model(idx, targets)
        gpt = self.model
        B, T = idx.shape  # batch, new tokens
        start = caches[0].length  # tokens already cached
        if start + T > self.config.context_length:
            raise ValueError(
                f"sequence of length {start + T} exceeds context_length {self.config.context_length}"
            )
        positions = torch.arange(start, start + T, device=idx.device)
        x = gpt.drop(gpt.tok_emb(idx) + gpt.pos_emb(positions))  # (B, T, d_model)
        for block, cache in zip(gpt.blocks, caches):  # TransformerBlock.forward, attention reading the cache
            x = x + block.drop(multi_head_attention_cached(block.attn, block.ln1(x), cache))
            x = x + block.drop(block.ffn(block.ln2(x)))
        logits = gpt.lm_head(gpt.ln_f(x))  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            loss = cross_entropy(logits.view(B * T, -1), targets.reshape(B * T))
        return logits, loss


def dropout_rates(model: nn.Module) -> dict[str, float]:
    """The probability of every ``nn.Dropout`` in ``model``, by name (for the exercise's checks)."""
    return {name: float(module.p) for name, module in model.named_modules() if isinstance(module, nn.Dropout)}


def with_kv_cache(model: nn.Module) -> nn.Module:
    """A model whose forward takes ``caches``: a TinyGPT wrapped in :class:`TinyGPTWithCache`, any other as it is."""
    return TinyGPTWithCache(model) if isinstance(model, TinyGPT) else model


class NoFeedForward(nn.Module):
    """A block's feed-forward branch switched off: it adds nothing to the residual stream."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)


def make_model(config: GPTConfig) -> TinyGPT | TinyLlama:
    """The model config.arch names: TinyGPT for "gpt2", TinyLlama for "llama".

    With ``config.feed_forward`` False, the TinyGPT is attention-only: each
    block's ``ffn`` becomes :class:`NoFeedForward` and its ``ln2`` an identity,
    so ``x + attn(ln1(x))`` is all a block computes. Everything else (the
    embeddings, the causal attention, the final norm, the tied output layer,
    the initialisation of what remains) is TinyGPT's.
    """
    model = TinyLlama(config) if config.arch == "llama" else TinyGPT(config)
    if not config.feed_forward:
        for block in model.blocks:
            if config.arch == "llama":
                block.ffn_norm, block.ffn = nn.Identity(), NoFeedForward()
            else:
                block.ln2, block.ffn = nn.Identity(), NoFeedForward()
    return model


def modern_counterpart(config: GPTConfig, n_kv_heads: int) -> GPTConfig:
    """The arch="llama" config with config's sizes and the parameter count nearest its model's.

    Only the SwiGLU width changes (a multiple of 8, the closest match): the
    modern model drops the position table and the biases and, with fewer
    key/value heads, shrinks two projections, so it can afford a little more
    width. The book compares the two models at this equal size.
    """
    from dataclasses import replace

    target = make_model(config).num_parameters()
    candidates = [replace(config, arch="llama", n_kv_heads=n_kv_heads, d_ff=width) for width in range(8, 16 * config.d_model, 8)]
    return min(candidates, key=lambda c: abs(make_model(c).num_parameters() - target))
