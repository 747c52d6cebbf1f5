"""In-context learning and induction heads (chapter 16): repeated random sequences and the scores that find a head.

A sequence ends in a random stretch of tokens written twice. The second copy
cannot be predicted from any statistics of the training data, only by looking
back in the context: the token that followed the previous occurrence of the
current token comes next. A head that attends there is an *induction head*
(Olsson et al., 2022); the scores here find one by measurement.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class RepeatBatch:
    """Sequences that end in a stretch written twice, and where the copies lie.

    ``ids`` (B, T); row b is random filler, then a random stretch of
    ``period[b]`` tokens, then the same stretch again, so its last
    ``period[b]`` ids equal the ``period[b]`` before them.
    """

    ids: Tensor  # (B, T) token ids
    period: Tensor  # (B,) length of the repeated stretch
    cycle: bool = False  # the stretch from position 0, repeated to the end (no filler)

    def first_copy(self) -> Tensor:
        """(B, T) True at the positions of the stretch's first copy."""
        t = torch.arange(self.ids.shape[1])
        T = self.ids.shape[1]
        if self.cycle:
            return t < self.period[:, None]
        return (t >= T - 2 * self.period[:, None]) & (t < T - self.period[:, None])

    def repeat(self) -> Tensor:
        """(B, T) True at the positions of the second copy, its first token left out.

        The first token of the repeat follows the last token of the first copy,
        which has not occurred before: nothing in the context predicts it.
        Every later token of the repeat is the one that followed the previous
        occurrence of its predecessor.
        """
        t = torch.arange(self.ids.shape[1])
        if self.cycle:
            return t > self.period[:, None]
        return t > self.ids.shape[1] - self.period[:, None]


