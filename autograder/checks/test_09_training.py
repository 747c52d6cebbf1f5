"""Public checks for 09_training: AdamW, cosine_lr, clip_grad_norm.

Their oracles: torch.optim.AdamW, torch.nn.utils.clip_grad_norm_, and the schedule's closed form.
The submission's optimiser steps parameters that live in its own process (``tinyllm.optim.GradientFeed``):
the check sends the gradients of every step and reads the parameters back.
"""

from __future__ import annotations

import math

import torch

from autograder.grading import expect
from autograder.sandbox.forbidden import GROUPS
from autograder.grading.registry import check

BOOK = "book/08_tiny_gpt.html"
# Building any torch.optim.Optimizer (the student's AdamW too) first imports torch._dynamo: seconds, once.
IMPORT_BEFORE_TIMING = ("torch._dynamo",)


def adamw_class(sub):
    return sub.cls("AdamW", ["params", "lr", "betas", "eps", "weight_decay"], forbid=GROUPS["adamw"])


def problem(seed: int, shapes: list[tuple[int, ...]], steps: int, skip: dict[int, set[int]]):
    """Initial values and ``steps`` gradients per parameter; parameter i gets no gradient at the steps in skip[i]."""
    g = torch.Generator().manual_seed(seed)
    values = [torch.randn(*shape, generator=g) for shape in shapes]
    grads = [[None if t in skip.get(i, ()) else torch.randn(*shape, generator=g) * (1 + i)
              for i, shape in enumerate(shapes)] for t in range(steps)]
    return values, grads


def adamw_variant(values, groups, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, *,
                  l2=False, bias_correction=True, decay="before", decay_times_lr=True, shared_step=False,
                  decay_without_grad=False, corrected_state=False, group_settings=True):
    """AdamW written plainly, with switches for the usual mistakes; the defaults give torch.optim.AdamW.

    ``decay``: "before" the update (AdamW), "after" it, or "none" (lost: ``p = p * ...`` rebinds a name);
    ``l2``: add weight_decay * p to the gradient instead; ``shared_step``: one step count for all parameters
    (bias correction of the optimiser's steps, not the parameter's); ``decay_without_grad``: decay parameters
    that have no gradient this step too; ``corrected_state``: the bias correction written into the stored m
    and v (``m.div_(1 - beta1**t)``), so the next step starts from the corrected moments; ``group_settings``
    False: every group stepped with the optimiser's defaults instead of its own settings.
    """
    params = [v.clone().double() for v in values]
    settings = {}
    defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
    for indices, options in groups:
        for i in indices:
            settings[i] = {**defaults, **options} if group_settings else dict(defaults)
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    t = [0] * len(params)
    trajectory = []
    for step, step_grads in enumerate(grads):
        for i, p in enumerate(params):
            s = settings.get(i)
            if s is None:
                continue
            rate = s["lr"] if decay_times_lr else 1.0
            shrink = 1 - rate * s["weight_decay"]
            if step_grads[i] is None:
                if decay_without_grad:
                    p.mul_(shrink)
                continue
            grad = step_grads[i].double()
            if l2:
                grad = grad + s["weight_decay"] * p
            elif decay == "before":
                p.mul_(shrink)
            t[i] = step + 1 if shared_step else t[i] + 1
            b1, b2 = s["betas"]
            m[i] = b1 * m[i] + (1 - b1) * grad
            v[i] = b2 * v[i] + (1 - b2) * grad * grad
            m_hat = m[i] / (1 - b1 ** t[i]) if bias_correction else m[i]
            v_hat = v[i] / (1 - b2 ** t[i]) if bias_correction else v[i]
            if corrected_state:
                m[i], v[i] = m_hat, v_hat
            p.sub_(s["lr"] * m_hat / (v_hat.sqrt() + s["eps"]))
            if not l2 and decay == "after":
                p.mul_(shrink)
        trajectory.append([p.float() for p in params])
    return trajectory


