"""The book's library equals PyTorch's own components on random inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from tinyllm.attention import MultiHeadAttention, scaled_dot_product_attention
from tinyllm.embedding import embedding_lookup
from tinyllm.layers import FeedForward, TransformerBlock, layer_norm
from tinyllm.model import GPTConfig, TinyGPT
from tinyllm.positional import sinusoidal_positional_encoding
from tinyllm.sampling import apply_repetition_penalty, generate, sample_next_token, top_k_filter, top_p_filter
from tinyllm.softmax import cross_entropy, log_softmax, logsumexp, perplexity, softmax

shapes = st.lists(st.integers(1, 6), min_size=1, max_size=4)
seeds = st.integers(0, 2**31 - 1)


def randn(shape, seed, scale=1.0, dtype=torch.float32):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale


@settings(max_examples=60, deadline=None)
@given(shape=shapes, seed=seeds, scale=st.sampled_from([0.1, 1.0, 30.0, 1000.0]),
       temperature=st.sampled_from([0.3, 1.0, 2.5]))
def test_softmax_matches_torch(shape, seed, scale, temperature):
    x = randn(shape, seed, scale, torch.float64)  # float32 rounding differs at scale 1000
    for dim in range(-len(shape), len(shape)):
        torch.testing.assert_close(softmax(x, dim=dim, temperature=temperature), F.softmax(x / temperature, dim=dim))
        torch.testing.assert_close(log_softmax(x, dim=dim), F.log_softmax(x, dim=dim))
        torch.testing.assert_close(logsumexp(x, dim=dim), torch.logsumexp(x, dim=dim, keepdim=True))


def test_softmax_survives_huge_logits_and_rejects_bad_temperature():
    x = torch.tensor([1000.0, 1001.0, -1000.0])
    assert torch.isfinite(softmax(x)).all()
    torch.testing.assert_close(softmax(x), F.softmax(x, dim=0))
    with pytest.raises(ValueError, match="temperature"):
        softmax(x, temperature=0)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 20), vocab=st.integers(2, 50), seed=seeds, scale=st.sampled_from([1.0, 50.0]))
def test_cross_entropy_and_perplexity_match_torch(n, vocab, seed, scale):
    logits = randn((n, vocab), seed, scale, torch.float64)
    targets = torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(cross_entropy(logits, targets), F.cross_entropy(logits, targets))
    torch.testing.assert_close(perplexity(logits, targets), torch.exp(F.cross_entropy(logits, targets)))


def test_uniform_logits_have_perplexity_vocab_size():
    assert perplexity(torch.zeros(7, 13), torch.arange(7) % 13).item() == pytest.approx(13)


@settings(max_examples=40, deadline=None)
@given(vocab=st.integers(1, 30), d_model=st.integers(1, 8), shape=shapes, seed=seeds)
def test_embedding_lookup_matches_f_embedding_and_one_hot(vocab, d_model, shape, seed):
    weight = randn((vocab, d_model), seed)
    ids = torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(embedding_lookup(ids, weight), F.embedding(ids, weight))
    torch.testing.assert_close(embedding_lookup(ids, weight), F.one_hot(ids, vocab).float() @ weight)


@pytest.mark.parametrize("bad", [-1, 5])
def test_embedding_lookup_rejects_out_of_range_ids(bad):
    with pytest.raises(IndexError, match=str(bad)):
        embedding_lookup(torch.tensor([0, bad]), torch.zeros(5, 3))


def test_sinusoidal_encoding_matches_the_formula():
    pe = sinusoidal_positional_encoding(50, 16)
    for pos in (0, 1, 7, 49):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)
    with pytest.raises(ValueError, match="even"):
        sinusoidal_positional_encoding(4, 7)


def test_sinusoidal_angles_are_computed_in_float64():
    """At position 2000 with d_model = 512 a float32 angle is already off by about 1e-4."""
    pe = sinusoidal_positional_encoding(2001, 512)
    assert pe.dtype == torch.get_default_dtype()
    angle = torch.arange(2001, dtype=torch.float64)[:, None] / 10000.0 ** (
        torch.arange(0, 512, 2, dtype=torch.float64) / 512)
    assert (pe[:, 0::2].double() - angle.sin()).abs().max() < 1e-6
    assert (pe[:, 1::2].double() - angle.cos()).abs().max() < 1e-6


@settings(max_examples=40, deadline=None)
@given(batch=st.lists(st.integers(1, 3), max_size=2), t_q=st.integers(1, 9), t_k=st.integers(1, 9),
       d=st.integers(1, 12), causal=st.booleans(), seed=seeds)
def test_attention_matches_torch_sdpa(batch, t_q, t_k, d, causal, seed):
    if causal:
        t_k = t_q  # PyTorch's is_causal aligns to the top left; use square masks
    q, k, v = randn(batch + [t_q, d], seed), randn(batch + [t_k, d], seed + 1), randn(batch + [t_k, d], seed + 2)
    out, weights = scaled_dot_product_attention(q, k, v, causal=causal)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=causal), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(weights.sum(-1), torch.ones(batch + [t_q]))
    if causal:
        assert (weights.triu(1) == 0).all()


def copy_into_torch_mha(ours: MultiHeadAttention) -> nn.MultiheadAttention:
    theirs = nn.MultiheadAttention(ours.d_model, ours.n_heads, batch_first=True)
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        theirs.out_proj.weight.copy_(ours.out_proj.weight)
        theirs.out_proj.bias.copy_(ours.out_proj.bias)
    return theirs


@pytest.mark.parametrize("d_model,n_heads,T", [(8, 1, 5), (16, 4, 7), (12, 3, 1)])
@pytest.mark.parametrize("causal", [True, False])
def test_multi_head_attention_matches_nn_multiheadattention(d_model, n_heads, T, causal):
    torch.manual_seed(d_model * 10 + T)
    ours = MultiHeadAttention(d_model, n_heads, causal=causal)
    theirs = copy_into_torch_mha(ours)
    x = torch.randn(2, T, d_model)
    mask = torch.ones(T, T, dtype=torch.bool).triu(1) if causal else None
    expected, _ = theirs(x, x, x, attn_mask=mask, need_weights=False)
    torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-4)


def test_multi_head_attention_rejects_indivisible_heads():
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=seeds, scale=st.sampled_from([1e-3, 1.0, 100.0]))
def test_layer_norm_matches_f_layer_norm(shape, seed, scale):
    x = randn(shape, seed, scale)
    d = shape[-1]
    weight, bias = randn((d,), seed + 1), randn((d,), seed + 2)
    torch.testing.assert_close(layer_norm(x, weight, bias), F.layer_norm(x, (d,), weight, bias), atol=1e-5, rtol=1e-4)


def test_transformer_block_matches_nn_transformer_encoder_layer():
    torch.manual_seed(0)
    d_model, n_heads, d_ff, T = 16, 4, 32, 6
    ours = TransformerBlock(d_model, n_heads, d_ff).eval()
    theirs = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout=0.0, activation="gelu",
                                        batch_first=True, norm_first=True).eval()
    with torch.no_grad():
        theirs.self_attn.load_state_dict(copy_into_torch_mha(ours.attn).state_dict())
        theirs.linear1.load_state_dict(ours.ffn.fc1.state_dict())
        theirs.linear2.load_state_dict(ours.ffn.fc2.state_dict())
        theirs.norm1.load_state_dict(ours.ln1.state_dict())
        theirs.norm2.load_state_dict(ours.ln2.state_dict())
    x = torch.randn(3, T, d_model)
    mask = nn.Transformer.generate_square_subsequent_mask(T)
    torch.testing.assert_close(ours(x), theirs(x, src_mask=mask, is_causal=True), atol=1e-5, rtol=1e-4)


def test_feed_forward_is_linear_gelu_linear():
    ffn = FeedForward(8, 32)
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(ffn(x), ffn.fc2(F.gelu(ffn.fc1(x))))


def test_tiny_gpt_shapes_loss_and_parameter_count():
    config = GPTConfig()
    model = TinyGPT(config)
    V, d, L, F_ = config.vocab_size, config.d_model, config.n_layers, config.d_ff
    per_block = 4 * (d * d + d) + (d * F_ + F_ + F_ * d + d) + 4 * d
    assert model.num_parameters() == V * d + config.context_length * d + L * per_block + 2 * d
    idx = torch.randint(0, V, (2, 10))
    logits, loss = model(idx, idx)
    assert logits.shape == (2, 10, V)
    torch.testing.assert_close(loss, F.cross_entropy(logits.view(-1, V), idx.view(-1)))
    assert model(idx)[1] is None
    with pytest.raises(ValueError, match="context_length"):
        model(torch.zeros(1, config.context_length + 1, dtype=torch.long))


@pytest.mark.parametrize("field,value,message", [
    ("vocab_size", 100, "at least 256"), ("context_length", 0, "at least 1"), ("n_heads", 3, "divisible"),
])
def test_gpt_config_rejects_bad_sizes(field, value, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**{field: value})


def test_top_k_keeps_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 2.0]])
    assert top_k_filter(logits, 2).isfinite().tolist() == [[False, True, True, False]]
    assert torch.equal(top_k_filter(logits, 10), logits)


def test_top_p_keeps_the_token_that_crosses_p():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    kept = top_p_filter(probs.log(), 0.7).isfinite().tolist()
    assert kept == [True, True, False, False]  # 0.5 < 0.7, so the 0.3 token that crosses it stays
    assert top_p_filter(probs.log(), 0.5).isfinite().tolist() == [True, False, False, False]
    assert top_p_filter(probs.log(), 1.0).isfinite().all()


def test_top_p_follows_the_book_rule_including_p_equal_to_one():
    """Keep token j (in order of probability) iff the mass before it is < p: at p = 1, every token.

    A float32 running sum reaches 1.0 before the tail of a wide distribution, so
    cumsum - probs >= 1 would drop tail tokens whose true probability is tiny but not zero.
    """
    g = torch.Generator().manual_seed(0)
    logits = 4 * torch.randn(2000, 400, generator=g)
    assert top_p_filter(logits, 1.0).isfinite().all()
    for p in (0.1, 0.5, 0.9, 0.99):
        probs = torch.softmax(logits.double(), dim=-1)
        sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)  # ties: lower id first
        before = sorted_probs.cumsum(-1) - sorted_probs  # float64: exact enough for this check
        expected = torch.zeros_like(before, dtype=torch.bool).scatter(-1, order, before < p)
        kept = top_p_filter(logits, p).isfinite()
        margin = (before - p).abs().gather(-1, order.argsort(-1))  # distance of each token from the cut
        assert torch.equal(kept[margin > 1e-5], expected[margin > 1e-5])


def test_sampling_is_seeded_greedy_and_respects_filters():
    logits = torch.tensor([[0.0, 3.0, 1.0, -1.0]])
    assert sample_next_token(logits, temperature=0).tolist() == [1]
    draws = [sample_next_token(logits, top_k=2, generator=torch.Generator().manual_seed(s)).item() for s in range(50)]
    assert set(draws) <= {1, 2}
    a = sample_next_token(logits.repeat(20, 1), generator=torch.Generator().manual_seed(3))
    b = sample_next_token(logits.repeat(20, 1), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_repetition_penalty_lowers_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    out = apply_repetition_penalty(logits, torch.tensor([[0, 1]]), 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5]]


def test_generate_extends_by_max_new_tokens_and_crops_context():
    torch.manual_seed(0)
    model = TinyGPT(GPTConfig(context_length=8, d_model=16, n_heads=2, d_ff=32, n_layers=1))
    out = generate(model, torch.zeros(2, 5, dtype=torch.long), 20, temperature=0)
    assert out.shape == (2, 25) and model.training
