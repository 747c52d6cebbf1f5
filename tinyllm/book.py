"""Helpers used by the book's chapters, that also work outside the book build.

In the build, MyST-NB's ``glue`` stores a value so that the prose can quote it
(``{glue:text}`ppl:.2f```); in Colab or a plain Jupyter session myst_nb may be
missing, and then gluing simply does nothing.
"""

from __future__ import annotations

import functools
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any


def glue(name: str, value: Any, display: bool = False) -> Any:
    """Store ``value`` under ``name`` for the prose to quote; return the value."""
    try:
        from myst_nb import glue as _myst_glue
    except ImportError:  # Colab: no book build, nothing to quote into.
        return value
    _myst_glue(name, value, display=display)
    return value


def quote_tokens(tokens) -> str:
    """Printable tokens as one phrase of prose: ``“␣t”, “e␣” and “in”``.

    The quotes keep a token such as "in" from reading as a word of the sentence
    when the phrase is glued into the prose as plain text.
    """
    quoted = [f"\u201c{token}\u201d" for token in tokens]
    if len(quoted) < 2:
        return "".join(quoted)
    return ", ".join(quoted[:-1]) + " and " + quoted[-1]


def setup_plots() -> None:
    """One look for every figure in the book: readable sizes, no clutter."""
    import matplotlib.pyplot as plt

    plt.rcParams.update(
        {
            "figure.figsize": (6.4, 3.6),
            "figure.dpi": 110,
            "axes.spines.top": False,
            "axes.spines.right": False,
            "axes.grid": True,
            "grid.alpha": 0.3,
            "font.size": 10,
        }
    )


# --------------------------------------------------------------------------- chapters 8 and 9

def attention_maps(model, idx):
    """Each block's attention weights for ids ``idx`` (B, T): a list of (B, n_heads, T, T) tensors.

    ``MultiHeadAttention`` returns only its output, so a forward hook on each
    block's ``attn`` recomputes the weights from the input it received, with
    the module's own ``q_proj``/``k_proj`` and the library's attention
    function: the same numbers, without changing the module.
    """
    import torch

    from tinyllm.attention import scaled_dot_product_attention

    maps = []

    def hook(module, inputs, output):
        x = inputs[0]  # (B, T, d_model), already layer-normed by the block
        q = module.split_heads(module.q_proj(x))  # (B, n_heads, T, d_k)
        k = module.split_heads(module.k_proj(x))
        _, weights = scaled_dot_product_attention(q, k, k, causal=module.causal)
        maps.append(weights.detach())  # (B, n_heads, T, T)

    handles = [block.attn.register_forward_hook(hook) for block in model.blocks]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(idx)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return maps


@contextmanager
def _training_lock(path):
    """Hold an exclusive lock on ``path``'s entry while it is checked and, if missing, trained.

    Chapters executed in parallel may ask for the same model at once: the
    second waits for the first's training, then loads its result instead of
    training it again. (POSIX only; elsewhere nothing is locked.)
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # Windows: chapters run one at a time there
        yield
        return
    with open(path.with_name(path.name + ".lock"), "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cache_dir():
    """Where trained models are cached: $TINYLLM_CACHE, else the repo's _build/models, else ~/.cache/tinyllm.

    Under ``_build`` the cache goes away with the book (``make clean-book``), so
    a cold build really trains.
    """
    import os
    from pathlib import Path

    if os.environ.get("TINYLLM_CACHE"):
        return Path(os.environ["TINYLLM_CACHE"])
    build = Path(__file__).resolve().parent.parent / "_build"
    if build.is_dir():
        return build / "models"
    return Path.home() / ".cache" / "tinyllm"


def _cache_key(model_config, train_config, corpus: str, kind: str | None = None) -> str:
    """A hash of everything the trained weights depend on: configs, corpus and the library's source.

    The tokenizer is not hashed itself: it is a deterministic function of the
    corpus, the split and the vocabulary size, whose code is hashed. ``kind``:
    a Part III model ("encoder", "seq2seq"), whose weights also depend on
    tinyllm.encoder and on this module's training code for it.
    """
    import hashlib
    import json
    from pathlib import Path

    import tinyllm

    digest = hashlib.sha256()
    payload = {
        "model": model_config.to_dict(),
        "train": train_config.to_dict(),
        "corpus": hashlib.sha256(corpus.encode("utf-8")).hexdigest(),
        "version": tinyllm.__version__,
    }
    if kind is not None:  # None keeps the keys of chapter 8's models
        payload["kind"] = kind
    digest.update(json.dumps(payload, sort_keys=True).encode())
    package = Path(tinyllm.__file__).resolve().parent
    for name in training_modules(extra=("encoder", "book") if kind is not None else ()):
        digest.update((package / f"{name}.py").read_bytes())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def _tinyllm_imports(source: str) -> frozenset[str]:
    """The tinyllm modules that ``source``'s import statements name (parsed once per distinct source)."""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:  # a cell of shell or magic commands: no imports to follow
        return frozenset()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tinyllm":
            parts = node.module.split(".")
            names.add(parts[1] if len(parts) > 1 else "__init__")
            if len(parts) == 1:  # from tinyllm import book
                names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("tinyllm."))
    return frozenset(names)


