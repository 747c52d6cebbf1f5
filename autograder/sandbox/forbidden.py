"""Detecting a built-in a check forbids (F.softmax in a softmax exercise, ...).

Two complementary ways, both cheap:

* at run time, the forbidden functions are replaced by recording wrappers, so a
  call reached by any path (``F.softmax``, ``x.softmax``, ``nn.Softmax``, a
  helper calling them) is seen while the student's function runs;
* by reference: the code objects of the student's function (and of the
  notebook functions it calls) are searched for globals bound to a forbidden
  object, which catches ``from torch.nn.functional import softmax as sm``
  imported before the wrappers were installed.

In the sandbox the wrappers are installed before the submission's cells run;
in a notebook only while a check runs.
"""

from __future__ import annotations

import contextlib
import importlib
import threading
import types
from typing import Callable, Iterator

# key -> (module or class path, attribute)
BUILTINS: dict[str, tuple[str, str]] = {
    "F.softmax": ("torch.nn.functional", "softmax"),
    "torch.softmax": ("torch", "softmax"),
    "Tensor.softmax": ("torch.Tensor", "softmax"),
    "torch.special.softmax": ("torch.special", "softmax"),
    "F.log_softmax": ("torch.nn.functional", "log_softmax"),
    "torch.log_softmax": ("torch", "log_softmax"),
    "Tensor.log_softmax": ("torch.Tensor", "log_softmax"),
    "torch.special.log_softmax": ("torch.special", "log_softmax"),
    "F.cross_entropy": ("torch.nn.functional", "cross_entropy"),
    "F.embedding": ("torch.nn.functional", "embedding"),
    "torch.embedding": ("torch", "embedding"),
    "F.scaled_dot_product_attention": ("torch.nn.functional", "scaled_dot_product_attention"),
    "nn.MultiheadAttention": ("torch.nn.functional", "multi_head_attention_forward"),
    "F.layer_norm": ("torch.nn.functional", "layer_norm"),
    "torch.layer_norm": ("torch", "layer_norm"),
    "torch.native_layer_norm": ("torch", "native_layer_norm"),
    # The book's library is public: calling its answer is not implementing it.
    "tinyllm.softmax.softmax": ("tinyllm.softmax", "softmax"),
    "tinyllm.softmax.log_softmax": ("tinyllm.softmax", "log_softmax"),
    "tinyllm.softmax.cross_entropy": ("tinyllm.softmax", "cross_entropy"),
    "tinyllm.embedding.embedding_lookup": ("tinyllm.embedding", "embedding_lookup"),
    "tinyllm.positional.sinusoidal_positional_encoding": ("tinyllm.positional", "sinusoidal_positional_encoding"),
    "tinyllm.attention.scaled_dot_product_attention": ("tinyllm.attention", "scaled_dot_product_attention"),
    "tinyllm.layers.layer_norm": ("tinyllm.layers", "layer_norm"),
    "tinyllm.sampling.top_k_filter": ("tinyllm.sampling", "top_k_filter"),
    "tinyllm.sampling.top_p_filter": ("tinyllm.sampling", "top_p_filter"),
    "tinyllm.sampling.sample_next_token": ("tinyllm.sampling", "sample_next_token"),
    "tinyllm.sampling.generate": ("tinyllm.sampling", "generate"),
    "tinyllm.bpe.train_bpe": ("tinyllm.bpe", "train_bpe"),
    "tinyllm.bpe.train_bpe_fast": ("tinyllm.bpe", "train_bpe_fast"),
    "tinyllm.bpe.bpe_encode": ("tinyllm.bpe", "bpe_encode"),
    "tinyllm.bpe.bpe_decode": ("tinyllm.bpe", "bpe_decode"),
    "tinyllm.bpe.pair_counts": ("tinyllm.bpe", "pair_counts"),
    "tinyllm.bpe.merge_pair": ("tinyllm.bpe", "merge_pair"),
    "tinyllm.bpe.pre_split": ("tinyllm.bpe", "pre_split"),
    "tinyllm.bpe.split_pattern": ("tinyllm.bpe", "split_pattern"),
    "tinyllm.bpe.train_bpe_chunks": ("tinyllm.bpe", "train_bpe_chunks"),
    "tinyllm.bpe.bpe_encode_split": ("tinyllm.bpe", "bpe_encode_split"),
    "torch.logsumexp": ("torch", "logsumexp"),
    "Tensor.logsumexp": ("torch.Tensor", "logsumexp"),
    "tinyllm.softmax.logsumexp": ("tinyllm.softmax", "logsumexp"),
    # Part II (07_modern_block, 08_fast_generation).
    "F.rms_norm": ("torch.nn.functional", "rms_norm"),
    "torch.rms_norm": ("torch", "rms_norm"),
    "tinyllm.layers.rms_norm": ("tinyllm.layers", "rms_norm"),
    "tinyllm.positional.apply_rope": ("tinyllm.positional", "apply_rope"),
    "tinyllm.attention.causal_attention": ("tinyllm.attention", "causal_attention"),
    "tinyllm.sampling.generate_cached": ("tinyllm.sampling", "generate_cached"),
    "tinyllm.sampling.beam_search": ("tinyllm.sampling", "beam_search"),
    # 09_training: torch.optim.Adam and AdamW both step through torch.optim.adam.adam.
    "torch.optim.AdamW": ("torch.optim.adam", "adam"),
    "torch.optim.adamw.adamw": ("torch.optim.adamw", "adamw"),
    "torch.optim._functional.adam": ("torch.optim._functional", "adam"),
    "clip_grad_norm_": ("torch.nn.utils", "clip_grad_norm_"),
    "torch.nn.utils.clip_grad.clip_grad_norm_": ("torch.nn.utils.clip_grad", "clip_grad_norm_"),
    "torch.nn.utils.get_total_norm": ("torch.nn.utils", "get_total_norm"),
    "torch.nn.utils.clip_grad.get_total_norm": ("torch.nn.utils.clip_grad", "get_total_norm"),
    "torch.nn.utils.clip_grads_with_norm_": ("torch.nn.utils", "clip_grads_with_norm_"),
    "torch.nn.utils.clip_grad.clip_grads_with_norm_": ("torch.nn.utils.clip_grad", "clip_grads_with_norm_"),
    "tinyllm.optim.AdamW": ("tinyllm.optim.AdamW", "step"),
    "tinyllm.optim.cosine_lr": ("tinyllm.optim", "cosine_lr"),
    "tinyllm.train.lr_at": ("tinyllm.train", "lr_at"),
    "tinyllm.optim.clip_grad_norm": ("tinyllm.optim", "clip_grad_norm"),
    # 10_post_training.
    "tinyllm.posttrain.sft_loss": ("tinyllm.posttrain", "sft_loss"),
    "tinyllm.posttrain.sequence_logprob": ("tinyllm.posttrain", "sequence_logprob"),
    "tinyllm.posttrain.dpo_loss": ("tinyllm.posttrain", "dpo_loss"),
    "tinyllm.posttrain.LoRALinear": ("tinyllm.posttrain.LoRALinear", "forward"),
    # 11_inference.
    "tinyllm.quantize.quantize_int8": ("tinyllm.quantize", "quantize_int8"),
    "tinyllm.quantize.dequantize": ("tinyllm.quantize", "dequantize"),
    "tinyllm.quantize.quantize_int4": ("tinyllm.quantize", "quantize_int4"),
    "tinyllm.quantize.dequantize_int4": ("tinyllm.quantize", "dequantize_int4"),
    "tinyllm.quantize.quantize_weight": ("tinyllm.quantize", "quantize_weight"),
    "tinyllm.quantize.dequantize_weight": ("tinyllm.quantize", "dequantize_weight"),
    "tinyllm.speculative.speculative_accept": ("tinyllm.speculative", "speculative_accept"),
    "tinyllm.speculative.speculative_generate": ("tinyllm.speculative", "speculative_generate"),
    # 12_encoders.
    "tinyllm.attention.bidirectional_attention": ("tinyllm.attention", "bidirectional_attention"),
    "tinyllm.attention.CrossAttention": ("tinyllm.attention.CrossAttention", "forward"),
    "tinyllm.encoder.mask_tokens": ("tinyllm.encoder", "mask_tokens"),
    "tinyllm.encoder.masked_lm_loss": ("tinyllm.encoder", "masked_lm_loss"),
}

