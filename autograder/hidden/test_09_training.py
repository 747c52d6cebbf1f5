"""Hidden checks for 09_training: the reference (tinyllm.optim) on more steps, shapes, groups and settings."""

from __future__ import annotations

import math

import torch

from autograder.grading import expect
from autograder.checks.test_09_training import (BOOK, adamw_class, clip_function, compare_trajectories, problem,
                                                run_adamw, run_clip)
from autograder.sandbox.forbidden import GROUPS
from autograder.grading.registry import check
from tinyllm.optim import AdamW as ReferenceAdamW
from tinyllm.optim import GradientFeed, GradientList
from tinyllm.optim import clip_grad_norm as reference_clip
from tinyllm.optim import cosine_lr as reference_cosine_lr


def reference_trajectory(values, groups, grads, **options):
    feed = GradientFeed(values, groups)
    return feed.run(ReferenceAdamW(feed, **options), grads)


@check("09_training", "AdamW", points=2, book=BOOK + "#the-optimiser", hidden=True)
def test_AdamW_hidden(sub):
    """AdamW equals the reference over 50 steps: defaults, three groups, a parameter that never gets a gradient."""
    cls = adamw_class(sub)
    values, grads = problem(test_AdamW_hidden.autograder_check.seed % 1000, [(5, 3), (3,), (4, 2), (2,)], steps=50,
                            skip={1: set(range(0, 50, 4)), 3: set(range(50))})
    cases = [
        ([([0, 1, 2, 3], {})], {}, "AdamW(params) with its defaults"),
        ([([0, 2], {"weight_decay": 0.3}), ([1], {"weight_decay": 0.0, "lr": 0.03, "betas": (0.8, 0.99)}),
          ([3], {"weight_decay": 1.0})],
         dict(lr=0.01, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.05),
         "AdamW(three groups, lr=0.01, betas=(0.9, 0.95), eps=1e-6) over 50 steps (parameter 3 never gets a "
         "gradient, parameter 1 skips every fourth step)"),
    ]
    for groups, options, what in cases:
        got = run_adamw(sub, cls, values, groups, grads, **options)
        compare_trajectories(got, reference_trajectory(values, groups, grads, **options), what, values, groups, grads,
                             options, atol=1e-5)


@check("09_training", "cosine_lr", points=1, book=BOOK + "#the-learning-rate-schedule", hidden=True)
def test_cosine_lr_hidden(sub):
    """cosine_lr equals the reference's schedule at every step of several settings."""
    cosine_lr = sub.function("cosine_lr", ["step", "warmup_steps", "max_steps", "lr", "min_lr"],
                             forbid=GROUPS["schedule"])
    for warm, total, lr, low in [(10, 110, 1e-3, 1e-4), (0, 40, 0.1, 0.0), (1, 7, 1.0, 0.5), (30, 30, 3e-4, 3e-5)]:
        steps = list(range(0, total + 5, max(1, total // 37))) + [warm - 1, warm, total - 1, total]
        for step in sorted({s for s in steps if s >= 0}):
            got = cosine_lr(step, warm, total, lr, low)
            expected = reference_cosine_lr(step, warm, total, lr, low)
            expect.true(isinstance(got, (int, float)) and math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-12),
                        f"cosine_lr(step={step}, warmup_steps={warm}, max_steps={total}, lr={lr}, min_lr={low}) "
                        f"returned {got!r}; expected {expected:.6g}.")


@check("09_training", "clip_grad_norm", points=1, book=BOOK + "#gradient-clipping", hidden=True)
def test_clip_grad_norm_hidden(sub):
    """clip_grad_norm equals the reference on varied shapes, scales and thresholds, and a lone parameter."""
    clip = clip_function(sub)
    g = torch.Generator().manual_seed(test_clip_grad_norm_hidden.autograder_check.seed % 1000)
    for shapes, scale, max_norm in [([(7,)], 10.0, 0.5), ([(3, 3), (2, 2, 2), (1,)], 1e-3, 1.0),
                                    ([(4, 5), (5,)], 50.0, 5.0)]:
        values = [torch.zeros(*s) for s in shapes]
        grads = [torch.randn(*s, generator=g) * scale for s in shapes]
        norm, after = run_clip(sub, clip, values, grads, max_norm)
        reference = GradientList(values, grads)
        expected_norm = reference_clip(reference, max_norm)
        what = f"clip_grad_norm on {len(shapes)} parameters of shapes {shapes}, max_norm={max_norm}"
        expect.true(isinstance(norm, torch.Tensor) and norm.numel() == 1,
                    f"{what} should return the total norm as a one-value tensor.")
        expect.close(norm.reshape(()), expected_norm, f"the norm {what} returned", rtol=1e-4, atol=1e-6)
        expect.true(isinstance(after, list) and len(after) == len(shapes), f"{what}: gradients could not be read.")
        for i, (a, b) in enumerate(zip(after, reference.grads())):
            expect.close(a, b, f"the gradient of parameter {i} after {what}", atol=1e-6)
