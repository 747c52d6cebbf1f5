"""Back-of-the-envelope formulas for transformer size, memory and compute (chapters 7, 10 and 13).

Every function is a closed form in the model's sizes (names as in the book's
notation: n_layers, d_model, n_heads, d_k, d_ff, vocab_size, seq_len), so that
the numbers quoted for models far too big to run here come from the same
arithmetic that the book checks against real modules on the tiny GPT.
"""

from __future__ import annotations

import math

from torch import nn


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters of a module; a tied weight (one tensor, two uses) counts once."""
    return sum(p.numel() for p in model.parameters())


def block_parameters(d_model: int, d_ff: int) -> int:
    """Parameters of one :class:`tinyllm.layers.TransformerBlock` (weights and biases).

    Attention: four d_model x d_model projections with biases, 4 (d^2 + d).
    Feed-forward: d_model -> d_ff -> d_model with biases, 2 d d_ff + d_ff + d.
    Two layer norms, each a gain and a bias: 4 d. (Derived in chapter 7.)
    """
    d = d_model
    return 4 * (d * d + d) + (2 * d * d_ff + d_ff + d) + 4 * d


def gpt_parameters(vocab_size: int, context_length: int, d_model: int, n_layers: int, d_ff: int) -> int:
    """Parameters of :class:`tinyllm.model.TinyGPT`: token and position tables, the blocks,
    the final layer norm; the output layer is tied to the token table and adds nothing."""
    embeddings = (vocab_size + context_length) * d_model
    return embeddings + n_layers * block_parameters(d_model, d_ff) + 2 * d_model


def non_embedding_parameters(n_layers: int, d_model: int, d_ff: int, ffn_matrices: int = 2) -> int:
    """Kaplan et al.'s N (2020, Table 1; the book's P_ne): the weights of the blocks' matrix multiplies.

    Per layer: Q, K, V and output projections, 4 d_model^2, plus the feed-forward
    matrices, ffn_matrices * d_model * d_ff (2 for a GELU MLP; 3 for the SwiGLU of
    LLaMA). Biases and norms are left out: they are a tiny fraction and cost no
    matrix multiply. With d_ff = 4 d_model this is the familiar 12 n_layers d_model^2.
    """
    return n_layers * (4 * d_model * d_model + ffn_matrices * d_model * d_ff)


def forward_flops_per_token(
    n_params: int,
    n_layers: int,
    d_model: int,
    seq_len: int,
    vocab_size: int = 0,
    dense_attention: bool = False,
) -> int:
    """Floating-point operations of one forward pass, per token (Kaplan et al., 2020, Table 1).

    A matrix multiply costs 2 FLOPs (a multiply and an add) per weight per token,
    so the blocks cost 2 * n_params for n_params non-embedding parameters. The
    attention scores q k^T and the weighted sum of values add, per layer and per
    token, 2 seq_len d_model each for the whole (T, T) square. Kaplan et al.'s
    Table 1 lists 2 n_layers seq_len d_model for the two together, which is what
    a causal model needs if it skips the masked half (our reading: the paper does
    not give the reason), and that is the default here. ``dense_attention=True``
    counts the full square instead (4 n_layers seq_len d_model), as an
    implementation that computes every score and then masks (tinyllm's does)
    really performs. ``vocab_size`` > 0 adds the
    output layer, 2 d_model vocab_size, which Kaplan leaves out of the total.
    """
    attention = (4 if dense_attention else 2) * n_layers * seq_len * d_model
    return 2 * n_params + attention + 2 * d_model * vocab_size


def training_flops(n_params: int, n_tokens: float) -> float:
    """C ~ 6 N D: forward 2 N per token, backward twice the forward (Kaplan et al., 2020)."""
    return 6 * n_params * n_tokens


def kv_cache_bytes(
    n_layers: int,
    n_kv_heads: int,
    d_k: int,
    seq_len: int,
    batch_size: int = 1,
    bytes_per_value: int = 2,
) -> int:
    """Memory to keep every past key and value while generating (Pope et al., 2023).

    Each layer stores a key and a value (the 2) of d_k numbers per head, per
    position, per sequence. Standard attention has n_kv_heads = n_heads;
    multi-query attention (Shazeer, 2019) has 1, grouped-query attention
    (Ainslie et al., 2023) a few. bytes_per_value is 2 for 16-bit floats.
    """
    return 2 * n_layers * n_kv_heads * d_k * seq_len * batch_size * bytes_per_value


def roofline_seconds(flops: float, bytes_moved: float, peak_flops: float, bandwidth: float) -> float:
    """The least time a computation can take on a device (the roofline model, Williams et al., 2009).

    Its arithmetic at the device's peak rate, or its memory traffic at the
    full bandwidth, whichever takes longer: a computation that does fewer
    than peak_flops / bandwidth FLOPs per byte it reads waits on memory
    (memory-bound), one that does more waits on arithmetic (compute-bound).
    Real kernels reach neither bound exactly; this is the floor.
    """
    return max(flops / peak_flops, bytes_moved / bandwidth)


def adamw_training_bytes(
    n_trainable: int,
    n_frozen: int = 0,
    weight_bytes: int = 2,
    gradient_bytes: int = 2,
    master_bytes: int = 4,
    state_bytes: int = 8,
) -> int:
    """Memory that training with AdamW keeps for the parameters: weights, gradients, optimiser state.

    The defaults are mixed-precision training (Micikevicius et al., 2018): each
    trainable parameter has a 16-bit weight and gradient, a 32-bit master copy
    that the update is applied to, and AdamW's two 32-bit moments, 2 + 2 + 4 + 8
    = 16 bytes (the count of Rajbhandari et al., 2020). A frozen parameter, such
    as the base weights under LoRA, keeps only its weight. Plain float32
    training is weight_bytes=4, gradient_bytes=4, master_bytes=0: again 16
    bytes. Activations, which depend on the batch and the sequence length, are
    not included.
    """
    per_trainable = weight_bytes + gradient_bytes + master_bytes + state_bytes
    return n_trainable * per_trainable + n_frozen * weight_bytes


def chinchilla_tokens(n_params: float, tokens_per_parameter: float = 20.0) -> float:
    """Compute-optimal training tokens, D ~ 20 N: the rule of thumb from Hoffmann et al. (2022)."""
    return tokens_per_parameter * n_params


def chinchilla_optimal(compute: float, tokens_per_parameter: float = 20.0) -> tuple[float, float]:
    """(N, D) that spend a FLOP budget C = 6 N D with D = 20 N: N = sqrt(C / 120)."""
    n_params = math.sqrt(compute / (6 * tokens_per_parameter))
    return n_params, tokens_per_parameter * n_params


def kaplan_loss(n_params: float, n_c: float = 8.8e13, alpha_n: float = 0.076) -> float:
    """L(N) = (N_c / N) ** alpha_N in nats per token, Kaplan et al. (2020), eq. (1.1).

    The constants are the paper's fit for non-embedding N, for models trained to
    convergence on enough WebText2 data with GPT-2's tokenizer: a property of
    that setting, not a law of nature, and not comparable across tokenizers.
    """
    return (n_c / n_params) ** alpha_n