# What each exercise may not use: built-in families and the book library's own answer.
GROUPS: dict[str, list[str]] = {
    "softmax": ["F.softmax", "torch.softmax", "Tensor.softmax", "torch.special.softmax",
                "F.log_softmax", "torch.log_softmax", "Tensor.log_softmax", "torch.special.log_softmax",
                "tinyllm.softmax.softmax", "tinyllm.softmax.log_softmax"],
    "cross_entropy": ["F.cross_entropy", "F.log_softmax", "torch.log_softmax", "Tensor.log_softmax",
                      "torch.special.log_softmax", "tinyllm.softmax.cross_entropy", "tinyllm.softmax.log_softmax",
                      "tinyllm.softmax.logsumexp"],
    "embedding": ["F.embedding", "torch.embedding", "tinyllm.embedding.embedding_lookup"],
    "positional": ["tinyllm.positional.sinusoidal_positional_encoding"],
    "attention": ["F.scaled_dot_product_attention", "nn.MultiheadAttention",
                  "tinyllm.attention.scaled_dot_product_attention"],
    "multi_head": ["F.scaled_dot_product_attention", "nn.MultiheadAttention"],
    "layer_norm": ["F.layer_norm", "torch.layer_norm", "torch.native_layer_norm", "tinyllm.layers.layer_norm"],
    "bpe": ["tinyllm.bpe.train_bpe", "tinyllm.bpe.train_bpe_fast", "tinyllm.bpe.bpe_encode", "tinyllm.bpe.bpe_decode",
            "tinyllm.bpe.pair_counts", "tinyllm.bpe.merge_pair", "tinyllm.bpe.pre_split", "tinyllm.bpe.split_pattern",
            "tinyllm.bpe.train_bpe_chunks", "tinyllm.bpe.bpe_encode_split"],
    "logsumexp": ["torch.logsumexp", "Tensor.logsumexp", "tinyllm.softmax.logsumexp"],
    "sampling": ["tinyllm.sampling.top_k_filter", "tinyllm.sampling.top_p_filter",
                 "tinyllm.sampling.sample_next_token", "tinyllm.sampling.generate"],
    "rms_norm": ["F.rms_norm", "torch.rms_norm", "tinyllm.layers.rms_norm"],
    "rope": ["tinyllm.positional.apply_rope"],
    "grouped_query": ["F.scaled_dot_product_attention", "nn.MultiheadAttention"],
    "causal_attention": ["F.scaled_dot_product_attention", "nn.MultiheadAttention", "tinyllm.attention.causal_attention",
                         "tinyllm.attention.scaled_dot_product_attention"],
    "decoding": ["tinyllm.sampling.generate", "tinyllm.sampling.generate_cached", "tinyllm.sampling.beam_search"],
    "adamw": ["torch.optim.AdamW", "torch.optim.adamw.adamw", "torch.optim._functional.adam", "tinyllm.optim.AdamW"],
    "schedule": ["tinyllm.optim.cosine_lr", "tinyllm.train.lr_at"],
    "clip": ["clip_grad_norm_", "torch.nn.utils.clip_grad.clip_grad_norm_", "torch.nn.utils.get_total_norm",
             "torch.nn.utils.clip_grad.get_total_norm", "torch.nn.utils.clip_grads_with_norm_",
             "torch.nn.utils.clip_grad.clip_grads_with_norm_", "tinyllm.optim.clip_grad_norm"],
    "post_training": ["F.cross_entropy", "F.log_softmax", "torch.log_softmax", "Tensor.log_softmax",
                      "torch.special.log_softmax", "tinyllm.softmax.cross_entropy", "tinyllm.posttrain.sft_loss",
                      "tinyllm.posttrain.sequence_logprob", "tinyllm.posttrain.dpo_loss",
                      "tinyllm.posttrain.LoRALinear"],
    "quantize": ["tinyllm.quantize.quantize_int8", "tinyllm.quantize.dequantize", "tinyllm.quantize.quantize_int4",
                 "tinyllm.quantize.dequantize_int4", "tinyllm.quantize.quantize_weight",
                 "tinyllm.quantize.dequantize_weight"],
    "speculative": ["tinyllm.speculative.speculative_accept", "tinyllm.speculative.speculative_generate"],
    "bidirectional": ["F.scaled_dot_product_attention", "nn.MultiheadAttention",
                      "tinyllm.attention.scaled_dot_product_attention", "tinyllm.attention.bidirectional_attention"],
    "masking": ["tinyllm.encoder.mask_tokens"],
    "masked_lm": ["F.cross_entropy", "F.log_softmax", "torch.log_softmax", "Tensor.log_softmax",
                  "torch.special.log_softmax", "tinyllm.encoder.masked_lm_loss"],
    "cross_attention": ["F.scaled_dot_product_attention", "nn.MultiheadAttention",
                        "tinyllm.attention.scaled_dot_product_attention", "tinyllm.attention.bidirectional_attention",
                        "tinyllm.attention.CrossAttention"],
}