ADAMW_MISTAKES = {
    "Weight decay went through the gradient (L2 regularisation, Adam's weight_decay): AdamW decays the "
    "parameter itself, p <- p * (1 - lr * weight_decay), and never adds weight_decay * p to the gradient "
    "that feeds m and v.": dict(l2=True),
    "No bias correction: divide m by (1 - beta1^t) and v by (1 - beta2^t), t the parameter's own step count "
    "from 1, before the update.": dict(bias_correction=False),
    "Weight decay is on the wrong step: shrink the parameter before the Adam update "
    "(p <- p * (1 - lr * weight_decay), then p <- p - lr * m_hat / (sqrt(v_hat) + eps)), not after it.":
        dict(decay="after"),
    "Weight decay is not scaled by the learning rate: the decay of a step is p <- p * (1 - lr * weight_decay), "
    "with the group's lr of this step.": dict(decay_times_lr=False),
    "Parameters without a gradient were decayed: a parameter whose grad is None is skipped entirely.":
        dict(decay_without_grad=True),
    "The bias correction counts the optimiser's steps, not the parameter's: a parameter skipped on some steps "
    "(grad None) keeps its own count, state['step'], which only its own updates increase.": dict(shared_step=True),
    "The weight decay never reached the parameters: `p = p * (1 - lr * weight_decay)` makes a new tensor and "
    "rebinds the name p, leaving the parameter as it was; shrink it in place, p.mul_(1 - lr * weight_decay).":
        dict(decay="none"),
    "The bias correction was written into the stored moments (m.div_(1 - beta1**t) or the like), so the next "
    "step starts from the corrected m and v: keep m and v as they are and compute m_hat and v_hat as new "
    "tensors.": dict(corrected_state=True),
    "Every group was stepped with the optimiser's defaults (self.defaults, or the constructor's arguments): "
    "read lr, betas, eps and weight_decay from each group, group['lr'] and so on, since a group may set its "
    "own.": dict(group_settings=False),
}


def run_adamw(sub, cls, values, groups, grads, with_state=False, **options):
    """The submission's AdamW on its own copies of ``values``: the parameters after every step
    (and, ``with_state``, the optimiser's state_dict() after the last)."""
    feed = sub.library("tinyllm.optim:GradientFeed")(values, groups)
    feed.forbid = list(GROUPS["adamw"])  # the steps run the student's code
    optimizer = cls(feed, **options)
    trajectory = feed.method("run", optimizer, grads)
    return (trajectory, optimizer.method("state_dict")) if with_state else trajectory


def compare_states(got, expected, what):
    """The optimiser's state after the last step: step, exp_avg (m) and exp_avg_sq (v) per parameter, by
    PyTorch's names and numbering (parameters numbered in param-group order, as state_dict() does)."""
    expect.true(isinstance(got, dict) and isinstance(got.get("state"), dict),
                f"{what}: AdamW.state_dict() did not return the optimiser's state.")
    for number, reference in expected["state"].items():
        state = got["state"].get(number)
        missing = [k for k in ("step", "exp_avg", "exp_avg_sq") if not isinstance(state, dict) or k not in state]
        expect.true(not missing, f"{what}: the state of parameter number {number} has no {', '.join(missing)}. "
                    "Keep self.state[p]['step'], ['exp_avg'] (m) and ['exp_avg_sq'] (v), PyTorch's names, so "
                    "that the two optimisers load each other's state.")
        step = state["step"]
        counted = float(step) if isinstance(step, (int, float)) or (
            isinstance(step, torch.Tensor) and step.numel() == 1) else None
        expect.true(counted == float(reference["step"]),
                    f"{what}: state['step'] of parameter number {number} is {step!r} after the last step; "
                    f"expected {int(reference['step'])}, the updates that parameter received.")
        for name, label in (("exp_avg", "m"), ("exp_avg_sq", "v")):
            expect.close(state[name], reference[name], f"{what}: state['{name}'] ({label}) of parameter number "
                         f"{number} after the last step", atol=1e-6, rtol=1e-4)


def compare_trajectories(got, expected, what, values, groups, grads, options, atol=1e-5):
    """The first step and parameter where ``got`` leaves ``expected``, with the mistake it matches if any."""
    expect.true(isinstance(got, list) and len(got) == len(expected),
                f"{what}: the parameters could not be read back after each step.")
    for step, (got_step, expected_step) in enumerate(zip(got, expected)):
        for i, (a, b) in enumerate(zip(got_step, expected_step)):
            if isinstance(a, torch.Tensor) and a.shape == b.shape and torch.allclose(a, b, atol=atol, rtol=1e-4):
                continue
            hint = (f"Parameter {i} is the first to differ, after step {step + 1}"
                    + (" (every parameter was right after the steps before)." if step else ".")
                    + f" Its settings: {settings_of(i, groups, options)}.")
            if isinstance(a, torch.Tensor) and a.shape == b.shape and torch.equal(a, values[i].float()):
                hint = (f"Parameter {i} never changed. step() must change each parameter itself, in place "
                        "(p.mul_, p.addcdiv_): `p = p * ...` or `p = p - ...` make a new tensor and rebind the "
                        "name p, so every later operation updates that copy and the parameter stays as it was.")
            elif isinstance(a, torch.Tensor) and a.shape == b.shape:
                for text, mistake in ADAMW_MISTAKES.items():
                    wrong = adamw_variant(values, groups, grads, **options, **mistake)[step][i]
                    if torch.allclose(a, wrong, atol=atol, rtol=1e-4):
                        hint = text
                        break
            expect.close(a, b, f"{what}: parameter {i} after step {step + 1}", atol=atol, hint=hint)


