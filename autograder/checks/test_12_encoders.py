"""Public checks for 12_encoders: bidirectional_attention, mask_tokens, masked_lm_loss, CrossAttention."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from autograder.grading import expect
from autograder.checks.test_04_attention import random_mha_state, torch_mha
from autograder.sandbox.forbidden import GROUPS
from autograder.grading.registry import check

BOOK = "book/15_encoders.html"
NOT_MASKED = -100


def attention_function(sub):
    return sub.function("bidirectional_attention", ["q", "k", "v", "key_padding_mask"],
                        forbid=GROUPS["bidirectional"])


def masking_function(sub):
    return sub.function("mask_tokens", ["ids", "mask_id", "vocab_size", "special_ids", "p", "generator"],
                        forbid=GROUPS["masking"])


def loss_function(sub):
    return sub.function("masked_lm_loss", ["logits", "labels"], forbid=GROUPS["masked_lm"])


def cross_class(sub):
    return sub.cls("CrossAttention", ["d_model", "n_heads"], forbid=GROUPS["cross_attention"])


def padding_mask(lengths: list[int], T: int) -> torch.Tensor:
    """(B, T) True after each row's length: the padding of rows of those lengths."""
    return torch.arange(T)[None, :] >= torch.tensor(lengths)[:, None]


def by_hand(q, k, v, hidden: torch.Tensor | None = None, causal: bool = False, scale: bool = True):
    """softmax(q k^T / sqrt(d_k)) v with ``hidden`` (broadcastable to the scores) set to -inf."""
    scores = q @ k.transpose(-2, -1) / (math.sqrt(q.shape[-1]) if scale else 1.0)
    if causal:
        scores = scores.masked_fill(torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1), float("-inf"))
    if hidden is not None:
        scores = scores.masked_fill(hidden, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def attention_hint(got, q, k, v, padding) -> str:
    """Which usual mistake a wrong attention output matches."""
    hint = ("Scale the scores by 1/sqrt(d_k), set the scores of padded KEYS (columns) to -inf for every query "
            "and head, softmax over the keys, then multiply by v.")
    if isinstance(got, tuple):
        return "Return the output tensor alone, not (output, weights)."
    if not isinstance(got, torch.Tensor) or got.shape != by_hand(q, k, v).shape:
        return hint
    B, T_k = padding.shape
    keys = padding.view(B, *([1] * (q.dim() - 2)), T_k)
    candidates = [
        (by_hand(q, k, v, keys, causal=True), "You left the causal mask on: an encoder's query reads every key, "
                                              "the later ones too. Mask only the padding."),
        (by_hand(q, k, v), "The padding still gets weight: set the scores of the keys where key_padding_mask is "
                           "True to -inf before the softmax."),
        (by_hand(q, k, v, ~keys), "The mask is inverted: True means padding, the keys to HIDE; you hid the real "
                                  "keys and kept the padding."),
        (by_hand(q, k, v, keys, scale=False), "Divide the scores by sqrt(d_k) before the softmax."),
    ]
    for expected, message in candidates:
        if torch.allclose(got, expected, atol=1e-5, equal_nan=True):
            return message
    return hint


@check("12_encoders", "bidirectional_attention", points=3, book=BOOK + "#attention-without-the-causal-mask",
       reference="tinyllm.attention:bidirectional_attention")
def test_bidirectional_attention_public(sub):
    """bidirectional_attention matches F.scaled_dot_product_attention with a key padding mask, and no causal mask."""
    attend = attention_function(sub)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 8, generator=g) for _ in range(3))  # (B, n_heads, T, d_k)
    got = attend(q, k, v)
    expect.close(got, F.scaled_dot_product_attention(q, k, v), "bidirectional_attention(q, k, v) with no mask",
                 "q, k, v of shape (2, 3, 6, 8)", hint=attention_hint(got, q, k, v, padding_mask([6, 6], 6)))
    padding = padding_mask([6, 4], 6)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=~padding[:, None, None, :])
    got = attend(q, k, v, padding)
    hint = attention_hint(got, q, k, v, padding)
    if isinstance(got, torch.Tensor) and got.shape == expected.shape and torch.isnan(got[1]).any():
        hint = ("Rows of nan: you hid the padded QUERIES (rows of the scores). key_padding_mask hides keys, the "
                "columns: broadcast it as (B, 1, 1, T_k) over the heads and the queries.")
    expect.close(got, expected, "bidirectional_attention(q, k, v, key_padding_mask) with row 1's last 2 keys padded",
                 "q, k, v (2, 3, 6, 8)", hint=hint)
    noisy_k, noisy_v = k.clone(), v.clone()
    noisy_k[1, :, 4:], noisy_v[1, :, 4:] = 1e3, -1e3
    expect.close(attend(q, noisy_k, noisy_v, padding), expected, "bidirectional_attention with garbage in the padding",
                 hint="Whatever the padded keys and values hold must not reach the output: their weight is 0.")
    q2 = torch.randn(3, 2, 4, 8, generator=g)  # four queries reading seven keys
    k2, v2 = torch.randn(3, 2, 7, 8, generator=g), torch.randn(3, 2, 7, 5, generator=g)
    padding2 = padding_mask([7, 5, 1], 7)
    expected2 = F.scaled_dot_product_attention(q2, k2, v2, attn_mask=~padding2[:, None, None, :])
    expect.close(attend(q2, k2, v2, padding2), expected2,
                 "bidirectional_attention with 4 queries, 7 keys and values of width 5",
                 "q (3, 2, 4, 8), k (3, 2, 7, 8), v (3, 2, 7, 5), key lengths 7, 5, 1",
                 hint="T_q and T_k can differ: the mask has T_k columns and hides keys for every query.")
    q3, k3, v3 = torch.randn(2, 5, 8, generator=g), torch.randn(2, 6, 8, generator=g), torch.randn(2, 6, 3, generator=g)
    padding3 = padding_mask([6, 3], 6)
    expected3 = F.scaled_dot_product_attention(q3, k3, v3, attn_mask=~padding3[:, None, :])
    expect.close(attend(q3, k3, v3, padding3), expected3,
                 "bidirectional_attention on (B, T, d) inputs with no head axis",
                 "q (2, 5, 8), k (2, 6, 8), v (2, 6, 3), key lengths 6, 3",
                 hint="The heads' axis may be absent: q, k, v of shape (B, T, d). Count the axes from the end "
                      "(the keys' last two are T_k and d_k) and give the mask a 1 for every axis between B and T_k.")