def library_closure(sources: list[str], package=None) -> list[str]:
    """The tinyllm modules that some code imports, followed through the modules' own imports.

    Read from the import statements, so a new module (an optimiser, RoPE's
    positional module) joins a cache key without anyone listing it. Used for
    the trained models' keys here and for each chapter's key in the book build.
    ``package``: the folder to read the modules from (default: tinyllm's own).
    """
    from pathlib import Path

    import tinyllm

    package = Path(package or Path(tinyllm.__file__).resolve().parent)
    found, todo = set(), set().union(*map(_tinyllm_imports, sources))
    while todo:
        name = todo.pop()
        path = package / f"{name}.py"
        if name in found or not path.exists():
            continue
        found.add(name)
        todo |= _tinyllm_imports(path.read_text(encoding="utf-8")) - found
    return sorted(found | {"__init__"})


def training_modules(extra: tuple[str, ...] = ()) -> list[str]:
    """The tinyllm modules a trained model depends on: tinyllm.train, tinyllm.data and what they import."""
    return library_closure([f"import tinyllm.{name}" for name in ("train", "data", *extra)])


def trained_tiny_gpt(model_config=None, train_config=None, device="cpu", retrain=False, callback=None,
                     num_threads=1):
    """The book's tiny GPT, trained with the book's defaults: ``(model, tokenizer, history)``.

    Trains the BPE tokenizer on the train split (vocabulary = model_config.vocab_size)
    and the model on the train split, validated every ``eval_interval`` steps
    (with the default ``keep="last"`` it keeps the final weights; ``keep="best"``
    stops early and keeps the best), then caches the checkpoint under :func:`cache_dir`, keyed by a hash of the
    configs, the corpus and the library source. Later calls (chapter 9, a
    rebuilt chapter 8) load it, tokenizer merges included, instead of training
    again. ``history`` is the run's :class:`tinyllm.train.History`, saved with
    the weights.

    Training uses ``num_threads`` CPU threads (restored afterwards). One by
    default: the book's numbers are then the same on every machine (the order
    of floating-point sums can depend on the thread count), and a busy machine
    cannot slow it down the way it slows threads that wait for each other.
    """
    from tinyllm.data import read_corpus
    from tinyllm.model import GPTConfig
    from tinyllm.train import TrainConfig

    model_config = model_config or GPTConfig()
    train_config = train_config or TrainConfig()
    corpus = read_corpus()
    path = _tiny_gpt_path(model_config, train_config, corpus)
    with _training_lock(path):
        return _load_or_train(path, model_config, train_config, corpus, device, retrain, callback, num_threads)


def tiny_gpt_checkpoint(model_config=None, train_config=None):
    """The path of the checkpoint that :func:`trained_tiny_gpt` caches, trained first if it is missing.

    It is an ordinary ``tiny-llm train`` checkpoint: ``tiny-llm evaluate``,
    ``generate`` and ``ask`` read it.
    """
    from tinyllm.data import read_corpus
    from tinyllm.model import GPTConfig
    from tinyllm.train import TrainConfig

    model_config = model_config or GPTConfig()
    train_config = train_config or TrainConfig()
    trained_tiny_gpt(model_config, train_config)
    return _tiny_gpt_path(model_config, train_config, read_corpus())