def settings_of(i: int, groups, options) -> str:
    """Parameter ``i``'s group settings, as the message names them."""
    defaults = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01, **options}
    for number, (indices, overrides) in enumerate(groups):
        if i in indices:
            merged = {**defaults, **overrides}
            return (f"group {number}, lr {merged['lr']:g}, betas {merged['betas']}, eps {merged['eps']:g}, "
                    f"weight_decay {merged['weight_decay']:g}")
    return "in no group"


def torch_trajectory(values, groups, grads, with_state=False, **options):
    """torch.optim.AdamW, the public oracle, on the same parameters and gradients."""
    from tinyllm.optim import GradientFeed

    feed = GradientFeed(values, groups)
    optimizer = torch.optim.AdamW(feed, **options)
    trajectory = feed.run(optimizer, grads)
    return (trajectory, optimizer.state_dict()) if with_state else trajectory


@check("09_training", "AdamW", points=3, book=BOOK + "#the-optimiser")
def test_AdamW_public(sub):
    """AdamW matches torch.optim.AdamW step for step: two param groups, weight decay, a parameter skipped."""
    cls = adamw_class(sub)
    values, grads = problem(0, [(3, 4), (4,), (2, 3)], steps=12, skip={2: {0, 1, 5, 6, 7}})
    # Group 0: matrices with decay (the one often without a gradient first); group 1: a bias with its own rate
    # and no decay.
    groups = [([2, 0], {"weight_decay": 0.5}), ([1], {"weight_decay": 0.0, "lr": 0.02})]
    options = dict(lr=0.05, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    got, state = run_adamw(sub, cls, values, groups, grads, with_state=True, **options)
    what = ("AdamW(groups, lr=0.05, betas=(0.9, 0.95)) with weight_decay 0.5 on parameters 0 and 2 (parameter 2 "
            "without a gradient at steps 1, 2, 6, 7 and 8) and a group with lr 0.02 and no decay")
    expected, expected_state = torch_trajectory(values, groups, grads, with_state=True, **options)
    compare_trajectories(got, expected, what, values, groups, grads, options)
    compare_states(state, expected_state, what)
    short = [step[:2] for step in grads[:3]]
    plain = [([0, 1], {})]
    compare_trajectories(run_adamw(sub, cls, values[:2], plain, short), torch_trajectory(values[:2], plain, short),
                         "AdamW(params) with its defaults (lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)",
                         values[:2], plain, short, {})


@check("09_training", "cosine_lr", points=2, book=BOOK + "#the-learning-rate-schedule")
def test_cosine_lr_public(sub):
    """cosine_lr: warm-up from lr / warmup_steps at step 0 to lr, half a cosine down to min_lr at max_steps."""
    cosine_lr = sub.function("cosine_lr", ["step", "warmup_steps", "max_steps", "lr", "min_lr"],
                             forbid=GROUPS["schedule"])
    lr, low, warm, total = 6e-3, 6e-4, 50, 1200
    cases = {
        0: (lr / warm, "step 0 is the first update: during warm-up step s uses lr * (s + 1) / warmup_steps, so "
                       "step 0 uses lr / warmup_steps, not 0."),
        24: (lr * 25 / warm, "During warm-up step s uses lr * (s + 1) / warmup_steps."),
        warm - 1: (lr, "The last warm-up step, warmup_steps - 1, uses the full lr."),
        warm: (lr, "The cosine starts at the peak: step warmup_steps uses lr."),
        (warm + total) // 2: (low + (lr - low) * 0.5 * (1 + math.cos(math.pi * ((total - warm) // 2) / (total - warm))),
                              "After warm-up: min_lr + (lr - min_lr) * (1 + cos(pi * progress)) / 2, with progress "
                              "= (step - warmup_steps) / (max_steps - warmup_steps)."),
        total: (low, "At max_steps the cosine has reached min_lr."),
        total + 300: (low, "After max_steps the rate stays at min_lr."),
    }
    for step, (expected, hint) in cases.items():
        got = cosine_lr(step, warm, total, lr, low)
        expect.true(isinstance(got, (int, float)) and not isinstance(got, bool),
                    f"cosine_lr should return a float; cosine_lr({step}, {warm}, {total}, {lr}, {low}) returned "
                    f"{expect.describe_tensor(got)}.")
        if step == 0 and isinstance(got, (int, float)) and abs(got) < 1e-12:
            hint = ("Your schedule starts at 0: " + hint + " A step at rate 0 would be an update that does "
                    "nothing.")
        expect.true(math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-12),
                    f"cosine_lr(step={step}, warmup_steps={warm}, max_steps={total}, lr={lr}, min_lr={low}) "
                    f"returned {got:.6g}; expected {expected:.6g}. {hint}")
    for step, expected, what in ((29, lr, "the last warm-up step"), (30, low, "max_steps itself")):
        got = cosine_lr(step, 30, 30, lr, low)
        expect.true(isinstance(got, (int, float)) and math.isclose(got, expected, rel_tol=1e-6),
                    f"cosine_lr({step}, warmup_steps=30, max_steps=30, lr={lr}, min_lr={low}) ({what}, with no "
                    f"cosine between) returned {got!r}; expected {expected}: the warm-up ends at lr and from "
                    "max_steps on the rate is min_lr.")
    got = cosine_lr(0, 0, 100, lr, low)
    expect.true(isinstance(got, (int, float)) and math.isclose(got, lr, rel_tol=1e-6),
                f"cosine_lr(0, warmup_steps=0, max_steps=100, lr={lr}, min_lr={low}) returned {got!r}; expected "
                f"{lr}: without warm-up the cosine starts at once, at the peak (and never divides by 0).")


