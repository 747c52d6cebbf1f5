"""TinyGPT: a decoder-only transformer small enough to train on a laptop CPU (chapter 8)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from tinyllm.embedding import Embedding
from tinyllm.layers import LayerNorm, TransformerBlock
from tinyllm.softmax import cross_entropy


@dataclass
class GPTConfig:
    vocab_size: int = 400  # 256 bytes + 144 BPE merges: short sequences, small tables
    context_length: int = 64  # the longest seq_len the model sees (learned positions)
    d_model: int = 64  # width of every token's vector
    n_layers: int = 2  # transformer blocks
    n_heads: int = 4  # d_k = d_model / n_heads = 16 features per head
    d_ff: int = 256  # feed-forward width, the usual 4 * d_model
    dropout: float = 0.05  # light: the corpus is small, the model smaller

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
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict:
        return asdict(self)


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
        # Small normal weights as in GPT-2: activations start near unit scale.
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
