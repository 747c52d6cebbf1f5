"""Part II's library: each modern component equals an outside oracle, and the cache changes nothing but speed."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import tinyllm.attention
from tinyllm.attention import (GroupedQueryAttention, KVCache, MultiHeadAttention, causal_attention,
                               repeat_kv)
from tinyllm.layers import LlamaBlock, SwiGLU, rms_norm, swiglu_hidden
from tinyllm.model import GPTConfig, TinyGPT, TinyGPTWithCache, TinyLlama, make_model, with_kv_cache
from tinyllm.positional import apply_rope
from tinyllm.sampling import (CallRecorder, beam_search, continuation_logprob, generate, generate_cached,
                              generate_until)
from tinyllm.scaling import kv_cache_bytes

seeds = st.integers(0, 2**31 - 1)
SMALL = dict(vocab_size=300, context_length=48, d_model=32, n_layers=2, n_heads=4, d_ff=88, dropout=0.0)


def randn(shape, seed, scale=1.0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * scale


def llama(seed: int = 0, **sizes) -> TinyLlama:
    torch.manual_seed(seed)
    return make_model(GPTConfig(**{**SMALL, "arch": "llama", **sizes})).eval()


def gpt2(seed: int = 0) -> TinyGPT:
    torch.manual_seed(seed)
    return make_model(GPTConfig(**SMALL)).eval()


# Both model kinds, as generate_cached reads them (a TinyGPT through its wrapper).
BOTH_KINDS = {"gpt2": lambda seed: with_kv_cache(gpt2(seed)), "llama/4": lambda seed: llama(seed, n_kv_heads=4),
              "llama/2": lambda seed: llama(seed, n_kv_heads=2), "llama/1": lambda seed: llama(seed, n_kv_heads=1)}


# ----------------------------------------------------------------- components against PyTorch


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 5), st.integers(1, 12), seeds)
def test_rms_norm_equals_torch(batch, t, d, seed):
    x, weight = randn((batch, t, d), seed, 3.0), randn((d,), seed + 1)
    torch.testing.assert_close(rms_norm(x, weight), F.rms_norm(x, (d,), weight, eps=1e-6))
    torch.testing.assert_close(rms_norm(x, weight, eps=0.1), F.rms_norm(x, (d,), weight, eps=0.1))


def rope_by_complex_numbers(x: torch.Tensor, base: float, offset: int) -> torch.Tensor:
    """RoFormer's definition: pair (2i, 2i+1) as the complex number x_2i + i x_2i+1, times e^{i m theta_i}."""
    T, d = x.shape[-2], x.shape[-1]
    theta = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)  # (d/2,)
    angles = (offset + torch.arange(T, dtype=torch.float64))[:, None] * theta  # (T, d/2)
    pairs = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(pairs * torch.polar(torch.ones_like(angles), angles)).flatten(-2).to(x.dtype)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 9), st.sampled_from([2, 4, 8, 16]), st.integers(0, 200), st.sampled_from([100.0, 1e4]), seeds)
def test_rope_equals_complex_rotation(t, d, offset, base, seed):
    x = randn((2, 3, t, d), seed)
    torch.testing.assert_close(apply_rope(x, base, offset=offset), rope_by_complex_numbers(x, base, offset),
                               atol=1e-4, rtol=1e-4)


def test_rope_in_float64_rotates_with_float64_sines_and_cosines(monkeypatch):
    """The table is built in the input's dtype: a float64 model is a float64 computation throughout."""
    import tinyllm.attention

    x = randn((2, 3, 50, 16), 0).double()
    exact = rope_by_complex_numbers  # in float64, and returned in x's dtype
    for offset in (0, 7, 500):
        assert apply_rope(x, offset=offset).dtype == torch.float64
        torch.testing.assert_close(apply_rope(x, offset=offset), exact(x, 1e4, offset), atol=1e-12, rtol=0)
    # A whole float64 TinyLlama: the same logits as with the complex rotation done in float64.
    torch.manual_seed(0)
    model = make_model(GPTConfig(**{**SMALL, "arch": "llama", "n_kv_heads": 2})).double().eval()
    idx = torch.randint(0, 300, (2, 12))
    ours = model(idx)[0]
    monkeypatch.setattr(tinyllm.attention, "apply_rope", lambda x, base, offset: exact(x, base, offset))
    torch.testing.assert_close(ours, model(idx)[0], atol=1e-12, rtol=0)


