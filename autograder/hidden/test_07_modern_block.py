"""Hidden checks for 07_modern_block: the reference on varied shapes, seeds and edge cases."""

from __future__ import annotations

import torch

from autograder.grading import expect
from autograder.checks.test_07_modern_block import (BOOK, block_state, gqa_class, gqa_state, loaded, rope_function,
                                                    swiglu_state)
from autograder.sandbox.forbidden import GROUPS
from autograder.grading.registry import check
from tinyllm.attention import GroupedQueryAttention as ReferenceGQA
from tinyllm.layers import LlamaBlock as ReferenceBlock
from tinyllm.layers import SwiGLU as ReferenceSwiGLU
from tinyllm.layers import rms_norm as reference_rms_norm
from tinyllm.positional import apply_rope as reference_rope


@check("07_modern_block", "rms_norm", points=1, book=BOOK + "#rmsnorm", hidden=True)
def test_rms_norm_hidden(sub):
    """rms_norm equals the reference for random shapes, scales and eps."""
    fn = sub.function("rms_norm", ["x", "weight", "eps"], forbid=GROUPS["rms_norm"])
    g = torch.Generator().manual_seed(test_rms_norm_hidden.autograder_check.seed)
    for shape, scale, eps in [((4, 6), 1e-3, 1e-6), ((2, 2, 3, 5), 100.0, 1e-6), ((7,), 1.0, 0.1), ((3, 1), 1.0, 1e-6)]:
        x = torch.randn(*shape, generator=g) * scale
        w = torch.randn(shape[-1], generator=g)
        expect.close(fn(x, w, eps=eps), reference_rms_norm(x, w, eps=eps), f"rms_norm(x, weight, eps={eps})", x,
                     atol=1e-4)


@check("07_modern_block", "apply_rope", points=2, book=BOOK + "#rope-inside-attention", hidden=True)
def test_apply_rope_hidden(sub):
    """apply_rope equals the reference for varied shapes, offsets and bases, and keeps lengths."""
    rope = rope_function(sub)
    g = torch.Generator().manual_seed(test_apply_rope_hidden.autograder_check.seed)
    for shape, base, offset in [((1, 2), 10000.0, 0), ((3, 1, 4), 10000.0, 17), ((2, 4, 9, 16), 500.0, 3),
                                ((5, 32), 10000.0, 1000)]:
        x = torch.randn(*shape, generator=g)
        got = rope(x, base=base, offset=offset)
        expect.close(got, reference_rope(x, base, offset=offset), f"apply_rope(x, base={base}, offset={offset}) "
                     f"for x of shape {shape}", x, atol=1e-4)
        expect.close(got.norm(dim=-1), x.norm(dim=-1), "the length of every rotated vector", atol=1e-4,
                     hint="A rotation keeps lengths.")
    # The error contract (ValueError for an odd d) is apply_rope_errors_public's alone: one mistake, charged once.


@check("07_modern_block", "SwiGLU", points=1, book=BOOK + "#swiglu", hidden=True)
def test_SwiGLU_hidden(sub):
    """SwiGLU equals the reference for random sizes."""
    cls = sub.cls("SwiGLU", ["d_model", "d_ff"])
    g = torch.Generator().manual_seed(test_SwiGLU_hidden.autograder_check.seed)
    for d_model, d_ff in [(4, 4), (12, 32), (1, 3)]:
        state = swiglu_state(d_model, d_ff, seed=d_ff)
        x = torch.randn(3, 2, d_model, generator=g)
        expect.close(loaded(cls, state, d_model, d_ff)(x), loaded(ReferenceSwiGLU, state, d_model, d_ff)(x).detach(),
                     f"SwiGLU({d_model}, {d_ff})(x)", atol=1e-4)


@check("07_modern_block", "GroupedQueryAttention", points=2, book=BOOK + "#grouped-query-attention", hidden=True)
def test_GroupedQueryAttention_hidden(sub):
    """GroupedQueryAttention equals the reference for varied heads and lengths, and is causal."""
    cls = gqa_class(sub)
    g = torch.Generator().manual_seed(test_GroupedQueryAttention_hidden.autograder_check.seed)
    with expect.blame(sub, "apply_rope"):
        for d_model, n_heads, n_kv_heads, T in [(8, 2, 1, 1), (24, 6, 2, 7), (24, 6, 3, 4), (32, 8, 8, 9)]:
            state = gqa_state(d_model, n_heads, n_kv_heads, seed=d_model + n_kv_heads)
            reference = loaded(ReferenceGQA, state, d_model, n_heads, n_kv_heads)
            module = loaded(cls, state, d_model, n_heads, n_kv_heads)
            x = torch.randn(2, T, d_model, generator=g)
            label = f"GroupedQueryAttention({d_model}, {n_heads}, {n_kv_heads})(x)"
            got = module(x)
            expect.close(got, reference(x).detach(), label, x, atol=1e-4)
            changed = x.clone()
            changed[:, -1] += 2.0
            expect.close(module(changed)[:, :-1], got[:, :-1], f"{label} before the last position",
                         "x with only its last token changed", atol=1e-5,
                         hint="Causal: position t must not see positions after t.")


@check("07_modern_block", "LlamaBlock", points=1, book=BOOK + "#the-modern-model", hidden=True)
def test_LlamaBlock_hidden(sub):
    """LlamaBlock equals the reference for varied sizes."""
    cls = sub.cls("LlamaBlock", ["d_model", "n_heads", "n_kv_heads", "d_ff"], forbid=GROUPS["rms_norm"])
    g = torch.Generator().manual_seed(test_LlamaBlock_hidden.autograder_check.seed)
    with expect.blame(sub, "rms_norm", "apply_rope", "SwiGLU", "GroupedQueryAttention"):
        for d_model, n_heads, n_kv_heads, d_ff, T in [(8, 2, 1, 16, 3), (24, 6, 2, 40, 6)]:
            state = block_state(d_model, n_heads, n_kv_heads, d_ff, seed=d_ff)
            sizes = (d_model, n_heads, n_kv_heads, d_ff)
            x = torch.randn(2, T, d_model, generator=g)
            expect.close(loaded(cls, state, *sizes)(x), loaded(ReferenceBlock, state, *sizes)(x).detach(), f"LlamaBlock({d_model}, {n_heads}, {n_kv_heads}, {d_ff})(x)",
                         x, atol=1e-4)
