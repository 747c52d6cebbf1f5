"""Speculative decoding: a small draft model proposes tokens, the target checks them in one call (chapter 14).

Leviathan et al. (2023) and Chen et al. (2023): the draft model proposes k
tokens, one call of the target model scores all of them, and an
accept/reject rule keeps a prefix of them plus one token of the target's
own, so that every token written is distributed exactly as the target alone
would have sampled it. Each target call then writes between 1 and k + 1
tokens.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import Tensor, nn

from tinyllm.attention import KVCache
from tinyllm.model import with_kv_cache
from tinyllm.ngram import NGramLM
from tinyllm.sampling import top_k_filter, top_p_filter
from tinyllm.softmax import softmax


def sampling_probs(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                   top_p: float | None = None) -> Tensor:
    """The distribution :func:`~tinyllm.sampling.sample_next_token` draws from: logits (..., V) -> (..., V).

    Divide by the temperature, filter by top-k and top-p, softmax; temperature
    0 (greedy) is the one-hot distribution of the largest logit. So
    ``torch.multinomial(sampling_probs(z, **s), 1)`` draws what
    ``sample_next_token(z, **s)`` draws, which a test checks.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return torch.zeros_like(logits).scatter(-1, logits.argmax(dim=-1, keepdim=True), 1.0)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return softmax(logits, dim=-1)