def test_rope_offset_continues_the_sequence_and_scores_are_relative():
    x = randn((1, 10, 8), 0)
    whole = apply_rope(x)
    torch.testing.assert_close(apply_rope(x[:, 6:], offset=6), whole[:, 6:])
    q, k = randn((8,), 1), randn((8,), 2)
    score = lambda m, n: apply_rope(q.expand(1, 8), offset=m) @ apply_rope(k.expand(1, 8), offset=n).T  # noqa: E731
    torch.testing.assert_close(score(3, 1), score(40, 38), atol=1e-4, rtol=1e-4)  # only m - n matters
    with pytest.raises(ValueError):
        apply_rope(randn((2, 5), 0))


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 4), st.integers(1, 3), seeds)
def test_repeat_kv_equals_repeat_interleave(n_kv, n_rep, seed):
    x = randn((2, n_kv, 5, 4), seed)
    torch.testing.assert_close(repeat_kv(x, n_rep), torch.repeat_interleave(x, n_rep, dim=1))


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(0, 6), seeds)
def test_causal_attention_equals_torch_with_the_offset_mask(t_q, start, seed):
    q, k, v = randn((2, 3, t_q, 8), seed), randn((2, 3, start + t_q, 8), seed + 1), randn((2, 3, start + t_q, 8), seed + 2)
    allowed = torch.ones(t_q, start + t_q, dtype=torch.bool).tril(diagonal=start)  # key j visible to query i
    torch.testing.assert_close(causal_attention(q, k, v, start=start),
                               F.scaled_dot_product_attention(q, k, v, attn_mask=allowed), atol=1e-5, rtol=1e-4)
    if start == 0:
        torch.testing.assert_close(causal_attention(q, k, v), F.scaled_dot_product_attention(q, k, v, is_causal=True),
                                   atol=1e-5, rtol=1e-4)


@settings(max_examples=20, deadline=None)
@given(st.sampled_from([(4, 4), (4, 2), (4, 1), (6, 3), (8, 2)]), st.integers(1, 9), seeds)
def test_gqa_equals_torch_sdpa_with_enable_gqa(heads, t, seed):
    n_heads, n_kv = heads
    d_k = 4
    torch.manual_seed(seed)
    attn = GroupedQueryAttention(n_heads * d_k, n_heads, n_kv).eval()
    x = randn((2, t, n_heads * d_k), seed + 1)
    q = apply_rope(attn.q_proj(x).view(2, t, n_heads, d_k).transpose(1, 2))
    k = apply_rope(attn.k_proj(x).view(2, t, n_kv, d_k).transpose(1, 2))
    v = attn.v_proj(x).view(2, t, n_kv, d_k).transpose(1, 2)
    heads_out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    expected = attn.out_proj(heads_out.transpose(1, 2).reshape(2, t, n_heads * d_k))
    torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-4)


def test_gqa_with_as_many_kv_heads_as_query_heads_is_multi_head_attention(monkeypatch):
    """Same weights (the MHA's biases zero), RoPE taken out: GQA's grouping is MHA's head split exactly."""
    torch.manual_seed(0)
    gqa = GroupedQueryAttention(32, 4, 4).eval()
    mha = MultiHeadAttention(32, 4, causal=True).eval()
    state = {k: v for k, v in gqa.state_dict().items()}
    state.update({f"{name}.bias": torch.zeros(32) for name in ("q_proj", "k_proj", "v_proj", "out_proj")})
    mha.load_state_dict(state)
    monkeypatch.setattr(tinyllm.attention, "apply_rope", lambda x, base, offset: x)
    x = randn((2, 7, 32), 1)
    torch.testing.assert_close(gqa(x), mha(x), atol=1e-6, rtol=1e-5)


def test_gqa_rejects_heads_that_do_not_group():
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        GroupedQueryAttention(32, 4, 3)
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        GPTConfig(arch="llama", n_heads=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="arch"):
        GPTConfig(arch="mamba")


def test_swiglu_is_the_gated_formula_and_matches_the_gelu_ffn_parameters():
    torch.manual_seed(0)
    ffn = SwiGLU(16, 40)
    x = randn((2, 3, 16), 1)
    gate, up = x @ ffn.w_gate.weight.T, x @ ffn.w_up.weight.T
    torch.testing.assert_close(ffn(x), (gate * torch.sigmoid(gate) * up) @ ffn.w_down.weight.T)
    assert all(m.bias is None for m in (ffn.w_gate, ffn.w_up, ffn.w_down))
    for d_model in (64, 96, 128):
        hidden = swiglu_hidden(d_model)
        assert hidden % 8 == 0 and abs(3 * hidden * d_model - 2 * 4 * d_model * d_model) <= 3 * 8 * d_model


