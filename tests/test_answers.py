"""Training on whole documents and measuring answers: end-of-text, document samples, exact answers, real words.

The last test is the issue's goal: the book's own trained model (loaded from the
book build's cache, or trained here in about two minutes) answers the questions
it was taught, exactly, in real words.
"""

from __future__ import annotations

import pytest
import torch

from tinyllm.answers import (QUESTION_FRAME, answer_questions, ask, askable, question_prompt, real_word_share,
                             typed_prompt, words)
from tinyllm.bpe import END_OF_TEXT, BPETokenizer
from tinyllm.data import document_sequences, read_corpus, split_corpus, split_documents, token_stream
from tinyllm.model import GPTConfig
from tinyllm.ngram import NGramLM
from tinyllm.batches import IGNORE, DocumentSampler, pad_sequences, sequence_loss
from tinyllm.evaluation import evaluate_documents
from tinyllm.train import TrainConfig, Trainer, build_model, load_checkpoint

DOCS = ["Q: What is a cat?\nA: A small animal.", "Q: What is a dog?\nA: A loyal animal.",
        "Q: What is a cow?\nA: A big animal that gives milk.", "Q: What is a hen?\nA: A bird that lays eggs."]


@pytest.fixture(scope="module")
def tokenizer() -> BPETokenizer:
    """BPE over the whole text: its merges cross the questions' ends."""
    return BPETokenizer.train("\n\n".join(DOCS * 3), 300, end_of_text=True)


@pytest.fixture(scope="module")
def split_tokenizer() -> BPETokenizer:
    """The book's kind: GPT-2's pre-split, then BPE within chunks."""
    return BPETokenizer.train("\n\n".join(DOCS * 3), 300, end_of_text=True, split=True)


def test_end_of_text_is_the_last_id_spells_no_bytes_and_shows_when_decoded(tokenizer):
    eot = tokenizer.end_of_text_id
    assert eot == tokenizer.vocab_size - 1 == 256 + len(tokenizer.merges) and len(tokenizer.merges) == 43
    assert eot not in tokenizer.encode(DOCS[0] + END_OF_TEXT)  # no text encodes to it, not even its name
    assert tokenizer.token_bytes(eot) == b""
    assert tokenizer.decode([eot, *tokenizer.encode("héllo"), eot]) == f"{END_OF_TEXT}héllo{END_OF_TEXT}"
    again = BPETokenizer.from_json(tokenizer.to_json())
    assert again.end_of_text_id == eot and again.merges == tokenizer.merges
    assert BPETokenizer(tokenizer.merges).end_of_text_id is None  # without it, nothing changes
    with pytest.raises(ValueError, match="not in the vocabulary"):
        BPETokenizer(tokenizer.merges).decode([eot])


def test_document_sequences_open_and_close_with_end_of_text_and_fit_the_window(tokenizer):
    eot = tokenizer.end_of_text_id
    sequences = document_sequences(DOCS, tokenizer, context_length=64)
    for doc, seq in zip(DOCS, sequences):
        assert seq == [eot, *tokenizer.encode(doc), eot]
    short = document_sequences(DOCS, tokenizer, context_length=5)
    assert all(len(seq) == 6 and seq[0] == eot for seq in short)  # cut to context_length + 1
    # The stream shares the end-of-text ids between neighbours; its ids after the first are all the targets.
    stream = token_stream(sequences)
    assert len(stream) - 1 == sum(len(seq) - 1 for seq in sequences)
    assert stream.count(eot) == len(DOCS) + 1
    with pytest.raises(ValueError, match="end-of-text"):
        document_sequences(DOCS, BPETokenizer(tokenizer.merges), 64)


def test_padding_is_never_a_target_and_the_loss_ignores_it():
    x, y = pad_sequences([[9, 1, 2, 9], [9, 3, 9]], pad_id=9)
    assert x.tolist() == [[9, 1, 2], [9, 3, 9]] and y.tolist() == [[1, 2, 9], [3, 9, IGNORE]]
    logits = torch.randn(2, 3, 10, generator=torch.Generator().manual_seed(0))
    scored = torch.tensor([[True, True, True], [True, True, False]])
    expected = torch.nn.functional.cross_entropy(logits[scored], y[scored])
    assert torch.allclose(sequence_loss(logits, y), expected)
    # Whatever the logits at a padded position, the loss is the same.
    changed = logits.clone()
    changed[1, 2] = 100.0
    assert torch.allclose(sequence_loss(changed, y), expected)


def test_document_sampler_draws_whole_documents_from_position_0_seeded_and_resumable(tokenizer):
    sequences = document_sequences(DOCS, tokenizer, 64)
    sampler = DocumentSampler(sequences, batch_size=5, seed=3)
    x, y = sampler.next_batch()
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        n = sum(t != IGNORE for t in row_y)
        assert [row_x[0], *row_y[:n]] in sequences  # one whole document, from its start
    state = sampler.state_dict()
    after = sampler.next_batch()
    again = DocumentSampler(sequences, batch_size=5, seed=3)
    again.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(after, again.next_batch()))


