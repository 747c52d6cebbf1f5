"""Public checks for 08_fast_generation: KVCache (and the attention that uses it), causal_attention,
generate_cached, beam_search. Their oracles: PyTorch, and "cached equals uncached"."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from autograder.grading import expect
from autograder.checks.test_06_tiny_gpt import expect_eval_without_gradients
from autograder.checks.test_07_modern_block import gqa_state, loaded, rope_by_complex_numbers
from autograder.sandbox.forbidden import GROUPS
from autograder.grading.registry import check
from tinyllm.model import GPTConfig, TinyLlama

BOOK = "book/11_fast_generation.html"
SMALL = dict(vocab_size=300, context_length=32, d_model=32, n_layers=2, n_heads=4, d_ff=64, dropout=0.0,
             arch="llama", n_kv_heads=2)


def length_of(cache) -> int:
    """The cache's ``length`` attribute, read inside the submission."""
    value = cache.method("__getattribute__", "length")
    expect.true(isinstance(value, int), f"KVCache.length should be an int (the tokens stored); it is "
                f"{expect.describe_tensor(value)}.")
    return value


def cached_attention_by_torch(state, x, chunks, n_heads, n_kv_heads, rope_start=None, mask_start=None):
    """What attention over a growing cache returns, chunk by chunk, from PyTorch's attention.

    ``rope_start`` and ``mask_start`` (functions of the chunk's start and length)
    default to the chunk's real start; the checks also compute the outputs of
    the usual mistakes with them, to name the one a submission made.
    """
    B, _, d_model = x.shape
    d_k = d_model // n_heads
    keys, values, outputs = [], [], []
    for a, b in chunks:
        T = b - a
        part = x[:, a:b]
        q = (part @ state["q_proj.weight"].T).view(B, T, n_heads, d_k).transpose(1, 2)
        k = (part @ state["k_proj.weight"].T).view(B, T, n_kv_heads, d_k).transpose(1, 2)
        v = (part @ state["v_proj.weight"].T).view(B, T, n_kv_heads, d_k).transpose(1, 2)
        offset = a if rope_start is None else rope_start(a, T)
        q, k = rope_by_complex_numbers(q, offset=offset), rope_by_complex_numbers(k, offset=offset)
        keys.append(k)
        values.append(v)
        K, V = torch.cat(keys, dim=-2), torch.cat(values, dim=-2)
        start = a if mask_start is None else mask_start(a, T)
        allowed = torch.arange(b)[None, :] <= start + torch.arange(T)[:, None]  # (T, b): key j visible to query i
        heads = F.scaled_dot_product_attention(q, K, V, attn_mask=allowed, enable_gqa=True)
        outputs.append(heads.transpose(1, 2).reshape(B, T, d_model) @ state["out_proj.weight"].T)
    return outputs


@check("08_fast_generation", "KVCache", points=1, book=BOOK + "#the-kv-cache", reference="tinyllm.attention:KVCache")
def test_KVCache_public(sub):
    """KVCache.update appends along the time axis and returns everything stored; length counts the tokens."""
    KVCache = sub.cls("KVCache")
    first, second = KVCache(), KVCache()
    empty = length_of(first), length_of(second)
    expect.true(empty == (0, 0), f"a new KVCache() reports length {max(empty)} before anything was stored in it; "
                "an empty cache stores 0 tokens.")
    g = torch.Generator().manual_seed(0)
    first.method("update", torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g))
    expect.true(length_of(second) == 0,
                f"storing 4 tokens in one KVCache changed the length of another, new and never updated, from 0 to "
                f"{length_of(second)}: the two share what they store. Each KVCache must keep its own keys and "
                "values: set them on self in __init__ (self.k = None), not in the class body, where one list or "
                "tensor is shared by every cache.")
    cache = KVCache()
    stored_k, stored_v = [], []
    for step, T in enumerate((4, 1, 3)):
        k, v = torch.randn(2, 3, T, 5, generator=g), torch.randn(2, 3, T, 5, generator=g)
        stored_k.append(k)
        stored_v.append(v)
        result = cache.method("update", k, v)
        expect.true(isinstance(result, (tuple, list)) and len(result) == 2,
                    f"KVCache.update(k, v) should return (k_all, v_all); it returned {expect.describe_tensor(result)}.")
        what = f"update number {step + 1} (of {T} new tokens, after {sum(t.shape[-2] for t in stored_k[:-1])})"
        hint = "Append along the time axis, dim -2: torch.cat((stored, new), dim=-2), and return all of it."
        expect.close(result[0], torch.cat(stored_k, dim=-2), f"the keys KVCache.update returned at {what}", hint=hint)
        expect.close(result[1], torch.cat(stored_v, dim=-2), f"the values KVCache.update returned at {what}", hint=hint)
        expect.equal(length_of(cache), sum(t.shape[-2] for t in stored_k), f"KVCache.length after {what}",
                     hint="length is the number of positions stored: the size of dim -2.")