# Readable names for messages: nn.Embedding and nn.LayerNorm reach these functions.
SHOWN_AS = {
    "F.embedding": "F.embedding / nn.Embedding",
    "F.layer_norm": "F.layer_norm / nn.LayerNorm",
    "F.rms_norm": "F.rms_norm / nn.RMSNorm",
    "F.softmax": "F.softmax / nn.Softmax",
    "F.cross_entropy": "F.cross_entropy / nn.CrossEntropyLoss",
    "torch.optim.AdamW": "torch.optim.AdamW / torch.optim.Adam",
    "clip_grad_norm_": "torch.nn.utils.clip_grad_norm_",
    "tinyllm.optim.AdamW": "the book's tinyllm.optim.AdamW",
    "tinyllm.posttrain.LoRALinear": "the book's tinyllm.posttrain.LoRALinear",
    "tinyllm.attention.CrossAttention": "the book's tinyllm.attention.CrossAttention",
}

_state = threading.local()


def _resolve(path: str):
    try:
        return importlib.import_module(path)
    except ImportError:
        module, _, cls = path.rpartition(".")
        return getattr(importlib.import_module(module), cls)


def originals() -> dict[str, object]:
    """key -> the unwrapped built-in object."""
    found = {}
    for key, (owner, attr) in BUILTINS.items():
        target = getattr(_resolve(owner), attr, None)
        if target is not None:
            found[key] = getattr(target, "__wrapped_builtin__", target)
    return found


