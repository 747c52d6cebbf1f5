"""Byte-level byte-pair encoding, from scratch (chapter 2).

Ids 0-255 are the raw bytes of the UTF-8 text, so any string can be encoded;
merge ``i`` creates id ``256 + i``. Training repeatedly merges the most frequent
adjacent pair; ties go to the pair whose first occurrence in the current
sequence comes first, which makes the result fully determined by the text.

The book's tokenizer first cuts the text into chunks with GPT-2's regular
expression (``pre_split``: words with their leading space, numbers,
punctuation, whitespace) and runs BPE within each chunk, so that no token
crosses a chunk boundary (``train_bpe_chunks``, ``bpe_encode_split``).

The plain functions (``train_bpe``, ``train_bpe_chunks``, ``bpe_encode``,
``bpe_encode_split``, ``bpe_decode``) are the reference the book explains and
the exercises ask for. ``train_bpe_fast`` and ``BPETokenizer`` produce exactly
the same merges and ids, faster; tests prove it.
"""

from __future__ import annotations

import heapq
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import regex

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


def split_pattern() -> str:
    r"""GPT-2's pre-split pattern, one alternative per kind of chunk (Radford et al., 2019, and their code).

    At each position of the text the alternatives are tried in this order,
    and the first that matches takes as much as it can. ``\p{L}`` (any
    letter) and ``\p{N}`` (any numeral) need the ``regex`` package.
    """
    return "|".join([
        r"'s|'t|'re|'ve|'m|'ll|'d",  # an English contraction's ending (lower case only: "IT'S" gives "'", "S")
        r" ?\p{L}+",  # a run of letters (any script), with the one space before it if there is one
        r" ?\p{N}+",  # a run of digits or other numerals, with its space
        r" ?[^\s\p{L}\p{N}]+",  # a run of anything else but whitespace (punctuation, emoji), with its space
        r"\s+(?!\S)",  # whitespace, leaving the last space before a non-space to the chunk that follows
        r"\s+",  # the whitespace left: one newline or tab (not taken by " ?") before a non-space
    ])


def pre_split(text: str) -> list[str]:
    """The chunks of ``text`` under GPT-2's pattern; joined, they give the text back."""
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}")
    return regex.findall(split_pattern(), text)  # regex keeps the compiled pattern in its cache


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


def train_bpe_chunks(chunks: list[str], vocab_size: int) -> list[Pair]:
    """``train_bpe`` within each chunk: no pair across two chunks is ever counted or merged.

    The counts add up over all chunks, read in order, so the tie rule is the
    same: among equally frequent pairs, the one that occurs first wins.
    ``train_bpe_chunks([text], V)`` is ``train_bpe(text, V)``.
    """
    check_vocab_size(vocab_size)
    sequences = [list(to_bytes(chunk)) for chunk in chunks]
    merges: list[Pair] = []
    for new_id in range(256, vocab_size):
        counts: dict[Pair, int] = {}  # over all chunks, in order of first occurrence
        for ids in sequences:
            for pair, n in pair_counts(ids).items():
                counts[pair] = counts.get(pair, 0) + n
        if not counts:  # every chunk is a single token
            break
        best = max(counts, key=counts.get)
        sequences = [merge_pair(ids, best, new_id) for ids in sequences]
        merges.append(best)
    return merges


def bpe_encode(text: str, merges: list[Pair]) -> list[int]:
    """Apply the merges in the order they were learned, as training did."""
    ids = list(to_bytes(text))
    for i, pair in enumerate(merges):
        ids = merge_pair(ids, tuple(pair), 256 + i)
    return ids


def bpe_encode_split(text: str, merges: list[Pair]) -> list[int]:
    """Split first, then encode each chunk on its own: no token crosses a chunk boundary."""
    return [token_id for chunk in pre_split(text) for token_id in bpe_encode(chunk, merges)]


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


