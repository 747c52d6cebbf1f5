"""Helpers used by the book's chapters, that also work outside the book build.

In the build, MyST-NB's ``glue`` stores a value so that the prose can quote it
(``{glue:text}`ppl:.2f```); in Colab or a plain Jupyter session myst_nb may be
missing, and then gluing simply does nothing.
"""

from __future__ import annotations

from contextlib import contextmanager
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


def _cache_key(model_config, train_config, corpus: str, change: str = "none") -> str:
    """A hash of everything the trained weights depend on: configs, corpus and the library's source.

    The tokenizer is not hashed itself: it is a deterministic function of the
    corpus, the split and the vocabulary size, whose code is hashed.
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
    if change != "none":  # chapter 11's one-change variants; "none" keeps the keys of existing caches
        payload["change"] = change
    digest.update(json.dumps(payload, sort_keys=True).encode())
    package = Path(tinyllm.__file__).resolve().parent
    for name in training_modules(extra=("book",) if change != "none" else ()):
        digest.update((package / f"{name}.py").read_bytes())
    return digest.hexdigest()[:16]


def library_closure(sources: list[str], package=None) -> list[str]:
    """The tinyllm modules that some code imports, followed through the modules' own imports.

    Read from the import statements, so a new module (an optimiser, RoPE's
    positional module) joins a cache key without anyone listing it. Used for
    the trained models' keys here and for each chapter's key in the book build.
    ``package``: the folder to read the modules from (default: tinyllm's own).
    """
    import ast
    from pathlib import Path

    import tinyllm

    package = Path(package or Path(tinyllm.__file__).resolve().parent)

    def imported(source: str) -> set[str]:
        try:
            tree = ast.parse(source)
        except SyntaxError:  # a cell of shell or magic commands: no imports to follow
            return set()
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "tinyllm":
                parts = node.module.split(".")
                names.add(parts[1] if len(parts) > 1 else "__init__")
                if len(parts) == 1:  # from tinyllm import book
                    names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.Import):
                names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("tinyllm."))
        return names

    found, todo = set(), set().union(*map(imported, sources))
    while todo:
        name = todo.pop()
        path = package / f"{name}.py"
        if name in found or not path.exists():
            continue
        found.add(name)
        todo |= imported(path.read_text(encoding="utf-8")) - found
    return sorted(found | {"__init__"})


def training_modules(extra: tuple[str, ...] = ()) -> list[str]:
    """The tinyllm modules a trained model depends on: tinyllm.train, tinyllm.data and what they import."""
    return library_closure([f"import tinyllm.{name}" for name in ("train", "data", *extra)])


def trained_tiny_gpt(model_config=None, train_config=None, device="cpu", retrain=False, callback=None,
                     num_threads=1):
    """The book's tiny GPT, trained with the book's defaults: ``(model, tokenizer, history)``.

    Trains the BPE tokenizer on the train split (vocabulary = model_config.vocab_size)
    and the model on the train split with validation-based early stopping,
    then caches the checkpoint under :func:`cache_dir`, keyed by a hash of the
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


# --------------------------------------------------------------------------- chapter 11 (a modern block)

CHANGES = ("none", "rmsnorm", "swiglu", "rope")


def gpt2_with(change: str, model_config=None, seed: int = 0):
    """Chapter 8's TinyGPT with one part of the modern block swapped in, freshly initialised from ``seed``.

    ``"rmsnorm"``: every LayerNorm (the blocks' and the final one) becomes an
    RMSNorm. ``"swiglu"``: every GELU feed-forward network becomes a SwiGLU of
    width ``swiglu_hidden(d_model)``, at about the same parameter count.
    ``"rope"``: every attention becomes a GroupedQueryAttention with as many
    key/value heads as query heads (RoPE on queries and keys, no biases), and
    the position table is gone. ``"none"``: the model as chapter 8 builds it.
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
        if change == "rope":
            model.pos_emb = NoPositionTable()
        model.apply(TinyGPT._init_weights)  # the new parts get the same initialisation as the old ones
    return model


def trained_variant(model_config=None, train_config=None, change: str = "none", num_threads: int = 1):
    """The validation history of one training run of :func:`gpt2_with` ``(change, model_config)``.

    For ``change="none"`` the model is ``make_model(model_config)``, so an
    ``arch="llama"`` config trains the modern model. Only the history is kept
    (cached under :func:`cache_dir` like :func:`trained_tiny_gpt`'s models):
    chapter 11 compares short runs by their loss.
    """
    from tinyllm.data import read_corpus
    from tinyllm.model import GPTConfig
    from tinyllm.train import TrainConfig

    model_config = model_config or GPTConfig()
    train_config = train_config or TrainConfig()
    corpus = read_corpus()
    path = cache_dir() / f"variant_{_cache_key(model_config, train_config, corpus, change)}.json"
    with _training_lock(path):
        return _load_or_train_variant(path, model_config, train_config, corpus, change, num_threads)


def _load_or_train_variant(path, model_config, train_config, corpus, change, num_threads):
    import json

    from tinyllm.data import training_data
    from tinyllm.train import History, Trainer, build_model

    if path.exists():
        try:
            return History.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError, KeyError):
            pass  # a damaged cache entry: train again and overwrite it
    tokenizer, data = training_data(corpus, model_config.vocab_size, model_config.context_length,
                                    train_config.samples)
    model = build_model(model_config, train_config.seed) if change == "none" else gpt2_with(
        change, model_config, train_config.seed)
    trainer = Trainer(model, data["train"], data["val"], train_config, device="cpu", merges=tokenizer.merges,
                      num_threads=num_threads, end_of_text=tokenizer.end_of_text_id is not None,
                      split=tokenizer.split)
    history = trainer.train()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(history.to_dict()), encoding="utf-8")
    return history


def trained_variants(runs: list[tuple], processes: int = 2) -> list:
    """:func:`trained_variant` for each ``(model_config, train_config, change)`` of runs, ``processes`` at a time.

    Each run trains on one thread in a process of its own, so two runs on two
    cores take the time of one, and give the histories they give one by one
    (the same single-threaded arithmetic). Cached runs are read, not trained.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    if processes <= 1 or len(runs) <= 1:
        return [trained_variant(*run) for run in runs]
    # spawn, not fork: a forked copy of a process whose torch threads already ran can hang.
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_trained_variant_args, runs))


def _trained_variant_args(run: tuple):
    return trained_variant(*run)


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
    :func:`trained_variants` does), which fills the cache; the models are then
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