@check("08_fast_generation", "KVCache", points=2, book=BOOK + "#the-causal-mask-over-the-cache")
def test_KVCache_attention_public(sub):
    """GroupedQueryAttention fed in chunks through a cache gives the outputs of the whole sequence."""
    GQA = sub.cls("GroupedQueryAttention", ["d_model", "n_heads", "n_kv_heads"], forbid=GROUPS["grouped_query"])
    KVCache = sub.cls("KVCache")
    n_heads, n_kv_heads, d_model = 4, 2, 16
    state = gqa_state(d_model, n_heads, n_kv_heads, seed=1)
    module = loaded(GQA, state, d_model, n_heads, n_kv_heads)
    x = torch.randn(2, 10, d_model, generator=torch.Generator().manual_seed(2))
    chunks = [(0, 5), (5, 6), (6, 7), (7, 10)]  # a prompt of 5, two single tokens, then 3 at once
    expected = cached_attention_by_torch(state, x, chunks, n_heads, n_kv_heads)
    with expect.blame(sub, "KVCache", "causal_attention"):
        expect.close(module(x), torch.cat(expected, dim=1), "GroupedQueryAttention(16, 4, 2)(x) without a cache", x,
                     atol=1e-4, hint="Without a cache, forward(x) is exercise 7's attention.")
        cache = KVCache()
        for a, b in chunks:
            got = module(x[:, a:b], cache=cache)
            stored = length_of(cache)
            hint = ("The cache should hold every token fed so far. Call cache.update(k, v) exactly once per "
                    "forward, with this call's new keys and values.")
            if stored == 2 * b - (b - a) or stored == 2 * b:
                hint = f"The cache grows twice per step: after {b} tokens it holds {stored}. " + hint
            expect.equal(stored, b, f"the cache's length after feeding tokens {a}..{b - 1}", hint=hint)
            what = f"GroupedQueryAttention(x[:, {a}:{b}], cache=cache) after {a} cached tokens"
            hint = ("A query at absolute position p sees the keys 0..p: the cached ones and the new ones up to "
                    "itself. New positions start at cache.length (read it before the update).")
            right = expected[chunks.index((a, b))]
            if isinstance(got, torch.Tensor) and got.shape == right.shape and not torch.allclose(got, right, atol=1e-4):
                mistakes = {
                    "RoPE restarted at position 0 for the new tokens: rotate q and k with offset=cache.length "
                    "(the number of tokens before them), not 0.": dict(rope_start=lambda s, T: 0),
                    "The new tokens cannot see the cached prompt: the mask treated query i as position i, "
                    "not cache.length + i.": dict(mask_start=lambda s, T: 0),
                    "The new tokens see the future: query i of this call sits at position cache.length + i "
                    "(the length before the update) and may not see the new keys after it.":
                        dict(mask_start=lambda s, T: s + T),
                }
                for text, variant in mistakes.items():
                    wrong = cached_attention_by_torch(state, x, chunks, n_heads, n_kv_heads, **variant)
                    if torch.allclose(got, wrong[chunks.index((a, b))], atol=1e-4):
                        hint = text
                        break
            expect.close(got, right, what, atol=1e-4, hint=hint)
    one = gqa_state(d_model, n_heads, 1, seed=3)
    expect.close(loaded(GQA, one, d_model, n_heads, 1)(x), cached_attention_by_torch(one, x, [(0, 10)], n_heads, 1)[0],
                 "GroupedQueryAttention(16, 4, 1)(x): one key/value head for all (multi-query attention)", x,
                 atol=1e-4, hint="n_kv_heads = 1 is allowed: every query head reads the one key/value head.")