def repeated_sequences(batch: int, length: int, n_symbols: int, min_period: int,
                       generator: torch.Generator, cycle: bool = False) -> RepeatBatch:
    """``batch`` sequences of ``length`` ids in ``[0, n_symbols)``: filler, then a random stretch twice.

    Each row draws its period uniformly from ``min_period .. length // 2``, so
    the repeat lies at a different distance in every row: a head cannot find
    the earlier copy by position alone, only by content. The filler and the
    stretch are drawn uniformly and independently. ``cycle``: no filler; the
    stretch starts at position 0 and repeats until the sequence is full.
    """
    if not 1 <= min_period <= length // 2:
        raise ValueError(f"min_period must be in 1 .. length // 2 = {length // 2}, got {min_period}")
    ids = torch.randint(n_symbols, (batch, length), generator=generator)
    period = torch.randint(min_period, length // 2 + 1, (batch,), generator=generator)
    t = torch.arange(length)
    if cycle:
        return RepeatBatch(ids.gather(1, t % period[:, None]), period, cycle=True)
    source = t - period[:, None]  # (B, T): the position each repeated token copies
    copied = t >= length - period[:, None]
    ids = torch.where(copied, ids.gather(1, source.clamp(min=0)), ids)
    return RepeatBatch(ids, period)


def induction_targets(ids: Tensor) -> Tensor:
    """(B, T, T) with 1 at key ``j`` for query ``i`` when ``ids[j - 1] == ids[i]`` and ``j <= i``.

    The keys an induction head attends to: the tokens that followed an
    earlier occurrence of the query's token (causal: only keys up to ``i``).
    """
    B, T = ids.shape
    same = ids[:, :, None] == ids[:, None, :]  # (B, T, T): ids[i] == ids[j]
    earlier = torch.ones(T, T, dtype=torch.bool).tril(-1)  # key j' < query i
    previous = same & earlier  # query i, key j' an earlier occurrence of ids[i]
    target = torch.zeros(B, T, T, dtype=torch.bool)
    target[:, :, 1:] = previous[:, :, :-1]  # shift the key by one: j = j' + 1 <= i
    return target


def prefix_matching_score(weights: Tensor, ids: Tensor) -> Tensor:
    """How much attention each head puts on the token after an earlier occurrence of the current one.

    ``weights`` (B, H, T, T) attention of H heads on ``ids`` (B, T). For each
    query whose token occurred before, the weight summed over the keys of
    :func:`induction_targets`; averaged over those queries. Returns (H,),
    each in [0, 1]: 1 for a perfect induction head.
    """
    target = induction_targets(ids)  # (B, T, T)
    has_target = target.any(-1)  # (B, T): the queries that count
    if not has_target.any():
        raise ValueError("no token of ids occurs twice: the score is undefined")
    mass = (weights * target[:, None].to(weights.dtype)).sum(-1)  # (B, H, T)
    return (mass * has_target[:, None]).sum((0, 2)) / has_target.sum()


def previous_token_score(weights: Tensor) -> Tensor:
    """(H,): the attention weight each head puts on the position just before the query, averaged.

    ``weights`` (B, H, T, T); the queries from position 1 on count. 1 for a
    *previous-token head*, the first half of an induction circuit.
    """
    previous = weights.diagonal(offset=-1, dim1=-2, dim2=-1)  # (B, H, T - 1): query i, key i - 1
    return previous.mean((0, 2))


def head_scores(model, ids: Tensor) -> Tensor:
    """(n_layers, n_heads): the prefix-matching score of every head of a TinyGPT on ``ids``."""
    from tinyllm.book import attention_maps

    return torch.stack([prefix_matching_score(w, ids) for w in attention_maps(model, ids)])


@torch.no_grad()
def ov_logits(model, layer: int, head: int, symbols: int) -> Tensor:
    """(symbols, symbols): the logits a head's OV circuit writes when it attends to each token.

    Row s: token s's embedding, through the block's ``ln1``, the head's value
    projection and its share of the output projection, then the final norm
    and the tied output layer, read at the first ``symbols`` ids. Each column
    has its mean over the rows subtracted, so what remains is how much reading
    s raises each logit compared with reading another token. (Positions and
    the other heads are left out: this is the head's direct path.)
    """
    block = model.blocks[layer]
    attn = block.attn
    d_k = attn.d_k
    x = block.ln1(model.tok_emb.weight[:symbols])  # (symbols, d_model)
    v = attn.v_proj(x)[:, head * d_k:(head + 1) * d_k]  # (symbols, d_k)
    out = v @ attn.out_proj.weight[:, head * d_k:(head + 1) * d_k].T  # (symbols, d_model)
    logits = model.lm_head(model.ln_f(out))[:, :symbols]
    return logits - logits.mean(0, keepdim=True)


def copying_score(model, layer: int, head: int, symbols: int) -> float:
    """Share of the tokens that, attended to by the head, get the largest logit of all (1: it copies).

    From :func:`ov_logits`: a head whose OV circuit copies raises the logit of
    the token it reads above every other token's. A head that does not copies
    about ``1 / symbols`` of them by chance.
    """
    logits = ov_logits(model, layer, head, symbols)
    return (logits.argmax(-1) == torch.arange(symbols)).float().mean().item()


def position_losses(logits: Tensor, targets: Tensor) -> Tensor:
    """(B, L) cross-entropy of each prediction, ``logits`` (B, L, V) against ``targets`` (B, L).

    The same numbers as ``F.cross_entropy(..., reduction="none")``, kept per position.
    """
    from tinyllm.softmax import log_softmax

    return -log_softmax(logits, dim=-1).gather(-1, targets[..., None])[..., 0]


ICL_EARLY, ICL_LATE = 3, 30  # the chapter's in-context score: token 30's loss minus token 3's


def in_context_score(losses: Tensor, early: int, late: int) -> float:
    """Olsson et al.'s in-context learning score: the mean loss at token ``late`` minus at token ``early``.

    ``losses`` (N, T - 1) per-token losses as :func:`position_losses` gives
    them (column t scores the prediction of token t + 1). Negative: the model
    predicts a token better when more of the context lies before it.
    """
    return (losses[:, late - 1].mean() - losses[:, early - 1].mean()).item()


@dataclass
class InductionTask:
    """The sequences and the model of the chapter's experiment; each field with its reason.

    The model is chapter 8's TinyGPT made attention-only, its table the
    byte-level 256 rows, every one of which occurs as a random token. Unlike
    TinyGPT it gives its output layer a table of its own
    (:func:`attention_only_model`): measured over three seeds at these sizes,
    the two-layer model with the tied table formed no induction head in 600
    steps, and with its own output layer formed one in every seed, its loss
    on the repeats falling suddenly after about 250 steps (chapter 16 measures
    both). The period varies because with a fixed one a head could find the
    earlier copy by position alone.
    """

    length: int = 32  # ids per sequence: a 31-token context, short enough to train in seconds
    n_symbols: int = 256  # random tokens drawn from every byte id: a uniform guess costs ln 256 = 5.55 nats
    min_period: int = 4  # the repeated stretch is 4 to 16 tokens long
    d_model: int = 64
    n_heads: int = 4  # d_k = 16 features per head
    steps: int = 600
    batch_size: int = 64  # fresh sequences every step: the data never repeats, so nothing is memorised
    lr: float = 1e-3
    warmup_steps: int = 20
    eval_every: int = 25  # steps between evaluations on one fixed batch of held-out sequences
    eval_batch: int = 128
    cycle: bool = True  # the stretch from position 0, written again until the sequence is full
    tied: bool = False  # True: the output layer reuses the token table, as TinyGPT's does

    def model_config(self, n_layers: int):
        from tinyllm.model import GPTConfig

        return GPTConfig(vocab_size=256, context_length=self.length - 1, d_model=self.d_model,
                         n_layers=n_layers, n_heads=self.n_heads, d_ff=1, dropout=0.0,
                         feed_forward=False)


def attention_only_model(task: InductionTask, n_layers: int, seed: int):
    """The attention-only TinyGPT of ``task`` with ``n_layers`` blocks, initialised from ``seed``.

    Unless ``task.tied``, its output layer gets a weight of its own, drawn as
    TinyGPT draws its weights (normal, standard deviation 0.02), in place of
    the token table it shares by default.
    """
    from tinyllm.train import build_model

    model = build_model(task.model_config(n_layers), seed)
    if not task.tied:
        generator = torch.Generator().manual_seed(seed + 1)
        weight = torch.randn(model.lm_head.weight.shape, generator=generator) * 0.02
        model.lm_head.weight = torch.nn.Parameter(weight)
    return model


def split_losses(model, batch: RepeatBatch) -> dict[str, float]:
    """Mean loss on the predictions of the first copy's tokens and of the repeat's (nats per token)."""
    with torch.no_grad():
        logits, _ = model(batch.ids[:, :-1])
    losses = position_losses(logits, batch.ids[:, 1:])  # (B, T - 1): column t predicts token t + 1
    first, repeat = batch.first_copy()[:, 1:], batch.repeat()[:, 1:]
    return {"first": losses[first].mean().item(), "repeat": losses[repeat].mean().item()}


def induction_run(n_layers: int, task: InductionTask | None = None, seed: int = 0) -> dict:
    """Train an attention-only TinyGPT of ``n_layers`` on repeated sequences; curves, scores, a pattern.

    ``seed`` fixes the initialisation and every batch. Every ``eval_every``
    steps the loss on the first copies and on the repeats of one fixed
    held-out batch is recorded. At the end: each head's prefix-matching
    score, the best head (by that score) with its copying score and its
    attention on one held-out sequence, each head's previous-token score, the
    loss at every position of the held-out batch and the in-context score.
    A run for :func:`tinyllm.book.compare_runs`.
    """
    from tinyllm.optim import AdamW, cosine_lr
    from tinyllm.train import param_groups

    task = task or InductionTask()
    model = attention_only_model(task, n_layers, seed)
    optimizer = AdamW(param_groups(model, 0.0), lr=task.lr, betas=(0.9, 0.95))
    data = torch.Generator().manual_seed(seed)
    held_out = repeated_sequences(task.eval_batch, task.length, task.n_symbols, task.min_period,
                                  torch.Generator().manual_seed(10_000 + seed), task.cycle)
    curve = {"step": [], "first": [], "repeat": []}
    model.train()
    for step in range(task.steps + 1):
        if step % task.eval_every == 0:
            model.eval()
            losses = split_losses(model, held_out)
            model.train()
            curve["step"].append(step)
            curve["first"].append(losses["first"])
            curve["repeat"].append(losses["repeat"])
        if step == task.steps:
            break
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, task.warmup_steps, task.steps, task.lr, task.lr / 10)
        batch = repeated_sequences(task.batch_size, task.length, task.n_symbols, task.min_period, data, task.cycle)
        _, loss = model(batch.ids[:, :-1], batch.ids[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    from tinyllm.book import attention_maps

    maps = attention_maps(model, held_out.ids[:, :-1])  # per layer (B, n_heads, T - 1, T - 1)
    scores = torch.stack([prefix_matching_score(w, held_out.ids[:, :-1]) for w in maps])  # (n_layers, n_heads)
    layer, head = divmod(int(scores.argmax()), scores.shape[1])

    example = held_out.ids[:1, :-1]
    with torch.no_grad():
        position = position_losses(model(held_out.ids[:, :-1])[0], held_out.ids[:, 1:])  # (B, T - 1)
    return {"curve": curve, "scores": scores.tolist(), "best": [layer, head],
            "previous": torch.stack([previous_token_score(w) for w in maps]).tolist(),
            "copying": copying_score(model, layer, head, task.n_symbols),
            "pattern": attention_maps(model, example)[layer][0, head].tolist(),
            "example": held_out.ids[0].tolist(), "example_period": int(held_out.period[0]),
            "position_loss": position.mean(0).tolist(),
            "in_context": in_context_score(position, ICL_EARLY, ICL_LATE)}