def clip_function(sub):
    return sub.function("clip_grad_norm", ["parameters", "max_norm"], forbid=GROUPS["clip"])


def clip_mistakes(grads, max_norm):
    """What the usual mistakes return: (text, grads after)."""
    per_parameter = [None if g is None else g * min(1.0, max_norm / (g.norm().item() + 1e-6)) for g in grads]
    by_value = [None if g is None else g.clamp(-max_norm, max_norm) for g in grads]
    total = math.sqrt(sum(g.pow(2).sum().item() for g in grads if g is not None))
    scaled_up = [None if g is None else g * (max_norm / (total + 1e-6)) for g in grads]
    return {
        "You clipped each parameter's gradient by its own norm. Clipping by the global norm treats all gradients "
        "as one vector: compute one total norm over all of them and scale every gradient by the same factor.":
            per_parameter,
        "You clipped by value (each entry to [-max_norm, max_norm]): that changes the gradient's direction. "
        "Scale all gradients by max_norm / (total_norm + 1e-6) when the total 2-norm is above max_norm.": by_value,
        "Gradients whose norm is already below max_norm must stay as they are: the factor is "
        "min(1, max_norm / (total_norm + 1e-6)), never above 1.": scaled_up,
    }


def run_clip(sub, clip, values, grads, max_norm, given="list"):
    """The submission's clip_grad_norm on parameters in its own process: (returned norm, gradients after).

    ``given``: how the parameters are handed over: "list", "generator" (readable once, as
    model.parameters()) or "tensor" (the first parameter alone).
    """
    params = sub.library("tinyllm.optim:GradientList")(values, grads)
    argument = {"list": params, "generator": sub.library("tinyllm.optim:read_once")(params),
                "tensor": sub.library("tinyllm.optim:alone")(params)}[given]
    norm = clip(argument, max_norm)
    return norm, params.method("grads")