def eligible_ids(seed: int, rows: int = 400, T: int = 64) -> torch.Tensor:
    """Ids below 50 (ordinary), an end-of-text id 50 opening each row, and padding (52) after each row's length."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(50, (rows, T), generator=g)
    ids[:, 0] = 50
    lengths = torch.randint(T // 2, T + 1, (rows,), generator=g)
    ids[torch.arange(T)[None, :] >= lengths[:, None]] = 52
    return ids


SPECIAL = [50, 51, 52]  # end-of-text, [MASK], [PAD]
MASK_ID, VOCAB = 51, 53


def unpack_masking(result, ids: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
    expect.true(isinstance(result, tuple) and len(result) == 2,
                f"{what} should return a tuple (inputs, labels); it returned {expect.describe_tensor(result)}.")
    inputs, labels = result
    for name, value in (("inputs", inputs), ("labels", labels)):
        expect.true(isinstance(value, torch.Tensor) and tuple(value.shape) == tuple(ids.shape),
                    f"{what}: {name} should be a tensor of the ids' shape {tuple(ids.shape)}, got "
                    f"{expect.describe_tensor(value)}.")
    return inputs.long(), labels.long()


@check("12_encoders", "mask_tokens", points=3, book=BOOK + "#masked-language-modelling")
def test_mask_tokens_public(sub):
    """mask_tokens chooses about p of the ordinary positions, never a special one, and labels exactly those."""
    mask_tokens = masking_function(sub)
    ids = eligible_ids(seed=1)
    ordinary = ids < 50
    what = "mask_tokens(ids, mask_id=51, vocab_size=53, special_ids=[50, 51, 52], p=0.15)"
    inputs, labels = unpack_masking(
        mask_tokens(ids, MASK_ID, VOCAB, SPECIAL, p=0.15, generator=torch.Generator().manual_seed(2)), ids, what)
    chosen = labels != NOT_MASKED
    changed = inputs != ids
    expect.true(not (changed & ~chosen).any(),
                f"{what} changed the input at a position it did not label: every position whose label is "
                f"NOT_MASKED (-100) keeps its id as input.")
    expect.true(not ((labels == NOT_MASKED).all() and changed.any()),
                f"{what}: no position has a label. A chosen position's label is its ORIGINAL id; only the "
                f"unchosen ones get NOT_MASKED.")
    expect.true(bool((labels[chosen] == ids[chosen]).all()),
                f"{what}: a chosen position's label must be its ORIGINAL id (the token the model must recover), "
                f"not the replacement.")
    special_chosen = int((chosen & ~ordinary).sum())
    padding_chosen = int((chosen & (ids == 52)).sum())
    expect.true(special_chosen == 0,
                f"{what} chose {special_chosen} special positions ({padding_chosen} of them padding): a position "
                f"whose id is in special_ids (padding, end-of-text, the mask) is never chosen. Padding is not text: "
                f"masking it would train the model to predict padding, and end-of-text is structure, not content.")
    share = chosen.sum().item() / ordinary.sum().item()
    expect.true(abs(share - 0.15) < 0.02,
                f"{what} chose {100 * share:.1f}% of the {int(ordinary.sum())} ordinary positions; with p=0.15 "
                f"about 15% should be chosen (each independently, with probability p).")
    _, labels3 = unpack_masking(
        mask_tokens(ids, MASK_ID, VOCAB, SPECIAL, p=0.4, generator=torch.Generator().manual_seed(3)), ids,
        "mask_tokens(..., p=0.4)")
    share3 = (labels3 != NOT_MASKED).sum().item() / ordinary.sum().item()
    expect.true(abs(share3 - 0.4) < 0.03,
                f"mask_tokens(..., p=0.4) chose {100 * share3:.1f}% of the ordinary positions: use the argument p, "
                f"not a fixed 15%.")


@check("12_encoders", "mask_tokens", points=2, book=BOOK + "#masked-language-modelling")
def test_mask_tokens_recipe_public(sub):
    """Of the chosen positions, 80% show mask_id, 10% a random ordinary token, 10% their own; seeded."""
    mask_tokens = masking_function(sub)
    ids = eligible_ids(seed=4)
    what = "mask_tokens(ids, mask_id=51, vocab_size=53, special_ids=[50, 51, 52], p=0.15)"
    inputs, labels = unpack_masking(
        mask_tokens(ids, MASK_ID, VOCAB, SPECIAL, p=0.15, generator=torch.Generator().manual_seed(5)), ids, what)
    chosen = labels != NOT_MASKED
    n = int(chosen.sum())
    expect.true(n > 0, f"{what} chose no position at all.")
    masked = (inputs == MASK_ID) & chosen
    kept = (inputs == ids) & chosen
    replaced = chosen & ~masked & ~kept
    shares = {name: int(part.sum()) / n for name, part in (("mask", masked), ("kept", kept), ("random", replaced))}
    summary = (f"of the {n} chosen positions {100 * shares['mask']:.1f}% became mask_id, "
               f"{100 * shares['random']:.1f}% another token and {100 * shares['kept']:.1f}% kept their id")
    expect.true(shares["mask"] <= 0.97,
                f"{what}: {summary}. Every chosen token became [MASK]: BERT's recipe replaces only 80% of them; 10% "
                f"get a random ordinary token and 10% stay as they are, because [MASK] never appears in the text the "
                f"model later reads, and the model must learn to represent every input token.")
    expect.true(abs(shares["mask"] - 0.8) < 0.04 and abs(shares["random"] - 0.1) < 0.04
                and abs(shares["kept"] - 0.1) < 0.04,
                f"{what}: {summary}; the recipe is 80% mask_id, 10% a random ordinary token, 10% unchanged "
                f"(a random token can equal the original now and then, so 'kept' may be slightly above 10%).")
    bad = inputs[replaced]
    expect.true(bool(((bad >= 0) & (bad < 50)).all()),
                f"{what} replaced a chosen token by {sorted(set(bad[(bad < 0) | (bad >= 50)].tolist()))[:5]}: a random "
                f"replacement is an ordinary token, an id below vocab_size that is not in special_ids.")
    again = mask_tokens(ids, MASK_ID, VOCAB, SPECIAL, p=0.15, generator=torch.Generator().manual_seed(5))
    same = isinstance(again, tuple) and len(again) == 2 and all(
        isinstance(a, torch.Tensor) and torch.equal(a.long(), b) for a, b in zip(again, (inputs, labels)))
    expect.true(same, f"{what} twice with generators seeded alike gave different results: draw every random number "
                      f"(torch.rand, torch.randint) with generator=generator.")
    other, _ = unpack_masking(
        mask_tokens(ids, MASK_ID, VOCAB, SPECIAL, p=0.15, generator=torch.Generator().manual_seed(6)), ids, what)
    expect.true(not torch.equal(other, inputs), f"{what} gave the same result for two different seeds: use the "
                                                f"generator you are given.")


def loss_hint(got, logits, labels) -> str:
    B, T, V = logits.shape
    nll = F.cross_entropy(logits.reshape(B * T, V), labels.clamp(min=0).reshape(B * T), reduction="none").view(B, T)
    scored = labels != NOT_MASKED
    hint = "Keep only the positions whose label is not NOT_MASKED, and take the mean cross-entropy over them."
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        value = got.reshape(()).double()
        for expected, message in (
                (nll.mean(), "You scored every position: the unchosen ones (label NOT_MASKED) are visible in the "
                             "input, so predicting them teaches the model to copy. Score only the chosen ones."),
                ((nll * scored).sum() / (B * T), "You divided by all B * T positions: divide by the number of scored "
                                                 "positions."),
                ((nll * scored).sum(), "Take the mean over the scored positions, not the sum.")):
            if torch.isclose(value, expected.double(), atol=1e-4):
                return message
    return hint


@check("12_encoders", "masked_lm_loss", points=2, book=BOOK + "#masked-language-modelling")
def test_masked_lm_loss_public(sub):
    """masked_lm_loss is F.cross_entropy with ignore_index=-100 over (B, T, V) logits."""
    loss = loss_function(sub)
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(3, 8, 11, generator=g) * 2
    labels = torch.randint(11, (3, 8), generator=g)
    labels[torch.rand(3, 8, generator=g) > 0.3] = NOT_MASKED
    labels[0, 0] = 4  # at least one scored position per row
    expected = F.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1), ignore_index=NOT_MASKED)
    got = loss(logits, labels)
    expect.close(got, expected, "masked_lm_loss(logits, labels) for logits (3, 8, 11)", atol=1e-5,
                 hint=loss_hint(got, logits, labels))


def cross_hint(got, reference: nn.MultiheadAttention, x, memory, padding) -> str:
    hint = ("Queries from q_proj(x); keys and values from k_proj(memory) and v_proj(memory); split the heads, "
            "attend with the memory's padding hidden, merge the heads, then out_proj.")
    if not isinstance(got, torch.Tensor):
        return hint
    T, S = x.shape[1], memory.shape[1]
    if tuple(got.shape) != tuple(x.shape):
        return (f"The output has the decoder's shape (B, T, d_model) = {tuple(x.shape)}: one output per query, and "
                f"the queries come from x (q_proj(x)), not from memory.")
    with torch.no_grad():
        candidates = [
            (reference(x, x, x, need_weights=False)[0], "Keys and values came from x, the decoder: in cross-attention "
                                                         "they come from memory, the encoder's output."),
            (reference(x, memory, memory, key_padding_mask=padding,
                       attn_mask=torch.ones(T, S, dtype=torch.bool).triu(1), need_weights=False)[0],
             "You left a causal mask on: the whole source is known before the first target token, so every query "
             "reads every memory position."),
        ]
        if padding is not None:
            candidates.append((reference(x, memory, memory, need_weights=False)[0],
                               "The memory's padding got weight: pass memory_padding_mask to the attention."))
    for expected, message in candidates:
        if torch.allclose(got, expected, atol=1e-5):
            return message
    return hint


@check("12_encoders", "CrossAttention", points=3, book=BOOK + "#cross-attention-and-an-encoderdecoder")
def test_CrossAttention_public(sub):
    """CrossAttention with copied weights matches nn.MultiheadAttention(x, memory, memory, key_padding_mask)."""
    CrossAttention = cross_class(sub)
    d_model, n_heads = 16, 4
    state = random_mha_state(d_model, seed=8)
    reference = torch_mha(state, d_model, n_heads)  # nn.MultiheadAttention, the public oracle
    g = torch.Generator().manual_seed(9)
    x, memory = torch.randn(3, 5, d_model, generator=g), torch.randn(3, 7, d_model, generator=g)
    padding = padding_mask([7, 4, 2], 7)
    with expect.blame(sub, "bidirectional_attention"):
        module = CrossAttention(d_model, n_heads)
        module.load_state_dict(state)
        module.eval()
        # Unpadded first: keys taken from x still run there (a padding mask of the memory's length would not fit
        # them), so that mistake gets its name rather than a shape error.
        with torch.no_grad():
            expected, _ = reference(x, memory, memory, need_weights=False)
        got = module(x, memory)
        expect.close(got, expected, f"CrossAttention({d_model}, {n_heads})(x, memory) for x (3, 5, {d_model}) and "
                     f"memory (3, 7, {d_model}), no padding mask", atol=1e-5,
                     hint=cross_hint(got, reference, x, memory, None))
        with torch.no_grad():
            expected, _ = reference(x, memory, memory, key_padding_mask=padding, need_weights=False)
        got = module(x, memory, padding)
        expect.close(got, expected, f"CrossAttention({d_model}, {n_heads})(x, memory, memory_padding_mask) for x "
                     f"(3, 5, {d_model}) and memory (3, 7, {d_model})", atol=1e-5,
                     hint=cross_hint(got, reference, x, memory, padding))