@check("08_fast_generation", "KVCache", points=1, book=BOOK + "#the-causal-mask-over-the-cache")
def test_KVCache_attention_errors_public(sub):
    """GroupedQueryAttention raises ValueError when n_heads is not a multiple of n_kv_heads (the error contract)."""
    GQA = sub.cls("GroupedQueryAttention", ["d_model", "n_heads", "n_kv_heads"], forbid=GROUPS["grouped_query"])
    expect.raises(lambda: GQA(16, 4, 3), ValueError, "GroupedQueryAttention(16, 4, 3) (4 heads do not split into 3 groups)")


@check("08_fast_generation", "causal_attention", points=2, book=BOOK + "#the-causal-mask-over-the-cache",
       reference="tinyllm.attention:causal_attention")
def test_causal_attention_public(sub):
    """causal_attention(q, k, v, start) matches F.scaled_dot_product_attention with the offset causal mask."""
    attend = sub.function("causal_attention", ["q", "k", "v", "start"], forbid=GROUPS["causal_attention"])
    g = torch.Generator().manual_seed(3)
    for t_q, start in ((5, 0), (1, 4), (3, 4), (2, 3)):
        batch = (2, 2) if t_q != 2 else (3,)  # (..., T, d_k): any leading dimensions
        q, k, v = (torch.randn(*batch, n, 8, generator=g) for n in (t_q, start + t_q, start + t_q))
        allowed = torch.ones(t_q, start + t_q, dtype=torch.bool).tril(diagonal=start)
        got = attend(q, k, v, start=start)
        hint = "Query i sits at position start + i and sees the keys 0 .. start + i; mask the rest with -inf."
        if isinstance(got, torch.Tensor) and got.shape == q.shape and start > 0:
            if torch.allclose(got, F.scaled_dot_product_attention(q, k, v, attn_mask=torch.ones_like(allowed).tril()),
                              atol=1e-4):
                hint = "Your mask ignores start: query i is at position start + i, so it sees the start cached keys too."
            elif torch.allclose(got, F.scaled_dot_product_attention(q, k, v), atol=1e-4):
                hint = "Nothing is masked: query i must not see the keys after position start + i."
        expect.close(got, F.scaled_dot_product_attention(q, k, v, attn_mask=allowed),
                     f"causal_attention(q, k, v, start={start}) with {t_q} queries and {start + t_q} keys", atol=1e-4,
                     hint=hint)


def reference_model(seed: int, **sizes) -> TinyLlama:
    torch.manual_seed(seed)
    return TinyLlama(GPTConfig(**{**SMALL, **sizes})).eval()


def library_model(sub, reference: TinyLlama):
    """The book's TinyLlama inside the submission's process, carrying the reference weights."""
    config = sub.library("tinyllm.model:GPTConfig")(**reference.config.to_dict())
    model = sub.library("tinyllm.model:TinyLlama")(config)
    model.load_state_dict({k: v.detach().clone() for k, v in reference.state_dict().items()})
    return model.eval()


def generate_function(sub):
    return sub.function("generate_cached", ["model", "idx", "max_new_tokens"], forbid=GROUPS["decoding"])


