"""From a model to an assistant: a chat template, supervised fine-tuning, LoRA and DPO (chapter 12).

A pretrained model continues text; an assistant answers a question and stops.
This module holds the pieces that turn the one into the other, on the book's
own tiny GPT and its own corpus:

- **special tokens and a chat template** (:class:`ChatTokenizer`): two role
  markers, ``<|user|>`` and ``<|assistant|>``, given ids after the tokenizer's
  end-of-text id, so that no text can ever encode to them and BPE never splits
  them; the model's token table grows by two rows (:func:`grow_vocabulary`);
- **supervised fine-tuning** with the loss on the answer only (:func:`sft_loss`,
  :func:`sft_batch`, :class:`FineTuner`);
- **LoRA** (:class:`LoRALinear`, :func:`apply_lora`, :func:`merge_lora`): a
  frozen linear layer plus a trainable low-rank update;
- **DPO** (:func:`sequence_logprob`, :func:`dpo_loss`, :func:`preference_pairs`).

The losses use the library's own ``log_softmax`` (chapter 4), not
``F.cross_entropy``/``F.log_softmax``: they are exercise 10's answers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinyllm.sampling import generate_until
from tinyllm.softmax import log_softmax
from tinyllm.train import save_atomically

USER = "<|user|>"  # how the role markers are written when decoded
ASSISTANT = "<|assistant|>"
FINETUNE_FORMAT = "tinyllm-finetune"  # the marker of a fine-tuning checkpoint (tiny-llm finetune)
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2", "w_gate", "w_up", "w_down")


# --------------------------------------------------------------------------- the losses (exercise 10)


def sft_loss(logits: Tensor, targets: Tensor, loss_mask: Tensor) -> Tensor:
    """Mean cross-entropy over the positions where ``loss_mask`` is true (the answer's tokens).

    logits (B, T, V), targets (B, T) ids, loss_mask (B, T) bool. Positions
    outside the mask (the prompt, the padding) are not scored at all, and the
    mean divides by the number of scored positions, not by B * T. A target
    outside the mask may be any integer (padding is often -1).
    """
    log_probs = log_softmax(logits, dim=-1)  # (B, T, V)
    safe = torch.where(loss_mask, targets, torch.zeros_like(targets))  # any id where nothing is scored
    picked = log_probs.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (B, T): log p(target)
    mask = loss_mask.to(picked.dtype)
    return -(picked * mask).sum() / mask.sum()


def sequence_logprob(logits: Tensor, targets: Tensor, loss_mask: Tensor) -> Tensor:
    """log p(answer | prompt) for each row: the log-probabilities of the masked targets, summed. (B,)"""
    log_probs = log_softmax(logits, dim=-1)  # (B, T, V)
    safe = torch.where(loss_mask, targets, torch.zeros_like(targets))
    picked = log_probs.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return (picked * loss_mask.to(picked.dtype)).sum(dim=-1)  # (B,)


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update (Hu et al., 2021).

    ``W x + b`` becomes ``W x + b + (alpha / rank) * B A x`` with ``A``
    (``lora_a``, rank x in_features) drawn at random and ``B`` (``lora_b``,
    out_features x rank) starting at zero: the layer computes exactly what
    the base layer computes until training moves ``B``. Hu et al. divide by
    the rank so that ``alpha`` needs little retuning when the rank changes;
    the update's size still depends on the rank (Kalajdzievski, 2023, argues
    for ``alpha / sqrt(rank)``; PEFT's ``use_rslora``). ``merged()`` folds the
    update into one plain layer.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be at least 1, got {rank}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)  # the pretrained weights stay as they are
        self.rank, self.alpha = rank, alpha
        self.scaling = alpha / rank
        weight = base.weight
        # A random (scaled like an input layer), B zero: the product B A is zero at the start.
        self.lora_a = nn.Parameter(torch.randn(rank, base.in_features, dtype=weight.dtype, device=weight.device)
                                   / math.sqrt(base.in_features))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, dtype=weight.dtype, device=weight.device))

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scaling * (x @ self.lora_a.T @ self.lora_b.T)

    def merged(self) -> nn.Linear:
        """One ``nn.Linear`` computing the same function: weight W + (alpha / rank) B A, the same bias."""
        base = self.base
        layer = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None,
                          device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(base.weight + self.scaling * self.lora_b @ self.lora_a)
            if base.bias is not None:
                layer.bias.copy_(base.bias)
        return layer


def dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor, ref_chosen_logps: Tensor,
             ref_rejected_logps: Tensor, beta: float = 0.1) -> Tensor:
    """Direct preference optimisation (Rafailov et al., 2023): mean of -log sigmoid(beta * margin).

    Each argument is (B,) sequence log-probabilities (:func:`sequence_logprob`).
    The margin is how much more the policy than the reference raised the
    chosen answer than the rejected one: (pc - rc) - (pr - rr).
    """
    margin = (policy_chosen_logps - ref_chosen_logps) - (policy_rejected_logps - ref_rejected_logps)
    return -F.logsigmoid(beta * margin).mean()


# --------------------------------------------------------------------------- helpers the checks use


def merged_state(layer: nn.Module) -> dict[str, Tensor]:
    """The state of ``layer.merged()``, which must be an ``nn.Linear`` (for the exercise's checks)."""
    merged = layer.merged()
    if not isinstance(merged, nn.Linear):
        raise TypeError(f"merged() must return an nn.Linear, got {type(merged).__name__}")
    return {name: value.detach().clone() for name, value in merged.state_dict().items()}


def trainable_names(module: nn.Module) -> list[str]:
    """Names of the parameters that training would change (requires_grad)."""
    return [name for name, p in module.named_parameters() if p.requires_grad]


def trainable_parameters(module: nn.Module) -> int:
    """How many numbers training would change."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


# --------------------------------------------------------------------------- special tokens and the chat template


class ChatTokenizer:
    """The book's BPE tokenizer plus two role markers, ids ``V`` and ``V + 1`` after its vocabulary.

    A conversation turn is ``<eot> <|user|> question <|assistant|> answer <eot>``.
    Like end-of-text, the markers spell no bytes: ``encode`` never produces
    them (a user who types "<|user|>" gets the letters, not the marker), so
    BPE can neither split them nor forge them. The prompt ends with the
    assistant marker; the model's job is everything after it.
    """

    def __init__(self, base):
        if base.end_of_text_id is None:
            raise ValueError("a chat template needs a tokenizer with an end-of-text id")
        self.base = base
        self.end_of_text_id = base.end_of_text_id
        self.user_id = base.vocab_size
        self.assistant_id = base.vocab_size + 1

    @property
    def vocab_size(self) -> int:
        return self.base.vocab_size + 2

    def encode(self, text: str) -> list[int]:
        return self.base.encode(text)

    def decode(self, ids: list[int]) -> str:
        names = {self.user_id: USER, self.assistant_id: ASSISTANT}
        out, run = [], []
        for token_id in ids:
            if token_id in names:
                out.append(self.base.decode(run) + names[token_id])
                run = []
            else:
                run.append(token_id)
        return "".join(out) + self.base.decode(run)

    def prompt(self, question: str) -> list[int]:
        """What the model reads before answering: end-of-text, user marker, question, assistant marker."""
        return [self.end_of_text_id, self.user_id, *self.encode(question), self.assistant_id]

    def example(self, question: str, answer: str) -> tuple[list[int], int]:
        """``(ids, n_prompt)``: the whole turn, and how many of its ids are the prompt."""
        prompt = self.prompt(question)
        return prompt + self.encode(answer) + [self.end_of_text_id], len(prompt)


def grow_vocabulary(model: nn.Module, n_new: int) -> nn.Module:
    """A copy of ``model`` whose vocabulary has ``n_new`` more ids at the end.

    Every weight is copied; the token table (and the tied output layer with
    it) gets ``n_new`` rows set to the mean of the existing rows: a new token
    starts as an average token, neither favoured nor ruled out, and
    fine-tuning gives it its meaning.
    """
    from dataclasses import replace

    from tinyllm.model import make_model

    config = replace(model.config, vocab_size=model.config.vocab_size + n_new)
    grown = make_model(config).to(next(model.parameters()).device)
    old = model.state_dict()
    new = grown.state_dict()
    with torch.no_grad():
        for name, value in new.items():
            if value.shape == old[name].shape:
                value.copy_(old[name])
            else:  # a table with one row (or entry) per token id
                value[: old[name].shape[0]] = old[name]
                value[old[name].shape[0]:] = old[name].mean(dim=0)
    return grown.train(model.training)


# --------------------------------------------------------------------------- data

# Twelve facts the corpus does not hold (chapter 12 teaches them with LoRA): questions and answers
# about this chapter's own subject, in the corpus's style and vocabulary.
NEW_FACTS = [
    ("What does the finetune command do?", "It teaches a trained model to answer in the chat template."),
    ("What is a role marker?", "A special token that says who speaks next."),
    ("What is LoRA?", "A trainable low-rank update added to a frozen layer."),
    ("What does DPO learn from?", "Pairs of answers where one is preferred."),
    ("What is a reference model?", "The frozen copy that the policy is compared with."),
    ("What is a loss mask?", "A choice of the positions whose predictions are scored."),
    ("What is supervised fine-tuning?", "Training on answers written for the prompts."),
    ("What is a preference pair?", "Two answers to one prompt, one chosen and one rejected."),
    ("What does merging LoRA do?", "It adds the low-rank update into the frozen weight."),
    ("What is an implicit reward?", "How much more likely the policy makes an answer than the reference does."),
    ("What is RLHF?", "Reinforcement learning from human feedback with a reward model."),
    ("What is a chat template?", "The layout of roles and turns that the model reads."),
]


def parse_qa(text: str) -> list[tuple[str, str]]:
    """``(question, answer)`` pairs from documents ``Q: ...`` / ``A: ...`` separated by blank lines.

    The corpus's own format (``data/corpus.txt``). A document that is not one
    question line and one answer raises ``ValueError`` naming it.
    """
    from tinyllm.data import split_documents

    pairs = []
    for number, doc in enumerate(split_documents(text), start=1):
        lines = doc.split("\n")
        if len(lines) != 2 or not lines[0].startswith("Q: ") or not lines[1].startswith("A: "):
            raise ValueError(f"document {number} is not a 'Q: ...' line followed by an 'A: ...' line: "
                             f"{doc[:60]!r}")
        question, answer = lines[0][3:].strip(), lines[1][3:].strip()
        if not question or not answer:
            raise ValueError(f"document {number} has an empty question or answer: {doc[:60]!r}")
        pairs.append((question, answer))
    if not pairs:
        raise ValueError("no questions and answers found")
    return pairs


def sft_batch(examples: list[tuple[list[int], int]], pad_id: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Inputs, targets and two masks for ``(ids, n_prompt)`` examples, padded to the longest.

    Returns ``x, y`` (B, L) and ``answer_mask, all_mask`` (B, L) bool: target
    ``y[b, t]`` belongs to the answer (the ids after the prompt, end-of-text
    included) or to anything but padding. Padding targets are -1.
    """
    L = max(len(ids) for ids, _ in examples) - 1
    B = len(examples)
    x = torch.full((B, L), pad_id, dtype=torch.long)
    y = torch.full((B, L), -1, dtype=torch.long)
    answer = torch.zeros(B, L, dtype=torch.bool)
    every = torch.zeros(B, L, dtype=torch.bool)
    for row, (ids, n_prompt) in enumerate(examples):
        n = len(ids) - 1
        x[row, :n] = torch.tensor(ids[:-1])
        y[row, :n] = torch.tensor(ids[1:])
        every[row, :n] = True
        answer[row, n_prompt - 1 : n] = True  # target t is ids[t + 1]: the answer starts at ids[n_prompt]
    return x, y, answer, every


def preference_pairs(pairs: list[tuple[str, str]], tokenizer: ChatTokenizer, context_length: int,
                     seed: int = 0) -> list[tuple[tuple[list[int], int], tuple[list[int], int]]]:
    """A preference set: the answer to the question asked over the answer to another question.

    For each question, *chosen* is the corpus's answer to it and *rejected*
    the corpus's answer to another question drawn at random: a fluent answer
    that is off the question's topic. Returns ``(chosen, rejected)`` examples,
    each ``(ids, n_prompt)`` with the same prompt; pairs that do not fit in
    ``context_length + 1`` ids are left out.
    """
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, (question, answer) in enumerate(pairs):
        j = (i + 1 + int(torch.randint(len(pairs) - 1, (1,), generator=g))) % len(pairs)
        chosen = tokenizer.example(question, answer)
        rejected = tokenizer.example(question, pairs[j][1])
        if max(len(chosen[0]), len(rejected[0])) <= context_length + 1:
            out.append((chosen, rejected))
    return out


# --------------------------------------------------------------------------- LoRA on a model


def apply_lora(model: nn.Module, rank: int, alpha: float, targets: tuple[str, ...] = LORA_TARGETS) -> list[str]:
    """Freeze ``model`` and wrap its blocks' linear layers named in ``targets`` in :class:`LoRALinear`.

    Returns the names of the wrapped layers. Only the LoRA matrices remain trainable.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in targets and type(child) is nn.Linear:
                setattr(module, child_name, LoRALinear(child, rank, alpha))
                wrapped.append(f"{name}.{child_name}" if name else child_name)
    return wrapped


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every :class:`LoRALinear` of ``model`` by its merged ``nn.Linear`` (in place); return it."""
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, LoRALinear):
                setattr(module, child_name, child.merged())
    return model


# --------------------------------------------------------------------------- training and asking


@dataclass
class FineTuneConfig:
    """How to fine-tune: short runs on few examples, so no schedule and no dropout."""

    steps: int = 150  # optimiser updates
    batch_size: int = 32  # examples per update, drawn with replacement
    lr: float = 1e-3  # constant; AdamW without weight decay (the pretrained weights are the prior)
    masked: bool = True  # loss on the answer only (False: on every token, the question included)
    lora_rank: int = 0  # 0: full fine-tuning; r >= 1: LoRA of rank r on the blocks' linear layers
    lora_alpha: float = 16.0
    grad_clip: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        if self.steps < 1 or self.batch_size < 1:
            problems.append("steps and batch_size must be at least 1")
        if self.lr <= 0 or self.grad_clip <= 0:
            problems.append("lr and grad_clip must be positive")
        if self.lora_rank < 0:
            problems.append(f"lora_rank must be 0 (full fine-tuning) or more, got {self.lora_rank}")
        if problems:
            raise ValueError("; ".join(problems))


class FineTuner:
    """Supervised fine-tuning of a (grown) model on ``(ids, n_prompt)`` examples; resumable exactly.

    Dropout stays off (the model is in eval mode throughout), so a step
    depends only on the weights, the optimiser state and the batch, which a
    seeded private generator draws: ``state``/``from_state`` continue a run
    bit for bit.
    """

    def __init__(self, model: nn.Module, examples: list[tuple[list[int], int]], pad_id: int,
                 config: FineTuneConfig | None = None):
        self.config = config or FineTuneConfig()
        self.model = model.eval()
        T = model.config.context_length
        # A turn longer than the window is cut to T + 1 ids (the model reads T and predicts T);
        # a turn whose prompt alone fills the window has nothing to learn from and is left out.
        self.examples = [(ids[: T + 1], n_prompt) for ids, n_prompt in examples if n_prompt < T + 1]
        if not self.examples:
            raise ValueError(f"no example has an answer inside the context window of {T} tokens")
        self.pad_id = pad_id
        if self.config.lora_rank:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.config.seed)
                apply_lora(self.model, self.config.lora_rank, self.config.lora_alpha)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=self.config.lr, betas=(0.9, 0.95), weight_decay=0.0)
        self.generator = torch.Generator().manual_seed(self.config.seed)
        self.step = 0
        self.losses: list[float] = []

    def train_step(self) -> float:
        cfg = self.config
        picks = torch.randint(len(self.examples), (cfg.batch_size,), generator=self.generator).tolist()
        x, y, answer, every = sft_batch([self.examples[i] for i in picks], self.pad_id)
        device = next(self.model.parameters()).device
        logits, _ = self.model(x.to(device))
        loss = sft_loss(logits, y.to(device), (answer if cfg.masked else every).to(device))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], cfg.grad_clip)
        self.optimizer.step()
        self.step += 1
        self.losses.append(loss.item())
        return self.losses[-1]

    def train(self, until: int | None = None, callback=None) -> list[float]:
        """Train up to ``config.steps`` (or step ``until``); ``callback(step, loss)`` returning True stops."""
        stop_at = self.config.steps if until is None else min(until, self.config.steps)
        while self.step < stop_at:
            loss = self.train_step()
            if callback is not None and callback(self.step, loss):
                break
        return self.losses

    def state(self) -> dict:
        return {"config": asdict(self.config), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "step": self.step, "losses": list(self.losses)}

    def load_state(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        self.step = int(state["step"])
        self.losses = [float(v) for v in state["losses"]]


@torch.no_grad()
def greedy_answers(model: nn.Module, tokenizer: ChatTokenizer, questions: list[str],
                   max_new_tokens: int | None = None) -> list[list[int]]:
    """The ids the model writes after each question's prompt, greedily, up to and including end-of-text.

    Prompts of the same length run as one batch; a row stops at its first
    end-of-text or when the sequence fills the context window (or after
    ``max_new_tokens``).
    """
    was_training = model.training
    model.eval()
    T = model.config.context_length
    eot = tokenizer.end_of_text_id
    prompts = [tokenizer.prompt(q) for q in questions]
    out: list[list[int]] = [[] for _ in questions]
    groups: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(len(p), []).append(i)
    device = next(model.parameters()).device
    for length, rows in groups.items():
        idx = torch.tensor([prompts[i] for i in rows], device=device)
        limit = min(T, length + (max_new_tokens if max_new_tokens is not None else T))
        idx = generate_until(model, idx, eot, limit, temperature=0.0)  # with the KV cache of chapter 11
        for i, ids in zip(rows, idx[:, length:].tolist()):
            out[i] = ids[: ids.index(eot) + 1] if eot in ids else ids
    model.train(was_training)
    return out


@dataclass
class AnswerScore:
    """How a model answers a list of questions: exactly, and whether it stops right after the answer."""

    exact: float  # share answered token for token, end-of-text included
    stops: float  # share that write end-of-text right after an answer of the expected length
    ends: float  # share that write end-of-text at all (before the window is full)
    answers: list[str] = field(default_factory=list)


def score_answers(model: nn.Module, tokenizer: ChatTokenizer, pairs: list[tuple[str, str]]) -> AnswerScore:
    """Ask every question greedily and compare with the expected answers."""
    written = greedy_answers(model, tokenizer, [q for q, _ in pairs])
    eot = tokenizer.end_of_text_id
    exact = stops = ends = 0
    texts = []
    for ids, (_, answer) in zip(written, pairs):
        expected = tokenizer.encode(answer) + [eot]
        exact += ids == expected
        ends += bool(ids) and ids[-1] == eot
        stops += len(ids) == len(expected) and ids[-1] == eot
        texts.append(tokenizer.decode([t for t in ids if t != eot]))
    n = len(pairs)
    return AnswerScore(exact / n, stops / n, ends / n, texts)


def batch_logprobs(model: nn.Module, examples: list[tuple[list[int], int]], pad_id: int) -> Tensor:
    """log p(answer | prompt) of each ``(ids, n_prompt)`` example under ``model``, (N,)."""
    x, y, answer, _ = sft_batch(examples, pad_id)
    device = next(model.parameters()).device
    logits, _ = model(x.to(device))
    return sequence_logprob(logits, y.to(device), answer.to(device))


def train_dpo(policy: nn.Module, reference: nn.Module, pairs, pad_id: int, steps: int, batch_size: int = 16,
              lr: float = 1e-4, beta: float = 0.1, seed: int = 0) -> list[float]:
    """DPO on ``(chosen, rejected)`` example pairs; ``reference`` stays frozen. Returns the losses."""
    with torch.no_grad():
        ref_c = batch_logprobs(reference.eval(), [c for c, _ in pairs], pad_id)
        ref_r = batch_logprobs(reference, [r for _, r in pairs], pad_id)
    policy.eval()  # no dropout: the same function as the reference before the first step
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        picks = torch.randint(len(pairs), (batch_size,), generator=g)
        pol_c = batch_logprobs(policy, [pairs[i][0] for i in picks.tolist()], pad_id)
        pol_r = batch_logprobs(policy, [pairs[i][1] for i in picks.tolist()], pad_id)
        loss = dpo_loss(pol_c, pol_r, ref_c[picks], ref_r[picks], beta)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
    return losses


# --------------------------------------------------------------------------- fine-tuning checkpoints


def save_finetune(path: str | Path, tuner: FineTuner, base_config: dict, merges, meta: dict | None = None) -> Path:
    """Write a fine-tuning checkpoint atomically (temporary file, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FINETUNE_FORMAT, "version": 1, "base_config": dict(base_config),
               "merges": [list(m) for m in merges], "meta": {str(k): str(v) for k, v in (meta or {}).items()},
               **tuner.state()}
    return save_atomically(path, payload)


def load_finetune(path: str | Path) -> dict:
    """Read a fine-tuning checkpoint; anything else is a ValueError that says what the file is."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fine-tuning checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file means "not ours"
        raise ValueError(f"{path} is not a readable checkpoint ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FINETUNE_FORMAT:
        kind = payload.get("format") if isinstance(payload, dict) else None
        raise ValueError(f"{path} is not a fine-tuning checkpoint"
                         + (f" (it is a {kind!r} checkpoint)" if kind else ""))
    return payload
