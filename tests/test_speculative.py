"""Chapter 14's speculative decoding: the rule exactly, the code by sampling (and each wrong rule failing), the loop."""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from autograder.grading.api import CheckFailure
from autograder.checks.test_11_inference import Z_LIMIT, check_distribution, z_scores
from tinyllm import speculative
from tinyllm.attention import KVCache
from tinyllm.model import GPTConfig, TinyGPT, TinyLlama
from tinyllm.ngram import NGramLM
from tinyllm.quantize import quantize_model
from tinyllm.sampling import CallRecorder, generate, generate_cached, sample_next_token
from tinyllm.speculative import (RULES, NGramDraft, accept_distribution, crop, exact_output_distribution,
                                 sampling_probs, sequence_distribution, speculative_accept, speculative_generate,
                                 total_variation)

P = torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.2, 0.5, 0.3]], dtype=torch.float64)
Q = torch.tensor([[0.2, 0.3, 0.5], [0.5, 0.4, 0.1]], dtype=torch.float64)


def marginal(outcomes: dict, position: int, vocab: int = 3) -> list[float]:
    reach = {out: w for out, w in outcomes.items() if len(out) > position}
    total = sum(reach.values())
    return [sum(w for out, w in reach.items() if out[position] == y) / total for y in range(vocab)]


def test_the_rule_writes_the_targets_distribution_at_every_position_and_the_mistakes_do_not():
    for rule in RULES:
        outcomes = accept_distribution(P, Q, rule)
        assert math.isclose(sum(outcomes.values()), 1.0, abs_tol=1e-12)
        gap = max(max(abs(a - b) for a, b in zip(marginal(outcomes, j), P[j].tolist())) for j in range(3))
        assert (gap < 1e-12) == (rule == "correct"), (rule, gap)


