"""Public checks for 11_inference: int8 and group-wise int4 quantization, speculative decoding.

Oracles: the closed forms of symmetric absmax quantization, computed here with
plain torch; the exact output distribution of the accept/reject rule on small
vocabularies (``tinyllm.speculative.accept_distribution``, an enumeration of
every draft and every outcome), against which the student's step is sampled;
and, for the loop, chapter 9's greedy ``generate`` and the number of target
calls.
"""

from __future__ import annotations

import math

import torch

from autograder.grading import expect
from autograder.grading.api import CheckFailure
from autograder.checks.test_08_fast_generation import library_model
from autograder.sandbox.forbidden import GROUPS
from autograder.grading.registry import check
from tinyllm.model import GPTConfig, TinyLlama
from tinyllm.speculative import RULES, accept_distribution, sampling_probs

BOOK = "book/14_smaller_faster.html"
SMALL = dict(vocab_size=300, context_length=32, d_model=32, n_layers=2, n_heads=4, d_ff=64, dropout=0.0,
             arch="llama", n_kv_heads=2)
Z_LIMIT = 5.5  # a correct rule exceeds it on one outcome with probability ~4e-8


# --------------------------------------------------------------------------- quantization


def int8_by_hand(w: torch.Tensor, levels: float = 127.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax codes and (out, 1) scales, a scale per row; ``levels`` 127 (the contract) or a mistake's."""
    scale = w.abs().amax(dim=1, keepdim=True) / levels
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    return torch.clamp(torch.round(w / scale), -127, 127), scale


def int4_by_hand(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    out_features, in_features = w.shape
    groups = w.reshape(out_features, in_features // group_size, group_size)
    scales = groups.abs().amax(dim=-1) / 7
    scales = torch.where(scales == 0, torch.ones_like(scales), scales)
    return torch.clamp(torch.round(groups / scales[..., None]), -7, 7).reshape(out_features, in_features), scales


def quantizer(sub, name: str, params: list[str]):
    return sub.function(name, params, forbid=GROUPS["quantize"])


def pair(got, what: str) -> tuple:
    expect.true(isinstance(got, (tuple, list)) and len(got) == 2,
                f"{what} should return a pair (codes, scales); it returned {expect.describe_tensor(got)}.")
    return tuple(got)


def zeros_and_dtypes(codes: torch.Tensor, scales: torch.Tensor, zero_scale: torch.Tensor, name: str, where: str,
                     unit: str) -> None:
    """All-zero weights must get the scale 1 (not 0: 0 / 0 is nan); codes int8, scales float32."""
    if not torch.isfinite(scales).all() or not torch.isfinite(codes.double()).all() or zero_scale == 0:
        raise CheckFailure(f"{name} of a matrix whose {where} gave a scale of 0 (or inf/nan codes): 0 / 0 is nan. "
                           f"Give {unit} of zeros the scale 1, so that its codes are 0.")
    expect.equal(codes.dtype, torch.int8, f"the dtype of {name}'s codes",
                 hint="Store the codes as one byte each: .to(torch.int8) after rounding and clamping.")
    expect.equal(scales.dtype, torch.float32, f"the dtype of {name}'s scales",
                 hint="Keep the scales in float32 (.float()).")


def awkward_matrix(seed: int) -> torch.Tensor:
    """(6, 10): ordinary rows, a row of zeros, a row whose largest magnitude is negative, one with an outlier."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 10, generator=g) * 0.05
    w[2] = 0.0  # a row of zeros
    w[3, 4] = -0.9  # the row's largest magnitude is negative
    w[5, 1] = 2.5  # an outlier: its row's step is coarse, the other rows keep theirs
    return w


@check("11_inference", "quantize_int8", points=2, book=BOOK + "#symmetric-absmax-one-scale-per-row")
def test_quantize_int8_public(sub):
    """quantize_int8: int8 codes round(w / s) in [-127, 127] with s = max|w_row| / 127 per row, zero row s = 1."""
    fn = quantizer(sub, "quantize_int8", ["w"])
    w = awkward_matrix(0)
    codes, scale = int8_by_hand(w)
    got_codes, got_scale = pair(fn(w), "quantize_int8(w)")
    got_codes, got_scale = expect.tensor(got_codes, "quantize_int8's codes"), expect.tensor(got_scale, "quantize_int8's scale")
    if got_scale.numel() == 1 or (got_scale.numel() == w.shape[0] and torch.allclose(
            got_scale.reshape(-1), torch.full((w.shape[0],), w.abs().max().item() / 127), rtol=1e-4)):
        raise CheckFailure(
            "quantize_int8 used one scale for the whole tensor (its largest magnitude / 127): then the outlier "
            "2.5 in row 5 sets the step of every row, and the small rows get a handful of codes. Take the "
            "largest magnitude of each output row: w.abs().amax(dim=1, keepdim=True) / 127, shape (out_features, 1).")
    expect.equal(tuple(got_scale.shape), (6, 1), "the shape of quantize_int8's scale for w of shape (6, 10)",
                 hint="One scale per output row, kept as a column (out_features, 1), so that q * scale "
                      "broadcasts over each row.")
    zeros_and_dtypes(got_codes, got_scale, got_scale[2, 0], "quantize_int8", "row 2 is all zeros", "a row")
    hint = "s_i = max_j |w_ij| / 127 for each row; codes = round(w / s) clamped to [-127, 127]."
    if int(got_codes.min()) == -128 or torch.allclose(got_scale, int8_by_hand(w, 128.0)[1], rtol=1e-5) or \
            torch.allclose(got_scale, int8_by_hand(w, 127.5)[1], rtol=1e-5):
        hint = ("Your range is asymmetric: int8 holds -128..127, but the contract's codes are symmetric, "
                "-127..127, with s = max|w| / 127, so that a row's largest magnitude maps to +-127 exactly "
                "whatever its sign (dividing by 128 or 127.5 clips +max to 127 and sends -max to -128).")
    elif torch.allclose(got_scale[3], (w[3].amax() / 127).reshape(1), rtol=1e-4):
        hint = ("Row 3's largest magnitude is the negative -0.9: the scale is the largest ABSOLUTE value over "
                "127 (w.abs().amax), not the largest value, or -0.9 is clipped.")
    expect.close(got_scale, scale, "quantize_int8(w)'s scale for w (6, 10) with a zero row, a negative "
                 "extreme and an outlier", w, rtol=1e-5, atol=1e-9, hint=hint)
    expect.equal(got_codes.long(), codes.long(), "quantize_int8(w)'s codes", w, hint=hint)


@check("11_inference", "dequantize", points=1, book=BOOK + "#symmetric-absmax-one-scale-per-row")
def test_dequantize_public(sub):
    """dequantize(q, scale) is q * scale in float32, each row times its own scale."""
    fn = quantizer(sub, "dequantize", ["q", "scale"])
    g = torch.Generator().manual_seed(1)
    q = torch.randint(-127, 128, (4, 7), generator=g).to(torch.int8)
    scale = torch.rand(4, 1, generator=g) * 0.01 + 1e-3
    got = expect.tensor(fn(q, scale), "dequantize(q, scale)")
    expect.equal(got.dtype, torch.float32, "the dtype of dequantize(q, scale)",
                 hint="Convert the int8 codes to float32 before multiplying: q.float() * scale.")
    expect.close(got, q.float() * scale, "dequantize(q, scale) for codes (4, 7) and scales (4, 1)", q, atol=1e-7,
                 hint="Entry [i, j] is q[i, j] * scale[i, 0]: each row times its own scale.")


@check("11_inference", "quantize_int4", points=1, book=BOOK + "#four-bits-one-scale-per-group")
def test_quantize_int4_public(sub):
    """quantize_int4: codes in [-7, 7], one scale max|w_group| / 7 per group of group_size along dim 1."""
    fn = quantizer(sub, "quantize_int4", ["w", "group_size"])
    g = torch.Generator().manual_seed(2)
    w = torch.randn(3, 12, generator=g) * 0.1
    w[0, 5] = 3.0  # an outlier in row 0's second group (entries 4..7): only that group's scale grows
    w[2, 8:12] = 0.0  # a group of zeros
    codes, scales = int4_by_hand(w, 4)
    got_codes, got_scales = pair(fn(w, 4), "quantize_int4(w, 4)")
    got_codes = expect.tensor(got_codes, "quantize_int4's codes")
    got_scales = expect.tensor(got_scales, "quantize_int4's scales")
    hint = "Row i's group j is w[i, j*g:(j+1)*g]; its scale is max |w_group| / 7; codes round(w / scale) in [-7, 7]."
    row_scales = w.abs().amax(dim=1, keepdim=True) / 7
    if tuple(got_scales.shape) == (3, 1) or (got_scales.numel() == 3 and torch.allclose(
            got_scales.reshape(-1), row_scales.reshape(-1), rtol=1e-4)) or (
            tuple(got_scales.shape) == (3, 3) and torch.allclose(got_scales, row_scales.expand(3, 3), rtol=1e-4)):
        hint = ("You used one scale per row, not one per group: the outlier 3.0 in row 0 then coarsens the whole "
                "row. Reshape each row into (in_features // group_size, group_size) and take each group's maximum.")
    elif tuple(got_scales.shape) == (3, 3) and torch.allclose(
            got_scales, w.reshape(3, 4, 3).abs().amax(dim=1).div(7), rtol=1e-4):
        hint = ("Your groups are strided (entries j, j + 3, j + 6, ...): a group is group_size CONSECUTIVE "
                "entries of a row, w.reshape(out_features, in_features // group_size, group_size).")
    expect.equal(tuple(got_scales.shape), (3, 3), "the shape of quantize_int4(w, 4)'s scales for w (3, 12)",
                 hint="One scale per group: (out_features, in_features // group_size). " + hint)
    zeros_and_dtypes(got_codes, got_scales, got_scales[2, 2], "quantize_int4", "row 2 ends in a group of zeros",
                     "a group")
    if int(got_codes.abs().max()) > 7:
        hint = "Clamp the codes to [-7, 7]: 4 bits, symmetric."
    expect.close(got_scales, scales, "quantize_int4(w, 4)'s scales for w (3, 12) with an outlier and a zero group", w,
                 rtol=1e-5, atol=1e-9, hint=hint)
    expect.equal(got_codes.long(), codes.long(), "quantize_int4(w, 4)'s codes", w, hint=hint)
    got_codes, got_scales = pair(fn(w, 1), "quantize_int4(w, 1)")
    expect.close(got_scales, int4_by_hand(w, 1)[1], "quantize_int4(w, 1)'s scales (a group per weight)", w,
                 rtol=1e-5, atol=1e-9, hint="A group_size of 1 divides every in_features: each weight is its own "
                 "group, with the scale |w| / 7 (1 for a zero).")
    wide = torch.randn(2, 64, generator=g)
    got_scales = pair(sub.function("quantize_int4", ["w"], forbid=GROUPS["quantize"])(wide), "quantize_int4(w)")[1]
    expect.close(got_scales, int4_by_hand(wide, 32)[1], "quantize_int4(w)'s scales for w (2, 64), group_size left "
                 "at its default", wide, rtol=1e-5, hint="The default group_size is 32: two groups per row of 64.")


@check("11_inference", "quantize_int4", points=1, book=BOOK + "#four-bits-one-scale-per-group")
def test_quantize_int4_errors_public(sub):
    """quantize_int4 raises ValueError when group_size does not divide in_features (the error contract, checked
    apart from the values)."""
    fn = quantizer(sub, "quantize_int4", ["w", "group_size"])
    g = torch.Generator().manual_seed(2)
    for shape, group in (((3, 12), 5), ((3, 10), 4), ((2, 6), 12)):
        expect.raises(lambda: fn(torch.randn(*shape, generator=g), group), ValueError,
                      f"quantize_int4(w, {group}) for w of shape {shape} ({group} does not divide {shape[1]})")


@check("11_inference", "dequantize_int4", points=1, book=BOOK + "#four-bits-one-scale-per-group")
def test_dequantize_int4_public(sub):
    """dequantize_int4(q, scales, group_size): each code times its group's scale, float32."""
    fn = quantizer(sub, "dequantize_int4", ["q", "scales", "group_size"])
    g = torch.Generator().manual_seed(3)
    q = torch.randint(-7, 8, (2, 8), generator=g).to(torch.int8)
    scales = torch.rand(2, 4, generator=g) + 0.1
    expected = (q.float().reshape(2, 4, 2) * scales[..., None]).reshape(2, 8)
    got = expect.tensor(fn(q, scales, 2), "dequantize_int4(q, scales, 2)")
    expect.equal(got.dtype, torch.float32, "the dtype of dequantize_int4(q, scales, 2)",
                 hint="Convert the codes to float32: q.float().")
    expect.close(got, expected, "dequantize_int4(q, scales, 2) for codes (2, 8) and scales (2, 4)", q, atol=1e-6,
                 hint="Entry [i, j] is q[i, j] * scales[i, j // group_size].")


# --------------------------------------------------------------------------- speculative decoding


def accept_function(sub):
    return sub.function("speculative_accept", ["p", "q", "draft", "generator"], forbid=GROUPS["speculative"])


def ids_of(got, what: str, vocab: int, k: int) -> tuple[int, ...]:
    """The output as a tuple of ids, or a failure that says what is wrong with its form."""
    got = expect.tensor(got, what)
    expect.true(got.dim() == 1 and not got.is_floating_point(), f"{what} should return a 1-D tensor of integer ids; "
                f"it returned {expect.describe_tensor(got)}.")
    ids = tuple(int(x) for x in got.tolist())
    expect.true(1 <= len(ids) <= k + 1, f"{what} returned {len(ids)} ids for {k} drafted tokens: {list(ids)}. It "
                f"returns the accepted draft tokens and exactly one more, so 1 to {k + 1} ids"
                + (" (with k = 0, no draft: one token drawn from p[0])." if k == 0 else "."))
    if any(x < 0 or x >= vocab for x in ids):
        raise CheckFailure(
            f"{what} returned the id {max(ids, key=lambda x: abs(x))}, outside the vocabulary of {vocab}: {list(ids)}. "
            "Drawing by inverse CDF from max(p - q, 0) without dividing by its sum searches past the end when the "
            "uniform number exceeds that sum: normalise the residual first (or use torch.multinomial, which does).")
    return ids


def draws(fn, p: torch.Tensor, q: torch.Tensor, n: int, seed: int, drafts: torch.Tensor | None = None) -> dict:
    """{output ids: count} of n calls, each draft drawn from q (or the given drafts), each with its own generator."""
    g = torch.Generator().manual_seed(seed)
    counts: dict[tuple, int] = {}
    k, vocab = q.shape[0], p.shape[1]
    for i in range(n):
        draft = drafts if drafts is not None else (
            torch.multinomial(q, 1, generator=g)[:, 0] if k else torch.zeros(0, dtype=torch.long))
        ids = ids_of(fn(p, q, draft, generator=torch.Generator().manual_seed(seed * 7919 + i)),
                     f"speculative_accept(p, q, draft={draft.tolist()})", vocab, k)
        counts[ids] = counts.get(ids, 0) + 1
    return counts


def mistaken_distributions(p: torch.Tensor, q: torch.Tensor) -> dict[str, dict[tuple, float]]:
    """The exact output distribution of each usual mistake: the library's wrong rules, and no token after an
    all-accepted draft (the right rule's outputs with that token dropped)."""
    mistakes = {rule: accept_distribution(p, q, rule) for rule in RULES if rule != "correct"}
    k, no_bonus = q.shape[0], {}
    for out, weight in accept_distribution(p, q).items():
        key = out[:k] if len(out) == k + 1 else out
        no_bonus[key] = no_bonus.get(key, 0.0) + weight
    mistakes["no bonus token"] = no_bonus
    return mistakes


def likeliest_mistake(counts: dict, p: torch.Tensor, q: torch.Tensor) -> str | None:
    """The usual mistake whose exact distribution explains the counts far better than the right rule, if any."""
    def loglik(exact: dict) -> float:
        return sum(c * math.log(max(exact.get(out, 0.0), 1e-12)) for out, c in counts.items())

    right = loglik(accept_distribution(p, q))
    scores = {rule: loglik(exact) for rule, exact in mistaken_distributions(p, q).items()}
    best = max(scores, key=scores.get)
    return best if scores[best] > right + 10 else None


MISTAKE_HINTS = {
    "accept with q/p": "It looks like you accept with probability min(1, q/p): the rule is min(1, p/q), the TARGET's "
                       "probability over the draft's, so a token the draft overrates is kept less often.",
    "resample from p": "It looks like you draw the replacement from p: after a rejection it must come from the "
                       "residual max(p - q, 0), normalised; p itself would count the tokens the draft already "
                       "proposes twice.",
    "inverse CDF, not renormalised": "It looks like you draw the replacement by inverse CDF from max(p - q, 0) "
                                     "without dividing by its sum, so the missing mass falls on the last token: "
                                     "normalise it first (torch.multinomial normalises by itself).",
    "bonus from p[k-1]": "It looks like the extra token after an all-accepted draft comes from p[k-1]: it comes "
                         "from p[k], the target's distribution AFTER the last drafted token.",
    "no bonus token": "It looks like nothing follows an all-accepted draft: after k acceptances draw one more token "
                      "from p[k] (the same call of the target gave it), so that every round writes a token of the "
                      "target's own.",
}


def position_counts(outcomes: dict, position: int, vocab: int) -> list[float]:
    """Summed weight (or count) of each token at ``position``, over the outputs long enough to have one."""
    totals = [0.0] * vocab
    for out, weight in outcomes.items():
        if len(out) > position:
            totals[out[position]] += weight
    return totals


def z_scores(counts: dict, p: torch.Tensor, q: torch.Tensor):
    """(where, z) of every output and of every token at every position: how far the counts are from the rule's."""
    exact = accept_distribution(p, q)
    n = sum(counts.values())
    for out, w in exact.items():
        if 0 < w < 1:
            yield f"the output {list(out)}", (counts.get(out, 0) - n * w) / math.sqrt(n * w * (1 - w)), \
                counts.get(out, 0), n * w
    vocab = p.shape[1]
    for j in range(q.shape[0] + 1):
        reached = position_counts(counts, j, vocab)
        chances = position_counts(exact, j, vocab)
        m, total = sum(reached), sum(chances)
        for y in range(vocab):
            w = chances[y] / total if total else 0.0
            if m and 0 < w < 1:  # token y at position j, among the outputs that reach position j
                yield f"token {y} at position {j} (of the {int(m)} outputs that reach it)", \
                    (reached[y] - m * w) / math.sqrt(m * w * (1 - w)), reached[y], m * w


def check_distribution(counts: dict, p: torch.Tensor, q: torch.Tensor, what: str) -> None:
    """The counts must be a sample of the rule's exact output distribution: no impossible output, no count
    (of an output, or of a token at a position) more than Z_LIMIT standard deviations from its expectation."""
    exact = accept_distribution(p, q)
    n = sum(counts.values())
    impossible = [out for out in counts if out not in exact]
    where, worst_z, seen, expected = max(z_scores(counts, p, q), key=lambda item: abs(item[1]),
                                         default=("", 0.0, 0, 0.0))
    if not impossible and abs(worst_z) <= Z_LIMIT:
        return
    mistake = likeliest_mistake(counts, p, q)
    hint = MISTAKE_HINTS.get(mistake, "Check the rule: accept with min(1, p/q); after a rejection draw from the "
                             "normalised max(p - q, 0); after k acceptances draw one more token from p[k].")
    if impossible:
        found = f"it wrote {list(impossible[0])} ({counts[impossible[0]]} times), which the rule can never write"
    else:
        found = (f"it wrote {where} {seen:g} times where the rule writes it {expected:.1f} times on average "
                 f"({worst_z:+.1f} standard deviations)")
    raise CheckFailure(f"{what}: in {n} calls, {found}.\n  p = {p.tolist()}\n  q = {q.tolist()}\n  {hint}")


@check("11_inference", "speculative_accept", points=2, book=BOOK + "#the-accept-reject-rule",
       reference="tinyllm.speculative:speculative_accept")
def test_speculative_accept_public(sub):
    """speculative_accept on cases whose outcome is certain: all accepted, always rejected, always accepted."""
    fn = accept_function(sub)
    # Draft = target on the drafted positions: every token is accepted, and p[k] is one-hot at token 3.
    p = torch.tensor([[0.5, 0.2, 0.2, 0.1], [0.1, 0.1, 0.7, 0.1], [0.0, 0.0, 0.0, 1.0]])
    q = p[:2].clone()
    draft = torch.tensor([0, 2])
    for trial in range(20):
        got = ids_of(fn(p, q, draft, generator=torch.Generator().manual_seed(trial)),
                     "speculative_accept(p, q, draft) with q equal to p", 4, 2)
        hint = ("When the draft's distribution is the target's, min(1, p/q) = 1: both draft tokens are accepted, "
                "and the extra token comes from p[2] (here always token 3).")
        if got[:2] == (0, 2) and len(got) == 2:
            hint = "All k draft tokens were accepted, so one more token must follow, drawn from p[k]."
        elif got[:2] == (0, 2) and len(got) == 3 and got[2] != 3:
            hint = ("The extra token after an all-accepted draft comes from p[k] (the position after the last "
                    "drafted token), which is one-hot at token 3 here; yours came from another row, p[k-1]?")
        expect.equal(list(got), [0, 2, 3], "speculative_accept(p, q, draft=[0, 2]) with q = p[:2] and p[2] one-hot "
                     "at token 3", hint=hint)
    # The target gives the draft token 0 probability 0: always rejected; the residual is one-hot at token 2.
    p = torch.tensor([[0.0, 0.6, 0.4, 0.0], [0.25, 0.25, 0.25, 0.25]])
    q = torch.tensor([[0.7, 0.3, 0.0, 0.0]])
    for trial in range(20):
        got = ids_of(fn(p, q, torch.tensor([0]), generator=torch.Generator().manual_seed(100 + trial)),
                     "speculative_accept(p, q, draft=[0]) where p(0) = 0", 4, 1)
        hint = ("p(0) = 0, so draft token 0 is always rejected; the replacement comes from max(p - q, 0) = "
                "[0, 0.3, 0.4, 0], normalised: token 1 or 2.")
        if got[0] == 0:
            hint = "A token the target gives probability 0 was accepted: accept with min(1, p/q), not q/p."
        elif got[0] not in (1, 2):
            hint = MISTAKE_HINTS["inverse CDF, not renormalised"]
        expect.true(len(got) == 1 and got[0] in (1, 2), f"speculative_accept(p, q, draft=[0]) with p = {p.tolist()} "
                    f"and q = {q.tolist()} returned {list(got)}; expected one token, 1 or 2. {hint}")
    # Residual one-hot where p has more support: drawing from p instead of the residual shows at once.
    p = torch.tensor([[0.0, 0.5, 0.5], [1 / 3, 1 / 3, 1 / 3]])
    q = torch.tensor([[0.5, 0.5, 0.0]])
    for trial in range(20):
        got = ids_of(fn(p, q, torch.tensor([0]), generator=torch.Generator().manual_seed(200 + trial)),
                     "speculative_accept(p, q, draft=[0])", 3, 1)
        hint = "After the rejection the replacement comes from max(p - q, 0) = [0, 0, 0.5], normalised: token 2."
        if got == (1,):
            hint = MISTAKE_HINTS["resample from p"]
        elif got == (0,):
            hint = "A token the target gives probability 0 was accepted: accept with min(1, p/q), not q/p."
        expect.equal(list(got), [2], f"speculative_accept(p, q, draft=[0]) with p = {p.tolist()} and q = {q.tolist()}",
                     hint=hint)
    # The same generator state, the same output: every random number comes from `generator`.
    p = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.3, 0.3, 0.4]])
    q = torch.tensor([[0.2, 0.5, 0.3], [0.4, 0.4, 0.2]])
    for trial in range(16):
        if trial >= 10:  # draft token 0 is always rejected, and the replacement is 1 or 2, at random
            p, q = torch.tensor([[0.0, 0.5, 0.5], [0.2, 0.3, 0.5]]), torch.tensor([[1.0, 0.0, 0.0]])
        draft = torch.tensor([trial % 3, (trial // 3) % 3]) if trial < 10 else torch.tensor([0])
        first, second = (fn(p, q, draft, generator=torch.Generator().manual_seed(400 + trial)) for _ in range(2))
        expect.equal(second, expect.tensor(first, "speculative_accept"), f"speculative_accept(p, q, draft="
                     f"{draft.tolist()}) called twice with generators in the same state",
                     hint="Draw every random number from `generator` (torch.rand(..., generator=generator), "
                          "torch.multinomial(..., generator=generator)): the same generator state must give the "
                          "same tokens, or grading and your results cannot be reproduced.")
    # k = 0: no draft at all; the output is one token drawn from p[0] (one-hot at token 2 here).
    p = torch.tensor([[0.0, 0.0, 1.0, 0.0]])
    for trial in range(5):
        got = ids_of(fn(p, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long),
                        generator=torch.Generator().manual_seed(500 + trial)),
                     "speculative_accept(p, q, draft) with k = 0 (q of shape (0, 4), an empty draft)", 4, 0)
        expect.equal(list(got), [2], "speculative_accept(p, q, draft) with k = 0 and p[0] one-hot at token 2",
                     hint="With no draft tokens there is nothing to accept: the output is one token drawn from p[0].")
    # p(x) > q(x): min(1, p/q) = 1, so the draft token is always accepted.
    p = torch.tensor([[0.8, 0.1, 0.1], [0.0, 1.0, 0.0]])
    q = torch.tensor([[0.4, 0.3, 0.3]])
    for trial in range(40):
        got = ids_of(fn(p, q, torch.tensor([0]), generator=torch.Generator().manual_seed(300 + trial)),
                     "speculative_accept(p, q, draft=[0])", 3, 1)
        hint = ("p(0) = 0.8 > q(0) = 0.4, so min(1, p/q) = 1: the token is always accepted, and then the extra "
                "token comes from p[1] (one-hot at token 1).")
        if got[0] != 0:
            hint = ("Draft token 0 was rejected although p(0) = 0.8 > q(0) = 0.4. " + MISTAKE_HINTS["accept with q/p"])
        expect.equal(list(got), [0, 1], f"speculative_accept(p, q, draft=[0]) with p = {p.tolist()} and "
                     f"q = {q.tolist()}", hint=hint)


@check("11_inference", "speculative_accept", points=2, book=BOOK + "#checking-the-rule-exactly-on-a-small-vocabulary")
def test_speculative_accept_distribution_public(sub):
    """speculative_accept's outputs, drafts drawn from q, are distributed as the rule's exact distribution."""
    fn = accept_function(sub)
    p = torch.tensor([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.2, 0.5, 0.3]])
    q = torch.tensor([[0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    counts = draws(fn, p, q, 500, seed=4)
    check_distribution(counts, p, q, "speculative_accept(p, q, draft) with V = 3, k = 2, drafts drawn from q")


# --------------------------------------------------------------------------- the loop


def reference_model(seed: int, noise_of: TinyLlama | None = None, **sizes) -> TinyLlama:
    """A random TinyLlama whose next tokens vary (its blocks' matrices scaled up: at the usual initial scale
    every such model just repeats the last token, and any two agree); with ``noise_of``, a copy of that model
    with noise added to every weight, a draft that agrees with it some of the time."""
    torch.manual_seed(seed)
    model = TinyLlama(noise_of.config if noise_of is not None else GPTConfig(**{**SMALL, **sizes})).eval()
    with torch.no_grad():
        if noise_of is not None:
            model.load_state_dict(noise_of.state_dict())
            for weight in model.parameters():
                weight.add_(torch.randn(weight.shape) * 0.1 * weight.std())
            return model
        for name, weight in model.named_parameters():
            if name.startswith("blocks.") and weight.dim() == 2:
                weight.mul_(10)
    return model


def generate_function(sub):
    return sub.function("speculative_generate", ["target", "draft", "idx", "max_new_tokens", "k"],
                        forbid=GROUPS["speculative"])


@check("11_inference", "speculative_generate", points=2, book=BOOK + "#the-loop")
def test_speculative_generate_public(sub):
    """With temperature 0 the output is the target's greedy text, whatever the draft and k."""
    from tinyllm.sampling import generate

    fn = generate_function(sub)
    target = reference_model(seed=1)
    prompt = torch.tensor([[5, 17, 42, 7]])
    expected = generate(target, prompt, 12, temperature=0)
    drafts = {"a noisy copy of the target as the draft": (reference_model(seed=2, noise_of=target), 3),
              "an unrelated one-block draft": (reference_model(seed=3, n_layers=1, n_kv_heads=1), 1),
              "the target's own weights as the draft": (target, 5)}
    with expect.blame(sub, "speculative_accept"):
        for name, (draft_model, k) in drafts.items():
            got = fn(library_model(sub, target), library_model(sub, draft_model), prompt, 12, k=k, temperature=0)
            what = f"speculative_generate(target, draft, idx, 12, k={k}, temperature=0) with {name}"
            expect.equal(got, expected, what, prompt,
                         hint="With temperature 0, p and q are one-hot: a draft token is kept exactly when it is the "
                              "target's most likely token, so the output must be the target's greedy text, "
                              "exactly max_new_tokens of it.")
        full = 32 - prompt.shape[1]  # the prompt and the new tokens fill the context exactly: that still fits
        got = fn(library_model(sub, target), library_model(sub, target), prompt, full, k=4, temperature=0)
        expect.equal(got, generate(target, prompt, full, temperature=0), f"speculative_generate(target, draft, idx "
                     f"(1, 4), {full}, k=4, temperature=0), which fills the context of 32 exactly", prompt,
                     hint="A prompt and new tokens that add up to context_length fit: refuse only more than that.")
    sampled_generation(sub, fn, seed=0, generations=100)


def sampled_text(fn, target: TinyLlama, model, draft, prompt: torch.Tensor, n: int, k: int, top_k: int,
                 seed: int) -> None:
    """One sampled generation (temperature 1, ``top_k``): the same generator state gives the same text, of the
    right length, and every new token is among the target's ``top_k`` most likely where it stands."""
    settings = f"temperature=1.0, top_k={top_k}"
    got = expect.tensor(fn(model, draft, prompt, n, k=k, temperature=1.0, top_k=top_k,
                           generator=torch.Generator().manual_seed(seed)), "speculative_generate with sampling")
    again = fn(model, draft, prompt, n, k=k, temperature=1.0, top_k=top_k, generator=torch.Generator().manual_seed(seed))
    expect.equal(again, got, f"speculative_generate(target, draft, idx, {n}, k={k}, {settings}, generator=...) run "
                 "twice with generators in the same state",
                 hint="Draw every random number, the draft's and the accept step's, from the generator in sampling.")
    length = prompt.shape[1]
    expect.equal(tuple(got.shape), (1, length + n), f"the shape of speculative_generate(target, draft, idx (1, "
                 f"{length}), {n}, k={k}, {settings})")
    with torch.no_grad():
        allowed = sampling_probs(target(got[:, :-1])[0][0], temperature=1.0, top_k=top_k) > 0  # (T + n - 1, V)
    new = got[0, length:]
    ok = allowed[torch.arange(length - 1, length + n - 1), new]
    if not ok.all():
        at = int((~ok).nonzero()[0])
        raise CheckFailure(
            f"speculative_generate(..., {settings}) wrote {new.tolist()}; token {int(new[at])} at new position {at} "
            f"is not among the target's {top_k} most likely tokens there. Every token must come from p, the "
            "target's distribution under the same sampling settings (the accepted draft tokens, the residual and "
            "the token after the draft alike).")


def sampled_generation(sub, fn, seed: int, generations: int) -> None:
    """Sampling with top_k: the same generator state gives the same text; every new token is among the target's
    top-k where it stands; and the first new token, drafted and then accepted or replaced, is distributed as the
    target's (``generations`` runs)."""
    sizes = dict(d_model=16, n_heads=2, n_kv_heads=1, n_layers=1)
    target = reference_model(seed=70 + seed, **sizes)
    model, draft = library_model(sub, target), library_model(sub, reference_model(seed=71 + seed, noise_of=target))
    prompt = torch.tensor([[21, 22]])
    settings = "k=1, temperature=1.0, top_k=3"
    with expect.blame(sub, "speculative_accept"):
        sampled_text(fn, target, model, draft, prompt, 6, k=2, top_k=3, seed=seed)
        with torch.no_grad():
            p = sampling_probs(target(prompt)[0][0, -1], temperature=1.0, top_k=3).double()
        counts = torch.zeros_like(p)
        for i in range(generations):
            out = expect.tensor(fn(model, draft, prompt, 2, k=1, temperature=1.0, top_k=3,
                                   generator=torch.Generator().manual_seed(1000 * seed + i)), "speculative_generate")
            counts[int(out[0, 2])] += 1
        z = (counts - generations * p) / torch.sqrt(generations * p * (1 - p)).clamp(min=1e-12)
        worst = int(z.abs().argmax())
        expect.true(bool(counts[p == 0].sum() == 0) and float(z.abs().max()) <= Z_LIMIT,
                    f"In {generations} runs of speculative_generate(target, draft, idx, 2, {settings}), the first new "
                    f"token was {worst} {int(counts[worst])} times; the target alone writes it "
                    f"{generations * float(p[worst]):.1f} times on average ({float(z[worst]):+.1f} standard "
                    "deviations). Draw each draft token from q (torch.multinomial of sampling_probs, with the "
                    "generator), not its most likely token, and compute p and q with the same sampling settings.")


@check("11_inference", "speculative_generate", points=1, book=BOOK + "#the-loop")
def test_speculative_generate_calls_public(sub):
    """A draft that always agrees: one target call per round of k + 1 tokens, ceil(max_new_tokens / (k + 1)) calls."""
    fn = generate_function(sub)
    target = reference_model(seed=5)
    prompt = torch.tensor([[3, 1, 4, 1, 5]])
    with expect.blame(sub, "speculative_accept"):
        for n, k in ((12, 3), (10, 4)):
            recorder = sub.library("tinyllm.sampling:CallRecorder")(library_model(sub, target))
            drafter = sub.library("tinyllm.sampling:CallRecorder")(library_model(sub, target))
            fn(recorder, drafter, prompt, n, k=k, temperature=0)
            lengths = recorder.method("lengths")
            calls = len(lengths)
            expected = math.ceil(n / (k + 1))
            hint = ("The draft is the target itself, so with temperature 0 every drafted token is accepted: each "
                    f"round writes k + 1 = {k + 1} tokens (the k drafted and one from p[k]) with ONE call of the "
                    "target on all the drafted tokens.")
            if calls == math.ceil(n / k):
                hint = ("Each round wrote only k tokens: after k acceptances add one more token, drawn from p[k], "
                        "which the same target call gave. " + hint)
            elif calls > expected:
                hint = f"Your generate called the target {calls - expected} times more than needed. " + hint
            expect.true(calls == expected, f"speculative_generate(target, draft=target's copy, idx, {n}, k={k}, "
                        f"temperature=0) called the target {calls} times; expected {expected}. {hint}")
            # With KV caches every token goes through each model once (the last one written never needs to).
            fed, drafted = sum(lengths), sum(drafter.method("lengths"))
            once = prompt.shape[1] + n - 1
            expect.true(fed == once and drafted <= once,
                        f"speculative_generate(target, draft=target's copy, idx (1, {prompt.shape[1]}), {n}, k={k}, "
                        f"temperature=0) fed the target {fed} tokens and the draft {drafted} in all; with a KV cache "
                        f"each model sees each token once: the target {once}, the draft at most {once}. Keep a list "
                        "of KVCache per model for the whole call, pass it to extend, and crop it to the tokens kept "
                        "(crop(caches, len(out) - 1)) rather than feeding the whole sequence again.")
