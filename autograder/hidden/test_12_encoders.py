"""Hidden checks for 12_encoders: the reference on other shapes, edge cases and probabilities."""

from __future__ import annotations

import torch

from autograder.grading import expect
from autograder.checks.test_12_encoders import (BOOK, NOT_MASKED, attention_function, cross_class, loss_function,
                                                masking_function, padding_mask, unpack_masking)
from autograder.checks.test_04_attention import random_mha_state
from autograder.grading.registry import check
from tinyllm.attention import CrossAttention as ReferenceCrossAttention
from tinyllm.attention import bidirectional_attention as reference_attention
from tinyllm.encoder import masked_lm_loss as reference_loss


@check("12_encoders", "bidirectional_attention", points=1, book=BOOK + "#attention-without-the-causal-mask",
       hidden=True)
def test_bidirectional_attention_hidden(sub):
    """bidirectional_attention equals the reference on 3-D inputs, one query, and a row with a single real key."""
    attend = attention_function(sub)
    g = torch.Generator().manual_seed(test_bidirectional_attention_hidden.autograder_check.seed)
    q, k, v = torch.randn(4, 3, 6, generator=g), torch.randn(4, 5, 6, generator=g), torch.randn(4, 5, 2, generator=g)
    padding = padding_mask([5, 1, 3, 4], 5)
    expect.close(attend(q, k, v, padding), reference_attention(q, k, v, padding),
                 "bidirectional_attention on (B, T, d) inputs with no head axis", atol=1e-5)
    q1 = torch.randn(2, 4, 1, 8, generator=g)
    k1, v1 = torch.randn(2, 4, 9, 8, generator=g), torch.randn(2, 4, 9, 8, generator=g)
    padding1 = padding_mask([9, 2], 9)
    expect.close(attend(q1, k1, v1, padding1), reference_attention(q1, k1, v1, padding1),
                 "bidirectional_attention with a single query per head", atol=1e-5)
    nothing = torch.zeros(2, 9, dtype=torch.bool)
    expect.close(attend(q1, k1, v1, nothing), reference_attention(q1, k1, v1),
                 "bidirectional_attention with a mask that hides nothing", atol=1e-5)


@check("12_encoders", "mask_tokens", points=2, book=BOOK + "#masked-language-modelling", hidden=True)
def test_mask_tokens_hidden(sub):
    """mask_tokens at p = 0 and p = 1, with other special ids and vocabulary, and with a generator's later state."""
    mask_tokens = masking_function(sub)
    g = torch.Generator().manual_seed(test_mask_tokens_hidden.autograder_check.seed)
    ids = torch.randint(3, 40, (60, 30), generator=g)  # ordinary ids 3..39; 0 padding, 1 separator, 2 mask
    ids[:, 0] = 1
    ids[:, 20:] = 0
    special = (0, 1, 2)
    ordinary = ids >= 3
    none_inputs, none_labels = unpack_masking(
        mask_tokens(ids, 2, 40, special, p=0.0, generator=torch.Generator().manual_seed(1)), ids,
        "mask_tokens(..., p=0.0)")
    expect.equal(none_inputs, ids, "mask_tokens(..., p=0.0): the inputs")
    expect.true(bool((none_labels == NOT_MASKED).all()), "mask_tokens(..., p=0.0) labelled a position: with p=0 "
                                                           "nothing is chosen.")
    all_inputs, all_labels = unpack_masking(
        mask_tokens(ids, 2, 40, special, p=1.0, generator=torch.Generator().manual_seed(2)), ids,
        "mask_tokens(..., p=1.0)")
    expect.equal(all_labels != NOT_MASKED, ordinary, "mask_tokens(..., p=1.0): which positions are chosen",
                 hint="With p=1 every ordinary position is chosen, and no special one.")
    replaced = (all_inputs != ids) & (all_inputs != 2)
    expect.true(bool((all_inputs[replaced] >= 3).all() & (all_inputs[replaced] < 40).all()),
                "mask_tokens(..., vocab_size=40, special_ids=(0, 1, 2), p=1.0) drew a special id or an id outside "
                "the vocabulary as a random replacement.")
    share = ((all_inputs == 2) & ordinary).sum().item() / ordinary.sum().item()
    expect.true(abs(share - 0.8) < 0.05, f"mask_tokens(..., p=1.0) turned {100 * share:.1f}% of the chosen positions "
                                         f"into mask_id; the recipe says 80%.")
    # The generator's state moved on (as it does between two batches of training): the masks must differ. (Two calls
    # on one generator would not show it here: the grader hands the submission a copy of its arguments.)
    first = unpack_masking(mask_tokens(ids, 2, 40, list(special), p=0.3, generator=torch.Generator().manual_seed(3)),
                           ids, "mask_tokens(..., p=0.3)")
    later = torch.Generator().manual_seed(3)
    torch.rand(7, generator=later)
    second = unpack_masking(mask_tokens(ids, 2, 40, list(special), p=0.3, generator=later), ids,
                            "mask_tokens(..., p=0.3)")
    expect.true(not torch.equal(first[1], second[1]),
                "mask_tokens gave the same masks from a generator whose state had moved on as from a fresh one: "
                "draw from the generator you are given (not from a fresh one seeded inside), so that each batch "
                "gets masks of its own.")


@check("12_encoders", "masked_lm_loss", points=1, book=BOOK + "#masked-language-modelling", hidden=True)
def test_masked_lm_loss_hidden(sub):
    """masked_lm_loss equals the reference with one scored position, and with every position scored."""
    loss = loss_function(sub)
    g = torch.Generator().manual_seed(test_masked_lm_loss_hidden.autograder_check.seed)
    logits = torch.randn(2, 5, 7, generator=g)
    one = torch.full((2, 5), NOT_MASKED)
    one[1, 3] = 6
    expect.close(loss(logits, one), reference_loss(logits, one), "masked_lm_loss with one scored position", atol=1e-5)
    every = torch.randint(7, (2, 5), generator=g)
    expect.close(loss(logits, every), reference_loss(logits, every), "masked_lm_loss with every position scored",
                 atol=1e-5)


@check("12_encoders", "CrossAttention", points=1, book=BOOK + "#cross-attention-and-an-encoderdecoder", hidden=True)
def test_CrossAttention_hidden(sub):
    """CrossAttention equals the reference with one head, eight heads, one query and an unpadded batch of one."""
    CrossAttention = cross_class(sub)
    g = torch.Generator().manual_seed(test_CrossAttention_hidden.autograder_check.seed)
    with expect.blame(sub, "bidirectional_attention"):
        for d_model, n_heads, B, T, S, lengths in [(8, 1, 2, 3, 4, [4, 2]), (16, 8, 1, 1, 6, None),
                                                   (12, 3, 3, 6, 2, [2, 1, 2])]:
            state = random_mha_state(d_model, seed=d_model + n_heads)
            module = CrossAttention(d_model, n_heads)
            module.load_state_dict(state)
            module.eval()
            reference = ReferenceCrossAttention(d_model, n_heads)
            reference.load_state_dict(state)
            x, memory = torch.randn(B, T, d_model, generator=g), torch.randn(B, S, d_model, generator=g)
            padding = None if lengths is None else padding_mask(lengths, S)
            with torch.no_grad():
                expected = reference(x, memory, padding)
            expect.close(module(x, memory, padding), expected,
                         f"CrossAttention({d_model}, {n_heads}) for x ({B}, {T}, {d_model}), memory ({B}, {S}, "
                         f"{d_model})", atol=1e-5)
