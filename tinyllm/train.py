"""Training a TinyGPT: the configuration, the learning-rate schedule, the loop and its checkpoints (chapter 8).

The samples it trains on are ``tinyllm.batches``; what it measures is ``tinyllm.evaluation``.

This is the one training implementation of the project: the book's chapter 8
calls it, and so does the ``tiny-llm`` command line. Everything that decides
the outcome of a run (the seed, the batch order, the dropout masks, the
optimiser state) is explicit state that a checkpoint saves, so a run resumed
from a checkpoint continues exactly as if it had never stopped.

Process-wide settings are left alone: dropout draws from a private generator
state that is swapped in around each training step (the global random
generator is untouched), and the number of CPU threads changes only inside
``Trainer.train`` when the caller asks for it, and is restored afterwards.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tinyllm.batches import IGNORE, BatchSampler, DocumentSampler, sequence_loss
from tinyllm.embedding import Embedding
from tinyllm.evaluation import evaluate, evaluate_documents
from tinyllm.layers import LayerNorm
from tinyllm.model import GPTConfig, TinyGPT, make_model
from tinyllm.optim import AdamW, clip_grad_norm, cosine_lr

CHECKPOINT_FORMAT = "tinyllm-checkpoint"
CHECKPOINT_VERSION = 1


class _Saved:
    """A dataclass that a checkpoint stores as a plain dict (fields it no longer has are ignored)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


SAMPLES = ("documents", "windows")  # the two ways to cut training samples, see TrainConfig.samples