def _tiny_gpt_path(model_config, train_config, corpus):
    return cache_dir() / f"tiny_gpt_{_cache_key(model_config, train_config, corpus)}.pt"


def _load_or_train(path, model_config, train_config, corpus, device, retrain, callback, num_threads):
    from tinyllm.data import training_data
    from tinyllm.train import Trainer, build_model, load_checkpoint

    if path.exists() and not retrain:
        try:
            ckpt = load_checkpoint(path)
            if ckpt.finished and ckpt.merges is not None:
                return ckpt.model(device), ckpt.tokenizer(), ckpt.history
        except ValueError:
            pass  # a damaged cache entry: train again and overwrite it
    tokenizer, data = training_data(corpus, model_config.vocab_size, model_config.context_length,
                                    train_config.samples)
    model = build_model(model_config, train_config.seed)
    trainer = Trainer(
        model,
        data["train"],
        data["val"],
        train_config,
        device=device,
        merges=tokenizer.merges,
        num_threads=num_threads,
        end_of_text=tokenizer.end_of_text_id is not None,
        split=tokenizer.split,
    )
    history = trainer.train(callback=callback)
    trainer.save(path)  # the model now holds the weights the run keeps (TrainConfig.keep)
    return trainer.model.eval(), tokenizer, history


# --------------------------------------------------------------------------- chapter 8 (the training loop)

