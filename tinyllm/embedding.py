"""Token embeddings: a lookup table, which is a one-hot matrix product (chapter 3)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tinyllm.softmax import cross_entropy


def embedding_lookup(token_ids: Tensor, weight: Tensor) -> Tensor:
    """Row ``token_ids[...]`` of ``weight``: (...,) ids and (V, d_model) -> (..., d_model).

    Equal to one_hot(token_ids, V) @ weight, without building the one-hot matrix.
    Ids outside [0, V) raise IndexError (negative ids would otherwise silently
    count from the end).
    """
    if token_ids.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"token ids must be integers, got {token_ids.dtype}")
    vocab_size = weight.shape[0]
    if token_ids.numel() and (token_ids.min() < 0 or token_ids.max() >= vocab_size):
        bad = token_ids[(token_ids < 0) | (token_ids >= vocab_size)][0].item()
        raise IndexError(f"token id {bad} is out of range for a vocabulary of {vocab_size}")
    return weight[token_ids]


class Embedding(nn.Module):
    """A learnable (vocab_size, d_model) table read by :func:`embedding_lookup`."""

    def __init__(self, vocab_size: int, d_model: int):
        super().__init__()
        # N(0, 1) like nn.Embedding; the model rescales where it matters.
        self.weight = nn.Parameter(torch.randn(vocab_size, d_model))

    def forward(self, token_ids: Tensor) -> Tensor:
        return embedding_lookup(token_ids, self.weight)


class NeuralBigram(nn.Module):
    """The smallest neural language model: p(x_t | x_{t-1}) = softmax(lm_head(tok_emb(x_{t-1}))).

    The previous token's embedding is its only input, so training pushes two
    tokens' vectors together when they predict similar next tokens. Small and
    fast enough to train in seconds, which makes its embeddings the first ones
    the book can look at (chapter 3). Names follow TinyGPT: tok_emb, lm_head.
    """

    def __init__(self, vocab_size: int, d_model: int):
        super().__init__()
        self.tok_emb = Embedding(vocab_size, d_model)
        self.lm_head = nn.Linear(d_model, vocab_size)
        # Small start, as in TinyGPT: what the vectors show is then what training put there.
        nn.init.normal_(self.tok_emb.weight, mean=0.0, std=0.02)

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        logits = self.lm_head(self.tok_emb(idx))  # (..., d_model) -> (..., vocab_size)
        loss = None
        if targets is not None:
            loss = cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss


def cosine_similarity_matrix(x: Tensor, eps: float = 1e-8) -> Tensor:
    """(N, d) vectors -> (N, N) cosines, entry (i, j) = x_i . x_j / (|x_i| |x_j|).

    Cosine similarity ignores length and compares directions only: +1 for the
    same direction, 0 for orthogonal (as any two one-hot vectors are). A zero
    vector has cosine 0 with everything rather than a division by zero.
    """
    unit = x / x.norm(dim=-1, keepdim=True).clamp_min(eps)  # (N, d), rows of length 1
    return unit @ unit.T  # (N, N)


def pca_project(x: Tensor, k: int = 2) -> tuple[Tensor, Tensor]:
    """Coordinates of the rows of ``x`` (N, d) along their ``k`` principal directions.

    Returns ``(coords, explained)``: coords (N, k) and the fraction of the total
    variance each direction keeps, (k,). Computed exactly with an SVD of the
    centred rows; each direction's sign is fixed (its largest entry is
    positive) so a figure does not flip between library versions.
    """
    if not 1 <= k <= min(x.shape):
        raise ValueError(f"k must be between 1 and min(N, d) = {min(x.shape)}, got {k}")
    centred = x - x.mean(dim=0)  # (N, d)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)  # vh: (min(N, d), d)
    directions = vh[:k]  # (k, d), orthonormal rows
    peak = directions.gather(1, directions.abs().argmax(dim=1, keepdim=True))  # (k, 1)
    directions = directions * torch.sign(peak)
    explained = s[:k] ** 2 / (s**2).sum().clamp_min(torch.finfo(s.dtype).tiny)
    return centred @ directions.T, explained  # (N, k), (k,)
