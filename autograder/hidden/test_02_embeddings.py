"""Hidden checks for 02_embeddings."""

from __future__ import annotations

import torch

from autograder.grading import expect
from autograder.checks.test_02_embeddings import BOOK_EMBEDDING, BOOK_POSITIONS, encoding, lookup
from autograder.grading.registry import check
from tinyllm.embedding import embedding_lookup as reference_lookup
from tinyllm.positional import sinusoidal_positional_encoding as reference_pe


@check("02_embeddings", "embedding_lookup", points=1, book=BOOK_EMBEDDING + "#from-ids-to-vectors", hidden=True)
def test_embedding_lookup_hidden(sub):
    """embedding_lookup equals the reference for random shapes, including empty ones."""
    fn = lookup(sub)
    g = torch.Generator().manual_seed(test_embedding_lookup_hidden.autograder_check.seed)
    for shape in [(5,), (2, 3, 4), (1, 1), (0,)]:
        vocab, width = int(torch.randint(1, 30, (1,), generator=g)), int(torch.randint(1, 9, (1,), generator=g))
        weight = torch.randn(vocab, width, generator=g)
        ids = torch.randint(0, vocab, shape, generator=g)
        expect.close(fn(ids, weight), reference_lookup(ids, weight), "embedding_lookup(ids, weight)",
                     f"ids of shape {shape}, weight ({vocab}, {width})")


@check("02_embeddings", "sinusoidal_positional_encoding", points=1, book=BOOK_POSITIONS + "#the-sinusoidal-encoding", hidden=True)
def test_sinusoidal_positional_encoding_hidden(sub):
    """sinusoidal_positional_encoding equals the reference for random sizes and bases."""
    fn = encoding(sub)
    g = torch.Generator().manual_seed(test_sinusoidal_positional_encoding_hidden.autograder_check.seed)
    for _ in range(4):
        seq_len = int(torch.randint(1, 80, (1,), generator=g))
        d_model = 2 * int(torch.randint(1, 33, (1,), generator=g))
        base = float([10000.0, 500.0, 1e6][int(torch.randint(0, 3, (1,), generator=g))])
        expect.close(fn(seq_len, d_model, base=base), reference_pe(seq_len, d_model, base=base),
                     f"sinusoidal_positional_encoding({seq_len}, {d_model}, base={base:g})", atol=1e-4)
