"""Evaluation: the mean loss of a model on a token stream or on whole documents, and bits per byte (chapter 8).

Every target is predicted exactly once, as the counting baselines of chapter 1
score it, so the numbers compare with theirs.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from tinyllm.batches import IGNORE, pad_sequences, sequence_loss


@torch.no_grad()
def evaluate(model: nn.Module, ids: Tensor | list[int], context_length: int, batch_size: int = 64) -> float:
    """Mean cross-entropy (nats per token) of ``model`` on every token of ``ids`` after the first.

    The sequence is cut into non-overlapping windows of ``context_length``
    (the last one shorter), so each of the len(ids) - 1 targets is predicted
    exactly once, as the n-gram baselines' ``nll`` does. It is cheap (one
    forward position per token) and slightly pessimistic: the first tokens of
    each window see little context, where a sliding window would give every
    token a full context at T times the cost.
    """
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.numel() < 2:
        raise ValueError("need at least two ids to predict one")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    T = context_length
    n_full = (ids.numel() - 1) // T
    x_full = ids[: n_full * T].view(n_full, T)  # (n_full, T)
    y_full = ids[1 : n_full * T + 1].view(n_full, T)
    chunks = [(x_full[i : i + batch_size], y_full[i : i + batch_size]) for i in range(0, n_full, batch_size)]
    rest = ids.numel() - 1 - n_full * T
    if rest:  # the tail: a last, shorter window
        chunks.append((ids[n_full * T : -1].view(1, rest), ids[n_full * T + 1 :].view(1, rest)))
    total = 0.0
    for x, y in chunks:
        _, loss = model(x.to(device), y.to(device))  # mean over x.numel() targets
        total += loss.item() * y.numel()
    model.train(was_training)
    return total / (ids.numel() - 1)


@torch.no_grad()
def evaluate_documents(model: nn.Module, sequences: list[list[int]], batch_size: int = 64) -> float:
    """Mean cross-entropy (nats per token) of ``model`` on document sequences, read as it was trained.

    Each sequence is scored from its own position 0, every id after its
    first predicted once: for whole documents, exactly the ids after the
    first of ``tinyllm.data.token_stream(sequences)``, which the counting
    baselines score.
    """
    if not sequences or min(len(seq) for seq in sequences) < 2:
        raise ValueError("need at least one sequence of at least two ids")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(sequences), batch_size):
        x, y = pad_sequences(sequences[start : start + batch_size], int(sequences[start][0]))
        logits, _ = model(x.to(device))
        n = int((y != IGNORE).sum())
        total += sequence_loss(logits, y.to(device)).item() * n
        count += n
    model.train(was_training)
    return total / count


def bits_per_byte(nll_per_token: float, ids: list[int], token_bytes: Callable[[int], bytes]) -> float:
    """Convert a mean loss over ``ids[1:]`` (nats per token) to bits per byte of the text predicted.

    The total cost, nll * (len(ids) - 1) nats, divided by ln 2 and by the
    number of bytes the predicted tokens spell. Unlike perplexity per token,
    this does not depend on the tokenizer, so models with different
    vocabularies (or a byte-level one) can be compared.
    """
    n_bytes = sum(len(token_bytes(t)) for t in ids[1:])
    if n_bytes == 0:
        raise ValueError("need at least two ids to predict one")
    return nll_per_token * (len(ids) - 1) / (n_bytes * math.log(2))