def test_evaluate_documents_scores_every_target_once_as_the_baselines_do(tokenizer):
    sequences = document_sequences(DOCS, tokenizer, 64)
    model = build_model(GPTConfig(vocab_size=tokenizer.vocab_size, context_length=64, d_model=16, n_layers=1,
                                  n_heads=2, d_ff=32), seed=0)
    model.eval()
    total, count = 0.0, 0
    for seq in sequences:  # one document at a time, unpadded
        logits, _ = model(torch.tensor([seq[:-1]]))
        total += torch.nn.functional.cross_entropy(logits[0], torch.tensor(seq[1:]), reduction="sum").item()
        count += len(seq) - 1
    assert evaluate_documents(model, sequences, batch_size=3) == pytest.approx(total / count, rel=1e-5)
    stream = token_stream(sequences)
    assert NGramLM(1, tokenizer.vocab_size).fit(stream).nll(stream) > 0  # the baselines read the same stream


def test_question_prompt_cuts_the_trained_sequence_after_the_question(tokenizer):
    prompt, expected = question_prompt(tokenizer, DOCS[2], 64)
    eot = tokenizer.end_of_text_id
    assert prompt + expected == [eot, *tokenizer.encode(DOCS[2]), eot]
    question = tokenizer.decode(prompt[1:])
    end = DOCS[2].index("\nA:") + 3  # the question's end
    assert DOCS[2].startswith(question) and len(question) <= end  # all of the prompt is question
    assert len(question + tokenizer.decode(expected[:1])) > end  # its next token crosses the question's end
    assert (question + tokenizer.decode(expected[:-1])) == DOCS[2]
    with pytest.raises(ValueError, match="no '\\\\nA:'"):
        question_prompt(tokenizer, "just a sentence", 64)
    with pytest.raises(ValueError, match="fills the context window"):
        question_prompt(tokenizer, DOCS[2], 4)
    assert askable(tokenizer, [*DOCS, "no question here"], 64) == DOCS
    assert askable(tokenizer, DOCS, 1) == []


def test_a_typed_question_is_the_trained_prompt_only_when_the_tokenizer_splits_first(tokenizer, split_tokenizer):
    eot = split_tokenizer.end_of_text_id
    for doc in DOCS:
        prompt, expected = typed_prompt(split_tokenizer, doc, 64)
        assert (prompt, expected) == question_prompt(split_tokenizer, doc, 64)
        assert prompt == [eot, *split_tokenizer.encode(doc[: doc.index("\nA:") + 3])]
        # Unsplit, "?\nA: A" was merged in training: typed alone, the question ends in other tokens.
        typed, _ = typed_prompt(tokenizer, doc, 64)
        trained = [eot, *tokenizer.encode(doc), eot]
        assert trained[: len(typed)] != typed
    prompt, expected = typed_prompt(split_tokenizer, DOCS[2], 12)  # cut to the window, as training cuts
    assert len(prompt) + len(expected) == 13
    with pytest.raises(ValueError, match="fills the context window"):
        typed_prompt(split_tokenizer, DOCS[2], 4)


def test_a_model_that_memorised_the_documents_answers_them_exactly(split_tokenizer):
    tokenizer = split_tokenizer
    sequences = document_sequences(DOCS, tokenizer, 64)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, context_length=64, d_model=32, n_layers=1, n_heads=2,
                       d_ff=64, dropout=0.0)
    trainer = Trainer(build_model(config, seed=0), sequences, sequences[:1],
                      TrainConfig(batch_size=4, max_steps=300, warmup_steps=10, lr=1e-2, min_lr=1e-3,
                                  eval_interval=50, patience=100), device="cpu", merges=tokenizer.merges,
                      num_threads=1, end_of_text=True, split=True)
    trainer.train()
    answers = answer_questions(trainer.model, tokenizer, DOCS)
    assert [a.exact for a in answers] == [True] * 4, answers
    assert answers[3].question == "Q: What is a hen?" and answers[3].answer == answers[3].expected == "A bird that lays eggs."
    assert [a.exact for a in answer_questions(trainer.model, tokenizer, DOCS, typed=True)] == [True] * 4
    assert ask(trainer.model, tokenizer, "What is a cow?") == "A big animal that gives milk."
    assert QUESTION_FRAME.format(question="What is a cow?") == DOCS[2][: DOCS[2].index("\nA:") + 3]
    # An untrained model answers nothing exactly, and what it writes is cut at its first end-of-text.
    fresh = answer_questions(build_model(config, seed=1), tokenizer, DOCS)
    assert not any(a.exact for a in fresh)
    sampled = answer_questions(trainer.model, tokenizer, DOCS, temperature=0.8,
                               generator=torch.Generator().manual_seed(0))
    assert real_word_share([a.answer for a in sampled], "\n\n".join(DOCS)) > 0.9