def _wrap(key: str, function: Callable) -> Callable:
    def recording(*args, **kwargs):
        used = getattr(_state, "used", None)
        if used is not None:
            used.add(key)
        return function(*args, **kwargs)

    recording.__wrapped_builtin__ = function
    recording.__name__ = getattr(function, "__name__", key)
    recording.__doc__ = getattr(function, "__doc__", None)
    return recording


def install() -> Callable[[], None]:
    """Replace every forbidden built-in by a recording wrapper; return an undo function."""
    undo = []
    for key, (owner_path, attr) in BUILTINS.items():
        owner = _resolve(owner_path)
        current = getattr(owner, attr, None)
        if current is None or hasattr(current, "__wrapped_builtin__"):
            continue
        setattr(owner, attr, _wrap(key, current))
        undo.append((owner, attr, current))

    def restore() -> None:
        for owner, attr, original in reversed(undo):
            setattr(owner, attr, original)

    return restore


@contextlib.contextmanager
def recording() -> Iterator[set[str]]:
    """Collect the keys of forbidden built-ins called inside the block."""
    previous = getattr(_state, "used", None)
    _state.used = used = set()
    try:
        yield used
    finally:
        _state.used = previous


def referenced(obj: object) -> set[str]:
    """Keys of forbidden built-ins that ``obj``'s code refers to through its globals.

    Follows functions and classes defined alongside it (same globals), so a
    helper that hides the call is found too.
    """
    targets = {id(v): k for k, v in originals().items()}
    found: set[str] = set()
    seen: set[int] = set()
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, type):
            stack.extend(v for v in vars(item).values() if isinstance(v, (types.FunctionType, staticmethod, classmethod, property)))
            continue
        if isinstance(item, (staticmethod, classmethod)):
            stack.append(item.__func__)
            continue
        if isinstance(item, property):
            stack.extend(f for f in (item.fget, item.fset) if f is not None)
            continue
        if not isinstance(item, types.FunctionType):
            continue
        scope = item.__globals__
        codes = [item.__code__]
        while codes:
            code = codes.pop()
            codes.extend(c for c in code.co_consts if isinstance(c, types.CodeType))
            for name in code.co_names:
                value = scope.get(name)
                value = getattr(value, "__wrapped_builtin__", value)
                if id(value) in targets:
                    found.add(targets[id(value)])
                elif isinstance(value, (types.FunctionType, type)) and getattr(value, "__module__", None) == item.__module__:
                    stack.append(value)
    return found


def describe(keys: set[str] | list[str]) -> str:
    return ", ".join(sorted(SHOWN_AS.get(k, k) for k in keys))