def test_llama_block_is_pre_norm_wiring():
    torch.manual_seed(0)
    block = LlamaBlock(16, 4, 2, 40).eval()
    x = randn((2, 5, 16), 1)
    h = x + block.attn(F.rms_norm(x, (16,), block.attn_norm.weight, 1e-6))
    torch.testing.assert_close(block(x), h + block.ffn(F.rms_norm(h, (16,), block.ffn_norm.weight, 1e-6)))


def test_make_model_builds_either_architecture():
    assert type(make_model(GPTConfig(**SMALL))) is TinyGPT
    model = llama(n_kv_heads=2)
    assert type(model) is TinyLlama and model.lm_head.weight is model.tok_emb.weight
    assert not hasattr(model, "pos_emb")  # RoPE: no position table
    assert model.blocks[0].attn.k_proj.weight.shape == (2 * 8, 32)
    logits, loss = model(torch.tensor([[1, 2, 3]]), torch.tensor([[2, 3, 4]]))
    assert logits.shape == (1, 3, 300) and loss.item() == pytest.approx(math.log(300), abs=0.2)


# ----------------------------------------------------------------- the cache changes nothing but the work


@pytest.mark.parametrize("kind", BOTH_KINDS)
def test_cached_forward_in_chunks_equals_the_whole_sequence(kind):
    model = BOTH_KINDS[kind](seed=len(kind))
    idx = torch.randint(0, 300, (2, 20), generator=torch.Generator().manual_seed(0))
    whole, _ = model(idx)
    caches = [KVCache() for _ in range(model.config.n_layers)]
    pieces = [model(idx[:, a:b], caches=caches)[0] for a, b in ((0, 7), (7, 8), (8, 15), (15, 20))]
    torch.testing.assert_close(torch.cat(pieces, dim=1), whole, atol=1e-5, rtol=1e-4)
    assert [c.length for c in caches] == [20, 20]
    assert caches[0].k.shape == (2, model.config.kv_heads, 20, 8)


def test_the_gpt2_wrapper_shares_the_weights_and_keeps_the_position_limit():
    model = gpt2()
    wrapped = with_kv_cache(model)
    assert type(wrapped) is TinyGPTWithCache and wrapped.model is model
    modern = llama()
    assert with_kv_cache(modern) is modern  # TinyLlama takes caches itself
    assert wrapped.num_parameters() == model.num_parameters()
    assert not wrapped.training  # it takes the model's mode
    idx, targets = torch.randint(0, 300, (2, 9)), torch.randint(0, 300, (2, 9))
    torch.testing.assert_close(wrapped(idx, targets)[1], model(idx, targets)[1], rtol=0, atol=0)
    caches = [KVCache() for _ in model.blocks]
    wrapped(torch.zeros(1, SMALL["context_length"] - 1, dtype=torch.long), caches=caches)
    wrapped(torch.zeros(1, 1, dtype=torch.long), caches=caches)  # the last position of the table
    with pytest.raises(ValueError, match="context_length"):
        wrapped(torch.zeros(1, 1, dtype=torch.long), caches=caches)


@pytest.mark.parametrize("kind", ["gpt2", "llama/4", "llama/1"])
@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=1.0), dict(temperature=0.8, top_k=20),
                                      dict(temperature=1.2, top_p=0.9), dict(temperature=0, repetition_penalty=2.0)])
def test_cached_generate_gives_the_same_ids(kind, sampling):
    model = BOTH_KINDS[kind](seed=3)
    if isinstance(model, TinyGPTWithCache):
        model = model.model  # generate_cached wraps a TinyGPT itself
    prompt = torch.randint(0, 300, (2, 5), generator=torch.Generator().manual_seed(1))
    uncached = generate(model, prompt, 30, generator=torch.Generator().manual_seed(7), **sampling)
    cached = generate_cached(model, prompt, 30, generator=torch.Generator().manual_seed(7), **sampling)
    assert torch.equal(cached, uncached)


@pytest.mark.parametrize("kind", ["gpt2", "llama/2"])
@pytest.mark.parametrize("sampling", [dict(temperature=0), dict(temperature=0.9, top_k=30)])
def test_generate_until_gives_generates_ids_and_stops_when_every_row_has(kind, sampling):
    model = BOTH_KINDS[kind](seed=5)
    if isinstance(model, TinyGPTWithCache):
        model = model.model
    T, start = SMALL["context_length"], 4
    prompt = torch.randint(0, 300, (3, start), generator=torch.Generator().manual_seed(2))
    # Past the context window too: the cached part, then generate's sliding window.
    full = generate(model, prompt, T + 2 - start, generator=torch.Generator().manual_seed(7), **sampling)
    never = generate_until(model, prompt, -1, T + 2, generator=torch.Generator().manual_seed(7), **sampling)
    assert torch.equal(never, full)
    stop = full[0, start + 2].item()  # row 0 writes it third
    out = generate_until(model, prompt, stop, T + 2, generator=torch.Generator().manual_seed(7), **sampling)
    assert torch.equal(out, full[:, : out.shape[1]])
    every_row = [bool((row[start:] == stop).any()) for row in out]
    assert all(every_row) or out.shape[1] == T + 2
    assert not all((row[start : out.shape[1] - 1] == stop).any() for row in out)  # not one token later than needed