def test_real_word_share_counts_words_found_in_the_corpus():
    assert words("Top-k, the CAT's") == ["top", "k", "the", "cat", "s"]
    assert real_word_share(["the cat sat", "a dgo"], "The cat sat on a mat.") == pytest.approx(4 / 5)
    with pytest.raises(ValueError, match="no words"):
        real_word_share(["... !"], "text")


def test_checkpoints_remember_the_end_of_text_token(tmp_path, tokenizer):
    sequences = document_sequences(DOCS, tokenizer, 16)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, context_length=16, d_model=16, n_layers=1, n_heads=2,
                       d_ff=32)
    trainer = Trainer(build_model(config, seed=0), sequences, sequences, TrainConfig(max_steps=2, batch_size=2),
                      device="cpu", merges=tokenizer.merges, end_of_text=True, split=True)
    trainer.train()
    trainer.save(tmp_path / "c.pt")
    ckpt = load_checkpoint(tmp_path / "c.pt")
    assert ckpt.end_of_text and ckpt.train_config.samples == "documents"
    assert ckpt.tokenizer().end_of_text_id == tokenizer.end_of_text_id
    assert ckpt.split and ckpt.tokenizer().split  # the checkpoint remembers the pre-split too


# ---------------------------------------------------------------- the goal: the book's model


@pytest.mark.slow
def test_the_books_model_answers_what_it_was_taught_in_real_words():
    """>= 90% of a fixed sample of training questions answered exactly (greedy), >= 98% real words (tau 0.8);
    >= 90% of all training questions answered exactly when typed (end-of-text, then "Q: ...\\nA:" encoded alone).

    The model is the book's (``trained_tiny_gpt``): loaded from the build's
    cache when the book has been built, else trained here with the book's
    defaults. The held-out rates are reported, not asserted: a model that
    memorises its training set is not expected to answer new questions.
    """
    from tinyllm.book import trained_tiny_gpt

    model, tokenizer, history = trained_tiny_gpt()
    corpus = read_corpus()
    splits = split_corpus(corpus)
    train_docs = split_documents(splits.train)[:100]  # a fixed sample: the first 100 training documents
    greedy = answer_questions(model, tokenizer, train_docs)
    exact = sum(a.exact for a in greedy) / len(greedy)
    sampled = answer_questions(model, tokenizer, train_docs, temperature=0.8,
                               generator=torch.Generator().manual_seed(0))
    real = real_word_share([a.answer for a in sampled], corpus)
    held_out = {name: answer_questions(model, tokenizer, split_documents(getattr(splits, name)))
                for name in ("val", "test")}
    report = ", ".join(f"{name} {sum(a.exact for a in answers)}/{len(answers)}" for name, answers in held_out.items())
    print(f"training questions answered exactly: {exact:.1%}; real words when sampled: {real:.1%}; "
          f"held-out questions answered exactly: {report}")
    assert all(held_out.values())  # measured, on non-empty splits; how many are right is the chapter's lesson
    typed = answer_questions(model, tokenizer, split_documents(splits.train), typed=True)
    typed_exact = sum(a.exact for a in typed) / len(typed)
    print(f"typed training questions answered exactly: {sum(a.exact for a in typed)} of {len(typed)}")
    wrong = [a for a in greedy if not a.exact][:3]
    assert exact >= 0.90, f"only {exact:.0%} answered exactly, e.g. {wrong}"
    assert real >= 0.98, f"only {real:.1%} of the sampled words are corpus words"
    wrong = [a for a in typed if not a.exact][:3]
    assert typed_exact >= 0.90, f"only {typed_exact:.0%} of the typed questions answered exactly, e.g. {wrong}"


@pytest.mark.slow
def test_teacher_forcing_decides_exactly_what_greedy_answering_decides():
    """exact_by_teacher_forcing (one forward pass) gives answer_questions' exact flags, where answers are right
    and where they are wrong: the book's model and a copy quantized coarsely enough to lose answers."""
    import copy

    from tinyllm.answers import exact_by_teacher_forcing
    from tinyllm.book import trained_tiny_gpt
    from tinyllm.quantize import quantize_int4

    model, tokenizer, _ = trained_tiny_gpt()
    splits = split_corpus(read_corpus())
    documents = split_documents(splits.train)[:40] + split_documents(splits.val)[:10]
    coarse = copy.deepcopy(model)
    with torch.no_grad():
        for name, w in coarse.named_parameters():
            if w.dim() == 2:  # int4 with one scale per tensor: the chapter's worst scheme
                codes, scale = quantize_int4(w.reshape(1, -1), w.numel())
                w.copy_((codes.float() * scale).reshape(w.shape))
    mixed = 0
    for m in (model, coarse):
        greedy = [a.exact for a in answer_questions(m, tokenizer, documents)]
        assert exact_by_teacher_forcing(m, tokenizer, documents) == greedy
        mixed += 0 < sum(greedy) < len(greedy)
    assert mixed == 2  # both right and wrong answers were decided
