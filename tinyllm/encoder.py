"""Encoders and encoder-decoders (Part III): masked language modelling, cross-attention, a T5-style model.

The decoder of chapter 8 reads left to right and predicts the next token. An
encoder reads the whole sequence at once, every position seeing every other,
and is trained to fill in tokens hidden from it: BERT's masked language model
(Devlin et al., 2019). An encoder-decoder (the original transformer, T5)
gives the source to an encoder and writes the target with a decoder whose
tokens also read the encoder's output through cross-attention. This module
holds what those models add to the library, on the book's own corpus:

- two special ids after the tokenizer's own (:class:`SpecialTokens`):
  ``[MASK]``, which hides a token, and ``[PAD]``, which fills a batch of
  unequal sequences and which attention never reads;
- the masking recipe and its loss (:func:`mask_tokens`, :func:`masked_lm_loss`:
  exercise 12's answers, with the attention of
  :func:`tinyllm.attention.bidirectional_attention` and
  :class:`tinyllm.attention.CrossAttention`);
- the models (:class:`TinyEncoder`, :class:`TinySeq2Seq`), their batches
  (:class:`MaskedLMSampler`, :class:`PairSampler`) and their scores, for the
  library's own training loop (:class:`tinyllm.train.Trainer`);
- the comparisons the chapter makes: filling a blank with both sides of it or
  with the left side only (:func:`blank_predictions`,
  :func:`next_token_predictions`), and answering a question (:func:`qa_pairs`,
  :func:`answer_loss`, :func:`greedy_answer`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from tinyllm.embedding import Embedding
from tinyllm.layers import DecoderBlock, EncoderBlock, LayerNorm
from tinyllm.model import GPTConfig, TinyGPT
from tinyllm.softmax import cross_entropy
from tinyllm.batches import IGNORE, sequence_loss

NOT_MASKED = -100  # the label of a position the masked LM does not score (PyTorch's ignore_index, BERT's code)


@dataclass(frozen=True)
class SpecialTokens:
    """The ids an encoder adds after the tokenizer's: ``[MASK]`` then ``[PAD]`` (the model's table grows by two rows).

    No text encodes to them, so a real token can never be mistaken for one.
    ``end_of_text`` is the tokenizer's own last id, which opens and closes
    every document sequence.
    """

    end_of_text: int
    mask: int
    pad: int

    @classmethod
    def after(cls, tokenizer) -> "SpecialTokens":
        eot = tokenizer.end_of_text_id
        if eot is None:
            raise ValueError("an encoder's special ids follow the tokenizer's end-of-text id; this one has none")
        return cls(end_of_text=eot, mask=eot + 1, pad=eot + 2)

    @property
    def vocab_size(self) -> int:
        return self.pad + 1

    @property
    def ids(self) -> tuple[int, int, int]:
        """The ids that are never masked, never drawn as a random replacement, never a label."""
        return (self.end_of_text, self.mask, self.pad)


# --------------------------------------------------------------------------- masking (exercise 12)


def mask_tokens(ids: Tensor, mask_id: int, vocab_size: int, special_ids, p: float = 0.15,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """BERT's recipe: ``(inputs, labels)`` for a batch of ids, with about ``p`` of the ordinary positions chosen.

    Each position whose id is not in ``special_ids`` (padding, end-of-text,
    the mask itself) is chosen with probability ``p``. A chosen position
    becomes ``mask_id`` with probability 0.8, a random ordinary token (any id
    below ``vocab_size`` that is not special) with probability 0.1, and stays
    as it is with probability 0.1; ``labels`` hold its original id. Every other
    position keeps its id as input and gets the label ``NOT_MASKED`` (-100),
    which the loss skips. All randomness comes from ``generator``: the same
    generator state gives the same masks.
    """
    special = torch.as_tensor(list(special_ids), dtype=ids.dtype)
    ordinary = torch.ones(vocab_size, dtype=torch.bool)
    ordinary[special] = False
    ordinary_ids = ordinary.nonzero().squeeze(1)  # the ids a random replacement is drawn from
    eligible = ~torch.isin(ids, special)  # never hide padding or a special token
    chosen = (torch.rand(ids.shape, generator=generator) < p) & eligible
    action = torch.rand(ids.shape, generator=generator)  # < 0.8: [MASK]; < 0.9: random; else kept
    random_ids = ordinary_ids[torch.randint(len(ordinary_ids), ids.shape, generator=generator)]
    inputs = torch.where(chosen & (action < 0.8), torch.full_like(ids, mask_id), ids)
    inputs = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    labels = torch.where(chosen, ids, torch.full_like(ids, NOT_MASKED))
    return inputs, labels


def masked_lm_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy over the positions whose label is not ``NOT_MASKED``: logits (B, T, V), labels (B, T).

    Only the chosen positions are scored, and the mean divides by how many
    there are: the unchosen ones are visible in the input, so predicting them
    would teach the model to copy its input.
    """
    scored = labels != NOT_MASKED  # (B, T)
    return cross_entropy(logits[scored], labels[scored])  # (N, V) and (N,): the chosen positions


