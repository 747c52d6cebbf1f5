"""Comparisons that explain themselves: what went in, what was expected, what came back.

A failed comparison names the first wrong entry and shows the row (the last
dimension) that holds it, in the expected and the returned tensor, beside the
same row of the input that produced it. A tensor of a few elements is shown
whole.
"""

from __future__ import annotations

import contextlib
import textwrap
from typing import Any, Iterator

import torch

from autograder.grading.api import EXCEPTION, FAILED, NOT_IMPLEMENTED, CheckFailure, DependencyFailure

SMALL = 24  # tensors with at most this many elements are printed whole
ROW_ITEMS = 10  # at most this many entries of a row are shown around the wrong one


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


def _number(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _nested(values: Any) -> str:
    if isinstance(values, list):
        return "[" + ", ".join(_nested(v) for v in values) + "]"
    return _number(values)


def show(x: torch.Tensor, index: tuple[int, ...] | None = None) -> str:
    """``x`` whole when it is small; otherwise the row (last dimension) holding ``index``."""
    if x.numel() <= SMALL or x.dim() == 0:
        return _nested(x.tolist())
    if index is None:
        index = (0,) * x.dim()
    row = x[index[:-1]] if x.dim() > 1 else x
    column = index[-1]
    start = max(0, min(column - ROW_ITEMS // 2, row.numel() - ROW_ITEMS))
    items = [_number(v) for v in row[start:start + ROW_ITEMS].tolist()]
    text = ("..., " if start > 0 else "") + ", ".join(items) + (", ..." if start + ROW_ITEMS < row.numel() else "")
    where = f"row {tuple(index[:-1]) if len(index) > 2 else index[0]}" if x.dim() > 1 else "entries"
    if start > 0 or start + ROW_ITEMS < row.numel():
        where += f", from column {start}"
    return f"{where}: [{text}]"


def preview(x: torch.Tensor, limit: int = 6) -> str:
    """A short, readable view of a tensor (kept for callers that show a value without an error)."""
    return show(x)


def _input_text(inputs: Any, index: tuple[int, ...] | None) -> str:
    """The input as text: a description, or for a tensor its matching row (or all of it when small)."""
    if isinstance(inputs, torch.Tensor):
        text = describe_tensor(inputs)
        if index is not None and inputs.dim() == len(index) and inputs.numel() > SMALL:
            return f"{text}\n  its {show(inputs, index)}"
        if inputs.numel() <= SMALL:
            return f"{_nested(inputs.tolist())}"
        return text
    return str(inputs)


def tensor(got: Any, what: str) -> torch.Tensor:
    if not isinstance(got, torch.Tensor):
        raise CheckFailure(f"{what} should return a tensor, but it returned {describe_tensor(got)}"
                           f" (a {type(got).__name__}).")
    return got


def first_wrong(got: torch.Tensor, expected: torch.Tensor, atol: float = 1e-5,
                rtol: float = 1e-4) -> tuple[tuple[int, ...] | None, str]:
    """The index of the first entry out of tolerance (None when all agree) and a summary of the error."""
    got_f, expected_f = got.double(), expected.double()
    finite_expected = torch.isfinite(expected_f)
    special_differs = (torch.isfinite(got_f) != finite_expected) | (
        ~finite_expected & (got_f != expected_f) & ~(torch.isnan(got_f) & torch.isnan(expected_f)))
    error = (got_f - expected_f).abs()
    error[~finite_expected] = 0.0
    error = torch.nan_to_num(error, nan=float("inf"))
    bound = atol + rtol * expected_f.abs()
    bound[~finite_expected] = 0.0
    bad = (error > bound) | special_differs
    if not bad.any():
        return None, ""
    index = tuple(int(i) for i in bad.nonzero()[0])
    if special_differs.any():
        return index, "the positions of inf/nan values differ from the expected ones"
    return index, f"max abs error {error.max().item():.4g}"


def close(got: Any, expected: torch.Tensor, what: str, inputs: Any = "", atol: float = 1e-5,
          rtol: float = 1e-4, hint: str = "") -> None:
    """``got`` must be a tensor of ``expected``'s shape with values within tolerance.

    ``inputs`` is a description of the input, or the input tensor itself: then
    the failure shows its row that produced the first wrong entry.
    """
    got = tensor(got, what)
    has_input = isinstance(inputs, torch.Tensor) or bool(inputs)
    if tuple(got.shape) != tuple(expected.shape):
        context = f"\n  input: {_input_text(inputs, None)}" if has_input else ""
        raise CheckFailure(f"{what} returned the wrong shape.{context}\n"
                           f"  expected shape {tuple(expected.shape)}, got shape {tuple(got.shape)}."
                           + (f"\n  {hint}" if hint else ""))
    index, summary = first_wrong(got, expected, atol, rtol)
    if index is None:
        return
    context = f"\n  input: {_input_text(inputs, index)}" if has_input else ""
    raise CheckFailure(
        f"{what} returned wrong values.{context}\n"
        f"  expected {show(expected, index)}\n"
        f"  got      {show(got, index)}\n"
        f"  {summary}; first wrong entry at index {index}: expected {expected.double()[index].item():.6g}, "
        f"got {got.double()[index].item():.6g}" + (f"\n  {hint}" if hint else ""))


def equal(got: Any, expected: Any, what: str, inputs: Any = "", hint: str = "") -> None:
    """Exact equality of plain values (ids, lists, strings) or integer tensors."""
    if isinstance(expected, torch.Tensor):
        got = tensor(got, what)
        ok = tuple(got.shape) == tuple(expected.shape) and torch.equal(got.to(expected.dtype), expected)
    else:
        ok = type(got) is type(expected) and got == expected
    if ok:
        return
    has_input = isinstance(inputs, torch.Tensor) or bool(inputs)
    context = f"\n  input: {_input_text(inputs, None)}" if has_input else ""
    if isinstance(expected, torch.Tensor) and tuple(got.shape) == tuple(expected.shape):
        index = tuple(int(i) for i in (got.to(expected.dtype) != expected).nonzero()[0])
        raise CheckFailure(f"{what} returned the wrong result.{context}\n"
                           f"  expected {show(expected, index)}\n"
                           f"  got      {show(got, index)}\n"
                           f"  first wrong entry at index {index}: expected {expected[index].item()}, "
                           f"got {got[index].item()}" + (f"\n  {hint}" if hint else ""))
    raise CheckFailure(f"{what} returned the wrong result.{context}\n"
                       f"  expected: {_value(expected)}\n"
                       f"  got:      {_value(got)}" + (f"\n  {hint}" if hint else ""))


def _value(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return describe_tensor(value) + (f": {_nested(value.tolist())}" if value.numel() <= SMALL else "")
    return _short(value)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def true(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailure(message)


def raises(call, exception: type[BaseException], what: str) -> None:
    """``call()`` must raise ``exception`` (in the student's code).

    A function not written yet (NotImplementedError) or one that uses what it may not is reported as
    such, as a value check would: only another exception is the wrong one.
    """
    try:
        call()
    except CheckFailure as failure:
        if failure.status != "exception":
            raise
        if exception.__name__ in failure.message:
            return
        raise CheckFailure(f"{what} should raise {exception.__name__}, but: {failure.message}") from None
    raise CheckFailure(f"{what} should raise {exception.__name__}, but it returned normally.")


@contextlib.contextmanager
def blame(sub, *names: str) -> Iterator[None]:
    """Run a check's block; if it fails, see whether an earlier function of the notebook is the cause.

    ``names`` are the student's own functions the checked code may call
    (MultiHeadAttention calls scaled_dot_product_attention). When the block
    fails and one of them, defined in the submission, fails its own public
    check, the message names it as the cause instead of describing the symptom,
    and the failure is a :class:`DependencyFailure` listing every one that fails:
    :func:`autograder.runner.run_check` runs the check again with the library's
    reference in their place, so that one mistake costs its points once.
    While that re-run is under way (``sub.substituting``) nothing is blamed.
    """
    try:
        yield
    except CheckFailure as failure:
        if failure.status not in (FAILED, EXCEPTION, NOT_IMPLEMENTED) or getattr(sub, "substituting", False):
            raise
        wrong = _failing_dependencies(sub, names)
        if not wrong:
            raise
        name, check_id, found, _ = wrong[0]
        raise DependencyFailure(f"your `{name}` is the cause: fix it first; see its check ({check_id}). "
                                f"What that check finds:\n" + textwrap.indent(found, "  | "), failure.status,
                                wrong) from None


def _failing_dependencies(sub, names) -> list[tuple[str, str, str, str]]:
    """(name, its public check's id, what that check finds, its reference) for each of ``names`` that fails."""
    from autograder.grading.registry import load_checks

    public = {c.target: c for c in load_checks(include_hidden=False) if c.id == f"{c.target}_public"}
    wrong = []
    for name in names:
        if sub.describe(name).get("kind") == "missing" or name not in public:
            continue
        entry = public[name]
        try:
            entry.function(sub)
        except CheckFailure as found:
            wrong.append((name, entry.id, found.message, entry.reference))
        except Exception as error:  # noqa: BLE001 - a dependency that hangs or crashes the worker is the cause
            if type(error).__name__ != "WorkerError":
                raise
            wrong.append((name, entry.id, f"it did not finish ({error})", entry.reference))
    return wrong