def speculative_accept(p: Tensor, q: Tensor, draft: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Keep a prefix of the draft tokens and add one token, so that every output token is distributed as the target's.

    p (k + 1, V): the target's probabilities at the k drafted positions and at
    the one after them; q (k, V): the draft model's probabilities at the k
    drafted positions; draft (k,): the ids the draft model drew from q. Token
    i is accepted with probability min(1, p_i(x) / q_i(x)). At the first
    rejection the rest of the draft is dropped and a token is drawn instead
    from the residual max(p_i - q_i, 0), normalised; when all k are accepted,
    one more token is drawn from p_k. Returns (n + 1,) ids: the n accepted
    draft tokens and the one drawn.
    """
    k = draft.shape[0]
    rows = torch.arange(k)
    u = torch.rand(k, generator=generator)  # one uniform in [0, 1) per drafted token
    accepted = u * q[rows, draft] < p[rows, draft]  # (k,): u < p / q, without dividing
    n = int(accepted.long().cumprod(dim=0).sum())  # the accepted prefix ends at the first rejection
    if n == k:  # every draft token accepted: one more token from p_k
        return torch.cat([draft, torch.multinomial(p[k], 1, generator=generator)])
    residual = torch.clamp(p[n] - q[n], min=0)  # (V,); torch.multinomial normalises it
    if residual.sum() <= 0:  # p <= q everywhere: only float rounding can reject then
        residual = p[n]
    return torch.cat([draft[:n], torch.multinomial(residual, 1, generator=generator)])


def extend(model: nn.Module, caches: list[KVCache], ids: Tensor) -> Tensor:
    """Logits of ``model`` for the tokens of ``ids`` (1, T) that its caches do not hold yet: (1, T_new, V)."""
    seen = caches[0].length if caches else 0
    logits, _ = model(ids[:, seen:], caches=caches)
    return logits


def crop(caches: list[KVCache], length: int) -> None:
    """Forget the keys and values after the first ``length`` positions: the tokens that were rejected."""
    for cache in caches:
        if cache.length > length:
            cache.k, cache.v = cache.k[..., :length, :], cache.v[..., :length, :]


@torch.no_grad()
def speculative_generate(target: nn.Module, draft: nn.Module, idx: Tensor, max_new_tokens: int, k: int = 4,
                         **sampling) -> Tensor:
    """Extend idx (1, T) by max_new_tokens ids from ``target``, drafted k at a time by ``draft`` -> (1, T + max_new_tokens).

    Each round the draft model proposes up to k tokens, one call at a time,
    sampling from its own distribution q (``sampling``: temperature, top_k,
    top_p, generator, applied to both models); one call of the target on all of
    them gives p at every drafted position and one more, and
    :func:`speculative_accept` keeps what the target would have written. The
    last round drafts fewer, so exactly max_new_tokens are written. With
    temperature 0 the output is the target's greedy text. Both models keep a KV
    cache; the rejected tokens' keys and values are cropped off. The prompt and
    the new tokens must fit in both models' context.
    """
    if idx.shape[0] != 1:
        raise ValueError(f"speculative_generate extends one sequence, got a batch of {idx.shape[0]}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    for name, model in (("target", target), ("draft", draft)):
        if idx.shape[1] + max_new_tokens > model.config.context_length:
            raise ValueError(f"prompt ({idx.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds the {name}'s "
                             f"context_length {model.config.context_length}")
    generator = sampling.pop("generator", None)
    target_model, draft_model = with_kv_cache(target), with_kv_cache(draft)
    modes = target_model.training, draft_model.training
    target_model.eval()
    draft_model.eval()
    target_caches = [KVCache() for _ in range(target_model.config.n_layers)]
    draft_caches = [KVCache() for _ in range(draft_model.config.n_layers)]
    end = idx.shape[1] + max_new_tokens
    out = idx
    while out.shape[1] < end:
        n_draft = min(k, end - out.shape[1] - 1)  # the round writes at most n_draft + 1 tokens
        proposed, q_rows = out, []
        for _ in range(n_draft):
            q = sampling_probs(extend(draft_model, draft_caches, proposed)[0, -1], **sampling)  # (V,)
            token = torch.multinomial(q, 1, generator=generator)
            proposed = torch.cat([proposed, token[None]], dim=1)
            q_rows.append(q)
        logits = extend(target_model, target_caches, proposed)  # (1, tokens new to the target, V)
        p = sampling_probs(logits[0, -(n_draft + 1):], **sampling)  # (n_draft + 1, V)
        q = torch.stack(q_rows) if q_rows else p[:0]
        kept = speculative_accept(p, q, proposed[0, out.shape[1]:], generator)
        out = torch.cat([out, kept[None]], dim=1)
        crop(target_caches, out.shape[1] - 1)  # the newest token has not been through either model yet
        crop(draft_caches, out.shape[1] - 1)
    target_model.train(modes[0])
    draft_model.train(modes[1])
    return out


# --------------------------------------------------------------------------- a draft with no training


class NGramDraft(nn.Module):
    """A bigram model (:class:`~tinyllm.ngram.NGramLM`, counted, not trained) read as a language model.

    ``forward(idx, targets=None, caches=None)`` returns the log-probabilities of
    p(next | previous token) as logits, (B, T, V), one table look-up per
    position; it needs no cache (``caches`` is ignored). The smallest possible
    draft: its cost per call is next to nothing.
    """

    def __init__(self, ngram: NGramLM, context_length: int):
        super().__init__()
        from types import SimpleNamespace

        if ngram.order != 2:
            raise ValueError("the draft reads the previous token: it needs a bigram model (order 2)")
        self.register_buffer("log_probs", ngram.probs().log().float())  # (V, V)
        self.config = SimpleNamespace(context_length=context_length, n_layers=0, vocab_size=ngram.vocab_size)

    def forward(self, idx: Tensor, targets: Tensor | None = None, caches=None) -> tuple[Tensor, None]:
        return self.log_probs[idx], None


# --------------------------------------------------------------------------- exact output distributions


RULES = ("correct", "accept with q/p", "resample from p", "inverse CDF, not renormalised", "bonus from p[k-1]")


def rule_step(rule: str, p: Tensor, q: Tensor, x: int) -> tuple[float, Tensor]:
    """(acceptance probability of draft token x, distribution of the token drawn on rejection) under ``rule``.

    p, q (V,) in float64. "correct" is Leviathan et al.'s rule; the others are
    the usual mistakes: accepting with min(1, q/p); drawing the replacement
    from p instead of the residual; drawing it by inverse CDF from the
    residual without dividing by its sum, so that the mass it lacks falls on
    the last token (a search past the end clamped to V - 1). The bonus-token
    mistake is not a step: see :func:`exact_output_distribution`.
    """
    if rule == "accept with q/p":
        accept = min(1.0, float(q[x] / p[x])) if p[x] > 0 else 1.0
    else:
        accept = min(1.0, float(p[x] / q[x]))
    residual = torch.clamp(p - q, min=0)
    if rule == "resample from p":
        resample = p
    elif rule == "inverse CDF, not renormalised":
        resample = residual.clone()
        resample[-1] += 1 - residual.sum()
    else:
        resample = residual / residual.sum() if residual.sum() > 0 else p
    return accept, resample


def accept_distribution(p: Tensor, q: Tensor, rule: str = "correct") -> dict[tuple, float]:
    """The exact distribution of :func:`speculative_accept`'s output when draft token i is drawn from q[i].

    p (k + 1, V) and q (k, V) are fixed rows (the target's and the draft's
    probabilities at each position), as in one call of the accept step.
    Every draft and every accept/reject outcome is enumerated: V^k drafts.
    Returns {output ids: probability}. Under the correct rule the first
    output token is distributed as p[0], and the token at position j, given
    that the output is longer than j, as p[j].
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    p, q = p.double(), q.double()
    k, vocab = q.shape[0], p.shape[1]
    result: dict[tuple, float] = {}

    def add(key: tuple, weight: float) -> None:
        if weight > 0:
            result[key] = result.get(key, 0.0) + weight

    for drafted in itertools.product(range(vocab), repeat=k):
        reach = float(torch.prod(q[torch.arange(k), list(drafted)])) if k else 1.0
        if reach == 0:
            continue
        for i, x in enumerate(drafted):
            accept, resample = rule_step(rule, p[i], q[i], x)
            for y in range(vocab):
                add(drafted[:i] + (y,), reach * (1 - accept) * float(resample[y]))
            reach *= accept
        bonus = p[k - 1] if rule == "bonus from p[k-1]" and k else p[k]
        for y in range(vocab):
            add(drafted + (y,), reach * float(bonus[y]))
    return result


def exact_output_distribution(target: Callable[[tuple], Tensor], draft: Callable[[tuple], Tensor], prompt: tuple,
                              n_new: int, k: int, rule: str = "correct") -> dict[tuple, float]:
    """The exact probability of every sequence of ``n_new`` tokens speculative decoding can write after ``prompt``.

    ``target`` and ``draft`` map a sequence (a tuple of ids) to the next-token
    distribution (V,) of the target and the draft model: small hand-made
    models, so that every draft and every accept/reject outcome can be
    enumerated. Rounds are as in :func:`speculative_generate` (the last one
    drafts fewer). ``rule`` is one of :data:`RULES`; "bonus from p[k-1]" draws
    the bonus token from the target's distribution at the last drafted
    position instead of the one after it. Returns {new tokens: probability}.
    What follows a sequence depends only on the sequence, so each is
    expanded once (dynamic programming over the sequences written so far).
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    end = len(prompt) + n_new
    memo: dict[tuple, dict[tuple, float]] = {}

    def one_round(seq: tuple) -> dict[tuple, float]:
        """{tokens this round writes: probability} after ``seq``."""
        written: dict[tuple, float] = {}

        def add(key: tuple, weight: float) -> None:
            if weight > 0:
                written[key] = written.get(key, 0.0) + weight

        n_draft = min(k, end - len(seq) - 1)
        vocab = len(target(seq))
        for drafted in itertools.product(range(vocab), repeat=n_draft):
            reach, context = 1.0, seq
            for x in drafted:  # the draft model draws each token from q given the ones before it
                reach *= float(draft(context)[x])
                context = context + (x,)
            for i, x in enumerate(drafted):
                if reach == 0:
                    break
                p, q = target(seq + drafted[:i]).double(), draft(seq + drafted[:i]).double()
                accept, resample = rule_step(rule, p, q, x)
                for y in range(vocab):
                    add(drafted[:i] + (y,), reach * (1 - accept) * float(resample[y]))
                reach *= accept
            bonus_context = seq + (drafted[:-1] if rule == "bonus from p[k-1]" and drafted else drafted)
            bonus = target(bonus_context).double()
            for y in range(vocab):
                add(drafted + (y,), reach * float(bonus[y]))
        return written

    def completions(seq: tuple) -> dict[tuple, float]:
        """{the rest of the sequence: probability} after ``seq``."""
        if len(seq) >= end:
            return {(): 1.0}
        if seq not in memo:
            result: dict[tuple, float] = {}
            for tokens, weight in one_round(seq).items():
                for rest, chance in completions(seq + tokens).items():
                    result[tokens + rest] = result.get(tokens + rest, 0.0) + weight * chance
            memo[seq] = result
        return memo[seq]

    return completions(tuple(prompt))


def sequence_distribution(model: Callable[[tuple], Tensor], prompt: tuple, n_new: int) -> dict[tuple, float]:
    """The probability of every sequence of ``n_new`` tokens that sampling from ``model`` alone writes."""
    result = {(): 1.0}
    for _ in range(n_new):
        grown = {}
        for seq, weight in result.items():
            probs = model(tuple(prompt) + seq).double()
            for y in range(len(probs)):
                if probs[y] > 0:
                    grown[seq + (y,)] = weight * float(probs[y])
        result = grown
    return result


def total_variation(a: dict, b: dict) -> float:
    """Half the summed absolute difference of two distributions given as {outcome: probability}."""
    return 0.5 * sum(abs(a.get(key, 0.0) - b.get(key, 0.0)) for key in set(a) | set(b))
