"""Training samples: windows of a token stream, or whole documents padded to a batch (chapter 8).

Both samplers draw from a private, seeded ``torch.Generator`` whose state is
all there is to their position, so a checkpoint that saves it resumes the same
stream. Padding is marked in the targets with ``IGNORE``, and
``sequence_loss`` scores every target but those.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tinyllm.softmax import cross_entropy

IGNORE = -1  # a target that is not scored: the padding after a document's end


def windows(ids: Tensor | list[int], context_length: int) -> tuple[Tensor, Tensor]:
    """Every training window of a token sequence: x (N, T) and y (N, T), y shifted by one.

    Window i is x = ids[i : i+T], y = ids[i+1 : i+T+1], for every start i, so
    N = len(ids) - T. Both are views (``unfold``), not copies: no memory is
    spent on the T-fold overlap.
    """
    ids = torch.as_tensor(ids, dtype=torch.long)
    if ids.dim() != 1 or ids.numel() < context_length + 1:
        raise ValueError(
            f"need a 1-D sequence of at least context_length + 1 = {context_length + 1} ids, "
            f"got shape {tuple(ids.shape)}"
        )
    x = ids[:-1].unfold(0, context_length, 1)  # (N, T)
    y = ids[1:].unfold(0, context_length, 1)  # (N, T)
    return x, y


class BatchSampler:
    """Random training windows, drawn with a private, seeded ``torch.Generator``.

    Each batch picks ``batch_size`` start positions uniformly (with
    replacement). The generator's state is all there is to the sampler's
    position, so saving it and restoring it continues the same stream.
    """

    def __init__(self, ids: Tensor | list[int], context_length: int, batch_size: int, seed: int):
        self.x, self.y = windows(ids, context_length)
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        starts = torch.randint(len(self.x), (self.batch_size,), generator=self.generator)  # (B,)
        return self.x[starts], self.y[starts]  # (B, T), (B, T)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class DocumentSampler:
    """Random training documents, each a sample of its own that starts at position 0.

    ``sequences`` are whole documents as ids (``tinyllm.data.document_sequences``:
    end-of-text, the document, end-of-text). A batch draws ``batch_size`` of
    them uniformly (with replacement, from a private seeded generator) and pads
    them to the longest: x with end-of-text ids, y with ``IGNORE``, so padding
    is never a target. Every token is therefore learned at the position it has
    in its own document, after that document's own tokens and nothing else.
    """

    def __init__(self, sequences: list[list[int]], batch_size: int, seed: int):
        if not sequences or min(len(seq) for seq in sequences) < 2:
            raise ValueError("need at least one sequence, each of at least 2 ids")
        self.sequences = [torch.as_tensor(seq, dtype=torch.long) for seq in sequences]
        self.pad_id = int(self.sequences[0][0])  # the end-of-text id that opens every sequence
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> tuple[Tensor, Tensor]:
        picks = torch.randint(len(self.sequences), (self.batch_size,), generator=self.generator).tolist()
        return pad_sequences([self.sequences[i] for i in picks], self.pad_id)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


def pad_sequences(sequences: list[Tensor | list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Inputs x (B, L) and targets y (B, L) for sequences of up to L + 1 ids; y is IGNORE on padding."""
    L = max(len(seq) for seq in sequences) - 1
    x = torch.full((len(sequences), L), pad_id, dtype=torch.long)
    y = torch.full((len(sequences), L), IGNORE, dtype=torch.long)
    for row, seq in enumerate(sequences):
        seq = torch.as_tensor(seq, dtype=torch.long)
        x[row, : len(seq) - 1] = seq[:-1]
        y[row, : len(seq) - 1] = seq[1:]
    return x, y


def sequence_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over the targets that are not IGNORE: logits (B, T, V), targets (B, T)."""
    scored = targets != IGNORE  # (B, T)
    return cross_entropy(logits[scored], targets[scored])  # (N, V) and (N,): the scored positions