@check("08_fast_generation", "generate_cached", points=1, book=BOOK + "#cached-generation")
def test_generate_cached_public(sub):
    """generate_cached gives the ids of the uncached generate: greedy, and sampling with the same generator."""
    from tinyllm.sampling import generate

    generate_cached = generate_function(sub)
    reference = reference_model(seed=4)
    model = library_model(sub, reference)
    prompt = torch.tensor([[5, 17, 42], [1, 2, 3]])
    with expect.blame(sub, "KVCache"):
        expect.equal(generate_cached(model, prompt, 12, temperature=0), generate(reference, prompt, 12, temperature=0),
                     "generate_cached(model, idx, 12, temperature=0)", prompt,
                     hint="The cached generate must choose exactly the tokens the uncached one chooses.")
        sampled = generate_cached(model, prompt, 10, temperature=1.0, top_k=50, generator=torch.Generator().manual_seed(5))
        expect.equal(sampled, generate(reference, prompt, 10, temperature=1.0, top_k=50,
                                       generator=torch.Generator().manual_seed(5)),
                     "generate_cached(model, idx, 10, temperature=1.0, top_k=50, generator=seeded)", prompt,
                     hint="Draw each token with sample_next_token(logits, **sampling), passing the generator, "
                     "once per new token, in the same order as generate.")
        fits = torch.tensor([[2, 3]])
        width = SMALL["context_length"] - 2
        expect.equal(generate_cached(model, fits, width, temperature=0), generate(reference, fits, width, temperature=0),
                     f"generate_cached(model, idx, {width}, temperature=0) for a prompt of 2 tokens, filling the "
                     f"context of {SMALL['context_length']} exactly", fits,
                     hint="A prompt and new tokens that together fill context_length fit: only more is an error.")
        repeat = torch.tensor([[7, 7, 9, 7]])
        expect.equal(generate_cached(model, repeat, 8, repetition_penalty=5.0, temperature=0),
                     generate(reference, repeat, 8, repetition_penalty=5.0, temperature=0),
                     "generate_cached(model, idx, 8, repetition_penalty=5.0, temperature=0)", repeat,
                     hint="Before choosing each token, pass the last position's logits through "
                     "apply_repetition_penalty(logits, idx, repetition_penalty) with all the ids so far: the "
                     "prompt and every token chosen before.")


@check("08_fast_generation", "generate_cached", points=1, book=BOOK + "#cached-generation")
def test_generate_cached_errors_public(sub):
    """generate_cached raises ValueError when the prompt and the new tokens overflow context_length (the error
    contract, checked apart from the values)."""
    generate_cached = generate_function(sub)
    model = library_model(sub, reference_model(seed=4))
    fits = torch.tensor([[2, 3]])
    width = SMALL["context_length"] - 2
    expect.raises(lambda: generate_cached(model, fits, width + 1, temperature=0), ValueError,
                  f"generate_cached(model, idx, {width + 1}) for a prompt of 2 tokens and a context of "
                  f"{SMALL['context_length']} (one token too many for the cache)")


@check("08_fast_generation", "generate_cached", points=2, book=BOOK + "#cached-generation")
def test_generate_cached_calls_public(sub):
    """generate_cached runs the prompt through the model once, then one new token per call."""
    generate_cached = generate_function(sub)
    model = library_model(sub, reference_model(seed=6))
    recorder = sub.library("tinyllm.sampling:CallRecorder")(model)
    recorder.method("train")  # handed over in training mode, as a model is after a training loop
    prompt = torch.tensor([[3, 1, 4, 1, 5, 9]])
    with expect.blame(sub, "KVCache"):
        generate_cached(recorder, prompt, 5, temperature=0)
    expect_calls(recorder.method("lengths"), prompt_length=6, new_tokens=5)
    expect_eval_without_gradients(recorder, "generate_cached(model, idx, 5) on a model in training mode")