@check("09_training", "clip_grad_norm", points=2, book=BOOK + "#gradient-clipping")
def test_clip_grad_norm_public(sub):
    """clip_grad_norm returns the total 2-norm before clipping and scales all gradients in place like clip_grad_norm_."""
    clip = clip_function(sub)
    g = torch.Generator().manual_seed(1)
    values = [torch.zeros(2, 3), torch.zeros(3), torch.zeros(4), torch.zeros(2)]
    grads = [torch.randn(2, 3, generator=g) * 3, torch.randn(3, generator=g) * 0.1, None, torch.randn(2, generator=g)]
    cases = [(1.0, "list", "parameters, a list of 4 (the third without a gradient)"),
             (100.0, "list", "parameters, a list of 4 (the third without a gradient)"),
             (1.0, "generator", "parameters, a generator of 4 that can be read once, as model.parameters()")]
    for max_norm, given, described in cases:
        check_clip_case(sub, clip, values, grads, max_norm, given, described)
    tiny = [g if g is None else g * 1e-5 for g in grads]
    check_clip_case(sub, clip, values, tiny, 1e-6, "list", "parameters, a list of 4 whose gradients have a total "
                    "norm near 4e-5", atol=1e-12)
    alone = [torch.zeros(2, 3)], [grads[0]]
    check_clip_case(sub, clip, *alone, 1.0, "tensor", "a single tensor (not a list), its gradient of shape (2, 3)")
    norm, after = run_clip(sub, clip, values[:2], [None, None], 1.0)
    expect.true(isinstance(norm, torch.Tensor) and norm.numel() == 1 and float(norm) == 0.0,
                "clip_grad_norm on parameters none of which has a gradient should return tensor(0.) (there is "
                f"nothing to measure); it returned {expect.describe_tensor(norm)}.")
    expect.true(after == [None, None], "clip_grad_norm on parameters without gradients must leave grad None.")


def check_clip_case(sub, clip, values, grads, max_norm, given, described, atol=1e-5):
    """One call of the student's clip_grad_norm against clip_grad_norm_ on the same gradients."""
    norm, after = run_clip(sub, clip, values, grads, max_norm, given)
    params = [torch.nn.Parameter(v.clone()) for v in values]
    for p, grad in zip(params, grads):
        p.grad = None if grad is None else grad.clone()
    expected_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    what = f"clip_grad_norm({described}, max_norm={max_norm})"
    expect.true(isinstance(norm, torch.Tensor) and norm.numel() == 1,
                f"{what} should return the total norm as a tensor with one value (as clip_grad_norm_ does); "
                f"it returned {expect.describe_tensor(norm)}.")
    hint = "Return the total 2-norm of all the gradients together, measured BEFORE clipping."
    if abs(norm.item() - min(max_norm, expected_norm.item())) < 1e-4 and max_norm < expected_norm.item():
        hint = "You returned the norm after clipping; return the norm the gradients had before it. " + hint
    elif norm.item() == 0 and given == "tensor":
        hint = ("Handed a single tensor, your clip_grad_norm found no gradient at all: iterating over a tensor "
                "walks its rows, which have no .grad. Put a lone tensor in a list first.")
    elif norm.item() == 0 and given == "generator":
        hint = ("Handed a generator, your clip_grad_norm found no gradient at all: the generator was already "
                "used up when the norm was measured (a generator can be read once).")
    expect.close(norm.reshape(()), expected_norm, f"{what}, the norm it returns,", atol=min(1e-4, atol * 10), hint=hint)
    expect.true(isinstance(after, list) and len(after) == len(grads)
                and all((a is None) == (g is None) for a, g in zip(after, grads)),
                f"{what}: a parameter without a gradient must keep grad None.")
    factor = min(1.0, max_norm / (expected_norm.item() + 1e-6))
    for i, (a, p) in enumerate(zip(after, params)):
        if p.grad is None:
            continue
        hint = f"Every gradient is multiplied by min(1, max_norm / (norm + 1e-6)) = {factor:.4g} here."
        if isinstance(a, torch.Tensor) and a.shape == p.grad.shape and not torch.allclose(a, p.grad, atol=atol):
            if torch.allclose(a, grads[i], atol=1e-6):
                hint = (f"The gradients came back unchanged: their norm is {expected_norm.item():.4g}, above "
                        f"max_norm {max_norm:g}, so every p.grad must be multiplied, in place, by {factor:.4g}.")
                if given == "generator":
                    hint += (" Given a list of the same parameters your function scaled them, so it reads the "
                             "generator twice: the second time it is empty. Read the parameters (or their "
                             "gradients) into a list once.")
            for text, wrong in clip_mistakes(grads, max_norm).items():
                if torch.allclose(a, wrong[i], atol=1e-5):
                    hint = text
                    break
        expect.close(a, p.grad, f"the gradient of parameter {i} after {what}", atol=atol, hint=hint)
