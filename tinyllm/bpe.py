"""Byte-level byte-pair encoding, from scratch (chapter 2).

Ids 0-255 are the raw bytes of the UTF-8 text, so any string can be encoded;
merge ``i`` creates id ``256 + i``. Training repeatedly merges the most frequent
adjacent pair; ties go to the pair whose first occurrence in the current
sequence comes first, which makes the result fully determined by the text.

The plain functions (``train_bpe``, ``bpe_encode``, ``bpe_decode``) are the
reference the book explains and the exercises ask for. ``train_bpe_fast`` and
``BPETokenizer`` produce exactly the same merges and ids, faster; tests prove it.
"""

from __future__ import annotations

import heapq
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

Pair = tuple[int, int]


def to_bytes(text: str) -> bytes:
    """UTF-8 bytes of ``text``; a lone surrogate (not encodable) is a clear error."""
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ValueError(
            f"text contains a character UTF-8 cannot encode at index {err.start} "
            f"({text[err.start]!r}, a lone surrogate)"
        ) from None


def pair_counts(ids: list[int]) -> dict[Pair, int]:
    """Counts of adjacent pairs, in order of first occurrence (dicts keep insertion order)."""
    counts: dict[Pair, int] = {}
    for pair in zip(ids, ids[1:]):
        counts[pair] = counts.get(pair, 0) + 1
    return counts


def merge_pair(ids: list[int], pair: Pair, new_id: int) -> list[int]:
    """Replace each occurrence of ``pair`` by ``new_id``, scanning left to right."""
    merged, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
            merged.append(new_id)
            i += 2  # occurrences never overlap: "aaa" with (a, a) gives [aa, a]
        else:
            merged.append(ids[i])
            i += 1
    return merged


def check_vocab_size(vocab_size: int) -> None:
    if vocab_size < 256:
        raise ValueError(f"vocab_size must be at least 256 (one id per byte), got {vocab_size}")


def train_bpe(text: str, vocab_size: int) -> list[Pair]:
    """Learn ``vocab_size - 256`` merges (fewer if the text collapses to one token)."""
    check_vocab_size(vocab_size)
    ids = list(to_bytes(text))
    merges: list[Pair] = []
    for new_id in range(256, vocab_size):
        if len(ids) < 2:
            break
        counts = pair_counts(ids)
        # max() keeps the first of equal counts: the earliest first occurrence.
        best = max(counts, key=counts.get)
        ids = merge_pair(ids, best, new_id)
        merges.append(best)
    return merges


def bpe_encode(text: str, merges: list[Pair]) -> list[int]:
    """Apply the merges in the order they were learned, as training did."""
    ids = list(to_bytes(text))
    for i, pair in enumerate(merges):
        ids = merge_pair(ids, tuple(pair), 256 + i)
    return ids


def build_vocab(merges: list[Pair]) -> list[bytes]:
    """The byte string each id stands for."""
    vocab = [bytes([b]) for b in range(256)]
    for a, b in merges:
        vocab.append(vocab[a] + vocab[b])
    return vocab


def bpe_decode(ids: list[int], merges: list[Pair]) -> str:
    """Concatenate each id's bytes and decode; an invalid UTF-8 cut becomes U+FFFD."""
    vocab = build_vocab(merges)
    for token_id in ids:
        if not 0 <= token_id < len(vocab):
            raise ValueError(f"token id {token_id} is not in the vocabulary (0..{len(vocab) - 1})")
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


# --------------------------------------------------------------------------
# Fast versions: same results, for corpora of megabytes.


def train_bpe_fast(text: str, vocab_size: int) -> list[Pair]:
    """``train_bpe`` in about O(n log n): update pair counts locally after each merge.

    The sequence is a doubly linked list over the original byte positions (a
    node keeps the position of its first byte, so positions stay in text
    order). Each pair keeps its count, the set of positions where it starts and
    a heap of those positions (its first occurrence); a global heap ordered by
    (-count, first position) finds the next merge. Heaps are cleaned lazily.
    """
    check_vocab_size(vocab_size)
    tok = list(to_bytes(text))
    n = len(tok)
    nxt = list(range(1, n + 1))
    prev = list(range(-1, n - 1))
    positions: dict[Pair, set[int]] = defaultdict(set)
    first: dict[Pair, list[int]] = defaultdict(list)  # min-heaps of start positions
    for i in range(n - 1):
        positions[(tok[i], tok[i + 1])].add(i)
    for pair, where in positions.items():
        first[pair] = sorted(where)  # a sorted list is a valid heap

    def first_position(pair: Pair) -> int:
        heap, live = first[pair], positions[pair]
        while heap[0] not in live:
            heapq.heappop(heap)
        return heap[0]

    queue = [(-len(where), first_position(pair), pair) for pair, where in positions.items()]
    heapq.heapify(queue)

    def add(pair: Pair, i: int, touched: set[Pair]) -> None:
        positions[pair].add(i)
        heapq.heappush(first[pair], i)
        touched.add(pair)

    def remove(pair: Pair, i: int, touched: set[Pair]) -> None:
        positions[pair].discard(i)
        touched.add(pair)

    merges: list[Pair] = []
    while len(merges) < vocab_size - 256 and queue:
        neg_count, start, pair = heapq.heappop(queue)
        where = positions.get(pair)
        if not where or -neg_count != len(where) or start != first_position(pair):
            continue  # stale entry; a fresh one was pushed when the pair changed
        new_id = 256 + len(merges)
        merges.append(pair)
        a, b = pair
        touched: set[Pair] = set()
        for i in sorted(where):
            j = nxt[i]
            # Skip occurrences consumed by an earlier merge in this pass ("aaa").
            if tok[i] != a or j >= n or tok[j] != b:
                continue
            p, r = prev[i], nxt[j]
            remove(pair, i, touched)
            if p >= 0:
                remove((tok[p], a), p, touched)
                add((tok[p], new_id), p, touched)
            if r < n:
                remove((b, tok[r]), j, touched)
                add((new_id, tok[r]), i, touched)
            tok[i], tok[j] = new_id, -1
            nxt[i] = r
            if r < n:
                prev[r] = i
        for changed in touched:
            if positions[changed]:
                heapq.heappush(queue, (-len(positions[changed]), first_position(changed), changed))
            else:
                positions.pop(changed, None)
                first.pop(changed, None)
    return merges


