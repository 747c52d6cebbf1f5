"""The induction chapter's data and scores (tinyllm.induction), and the attention-only model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tinyllm.induction import (RepeatBatch, copying_score, in_context_score, induction_targets, position_losses,
                               prefix_matching_score, repeated_sequences)
from tinyllm.model import GPTConfig, NoFeedForward, TinyGPT, make_model


@pytest.mark.parametrize("cycle", [False, True])
def test_the_repeat_copies_the_stretch_before_it(cycle):
    batch = repeated_sequences(50, 32, 16, 4, torch.Generator().manual_seed(0), cycle=cycle)
    assert batch.ids.shape == (50, 32) and batch.ids.min() >= 0 and batch.ids.max() < 16
    assert batch.period.min() >= 4 and batch.period.max() <= 16
    assert len(set(batch.period.tolist())) > 5  # the distance to the earlier copy varies
    for row, m in zip(batch.ids.tolist(), batch.period.tolist()):
        if cycle:
            assert all(row[t] == row[t - m] for t in range(m, 32))
        else:  # the second half of the last 2m tokens equals the first
            assert row[32 - m:] == row[32 - 2 * m: 32 - m]
    repeat, first = batch.repeat(), batch.first_copy()
    assert not (repeat & first).any()
    assert (first.sum(1) == batch.period).all()
    if not cycle:
        assert (repeat.sum(1) == batch.period - 1).all()


def test_the_generator_rejects_a_period_that_cannot_repeat():
    with pytest.raises(ValueError, match="min_period"):
        repeated_sequences(2, 10, 8, 6, torch.Generator())


def test_induction_targets_by_hand():
    ids = torch.tensor([[5, 7, 5, 9, 7]])
    target = induction_targets(ids)[0]
    assert target[2].nonzero().flatten().tolist() == [1]  # 5 occurred at 0, followed by position 1
    assert target[4].nonzero().flatten().tolist() == [2]  # 7 occurred at 1, followed by position 2
    assert not target[0].any() and not target[1].any() and not target[3].any()
    assert not target.triu(1).any()  # causal: never a key after the query


def perfect_induction_pattern(ids):
    """Each query whose token occurred before attends fully to the token after its latest occurrence."""
    B, T = ids.shape
    w = torch.zeros(B, 1, T, T)
    for b in range(B):
        for i in range(T):
            earlier = [j for j in range(i) if ids[b, j] == ids[b, i]]
            w[b, 0, i, earlier[-1] + 1 if earlier else i] = 1.0
    return w


def test_a_perfect_induction_head_scores_one_and_other_heads_score_low():
    batch = repeated_sequences(20, 32, 64, 4, torch.Generator().manual_seed(1))
    ids = batch.ids
    T = ids.shape[1]
    perfect = perfect_induction_pattern(ids)
    previous = torch.zeros(1, 1, T, T)
    previous[0, 0, torch.arange(1, T), torch.arange(T - 1)] = 1.0
    previous[0, 0, 0, 0] = 1.0
    uniform = torch.tril(torch.ones(T, T)) / torch.arange(1, T + 1)[:, None]
    weights = torch.cat([perfect, previous.expand(20, 1, T, T), uniform.expand(20, 1, T, T)], dim=1)
    scores = prefix_matching_score(weights, ids)
    assert scores[0].item() == pytest.approx(1.0)
    assert scores[1].item() < 0.1 and scores[2].item() < 0.2


def test_the_score_needs_a_repeated_token():
    with pytest.raises(ValueError, match="occurs twice"):
        prefix_matching_score(torch.ones(1, 1, 3, 3) / 3, torch.tensor([[1, 2, 3]]))


def test_position_losses_are_pytorchs_cross_entropy():
    g = torch.Generator().manual_seed(2)
    logits, targets = torch.randn(3, 5, 11, generator=g), torch.randint(11, (3, 5), generator=g)
    expected = F.cross_entropy(logits.reshape(15, 11), targets.reshape(15), reduction="none").view(3, 5)
    assert torch.allclose(position_losses(logits, targets), expected, atol=1e-6)


def test_in_context_score_is_late_minus_early():
    losses = torch.tensor([[4.0, 3.0, 2.0, 1.0], [2.0, 3.0, 0.0, 1.0]])  # column t scores token t + 1
    assert in_context_score(losses, early=1, late=4) == pytest.approx(1.0 - 3.0)


def test_the_attention_only_model_is_tinygpt_without_its_feed_forward_branches():
    config = GPTConfig(vocab_size=256, context_length=16, d_model=32, n_layers=2, n_heads=4, d_ff=8, dropout=0.0,
                       feed_forward=False)
    torch.manual_seed(0)
    model = make_model(config)
    assert isinstance(model, TinyGPT)
    assert all(isinstance(block.ffn, NoFeedForward) for block in model.blocks)
    assert not any("ffn" in name or "ln2" in name for name, _ in model.named_parameters())
    x = torch.randint(256, (2, 16))
    # By hand: embeddings, then x + attn(ln1(x)) per block, the final norm and the tied table.
    with torch.no_grad():
        h = model.tok_emb(x) + model.pos_emb(torch.arange(16))
        for block in model.blocks:
            h = h + block.attn(block.ln1(h))
        expected = model.lm_head(model.ln_f(h))
        assert torch.allclose(model(x)[0], expected, atol=1e-6)
        # Causal: changing a later token leaves the earlier logits as they were.
        y = x.clone()
        y[:, -1] = (y[:, -1] + 1) % 256
        assert torch.allclose(model(x)[0][:, :-1], model(y)[0][:, :-1], atol=1e-6)
    llama = make_model(GPTConfig(arch="llama", d_model=32, n_heads=4, n_layers=2, d_ff=8, feed_forward=False))
    assert all(isinstance(block.ffn, NoFeedForward) for block in llama.blocks)
    assert not any("ffn" in name for name, _ in llama.named_parameters())


def test_a_copying_head_scores_one():
    config = GPTConfig(vocab_size=256, context_length=8, d_model=32, n_layers=1, n_heads=2, d_ff=8, dropout=0.0,
                       feed_forward=False)
    torch.manual_seed(3)
    model = make_model(config)
    assert copying_score(model, 0, 0, 16) < 0.5  # a random head copies about 1 token in 16
    attn, d_k = model.blocks[0].attn, model.blocks[0].attn.d_k
    with torch.no_grad():  # head 0 writes back what it reads: value and output projections the identity
        model.blocks[0].ln1.weight.fill_(1.0)
        attn.v_proj.weight.zero_()
        attn.v_proj.bias.zero_()
        attn.out_proj.weight.zero_()
        for i in range(d_k):
            attn.v_proj.weight[i, i] = 1.0
            attn.out_proj.weight[i, i] = 1.0
        model.tok_emb.weight[:16] = 0.0
        model.tok_emb.weight[:16, :d_k] = torch.eye(16, d_k) * 3 - 1.0 / d_k  # distinct tokens in the head's features
    assert copying_score(model, 0, 0, 8) == 1.0


def test_the_chapters_model_has_an_output_layer_of_its_own_unless_tied():
    from dataclasses import replace

    from tinyllm.induction import InductionTask, attention_only_model

    task = replace(InductionTask(), d_model=16, n_heads=2, length=8)
    untied = attention_only_model(task, 2, seed=0)
    assert untied.lm_head.weight is not untied.tok_emb.weight
    assert not torch.equal(untied.lm_head.weight, untied.tok_emb.weight)
    assert untied.lm_head.weight.std().item() == pytest.approx(0.02, rel=0.1)  # drawn as TinyGPT draws weights
    tied = attention_only_model(replace(task, tied=True), 2, seed=0)
    assert tied.lm_head.weight is tied.tok_emb.weight
    assert untied.num_parameters() == tied.num_parameters() + 256 * 16  # the second table counts
    again = attention_only_model(task, 2, seed=0)  # the same seed gives the same model
    assert all(torch.equal(a, b) for a, b in zip(untied.state_dict().values(), again.state_dict().values()))


def test_the_previous_token_score_reads_the_subdiagonal():
    from tinyllm.induction import previous_token_score

    T = 6
    previous = torch.zeros(T, T)
    previous[0, 0] = 1.0
    previous[torch.arange(1, T), torch.arange(T - 1)] = 1.0  # every query on the key before it
    uniform = torch.ones(T, T).tril() / torch.arange(1, T + 1)[:, None]
    weights = torch.stack([previous, uniform])[None]  # (1, 2, T, T)
    score = previous_token_score(weights)
    assert score[0].item() == pytest.approx(1.0)
    assert score[1].item() == pytest.approx(sum(1 / (i + 1) for i in range(1, T)) / (T - 1))
