"""What a submission is given, copied before a call and compared after it.

A check hands the student's code its own copies of the inputs (in the grader
they are decoded afresh in the worker; in the notebook :func:`private_copy`
makes the same copies), and computes every expected value from the originals.
After the call it compares the copies with what they were: a function that
wrote into a tensor or a list it was given fails with a message naming that
input, in the notebook and in the grader alike. Objects the checks built in
the submission (a model, a cache, an optimiser's parameters) are not inputs
in this sense: changing them is often the contract, and each check reads
them back itself.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

DATA = (int, float, bool, str, bytes, type(None))


def private_copy(value: Any) -> Any:
    """A copy of the data in ``value`` (tensors, generators, containers), other objects as they are.

    What the worker's decoding gives a submission: fresh tensors and an
    independent generator in the same state, so that nothing the student's
    code does to them reaches the check's own values.
    """
    if type(value) is torch.Tensor:  # a Parameter or a subclass is an object a check built: not copied
        return value.detach().clone()
    if type(value) is torch.Generator:
        copy = torch.Generator()
        copy.set_state(value.get_state())
        return copy
    if type(value) is tuple:
        return tuple(private_copy(v) for v in value)
    if type(value) is list:
        return [private_copy(v) for v in value]
    if type(value) is dict:
        return {k: private_copy(v) for k, v in value.items()}
    return value


def _is_data(value: Any) -> bool:
    """Plain data a check sent (exact types: an object the check built in the submission is not an input)."""
    if type(value) is torch.Tensor or type(value) in DATA:
        return True
    if type(value) in (list, tuple):
        return all(_is_data(v) for v in value)
    if type(value) is dict:
        return all(_is_data(v) for v in value.values())
    return False


def _frozen(value: Any) -> Any:
    """A deep copy of plain data (tensors cloned), to compare with later."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, list):
        return [_frozen(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return {k: _frozen(v) for k, v in value.items()}
    return value


def _same(now: Any, before: Any) -> bool:
    if isinstance(before, torch.Tensor):
        if not isinstance(now, torch.Tensor) or now.dtype != before.dtype or now.shape != before.shape:
            return False
        now, before = now.detach(), before
        if now.is_floating_point() or now.is_complex():
            return bool(((now == before) | (torch.isnan(now) & torch.isnan(before))).all())
        return torch.equal(now, before)
    if isinstance(before, (list, tuple)):
        return type(now) is type(before) and len(now) == len(before) and all(
            _same(a, b) for a, b in zip(now, before))
    if isinstance(before, dict):
        return isinstance(now, dict) and now.keys() == before.keys() and all(
            _same(now[k], before[k]) for k in before)
    return type(now) is type(before) and now == before


def _parameter_names(function: Callable, args: tuple, kwargs: dict) -> tuple[list[str], list[str]]:
    """The names the function gives its positional and keyword arguments (``argument 2`` when unknown)."""
    target = function
    owner = getattr(function, "__self__", None)
    if getattr(function, "__name__", "") in ("__call__", "_wrapped_call_impl") and hasattr(owner, "forward"):
        target = owner.forward  # an nn.Module called: its forward's parameters
    try:
        parameters = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    positional = [p.name for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    names = [positional[i] if i < len(positional) else f"argument {i + 1}" for i in range(len(args))]
    return names, list(kwargs)


def student_code(function: Callable) -> bool:
    """Whether ``function`` (a function, a class, or a bound method) is the submission's own code.

    The book's library and torch are not: they may fill what they are given
    (``GradientFeed.run`` sets gradients, ``load_state_dict`` copies weights in).
    """
    owner = getattr(function, "__self__", None)
    if owner is not None and not inspect.ismodule(owner):
        module = type(owner).__module__
    else:
        module = getattr(function, "__module__", "")
    return not str(module or "").startswith(("tinyllm", "torch", "builtins"))


class Watch:
    """The data inputs of one call, kept to find the ones the call changed."""

    def __init__(self, function: Callable, args: tuple, kwargs: dict):
        self.args, self.kwargs = args, kwargs
        positional, keywords = _parameter_names(function, args, kwargs)
        self.kept = [(name, value, _frozen(value)) for name, value in zip(positional, args) if _is_data(value)]
        self.kept += [(name, kwargs[name], _frozen(kwargs[name])) for name in keywords if _is_data(kwargs[name])]

    def changed(self) -> list[str]:
        """Names of the inputs that are no longer what they were."""
        return [name for name, value, before in self.kept
                if not isinstance(value, DATA) and not _same(value, before)]


def changed_message(label: str, names: list[str]) -> str:
    quoted = ", ".join(f"`{n}`" for n in names)
    plural = "inputs" if len(names) > 1 else "input"
    return (f"your `{label}` changed its {plural} {quoted} in place. The caller still needs what it passed "
            f"in (here the checks, which compute the expected result from it): leave the {plural} as "
            "given and compute new values instead (`x * s` rather than `x.mul_(s)` or `x *= s`; a new list "
            "rather than `ids.append(...)` or `ids[i] = ...`).")
