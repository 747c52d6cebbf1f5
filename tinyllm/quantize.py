"""Smaller weights: symmetric absmax quantization to int8 per row and to int4 per group (chapter 14).

Weight-only quantization keeps a matrix as small integer codes and a few
float scales, and turns them back into floats ("dequantizes") when a layer
runs; activations, norms and biases stay in float32. Symmetric absmax: a
row (or group) of weights w gets the scale s = max|w| / c_max, and each
weight the code round(w / s), clamped to [-c_max, c_max], with c_max = 127
for 8 bits and 7 for 4 bits. The largest weight of the row is then exact,
and every other one is off by at most s / 2.

Rounding is ``torch.round``: halves go to the even neighbour (2.5 -> 2), as
in torchao's quantization primitives, which the project's tests compare
against (tests/test_quantize.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tinyllm.embedding import Embedding, embedding_lookup
from tinyllm.train import Checkpoint, History, TrainConfig, build_model, save_atomically

QUANTIZED_FORMAT = "tinyllm-quantized"
QUANTIZED_VERSION = 1
BITS = (8, 4)


def quantize_int8(w: Tensor) -> tuple[Tensor, Tensor]:
    """Symmetric absmax int8, one scale per output row (dim 0): (codes int8 (out, in), scale float32 (out, 1)).

    ``scale = max|w_row| / 127`` and ``codes = round(w / scale)`` clamped to
    [-127, 127], so the row's largest magnitude maps to +-127 exactly. A row
    of zeros gets scale 1 (any scale gives code 0; 1 avoids dividing by 0).
    """
    scale = w.abs().amax(dim=1, keepdim=True).float() / 127  # (out, 1)
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    codes = torch.clamp(torch.round(w / scale), -127, 127).to(torch.int8)
    return codes, scale


def dequantize(q: Tensor, scale: Tensor) -> Tensor:
    """Codes times their scale, in float32: ``q * scale`` with scale broadcast over each row."""
    return q.float() * scale


def quantize_int4(w: Tensor, group_size: int = 32) -> tuple[Tensor, Tensor]:
    """Symmetric absmax int4 per group: (codes int8 (out, in) in [-7, 7], scales float32 (out, in // group_size)).

    Each row is cut into groups of ``group_size`` consecutive weights along dim
    1, and each group gets its own scale ``max|w_group| / 7``: an outlier then
    coarsens only its own group. A group of zeros gets scale 1. The codes are
    returned one per int8 (``pack_int4`` stores two per byte).
    """
    out_features, in_features = w.shape
    if group_size < 1 or in_features % group_size != 0:
        raise ValueError(f"group_size {group_size} does not divide the {in_features} input features")
    groups = w.reshape(out_features, in_features // group_size, group_size)  # (out, n_groups, group_size)
    scales = groups.abs().amax(dim=-1).float() / 7  # (out, n_groups)
    scales = torch.where(scales == 0, torch.ones_like(scales), scales)
    codes = torch.clamp(torch.round(groups / scales[..., None]), -7, 7).to(torch.int8)
    return codes.reshape(out_features, in_features), scales


def dequantize_int4(q: Tensor, scales: Tensor, group_size: int) -> Tensor:
    """Group-wise codes times their group's scale, in float32: (out, in)."""
    out_features, in_features = q.shape
    groups = q.float().reshape(out_features, in_features // group_size, group_size)
    return (groups * scales[..., None]).reshape(out_features, in_features)


def pack_int4(q: Tensor) -> Tensor:
    """Two 4-bit codes per byte: (out, in) int8 codes in [-7, 7] -> (out, in // 2) uint8.

    Code c is stored as c + 8 (1..15); entry 2j goes to the low half of byte j,
    entry 2j + 1 to the high half.
    """
    if q.shape[-1] % 2:
        raise ValueError(f"packing two codes per byte needs an even number of columns, got {q.shape[-1]}")
    shifted = (q.to(torch.int16) + 8).to(torch.uint8)
    return shifted[..., 0::2] | (shifted[..., 1::2] << 4)


def unpack_int4(packed: Tensor) -> Tensor:
    """The inverse of :func:`pack_int4`: (out, in // 2) uint8 -> (out, in) int8 codes."""
    low = (packed & 0x0F).to(torch.int8) - 8
    high = (packed >> 4).to(torch.int8) - 8
    return torch.stack((low, high), dim=-1).reshape(*packed.shape[:-1], packed.shape[-1] * 2)


# --------------------------------------------------------------------------- whole models


def quantize_weight(w: Tensor, bits: int, group_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Codes (out, in) int8 and scales (out, n_groups) of a matrix; ``group_size=None``: one group per row.

    8 bits per row is :func:`quantize_int8`, 4 bits per group
    :func:`quantize_int4`; the other two combinations reuse them on the
    matrix cut into its groups (8 bits per group: each group a row of its own;
    4 bits per row: one group as wide as the row).
    """
    if bits not in BITS:
        raise ValueError(f"bits must be 8 or 4, got {bits}")
    out_features, in_features = w.shape
    size = in_features if group_size is None else group_size
    if size < 1 or in_features % size != 0:
        raise ValueError(f"group size {size} does not divide the {in_features} input features")
    if bits == 4:
        return quantize_int4(w, size)
    codes, scale = quantize_int8(w.reshape(-1, size))  # each group a row: (out * n_groups, 1) scales
    return codes.reshape(out_features, in_features), scale.reshape(out_features, in_features // size)


def dequantize_weight(codes: Tensor, scales: Tensor) -> Tensor:
    """The float32 matrix that codes (out, in) and scales (out, n_groups) stand for."""
    return dequantize_int4(codes, scales, codes.shape[1] // scales.shape[1])


class QuantizedWeight(nn.Module):
    """A weight matrix kept as codes and scales, dequantized when it is read: ``qw()`` is the float32 matrix.

    Buffers: ``codes`` (int8 (out, in) for 8 bits; for 4 bits two codes per
    byte, uint8 (out, in // 2)) and ``scales`` (float32 (out, n_groups)).
    """

    def __init__(self, weight: Tensor, bits: int, group_size: int | None = None):
        super().__init__()
        codes, scales = quantize_weight(weight.detach().float(), bits, group_size)
        self.bits, self.group_size, self.shape = bits, group_size, tuple(weight.shape)
        self.register_buffer("codes", pack_int4(codes) if bits == 4 else codes)
        self.register_buffer("scales", scales)

    def forward(self) -> Tensor:
        codes = unpack_int4(self.codes) if self.bits == 4 else self.codes
        return dequantize_weight(codes, self.scales)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, bits={self.bits}, group_size={self.group_size or 'row'}"


class QuantizedLinear(nn.Module):
    """``nn.Linear`` with a :class:`QuantizedWeight`: ``x @ qweight().T + bias``, bias in float32."""

    def __init__(self, qweight: QuantizedWeight, bias: Tensor | None):
        super().__init__()
        self.qweight = qweight
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.qweight(), self.bias)


class QuantizedEmbedding(nn.Module):
    """The book's :class:`~tinyllm.embedding.Embedding` reading a :class:`QuantizedWeight`."""

    def __init__(self, qweight: QuantizedWeight):
        super().__init__()
        self.qweight = qweight

    def forward(self, token_ids: Tensor) -> Tensor:
        return embedding_lookup(token_ids, self.qweight())


def quantize_model(model: nn.Module, bits: int, group_size: int | None = None) -> nn.Module:
    """Replace every ``nn.Linear`` and embedding table of ``model`` by its quantized version, in place.

    Weight-only: norms and biases stay in float32. A tied weight (the token
    table that is also the output layer) becomes one :class:`QuantizedWeight`
    that both modules read, so it is stored once. Every matrix is quantized
    along its input features (an embedding table along ``d_model``), so
    ``group_size`` must divide each one's; the error names the first that it
    does not. Returns the model, in eval mode.
    """
    if bits not in BITS:
        raise ValueError(f"bits must be 8 or 4, got {bits}")
    if group_size is not None and group_size < 1:
        raise ValueError(f"group size must be at least 1, got {group_size}")
    targets = [(name, module) for name, module in model.named_modules() if isinstance(module, (nn.Linear, Embedding))]
    for name, module in targets:  # check every matrix first, so a bad group size changes nothing
        in_features = module.weight.shape[1]
        if group_size is not None and in_features % group_size != 0:
            raise ValueError(f"group size {group_size} does not divide the {in_features} input features of {name}")
        if bits == 4 and in_features % 2:
            raise ValueError(f"4-bit codes are stored two per byte: {name} has an odd number of input "
                             f"features ({in_features})")
    shared: dict[int, QuantizedWeight] = {}  # id(weight) -> its quantized copy: tied weights stay tied
    for name, module in targets:
        key = id(module.weight)
        if key not in shared:
            shared[key] = QuantizedWeight(module.weight, bits, group_size)
        replacement = (QuantizedEmbedding(shared[key]) if isinstance(module, Embedding)
                       else QuantizedLinear(shared[key], module.bias))
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, replacement)
    return model.eval()


def fake_quantize_model(model: nn.Module, bits: int, group_size: int | None = None) -> nn.Module:
    """``model`` with every weight :func:`quantize_model` would quantize replaced, in place, by its dequantized
    values: the same outputs as the quantized model, in an ordinary float model."""
    with torch.no_grad():
        seen = set()
        for module in model.modules():
            if isinstance(module, (nn.Linear, Embedding)) and id(module.weight) not in seen:
                seen.add(id(module.weight))
                codes, scales = quantize_weight(module.weight.float(), bits, group_size)
                module.weight.copy_(dequantize_weight(codes, scales))
    return model.eval()


def model_bytes(model: nn.Module) -> int:
    """Bytes of everything the model stores (parameters and buffers), each shared tensor counted once."""
    seen, total = set(), 0
    for tensor in list(model.parameters()) + list(model.buffers()):
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


# --------------------------------------------------------------------------- quantized checkpoints


@dataclass
class QuantizedCheckpoint(Checkpoint):
    """A checkpoint whose model is stored quantized; ``model()`` builds the quantized model."""

    bits: int = 8
    group_size: int | None = None

    def model(self, device: str | torch.device = "cpu") -> nn.Module:
        model = quantize_model(build_model(self.model_config, seed=0), self.bits, self.group_size)
        model.load_state_dict(self.model_state)
        return model.to(device).eval()


def save_quantized(path: str | Path, ckpt: Checkpoint, bits: int, group_size: int | None = None) -> Path:
    """Quantize a trained checkpoint's model and write it (atomically) with its tokenizer and configs.

    Only what generating and evaluating need is kept: no optimiser state, no
    random-generator states. :func:`load_quantized` reads it back.
    """
    model = quantize_model(ckpt.model("cpu"), bits, group_size)
    payload = {
        "format": QUANTIZED_FORMAT,
        "version": QUANTIZED_VERSION,
        "bits": bits,
        "group_size": group_size,
        "model_config": ckpt.model_config.to_dict(),
        "train_config": ckpt.train_config.to_dict(),
        "model": model.state_dict(),
        "merges": [list(m) for m in ckpt.merges] if ckpt.merges is not None else None,
        "end_of_text": bool(ckpt.end_of_text),
        "split": bool(ckpt.split),
        "step": int(ckpt.step),
        "history": ckpt.history.to_dict(),
        "meta": {**ckpt.meta, "quantized": f"{bits} bits, group size {group_size or 'row'}"},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_atomically(path, payload)


def load_quantized(path: str | Path) -> QuantizedCheckpoint:
    """Read a file written by :func:`save_quantized`; anything else is a ValueError naming the file."""
    from tinyllm.model import GPTConfig

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file is "not ours"
        raise ValueError(f"{path} is not a readable quantized checkpoint ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != QUANTIZED_FORMAT:
        raise ValueError(f"{path} is not a quantized tinyllm checkpoint")
    if payload.get("version") != QUANTIZED_VERSION:
        raise ValueError(f"{path} has quantized-checkpoint version {payload.get('version')}, this tinyllm reads "
                         f"version {QUANTIZED_VERSION}")
    try:
        merges = payload["merges"]
        ckpt = QuantizedCheckpoint(
            model_config=GPTConfig(**payload["model_config"]),
            train_config=TrainConfig.from_dict(payload["train_config"]),
            model_state=payload["model"],
            optimizer_state=None,
            merges=[tuple(int(x) for x in m) for m in merges] if merges is not None else None,
            step=int(payload["step"]),
            best_val_loss=math.inf,
            best_model_state=None,
            evals_since_best=0,
            finished=True,
            history=History.from_dict(payload["history"]),
            rng={},
            meta=dict(payload.get("meta", {})),
            end_of_text=bool(payload.get("end_of_text", False)),
            split=bool(payload.get("split", False)),
            bits=int(payload["bits"]),
            group_size=None if payload["group_size"] is None else int(payload["group_size"]),
        )
        ckpt.model("cpu")  # the stored codes and scales must fit the config
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{path} is an incompatible or damaged quantized checkpoint: {err}") from None
    return ckpt
