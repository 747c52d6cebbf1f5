"""Part III's encoders: bidirectional attention, cross-attention and the blocks against PyTorch's own modules.

The outside contract is PyTorch's: ``nn.TransformerEncoderLayer`` and
``nn.TransformerDecoderLayer`` (pre-norm, GELU) and ``nn.MultiheadAttention``
with separate query and key/value inputs and a key padding mask, loaded with
our weights. Then the masking recipe, the masked-LM loss, and the models'
promises: padding changes nothing, an encoder reads both sides, a decoder only
the left.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinyllm.attention import CrossAttention, MultiHeadAttention, bidirectional_attention, scaled_dot_product_attention
from tinyllm.encoder import (NOT_MASKED, SpecialTokens, TinyEncoder, TinySeq2Seq, mask_tokens, masked_lm_loss,
                             pair_batch, seq2seq_config)
from tinyllm.layers import DecoderBlock, EncoderBlock
from tinyllm.model import GPTConfig, TinyGPT


def padding_mask(lengths: list[int], T: int) -> torch.Tensor:
    """(B, T) True after each row's length."""
    return torch.arange(T)[None, :] >= torch.tensor(lengths)[:, None]


def copy_attention(ours: MultiHeadAttention, theirs: nn.MultiheadAttention) -> None:
    with torch.no_grad():
        theirs.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        theirs.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        theirs.out_proj.weight.copy_(ours.out_proj.weight)
        theirs.out_proj.bias.copy_(ours.out_proj.bias)


def copy_ffn_and_norms(block, layer, norms: list[tuple[str, str]]) -> None:
    with torch.no_grad():
        layer.linear1.weight.copy_(block.ffn.fc1.weight)
        layer.linear1.bias.copy_(block.ffn.fc1.bias)
        layer.linear2.weight.copy_(block.ffn.fc2.weight)
        layer.linear2.bias.copy_(block.ffn.fc2.bias)
        for ours, theirs in norms:
            getattr(layer, theirs).weight.copy_(getattr(block, ours).weight)
            getattr(layer, theirs).bias.copy_(getattr(block, ours).bias)


