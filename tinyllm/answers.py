"""What a trained model answers: exact answers to the corpus's questions, and real words (chapter 8).

Perplexity says how well a model predicts text on average; a reader judges a
language model by what it writes. Two measures of that, used by the book and
by ``tiny-llm evaluate``:

- **exact answers**: give the model a document's question (``Q: ...\\nA:``,
  after the end-of-text id that starts every training sequence), decode
  greedily until it writes end-of-text, and compare with the document's own
  answer, token for token. A sequence the model cannot finish inside its
  context window is compared up to the window. The question is either cut
  from the very sequence the model was trained on (:func:`question_prompt`)
  or encoded on its own, as a user types it (:func:`typed_prompt`); with the
  book's pre-splitting tokenizer the two are the same ids.
- **real words**: the share of the words in some texts (sampled answers, say)
  that occur anywhere in the corpus; invented words ("cros-entropy") do not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from tinyllm.sampling import generate_until
from tinyllm.train import cpu_threads

ANSWER_MARK = "\nA:"  # where a question ends and its answer begins
QUESTION_FRAME = "Q: {question}" + ANSWER_MARK  # a question typed by a user, framed as the corpus frames it
WORD = re.compile(r"[A-Za-z]+")  # a word, for the real-word measure: a run of letters


@dataclass(frozen=True)
class Answer:
    """One question put to the model: what the corpus answers, and what the model wrote."""

    question: str  # the document's question: its first line, "Q: ..."
    expected: str  # the corpus's answer: the text after "A: "
    answer: str  # what the model wrote after "A: " (up to its end-of-text, or the end of its window)
    exact: bool  # token for token the corpus's answer, end-of-text included


def question_prompt(tokenizer, document: str, context_length: int) -> tuple[list[int], list[int]]:
    """``(prompt, expected)`` ids for one document, cut from the sequence the model was trained on.

    The sequence is end-of-text, the document, end-of-text (at most
    ``context_length + 1`` ids). The prompt is its ids up to the last one
    that lies wholly inside the question (which ends with "A:"); the expected
    continuation is the rest. Cutting the trained sequence, rather than
    encoding the question alone, gives the model the very tokens it learned
    from, even where a merge crosses the question's end.
    """
    if ANSWER_MARK not in document:
        raise ValueError(f"not a question and answer (no {ANSWER_MARK!r}): {document[:60]!r}")
    eot = tokenizer.end_of_text_id
    if eot is None:
        raise ValueError("exact answers need a tokenizer with an end-of-text id")
    ids = tokenizer.encode(document)
    question_bytes = len(document[: document.index(ANSWER_MARK) + len(ANSWER_MARK)].encode("utf-8"))
    n, spelled = 0, 0
    for token_id in ids:
        spelled += len(tokenizer.token_bytes(token_id))
        if spelled > question_bytes:
            break
        n += 1
    sequence = ([eot] + ids + [eot])[: context_length + 1]
    if n + 1 >= len(sequence):
        raise ValueError(f"the question fills the context window of {context_length}: {document[:60]!r}")
    return sequence[: n + 1], sequence[n + 1 :]


def typed_prompt(tokenizer, document: str, context_length: int) -> tuple[list[int], list[int]]:
    """``(prompt, expected)`` ids for one document's question as a user types it.

    The prompt is end-of-text and the question (up to and including "A:")
    encoded on its own; the expected continuation is the rest of the document
    encoded on its own, then end-of-text, cut so that both fit in
    ``context_length + 1`` ids as the trained sequence does. A tokenizer that
    splits the text first ends a chunk at "A:", so these are the very ids of
    the trained sequence; one that merges across the question's end (the
    unsplit BPE) gives the model a prompt it never read.
    """
    if ANSWER_MARK not in document:
        raise ValueError(f"not a question and answer (no {ANSWER_MARK!r}): {document[:60]!r}")
    eot = tokenizer.end_of_text_id
    if eot is None:
        raise ValueError("exact answers need a tokenizer with an end-of-text id")
    end = document.index(ANSWER_MARK) + len(ANSWER_MARK)
    prompt = [eot] + tokenizer.encode(document[:end])
    if len(prompt) >= context_length + 1:
        raise ValueError(f"the question fills the context window of {context_length}: {document[:60]!r}")
    expected = (tokenizer.encode(document[end:]) + [eot])[: context_length + 1 - len(prompt)]
    return prompt, expected


def askable(tokenizer, documents: list[str], context_length: int) -> list[str]:
    """The documents that are a question and an answer whose question fits the context window."""
    kept = []
    for doc in documents:
        try:
            question_prompt(tokenizer, doc, context_length)
        except ValueError:
            continue
        kept.append(doc)
    return kept


@torch.no_grad()
def answer_questions(model: nn.Module, tokenizer, documents: list[str], batch_size: int = 64,
                     num_threads: int | None = 1, typed: bool = False, **sampling) -> list[Answer]:
    """Ask the model each document's question; greedy unless ``sampling`` says otherwise.

    The prompt is cut from the trained sequence (:func:`question_prompt`), or
    with ``typed`` the question encoded on its own (:func:`typed_prompt`).

    ``sampling`` goes to :func:`tinyllm.sampling.generate` (temperature,
    top_k, top_p, generator); the default is greedy (temperature 0).
    Questions with prompts of the same length run as one batch, and each
    answer is cut after its first end-of-text. The batches are small, so
    ``num_threads`` CPU threads (1 by default; None leaves torch's setting)
    are faster than several, which wait for each other on a busy machine.
    """
    sampling = sampling or {"temperature": 0.0}
    T = model.config.context_length
    eot = tokenizer.end_of_text_id
    ask = typed_prompt if typed else question_prompt
    prompts = [ask(tokenizer, doc, T) for doc in documents]
    by_length: dict[int, list[int]] = {}
    for i, (prompt, _) in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(i)
    written: dict[int, list[int]] = {}
    with cpu_threads(num_threads):
        for length in sorted(by_length):
            _answer_group(model, prompts, by_length[length], length, batch_size, eot, written, sampling)
    answers = []
    for i, (doc, (prompt, expected)) in enumerate(zip(documents, prompts)):
        got = written[i]
        question, _, answer = doc.partition(ANSWER_MARK)
        text = tokenizer.decode(prompt[1:] + [t for t in got if t != eot])  # the question, then what was written
        head, mark, written_answer = text.partition(ANSWER_MARK)
        answers.append(Answer(
            question=question,
            expected=answer.removeprefix(" "),
            answer=written_answer.removeprefix(" ") if mark else text[len(tokenizer.decode(prompt[1:])):],
            exact=got == expected,
        ))
    return answers


def _answer_group(model, prompts, group, length, batch_size, eot, written, sampling) -> None:
    """Answer the questions ``group`` (indices into ``prompts``), whose prompts have ``length`` ids."""
    T = model.config.context_length
    device = next(model.parameters()).device
    for start in range(0, len(group), batch_size):
        rows = group[start : start + batch_size]
        idx = torch.tensor([prompts[i][0] for i in rows], device=device)  # (b, length)
        # The trained sequences end at T + 1 ids: the model never wrote beyond that.
        idx = generate_until(model, idx, eot, T + 1, **sampling)
        for i, ids in zip(rows, idx[:, length:].tolist()):
            written[i] = ids[: ids.index(eot) + 1] if eot in ids else ids


@torch.no_grad()
def ask(model: nn.Module, tokenizer, question: str, **sampling) -> str:
    """The model's answer to ``question`` as a user types it; greedy unless ``sampling`` says otherwise.

    The prompt is end-of-text, then ``QUESTION_FRAME`` around the question
    ("Q: What is a token?\\nA:"), encoded as it stands: what a tokenizer that
    splits first also gave the model in training. The answer is what the model
    writes after it, up to its end-of-text (or the end of its window), without
    the space that opens it. ``sampling`` goes to :func:`tinyllm.sampling.generate`.
    """
    eot = tokenizer.end_of_text_id
    if eot is None:
        raise ValueError("asking a question needs a tokenizer with an end-of-text id")
    sampling = sampling or {"temperature": 0.0}
    T = model.config.context_length
    prompt = [eot] + tokenizer.encode(QUESTION_FRAME.format(question=question))
    if len(prompt) >= T + 1:
        raise ValueError(f"the question fills the context window of {T} tokens: {question[:60]!r}")
    device = next(model.parameters()).device
    idx = torch.tensor([prompt], device=device)  # (1, length)
    idx = generate_until(model, idx, eot, T + 1, **sampling)  # as _answer_group
    written = idx[0, len(prompt):].tolist()
    written = written[: written.index(eot)] if eot in written else written
    return tokenizer.decode(written).removeprefix(" ")


def exact_answer_rate(model: nn.Module, tokenizer, documents: list[str], typed: bool = False) -> float:
    """Share of the documents whose question the model answers exactly, greedily."""
    answers = answer_questions(model, tokenizer, documents, typed=typed)
    return sum(a.exact for a in answers) / len(answers)


def words(text: str) -> list[str]:
    """The words of a text, lower case (runs of letters: "top-k" is "top" and "k")."""
    return [w.lower() for w in WORD.findall(text)]


def real_word_share(texts: list[str], corpus: str) -> float:
    """Share of the words of ``texts`` that occur somewhere in ``corpus``."""
    known = set(words(corpus))
    written = [w for text in texts for w in words(text)]
    if not written:
        raise ValueError("the texts contain no words")
    return sum(w in known for w in written) / len(written)


@torch.no_grad()
def exact_by_teacher_forcing(model: nn.Module, tokenizer, documents: list[str], batch_size: int = 64) -> list[bool]:
    """For each document, whether greedy decoding answers its question exactly: :func:`answer_questions`'s
    ``exact``, from one forward pass per batch instead of a generation.

    Greedy decoding writes the expected answer token for token exactly when,
    at every position of it, the model's most likely next token given the
    question and the expected tokens before it is the expected one: as long
    as it is, the text so far is the expected text. So one forward pass over
    each whole trained sequence (padded at the end, which a causal model
    never sees) decides it.
    """
    from tinyllm.batches import pad_sequences

    T = model.config.context_length
    device = next(model.parameters()).device
    cut = [question_prompt(tokenizer, doc, T) for doc in documents]
    exact = []
    was_training = model.training
    model.eval()
    for start in range(0, len(cut), batch_size):
        rows = cut[start : start + batch_size]
        x, y = pad_sequences([prompt + expected for prompt, expected in rows], tokenizer.end_of_text_id)
        picked = model(x.to(device))[0].argmax(dim=-1).cpu()  # (b, L): greedy's choice at each position
        for i, (prompt, expected) in enumerate(rows):
            answer = slice(len(prompt) - 1, len(prompt) - 1 + len(expected))  # positions that predict the answer
            exact.append(bool((picked[i, answer] == y[i, answer]).all()))
    model.train(was_training)
    return exact