def short_training_run(steps: int, warmup_steps: int, grad_clip: float, weight_decay: float, ramp: bool = True,
                       seed: int = 0) -> dict:
    """The book's model trained for ``steps`` steps by the training loop written out: losses, norms, result.

    The book's data, model and settings (``TrainConfig``'s rates, batch size
    and betas), with the schedule squeezed into ``steps`` steps. ``ramp=False``
    leaves out the warm-up's ramp and nothing else: the first
    ``warmup_steps`` steps run at the peak rate, and the cosine after them is
    the same. ``seed`` sets the weights, the batches and the dropout masks, so
    the runs of one seed are paired. Returns each step's batch loss and
    gradient norm (before clipping), the final validation loss and the norm of
    the decayed weight matrices. A run for :func:`compare_runs`.
    """
    import torch

    from tinyllm.data import read_corpus, training_data
    from tinyllm.model import GPTConfig
    from tinyllm.optim import AdamW, clip_grad_norm, cosine_lr
    from tinyllm.batches import DocumentSampler, sequence_loss
    from tinyllm.evaluation import evaluate_documents
    from tinyllm.train import TrainConfig, build_model, param_groups

    config, defaults = GPTConfig(), TrainConfig()
    _, data = training_data(read_corpus(), config.vocab_size, config.context_length)
    net = build_model(config, seed)
    optimizer = AdamW(param_groups(net, weight_decay), lr=defaults.lr, betas=(0.9, 0.95))
    batches = DocumentSampler(data["train"], defaults.batch_size, seed)
    losses, norms = [], []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)  # dropout's masks, the same in every run of this seed
        net.train()
        for step in range(steps):
            at = step if ramp else max(step, warmup_steps)  # no ramp: the peak until the cosine starts
            lr = cosine_lr(at, warmup_steps, steps, defaults.lr, defaults.min_lr)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x, y = batches.next_batch()  # (B, L) each
            loss = sequence_loss(net(x)[0], y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            norms.append(clip_grad_norm(net.parameters(), grad_clip).item())  # the norm before clipping
            optimizer.step()
            losses.append(loss.item())
        val_loss = evaluate_documents(net, data["val"])
    decayed = param_groups(net, weight_decay)[0]["params"]  # the weight matrices
    weight_norm = torch.sqrt(sum(p.detach().pow(2).sum() for p in decayed)).item()
    return {"losses": losses, "norms": norms, "val_loss": val_loss, "weight_norm": weight_norm}


# --------------------------------------------------------------------------- chapter 10 (a modern block)

CHANGES = ("none", "rmsnorm", "swiglu", "rope", "nope")


def gpt2_with(change: str, model_config=None, seed: int = 0):
    """Chapter 8's TinyGPT with one part of the modern block swapped in, freshly initialised from ``seed``.

    ``"rmsnorm"``: every LayerNorm (the blocks' and the final one) becomes an
    RMSNorm. ``"swiglu"``: every GELU feed-forward network becomes a SwiGLU of
    width ``swiglu_hidden(d_model)``, at about the same parameter count.
    ``"rope"``: every attention becomes a GroupedQueryAttention with as many
    key/value heads as query heads (RoPE on queries and keys, no biases), and
    the position table is gone. ``"nope"``: the control for ``"rope"``, the
    position table gone and nothing in its place (no positions at all, as in
    Kazemnejad et al., 2023), attention unchanged. ``"none"``: the model as
    chapter 8 builds it.
    """
    import torch
    from torch import nn

    from tinyllm.attention import GroupedQueryAttention
    from tinyllm.layers import RMSNorm, SwiGLU, swiglu_hidden
    from tinyllm.model import GPTConfig, TinyGPT

    class NoPositionTable(nn.Module):
        """Adds nothing to the token vectors: with RoPE the positions are in the attention."""

        def forward(self, positions):
            return torch.zeros((), device=positions.device)

    if change not in CHANGES:
        raise ValueError(f"change must be one of {', '.join(CHANGES)}, got {change!r}")
    config = model_config or GPTConfig()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = TinyGPT(config)
        for block in model.blocks:
            if change == "rmsnorm":
                block.ln1, block.ln2 = RMSNorm(config.d_model), RMSNorm(config.d_model)
            elif change == "swiglu":
                block.ffn = SwiGLU(config.d_model, swiglu_hidden(config.d_model))
            elif change == "rope":
                block.attn = GroupedQueryAttention(config.d_model, config.n_heads, config.n_heads, config.rope_base)
        if change == "rmsnorm":
            model.ln_f = RMSNorm(config.d_model)
        if change in ("rope", "nope"):
            model.pos_emb = NoPositionTable()
        model.apply(TinyGPT._init_weights)  # the new parts get the same initialisation as the old ones
    return model


# --------------------------------------------------------------------------- seeded, paired comparisons

SEEDS = (0, 1, 2)  # a claim that compares training runs rests on at least three paired seeds


@dataclass
class Comparison:
    """What ``run`` returned for every variant and seed: ``results[name][i]`` is seed ``seeds[i]``'s.

    Runs with the same seed are *paired*: every variant draws the same batches
    (and the same dropout masks, and starts from the same weights where the
    variants share a model), so a per-seed difference between two variants
    measures the variant rather than the luck of one draw, and the spread of
    those differences over the seeds says how far to trust it.
    """

    seeds: tuple[int, ...]
    results: dict[str, list]

    def values(self, name: str, key) -> list[float]:
        """``key`` of each seed's result: a key of the result's dict, or a function of the result."""
        return [key(r) if callable(key) else r[key] for r in self.results[name]]

    def change(self, name: str, baseline: str, key) -> list[float]:
        """Per-seed paired differences, ``name`` minus ``baseline``."""
        return [a - b for a, b in zip(self.values(name, key), self.values(baseline, key))]


def spread(values) -> tuple[float, float, float]:
    """``(mean, lowest, highest)`` of a list of per-seed values."""
    values = list(values)
    return sum(values) / len(values), min(values), max(values)


def compare_runs(run, variants: dict[str, dict], seeds=SEEDS, processes: int = 2) -> Comparison:
    """``run(**variants[name], seed=s)`` for every variant and seed in ``seeds``, cached and in parallel.

    ``run`` is a module-level function of an importable module (so that other
    processes can find it) that derives everything random from ``seed`` and
    returns plain data (numbers, strings, lists and dicts of them). Each
    result is cached under :func:`cache_dir`, keyed by the function, its
    arguments, the seed, the corpus and the source of the tinyllm modules the
    function's module imports, so a rebuilt chapter reads it instead of
    training again. Runs that are not cached train ``processes`` at a time,
    each in a process of its own on one thread, which gives the results they
    give one by one (the same single-threaded arithmetic).
    """
    import importlib
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    module = importlib.import_module(run.__module__)
    if run.__module__ == "__main__" or getattr(module, run.__qualname__, None) is not run:
        raise ValueError(f"run must be a module-level function of an importable module, got {run!r}")
    seeds = tuple(seeds)
    tasks = [(run.__module__, run.__qualname__, variants[name], seed) for name in variants for seed in seeds]
    paths = [_run_path(*task) for task in tasks]
    todo = [task for task, path in zip(tasks, paths) if not path.exists()]
    if processes > 1 and len(todo) > 1:
        # spawn, not fork: a forked copy of a process whose torch threads already ran can hang.
        with ProcessPoolExecutor(min(processes, len(todo)), mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_cached_run, todo))
    outcomes = iter([_cached_run(task) for task in tasks])  # from the cache now, except for a damaged entry
    return Comparison(seeds, {name: [next(outcomes) for _ in seeds] for name in variants})