@dataclass
class TrainConfig(_Saved):
    """How to train. One notion of length: ``max_steps`` optimiser updates of ``batch_size`` samples."""

    samples: str = "documents"  # "documents": each sample one document from position 0; "windows": any offset
    batch_size: int = 32  # samples per step: at most 32 x 64 = 2,048 predictions, an efficient step on a CPU
    lr: float = 6e-3  # peak rate; a model this small tolerates a large one (1.2e-2 trains much worse)
    min_lr: float = 6e-4  # the cosine ends at 10% of the peak, not 0: the last steps still learn
    warmup_steps: int = 50  # Adam's moment estimates are noisy at first; ramp up while they settle
    max_steps: int = 1200  # about 150 draws of each training document: enough to answer ~all of them
    # (measured: 1,200 steps answered every training question exactly; 600 steps, about half)
    weight_decay: float = 0.1  # decoupled (AdamW) decay on the weight matrices only, see param_groups
    grad_clip: float = 1.0  # clip the global gradient norm: one bad batch cannot throw the weights far
    eval_interval: int = 100  # steps between validations (one costs about 4 steps: val + a train slice)
    keep: str = "last"  # "last": train all max_steps, keep the final weights; "best": early stopping, see below
    patience: int = 5  # with keep="best": stop after this many evaluations without a new best validation loss
    seed: int = 0  # model initialisation, batch order and dropout all derive from it

    def __post_init__(self) -> None:
        problems = []
        if self.keep not in ("last", "best"):
            problems.append(f"keep must be 'last' or 'best', got {self.keep!r}")
        if self.samples not in SAMPLES:
            problems.append(f"samples must be one of {', '.join(SAMPLES)}, got {self.samples!r}")
        for name in ("batch_size", "max_steps", "eval_interval"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.patience < 0:
            problems.append("warmup_steps and patience must be non-negative")
        if not 0 < self.min_lr <= self.lr:
            problems.append(f"need 0 < min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}")
        if self.weight_decay < 0 or self.grad_clip <= 0:
            problems.append("weight_decay must be >= 0 and grad_clip > 0")
        if problems:
            raise ValueError("; ".join(problems))



def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def cpu_threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` intra-op CPU threads and restore the previous number after it.

    For matrices this small, extra threads gain little on an idle machine and
    can be many times slower on a busy one (each parallel region waits for
    every thread to be scheduled), so the caller may want fewer. ``None``
    changes nothing.
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- schedule


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate for optimiser step ``step`` (0-based): ``cosine_lr`` with the config's settings.

    Step 0 is the first update and uses ``lr / warmup_steps``; step
    ``warmup_steps - 1`` uses the full rate; the cosine reaches ``min_lr`` at
    ``max_steps`` (see :func:`tinyllm.optim.cosine_lr`).
    """
    return cosine_lr(step, config.warmup_steps, config.max_steps, config.lr, config.min_lr)


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: weight matrices decay, everything else does not.

    Decay pulls a weight towards zero to keep the function simple, which makes
    sense for the matrices that mix features. It makes no sense for biases and
    LayerNorm gains (shrinking a gain only fights the normalisation), and it
    hurts embeddings: a row only gets a gradient when its token is in the
    batch, but decay shrinks every row at every step, so rare tokens would
    drift to zero between their appearances. The tied output layer shares the
    token table, so it follows the embedding rule.
    """
    no_decay = set()
    for module in model.modules():
        if isinstance(module, (Embedding, nn.Embedding, LayerNorm, nn.LayerNorm)):
            no_decay.update(id(p) for p in module.parameters(recurse=False))
    decay, keep = [], []
    for p in model.parameters():  # distinct parameters: the tied table appears once
        (keep if id(p) in no_decay or p.dim() < 2 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": keep, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, config: TrainConfig) -> AdamW:
    # betas (0.9, 0.95) as in GPT-3: a shorter memory of squared gradients reacts
    # faster to the loss landscape changing, which helps short runs.
    return AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.95))


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor, lr: float, grad_clip: float,
    loss_fn: Callable[[Tensor, Tensor], Tensor] = sequence_loss,
) -> float:
    """One update on a batch x, y (B, T): forward, backward, clip, AdamW step. Returns the loss.

    ``loss_fn(logits, y)`` scores the batch: for a language model the mean
    over the targets that are not padding; the encoders of Part III bring their own.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    model.train()  # dropout on
    logits, _ = model(x)  # (B, T, V)
    loss = loss_fn(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    # Rescale the whole gradient if its norm exceeds grad_clip (Pascanu et al., 2013).
    clip_grad_norm(model.parameters(), grad_clip)
    optimizer.step()
    return loss.item()


def build_model(config: GPTConfig, seed: int) -> TinyGPT:
    """A freshly initialised model (config.arch picks TinyGPT or TinyLlama), the same for the same seed.

    The global RNG is left untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return make_model(config)


# --------------------------------------------------------------------------- the loop


@dataclass
class Progress:
    """What the loop reports to a callback, after each step and after each evaluation."""

    step: int  # optimiser steps done so far
    max_steps: int
    loss: float  # training loss of the last batch (with dropout)
    lr: float  # learning rate used for the last step
    tokens_per_s: float  # training throughput of the last step: tokens predicted (padding not counted)
    val_loss: float | None = None  # set on evaluations only
    is_eval: bool = False


@dataclass
class History(_Saved):
    """Curves and outcome of a run. Lists grow as the run goes; a checkpoint stores them."""

    step: list[int] = field(default_factory=list)  # 1, 2, ...: steps done
    loss: list[float] = field(default_factory=list)  # training loss of each step's batch
    lr: list[float] = field(default_factory=list)
    eval_step: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)  # mean loss over the whole validation split
    train_eval_loss: list[float] = field(default_factory=list)  # same measure, on a train slice
    best_step: int = 0
    best_val_loss: float = math.inf
    stopped_early: bool = False
    train_seconds: float = 0.0  # time spent in training steps (not evaluation)
    tokens_seen: int = 0  # tokens predicted and scored in training steps: padding is not counted
    positions_seen: int = 0  # positions the model computed, padding included (batch_size x padded length)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_seen / self.train_seconds if self.train_seconds else 0.0


class Trainer:
    """AdamW + warm-up/cosine + clipping, with periodic validation and, on request, early stopping.

    ``train()`` runs until ``max_steps`` (or ``until``). With ``keep="last"``
    (the default) it trains every step and the model holds the final weights.
    With ``keep="best"`` it also stops when the validation loss has not improved
    for ``patience`` evaluations (early stopping), and at the end the model
    holds the weights of the best evaluation. ``save``/``resume``
    make an interrupted run continue bit for bit.

    Another objective (Part III: a masked language model, an encoder-decoder,
    a synthetic task) brings its own ``sampler`` (``next_batch() -> (x, y)``
    and a seeded generator's ``state_dict``), ``loss_fn(logits, y)`` and
    ``scorer(model, data) -> float``; ``train_ids`` and ``val_ids`` are then
    whatever its scorer reads, and everything else (the optimiser, the
    schedule, clipping, dropout, evaluations, checkpoints) stays as it is.
    """

    def __init__(
        self,
        model: TinyGPT,
        train_ids: Tensor | list[int],
        val_ids: Tensor | list[int],
        config: TrainConfig | None = None,
        device: str | torch.device | None = None,
        merges: list[tuple[int, int]] | None = None,
        num_threads: int | None = None,
        end_of_text: bool = False,
        split: bool = False,
        sampler=None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] = sequence_loss,
        scorer: Callable[[nn.Module, Any], float] | None = None,
    ):
        if (sampler is None) != (scorer is None):
            raise ValueError("a sampler of another objective needs its scorer, and a scorer its sampler")
        self.config = config or TrainConfig()
        self.loss_fn = loss_fn
        self.scorer = scorer
        self.num_threads = num_threads  # CPU threads while train() runs; None: leave torch's setting
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device)
        self.merges = [tuple(m) for m in merges] if merges is not None else None
        self.end_of_text = end_of_text  # whether the tokenizer has the end-of-text id after its merges
        self.split = split  # whether the tokenizer pre-splits the text (tinyllm.bpe.pre_split)
        T = model.config.context_length
        if sampler is not None:  # another objective: its batches; the data its scorer reads
            self.sampler = sampler
            self.val_ids, self.train_eval_ids = val_ids, train_ids
        elif self.config.samples == "documents":  # train_ids, val_ids: lists of document sequences
            self.sampler = DocumentSampler(train_ids, self.config.batch_size, self.config.seed)
            self.val_ids = [list(seq) for seq in val_ids]
            n_val = sum(len(seq) - 1 for seq in self.val_ids)
            # The same measure as validation, on about as many training tokens: the honest train/val gap.
            self.train_eval_ids, n = [], 0
            for seq in train_ids:
                if n >= n_val:
                    break
                self.train_eval_ids.append(list(seq))
                n += len(seq) - 1
        else:  # train_ids, val_ids: token streams
            self.sampler = BatchSampler(train_ids, T, self.config.batch_size, self.config.seed)
            self.val_ids = torch.as_tensor(val_ids, dtype=torch.long)
            self.train_eval_ids = torch.as_tensor(train_ids, dtype=torch.long)[: max(len(self.val_ids), T + 1)]
        self.optimizer = make_optimizer(self.model, self.config)
        self.step = 0
        self.history = History()
        self.best_state: dict[str, Tensor] | None = None
        self.evals_since_best = 0
        self.finished = False
        self.meta: dict[str, str] = {}  # free-form strings saved with the run (e.g. the corpus's hash)
        # Dropout's private generator state (CPU, or the CUDA device's), seeded from the config.
        with torch.random.fork_rng(devices=self._rng_devices()):
            torch.manual_seed(self.config.seed + 1)
            self.dropout_rng = self._get_rng()

    # -- private RNG for dropout: swapped in around each step, global state untouched
    def _rng_devices(self) -> list[int]:
        return [self.device.index or 0] if self.device.type == "cuda" else []

    def _get_rng(self) -> Tensor:
        if self.device.type == "cuda":
            return torch.cuda.get_rng_state(self.device)
        return torch.get_rng_state()

    def _set_rng(self, state: Tensor) -> None:
        if self.device.type == "cuda":
            torch.cuda.set_rng_state(state, self.device)
        else:
            torch.set_rng_state(state)

    def train_step(self) -> tuple[float, float, int, int]:
        """One optimiser update with the run's own dropout generator.

        Returns (loss, lr, tokens, positions): the tokens the batch predicts and
        scores (padding excluded) and the positions the model computes (padding
        included): the same number for windows, not for padded documents.
        """
        lr = lr_at(self.step, self.config)
        x, y = self.sampler.next_batch()  # (B, T) each
        with torch.random.fork_rng(devices=self._rng_devices()):
            self._set_rng(self.dropout_rng)
            loss = train_step(self.model, self.optimizer, x.to(self.device), y.to(self.device),
                              lr, self.config.grad_clip, self.loss_fn)
            self.dropout_rng = self._get_rng()
        self.step += 1
        return loss, lr, int((y != IGNORE).sum()), y.numel()

    def score(self, data) -> float:
        """Mean loss on held-out data, read the way the model is trained (documents or a stream)."""
        if self.scorer is not None:
            return self.scorer(self.model, data)
        if self.config.samples == "documents":
            return evaluate_documents(self.model, data)
        return evaluate(self.model, data, self.model.config.context_length)

    def run_eval(self) -> float:
        val_loss = self.score(self.val_ids)
        h = self.history
        h.eval_step.append(self.step)
        h.val_loss.append(val_loss)
        h.train_eval_loss.append(self.score(self.train_eval_ids))
        if val_loss < h.best_val_loss:
            h.best_val_loss, h.best_step = val_loss, self.step
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.evals_since_best = 0
        else:
            self.evals_since_best += 1
        return val_loss

    def train(
        self,
        callback: Callable[[Progress], bool | None] | None = None,
        until: int | None = None,
    ) -> History:
        """Train to ``max_steps`` (or only up to step ``until``: an interruption, for resuming later).

        ``callback(progress)`` is called after every step and every evaluation;
        returning True stops the run there (the state stays consistent, so it
        can be saved and resumed). When the run is complete, with ``keep="best"``
        the model is given the best weights seen; with ``keep="last"`` it keeps its own.
        """
        stop_at = self.config.max_steps if until is None else min(until, self.config.max_steps)
        with cpu_threads(self.num_threads):
            return self._train(callback, stop_at)

    def _train(self, callback: Callable[[Progress], bool | None] | None, stop_at: int) -> History:
        cfg, h = self.config, self.history
        while self.step < stop_at and not self.finished:
            start = time.perf_counter()
            loss, lr, tokens, positions = self.train_step()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            seconds = time.perf_counter() - start
            h.step.append(self.step)
            h.loss.append(loss)
            h.lr.append(lr)
            h.train_seconds += seconds
            h.tokens_seen += tokens
            h.positions_seen += positions
            progress = Progress(self.step, cfg.max_steps, loss, lr, tokens / seconds)
            stop = callback is not None and bool(callback(progress))
            # A stop request still lets this step's evaluation happen, so that a
            # run stopped here and resumed later matches an uninterrupted one.
            if self.step % cfg.eval_interval == 0 or self.step == cfg.max_steps:
                val_loss = self.run_eval()
                if cfg.keep == "best" and self.evals_since_best >= cfg.patience:
                    h.stopped_early = True
                    self.finished = True
                if callback is not None and callback(replace(progress, val_loss=val_loss, is_eval=True)):
                    stop = True
            if stop:
                return h
        if self.step >= cfg.max_steps:
            self.finished = True
        if self.finished and cfg.keep == "best" and self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        return h

    # -- checkpoints
    def state(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly (see :func:`save_checkpoint`)."""
        return {
            "model_config": self.model.config.to_dict(),
            "train_config": self.config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "merges": self.merges,
            "end_of_text": self.end_of_text,
            "split": self.split,
            "step": self.step,
            "best_val_loss": self.history.best_val_loss,
            "best_model": self.best_state,
            "evals_since_best": self.evals_since_best,
            "finished": self.finished,
            "history": self.history.to_dict(),
            "meta": dict(self.meta),
            "rng": {
                "dropout": self.dropout_rng.cpu(),
                "dropout_device": torch.tensor(self.device.type == "cuda"),  # whose generator state it is
                "batches": self.sampler.state_dict()["generator"],
            },
        }

    def save(self, path: str | Path) -> None:
        save_checkpoint(path, **self.state())

    @classmethod
    def resume(
        cls,
        path: str | Path,
        train_ids: Tensor | list[int],
        val_ids: Tensor | list[int],
        device: str | torch.device | None = None,
        num_threads: int | None = None,
    ) -> "Trainer":
        """A trainer in exactly the state saved at ``path``, ready to continue ``train()``."""
        ckpt = load_checkpoint(path)
        model = build_model(ckpt.model_config, seed=0)  # overwritten by the saved weights
        trainer = cls(model, train_ids, val_ids, ckpt.train_config, device, ckpt.merges, num_threads,
                      end_of_text=ckpt.end_of_text, split=ckpt.split)
        try:
            trainer.model.load_state_dict(ckpt.model_state)
            trainer.optimizer.load_state_dict(ckpt.optimizer_state)
        except (RuntimeError, ValueError, KeyError) as err:
            raise ValueError(f"checkpoint {path} does not fit its own model config: {err}") from None
        trainer.step = ckpt.step
        trainer.history = ckpt.history
        trainer.best_state = ckpt.best_model_state
        trainer.evals_since_best = ckpt.evals_since_best
        trainer.finished = ckpt.finished
        trainer.meta = dict(ckpt.meta)
        # Dropout state is per device type; on another device type the run goes on
        # with a freshly seeded one (correct, but no longer bit-identical).
        saved_on_cuda = bool(ckpt.rng.get("dropout_device", torch.tensor(False)))
        if saved_on_cuda == (trainer.device.type == "cuda"):
            trainer.dropout_rng = ckpt.rng["dropout"]
        trainer.sampler.load_state_dict({"generator": ckpt.rng["batches"]})
        return trainer


# --------------------------------------------------------------------------- checkpoint files


@dataclass
class Checkpoint:
    """The contents of a checkpoint file, checked and typed."""

    model_config: GPTConfig
    train_config: TrainConfig
    model_state: dict[str, Tensor]
    optimizer_state: dict | None
    merges: list[tuple[int, int]] | None
    step: int
    best_val_loss: float
    best_model_state: dict[str, Tensor] | None
    evals_since_best: int
    finished: bool
    history: History
    rng: dict[str, Tensor]
    meta: dict[str, str] = field(default_factory=dict)
    end_of_text: bool = False  # the tokenizer has an end-of-text id after its merges
    split: bool = False  # the tokenizer pre-splits the text (checkpoints from before the pre-split do not)

    def model(self, device: str | torch.device = "cpu") -> TinyGPT:
        """The saved model (the weights the run kept, if it finished), in eval mode."""
        model = build_model(self.model_config, seed=0)
        model.load_state_dict(self.model_state)
        return model.to(device).eval()

    def tokenizer(self):
        """The run's BPE tokenizer (its merges, its pre-split if it had one, and the end-of-text id if it had one)."""
        from tinyllm.bpe import BPETokenizer

        if self.merges is None:
            raise ValueError("this checkpoint holds no tokenizer merges")
        return BPETokenizer(self.merges, end_of_text=self.end_of_text, split=self.split)


def save_checkpoint(
    path: str | Path,
    *,
    model_config: dict,
    train_config: dict,
    model: dict[str, Tensor],
    optimizer: dict | None = None,
    merges: list[tuple[int, int]] | None = None,
    end_of_text: bool = False,
    split: bool = False,
    step: int = 0,
    best_val_loss: float = math.inf,
    best_model: dict[str, Tensor] | None = None,
    evals_since_best: int = 0,
    finished: bool = False,
    history: dict | None = None,
    rng: dict[str, Tensor] | None = None,
    meta: dict[str, str] | None = None,
) -> Path:
    """Write a checkpoint atomically: a temporary file in the same folder, fsync, then rename.

    A crash at any moment leaves either the old file or the new one, never a
    half-written one, because ``os.replace`` within one file system is atomic.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "model_config": dict(model_config),
        "train_config": dict(train_config),
        "model": model,
        "optimizer": optimizer,
        "merges": [list(m) for m in merges] if merges is not None else None,
        "end_of_text": bool(end_of_text),
        "split": bool(split),
        "step": int(step),
        "best_val_loss": float(best_val_loss),
        "best_model": best_model,
        "evals_since_best": int(evals_since_best),
        "finished": bool(finished),
        "history": history if history is not None else History().to_dict(),
        "rng": rng or {},
        "meta": {str(k): str(v) for k, v in (meta or {}).items()},
    }
    return save_atomically(path, payload)


def save_atomically(path: Path, payload: dict) -> Path:
    """``torch.save`` to a temporary file in ``path``'s folder, fsync, then rename over ``path``."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"  # same file system
    try:
        with open(tmp, "xb") as f:  # a fresh file, with the usual permissions
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and check a checkpoint; anything unreadable or inconsistent is a ValueError naming the file.

    ``weights_only=True``: only tensors and plain containers are unpickled, so
    a checkpoint from elsewhere cannot run code on load.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, garbage bytes, foreign pickle: all mean "not ours"
        # torch's own message can run to many lines of advice; its first line says what failed.
        first_line = (str(err).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"{path} is not a readable tinyllm checkpoint ({type(err).__name__}: {first_line})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not a tinyllm checkpoint (no '{CHECKPOINT_FORMAT}' marker)")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(
            f"{path} has checkpoint version {payload.get('version')}, this tinyllm reads version {CHECKPOINT_VERSION}"
        )
    try:
        model_config = GPTConfig(**payload["model_config"])
        # Checkpoints from before document samples were trained on windows.
        train_config = TrainConfig.from_dict({"samples": "windows"} | payload["train_config"])
        merges = payload["merges"]
        ckpt = Checkpoint(
            model_config=model_config,
            train_config=train_config,
            model_state=payload["model"],
            optimizer_state=payload["optimizer"],
            merges=[tuple(int(x) for x in m) for m in merges] if merges is not None else None,
            step=int(payload["step"]),
            best_val_loss=float(payload["best_val_loss"]),
            best_model_state=payload["best_model"],
            evals_since_best=int(payload["evals_since_best"]),
            finished=bool(payload["finished"]),
            history=History.from_dict(payload["history"]),
            rng=payload["rng"],
            meta=dict(payload.get("meta", {})),
            end_of_text=bool(payload.get("end_of_text", False)),
            split=bool(payload.get("split", False)),
        )
        if merges is not None and 256 + len(ckpt.merges) + ckpt.end_of_text != model_config.vocab_size:
            raise ValueError(
                f"{len(ckpt.merges)} merges{' and end-of-text' if ckpt.end_of_text else ''} give a vocabulary of "
                f"{256 + len(ckpt.merges) + ckpt.end_of_text}, the model expects {model_config.vocab_size}"
            )
        build_model(model_config, seed=0).load_state_dict(ckpt.model_state)  # shapes must fit the config
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path} is an incompatible or damaged tinyllm checkpoint: {err}") from None
    return ckpt