def test_cached_generate_calls_the_model_once_per_token_on_one_token():
    model = llama()
    prompt = torch.tensor([[1, 2, 3, 4, 5]])
    recorder = CallRecorder(model)
    generate(recorder, prompt, 4, temperature=0)
    assert recorder.lengths() == [5, 6, 7, 8]
    recorder = CallRecorder(model)
    generate_cached(recorder, prompt, 4, temperature=0)
    assert recorder.lengths() == [5, 1, 1, 1]
    assert not model.training  # the recorder leaves the model in the mode it found it
    with pytest.raises(ValueError, match="context_length"):
        generate_cached(model, prompt, SMALL["context_length"], temperature=0)


def test_cache_bytes_match_the_formula():
    model = llama(n_kv_heads=2)
    caches = [KVCache() for _ in model.blocks]
    model(torch.zeros(3, 11, dtype=torch.long), caches=caches)
    stored = sum(c.k.numel() * c.k.element_size() + c.v.numel() * c.v.element_size() for c in caches)
    assert stored == kv_cache_bytes(n_layers=2, n_kv_heads=2, d_k=8, seq_len=11, batch_size=3, bytes_per_value=4)


# ----------------------------------------------------------------- beam search


def test_beam_width_one_is_greedy():
    model = llama(seed=5, n_kv_heads=2)
    prompt = torch.tensor([[7, 8, 9]])
    assert torch.equal(beam_search(model, prompt, 1, 12), generate(model, prompt, 12, temperature=0))