def _plain(value):
    """The arguments of a run as JSON for its cache key: configs as their fields, tuples as lists."""
    import dataclasses

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__class__": type(value).__name__, **_plain(dataclasses.asdict(value))}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a run's arguments must be plain data or dataclasses, got {type(value).__name__}")


def _run_path(module_name: str, qualname: str, kwargs: dict, seed: int):
    import hashlib
    import importlib
    import inspect
    import json
    from pathlib import Path

    import tinyllm
    from tinyllm.data import read_corpus

    payload = {"run": f"{module_name}.{qualname}", "kwargs": _plain(kwargs), "seed": seed,
               "corpus": hashlib.sha256(read_corpus().encode("utf-8")).hexdigest(), "version": tinyllm.__version__}
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode())
    source = inspect.getsource(importlib.import_module(module_name))
    package = Path(tinyllm.__file__).resolve().parent
    for name in sorted(set(library_closure([source])) | {module_name.split(".")[-1]}):
        if (package / f"{name}.py").exists():
            digest.update(name.encode() + b"\0" + (package / f"{name}.py").read_bytes())
    return cache_dir() / f"run_{qualname}_{digest.hexdigest()[:16]}.json"


def _cached_run(task: tuple):
    """One run of a comparison, read from the cache or run (on one thread) and cached."""
    import importlib
    import json

    from tinyllm.train import cpu_threads

    module_name, qualname, kwargs, seed = task
    path = _run_path(*task)
    with _training_lock(path):
        if path.exists():
            try:
                return json.loads(path.read_text(encoding="utf-8"))
            except ValueError:
                pass  # a damaged cache entry: run again and overwrite it
        with cpu_threads(1):
            result = getattr(importlib.import_module(module_name), qualname)(**kwargs, seed=seed)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(result), encoding="utf-8")
        tmp.replace(path)
    return json.loads(path.read_text(encoding="utf-8"))  # what a cached read gives: JSON's own types


def variant_history(model_config, train_config, change: str = "none", seed: int = 0) -> dict:
    """The history (as a dict) of one run of :func:`gpt2_with` ``(change, model_config)``, seed ``seed``.

    For ``change="none"`` the model is ``make_model(model_config)``, so an
    ``arch="llama"`` config trains the modern model. ``seed`` sets the
    initialisation, the batches and the dropout masks (``train_config.seed`` is
    replaced by it): runs of one seed are paired. A run for :func:`compare_runs`.
    """
    from dataclasses import replace

    from tinyllm.data import read_corpus, training_data
    from tinyllm.train import Trainer, build_model

    train_config = replace(train_config, seed=seed)
    tokenizer, data = training_data(read_corpus(), model_config.vocab_size, model_config.context_length,
                                    train_config.samples)
    model = build_model(model_config, seed) if change == "none" else gpt2_with(change, model_config, seed)
    trainer = Trainer(model, data["train"], data["val"], train_config, device="cpu", merges=tokenizer.merges,
                      end_of_text=tokenizer.end_of_text_id is not None, split=tokenizer.split)
    return trainer.train().to_dict()