def train_bpe_fast(text: str, vocab_size: int, split: bool = False) -> list[Pair]:
    """``train_bpe(text)``, or with ``split`` ``train_bpe_chunks(pre_split(text))``, in about O(n log n).

    Pair counts are updated locally after each merge instead of recounted.
    Equal chunks always hold the same tokens, so each distinct chunk is stored
    once, in order of first occurrence, with its number of occurrences as a
    weight: a pair's count is the sum of the weights of the places it occurs.
    The distinct chunks, one after another with a gap between two, form a
    doubly linked list over their byte positions (a node keeps the position of
    its first byte, so positions stay in order). The first occurrence of a pair
    in the text lies in the first distinct chunk that holds it, so the smallest
    position is the first occurrence, as the tie rule needs. Each pair keeps
    its count, the set of positions where it starts and a heap of those
    positions; a global heap ordered by (-count, first position) finds the
    next merge. Heaps are cleaned lazily.
    """
    check_vocab_size(vocab_size)
    weights_of: dict[str, int] = {}  # distinct chunks in order of first occurrence -> occurrences
    for chunk in pre_split(text) if split else [text]:
        weights_of[chunk] = weights_of.get(chunk, 0) + 1
    GAP = -1  # between two chunks: never part of a pair
    tok: list[int] = []
    weight: list[int] = []  # the weight of the chunk each position belongs to
    for chunk, w in weights_of.items():
        data = to_bytes(chunk)
        tok.extend(data)
        weight.extend([w] * len(data))
        tok.append(GAP)
        weight.append(0)
    n = len(tok)
    nxt = list(range(1, n + 1))
    prev = list(range(-1, n - 1))
    positions: dict[Pair, set[int]] = defaultdict(set)
    count: dict[Pair, int] = defaultdict(int)
    first: dict[Pair, list[int]] = defaultdict(list)  # min-heaps of start positions
    for i in range(n - 1):
        if tok[i] != GAP and tok[i + 1] != GAP:
            positions[(tok[i], tok[i + 1])].add(i)
            count[(tok[i], tok[i + 1])] += weight[i]
    for pair, where in positions.items():
        first[pair] = sorted(where)  # a sorted list is a valid heap

    def first_position(pair: Pair) -> int:
        heap, live = first[pair], positions[pair]
        while heap[0] not in live:
            heapq.heappop(heap)
        return heap[0]

    queue = [(-count[pair], first_position(pair), pair) for pair in positions]
    heapq.heapify(queue)

    def add(pair: Pair, i: int, touched: set[Pair]) -> None:
        positions[pair].add(i)
        count[pair] += weight[i]
        heapq.heappush(first[pair], i)
        touched.add(pair)

    def remove(pair: Pair, i: int, touched: set[Pair]) -> None:
        positions[pair].discard(i)
        count[pair] -= weight[i]
        touched.add(pair)

    merges: list[Pair] = []
    while len(merges) < vocab_size - 256 and queue:
        neg_count, start, pair = heapq.heappop(queue)
        where = positions.get(pair)
        if not where or -neg_count != count[pair] or start != first_position(pair):
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
            if p >= 0 and tok[p] != GAP:
                remove((tok[p], a), p, touched)
                add((tok[p], new_id), p, touched)
            if r < n and tok[r] != GAP:
                remove((b, tok[r]), j, touched)
                add((new_id, tok[r]), i, touched)
            tok[i], tok[j] = new_id, -2  # -2: a consumed position, never visited again
            nxt[i] = r
            if r < n:
                prev[r] = i
        for changed in touched:
            if positions[changed]:
                heapq.heappush(queue, (-count[changed], first_position(changed), changed))
            else:
                for table in (positions, count, first):
                    table.pop(changed, None)
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

    With ``split=True`` (the book's tokenizer) the text is cut by
    ``pre_split`` before BPE, in training and in encoding; without it, BPE
    runs over the whole text, merges may cross words and lines, and ``encode``
    gives ``bpe_encode``'s ids.

    With ``end_of_text=True`` the vocabulary has one more id after the merges,
    ``end_of_text_id = 256 + len(merges)``: a token that no text encodes to,
    which marks where a document ends (and, placed first, where one starts).
    It spells no bytes (``token_bytes`` is empty, so it adds nothing to a byte
    count) and decodes to ``END_OF_TEXT`` so that it shows when printed.
    """

    def __init__(self, merges: list[Pair], end_of_text: bool = False, split: bool = False):
        self.merges = [tuple(int(x) for x in pair) for pair in merges]
        for i, (a, b) in enumerate(self.merges):
            if not (0 <= a < 256 + i and 0 <= b < 256 + i):
                raise ValueError(f"merge {i} {(a, b)} refers to an id not created before it")
        self.vocab = build_vocab(self.merges)
        self.split = bool(split)
        self.ranks = {pair: i for i, pair in enumerate(self.merges)}  # a pair's merge number
        self._chunk_ids: dict[str, list[int]] = {}  # encoded chunks: a text repeats its words
        self.end_of_text_id: int | None = None
        if end_of_text:
            self.end_of_text_id = len(self.vocab)
            self.vocab.append(b"")

    @classmethod
    def train(cls, text: str, vocab_size: int, end_of_text: bool = False, split: bool = False) -> "BPETokenizer":
        """Learn merges until the vocabulary (bytes, merges and the end-of-text id if asked for) has vocab_size ids."""
        return cls(train_bpe_fast(text, vocab_size - end_of_text, split), end_of_text, split)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def encode(self, text: str) -> list[int]:
        if not self.split:
            ids = np.frombuffer(to_bytes(text), dtype=np.uint8).astype(np.int64)
            for i, pair in enumerate(self.merges):
                if ids.size < 2:
                    break
                ids = merge_pair_array(ids, pair, 256 + i)
            return ids.tolist()
        out: list[int] = []
        for chunk in pre_split(text):
            ids = self._chunk_ids.get(chunk)
            if ids is None:
                ids = self._encode_chunk(chunk)
                if len(self._chunk_ids) < 100_000:  # bounded: a long stream of new words cannot fill memory
                    self._chunk_ids[chunk] = ids
            out.extend(ids)
        return out

    def _encode_chunk(self, chunk: str) -> list[int]:
        """``bpe_encode(chunk, merges)``: merge the chunk's earliest-learned pair until none is left.

        Replaying all merges in order does the same: a merge that creates id
        ``256 + k`` only makes pairs that contain it, which were learned after
        merge ``k``, so no earlier merge can apply again later.
        """
        ids = list(to_bytes(chunk))
        while len(ids) > 1:
            rank = min(self.ranks.get(pair, len(self.ranks)) for pair in zip(ids, ids[1:]))
            if rank == len(self.ranks):  # no pair of the chunk was ever merged
                break
            ids = merge_pair(ids, self.merges[rank], 256 + rank)
        return ids

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
                           "end_of_text": self.end_of_text_id is not None, "split": self.split})

    @classmethod
    def from_json(cls, data: str) -> "BPETokenizer":
        try:
            payload = json.loads(data)
            merges = payload["merges"]
            end_of_text = bool(payload.get("end_of_text", False))
            split = bool(payload.get("split", False))  # tokenizers saved before the pre-split had none
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"not a saved BPE tokenizer: {err}") from None
        return cls([tuple(pair) for pair in merges], end_of_text, split)

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
