"""Comparisons that explain themselves: what went in, what was expected, what came back."""

from __future__ import annotations

from typing import Any

import torch

from autograder.api import CheckFailure


def describe_tensor(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        if x.numel() == 0:
            return f"a tensor of shape {tuple(x.shape)} (empty)"
        if x.is_floating_point():
            return (f"a {str(x.dtype).replace('torch.', '')} tensor of shape {tuple(x.shape)}, "
                    f"values in [{x.min().item():.4g}, {x.max().item():.4g}]")
        return f"a {str(x.dtype).replace('torch.', '')} tensor of shape {tuple(x.shape)}"
    text = repr(x)
    return text if len(text) < 120 else text[:117] + "..."


def preview(x: torch.Tensor, limit: int = 6) -> str:
    """A short, readable slice of a tensor: its first row (or elements)."""
    flat = x.reshape(-1, x.shape[-1])[0] if x.dim() > 1 else x.reshape(-1)
    items = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in flat[:limit].tolist()]
    more = ", ..." if flat.numel() > limit else ""
    where = "first row " if x.dim() > 1 else ""
    return f"{where}[{', '.join(items)}{more}]"


def tensor(got: Any, what: str) -> torch.Tensor:
    if not isinstance(got, torch.Tensor):
        raise CheckFailure(f"{what} should return a tensor, but it returned {describe_tensor(got)}"
                           f" (a {type(got).__name__}).")
    return got


def close(got: Any, expected: torch.Tensor, what: str, inputs: str = "", atol: float = 1e-5,
          rtol: float = 1e-4, hint: str = "") -> None:
    """``got`` must be a tensor of ``expected``'s shape with values within tolerance."""
    got = tensor(got, what)
    context = f"\n  input: {inputs}" if inputs else ""
    if tuple(got.shape) != tuple(expected.shape):
        raise CheckFailure(f"{what} returned the wrong shape.{context}\n"
                           f"  expected shape {tuple(expected.shape)}, got shape {tuple(got.shape)}."
                           + (f"\n  {hint}" if hint else ""))
    got_f, expected_f = got.double(), expected.double()
    finite_expected = torch.isfinite(expected_f)
    same_specials = torch.equal(finite_expected, torch.isfinite(got_f)) and torch.equal(
        expected_f[~finite_expected], got_f[~finite_expected])
    error = (got_f - expected_f).abs()
    error[~finite_expected] = 0.0
    error = torch.nan_to_num(error, nan=float("inf"))
    bound = atol + rtol * expected_f.abs()
    bound[~finite_expected] = 0.0
    bad = error > bound
    if same_specials and not bad.any():
        return
    if not same_specials:
        index = tuple(int(i) for i in (torch.isfinite(got_f) != finite_expected).nonzero()[0]) \
            if (torch.isfinite(got_f) != finite_expected).any() else tuple(int(i) for i in bad.nonzero()[0])
        summary = "the positions of inf/nan values differ from the expected ones"
    else:
        index = tuple(int(i) for i in bad.nonzero()[0])
        summary = f"max abs error {error.max().item():.4g}"
    raise CheckFailure(
        f"{what} returned wrong values.{context}\n"
        f"  expected: {preview(expected)}\n"
        f"  got:      {preview(got)}\n"
        f"  {summary}; first wrong entry at index {index}: expected {expected_f[index].item():.6g}, "
        f"got {got_f[index].item():.6g}" + (f"\n  {hint}" if hint else ""))


def equal(got: Any, expected: Any, what: str, inputs: str = "", hint: str = "") -> None:
    """Exact equality of plain values (ids, lists, strings) or integer tensors."""
    if isinstance(expected, torch.Tensor):
        got = tensor(got, what)
        ok = tuple(got.shape) == tuple(expected.shape) and torch.equal(got.to(expected.dtype), expected)
    else:
        ok = type(got) is type(expected) and got == expected
    if ok:
        return
    context = f"\n  input: {inputs}" if inputs else ""
    raise CheckFailure(f"{what} returned the wrong result.{context}\n"
                       f"  expected: {describe_tensor(expected) if isinstance(expected, torch.Tensor) else _short(expected)}\n"
                       f"  got:      {describe_tensor(got) if isinstance(got, torch.Tensor) else _short(got)}"
                       + (f"\n  {hint}" if hint else ""))


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def true(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailure(message)


def raises(call, exception: type[BaseException], what: str) -> None:
    """``call()`` must raise ``exception`` (in the student's code)."""
    try:
        call()
    except CheckFailure as failure:
        if failure.status == "exception" and exception.__name__ in failure.message:
            return
        raise CheckFailure(f"{what} should raise {exception.__name__}, but: {failure.message}") from None
    raise CheckFailure(f"{what} should raise {exception.__name__}, but it returned normally.")
