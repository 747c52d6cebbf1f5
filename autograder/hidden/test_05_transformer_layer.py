"""Hidden checks for 05_transformer_layer."""

from __future__ import annotations

import torch

from autograder.grading import expect
from autograder.checks.test_05_transformer_layer import BOOK, block_state, ffn_state, norm_function
from autograder.grading.registry import check
from tinyllm.layers import FeedForward as ReferenceFFN
from tinyllm.layers import TransformerBlock as ReferenceBlock
from tinyllm.layers import layer_norm as reference_layer_norm


@check("05_transformer_layer", "layer_norm", points=1, book=BOOK + "#layer-normalisation", hidden=True)
def test_layer_norm_hidden(sub):
    """layer_norm equals the reference for random shapes, scales and eps."""
    fn = norm_function(sub)
    g = torch.Generator().manual_seed(test_layer_norm_hidden.autograder_check.seed)
    for shape, scale, eps in [((4, 6), 1e-3, 1e-5), ((2, 2, 3, 5), 100.0, 1e-5), ((7,), 1.0, 0.1), ((3, 1), 1.0, 1e-5)]:
        x = torch.randn(*shape, generator=g) * scale
        w, b = torch.randn(shape[-1], generator=g), torch.randn(shape[-1], generator=g)
        expect.close(fn(x, w, b, eps=eps), reference_layer_norm(x, w, b, eps=eps),
                     f"layer_norm(x, weight, bias, eps={eps})", x, atol=1e-4)


@check("05_transformer_layer", "FeedForward", points=1, book=BOOK + "#the-feed-forward-network", hidden=True)
def test_FeedForward_hidden(sub):
    """FeedForward equals the reference for random sizes."""
    cls = sub.cls("FeedForward", ["d_model", "d_ff"])
    g = torch.Generator().manual_seed(test_FeedForward_hidden.autograder_check.seed)
    for d_model, d_ff in [(4, 4), (12, 48), (1, 3)]:
        state = ffn_state(d_model, d_ff, seed=d_ff)
        reference = ReferenceFFN(d_model, d_ff)
        reference.load_state_dict(state)
        module = cls(d_model, d_ff)
        module.load_state_dict(state)
        x = torch.randn(3, 2, d_model, generator=g)
        expect.close(module(x), reference(x).detach(), f"FeedForward({d_model}, {d_ff})(x)")


@check("05_transformer_layer", "TransformerBlock", points=2, book=BOOK + "#the-block-assembled", hidden=True)
def test_TransformerBlock_hidden(sub):
    """TransformerBlock equals the reference for random sizes and stays causal."""
    cls = sub.cls("TransformerBlock", ["d_model", "n_heads", "d_ff"])
    g = torch.Generator().manual_seed(test_TransformerBlock_hidden.autograder_check.seed)
    with expect.blame(sub, "layer_norm", "FeedForward"):
        compare_blocks(cls, g)


def compare_blocks(cls, g):
    for d_model, n_heads, d_ff, T in [(8, 2, 16, 4), (12, 3, 20, 7)]:
        state = block_state(d_model, d_ff, seed=d_model)
        reference = ReferenceBlock(d_model, n_heads, d_ff).eval()
        reference.load_state_dict(state)
        block = cls(d_model, n_heads, d_ff)
        block.load_state_dict(state)
        block.eval()
        x = torch.randn(2, T, d_model, generator=g)
        got = block(x)
        expect.close(got, reference(x).detach(), f"TransformerBlock({d_model}, {n_heads}, {d_ff})(x)")
        changed = x.clone()
        changed[:, -1] -= 3.0
        expect.close(block(changed)[:, :-1], got[:, :-1], "outputs before the last position",
                     "x with only its last token changed")
