"""tinyllm.posttrain: the losses against PyTorch, LoRA's algebra, the chat template, resumable fine-tuning."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinyllm.bpe import BPETokenizer
from tinyllm.model import GPTConfig, TinyGPT
from tinyllm.posttrain import (ASSISTANT, USER, ChatTokenizer, FineTuneConfig, FineTuner, LoRALinear, apply_lora,
                               dpo_loss, grow_vocabulary, merge_lora, parse_qa, preference_pairs, sequence_logprob,
                               sft_batch, sft_loss, trainable_names, trainable_parameters)

TEXT = "Q: What is a token?\nA: A piece of text.\n\nQ: What is a model?\nA: A function with weights.\n"


def batch(seed=0, B=3, T=6, V=10):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, requires_grad=True)
    targets = torch.randint(V, (B, T), generator=g)
    mask = torch.rand(B, T, generator=g) > 0.4
    mask[:, -1] = True
    return logits, targets, mask


def test_sft_loss_is_cross_entropy_over_the_masked_positions_only():
    logits, targets, mask = batch()
    expected = F.cross_entropy(logits.reshape(-1, 10), targets.masked_fill(~mask, -100).reshape(-1))
    assert torch.allclose(sft_loss(logits, targets.masked_fill(~mask, -1), mask), expected, atol=1e-6)
    sft_loss(logits, targets, mask).backward()
    assert logits.grad[~mask].abs().max() == 0  # the prompt is not learned from
    assert logits.grad[mask].abs().max() > 0


def test_sequence_logprob_sums_the_masked_log_probabilities():
    logits, targets, mask = batch(1)
    nll = F.cross_entropy(logits.reshape(-1, 10), targets.reshape(-1), reduction="none").view(3, 6)
    assert torch.allclose(sequence_logprob(logits, targets, mask), -(nll * mask).sum(-1), atol=1e-5)


def test_lora_starts_as_the_base_layer_and_merges_exactly():
    torch.manual_seed(0)
    base = nn.Linear(6, 4)
    layer = LoRALinear(copy.deepcopy(base), rank=2, alpha=8.0)
    x = torch.randn(5, 6)
    assert torch.equal(layer(x), base(x))  # lora_b = 0: unchanged before training
    assert trainable_names(layer) == ["lora_a", "lora_b"]
    assert trainable_parameters(layer) == 2 * 6 + 4 * 2
    with torch.no_grad():
        layer.lora_b.normal_()
    expected = base(x) + 8.0 / 2 * x @ layer.lora_a.T @ layer.lora_b.T
    assert torch.allclose(layer(x), expected, atol=1e-6)
    merged = layer.merged()
    assert type(merged) is nn.Linear and torch.allclose(merged(x), layer(x), atol=1e-5)
    with pytest.raises(ValueError):
        LoRALinear(base, 0, 1.0)


def test_dpo_loss_hand_computed_value_and_gradient_sign():
    pc, pr, rc, rr = (torch.tensor([v], requires_grad=True) for v in (-4.0, -9.0, -5.0, -7.0))
    loss = dpo_loss(pc, pr, rc, rr, beta=0.5)
    margin = 0.5 * ((-4.0 + 5.0) - (-9.0 + 7.0))  # 1.5
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-margin)), abs=1e-6)
    loss.backward()
    assert pc.grad.item() < 0 < pr.grad.item()  # descending raises the chosen answer, lowers the rejected one
    same = torch.zeros(4)
    assert dpo_loss(same, same, same, same).item() == pytest.approx(math.log(2), abs=1e-6)


@pytest.fixture(scope="module")
def chat():
    return ChatTokenizer(BPETokenizer.train(TEXT, 270, end_of_text=True))


def test_role_markers_are_single_ids_that_no_text_encodes_to(chat):
    assert (chat.user_id, chat.assistant_id) == (chat.base.vocab_size, chat.base.vocab_size + 1)
    typed = chat.encode(USER + ASSISTANT)
    assert chat.user_id not in typed and chat.assistant_id not in typed and len(typed) > 2
    ids, n_prompt = chat.example("What is a token?", "A piece of text.")
    assert ids[:2] == [chat.end_of_text_id, chat.user_id] and ids[n_prompt - 1] == chat.assistant_id
    assert chat.decode(ids) == "<|endoftext|><|user|>What is a token?<|assistant|>A piece of text.<|endoftext|>"


def test_sft_batch_masks_the_answer_and_its_end(chat):
    examples = [chat.example("What is a token?", "A piece of text."), chat.example("What?", "A model.")]
    x, y, answer, every = sft_batch(examples, chat.end_of_text_id)
    for row, (ids, n_prompt) in enumerate(examples):
        assert y[row][answer[row]].tolist() == ids[n_prompt:]  # the answer and its end-of-text, nothing else
        assert y[row][every[row]].tolist() == ids[1:]
        assert (y[row][~every[row]] == -1).all()


def test_preference_pairs_share_the_prompt_and_reject_another_questions_answer(chat):
    pairs = [("What is a token?", "A piece of text."), ("What is a model?", "A function with weights.")]
    made = preference_pairs(pairs, chat, context_length=64)
    assert len(made) == 2
    for i, ((chosen, n_c), (rejected, n_r)) in enumerate(made):
        assert n_c == n_r and chosen[:n_c] == rejected[:n_c] == chat.prompt(pairs[i][0])
        assert chosen[n_c:] == chat.encode(pairs[i][1]) + [chat.end_of_text_id]
        assert rejected[n_r:] == chat.encode(pairs[1 - i][1]) + [chat.end_of_text_id]


def test_grown_vocabulary_keeps_every_old_prediction_and_lora_merges_on_a_model():
    torch.manual_seed(0)
    model = TinyGPT(GPTConfig(vocab_size=260, context_length=8, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                              dropout=0.0)).eval()
    idx = torch.randint(260, (2, 8))
    grown = grow_vocabulary(model, 2).eval()
    assert grown.config.vocab_size == 262 and grown.lm_head.weight is grown.tok_emb.weight
    assert torch.allclose(grown(idx)[0][..., :260], model(idx)[0], atol=1e-6)
    before = grown(idx)[0]
    wrapped = apply_lora(grown, rank=2, alpha=4.0)
    assert wrapped and trainable_parameters(grown) < model.num_parameters() / 5
    assert torch.equal(grown(idx)[0], before)
    for module in grown.modules():
        if isinstance(module, LoRALinear):
            with torch.no_grad():
                module.lora_b.normal_(std=0.1)
    unmerged = grown(idx)[0]
    merge_lora(grown)
    assert not any(isinstance(m, LoRALinear) for m in grown.modules())
    assert torch.allclose(grown(idx)[0], unmerged, atol=1e-5)


@pytest.mark.parametrize("lora_rank", [0, 2])
def test_fine_tuning_resumed_from_its_state_continues_exactly(chat, lora_rank):
    config = GPTConfig(vocab_size=chat.base.vocab_size, context_length=32, d_model=16, n_layers=1, n_heads=2,
                       d_ff=32, dropout=0.0)
    torch.manual_seed(0)
    model = grow_vocabulary(TinyGPT(config), 2)
    examples = [chat.example(q, a) for q, a in parse_qa(TEXT)]
    cfg = FineTuneConfig(steps=6, batch_size=2, lora_rank=lora_rank)
    whole = FineTuner(copy.deepcopy(model), examples, chat.end_of_text_id, cfg)
    whole.train()
    first = FineTuner(copy.deepcopy(model), examples, chat.end_of_text_id, cfg)
    first.train(until=3)
    state = copy.deepcopy(first.state())
    second = FineTuner(copy.deepcopy(model), examples, chat.end_of_text_id, cfg)
    second.load_state(state)
    second.train()
    assert second.losses == whole.losses
    for a, b in zip(second.model.state_dict().values(), whole.model.state_dict().values()):
        assert torch.equal(a, b)


def test_parse_qa_names_the_document_that_is_not_a_question():
    assert parse_qa(TEXT) == [("What is a token?", "A piece of text."), ("What is a model?", "A function with weights.")]
    with pytest.raises(ValueError, match="document 3 is not"):
        parse_qa(TEXT + "\nJust a sentence.\n")
    with pytest.raises(ValueError, match="no questions"):
        parse_qa("\n\n")
