"""tinyllm.optim equals what PyTorch ships: AdamW, clip_grad_norm_; and the schedule's endpoints."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tinyllm.optim import AdamW, GradientFeed, clip_grad_norm, cosine_lr
from tinyllm.train import TrainConfig, lr_at


def small_model(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3))


def train_with(optimizer_class, steps: int, **options) -> tuple[list[torch.Tensor], torch.nn.Module]:
    """``steps`` updates of a small model with three param groups, one parameter never getting a gradient."""
    model = small_model(0)
    frozen = torch.nn.Parameter(torch.randn(4, generator=torch.Generator().manual_seed(1)))
    first, norm, last = model[0], model[1], model[2]
    groups = [
        {"params": [first.weight, last.weight], "weight_decay": 0.1},
        {"params": [first.bias, last.bias, norm.weight, norm.bias], "weight_decay": 0.0, "lr": 3e-3},
        {"params": [frozen], "weight_decay": 0.5, "betas": (0.8, 0.9)},
    ]
    optimizer = optimizer_class(groups, **options)
    g = torch.Generator().manual_seed(2)
    for step in range(steps):
        x, y = torch.randn(16, 6, generator=g), torch.randint(3, (16,), generator=g)
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        if step % 3 == 0:  # a parameter that gets a gradient only on some steps
            loss = loss + last.bias.square().sum()
        loss.backward()
        if step % 5 == 4:  # and one that skips a step now and then
            first.bias.grad = None
        optimizer.step()
    return [p.detach().clone() for p in [*model.parameters(), frozen]], model


@pytest.mark.parametrize("options", [dict(lr=1e-2), dict(lr=5e-3, betas=(0.9, 0.95), eps=1e-6, weight_decay=0.2)])
def test_adamw_equals_torch_over_many_steps(options):
    ours, _ = train_with(AdamW, 60, **options)
    theirs, _ = train_with(torch.optim.AdamW, 60, **options)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert torch.equal(ours[-1], torch.randn(4, generator=torch.Generator().manual_seed(1))), "no grad: untouched"


def test_adamw_defaults_and_state_names_match_torch():
    p = torch.nn.Parameter(torch.ones(3))
    ours, theirs = AdamW([p]), torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))])
    for key in ("lr", "betas", "eps", "weight_decay"):
        assert ours.defaults[key] == theirs.defaults[key]
    p.grad = torch.ones(3)
    ours.step()
    assert set(ours.state[p]) == {"step", "exp_avg", "exp_avg_sq"}
    with pytest.raises(ValueError):
        AdamW([p], betas=(0.9, 1.0))


def test_adamw_loads_torch_state():
    """A checkpoint written with torch.optim.AdamW continues identically under ours."""
    model_a, model_b = small_model(3), small_model(3)
    torch_opt = torch.optim.AdamW(model_a.parameters(), lr=1e-2)
    x = torch.randn(5, 6)
    for _ in range(3):
        torch_opt.zero_grad()
        model_a(x).square().mean().backward()
        torch_opt.step()
    model_b.load_state_dict(model_a.state_dict())
    ours = AdamW(model_b.parameters(), lr=1e-2)
    ours.load_state_dict(copy.deepcopy(torch_opt.state_dict()))  # not the live moments torch keeps using
    for model, opt in ((model_a, torch_opt), (model_b, ours)):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_gradient_feed_drives_an_optimizer_like_a_loop():
    values = [torch.randn(3, 2), torch.randn(2)]
    feed = GradientFeed(values, [([0], {"weight_decay": 0.1}), ([1], {"weight_decay": 0.0})])
    grads = [[torch.ones(3, 2), None], [torch.full((3, 2), -2.0), torch.ones(2)]]
    got = feed.run(AdamW(feed, lr=0.1), grads)
    params = [torch.nn.Parameter(v.clone()) for v in values]
    reference = torch.optim.AdamW([{"params": [params[0]], "weight_decay": 0.1},
                                   {"params": [params[1]], "weight_decay": 0.0}], lr=0.1)
    for step_grads, after in zip(grads, got):
        for p, g in zip(params, step_grads):
            p.grad = g
        reference.step()
        for p, a in zip(params, after):
            torch.testing.assert_close(a, p.detach())


@pytest.mark.parametrize("max_norm", [0.05, 1.0, 1e3])
def test_clip_grad_norm_equals_torch(max_norm):
    def grads_of(seed):
        model = small_model(seed)
        model(torch.randn(7, 6, generator=torch.Generator().manual_seed(4))).pow(3).sum().backward()
        model[1].bias.grad = None  # a parameter without a gradient is ignored
        return model

    ours, theirs = grads_of(5), grads_of(5)
    norm = clip_grad_norm(ours.parameters(), max_norm)
    expected = torch.nn.utils.clip_grad_norm_(theirs.parameters(), max_norm)
    torch.testing.assert_close(norm, expected)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        assert (a.grad is None) == (b.grad is None)
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad)
    total = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in ours.parameters() if p.grad is not None]))
    assert total <= max_norm + 1e-4


def test_clip_grad_norm_single_tensor_and_no_grads():
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([3.0, 4.0])
    assert clip_grad_norm(p, 1.0).item() == pytest.approx(5.0)
    torch.testing.assert_close(p.grad, torch.tensor([0.6, 0.8]), atol=1e-6, rtol=0)
    assert clip_grad_norm([torch.nn.Parameter(torch.ones(2))], 1.0).item() == 0.0


def test_cosine_lr_endpoints_and_convention():
    lr, low = 6e-3, 6e-4
    assert cosine_lr(0, 50, 1200, lr, low) == pytest.approx(lr / 50)  # step 0 moves, at lr / warmup
    assert cosine_lr(49, 50, 1200, lr, low) == pytest.approx(lr)  # the last warm-up step: the full rate
    assert cosine_lr(50, 50, 1200, lr, low) == pytest.approx(lr)  # the cosine starts at the peak
    assert cosine_lr(625, 50, 1200, lr, low) == pytest.approx((lr + low) / 2)  # halfway down
    assert cosine_lr(1200, 50, 1200, lr, low) == pytest.approx(low)
    assert cosine_lr(5000, 50, 1200, lr, low) == low
    assert cosine_lr(0, 0, 100, lr, low) == pytest.approx(lr)  # no warm-up: the cosine from step 0
    rates = [cosine_lr(s, 50, 1200, lr, low) for s in range(1201)]
    assert all(a <= b for a, b in zip(rates[:50], rates[1:51])) and all(a >= b for a, b in zip(rates[50:], rates[51:]))
    config = TrainConfig()
    assert all(lr_at(s, config) == cosine_lr(s, config.warmup_steps, config.max_steps, config.lr, config.min_lr)
               for s in range(0, 1300, 7))
    assert math.isclose(lr_at(0, config), config.lr / config.warmup_steps)
