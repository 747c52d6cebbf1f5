"""The data-only format in which values cross the sandbox boundary.

A submission's outputs reach the grader as JSON: numbers, strings, lists,
dicts with string keys, and tensors spelled out as dtype + shape + raw
little-endian bytes. Decoding builds fresh plain objects from those bytes, so
nothing the submission created (a tensor subclass, an object with a lying
``__eq__``, a pickle) survives the trip. The grader never unpickles.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from typing import Any

import numpy as np
import torch

MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # a larger message is a broken or hostile worker
MAX_DEPTH = 32

# Only plain numeric dtypes travel; each maps to a numpy dtype with explicit byte order.
DTYPES = {
    "float32": (torch.float32, "<f4"),
    "float64": (torch.float64, "<f8"),
    "float16": (torch.float16, "<f2"),
    "int64": (torch.int64, "<i8"),
    "int32": (torch.int32, "<i4"),
    "int16": (torch.int16, "<i2"),
    "int8": (torch.int8, "i1"),
    "uint8": (torch.uint8, "u1"),
    "bool": (torch.bool, "?"),
}
TORCH_TO_NAME = {torch_dtype: name for name, (torch_dtype, _) in DTYPES.items()}


class WireError(ValueError):
    """A value that cannot cross the boundary (on either side)."""


def _encode_float(x: float) -> Any:
    # JSON has no NaN/inf; spell them out so they survive exactly.
    if math.isnan(x):
        return {"__float__": "nan"}
    if math.isinf(x):
        return {"__float__": "inf" if x > 0 else "-inf"}
    return x


def encode(value: Any, depth: int = 0) -> Any:
    """A JSON-ready rendering of ``value``; raises WireError for anything else."""
    if depth > MAX_DEPTH:
        raise WireError("value is nested too deeply")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**63 else str(value)
    if isinstance(value, float):
        return _encode_float(float(value))
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().as_subclass(torch.Tensor)
        if tensor.dtype == torch.bfloat16:
            tensor = tensor.float()
        if tensor.dtype not in TORCH_TO_NAME:
            raise WireError(f"tensors of dtype {tensor.dtype} are not supported")
        name = TORCH_TO_NAME[tensor.dtype]
        array = tensor.contiguous().numpy().astype(DTYPES[name][1], copy=False)
        return {"__tensor__": {"dtype": name, "shape": list(tensor.shape),
                               "data": base64.b64encode(array.tobytes()).decode("ascii")}}
    if isinstance(value, Handle):
        return {"__handle__": value.number}
    if isinstance(value, torch.Generator):
        # Its state is plain bytes: the receiver gets an equal, independent generator.
        return {"__generator__": encode(value.get_state(), depth + 1)}
    if isinstance(value, np.ndarray):
        return encode(torch.from_numpy(np.ascontiguousarray(value)), depth)
    if isinstance(value, np.generic):
        return encode(value.item(), depth)
    if isinstance(value, tuple):
        return {"__tuple__": [encode(v, depth + 1) for v in value]}
    if isinstance(value, list):
        return [encode(v, depth + 1) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):  # e.g. BPE pair counts: (a, b) -> n, in order
            return {"__items__": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
        return {"__dict__": {k: encode(v, depth + 1) for k, v in value.items()}}
    raise WireError(f"cannot send a value of type {type(value).__name__}")


def _hashable(key: Any) -> bool:
    if isinstance(key, tuple):
        return all(isinstance(k, (int, float, bool, str, tuple)) and _hashable(k) for k in key)
    return True


class Handle:
    """A reference to an object that lives in the worker (a module the check built there)."""

    def __init__(self, number: int):
        self.number = number


def decode(data: Any, depth: int = 0, handles: dict[int, Any] | None = None) -> Any:
    """Plain Python/torch objects from :func:`encode`'s output; strict about shapes.

    ``handles`` resolves object references; only the worker passes it (the
    grader never receives objects, only values).
    """
    if depth > MAX_DEPTH:
        raise WireError("value is nested too deeply")
    if data is None or isinstance(data, (bool, str, int, float)):
        return data
    if isinstance(data, list):
        return [decode(v, depth + 1, handles) for v in data]
    if isinstance(data, dict) and len(data) == 1:
        (tag, body), = data.items()
        if tag == "__float__" and body in ("nan", "inf", "-inf"):
            return float(body)
        if tag == "__tuple__" and isinstance(body, list):
            return tuple(decode(v, depth + 1, handles) for v in body)
        if tag == "__dict__" and isinstance(body, dict):
            return {str(k): decode(v, depth + 1, handles) for k, v in body.items()}
        if tag == "__items__" and isinstance(body, list):
            if not all(isinstance(item, list) and len(item) == 2 for item in body):
                raise WireError("malformed dict items")
            items = [(decode(k, depth + 1, handles), decode(v, depth + 1, handles)) for k, v in body]
            if not all(isinstance(k, (int, float, bool, str, tuple)) and _hashable(k) for k, _ in items):
                raise WireError("dict keys must be numbers, strings or tuples of them")
            return dict(items)
        if tag == "__tensor__" and isinstance(body, dict):
            return _decode_tensor(body)
        if tag == "__handle__" and handles is not None and body in handles:
            return handles[body]
        if tag == "__generator__":
            state = decode(body, depth + 1)
            if not isinstance(state, torch.Tensor) or state.dtype != torch.uint8:
                raise WireError("malformed generator state")
            generator = torch.Generator()
            try:
                generator.set_state(state)
            except RuntimeError as error:
                raise WireError(f"malformed generator state: {error}") from None
            return generator
    raise WireError("malformed value")


def _decode_tensor(body: dict) -> torch.Tensor:
    try:
        torch_dtype, np_dtype = DTYPES[body["dtype"]]
        shape = [int(n) for n in body["shape"]]
        raw = base64.b64decode(body["data"], validate=True)
    except (KeyError, TypeError, ValueError) as err:
        raise WireError(f"malformed tensor: {err}") from None
    if any(n < 0 for n in shape) or len(shape) > 16:
        raise WireError("malformed tensor shape")
    count = math.prod(shape)
    if count * np.dtype(np_dtype).itemsize != len(raw):
        raise WireError("tensor data does not match its shape")
    array = np.frombuffer(raw, dtype=np_dtype).reshape(shape).copy()
    return torch.from_numpy(array).to(torch_dtype)


def roundtrip(value: Any) -> Any:
    """What the grader would receive for ``value``: the same normalisation in the notebook."""
    return decode(json.loads(json.dumps(encode(value))))


# ---------------------------------------------------------------- framing

def pack(message: dict) -> bytes:
    body = json.dumps(message, separators=(",", ":")).encode("utf-8")
    if len(body) > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {len(body)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    return struct.pack(">I", len(body)) + body


def unpack_length(header: bytes) -> int:
    (length,) = struct.unpack(">I", header)
    if length > MAX_MESSAGE_BYTES:
        raise WireError(f"message of {length} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit")
    return length


def parse(body: bytes) -> dict:
    try:
        message = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise WireError(f"unreadable message: {err}") from None
    if not isinstance(message, dict):
        raise WireError("a message must be a JSON object")
    return message