# --------------------------------------------------------------------------- the models


class TinyEncoder(TinyGPT):
    """Chapter 8's model with :class:`~tinyllm.layers.EncoderBlock` blocks: a BERT-style masked language model.

    The same embeddings, final norm and tied output layer; every block sees the
    whole sequence, and the positions holding ``pad_id`` are hidden from every
    attention. ``forward(idx, targets=None)`` returns the logits at every
    position and, given labels, :func:`masked_lm_loss`. (BERT adds a
    next-sentence objective and a small transform before its output layer;
    neither is needed to fill in blanks.)
    """

    def __init__(self, config: GPTConfig, pad_id: int):
        super().__init__(config)
        self.pad_id = pad_id
        self.blocks = nn.ModuleList(
            EncoderBlock(config.d_model, config.n_heads, config.d_ff, config.dropout) for _ in range(config.n_layers))
        self.apply(self._init_weights)

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        B, T = idx.shape  # batch, seq_len
        if T > self.config.context_length:
            raise ValueError(f"sequence of length {T} exceeds context_length {self.config.context_length}")
        padding = idx == self.pad_id  # (B, T): True where there is no token
        x = self.drop(self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device)))  # (B, T, d_model)
        for block in self.blocks:
            x = block(x, padding)
        logits = self.lm_head(self.ln_f(x))  # (B, T, vocab_size)
        return logits, None if targets is None else masked_lm_loss(logits, targets)


