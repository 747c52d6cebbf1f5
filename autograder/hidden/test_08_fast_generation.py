"""Hidden checks for 08_fast_generation: the reference on varied shapes, models, seeds and sampling settings."""

from __future__ import annotations

import torch

from autograder.grading import expect
from autograder.checks.test_07_modern_block import gqa_state, loaded
from autograder.checks.test_08_fast_generation import (BOOK, expect_calls, generate_function, length_of,
                                                       library_model, reference_model)
from autograder.sandbox.forbidden import GROUPS
from autograder.grading.registry import check
from tinyllm.attention import GroupedQueryAttention as ReferenceGQA
from tinyllm.attention import causal_attention as reference_attention
from tinyllm.sampling import beam_search as reference_beam_search
from tinyllm.sampling import generate as reference_generate


@check("08_fast_generation", "KVCache", points=2, book=BOOK + "#the-causal-mask-over-the-cache", hidden=True)
def test_KVCache_hidden(sub):
    """The cached attention equals the reference's uncached outputs for varied heads, batches and chunkings."""
    GQA = sub.cls("GroupedQueryAttention", ["d_model", "n_heads", "n_kv_heads"], forbid=GROUPS["grouped_query"])
    KVCache = sub.cls("KVCache")
    g = torch.Generator().manual_seed(test_KVCache_hidden.autograder_check.seed)
    with expect.blame(sub, "KVCache", "causal_attention"):
        for d_model, n_heads, n_kv_heads, B, chunks in [
                (8, 2, 1, 1, [(0, 1), (1, 2), (2, 3), (3, 4)]),
                (24, 6, 3, 3, [(0, 6), (6, 7), (7, 12), (12, 13)]),
                (32, 4, 4, 2, [(0, 2), (2, 9), (9, 10)])]:
            state = gqa_state(d_model, n_heads, n_kv_heads, seed=d_model + B)
            module = loaded(GQA, state, d_model, n_heads, n_kv_heads)
            x = torch.randn(B, chunks[-1][1], d_model, generator=g)
            whole = loaded(ReferenceGQA, state, d_model, n_heads, n_kv_heads)(x).detach()
            cache = KVCache()
            for a, b in chunks:
                got = module(x[:, a:b], cache=cache)
                expect.equal(length_of(cache), b, f"the cache's length after feeding tokens {a}..{b - 1}")
                expect.close(got, whole[:, a:b], f"GroupedQueryAttention({d_model}, {n_heads}, {n_kv_heads}) on "
                             f"tokens {a}..{b - 1} after {a} cached", atol=1e-4)


@check("08_fast_generation", "causal_attention", points=1, book=BOOK + "#the-causal-mask-over-the-cache", hidden=True)
def test_causal_attention_hidden(sub):
    """causal_attention equals the reference for varied batches, heads, lengths and starts."""
    attend = sub.function("causal_attention", ["q", "k", "v", "start"], forbid=GROUPS["causal_attention"])
    g = torch.Generator().manual_seed(test_causal_attention_hidden.autograder_check.seed)
    for shape, t_q, start in [((1,), 1, 0), ((2, 3), 4, 7), ((3,), 2, 1), ((1, 1), 6, 0), ((2,), 1, 12)]:
        q = torch.randn(*shape, t_q, 4, generator=g)
        k, v = torch.randn(*shape, start + t_q, 4, generator=g), torch.randn(*shape, start + t_q, 4, generator=g)
        expect.close(attend(q, k, v, start=start), reference_attention(q, k, v, start=start),
                     f"causal_attention(q, k, v, start={start}) for q of shape {tuple(q.shape)}", atol=1e-4)


@check("08_fast_generation", "generate_cached", points=3, book=BOOK + "#cached-generation", hidden=True)
def test_generate_cached_hidden(sub):
    """generate_cached equals the uncached reference for varied models, prompts and sampling, one token a call."""
    generate_cached = generate_function(sub)
    with expect.blame(sub, "KVCache"):
        count_calls(sub, generate_cached)
    seed = test_generate_cached_hidden.autograder_check.seed
    cases = [(dict(n_kv_heads=1), torch.tensor([[9]]), dict(temperature=0), 20),
             (dict(n_kv_heads=4, n_layers=1), torch.tensor([[1, 2, 3, 4, 5, 6, 7], [7, 6, 5, 4, 3, 2, 1]]),
              dict(temperature=0.7, top_p=0.9), 15),
             (dict(n_kv_heads=2), torch.tensor([[4, 4, 4]]), dict(temperature=0, repetition_penalty=3.0), 10),
             (dict(n_kv_heads=2), torch.tensor([[2, 7]]), dict(temperature=1.3), 0)]
    with expect.blame(sub, "KVCache"):
        for i, (sizes, prompt, sampling, n) in enumerate(cases):
            reference = reference_model(seed=i + 10, **sizes)
            model = library_model(sub, reference)
            got = generate_cached(model, prompt, n, generator=torch.Generator().manual_seed(seed % 1000 + i), **sampling)
            expected = reference_generate(reference, prompt, n, generator=torch.Generator().manual_seed(seed % 1000 + i),
                                          **sampling)
            expect.equal(got, expected, f"generate_cached(model, idx, {n}, {', '.join(f'{k}={v}' for k, v in sampling.items())})",
                         prompt)


def count_calls(sub, generate_cached):
    """The model sees the whole prompt once, then one token per call, for a batch too."""
    model = library_model(sub, reference_model(seed=20))
    for prompt, n in ((torch.tensor([[5, 5], [6, 6]]), 7), (torch.tensor([[1] * 12]), 3)):
        recorder = sub.library("tinyllm.sampling:CallRecorder")(model)
        generate_cached(recorder, prompt, n, temperature=0)
        expect_calls(recorder.method("lengths"), prompt.shape[1], n)


@check("08_fast_generation", "beam_search", points=1, book=BOOK + "#beam-search", hidden=True)
def test_beam_search_hidden(sub):
    """beam_search equals the reference for varied widths, prompts and models."""
    search = sub.function("beam_search", ["model", "idx", "beam_width", "max_new_tokens"], forbid=GROUPS["decoding"])
    for i, (sizes, prompt, width, n) in enumerate([
            (dict(n_kv_heads=1), torch.tensor([[3]]), 2, 6),
            (dict(n_kv_heads=4), torch.tensor([[10, 20, 30, 40]]), 5, 7),
            (dict(n_kv_heads=2, n_layers=1), torch.tensor([[1, 1]]), 4, 1)]):
        reference = reference_model(seed=30 + i, **sizes)
        model = library_model(sub, reference)
        expect.equal(search(model, prompt, width, n), reference_beam_search(reference, prompt, width, n),
                     f"beam_search(model, idx, beam_width={width}, max_new_tokens={n})", prompt)