# --------------------------------------------------------------------------- chapter 12 (post-training)

def sft_model(masked: bool = True, steps: int = 100, batch_size: int = 32, seed: int = 0):
    """``(model, chat)``: chapter 8's model, grown by the two role markers and fine-tuned (cached).

    Supervised fine-tuning on every training question in the chat template,
    with the loss on the answer only (``masked``) or on every token; ``seed``
    draws the batches. The weights are cached under :func:`cache_dir` like the
    comparisons' results, so a chapter and the runs it compares share them.
    """
    import torch

    from tinyllm.data import read_corpus, split_corpus
    from tinyllm.posttrain import ChatTokenizer, FineTuneConfig, FineTuner, grow_vocabulary, parse_qa
    from tinyllm.train import cpu_threads, save_atomically

    base, tokenizer, _ = trained_tiny_gpt()
    chat = ChatTokenizer(tokenizer)
    model = grow_vocabulary(base, 2)
    path = _run_path(__name__, "sft_model", dict(masked=masked, steps=steps, batch_size=batch_size),
                     seed).with_suffix(".pt")
    with _training_lock(path):
        if path.exists():
            try:
                model.load_state_dict(torch.load(path, weights_only=True))
                return model.eval(), chat
            except (RuntimeError, ValueError, OSError):
                pass  # a damaged cache entry: train again and overwrite it
        examples = [chat.example(q, a) for q, a in parse_qa(split_corpus(read_corpus()).train)]
        config = FineTuneConfig(steps=steps, batch_size=batch_size, masked=masked, seed=seed)
        with cpu_threads(1):
            FineTuner(model, examples, chat.end_of_text_id, config).train()
        save_atomically(path, model.state_dict())
    return model.eval(), chat


def sft_scores(masked: bool, steps: int, batch_size: int, seed: int = 0) -> dict:
    """How :func:`sft_model` answers the training and the validation questions. A run for :func:`compare_runs`."""
    from tinyllm.data import read_corpus, split_corpus
    from tinyllm.posttrain import parse_qa, score_answers

    model, chat = sft_model(masked, steps, batch_size, seed)
    splits = split_corpus(read_corpus())
    train, val = score_answers(model, chat, parse_qa(splits.train)), score_answers(model, chat, parse_qa(splits.val))
    return {"exact": train.exact, "stops": train.stops, "ends": train.ends, "val_exact": val.exact}


def new_facts_run(rank: int, lr: float, steps: int, alpha: float = 16.0, mix_old: bool = False,
                  batch_size: int = 12, seed: int = 0) -> dict:
    """Teach :data:`tinyllm.posttrain.NEW_FACTS` to the chapter's fine-tuned model; what it learns and keeps.

    ``rank`` 0 is full fine-tuning, ``rank`` r >= 1 LoRA of rank r and scale
    ``alpha``. With ``mix_old`` the training examples are the new facts, ten
    times each, mixed with every old training question (rehearsal). Learned:
    the share of new facts answered exactly; kept: the share of a third of the
    old training questions still answered exactly, and how their answers went
    wrong (a new fact's answer in place of the old one, or words that are not
    the corpus's). ``seed`` draws the batches and LoRA's initial ``A``.
    """
    from tinyllm.answers import real_word_share
    from tinyllm.data import read_corpus, split_corpus
    from tinyllm.posttrain import (NEW_FACTS, FineTuneConfig, FineTuner, parse_qa, score_answers,
                                   trainable_parameters)

    model, chat = sft_model()
    corpus = read_corpus()
    old = parse_qa(split_corpus(corpus).train)
    examples = [chat.example(q, a) for q, a in NEW_FACTS]
    if mix_old:
        examples = examples * 10 + [chat.example(q, a) for q, a in old]
    config = FineTuneConfig(steps=steps, batch_size=batch_size, lr=lr, lora_rank=rank, lora_alpha=alpha, seed=seed)
    tuner = FineTuner(model, examples, chat.end_of_text_id, config)
    tuner.train()
    learned = score_answers(tuner.model, chat, NEW_FACTS)
    kept = score_answers(tuner.model, chat, old[::3])
    new_answers = {a for _, a in NEW_FACTS}
    wrong = [text for text, (_, answer) in zip(kept.answers, old[::3]) if text != answer]
    return {"trainable": trainable_parameters(tuner.model), "learned": learned.exact, "kept": kept.exact,
            "wrong": len(wrong), "wrong_is_new_fact": sum(text in new_answers for text in wrong),
            "wrong_real_words": real_word_share(wrong, corpus) if any(w.strip() for w in wrong) else 1.0}