def test_a_full_width_beam_finds_the_best_two_token_continuation():
    """Width V over two tokens keeps every first token: the result is the exhaustive optimum."""
    model = llama(seed=6)
    prompt = torch.tensor([[7, 8, 9]])
    V = SMALL["vocab_size"]
    first = torch.arange(V)
    everything = torch.cat([prompt.expand(V, 3), first[:, None]], dim=1)  # (V, 4)
    logits, _ = model(everything)
    first_logp = torch.log_softmax(logits[0, 2].double(), -1)  # (V,) same for every row
    second_logp = torch.log_softmax(logits[:, 3].double(), -1)  # (V, V)
    totals = first_logp[:, None] + second_logp
    best = int(totals.argmax())
    expected = torch.tensor([[7, 8, 9, best // V, best % V]])
    assert torch.equal(beam_search(model, prompt, V, 2), expected)
    found = continuation_logprob(model, expected, 3).item()
    assert found == pytest.approx(totals.max().item(), abs=1e-4)
    greedy = generate(model, prompt, 2, temperature=0)
    assert continuation_logprob(model, greedy, 3).item() <= found + 1e-9


# ----------------------------------------------------------------- the command line


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_cli_trains_either_model_and_generates_the_same_text_with_and_without_the_cache(arch, tmp_path, capsys):
    from tinyllm.cli import main
    from tinyllm.data import read_corpus, split_documents
    from tinyllm.train import load_checkpoint

    corpus = tmp_path / "small.txt"
    corpus.write_text("\n\n".join(split_documents(read_corpus())[:150]) + "\n", encoding="utf-8")
    tiny = ["--vocab-size", "280", "--d-model", "16", "--n-layers", "1", "--n-heads", "4", "--d-ff", "32",
            "--context-length", "48", "--batch-size", "4", "--max-steps", "6", "--eval-interval", "3",
            "--no-progress"]
    out = tmp_path / "run"
    kv_heads = ["--n-kv-heads", "2"] if arch == "llama" else []
    assert main(["train", "--out", str(out), "--corpus", str(corpus), "--arch", arch, *kv_heads, *tiny]) == 0
    model = load_checkpoint(out / "checkpoint.pt").model()
    assert type(model) is {"llama": TinyLlama, "gpt2": TinyGPT}[arch]
    assert model.config.kv_heads == (2 if arch == "llama" else 4)
    texts = {}
    for flags in ((), ("--no-cache",)):
        capsys.readouterr()
        assert main(["generate", str(out / "checkpoint.pt"), "--prompt", "Q: ", "--max-new-tokens", "30",
                     "--seed", "4", *flags]) == 0
        captured = capsys.readouterr()
        texts[flags] = captured.out
        assert ("without the KV cache" in captured.err) is False
    assert texts[()] == texts[("--no-cache",)] and len(texts[()]) > 4


# ----------------------------------------------------------------- chapter 10's one-change models


def test_gpt2_with_swaps_exactly_one_part():
    from tinyllm.book import gpt2_with
    from tinyllm.layers import FeedForward, LayerNorm, RMSNorm

    config = GPTConfig(**SMALL)
    plain = gpt2_with("none", config)
    assert {k: v.shape for k, v in plain.state_dict().items()} == {
        k: v.shape for k, v in make_model(config).state_dict().items()}
    norms = gpt2_with("rmsnorm", config)
    assert all(type(m) is not LayerNorm for m in norms.modules()) and type(norms.ln_f) is RMSNorm
    assert type(norms.blocks[0].ffn) is FeedForward
    swiglu = gpt2_with("swiglu", config)
    assert all(type(b.ffn) is SwiGLU for b in swiglu.blocks) and type(swiglu.blocks[0].ln1) is LayerNorm
    rope = gpt2_with("rope", config)
    assert all(type(b.attn) is GroupedQueryAttention for b in rope.blocks)
    assert not any("pos_emb" in name for name, _ in rope.named_parameters())
    assert rope(torch.randint(0, 300, (2, 12)))[0].shape == (2, 12, 300)
    nope = gpt2_with("nope", config)  # rope's control: no positions at all, attention unchanged
    assert type(nope.blocks[0].attn) is type(plain.blocks[0].attn)
    assert not any("pos_emb" in name for name, _ in nope.named_parameters())
    for change in ("none", "rmsnorm", "swiglu", "rope", "nope"):  # seeded: the same model twice
        a, b = gpt2_with(change, config, seed=3), gpt2_with(change, config, seed=3)
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
        assert a.lm_head.weight is a.tok_emb.weight
    with pytest.raises(ValueError, match="change must be one of"):
        gpt2_with("layernorm", config)


def test_paired_runs_in_parallel_equal_those_run_one_by_one_and_are_cached(tmp_path, monkeypatch):
    from tinyllm.book import compare_runs, spread, variant_history
    from tinyllm.train import TrainConfig

    config = GPTConfig(**{**SMALL, "vocab_size": 280})
    short = TrainConfig(max_steps=4, eval_interval=2, batch_size=4)
    variants = {"gpt": dict(model_config=config, train_config=short),
                "rope": dict(model_config=config, train_config=short, change="rope"),
                "mqa": dict(model_config=GPTConfig(**{**SMALL, "vocab_size": 280, "arch": "llama", "n_kv_heads": 1}),
                            train_config=short)}
    monkeypatch.setenv("TINYLLM_CACHE", str(tmp_path / "parallel"))
    parallel = compare_runs(variant_history, variants, seeds=(0, 1), processes=2)
    monkeypatch.setenv("TINYLLM_CACHE", str(tmp_path / "serial"))
    serial = compare_runs(variant_history, variants, seeds=(0, 1), processes=1)
    curves = lambda c: {n: [(h["loss"], h["val_loss"]) for h in runs] for n, runs in c.results.items()}  # noqa: E731
    assert curves(parallel) == curves(serial) and serial.seeds == (0, 1)  # all but the timings
    final = lambda h: h["val_loss"][-1]  # noqa: E731
    assert len(set(serial.values("gpt", final) + serial.values("rope", final) + serial.values("mqa", final))) == 6
    assert serial.change("rope", "gpt", final) == [r - g for r, g in zip(serial.values("rope", final),
                                                                          serial.values("gpt", final))]
    assert spread([3.0, 1.0, 2.0]) == (2.0, 1.0, 3.0)
    assert len(list((tmp_path / "serial").glob("run_variant_history_*.json"))) == 6
    # A seed is one draw of batches, dropout masks and weights: the same seed gives the same run.
    assert serial.results["gpt"][0]["val_loss"] == variant_history(config, short, seed=0)["val_loss"]
    import tinyllm.train

    monkeypatch.setattr(tinyllm.train.Trainer, "train", lambda self, **kw: pytest.fail("trained again"))
    assert compare_runs(variant_history, variants, seeds=(0, 1), processes=2).results == serial.results
    with pytest.raises(ValueError, match="module-level function"):
        compare_runs(lambda seed: {}, {"x": {}})
    with pytest.raises(TypeError, match="plain data"):
        compare_runs(variant_history, {"x": dict(model_config=config, train_config=short, change=object())})