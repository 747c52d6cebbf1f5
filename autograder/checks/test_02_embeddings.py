"""Public checks for 02_embeddings: embedding_lookup, sinusoidal_positional_encoding."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from autograder.grading import expect
from autograder.sandbox.forbidden import GROUPS
from autograder.grading.registry import check

BOOK_EMBEDDING = "book/03_embeddings.html"
BOOK_POSITIONS = "book/06_positional_encoding.html"


def lookup(sub):
    return sub.function("embedding_lookup", ["token_ids", "weight"], forbid=GROUPS["embedding"])


def encoding(sub):
    return sub.function("sinusoidal_positional_encoding", ["seq_len", "d_model", "base"], forbid=GROUPS["positional"])


@check("02_embeddings", "embedding_lookup", points=1, book=BOOK_EMBEDDING + "#from-ids-to-vectors")
def test_embedding_lookup_public(sub):
    """embedding_lookup picks rows (= one-hot @ W) for ids of any shape."""
    embedding_lookup = lookup(sub)
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(10, 4, generator=g)
    ids = torch.tensor([[1, 0, 9], [3, 3, 2]])
    expect.close(embedding_lookup(ids, weight), F.embedding(ids, weight), "embedding_lookup(ids, weight)",
                 f"ids {ids.tolist()}, weight of shape (10, 4)", hint="Output shape is ids.shape + (d_model,).")
    single = torch.tensor([7])
    expect.close(embedding_lookup(single, weight), F.one_hot(single, 10).float() @ weight,
                 "embedding_lookup(tensor([7]), weight)", hint="Row 7 of the weight matrix.")


@check("02_embeddings", "embedding_lookup", points=1, book=BOOK_EMBEDDING + "#from-ids-to-vectors")
def test_embedding_lookup_errors_public(sub):
    """embedding_lookup raises IndexError for an id outside the vocabulary, -1 included (the error contract)."""
    embedding_lookup = lookup(sub)
    weight = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    for bad in (10, -1):
        expect.raises(lambda: embedding_lookup(torch.tensor([0, bad]), weight), IndexError,
                      f"embedding_lookup with id {bad} for a vocabulary of 10")


@check("02_embeddings", "sinusoidal_positional_encoding", points=1, book=BOOK_POSITIONS + "#the-sinusoidal-encoding")
def test_sinusoidal_positional_encoding_public(sub):
    """sinusoidal_positional_encoding follows Vaswani et al.: sin at even, cos at odd features."""
    pe_fn = encoding(sub)
    seq_len, d_model = 12, 8
    position = torch.arange(seq_len, dtype=torch.float64)[:, None]
    angle = position / 10000.0 ** (torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    expected = torch.zeros(seq_len, d_model, dtype=torch.float64)
    expected[:, 0::2], expected[:, 1::2] = torch.sin(angle), torch.cos(angle)
    expect.close(pe_fn(seq_len, d_model), expected.float(), "sinusoidal_positional_encoding(12, 8)",
                 hint="PE[pos, 2i] = sin(pos / 10000^(2i/d_model)), PE[pos, 2i+1] = cos(same angle).")
    expect.equal(str(pe_fn(3, 4).dtype), str(torch.get_default_dtype()), "sinusoidal_positional_encoding(3, 4).dtype",
                 hint="Without a dtype the table is in torch's default dtype (float32): convert the float64 angles back.")
    expect.close(pe_fn(0, 4), torch.zeros(0, 4), "sinusoidal_positional_encoding(0, 4)",
                 hint="No position: a (0, d_model) tensor.")


@check("02_embeddings", "sinusoidal_positional_encoding", points=1, book=BOOK_POSITIONS + "#the-sinusoidal-encoding")
def test_sinusoidal_positional_encoding_errors_public(sub):
    """sinusoidal_positional_encoding raises ValueError for an odd d_model (the error contract, checked apart)."""
    pe_fn = encoding(sub)
    expect.raises(lambda: pe_fn(4, 7), ValueError, "sinusoidal_positional_encoding(4, 7) (odd d_model)")