def randomise(module: nn.Module, seed: int) -> nn.Module:
    """Every parameter drawn at random (norm gains and biases too), so that no wrong mapping can hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
    return module


# ------------------------------------------------------------------ attention


def test_bidirectional_attention_equals_torch_with_a_padding_mask():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(3, 4, 5, 8, generator=g)  # (B, n_heads, T_q, d_k)
    k, v = torch.randn(3, 4, 7, 8, generator=g), torch.randn(3, 4, 7, 8, generator=g)
    pad = padding_mask([7, 4, 1], 7)
    theirs = F.scaled_dot_product_attention(q, k, v, attn_mask=~pad[:, None, None, :])
    torch.testing.assert_close(bidirectional_attention(q, k, v, pad), theirs)
    # Without a mask it is chapter 5's attention with the causal mask off; 3-D inputs work too.
    torch.testing.assert_close(bidirectional_attention(q, k, v), scaled_dot_product_attention(q, k, v)[0])
    torch.testing.assert_close(bidirectional_attention(q[:, 0], k[:, 0], v[:, 0], pad),
                               F.scaled_dot_product_attention(q[:, 0], k[:, 0], v[:, 0], attn_mask=~pad[:, None, :]))


def test_padding_gets_no_weight_and_its_contents_do_not_matter():
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 6, 4, generator=g) for _ in range(3))
    pad = padding_mask([6, 3], 6)
    out = bidirectional_attention(q, k, v, pad)
    k2, v2 = k.clone(), v.clone()
    k2[1, 3:], v2[1, 3:] = 1e4, -1e4  # garbage where row 1 is padded
    torch.testing.assert_close(bidirectional_attention(q, k2, v2, pad), out)
    # Not causal: the first query of row 0 reads its last key.
    v3 = v.clone()
    v3[0, -1] += 1.0
    assert not torch.allclose(bidirectional_attention(q, k, v3, pad)[0, 0], out[0, 0])


def test_cross_attention_equals_nn_multiheadattention_with_separate_inputs_and_padding():
    torch.manual_seed(2)
    d_model, n_heads, T, S = 16, 4, 5, 7
    ours = randomise(CrossAttention(d_model, n_heads), seed=3)
    theirs = nn.MultiheadAttention(d_model, n_heads, batch_first=True)
    copy_attention(ours, theirs)
    x, memory = torch.randn(3, T, d_model), torch.randn(3, S, d_model)
    pad = padding_mask([7, 5, 2], S)
    expected, _ = theirs(x, memory, memory, key_padding_mask=pad, need_weights=False)
    torch.testing.assert_close(ours(x, memory, pad), expected)
    assert ours.state_dict().keys() == MultiHeadAttention(d_model, n_heads).state_dict().keys()


def test_cross_attention_reads_keys_from_memory_not_from_x():
    torch.manual_seed(4)
    attn = CrossAttention(8, 2).eval()
    x, memory = torch.randn(1, 3, 8), torch.randn(1, 4, 8)
    out = attn(x, memory)
    changed = memory.clone()
    changed[0, 2] += 1.0
    assert not torch.allclose(attn(x, changed), out)  # every query reads every memory position
    with_x_as_memory = attn(x, x)
    assert with_x_as_memory.shape == (1, 3, 8) and not torch.allclose(with_x_as_memory, out)


# ------------------------------------------------------------------ blocks


def test_encoder_block_equals_nn_transformer_encoder_layer():
    torch.manual_seed(5)
    d_model, n_heads, d_ff = 16, 4, 40
    block = randomise(EncoderBlock(d_model, n_heads, d_ff), seed=6)
    layer = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout=0.0, activation="gelu", norm_first=True,
                                       batch_first=True)
    copy_attention(block.attn, layer.self_attn)
    copy_ffn_and_norms(block, layer, [("ln1", "norm1"), ("ln2", "norm2")])
    x = torch.randn(3, 6, d_model)
    pad = padding_mask([6, 4, 2], 6)
    # (Training mode keeps PyTorch off its inference fast path, which zeroes padded outputs.)
    expected = layer.train()(x, src_key_padding_mask=pad)
    got = block.train()(x, pad)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(block(x), layer(x))
    assert set(block.state_dict()) >= {"ln1.weight", "attn.q_proj.weight", "ln2.bias", "ffn.fc1.weight"}


def test_decoder_block_equals_nn_transformer_decoder_layer():
    torch.manual_seed(7)
    d_model, n_heads, d_ff = 16, 4, 24
    block = randomise(DecoderBlock(d_model, n_heads, d_ff), seed=8)
    layer = nn.TransformerDecoderLayer(d_model, n_heads, d_ff, dropout=0.0, activation="gelu", norm_first=True,
                                       batch_first=True)
    copy_attention(block.attn, layer.self_attn)
    copy_attention(block.cross_attn, layer.multihead_attn)
    copy_ffn_and_norms(block, layer, [("ln1", "norm1"), ("ln_cross", "norm2"), ("ln2", "norm3")])
    x, memory = torch.randn(2, 5, d_model), torch.randn(2, 7, d_model)
    pad = padding_mask([7, 3], 7)
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    expected = layer.train()(x, memory, tgt_mask=causal, memory_key_padding_mask=pad)
    torch.testing.assert_close(block.train()(x, memory, pad), expected)


# ------------------------------------------------------------------ masking and its loss

SPECIAL = (9, 10, 11)  # end-of-text, [MASK], [PAD] of a 12-id vocabulary


def test_mask_tokens_follows_the_recipe():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(9, (400, 50), generator=g)
    ids[:, 0] = 9
    ids[:, -10:] = 11  # padding
    inputs, labels = mask_tokens(ids, mask_id=10, vocab_size=12, special_ids=SPECIAL, p=0.15, generator=g)
    chosen = labels != NOT_MASKED
    eligible = ids < 9
    assert not (chosen & ~eligible).any(), "a special id or padding was chosen"
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(inputs[~chosen], ids[~chosen])
    share = chosen.sum() / eligible.sum()
    assert abs(share - 0.15) < 0.01
    masked = (inputs == 10) & chosen
    kept = (inputs == ids) & chosen
    assert abs(masked.sum() / chosen.sum() - 0.8) < 0.02
    # Random replacements (which may by chance equal the original, 1 in 9 here) are ordinary ids.
    assert (inputs[chosen & ~masked] < 9).all()
    assert abs(kept.sum() / chosen.sum() - (0.1 + 0.1 / 9)) < 0.02


def test_mask_tokens_is_seeded():
    ids = torch.randint(9, (4, 30), generator=torch.Generator().manual_seed(1))
    first = mask_tokens(ids, 10, 12, SPECIAL, generator=torch.Generator().manual_seed(5))
    again = mask_tokens(ids, 10, 12, SPECIAL, generator=torch.Generator().manual_seed(5))
    other = mask_tokens(ids, 10, 12, SPECIAL, generator=torch.Generator().manual_seed(6))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[1], other[1])


def test_masked_lm_loss_equals_cross_entropy_with_ignore_index():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(3, 7, 12, generator=g)
    labels = torch.full((3, 7), NOT_MASKED)
    labels[0, 2], labels[1, 5], labels[2, 0] = 4, 7, 1
    expected = F.cross_entropy(logits.view(-1, 12), labels.view(-1), ignore_index=-100)
    torch.testing.assert_close(masked_lm_loss(logits, labels), expected)


# ------------------------------------------------------------------ the models

CONFIG = GPTConfig(vocab_size=270, context_length=16, d_model=16, n_layers=2, n_heads=2, d_ff=32, dropout=0.0)


def test_encoder_reads_both_sides_and_ignores_padding():
    torch.manual_seed(9)
    model = TinyEncoder(CONFIG, pad_id=269).eval()
    ids = torch.randint(256, (1, 8))
    logits, _ = model(ids)
    changed = ids.clone()
    changed[0, -1] = (changed[0, -1] + 1) % 256
    assert not torch.allclose(model(changed)[0][0, 0], logits[0, 0]), "position 0 must see the last token"
    padded = torch.cat((ids, torch.full((1, 5), 269)), dim=1)
    torch.testing.assert_close(model(padded)[0][:, :8], logits)


def test_decoder_is_causal_where_the_encoder_is_not():
    """What makes the decoder cacheable: appending a token leaves earlier positions as they were."""
    torch.manual_seed(10)
    decoder, encoder = TinyGPT(CONFIG).eval(), TinyEncoder(CONFIG, pad_id=269).eval()
    ids = torch.randint(256, (1, 9))
    torch.testing.assert_close(decoder(ids)[0][:, :8], decoder(ids[:, :8])[0])
    assert not torch.allclose(encoder(ids)[0][:, :8], encoder(ids[:, :8])[0])


def test_seq2seq_ignores_source_padding_and_is_causal_in_the_target():
    torch.manual_seed(11)
    tokens = SpecialTokens(end_of_text=266, mask=267, pad=268)
    model = TinySeq2Seq(GPTConfig(vocab_size=269, context_length=16, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                                  dropout=0.0), pad_id=tokens.pad).eval()
    pairs = [([5, 6, 7, 8, 9, 10], [11, 12, 266]), ([5, 6], [13, 14, 15, 16, 266])]
    pair, targets = pair_batch(pairs, tokens)
    assert pair.shape == (2, 2, 6) and targets[0, 3:].eq(-1).all()
    assert pair[0, 1, 0] == tokens.end_of_text and pair[1, 0, 2:].eq(tokens.pad).all()
    logits, loss = model(pair, targets)
    alone, _ = model(pair_batch(pairs[1:], tokens)[0])
    torch.testing.assert_close(logits[1, :5], alone[0, :5])  # more source padding changes nothing
    tgt = pair[:, 1].clone()
    tgt[:, -1] = 200
    later = model(torch.stack((pair[:, 0], tgt), dim=1))[0]
    torch.testing.assert_close(later[:, :-1], logits[:, :-1])  # a later target token cannot reach earlier ones
    assert torch.isfinite(loss)


def test_seq2seq_config_matches_the_decoders_size():
    base = GPTConfig()
    config = seq2seq_config(base, vocab_size=402)
    assert config.n_layers == 1 and config.d_ff % 8 == 0
    decoder = TinyGPT(GPTConfig(vocab_size=402)).num_parameters()
    assert abs(TinySeq2Seq(config, 0).num_parameters() - decoder) / decoder < 0.01
    with pytest.raises(ValueError, match="even"):
        seq2seq_config(GPTConfig(n_layers=3), 402)