def merge_pair_array(ids: np.ndarray, pair: Pair, new_id: int) -> np.ndarray:
    """``merge_pair`` on a numpy array, vectorised."""
    a, b = pair
    hits = (ids[:-1] == a) & (ids[1:] == b)
    if not hits.any():
        return ids
    if a == b:
        # In a run of consecutive hits only every other one merges (left to right).
        index = np.arange(hits.size)
        run_start = hits & ~np.concatenate(([False], hits[:-1]))
        last_start = np.maximum.accumulate(np.where(run_start, index, 0))
        hits &= (index - last_start) % 2 == 0
    where = np.flatnonzero(hits)
    out = ids.copy()
    out[where] = new_id
    return np.delete(out, where + 1)


END_OF_TEXT = "<|endoftext|>"  # how the end-of-text token is written when decoded (GPT-2's name)


class BPETokenizer:
    """A trained byte-level BPE: encode/decode text, save/load its merges as JSON.

    With ``end_of_text=True`` the vocabulary has one more id after the merges,
    ``end_of_text_id = 256 + len(merges)``: a token that no text encodes to,
    which marks where a document ends (and, placed first, where one starts).
    It spells no bytes (``token_bytes`` is empty, so it adds nothing to a byte
    count) and decodes to ``END_OF_TEXT`` so that it shows when printed.
    """

    def __init__(self, merges: list[Pair], end_of_text: bool = False):
        self.merges = [tuple(int(x) for x in pair) for pair in merges]
        for i, (a, b) in enumerate(self.merges):
            if not (0 <= a < 256 + i and 0 <= b < 256 + i):
                raise ValueError(f"merge {i} {(a, b)} refers to an id not created before it")
        self.vocab = build_vocab(self.merges)
        self.end_of_text_id: int | None = None
        if end_of_text:
            self.end_of_text_id = len(self.vocab)
            self.vocab.append(b"")

    @classmethod
    def train(cls, text: str, vocab_size: int, end_of_text: bool = False) -> "BPETokenizer":
        """Learn merges until the vocabulary (bytes, merges and the end-of-text id if asked for) has vocab_size ids."""
        return cls(train_bpe_fast(text, vocab_size - end_of_text), end_of_text)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        ids = np.frombuffer(to_bytes(text), dtype=np.uint8).astype(np.int64)
        for i, pair in enumerate(self.merges):
            if ids.size < 2:
                break
            ids = merge_pair_array(ids, pair, 256 + i)
        return ids.tolist()

    def decode(self, ids: list[int]) -> str:
        for token_id in ids:
            if not 0 <= token_id < len(self.vocab):
                raise ValueError(f"token id {token_id} is not in the vocabulary (0..{len(self.vocab) - 1})")
        if self.end_of_text_id is None or self.end_of_text_id not in ids:
            return b"".join(self.vocab[i] for i in ids).decode("utf-8", errors="replace")
        pieces, start = [], 0  # the text between end-of-text tokens, each piece decoded on its own
        for i, token_id in enumerate([*ids, self.end_of_text_id]):
            if token_id == self.end_of_text_id:
                pieces.append(b"".join(self.vocab[t] for t in ids[start:i]).decode("utf-8", errors="replace"))
                start = i + 1
        return END_OF_TEXT.join(pieces)

    def token_bytes(self, token_id: int) -> bytes:
        return self.vocab[token_id]

    def to_json(self) -> str:
        return json.dumps({"type": "byte-level-bpe", "merges": self.merges,
                           "end_of_text": self.end_of_text_id is not None})

    @classmethod
    def from_json(cls, data: str) -> "BPETokenizer":
        try:
            payload = json.loads(data)
            merges = payload["merges"]
            end_of_text = bool(payload.get("end_of_text", False))
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"not a saved BPE tokenizer: {err}") from None
        return cls([tuple(pair) for pair in merges], end_of_text)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "BPETokenizer":
        return cls.from_json(Path(path).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------
# Display.

_VISIBLE = {" ": "\u2423", "\n": "\u21b5"}  # ␣ and ↵: a token's spaces and newlines must show


def printable_token(token: bytes) -> str:
    """The bytes of one token as readable text, for tables and plot labels.

    Spaces and newlines matter in a token (" the" and "the" are different ids),
    so they are drawn as ␣ and ↵; other control characters, and bytes that are
    only part of a multi-byte UTF-8 character, are written as ``\\xNN`` escapes
    instead of the misleading U+FFFD that a lenient decode would show.
    """
    text = token.decode("utf-8", errors="backslashreplace")
    return "".join(
        _VISIBLE.get(ch) or (f"\\x{ord(ch):02x}" if ord(ch) < 0x20 or ord(ch) == 0x7F else ch)
        for ch in text
    )
