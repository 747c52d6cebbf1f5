"""Turning next-token distributions into text: greedy, temperature, top-k, top-p (chapter 9); cache and beam (Part II)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tinyllm.attention import KVCache
from tinyllm.model import with_kv_cache
from tinyllm.softmax import log_softmax, softmax


def top_k_filter(logits: Tensor, k: int) -> Tensor:
    """Keep the k largest logits of each row (ties with the k-th kept), set the rest to -inf."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if k >= logits.shape[-1]:
        return logits
    kth_largest = torch.topk(logits, k, dim=-1).values[..., -1:]  # (..., 1)
    return logits.masked_fill(logits < kth_largest, float("-inf"))


def top_p_filter(logits: Tensor, p: float) -> Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability reaches p.

    Token j (in order of probability) is kept when the mass of the tokens before
    it is below p, so the token that carries the running total across p is kept,
    the most likely token always is, and p = 1 keeps every token.
    """
    if not 0.0 < p <= 1.0:
        raise ValueError(f"p must be in (0, 1], got {p}")
    if p >= 1.0:
        return logits  # nothing comes before a total of 1 (a float32 running sum may round to it early)
    probs = softmax(logits, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    running = torch.cumsum(sorted_probs, dim=-1)
    # Mass of the strictly more likely tokens: the running sum shifted by one (0 for the first token).
    mass_before = torch.cat([torch.zeros_like(running[..., :1]), running[..., :-1]], dim=-1)
    drop_sorted = mass_before >= p  # p was already reached before this token
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def apply_repetition_penalty(logits: Tensor, previous: Tensor, penalty: float) -> Tensor:
    """Make tokens already in ``previous`` less likely: a repetition penalty.

    logits (B, V), previous (B, T) ids. A seen token's positive logit is
    divided by ``penalty`` and a negative one multiplied, so both move down.
    This sign-aware rule is the one of Hugging Face transformers' repetition
    penalty; CTRL (Keskar et al., 2019), which introduced the penalty, divides
    the logits of previously generated tokens by it whatever their sign.
    """
    if penalty <= 0:
        raise ValueError(f"repetition penalty must be positive, got {penalty}")
    if penalty == 1.0 or previous.numel() == 0:
        return logits
    seen = logits.gather(-1, previous)
    seen = torch.where(seen > 0, seen / penalty, seen * penalty)
    return logits.scatter(-1, previous, seen)


def sample_next_token(
    logits: Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Pick one id per row of logits (..., V) -> (...,). Temperature 0 means greedy."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    probs = softmax(logits, dim=-1)
    flat = probs.reshape(-1, probs.shape[-1])  # multinomial wants (N, V)
    picked = torch.multinomial(flat, num_samples=1, generator=generator)
    return picked.view(probs.shape[:-1])


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: Tensor,
    max_new_tokens: int,
    repetition_penalty: float = 1.0,
    **sampling,
) -> Tensor:
    """Extend idx (B, T) by max_new_tokens sampled ids -> (B, T + max_new_tokens).

    ``sampling`` goes to :func:`sample_next_token` (temperature, top_k, top_p,
    generator). The model sees at most its context_length latest tokens.
    Without a cache, each new token runs the model over the whole sequence
    again: T tokens cost O(T^2) positions of work (see :func:`generate_cached`).
    """
    was_training = model.training
    model.eval()
    context_length = model.config.context_length
    for _ in range(max_new_tokens):
        window = idx[:, -context_length:]  # (B, <= context_length)
        logits, _ = model(window)
        next_logits = apply_repetition_penalty(logits[:, -1, :], idx, repetition_penalty)  # (B, V)
        next_id = sample_next_token(next_logits, **sampling)  # (B,)
        idx = torch.cat([idx, next_id.unsqueeze(1)], dim=1)
    model.train(was_training)
    return idx


@torch.no_grad()
def generate_cached(
    model: nn.Module,
    idx: Tensor,
    max_new_tokens: int,
    repetition_penalty: float = 1.0,
    **sampling,
) -> Tensor:
    """:func:`generate` with a KV cache: the same ids, with one new token per model call.

    The prompt goes through the model once, filling one :class:`KVCache` per
    block; after that each call gets only the token just chosen, and its
    attention reads the earlier keys and values from the caches. Generating T
    tokens costs O(T) positions of work instead of O(T^2). TinyLlama's forward
    takes ``caches``; a TinyGPT is read through :class:`TinyGPTWithCache`. The
    cache is never cropped, so the prompt and the new tokens must fit in
    context_length.
    """
    if idx.shape[1] + max_new_tokens > model.config.context_length:
        raise ValueError(
            f"prompt ({idx.shape[1]}) + max_new_tokens ({max_new_tokens}) exceeds context_length "
            f"{model.config.context_length}: the cached generate does not slide a window"
        )
    model = with_kv_cache(model)  # TinyGPT's blocks take no cache: read it through the wrapper
    was_training = model.training
    model.eval()
    caches = [KVCache() for _ in range(model.config.n_layers)]
    new_tokens = idx  # the first call reads the whole prompt
    for _ in range(max_new_tokens):
        logits, _ = model(new_tokens, caches=caches)  # (B, T_new, V); the caches grow by T_new
        next_logits = apply_repetition_penalty(logits[:, -1, :], idx, repetition_penalty)  # (B, V)
        next_id = sample_next_token(next_logits, **sampling)  # (B,)
        idx = torch.cat([idx, next_id.unsqueeze(1)], dim=1)
        new_tokens = next_id.unsqueeze(1)  # (B, 1): the next call reads only this token
    model.train(was_training)
    return idx


@torch.no_grad()
def generate_until(model: nn.Module, idx: Tensor, stop_id: int, max_length: int, **sampling) -> Tensor:
    """Extend idx (B, T0) one sampled id at a time until every row has written ``stop_id`` or holds max_length ids.

    The ids :func:`generate` gives one token at a time, checking after each,
    at O(T) cost instead of O(T^2): a model whose forward takes ``caches``
    (TinyLlama, or a TinyGPT read through :func:`~tinyllm.model.with_kv_cache`)
    reads only the newest token while the sequence fits its context window;
    beyond it, or for any other model, each call reads the latest
    context_length ids, as :func:`generate` does. A row that has stopped
    keeps being extended until every row has; callers cut each row at its
    first ``stop_id``. ``sampling`` goes to :func:`sample_next_token`.
    """
    import inspect

    was_training = model.training
    model.eval()
    context_length = model.config.context_length
    cached = with_kv_cache(model)
    caches = ([KVCache() for _ in range(model.config.n_layers)]
              if "caches" in inspect.signature(cached.forward).parameters else None)
    start = idx.shape[1]
    new_tokens = idx  # the first call reads the whole prompt
    while idx.shape[1] < max_length and not (idx[:, start:] == stop_id).any(dim=1).all():
        if caches is not None and idx.shape[1] <= context_length:
            logits, _ = cached(new_tokens, caches=caches)  # the caches grow to idx's length
        else:
            logits, _ = model(idx[:, -context_length:])
        next_id = sample_next_token(logits[:, -1, :], **sampling)  # (B,)
        idx = torch.cat([idx, next_id.unsqueeze(1)], dim=1)
        new_tokens = next_id.unsqueeze(1)
    model.train(was_training)
    return idx


@torch.no_grad()
def beam_search(model: nn.Module, idx: Tensor, beam_width: int, max_new_tokens: int) -> Tensor:
    """The continuation of idx (1, T) of highest total log-probability a beam finds -> (1, T + max_new_tokens).

    Each step extends every kept sequence by every token, scores a candidate by
    its total log-probability (its sequence's score plus the new token's
    log-probability), and keeps the beam_width best. Width 1 is greedy
    decoding; a wider beam can find a sequence greedy misses, when a likely
    token follows an unlikely one. Without a cache: each step runs the model
    on every kept sequence (at most context_length latest tokens).
    """
    if idx.shape[0] != 1:
        raise ValueError(f"beam_search extends one prompt, got a batch of {idx.shape[0]}")
    if beam_width < 1:
        raise ValueError(f"beam_width must be at least 1, got {beam_width}")
    was_training = model.training
    model.eval()
    context_length = model.config.context_length
    beams, scores = idx, torch.zeros(1, device=idx.device)  # (n_beams, T), (n_beams,) total log-probabilities
    for _ in range(max_new_tokens):
        logits, _ = model(beams[:, -context_length:])
        log_probs = log_softmax(logits[:, -1, :], dim=-1)  # (n_beams, V)
        totals = scores[:, None] + log_probs  # (n_beams, V): each kept sequence extended by each token
        vocab = totals.shape[-1]
        best = torch.topk(totals.flatten(), min(beam_width, totals.numel()))  # sorted, best first
        beams = torch.cat([beams[best.indices // vocab], (best.indices % vocab)[:, None]], dim=1)
        scores = best.values
    model.train(was_training)
    return beams[:1]  # (1, T + max_new_tokens): the best total log-probability


@torch.no_grad()
def continuation_logprob(model: nn.Module, ids: Tensor, start: int) -> Tensor:
    """Total log-probability the model gives ids[:, start:] after ids[:, :start] -> (B,), in one forward pass (eval mode)."""
    was_training = model.training
    model.eval()
    logits, _ = model(ids[:, :-1])  # position t predicts ids[:, t + 1]
    model.train(was_training)
    log_probs = log_softmax(logits.double(), dim=-1)
    picked = log_probs.gather(-1, ids[:, 1:, None]).squeeze(-1)  # (B, T - 1)
    return picked[:, start - 1 :].sum(dim=-1)


class CallRecorder(nn.Module):
    """A model wrapped so that every call's input length is recorded (the cost of a generate, counted).

    ``CallRecorder(model)(idx, ...)`` is ``model(idx, ...)``; ``lengths()``
    lists the sequence length of each call so far. The uncached generate
    calls the model with T, T+1, T+2, ... tokens; the cached one with T, 1, 1, ...
    ``modes()`` lists, per call, whether the model was in training mode and
    whether gradients were being recorded (a generate runs with neither).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config
        self.input_lengths: list[int] = []
        self.call_modes: list[tuple[bool, bool]] = []
        self.train(model.training)  # a new module is in training mode: take the model's instead

    def forward(self, idx: Tensor, *args, **kwargs):
        self.input_lengths.append(int(idx.shape[1]))
        self.call_modes.append((self.model.training, torch.is_grad_enabled()))
        return self.model(idx, *args, **kwargs)

    def lengths(self) -> list[int]:
        return list(self.input_lengths)

    def modes(self) -> list[tuple[bool, bool]]:
        return list(self.call_modes)
