"""Hidden checks for 04_attention."""

from __future__ import annotations

import torch

from autograder.grading import expect
from autograder.checks.test_04_attention import BOOK, attention, mha_class, random_mha_state, unpack
from autograder.grading.registry import check
from tinyllm.attention import MultiHeadAttention as ReferenceMHA
from tinyllm.attention import scaled_dot_product_attention as reference_sdpa


@check("04_attention", "scaled_dot_product_attention", points=2, book=BOOK + "#scaled-dot-product-attention", hidden=True)
def test_scaled_dot_product_attention_hidden(sub):
    """attention equals the reference for random batch shapes, lengths and widths."""
    sdpa = attention(sub)
    g = torch.Generator().manual_seed(test_scaled_dot_product_attention_hidden.autograder_check.seed)
    cases = [((3,), 4, 7, 8, False), ((2, 2), 6, 6, 5, True), ((), 1, 1, 3, True), ((1,), 9, 9, 32, True)]
    for batch, t_q, t_k, d, causal in cases:
        q = torch.randn(*batch, t_q, d, generator=g)
        k, v = torch.randn(*batch, t_k, d, generator=g), torch.randn(*batch, t_k, d + 1, generator=g)
        out, weights = unpack(sdpa(q, k, v, causal=causal), "scaled_dot_product_attention")
        ref_out, ref_weights = reference_sdpa(q, k, v, causal=causal)
        label = f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, causal={causal}"
        expect.close(weights, ref_weights, "the attention weights", label)
        expect.close(out, ref_out, "the attention output", label)


@check("04_attention", "MultiHeadAttention", points=2, book=BOOK + "#multi-head-attention", hidden=True)
def test_MultiHeadAttention_hidden(sub):
    """MultiHeadAttention equals the reference for random sizes and never looks ahead."""
    cls = mha_class(sub)
    g = torch.Generator().manual_seed(test_MultiHeadAttention_hidden.autograder_check.seed)
    with expect.blame(sub, "scaled_dot_product_attention"):
        compare_mha(cls, g)


def compare_mha(cls, g):
    for d_model, n_heads, T in [(8, 2, 3), (24, 3, 7), (12, 12, 4)]:
        state = random_mha_state(d_model, seed=d_model)
        reference = ReferenceMHA(d_model, n_heads).eval()
        reference.load_state_dict(state)
        module = cls(d_model, n_heads)
        module.load_state_dict(state)
        module.eval()
        x = torch.randn(2, T, d_model, generator=g)
        got = module(x)
        expect.close(got, reference(x).detach(), f"MultiHeadAttention({d_model}, {n_heads})(x)",
                     f"x of shape {tuple(x.shape)}")
        changed = x.clone()
        changed[:, -1] += 5.0
        expect.close(module(changed)[:, :-1], got[:, :-1], "outputs before the last position",
                     "x with only its last token changed", hint="With causal=True (the default), changing "
                     "a later token must not change any earlier output.")
