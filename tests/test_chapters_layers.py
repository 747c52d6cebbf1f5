"""What chapters 7 and 10 add to the library: RMSNorm, the post-norm block, the scaling formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from tinyllm.layers import PostNormBlock, RMSNorm, TransformerBlock, rms_norm
from tinyllm.model import GPTConfig, TinyGPT
from tinyllm.scaling import (
    block_parameters,
    chinchilla_optimal,
    chinchilla_tokens,
    count_parameters,
    forward_flops_per_token,
    gpt_parameters,
    kaplan_loss,
    kv_cache_bytes,
    non_embedding_parameters,
    adamw_training_bytes,
    roofline_seconds,
    training_flops,
)

shapes = st.lists(st.integers(1, 6), min_size=1, max_size=4)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 2**31 - 1), scale=st.sampled_from([1e-2, 1.0, 100.0]))
def test_rms_norm_matches_the_formula_and_torch(shape, seed, scale):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * scale
    d = shape[-1]
    weight = torch.randn(d, generator=gen, dtype=torch.float64)
    expected = x / torch.sqrt((x * x).sum(dim=-1, keepdim=True) / d + 1e-6) * weight
    torch.testing.assert_close(rms_norm(x, weight), expected)
    torch.testing.assert_close(rms_norm(x, weight, eps=1e-3), x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-3) * weight)
    if hasattr(F, "rms_norm"):
        torch.testing.assert_close(rms_norm(x, weight), F.rms_norm(x, (d,), weight, eps=1e-6))


def test_rms_norm_module_has_a_gain_only_and_is_scale_invariant():
    norm = RMSNorm(8)
    assert [name for name, _ in norm.named_parameters()] == ["weight"]
    torch.testing.assert_close(norm.weight.detach(), torch.ones(8))
    x = torch.randn(3, 5, 8) + 2.0  # nonzero mean: RMSNorm must NOT subtract it
    out = norm(x)
    torch.testing.assert_close(out.pow(2).mean(-1), torch.ones(3, 5), atol=1e-4, rtol=1e-4)
    assert (out.mean(-1) > 0.5).all()
    torch.testing.assert_close(norm(7.0 * x), out, atol=1e-5, rtol=1e-5)


def copy_block_into_torch(ours: TransformerBlock, theirs: nn.TransformerEncoderLayer) -> None:
    attn = ours.attn
    with torch.no_grad():
        theirs.self_attn.in_proj_weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
        theirs.self_attn.in_proj_bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
        theirs.self_attn.out_proj.load_state_dict(attn.out_proj.state_dict())
        theirs.linear1.load_state_dict(ours.ffn.fc1.state_dict())
        theirs.linear2.load_state_dict(ours.ffn.fc2.state_dict())
        theirs.norm1.load_state_dict(ours.ln1.state_dict())
        theirs.norm2.load_state_dict(ours.ln2.state_dict())


@pytest.mark.parametrize("d_model,n_heads,d_ff,T", [(16, 4, 32, 6), (64, 4, 256, 9)])
def test_post_norm_block_matches_torch_encoder_layer_norm_first_false(d_model, n_heads, d_ff, T):
    torch.manual_seed(0)
    ours = PostNormBlock(d_model, n_heads, d_ff).eval()
    with torch.no_grad():  # non-trivial norms, so that a norm in the wrong place shows
        for ln in (ours.ln1, ours.ln2):
            ln.weight.normal_(1.0, 0.3)
            ln.bias.normal_(0.0, 0.3)
    theirs = nn.TransformerEncoderLayer(d_model, n_heads, d_ff, dropout=0.0, activation="gelu",
                                        batch_first=True, norm_first=False).eval()
    copy_block_into_torch(ours, theirs)
    x = torch.randn(3, T, d_model)
    mask = nn.Transformer.generate_square_subsequent_mask(T)
    with torch.no_grad():
        expected = theirs(x, src_mask=mask, is_causal=True)
        torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-4)
        # ... and it really is a different wiring from the pre-norm block with the same weights.
        pre = TransformerBlock(d_model, n_heads, d_ff).eval()
        pre.load_state_dict(ours.state_dict())
        assert (pre(x) - expected).abs().max() > 1e-2


def test_post_norm_block_has_the_pre_norm_blocks_names():
    pre, post = TransformerBlock(8, 2, 16), PostNormBlock(8, 2, 16)
    assert list(pre.state_dict()) == list(post.state_dict())


@pytest.mark.parametrize("d_model,d_ff,expected", [
    (64, 256, 49_984),  # 4 * (4096 + 64) + (32768 + 256 + 64) + 256
    (768, 3072, 7_087_872),  # GPT-2 small
    (1, 1, 16),  # 4 * 2 + (2 + 1 + 1) + 4
])
def test_block_parameters_by_hand_and_by_torch(d_model, d_ff, expected):
    assert block_parameters(d_model, d_ff) == expected
    n_heads = 1 if d_model == 1 else 4
    assert count_parameters(TransformerBlock(d_model, n_heads, d_ff)) == expected


@pytest.mark.parametrize("config", [
    GPTConfig(),
    GPTConfig(vocab_size=300, context_length=16, d_model=32, n_layers=3, n_heads=2, d_ff=48),
])
def test_gpt_parameters_equals_tinygpt_count_with_tied_head(config):
    model = TinyGPT(config)
    assert model.lm_head.weight is model.tok_emb.weight
    expected = gpt_parameters(config.vocab_size, config.context_length, config.d_model, config.n_layers, config.d_ff)
    assert count_parameters(model) == expected == model.num_parameters()


def test_gpt2_small_and_llama_sizes_by_hand():
    assert gpt_parameters(50257, 1024, 768, 12, 3072) == 124_439_808
    assert non_embedding_parameters(12, 768, 3072) == 12 * 12 * 768**2 == 84_934_656
    assert non_embedding_parameters(32, 4096, 11008, ffn_matrices=3) == 32 * (4 * 4096**2 + 3 * 4096 * 11008)
    assert non_embedding_parameters(2, 64, 256) == 98_304


def test_forward_flops_per_token_by_hand():
    # N = 100, 2 layers, d_model 4, T = 8: 2N = 200; causal attention 2 * 2 * 8 * 4 = 128; dense 256.
    assert forward_flops_per_token(100, 2, 4, 8) == 328
    assert forward_flops_per_token(100, 2, 4, 8, dense_attention=True) == 456
    assert forward_flops_per_token(100, 2, 4, 8, vocab_size=10) == 328 + 2 * 4 * 10


@pytest.mark.parametrize("config,T", [
    (GPTConfig(), 64),
    (GPTConfig(vocab_size=300, context_length=32, d_model=32, n_layers=3, n_heads=2, d_ff=48), 20),
])
def test_forward_flops_match_flop_counter_on_tinygpt(config, T):
    model = TinyGPT(config).eval()
    B = 2
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randint(0, config.vocab_size, (B, T)))
    N = non_embedding_parameters(config.n_layers, config.d_model, config.d_ff)
    expected = forward_flops_per_token(N, config.n_layers, config.d_model, T, config.vocab_size, dense_attention=True)
    assert counter.get_total_flops() == B * T * expected


def test_kv_cache_bytes_by_hand():
    assert kv_cache_bytes(12, 12, 64, 1024) == 37_748_736  # GPT-2 small, one sequence, 16-bit
    assert kv_cache_bytes(2, 4, 16, 10, batch_size=3, bytes_per_value=4) == 30_720
    assert kv_cache_bytes(32, 32, 128, 4096, 16) == 8 * kv_cache_bytes(32, 4, 128, 4096, 16)


def test_training_and_chinchilla_rules_by_hand():
    assert training_flops(1_000, 2_000) == 12_000_000
    assert chinchilla_tokens(7e9) == pytest.approx(1.4e11)
    n, d = chinchilla_optimal(6 * 1e9 * 2e10)  # the budget of 1B parameters on 20B tokens
    assert n == pytest.approx(1e9) and d == pytest.approx(2e10)


def test_kaplan_loss_by_hand():
    assert kaplan_loss(8.8e13) == pytest.approx(1.0)
    assert kaplan_loss(8.8e12) == pytest.approx(10**0.076)
    assert kaplan_loss(1e9) / kaplan_loss(1e8) == pytest.approx(10**-0.076)
    assert kaplan_loss(2.0, n_c=4.0, alpha_n=0.5) == pytest.approx(math.sqrt(2))


def test_roofline_is_the_slower_of_arithmetic_and_memory():
    assert roofline_seconds(flops=2e12, bytes_moved=1e9, peak_flops=1e15, bandwidth=1e12) == pytest.approx(2e-3)
    assert roofline_seconds(flops=2e9, bytes_moved=1e9, peak_flops=1e15, bandwidth=1e12) == pytest.approx(1e-3)


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """What training really holds for the parameters: weights, gradients, the optimiser's tensors."""
    tensors = list(model.parameters()) + [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [t for state in optimizer.state.values() for t in state.values()
                if torch.is_tensor(t) and t.dim() > 0]  # the moments; not the step counters
    return sum(t.numel() * t.element_size() for t in tensors)


def test_adamw_training_bytes_is_what_torch_adamw_allocates():
    """Float32 training of a TinyGPT, all of it and then LoRA's adapters only: the formula's count, measured."""
    from tinyllm.posttrain import apply_lora, trainable_parameters

    config = GPTConfig(vocab_size=300, context_length=16, d_model=32, n_layers=2, n_heads=4, d_ff=64)
    for lora in (False, True):
        torch.manual_seed(0)
        model = TinyGPT(config)
        if lora:
            apply_lora(model, rank=2, alpha=4.0)
        trainable = trainable_parameters(model)
        frozen = count_parameters(model) - trainable
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])
        model(torch.randint(0, 300, (2, 16)), torch.randint(0, 300, (2, 16)))[1].backward()
        optimizer.step()
        float32 = dict(weight_bytes=4, gradient_bytes=4, master_bytes=0)
        assert state_bytes(model, optimizer) == adamw_training_bytes(trainable, frozen, **float32)
        assert (frozen > 0) == lora
    assert adamw_training_bytes(10) == 160 and adamw_training_bytes(1, n_frozen=10) == 16 + 20
