"""Helpers added for chapters 2 and 3: token display, the neural bigram, cosine similarity, PCA."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from tinyllm.bpe import BPETokenizer, printable_token
from tinyllm.embedding import NeuralBigram, cosine_similarity_matrix, embedding_lookup, pca_project
from tinyllm.ngram import NGramLM
from tinyllm.softmax import log_softmax


# ---------------------------------------------------------------- printable_token

@pytest.mark.parametrize(
    ("token", "shown"),
    [
        (b"the", "the"),
        (b" the", "\u2423the"),
        (b".\n\nQ: ", ".\u21b5\u21b5Q:\u2423"),
        ("é".encode(), "é"),
        ("é".encode()[:1], "\\xc3"),  # half a character: an escape, not U+FFFD
        ("日".encode()[1:], "\\x97\\xa5"),
        (b"\t\x00\x7f", "\\x09\\x00\\x7f"),
        ("😀".encode(), "😀"),
    ],
)
def test_printable_token(token, shown):
    assert printable_token(token) == shown


def test_printable_token_never_hides_a_byte():
    # Every byte on its own is visible (never empty, never a bare space or U+FFFD).
    for b in range(256):
        shown = printable_token(bytes([b]))
        assert shown and not shown.isspace() and "\ufffd" not in shown, (b, shown)


def test_printable_token_shows_distinct_tokens_differently():
    tokenizer = BPETokenizer.train("the cat sat on the mat.\nthe end, then the\tcat\n", 300)
    shown = [printable_token(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)]
    assert len(set(shown)) == len(shown)


# ---------------------------------------------------------------- NeuralBigram

def test_neural_bigram_shapes_names_and_parameter_count():
    torch.manual_seed(0)
    model = NeuralBigram(vocab_size=11, d_model=4)
    assert set(model.state_dict()) == {"tok_emb.weight", "lm_head.weight", "lm_head.bias"}
    assert sum(p.numel() for p in model.parameters()) == 11 * 4 + 4 * 11 + 11
    assert model.tok_emb.weight.std().item() < 0.05  # small start, unlike Embedding's N(0, 1)
    idx = torch.randint(0, 11, (3, 5))
    logits, loss = model(idx)
    assert logits.shape == (3, 5, 11) and loss is None


def test_neural_bigram_logits_and_loss_are_the_formula():
    torch.manual_seed(1)
    model = NeuralBigram(vocab_size=9, d_model=3)
    idx, targets = torch.randint(0, 9, (2, 7)), torch.randint(0, 9, (2, 7))
    logits, loss = model(idx, targets)
    expected = embedding_lookup(idx, model.tok_emb.weight) @ model.lm_head.weight.T + model.lm_head.bias
    torch.testing.assert_close(logits, expected)
    torch.testing.assert_close(loss, F.cross_entropy(expected.reshape(-1, 9), targets.reshape(-1)))


def test_neural_bigram_loss_from_counts_equals_loss_over_positions():
    """The identity chapter 3 trains with: a bigram model's loss depends on the data only through counts."""
    torch.manual_seed(2)
    vocab_size = 13
    ids = torch.randint(0, vocab_size, (500,))
    model = NeuralBigram(vocab_size, 5)
    _, loss = model(ids[:-1], ids[1:])
    counts = NGramLM(order=2, vocab_size=vocab_size).fit(ids).counts.float()
    logits, _ = model(torch.arange(vocab_size))  # (V, V): row a scores the token after a
    from_counts = -(counts * log_softmax(logits)).sum() / counts.sum()
    torch.testing.assert_close(from_counts, loss)


def test_neural_bigram_learns_a_deterministic_sequence():
    torch.manual_seed(3)
    ids = torch.arange(40) % 5  # 0 1 2 3 4 0 1 ...: the next token is certain
    model = NeuralBigram(5, 4)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    for _ in range(200):
        _, loss = model(ids[:-1], ids[1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    assert torch.equal(model(torch.arange(5))[0].argmax(-1), (torch.arange(5) + 1) % 5)


# ---------------------------------------------------------------- cosine similarity

@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 12), d=st.integers(1, 8), seed=st.integers(0, 2**31 - 1))
def test_cosine_similarity_matrix_matches_torch(n, d, seed):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    expected = F.cosine_similarity(x[:, None, :], x[None, :, :], dim=-1)
    torch.testing.assert_close(cosine_similarity_matrix(x), expected)


def test_cosine_similarity_of_one_hots_scaling_and_zero_vectors():
    torch.testing.assert_close(cosine_similarity_matrix(torch.eye(6)), torch.eye(6))
    x = torch.tensor([[1.0, 2.0], [10.0, 20.0], [-1.0, -2.0], [0.0, 0.0]])
    sim = cosine_similarity_matrix(x)
    assert sim[0, 1].item() == pytest.approx(1.0) and sim[0, 2].item() == pytest.approx(-1.0)
    assert torch.isfinite(sim).all() and sim[3].abs().max().item() == 0.0


# ---------------------------------------------------------------- PCA

def test_pca_project_matches_svd_and_keeps_most_variance():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(60, 5, generator=g, dtype=torch.float64) * torch.tensor([5.0, 3.0, 1.0, 0.5, 0.1], dtype=torch.float64)
    coords, explained = pca_project(x, k=2)
    assert coords.shape == (60, 2) and explained.shape == (2,)
    centred = x - x.mean(0)
    total = centred.pow(2).sum()
    torch.testing.assert_close(coords.pow(2).sum(0) / total, explained)  # variance kept, per direction
    assert explained[0] >= explained[1] and explained.sum() < 1
    # Uncorrelated coordinates, and no unit direction keeps more variance than the first.
    assert abs((coords[:, 0] * coords[:, 1]).sum().item()) < 1e-8 * total.item()
    directions = torch.randn(200, 5, generator=g, dtype=torch.float64)
    directions = directions / directions.norm(dim=1, keepdim=True)
    assert (centred @ directions.T).pow(2).sum(0).max() <= coords[:, 0].pow(2).sum() + 1e-9
    # Same subspace as torch's own (randomised, here exact) PCA.
    _, _, v = torch.pca_lowrank(x, q=5)
    torch.testing.assert_close(coords[:, 0].abs(), (centred @ v[:, 0]).abs())


def test_pca_project_is_exact_for_rank_k_data_and_sign_is_fixed():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(30, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 6, generator=g, dtype=torch.float64)
    coords, explained = pca_project(x, k=2)
    assert explained.sum().item() == pytest.approx(1.0)
    coords_flipped, _ = pca_project(-x, k=2)  # the sign rule depends on the directions only
    torch.testing.assert_close(coords_flipped, -coords)
    with pytest.raises(ValueError, match="k must be"):
        pca_project(x, k=7)


def test_pca_directions_have_their_largest_entry_positive():
    for seed in range(20):
        x = torch.randn(30, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        coords, _ = pca_project(x, k=3)
        directions = torch.linalg.lstsq(x - x.mean(0), coords).solution  # (6, 3), exact: full rank
        peak = directions.gather(0, directions.abs().argmax(dim=0, keepdim=True))
        assert (peak > 0).all(), (seed, peak)


def test_pca_of_two_clusters_separates_them_on_the_first_axis():
    g = torch.Generator().manual_seed(6)
    a = torch.randn(20, 8, generator=g) * 0.1 + 3.0
    b = torch.randn(20, 8, generator=g) * 0.1 - 3.0
    coords, explained = pca_project(torch.cat([a, b]), k=2)
    first = coords[:, 0]
    assert (first[:20] * first[20:].mean() < 0).all() and explained[0] > 0.9
    assert math.isfinite(explained.sum().item())