def expect_calls(lengths, prompt_length: int, new_tokens: int) -> None:
    """The model saw the prompt once, then each new token but the last alone: max_new_tokens calls in all."""
    expected = [prompt_length] + [1] * (new_tokens - 1) if new_tokens else []
    if lengths == expected:
        return
    what = (f"generate_cached(model, idx, {new_tokens}) on a prompt of {prompt_length} tokens called the model "
            f"{len(lengths)} times, with inputs of lengths {lengths}; expected {expected} ({new_tokens} calls).")
    hint = ("Call the model once on the prompt (with the caches), then once per new token on that token alone, "
            "shape (B, 1): its keys and values join the caches, the earlier ones are read from them.")
    if len(lengths) >= 2 and lengths[1] > 1:
        hint = ("After the first call your generate_cached feeds the model more than the new token: it "
                "recomputes the prompt every step, so the cache saves nothing. " + hint)
    elif lengths[:len(expected)] == expected and len(lengths) > len(expected):
        hint = (f"The calls after the {new_tokens}th are extra: the {new_tokens}th call's logits choose the last "
                "token, and nothing reads the model after it.")
    raise expect.CheckFailure(f"{what} {hint}")


def total_logprob(model: TinyLlama, ids: torch.Tensor, start: int) -> float:
    from tinyllm.sampling import continuation_logprob

    return continuation_logprob(model, ids, start).item()


@check("08_fast_generation", "beam_search", points=2, book=BOOK + "#beam-search")
def test_beam_search_public(sub):
    """beam_search: width 1 is greedy; wider beams find the continuations the book's beam finds."""
    from tinyllm.sampling import beam_search, generate

    search = sub.function("beam_search", ["model", "idx", "beam_width", "max_new_tokens"], forbid=GROUPS["decoding"])
    reference = reference_model(seed=8)
    model = library_model(sub, reference)
    prompt = torch.tensor([[8, 6, 7]])
    expect.equal(search(model, prompt, 1, 8), generate(reference, prompt, 8, temperature=0),
                 "beam_search(model, idx, beam_width=1, max_new_tokens=8)", prompt,
                 hint="With one beam, keep the single best extension each step: greedy decoding.")
    for prompt, width in ((torch.tensor([[8, 6, 7]]), 2), (torch.tensor([[3]]), 3)):
        expected = beam_search(reference, prompt, width, 8)
        got = search(model, prompt, width, 8)
        hint = ("Score every candidate by its TOTAL log-probability (its beam's score plus the new token's "
                "log-probability), keep the beam_width best of all candidates, and return the best at the end.")
        if isinstance(got, torch.Tensor) and got.shape == expected.shape and got.dtype == expected.dtype:
            found, best = total_logprob(reference, got, prompt.shape[1]), total_logprob(reference, expected, prompt.shape[1])
            if found < best - 1e-4:
                hint = (f"Your continuation has a total log-probability of {found:.4f}; the beam finds one of "
                        f"{best:.4f}. " + hint)
        expect.equal(got, expected, f"beam_search(model, idx, beam_width={width}, max_new_tokens=8)", prompt, hint=hint)
    sharp = reference_model(seed=9)
    with torch.no_grad():  # weights 8 times larger: peaked distributions, whose normalisers differ from beam to beam
        for parameter in sharp.parameters():
            parameter.mul_(8.0)
    prompt = torch.tensor([[8, 6, 7]])
    expect.equal(search(library_model(sub, sharp), prompt, 3, 8), beam_search(sharp, prompt, 3, 8),
                 "beam_search(model, idx, beam_width=3, max_new_tokens=8) on a model with peaked next-token "
                 "distributions", prompt, hint="Each kept sequence's next-token log-probabilities are "
                 "log_softmax of its own logits, over the vocabulary (the last dimension), added to its total.")
    long_prompt = torch.randint(0, SMALL["vocab_size"], (1, SMALL["context_length"] - 2),
                                generator=torch.Generator().manual_seed(9))
    expect.equal(search(model, long_prompt, 2, 5), beam_search(reference, long_prompt, 2, 5),
                 f"beam_search(model, idx, beam_width=2, max_new_tokens=5) on a prompt of "
                 f"{SMALL['context_length'] - 2} tokens (the sequences outgrow the context of "
                 f"{SMALL['context_length']})", hint="Feed the model only the last context_length tokens of "
                 "each kept sequence.")
