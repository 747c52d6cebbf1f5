"""The optimiser, the learning-rate schedule and gradient clipping, written out (chapter 8).

Three small pieces of the training loop that PyTorch also ships, written here
so that chapter 8 can show them and exercise 9 can grade them. Each names the
PyTorch call it equals, and ``tests/test_optim.py`` proves it:

* :class:`AdamW` is ``torch.optim.AdamW`` (its default, non-AMSGrad form);
* :func:`cosine_lr` is the book's warm-up + cosine schedule (PyTorch has no
  single equivalent; ``LambdaLR`` with this function is one);
* :func:`clip_grad_norm` is ``torch.nn.utils.clip_grad_norm_`` with the 2-norm.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay (Loshchilov & Hutter): step for step ``torch.optim.AdamW``.

    For each parameter ``p`` with a gradient ``g``, at its ``t``-th update
    (counted per parameter, from 1):

    1. decay, decoupled from the gradient: ``p <- p * (1 - lr * weight_decay)``;
    2. moments: ``m <- b1 m + (1 - b1) g``, ``v <- b2 v + (1 - b2) g^2``;
    3. bias correction: ``m_hat = m / (1 - b1^t)``, ``v_hat = v / (1 - b2^t)``;
    4. update: ``p <- p - lr * m_hat / (sqrt(v_hat) + eps)``.

    Parameters whose ``grad`` is None are skipped entirely: no decay, no
    moment update, no step counted. Each param group may set its own ``lr``,
    ``betas``, ``eps`` and ``weight_decay``. The state of a parameter is
    ``step``, ``exp_avg`` (m) and ``exp_avg_sq`` (v), the names PyTorch uses,
    so the two load each other's state dicts.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError(f"lr, eps and weight_decay must be >= 0, got {lr}, {eps}, {weight_decay}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["step"] = t = int(state["step"]) + 1
                m, v = state["exp_avg"], state["exp_avg_sq"]
                p.mul_(1 - lr * decay)  # decoupled: the decay never passes through m and v
                m.mul_(beta1).add_(grad, alpha=1 - beta1)
                v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                # Bias correction: early on m and v are biased towards their zero start.
                bias1, bias2 = 1 - beta1**t, 1 - beta2**t
                denom = (v.sqrt() / math.sqrt(bias2)).add_(eps)  # sqrt(v_hat) + eps
                p.addcdiv_(m, denom, value=-lr / bias1)  # p - lr * m_hat / (sqrt(v_hat) + eps)
        return loss


def cosine_lr(step: int, warmup_steps: int, max_steps: int, lr: float, min_lr: float) -> float:
    """The learning rate of update ``step``: linear warm-up, then half a cosine from ``lr`` to ``min_lr``.

    Steps are counted from 0, and step 0 is the first update: during warm-up
    step ``s`` uses ``lr * (s + 1) / warmup_steps``, so step 0 already moves
    (at ``lr / warmup_steps``, not at 0) and step ``warmup_steps - 1`` uses the
    full ``lr``. From step ``warmup_steps`` the rate follows
    ``min_lr + (lr - min_lr) * (1 + cos(pi * progress)) / 2`` with progress
    going from 0 (``lr``) to 1 at step ``max_steps`` (``min_lr``), and stays
    at ``min_lr`` after it. ``warmup_steps=0`` starts the cosine at once.
    """
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if step >= max_steps:
        return min_lr
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)  # 0 -> 1
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))  # 1 -> 0
    return min_lr + (lr - min_lr) * cosine


@torch.no_grad()
def clip_grad_norm(parameters: Iterable[Tensor] | Tensor, max_norm: float) -> Tensor:
    """Scale all gradients together so that their total 2-norm is at most ``max_norm``; return the norm before.

    The total norm treats every gradient as one long vector. All gradients are
    multiplied by ``min(1, max_norm / (norm + 1e-6))``, in place, so their
    direction is kept. Parameters without a gradient are ignored. Equals
    ``torch.nn.utils.clip_grad_norm_(parameters, max_norm)``.
    """
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    scale = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for g in grads:
        g.mul_(scale.to(g.dtype))
    return norm


class GradientFeed(list):
    """Param groups whose gradients are set from plain tensors: an optimiser driven from outside (the checks).

    ``GradientFeed(values, groups)`` holds a copy of each tensor of ``values``
    as a parameter; ``groups`` is a list of ``(indices, options)``, one param
    group each (``options`` such as ``{"weight_decay": 0.0}``). The object is
    itself the list of param-group dicts an optimiser takes.
    ``run(optimizer, grads)`` gives the parameters the gradients of each step
    (a list per step, ``None`` for no gradient), calls ``optimizer.step()``
    after each, and returns the parameters' values after every step.
    """

    def __init__(self, values: list[Tensor], groups: list[tuple[list[int], dict]]):
        self.params = [torch.nn.Parameter(torch.as_tensor(v).clone()) for v in values]
        super().__init__({"params": [self.params[i] for i in indices], **options} for indices, options in groups)

    def run(self, optimizer: torch.optim.Optimizer, grads: list[list[Tensor | None]]) -> list[list[Tensor]]:
        trajectory = []
        for step_grads in grads:
            for p, g in zip(self.params, step_grads):
                p.grad = None if g is None else torch.as_tensor(g).clone()
            optimizer.step()
            trajectory.append([p.detach().clone() for p in self.params])
        return trajectory


class GradientList(list):
    """Parameters with the given gradients, as a plain list: gradient clipping driven from outside (the checks).

    ``GradientList(values, grads)`` holds a parameter per tensor of ``values``
    whose ``grad`` is the matching tensor of ``grads`` (``None``: no gradient);
    ``grads()`` returns the gradients as they are now.
    """

    def __init__(self, values: list[Tensor], grads: list[Tensor | None]):
        super().__init__(torch.nn.Parameter(torch.as_tensor(v).clone()) for v in values)
        for p, g in zip(self, grads):
            p.grad = None if g is None else torch.as_tensor(g).clone()

    def grads(self) -> list[Tensor | None]:
        return [None if p.grad is None else p.grad.clone() for p in self]


def read_once(parameters: GradientList) -> Iterator[torch.nn.Parameter]:
    """The parameters as a generator, which can be read only once, as ``model.parameters()`` (for the checks)."""
    return (p for p in parameters)


def alone(parameters: GradientList) -> torch.nn.Parameter:
    """The first parameter by itself: clipping handed a single tensor (for the checks)."""
    return parameters[0]