def dpo_run(steps: int, beta: float = 0.1, lr: float = 5e-5, batch_size: int = 32, seed: int = 0) -> dict:
    """DPO on the chapter's preference pairs from its fine-tuned model; margins, log-probability changes, answers.

    For the training pairs and the pairs built from the validation questions:
    the mean implicit reward margin, the share of pairs where it is positive,
    and how the policy changed the log-probability of the chosen and of the
    rejected answers (mean over pairs, in nats): DPO can raise the margin
    while both fall. ``seed`` draws the batches.
    """
    import copy

    import torch

    from tinyllm.data import read_corpus, split_corpus
    from tinyllm.posttrain import batch_logprobs, parse_qa, preference_pairs, score_answers, train_dpo

    reference, chat = sft_model()
    splits = split_corpus(read_corpus())
    T = reference.config.context_length
    pairs = {"train": preference_pairs(parse_qa(splits.train), chat, T),
             "held_out": preference_pairs(parse_qa(splits.val), chat, T)}
    policy = copy.deepcopy(reference)
    losses = train_dpo(policy, reference, pairs["train"], chat.end_of_text_id, steps=steps,
                       batch_size=batch_size, lr=lr, beta=beta, seed=seed)
    result = {"loss_first": losses[0], "loss_last": losses[-1],
              "exact": score_answers(policy, chat, parse_qa(splits.train)).exact}
    with torch.no_grad():
        for split, some in pairs.items():
            (pc, pr), (rc, rr) = [[batch_logprobs(m, [pair[k] for pair in some], chat.end_of_text_id)
                                   for k in (0, 1)] for m in (policy, reference)]
            margin = beta * ((pc - rc) - (pr - rr))
            result[split] = {"pairs": len(some), "margin": margin.mean().item(),
                             "positive": (margin > 0).float().mean().item(),
                             "chosen_change": (pc - rc).mean().item(), "rejected_change": (pr - rr).mean().item(),
                             "policy_prefers": (pc > pr).float().mean().item(),
                             "reference_prefers": (rc > rr).float().mean().item(),
                             "margins": margin.tolist()}
    return result


# --------------------------------------------------------------------------- Part III: encoders

PART3_KINDS = ("decoder", "encoder", "seq2seq")


def trained_part3(kind: str, model_config=None, train_config=None, num_threads: int = 1):
    """A Part III model trained with the library's loop, cached like :func:`trained_tiny_gpt`'s: ``(model, history, extra)``.

    ``kind``: "decoder", chapter 8's TinyGPT on the corpus's documents (through
    :func:`trained_tiny_gpt`); "encoder", a :class:`~tinyllm.encoder.TinyEncoder`
    of ``model_config``'s sizes trained as a masked language model on the same
    documents, its vocabulary grown by ``[MASK]`` and ``[PAD]``; "seq2seq", a
    :class:`~tinyllm.encoder.TinySeq2Seq` of about the decoder's size
    (:func:`~tinyllm.encoder.seq2seq_config`) trained on the same documents cut
    into question and answer. ``extra`` is an empty dict (room for what
    another kind records beside its history). The tokenizer is the one :func:`trained_tiny_gpt`
    trains for ``model_config.vocab_size``.
    """
    from tinyllm.data import read_corpus
    from tinyllm.model import GPTConfig
    from tinyllm.train import TrainConfig

    if kind not in PART3_KINDS:
        raise ValueError(f"kind must be one of {', '.join(PART3_KINDS)}, got {kind!r}")
    model_config = model_config or GPTConfig()
    train_config = train_config or TrainConfig()
    if kind == "decoder":
        model, _, history = trained_tiny_gpt(model_config, train_config, num_threads=num_threads)
        return model, history, {}
    corpus = read_corpus()
    path = cache_dir() / f"{kind}_{_cache_key(model_config, train_config, corpus, kind)}.pt"
    with _training_lock(path):
        return _load_or_train_part3(path, kind, model_config, train_config, corpus, num_threads)