def toy_models(seed: int):
    g = torch.Generator().manual_seed(seed)
    target = torch.softmax(2 * torch.randn(3, 3, generator=g, dtype=torch.float64), dim=-1)
    draft = torch.softmax(2 * torch.randn(3, 3, generator=g, dtype=torch.float64), dim=-1)
    return (lambda seq: target[seq[-1]]), (lambda seq: draft[seq[-1]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_whole_generations_are_the_targets_exactly(seed):
    target, draft = toy_models(seed)
    alone = sequence_distribution(target, (0,), 4)
    for k in (1, 2, 3, 5):
        for rule in RULES:
            distance = total_variation(exact_output_distribution(target, draft, (0,), 4, k, rule), alone)
            assert (distance < 1e-12) == (rule == "correct"), (k, rule, distance)


def test_a_draft_equal_to_the_target_is_always_accepted():
    target, _ = toy_models(3)
    assert total_variation(exact_output_distribution(target, target, (1,), 4, 2), sequence_distribution(target, (1,), 4)) < 1e-12
    assert set(map(len, accept_distribution(P, P[:2]))) == {3}  # every output: both drafts and one more


def mutant(old: str, new: str):
    """speculative_accept with one line of its source changed: a usual mistake, as code."""
    source = inspect.getsource(speculative_accept)
    assert old in source, old
    namespace = dict(vars(speculative))
    exec(compile(source.replace(old, new), "<mutant>", "exec"), namespace)
    return namespace["speculative_accept"]


MUTANTS = {  # the wrong rules of the chapter and the exercise, written as code
    "accept with q/p": ("accepted = u * q[rows, draft] < p[rows, draft]", "accepted = u * p[rows, draft] < q[rows, draft]"),
    "resample from p": ("residual = torch.clamp(p[n] - q[n], min=0)", "residual = p[n]"),
    "inverse CDF, not renormalised": (
        "torch.multinomial(residual, 1, generator=generator)])",
        "torch.searchsorted(torch.cumsum(residual, 0), torch.rand(1, generator=generator)).clamp(max=len(residual) - 1)])"),
    "bonus from p[k-1]": ("torch.multinomial(p[k], 1, generator=generator)])",
                          "torch.multinomial(p[k - 1], 1, generator=generator)])"),
    "no bonus token": ("return torch.cat([draft, torch.multinomial(p[k], 1, generator=generator)])", "return draft"),
}
RIGHT_VARIANTS = {  # other ways to write the rule, which must pass
    "inverse CDF, normalised": (
        "torch.multinomial(residual, 1, generator=generator)])",
        "torch.searchsorted(torch.cumsum(residual / residual.sum(), 0), torch.rand(1, generator=generator))"
        ".clamp(max=len(residual) - 1)])"),
    "residual normalised before multinomial": ("torch.multinomial(residual, 1,", "torch.multinomial(residual / residual.sum(), 1,"),
}


def sample(fn, n: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    counts = {}
    p, q = P.float(), Q.float()
    for i in range(n):
        draft = torch.multinomial(q, 1, generator=g)[:, 0]
        out = tuple(fn(p, q, draft, generator=torch.Generator().manual_seed(seed * 1000 + i)).tolist())
        counts[out] = counts.get(out, 0) + 1
    return counts


def assert_samples_the_rule(counts: dict, what: str) -> None:
    """No output the rule cannot write, no count beyond Z_LIMIT deviations; and the students' check agrees."""
    p, q = P.float(), Q.float()
    assert set(counts) <= set(accept_distribution(p, q)), what
    worst = max(abs(z) for _, z, _, _ in z_scores(counts, p, q))
    assert worst <= Z_LIMIT, (what, worst)
    check_distribution(counts, p, q, what)


def test_the_code_samples_the_exact_distribution():
    assert_samples_the_rule(sample(speculative_accept, 3000, seed=0), "the library's rule")


@pytest.mark.parametrize("name", list(RIGHT_VARIANTS))
def test_other_correct_ways_of_drawing_pass(name):
    assert_samples_the_rule(sample(mutant(*RIGHT_VARIANTS[name]), 3000, seed=1), name)


@pytest.mark.parametrize("name", list(MUTANTS))
def test_the_distribution_test_fails_each_wrong_rule(name):
    with pytest.raises(CheckFailure) as failure:
        check_distribution(sample(mutant(*MUTANTS[name]), 3000, seed=2), P.float(), Q.float(), name)
    assert "It looks like" in failure.value.message  # and it says which mistake


def test_sampling_probs_is_what_sample_next_token_draws_from():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 3
    for settings in (dict(temperature=1.0), dict(temperature=0.7, top_k=5), dict(temperature=1.3, top_p=0.8),
                     dict(temperature=0.9, top_k=10, top_p=0.5)):
        ours = torch.multinomial(sampling_probs(logits, **settings), 1, generator=torch.Generator().manual_seed(1))[:, 0]
        theirs = sample_next_token(logits, generator=torch.Generator().manual_seed(1), **settings)
        assert torch.equal(ours, theirs), settings
    greedy = sampling_probs(logits, temperature=0)
    assert torch.equal(greedy.argmax(-1), logits.argmax(-1)) and torch.equal(greedy.sum(-1), torch.ones(4))


def models(seed: int, **sizes):
    """A target and a draft whose next tokens vary (random weights scaled up) and sometimes agree."""
    torch.manual_seed(seed)
    config = dict(vocab_size=280, context_length=40, d_model=32, n_layers=2, n_heads=4, d_ff=64, dropout=0.0,
                  arch="llama", n_kv_heads=2) | sizes
    target = TinyLlama(GPTConfig(**config)).eval()
    with torch.no_grad():
        for name, w in target.named_parameters():
            if name.startswith("blocks.") and w.dim() == 2:
                w.mul_(10)
    draft = TinyLlama(GPTConfig(**config)).eval()
    draft.load_state_dict(target.state_dict())
    with torch.no_grad():
        for w in draft.parameters():
            w.add_(torch.randn(w.shape) * 0.1 * w.std())
    return target, draft


@pytest.mark.parametrize("k", [1, 3, 8])
def test_greedy_speculative_decoding_is_the_targets_greedy_text(k):
    target, draft = models(0)
    gpt_draft = TinyGPT(GPTConfig(vocab_size=280, context_length=40, d_model=16, n_layers=1, n_heads=2, d_ff=32))
    bigram = NGramDraft(NGramLM(2, 280).fit(torch.randint(0, 280, (500,))), 40)
    prompt = torch.tensor([[5, 9, 200, 7]])
    expected = generate(target, prompt, 20, temperature=0)
    for d in (draft, gpt_draft.eval(), bigram, quantize_model(TinyLlama(target.config), 4, 8)):
        assert torch.equal(speculative_generate(target, d, prompt, 20, k=k, temperature=0), expected)
    quantized = quantize_model(TinyLlama(target.config).eval(), 8)
    quantized.load_state_dict(quantize_model(models(0)[0], 8).state_dict())
    assert torch.equal(speculative_generate(quantized, draft, prompt, 20, k=k, temperature=0),
                       generate(quantized, prompt, 20, temperature=0))  # a quantized target reads its caches too


def test_one_target_call_per_round_and_exactly_the_tokens_asked_for():
    target, _ = models(1)
    prompt = torch.tensor([[1, 2, 3]])
    for n, k in ((12, 3), (10, 4), (1, 4), (0, 2)):
        recorder = CallRecorder(target)
        out = speculative_generate(recorder, target, prompt, n, k=k, temperature=0)
        assert out.shape == (1, 3 + n)
        assert len(recorder.lengths()) == math.ceil(n / (k + 1))  # a draft that always agrees: k + 1 per call
        assert recorder.lengths()[:1] in ([], [3 + min(k, n - 1)])  # the prompt and the first round's draft at once


def test_sampling_writes_only_tokens_the_target_could_sample():
    target, draft = models(2)
    prompt = torch.tensor([[11, 12, 13]])
    out = speculative_generate(target, draft, prompt, 25, k=3, temperature=1.0, top_k=3,
                               generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        allowed = sampling_probs(target(out[:, :-1])[0][0], top_k=3) > 0
    assert allowed[torch.arange(2, 27), out[0, 3:]].all()


def test_the_first_sampled_token_has_the_targets_distribution():
    """Statistical, on models: 600 generations of 2 tokens with top_k=3 (three possible first tokens)."""
    target, draft = models(3, d_model=16, n_heads=2, n_kv_heads=1, n_layers=1)
    prompt = torch.tensor([[4, 8]])
    counts, n = torch.zeros(280), 600
    for i in range(n):
        out = speculative_generate(target, draft, prompt, 2, k=1, temperature=1.0, top_k=3,
                                   generator=torch.Generator().manual_seed(i))
        counts[out[0, 2]] += 1
    with torch.no_grad():
        p = sampling_probs(target(prompt)[0][0, -1], top_k=3).double()
    z = (counts - n * p) / torch.sqrt(n * p * (1 - p)).clamp(min=1e-12)
    assert counts[p == 0].sum() == 0 and z[p > 0].abs().max() < 5.5


def test_crop_forgets_the_rejected_positions():
    cache = KVCache()
    cache.update(torch.randn(1, 2, 7, 4), torch.randn(1, 2, 7, 4))
    kept = cache.k[..., :5, :].clone()
    crop([cache], 5)
    assert cache.length == 5 and torch.equal(cache.k, kept)
    crop([cache], 9)  # longer than what is held: nothing changes
    assert cache.length == 5


def test_bad_arguments_are_named():
    target, draft = models(4)
    with pytest.raises(ValueError, match="one sequence"):
        speculative_generate(target, draft, torch.zeros(2, 3, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="k must be at least 1"):
        speculative_generate(target, draft, torch.zeros(1, 3, dtype=torch.long), 4, k=0)
    with pytest.raises(ValueError, match="context_length"):
        speculative_generate(target, draft, torch.zeros(1, 30, dtype=torch.long), 20)
