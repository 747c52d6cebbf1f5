"""Helpers used by the book's chapters, that also work outside the book build.

In the build, MyST-NB's ``glue`` stores a value so that the prose can quote it
(``{glue:text}`ppl:.2f```); in Colab or a plain Jupyter session myst_nb may be
missing, and then gluing simply does nothing.
"""

from __future__ import annotations

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


def _cache_key(model_config, train_config, corpus: str) -> str:
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
    digest.update(json.dumps(payload, sort_keys=True).encode())
    package = Path(tinyllm.__file__).resolve().parent
    for name in ("attention", "bpe", "data", "embedding", "layers", "model", "softmax", "train"):
        digest.update((package / f"{name}.py").read_bytes())
    return digest.hexdigest()[:16]


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
    from tinyllm.data import read_corpus, training_data
    from tinyllm.model import GPTConfig
    from tinyllm.train import Trainer, TrainConfig, build_model, load_checkpoint

    model_config = model_config or GPTConfig()
    train_config = train_config or TrainConfig()
    corpus = read_corpus()
    path = cache_dir() / f"tiny_gpt_{_cache_key(model_config, train_config, corpus)}.pt"
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
    )
    history = trainer.train(callback=callback)
    trainer.save(path)  # the model now holds the weights the run keeps (TrainConfig.keep)
    return trainer.model.eval(), tokenizer, history