class TinySeq2Seq(nn.Module):
    """An encoder-decoder at TinyGPT's sizes, as T5 builds it: one token table for source, target and output.

    ``n_layers`` :class:`~tinyllm.layers.EncoderBlock` read the source, then
    ``n_layers`` :class:`~tinyllm.layers.DecoderBlock` write the target, each
    reading the encoder's output through cross-attention. Positions are
    learned, one table for both sides (T5 uses relative position biases
    instead). ``forward(pair, targets=None)``: ``pair`` (B, 2, L) holds the
    source (row 0) and the target so far (row 1), each padded with ``pad_id``
    to L; the logits (B, L, V) predict the target's next tokens, and
    ``targets`` (IGNORE on padding) gives the mean loss.
    """

    def __init__(self, config: GPTConfig, pad_id: int):
        super().__init__()
        self.config = config
        self.pad_id = pad_id
        d, h, ff, p = config.d_model, config.n_heads, config.d_ff, config.dropout
        self.tok_emb = Embedding(config.vocab_size, d)
        self.pos_emb = Embedding(config.context_length, d)
        self.drop = nn.Dropout(p)
        self.encoder = nn.ModuleList(EncoderBlock(d, h, ff, p) for _ in range(config.n_layers))
        self.ln_enc = LayerNorm(d)
        self.decoder = nn.ModuleList(DecoderBlock(d, h, ff, p) for _ in range(config.n_layers))
        self.ln_f = LayerNorm(d)
        self.lm_head = nn.Linear(d, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight  # tied, as in TinyGPT and T5
        self.apply(TinyGPT._init_weights)

    def num_parameters(self) -> int:
        """Distinct parameters (the tied table counts once)."""
        return sum(p.numel() for p in self.parameters())

    def embed(self, idx: Tensor) -> Tensor:
        T = idx.shape[1]
        if T > self.config.context_length:
            raise ValueError(f"sequence of length {T} exceeds context_length {self.config.context_length}")
        return self.drop(self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device)))  # (B, T, d_model)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """The encoder's output ``memory`` (B, S, d_model) for source ids (B, S), and its padding mask (B, S)."""
        padding = src == self.pad_id
        x = self.embed(src)
        for block in self.encoder:
            x = block(x, padding)
        return self.ln_enc(x), padding

    def decode(self, tgt: Tensor, memory: Tensor, memory_padding: Tensor) -> Tensor:
        """Logits (B, T, V) for the target so far (B, T), reading the encoder's ``memory``."""
        x = self.embed(tgt)
        for block in self.decoder:
            x = block(x, memory, memory_padding)
        return self.lm_head(self.ln_f(x))

    def forward(self, pair: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        src, tgt = pair[:, 0], pair[:, 1]  # (B, L) each
        logits = self.decode(tgt, *self.encode(src))
        return logits, None if targets is None else sequence_loss(logits, targets)


def seq2seq_config(config: GPTConfig, vocab_size: int) -> GPTConfig:
    """An encoder-decoder config of about the size of ``config``'s decoder-only model, as T5 compares them.

    Half the layers go to each side (2 becomes 1 + 1), so a token passes
    through as many blocks as in the decoder; cross-attention adds parameters,
    which a narrower feed-forward width (a multiple of 8, the closest match)
    gives back. ``vocab_size`` is the encoder's, special ids included.
    """
    if config.n_layers % 2:
        raise ValueError(f"n_layers must be even to split between encoder and decoder, got {config.n_layers}")
    target = TinyGPT(replace(config, vocab_size=vocab_size)).num_parameters()
    candidates = [replace(config, vocab_size=vocab_size, n_layers=config.n_layers // 2, d_ff=width)
                  for width in range(8, 2 * config.d_ff + 8, 8)]
    return min(candidates, key=lambda c: abs(TinySeq2Seq(c, pad_id=0).num_parameters() - target))


# --------------------------------------------------------------------------- batches for the library's loop


def pad_rows(rows: list[list[int]], pad_id: int, length: int | None = None) -> Tensor:
    """Rows of ids as one (B, L) tensor, each row followed by ``pad_id`` up to L (the longest, unless given)."""
    length = length or max(len(row) for row in rows)
    out = torch.full((len(rows), length), pad_id, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    return out


class MaskedLMSampler:
    """Random training documents, padded and masked afresh each time: ``(inputs, labels)`` (B, L) each.

    A document drawn twice is masked differently each time (RoBERTa's
    "dynamic" masking), from the sampler's own seeded generator, which is all
    of its state.
    """

    def __init__(self, sequences: list[list[int]], batch_size: int, seed: int, tokens: SpecialTokens,
                 p: float = 0.15):
        self.sequences = [list(seq) for seq in sequences]
        self.batch_size, self.tokens, self.p = batch_size, tokens, p
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        picks = torch.randint(len(self.sequences), (self.batch_size,), generator=self.generator).tolist()
        ids = pad_rows([self.sequences[i] for i in picks], self.tokens.pad)
        return mask_tokens(ids, self.tokens.mask, self.tokens.vocab_size, self.tokens.ids, self.p, self.generator)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


@torch.no_grad()
def masked_lm_score(model: nn.Module, sequences: list[list[int]], tokens: SpecialTokens, seed: int = 0,
                    batch_size: int = 64) -> float:
    """Mean masked-LM loss on ``sequences``, masked by a generator seeded with ``seed``: the same blanks every time."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    total, count = 0.0, 0
    for start in range(0, len(sequences), batch_size):
        ids = pad_rows(sequences[start : start + batch_size], tokens.pad)
        inputs, labels = mask_tokens(ids, tokens.mask, tokens.vocab_size, tokens.ids, generator=generator)
        n = int((labels != NOT_MASKED).sum())
        if n:
            total += masked_lm_loss(model(inputs)[0], labels).item() * n
            count += n
    model.train(was_training)
    return total / count


def qa_pairs(tokenizer, documents: list[str], context_length: int) -> list[tuple[list[int], list[int]]]:
    """``(source, target)`` ids for each question-and-answer document: what the decoder-only model reads, cut in two.

    The cut is :func:`tinyllm.answers.question_prompt`'s: the source is the
    question's tokens (without the opening end-of-text), the target the rest
    of the trained sequence (the answer, then end-of-text). So the
    encoder-decoder predicts exactly the tokens that the decoder-only model
    predicts after the same question.
    """
    from tinyllm.answers import askable, question_prompt

    pairs = []
    for doc in askable(tokenizer, documents, context_length):
        prompt, expected = question_prompt(tokenizer, doc, context_length)
        pairs.append((prompt[1:], expected))
    return pairs


def pair_batch(pairs: list[tuple[list[int], list[int]]], tokens: SpecialTokens) -> tuple[Tensor, Tensor]:
    """``pair`` (B, 2, L) and ``targets`` (B, L) for :class:`TinySeq2Seq`: the target is read after end-of-text.

    The decoder's input is end-of-text followed by the target without its last
    id; it predicts the target. Padding is ``tokens.pad`` in the inputs and
    IGNORE in the targets.
    """
    L = max(max(len(src), len(tgt)) for src, tgt in pairs)
    src = pad_rows([s for s, _ in pairs], tokens.pad, L)
    tgt_in = pad_rows([[tokens.end_of_text] + t[:-1] for _, t in pairs], tokens.pad, L)
    targets = pad_rows([t for _, t in pairs], IGNORE, L)
    return torch.stack((src, tgt_in), dim=1), targets


class PairSampler:
    """Random ``(source, target)`` pairs as :func:`pair_batch` batches, drawn with a private seeded generator."""

    def __init__(self, pairs: list[tuple[list[int], list[int]]], batch_size: int, seed: int, tokens: SpecialTokens):
        self.pairs, self.batch_size, self.tokens = pairs, batch_size, tokens
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        picks = torch.randint(len(self.pairs), (self.batch_size,), generator=self.generator).tolist()
        return pair_batch([self.pairs[i] for i in picks], self.tokens)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


@torch.no_grad()
def pair_score(model: nn.Module, pairs: list[tuple[list[int], list[int]]], tokens: SpecialTokens,
               batch_size: int = 64) -> float:
    """Mean loss (nats per token) of an encoder-decoder on the targets of ``pairs``."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(pairs), batch_size):
        pair, targets = pair_batch(pairs[start : start + batch_size], tokens)
        n = int((targets != IGNORE).sum())
        total += model(pair, targets)[1].item() * n
        count += n
    model.train(was_training)
    return total / count


@torch.no_grad()
def answer_loss(decoder: nn.Module, pairs: list[tuple[list[int], list[int]]], end_of_text: int) -> float:
    """Mean loss (nats per token) of a decoder-only model on the same targets, read after end-of-text and the source."""
    from tinyllm.batches import pad_sequences

    was_training = decoder.training
    decoder.eval()
    sequences = [[end_of_text] + src + tgt for src, tgt in pairs]
    x, y = pad_sequences(sequences, end_of_text)
    for row, (src, _) in enumerate(pairs):
        y[row, : len(src)] = IGNORE  # the question is given: score only what follows it
    loss = sequence_loss(decoder(x)[0], y).item()
    decoder.train(was_training)
    return loss


@torch.no_grad()
def greedy_answer(model: TinySeq2Seq, src: list[int], end_of_text: int, max_new_tokens: int = 40) -> list[int]:
    """The target an encoder-decoder writes for one source, greedily, up to its end-of-text (not included)."""
    model.eval()
    memory, padding = model.encode(torch.tensor([src]))  # the source is read once
    out = [end_of_text]
    for _ in range(min(max_new_tokens, model.config.context_length - 1)):
        next_id = int(model.decode(torch.tensor([out]), memory, padding)[0, -1].argmax())
        if next_id == end_of_text:
            break
        out.append(next_id)
    return out[1:]


# --------------------------------------------------------------------------- filling in blanks


@torch.no_grad()
def blank_predictions(encoder: TinyEncoder, sequence: list[int], mask_id: int) -> Tensor:
    """The encoder's logits for each inner position of one sequence, that position alone hidden: (n - 2, V).

    Position t (1 <= t <= n - 2, between the two end-of-text ids) is replaced
    by ``mask_id`` in row t - 1 of one batch; the encoder sees everything else,
    on both sides of the blank.
    """
    encoder.eval()
    ids = torch.tensor(sequence).repeat(len(sequence) - 2, 1)  # (n - 2, n)
    positions = torch.arange(1, len(sequence) - 1)
    ids[torch.arange(len(positions)), positions] = mask_id
    logits, _ = encoder(ids)
    return logits[torch.arange(len(positions)), positions]  # (n - 2, V)


@torch.no_grad()
def next_token_predictions(decoder: nn.Module, sequence: list[int]) -> Tensor:
    """A decoder's logits for the same inner positions, each from the tokens to its left only: (n - 2, V)."""
    decoder.eval()
    logits, _ = decoder(torch.tensor([sequence[:-2]]))  # position t is predicted at t - 1
    return logits[0]


def token_labels(tokenizer, ids: list[int], tokens: SpecialTokens) -> list[str]:
    """Readable labels for ids, the special ones included: ``[MASK]``, ``[PAD]``, ``<|endoftext|>``."""
    from tinyllm.bpe import printable_token

    names = {tokens.mask: "[MASK]", tokens.pad: "[PAD]", tokens.end_of_text: "<|endoftext|>"}
    return [names.get(i) or printable_token(tokenizer.token_bytes(i)) for i in ids]