def part3_data(model_config, corpus: str | None = None):
    """The corpus as the encoders read it: ``(tokenizer, special tokens, document sequences, (source, target) pairs)``.

    Sequences and pairs are dicts by split ("train", "val", "test"); the
    tokenizer is trained on the train split with ``model_config.vocab_size``
    ids, end-of-text included, as for chapter 8's model.
    """
    from tinyllm.data import read_corpus, split_corpus, split_documents, training_data
    from tinyllm.encoder import SpecialTokens, qa_pairs

    corpus = corpus if corpus is not None else read_corpus()
    tokenizer, sequences = training_data(corpus, model_config.vocab_size, model_config.context_length)
    splits = split_corpus(corpus)
    pairs = {name: qa_pairs(tokenizer, split_documents(getattr(splits, name)), model_config.context_length)
             for name in ("train", "val", "test")}
    return tokenizer, SpecialTokens.after(tokenizer), sequences, pairs


def _part3_model(kind, model_config, seed, tokens=None):
    """A freshly initialised Part III model (and the config it was built from), the same for the same seed."""
    import torch
    from dataclasses import replace

    from tinyllm.encoder import TinyEncoder, TinySeq2Seq, seq2seq_config

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "encoder":
            config = replace(model_config, vocab_size=tokens.vocab_size)
            return TinyEncoder(config, tokens.pad), config
        config = seq2seq_config(model_config, tokens.vocab_size)
        return TinySeq2Seq(config, tokens.pad), config


def _load_or_train_part3(path, kind, model_config, train_config, corpus, num_threads):
    import torch

    from tinyllm.train import History, Trainer, save_atomically

    _, tokens, sequences, pairs = part3_data(model_config, corpus)
    model, _ = _part3_model(kind, model_config, train_config.seed, tokens)
    if path.exists():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(saved["model"])
            return model.eval(), History.from_dict(saved["history"]), saved["extra"]
        except (RuntimeError, ValueError, KeyError, OSError):
            pass  # a damaged or foreign cache entry: train again and overwrite it
    extra = {}
    if kind == "encoder":
        from tinyllm.encoder import MaskedLMSampler, masked_lm_loss, masked_lm_score

        sampler = MaskedLMSampler(sequences["train"], train_config.batch_size, train_config.seed, tokens)
        data = (sequences["train"][: len(sequences["val"])], sequences["val"])
        trainer = Trainer(model, *data, train_config, device="cpu", num_threads=num_threads, sampler=sampler,
                          loss_fn=masked_lm_loss, scorer=lambda m, d: masked_lm_score(m, d, tokens))
    else:
        from tinyllm.encoder import PairSampler, pair_score

        sampler = PairSampler(pairs["train"], train_config.batch_size, train_config.seed, tokens)
        data = (pairs["train"][: len(pairs["val"])], pairs["val"])
        trainer = Trainer(model, *data, train_config, device="cpu", num_threads=num_threads, sampler=sampler,
                          scorer=lambda m, d: pair_score(m, d, tokens))
    history = trainer.train()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomically(path, {"model": model.state_dict(), "history": history.to_dict(), "extra": extra})
    return model.eval(), history, extra


def trained_part3_runs(runs: list[tuple], processes: int = 2) -> list[tuple]:
    """:func:`trained_part3` for each ``(kind, model_config, train_config)`` of runs, ``processes`` at a time.

    Each run trains on one thread in a process of its own (as
    :func:`compare_runs` does), which fills the cache; the models are then
    read from it here. Cached runs are read, not trained.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if processes > 1 and len(runs) > 1:
        # spawn, not fork: a forked copy of a process whose torch threads already ran can hang.
        with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_train_part3_only, runs))
    return [trained_part3(*run) for run in runs]


def _train_part3_only(run: tuple) -> None:
    trained_part3(*run)
