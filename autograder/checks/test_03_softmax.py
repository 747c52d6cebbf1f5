"""Public checks for 03_softmax: softmax, logsumexp, log_softmax, cross_entropy, perplexity."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from autograder.grading import expect
from autograder.sandbox.forbidden import GROUPS
from autograder.grading.registry import check

BOOK = "book/04_softmax.html"


def softmax_hint(got, x: torch.Tensor) -> str:
    """What a wrong softmax of ``x`` along its last dimension says about the code."""
    if not isinstance(got, torch.Tensor) or got.shape != x.shape:
        return "The output has the input's shape: a probability for every logit."
    if torch.allclose(got.sum(0), torch.ones(x.shape[1])) and not torch.allclose(got.sum(-1), torch.ones(x.shape[0])):
        return "Your probabilities sum to 1 down the columns (dim 0): normalise along the `dim` you are given."
    if torch.allclose(got, torch.exp(x), atol=1e-5):
        return "These are exp(logits), unnormalised: divide by their sum along `dim`."
    return "softmax(z)_i = exp(z_i) / sum_j exp(z_j), along `dim`."


@check("03_softmax", "softmax", points=2, book=BOOK + "#overflow-and-the-max-subtraction-trick")
def test_softmax_public(sub):
    """softmax matches F.softmax, along any dim, with temperature, and does not overflow."""
    softmax = sub.function("softmax", ["logits", "dim", "temperature"], forbid=GROUPS["softmax"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=g)
    got = softmax(x, dim=-1)
    expect.close(got, F.softmax(x, dim=-1), "softmax(logits, dim=-1)", x, hint=softmax_hint(got, x))
    y = torch.randn(4, 3, generator=g)
    expect.close(softmax(y, dim=0), F.softmax(y, dim=0), "softmax(logits, dim=0)", y,
                 hint="Normalise along the dimension `dim` you are given, not a fixed one.")
    big = torch.tensor([[1000.0, 1001.0, 999.0], [-1000.0, -1002.0, -1001.0]])
    expect.close(softmax(big, dim=-1), F.softmax(big, dim=-1), "softmax on large logits", "[[1000, 1001, 999], "
                 "[-1000, -1002, -1001]]", hint="exp(1000) overflows float32 to inf: subtract each row's "
                 "maximum before exponentiating (it cancels in the ratio).")
    expect.close(softmax(x, dim=-1, temperature=2.0), F.softmax(x / 2.0, dim=-1),
                 "softmax(logits, dim=-1, temperature=2.0)", x,
                 hint="Temperature divides the logits before the softmax: softmax(z / T).")


LARGE = torch.tensor([[1000.0, 1001.0, 1002.0], [-1000.0, -1002.0, -1001.0], [0.0, -200.0, 3.0]])


@check("03_softmax", "logsumexp", points=1, book=BOOK + "#log-probabilities-log-sum-exp",
       reference="tinyllm.softmax:logsumexp")
def test_logsumexp_public(sub):
    """logsumexp(logits, dim) is log(sum(exp)) along dim, kept as size 1, without overflow."""
    logsumexp = sub.function("logsumexp", ["logits", "dim"], forbid=GROUPS["logsumexp"])
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(3))
    got = logsumexp(x, dim=-1)
    expected = torch.logsumexp(x, dim=-1, keepdim=True)
    hint = ""
    if isinstance(got, torch.Tensor) and tuple(got.shape) != (3, 1):
        hint = ("Keep the reduced dimension (keepdim=True in amax and sum), so that logits - logsumexp(logits) "
                "broadcasts: the result has shape (3, 1) here.")
    expect.close(got, expected, "logsumexp(logits, dim=-1)", x, hint=hint)
    y = torch.randn(4, 2, generator=torch.Generator().manual_seed(4))
    expect.close(logsumexp(y, dim=0), torch.logsumexp(y, dim=0, keepdim=True), "logsumexp(logits, dim=0)", y,
                 hint="Reduce along the dimension `dim` you are given.")
    got = logsumexp(LARGE, dim=-1)
    hint = "Subtract each row's maximum m first and add it back: LSE(z) = m + log(sum(exp(z - m)))."
    expect.close(got, torch.logsumexp(LARGE, dim=-1, keepdim=True), "logsumexp on large logits", LARGE, hint=hint)
    masked = torch.tensor([[float("-inf"), float("-inf")], [0.0, float("-inf")]])
    got = logsumexp(masked, dim=-1)
    hint = ""
    if isinstance(got, torch.Tensor) and got.shape == (2, 1) and bool(torch.isnan(got[0]).all()):
        hint = ("A row of only -inf gives nan: its maximum is -inf, and -inf - (-inf) is nan. Shift that row by 0 "
                "instead (its log-sum-exp is then log(0) = -inf).")
    expect.close(got, torch.logsumexp(masked, dim=-1, keepdim=True), "logsumexp of [[-inf, -inf], [0, -inf]]",
                 masked, hint=hint)


@check("03_softmax", "log_softmax", points=1, book=BOOK + "#log-probabilities-log-sum-exp",
       reference="tinyllm.softmax:log_softmax")
def test_log_softmax_public(sub):
    """log_softmax matches F.log_softmax, exactly where softmax underflows to 0."""
    log_softmax = sub.function("log_softmax", ["logits", "dim"], forbid=GROUPS["softmax"])
    with expect.blame(sub, "logsumexp"):
        x = torch.randn(3, 5, generator=torch.Generator().manual_seed(5))
        expect.close(log_softmax(x, dim=-1), F.log_softmax(x, dim=-1), "log_softmax(logits, dim=-1)", x)
        y = torch.randn(4, 3, generator=torch.Generator().manual_seed(6))
        expect.close(log_softmax(y, dim=0), F.log_softmax(y, dim=0), "log_softmax(logits, dim=0)", y,
                     hint="Normalise along the dimension `dim` you are given (pass it on to logsumexp).")
        got = log_softmax(LARGE, dim=-1)
        hint = ""
        if isinstance(got, torch.Tensor) and bool(torch.isinf(got).any()):
            hint = ("An entry is -inf where the exact answer is finite: log(softmax(z)) underflows when a "
                    "probability is below about 1e-45. Compute z - logsumexp(z) instead.")
        expect.close(got, F.log_softmax(LARGE, dim=-1), "log_softmax on large logits", LARGE, hint=hint)


@check("03_softmax", "cross_entropy", points=2, book=BOOK + "#cross-entropy-computed-stably",
       reference="tinyllm.softmax:cross_entropy")
def test_cross_entropy_public(sub):
    """cross_entropy matches F.cross_entropy (mean over positions), stably."""
    cross_entropy = sub.function("cross_entropy", ["logits", "targets"], forbid=GROUPS["cross_entropy"])
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 10, generator=g)
    targets = torch.randint(0, 10, (6,), generator=g)
    with expect.blame(sub, "log_softmax", "logsumexp"):
        check_cross_entropy(cross_entropy, logits, targets)


def check_cross_entropy(cross_entropy, logits, targets):
    got = cross_entropy(logits, targets)
    expected = F.cross_entropy(logits, targets)
    hint = "The loss is the MEAN over positions of -log softmax(logits)[target]."
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        if torch.isclose(got.double(), -expected.double(), rtol=1e-4, atol=1e-6).all():
            hint = "The sign is flipped: the loss is the NEGATIVE log-probability of the targets."
        elif torch.isclose(got.double(), expected.double() * len(targets), rtol=1e-4).all():
            hint = "You summed over positions: the loss is the MEAN over positions of -log softmax(logits)[target]."
    expect.close(got, expected, "cross_entropy(logits, targets)",
                 f"logits {tuple(logits.shape)}, targets {targets.tolist()}", hint=hint)
    big = logits * 500
    expect.close(cross_entropy(big, targets), F.cross_entropy(big, targets), "cross_entropy on large logits",
                 "logits scaled by 500", hint="Compute log-softmax as z - logsumexp(z) with the max trick; "
                 "log(softmax(z)) underflows to log(0) = -inf.")


@check("03_softmax", "perplexity", points=1, book=BOOK + "#cross-entropy-computed-stably")
def test_perplexity_public(sub):
    """perplexity is exp(cross-entropy); uniform logits over V tokens give V."""
    perplexity = sub.function("perplexity", ["logits", "targets"], forbid=GROUPS["cross_entropy"])
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 7, generator=g)
    targets = torch.randint(0, 7, (5,), generator=g)
    with expect.blame(sub, "cross_entropy"):
        expect.close(perplexity(logits, targets), torch.exp(F.cross_entropy(logits, targets)),
                     "perplexity(logits, targets)", f"logits {tuple(logits.shape)}", atol=1e-4)
        uniform = perplexity(torch.zeros(4, 13), torch.tensor([0, 3, 7, 12]))
        expect.close(uniform, torch.tensor(13.0), "perplexity of uniform logits over 13 tokens", atol=1e-3,
                     hint=f"A uniform model has cross-entropy log V = {math.log(13):.4f}, so perplexity V.")
