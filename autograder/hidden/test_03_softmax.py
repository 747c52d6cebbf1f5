"""Hidden checks for 03_softmax: the reference implementation is the oracle."""

from __future__ import annotations

import torch

from autograder.grading import expect
from autograder.sandbox.forbidden import GROUPS
from autograder.grading.registry import check
from tinyllm.softmax import cross_entropy as ref_cross_entropy
from tinyllm.softmax import log_softmax as ref_log_softmax
from tinyllm.softmax import logsumexp as ref_logsumexp
from tinyllm.softmax import softmax as ref_softmax

BOOK = "book/04_softmax.html"


def random_shapes(g: torch.Generator, count: int):
    for _ in range(count):
        dims = int(torch.randint(1, 5, (1,), generator=g))
        yield [int(n) for n in torch.randint(1, 7, (dims,), generator=g)]


@check("03_softmax", "softmax", points=2, book=BOOK + "#overflow-and-the-max-subtraction-trick", hidden=True)
def test_softmax_hidden(sub):
    """softmax agrees with the reference on random shapes, dims, scales and temperatures."""
    softmax = sub.function("softmax", ["logits", "dim", "temperature"], forbid=GROUPS["softmax"])
    g = torch.Generator().manual_seed(test_softmax_hidden.autograder_check.seed)
    for shape in random_shapes(g, 6):
        scale = float([0.1, 1.0, 50.0, 3000.0][int(torch.randint(0, 4, (1,), generator=g))])
        x = torch.randn(shape, generator=g) * scale
        dim = int(torch.randint(-len(shape), len(shape), (1,), generator=g))
        temperature = float([0.5, 1.0, 3.0][int(torch.randint(0, 3, (1,), generator=g))])
        expect.close(softmax(x, dim=dim, temperature=temperature), ref_softmax(x, dim=dim, temperature=temperature),
                     f"softmax(logits, dim={dim}, temperature={temperature})", x)
    masked = torch.tensor([[0.5, float("-inf"), 1.5, float("-inf")]])
    expect.close(softmax(masked, dim=-1), ref_softmax(masked, dim=-1), "softmax with -inf (masked) entries",
                 "[[0.5, -inf, 1.5, -inf]]", hint="A -inf logit must get probability exactly 0.")


@check("03_softmax", "logsumexp", points=1, book=BOOK + "#log-probabilities-log-sum-exp", hidden=True)
def test_logsumexp_hidden(sub):
    """logsumexp agrees with the reference on random shapes and dims, extreme scales and -inf entries."""
    logsumexp = sub.function("logsumexp", ["logits", "dim"], forbid=GROUPS["logsumexp"])
    g = torch.Generator().manual_seed(test_logsumexp_hidden.autograder_check.seed)
    for shape in random_shapes(g, 5):
        x = torch.randn(shape, generator=g) * float([0.1, 1.0, 3000.0][int(torch.randint(0, 3, (1,), generator=g))])
        dim = int(torch.randint(-len(shape), len(shape), (1,), generator=g))
        expect.close(logsumexp(x, dim=dim), ref_logsumexp(x, dim=dim), f"logsumexp(logits, dim={dim})", x, rtol=1e-4)
    masked = torch.tensor([[0.5, float("-inf"), 1.5], [float("-inf")] * 3])
    expect.close(logsumexp(masked, dim=-1), ref_logsumexp(masked, dim=-1), "logsumexp with -inf entries", masked,
                 hint="A row of only -inf has log-sum-exp -inf (not nan): shift by 0 where the maximum is -inf.")


@check("03_softmax", "log_softmax", points=1, book=BOOK + "#log-probabilities-log-sum-exp", hidden=True)
def test_log_softmax_hidden(sub):
    """log_softmax agrees with the reference on random shapes, dims and extreme scales."""
    log_softmax = sub.function("log_softmax", ["logits", "dim"], forbid=GROUPS["softmax"])
    g = torch.Generator().manual_seed(test_log_softmax_hidden.autograder_check.seed)
    with expect.blame(sub, "logsumexp"):
        for shape in random_shapes(g, 5):
            x = torch.randn(shape, generator=g) * float([0.1, 1.0, 3000.0][int(torch.randint(0, 3, (1,), generator=g))])
            dim = int(torch.randint(-len(shape), len(shape), (1,), generator=g))
            expect.close(log_softmax(x, dim=dim), ref_log_softmax(x, dim=dim), f"log_softmax(logits, dim={dim})", x,
                         rtol=1e-4, atol=1e-4)


@check("03_softmax", "cross_entropy", points=2, book=BOOK + "#cross-entropy-computed-stably", hidden=True)
def test_cross_entropy_hidden(sub):
    """cross_entropy agrees with the reference on random sizes and extreme logits."""
    cross_entropy = sub.function("cross_entropy", ["logits", "targets"], forbid=GROUPS["cross_entropy"])
    g = torch.Generator().manual_seed(test_cross_entropy_hidden.autograder_check.seed)
    with expect.blame(sub, "log_softmax", "logsumexp"):
        for _ in range(5):
            n, v = int(torch.randint(1, 40, (1,), generator=g)), int(torch.randint(2, 60, (1,), generator=g))
            scale = float([1.0, 20.0, 2000.0][int(torch.randint(0, 3, (1,), generator=g))])
            logits = torch.randn(n, v, generator=g) * scale
            targets = torch.randint(0, v, (n,), generator=g)
            expect.close(cross_entropy(logits, targets), ref_cross_entropy(logits, targets),
                         "cross_entropy(logits, targets)", f"logits {(n, v)} scaled by {scale}", rtol=1e-4, atol=1e-4)


@check("03_softmax", "perplexity", points=1, book=BOOK + "#cross-entropy-computed-stably", hidden=True)
def test_perplexity_hidden(sub):
    """perplexity agrees with exp of the reference cross-entropy."""
    perplexity = sub.function("perplexity", ["logits", "targets"], forbid=GROUPS["cross_entropy"])
    g = torch.Generator().manual_seed(test_perplexity_hidden.autograder_check.seed)
    with expect.blame(sub, "cross_entropy"):
        for _ in range(4):
            n, v = int(torch.randint(1, 30, (1,), generator=g)), int(torch.randint(2, 50, (1,), generator=g))
            logits = torch.randn(n, v, generator=g) * 3
            targets = torch.randint(0, v, (n,), generator=g)
            expect.close(perplexity(logits, targets), torch.exp(ref_cross_entropy(logits, targets)),
                         "perplexity(logits, targets)", f"logits {(n, v)}", rtol=1e-4, atol=1e-3)
