"""Public checks for 10_post_training: sft_loss, sequence_logprob, LoRALinear, dpo_loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from autograder.grading import expect
from autograder.grading.api import Proxy
from autograder.sandbox.forbidden import GROUPS
from autograder.grading.registry import check

BOOK = "book/12_post_training.html"


def loss_function(sub, name: str):
    return sub.function(name, ["logits", "targets", "loss_mask"], forbid=GROUPS["post_training"])


def lora_class(sub):
    return sub.cls("LoRALinear", ["base", "rank", "alpha"], forbid=GROUPS["post_training"])


def dpo_function(sub):
    return sub.function("dpo_loss", ["policy_chosen_logps", "policy_rejected_logps", "ref_chosen_logps",
                                     "ref_rejected_logps", "beta"], forbid=GROUPS["post_training"])


def prompt_and_answer(B: int, T: int, V: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (B, T, V), targets (B, T) and a mask that is false on a prompt, true on an answer, false on padding."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g) * 2
    targets = torch.randint(V, (B, T), generator=g)
    mask = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        start = 1 + b % 3  # the answer starts after a prompt of 1-3 targets
        end = T - b % 2  # and some rows end in a padding position
        mask[b, start:end] = True
    return logits, targets, mask


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log p(target) at every position (B, T): the public oracle, from F.cross_entropy."""
    B, T, V = logits.shape
    return F.cross_entropy(logits.reshape(B * T, V), targets.reshape(B * T).clamp(min=0),
                           reduction="none").view(B, T)


def linear_state(out_features: int, in_features: int, seed: int, bias: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {"weight": torch.randn(out_features, in_features, generator=g) / math.sqrt(in_features)}
    if bias:
        state["bias"] = torch.randn(out_features, generator=g) * 0.1
    return state


def lora_state(base: dict[str, torch.Tensor], rank: int, seed: int) -> dict[str, torch.Tensor]:
    """A LoRA layer's state after some training: lora_b no longer zero."""
    out_features, in_features = base["weight"].shape
    g = torch.Generator().manual_seed(seed)
    state = {f"base.{k}": v for k, v in base.items()}
    state["lora_a"] = torch.randn(rank, in_features, generator=g) / math.sqrt(in_features)
    state["lora_b"] = torch.randn(out_features, rank, generator=g) * 0.5
    return state


def lora_by_hand(state: dict[str, torch.Tensor], x: torch.Tensor, scaling: float) -> torch.Tensor:
    out = x @ state["base.weight"].T + scaling * (x @ state["lora_a"].T @ state["lora_b"].T)
    return out + state["base.bias"] if "base.bias" in state else out


def new_base(sub, state: dict[str, torch.Tensor]):
    """An nn.Linear built in the submission's process, carrying ``state``."""
    out_features, in_features = state["weight"].shape
    base = sub.library("torch.nn:Linear")(in_features, out_features, bias="bias" in state)
    base.load_state_dict(state)
    return base


def trained_layer(sub, out_features: int, in_features: int, rank: int, alpha: float, seed: int, bias: bool = True):
    """The student's LoRALinear around a base layer, carrying trained weights: (layer, base state, layer state)."""
    base_state = linear_state(out_features, in_features, seed=seed, bias=bias)
    state = lora_state(base_state, rank, seed=seed + 1)
    layer = lora_class(sub)(new_base(sub, base_state), rank, alpha)
    layer.load_state_dict(state)
    return layer, base_state, state


def library_function(sub, name: str) -> Proxy:
    """A helper of tinyllm.posttrain run in the submission's process on one of its objects; returns plain data."""
    return Proxy(sub, f"tinyllm.posttrain:{name}", ())


def dpo_by_hand(pc, pr, rc, rr, beta):
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()


@check("10_post_training", "sft_loss", points=3, book=BOOK + "#the-loss-on-the-answer-only")
def test_sft_loss_public(sub):
    """sft_loss is the mean cross-entropy over the masked (answer) positions only."""
    sft_loss = loss_function(sub, "sft_loss")
    logits, targets, mask = prompt_and_answer(3, 7, 11, seed=0)
    nll = token_nll(logits, targets)
    expected = nll[mask].mean()
    got = sft_loss(logits, targets, mask)
    hint = "Score only the positions where loss_mask is true and divide by how many there are."
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        value = got.reshape(()).double()
        if torch.isclose(value, nll[~mask].mean().double(), atol=1e-4):
            hint = ("You scored the prompt (and padding): loss_mask is true on the ANSWER's tokens, which are the "
                    "ones to score; the prompt is given, not predicted.")
        elif torch.isclose(value, (nll * mask).sum().double() / mask.numel(), atol=1e-4):
            hint = ("You took the mean over all B * T positions: divide the masked sum by the number of masked "
                    "positions (loss_mask.sum()), or short answers count for less than long ones.")
        elif torch.isclose(value, nll.mean().double(), atol=1e-4):
            hint = "You scored every position: use loss_mask to keep only the answer's tokens."
    expect.close(got, expected, "sft_loss(logits, targets, loss_mask) for logits (3, 7, 11)", atol=1e-4, hint=hint)
    padded = targets.masked_fill(~mask, -1)  # padding ids: not to be used as indices
    expect.close(sft_loss(logits, padded, mask), expected, "sft_loss with targets of -1 outside the mask", atol=1e-4,
                 hint="A target outside the mask may be -1 (padding): do not use it as an index there.")


@check("10_post_training", "sequence_logprob", points=2, book=BOOK + "#dpo")
def test_sequence_logprob_public(sub):
    """sequence_logprob sums log p(target) over each row's masked positions: shape (B,)."""
    fn = loss_function(sub, "sequence_logprob")
    logits, targets, mask = prompt_and_answer(4, 6, 9, seed=1)
    nll = token_nll(logits, targets)
    expected = -(nll * mask).sum(dim=-1)
    got = fn(logits, targets, mask)
    hint = "Sum (not average) log p(target) over each row's masked positions; return one number per row."
    if isinstance(got, torch.Tensor) and got.shape == expected.shape:
        if torch.allclose(got, -(nll * ~mask).sum(dim=-1), atol=1e-4):
            hint = "You summed over the prompt: loss_mask is true on the answer's tokens."
        elif torch.allclose(got, expected / mask.sum(dim=-1), atol=1e-4):
            hint = "You averaged over the answer's tokens: DPO needs log p(answer), the SUM of the tokens' log-probabilities."
        elif torch.allclose(got, -expected, atol=1e-4):
            hint = "A log-probability is negative: return log p, not -log p."
    expect.close(got, expected, "sequence_logprob(logits, targets, loss_mask) for logits (4, 6, 9)", atol=1e-4,
                 hint=hint)
    expect.close(fn(logits, targets.masked_fill(~mask, -1), mask), expected,
                 "sequence_logprob with targets of -1 outside the mask", atol=1e-4,
                 hint="A target outside the mask may be -1 (padding): do not use it as an index there.")
    empty = mask.clone()
    empty[2] = False
    expect.close(fn(logits, targets, empty), -(nll * empty).sum(dim=-1), "sequence_logprob with nothing masked "
                 "in row 2", atol=1e-4, hint="A row with no masked position has log-probability 0 (a sum of "
                 "nothing).")


@check("10_post_training", "LoRALinear", points=2, book=BOOK + "#lora-from-scratch")
def test_LoRALinear_public(sub):
    """With trained weights loaded, LoRALinear computes base(x) + (alpha / rank) x A^T B^T."""
    rank, alpha = 2, 8.0
    layer, _, state = trained_layer(sub, 4, 6, rank, alpha, seed=2)
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(4))
    got = layer(x)
    expected = lora_by_hand(state, x, alpha / rank)
    hint = "The output is base(x) + (alpha / rank) * x @ lora_a.T @ lora_b.T."
    if isinstance(got, torch.Tensor) and got.shape == expected.shape:
        if torch.allclose(got, lora_by_hand(state, x, alpha), atol=1e-4):
            hint = ("You scaled the update by alpha: the scale is alpha / rank, so that changing the rank does not "
                    "change how big the update is for the same alpha.")
        elif torch.allclose(got, lora_by_hand(state, x, 1.0), atol=1e-4):
            hint = "You did not scale the update: multiply it by alpha / rank."
    expect.close(got, expected, f"LoRALinear(Linear(6, 4), rank={rank}, alpha={alpha})(x) with trained weights",
                 x, atol=1e-4, hint=hint)
    layer, _, state = trained_layer(sub, 3, 5, 1, 2.0, seed=3)
    expect.close(layer(x[:, :5]), lora_by_hand(state, x[:, :5], 2.0), "LoRALinear(Linear(5, 3), rank=1, "
                 "alpha=2.0)(x) with trained weights", x[:, :5], atol=1e-4, hint="Rank 1 is a rank like any other.")


@check("10_post_training", "LoRALinear", points=2, book=BOOK + "#lora-from-scratch")
def test_LoRALinear_init_public(sub):
    """A fresh LoRALinear: base frozen, only lora_a and lora_b trainable, and the same output as base."""
    LoRA = lora_class(sub)
    base_state = linear_state(5, 3, seed=5)
    layer = LoRA(new_base(sub, base_state), 4, 16.0)
    state = layer.method("state_dict")
    expected_names = ["base.bias", "base.weight", "lora_a", "lora_b"]
    missing = [name for name in expected_names if not isinstance(state, dict) or name not in state]
    expect.equal(sorted(state), expected_names, "the parameters of LoRALinear (the names of its state_dict())",
                 hint=layer.why_missing(missing, bool(set(state) - set(expected_names))) if missing else
                 "Keep the layer you are given as self.base and add exactly the parameters lora_a and lora_b.")
    expect.equal(tuple(state["lora_a"].shape), (4, 3), "lora_a's shape for Linear(3, 5) at rank 4",
                 hint="lora_a is (rank, in_features): it maps an input down to rank numbers.")
    expect.equal(tuple(state["lora_b"].shape), (5, 4), "lora_b's shape for Linear(3, 5) at rank 4",
                 hint="lora_b is (out_features, rank): it maps the rank numbers up to the output.")
    expect.true(bool(state["lora_a"].abs().sum() > 0), "lora_a is all zeros: draw it at random (small), so that "
                "lora_b receives a gradient; it is lora_b that starts at zero.")
    x = torch.randn(2, 3, generator=torch.Generator().manual_seed(6))
    base_out = x @ base_state["weight"].T + base_state["bias"]
    got = layer(x)
    hint = ("Before any training the layer must compute exactly what base computes: start lora_b at zero "
            "(torch.zeros), so that B A = 0.")
    if not bool((state["lora_b"] == 0).all()):
        hint = ("lora_b does not start at zero, so the layer changes before training: the fine-tuned model would "
                "start from a damaged copy of the pretrained one. Start lora_b at zero and lora_a at random.")
    expect.close(got, base_out, "a fresh LoRALinear(Linear(3, 5), 4, 16.0)(x) (before any training)", x, atol=1e-5,
                 hint=hint)
    trainable = library_function(sub, "trainable_names")(layer)
    expect.equal(sorted(trainable), ["lora_a", "lora_b"], "the parameters that would train",
                 hint="Freeze the base layer (base.weight.requires_grad_(False), the same for its bias): only "
                      "lora_a and lora_b train.")


@check("10_post_training", "LoRALinear", points=1, book=BOOK + "#lora-from-scratch")
def test_LoRALinear_merged_public(sub):
    """merged() is one nn.Linear with weight W + (alpha / rank) B A and the base's bias."""
    rank, alpha = 3, 6.0
    layer, base_state, state = trained_layer(sub, 4, 6, rank, alpha, seed=7)
    x = torch.randn(2, 6, generator=torch.Generator().manual_seed(8))
    before = layer(x)
    merged = library_function(sub, "merged_state")(layer)
    after = layer.method("state_dict")
    changed = [name for name in sorted(state) if isinstance(after, dict) and name in after
               and not torch.equal(after[name], state[name])]
    moved = (layer(x) - before).abs().max().item() if isinstance(before, torch.Tensor) else 0.0
    expect.true(not changed and moved < 1e-6,
                f"merged() changed the LoRA layer it was called on: afterwards {', '.join(changed) or 'its output'} "
                f"{'differs' if len(changed) < 2 else 'differ'} from before (the layer's output moved by up to "
                f"{moved:.3g}). merged() returns a NEW nn.Linear and leaves base, lora_a and lora_b as they were; "
                "adding the update into base.weight would count it twice in the LoRA layer.")
    expected = base_state["weight"] + alpha / rank * state["lora_b"] @ state["lora_a"]
    expect.equal(sorted(merged), ["bias", "weight"], "the parameters of merged()",
                 hint="merged() returns an nn.Linear with the base's bias.")
    hint = "The merged weight is base.weight + (alpha / rank) * lora_b @ lora_a."
    if torch.allclose(merged["weight"], base_state["weight"] + alpha * state["lora_b"] @ state["lora_a"], atol=1e-4):
        hint = "You scaled the update by alpha: the scale is alpha / rank."
    expect.close(merged["weight"], expected, f"merged().weight at rank {rank}, alpha {alpha}", atol=1e-4, hint=hint)
    expect.close(merged["bias"], base_state["bias"], "merged().bias", hint="Keep the base layer's bias as it is.")
    layer, base_state, state = trained_layer(sub, 4, 6, rank, alpha, seed=9, bias=False)
    merged = library_function(sub, "merged_state")(layer)
    expect.equal(sorted(merged), ["weight"], "the parameters of merged() for a base layer without a bias",
                 hint="A base without a bias gives a merged layer without one: nn.Linear(..., bias=base.bias is "
                 "not None).")


@check("10_post_training", "dpo_loss", points=2, book=BOOK + "#dpo")
def test_dpo_loss_public(sub):
    """dpo_loss is the mean of -log sigmoid(beta * ((pc - rc) - (pr - rr)))."""
    dpo = dpo_function(sub)
    g = torch.Generator().manual_seed(9)
    pc, pr, rc, rr = (torch.randn(5, generator=g) * 3 - 10 for _ in range(4))
    beta = 0.5
    expected = dpo_by_hand(pc, pr, rc, rr, beta)
    got = dpo(pc, pr, rc, rr, beta=beta)
    hint = "margin = (pc - rc) - (pr - rr); the loss is the mean of -logsigmoid(beta * margin)."
    if isinstance(got, torch.Tensor) and got.numel() == 1:
        value = got.reshape(())
        if torch.isclose(value, dpo_by_hand(pr, pc, rr, rc, beta), atol=1e-5):
            hint = ("The preference is flipped: your loss rewards the REJECTED answer. The margin is the chosen "
                    "answer's gain over the reference minus the rejected answer's: (pc - rc) - (pr - rr).")
        elif torch.isclose(value, dpo_by_hand(pc, pr, rc, rr, 1.0), atol=1e-5):
            hint = ("You left out beta: multiply the margin by beta before the log-sigmoid (beta sets how far the "
                    "policy may move from the reference).")
    expect.close(got, expected, "dpo_loss(pc, pr, rc, rr, beta=0.5) for batches of 5", atol=1e-5, hint=hint)
    same = torch.full((3,), -7.0)
    expect.close(dpo(same, same, same, same), torch.tensor(math.log(2.0)),
                 "dpo_loss when the policy equals the reference", atol=1e-5,
                 hint="With a margin of 0 the loss is -log sigmoid(0) = log 2.")
    expect.close(dpo(pc, pr, rc, rr), dpo_by_hand(pc, pr, rc, rr, 0.1), "dpo_loss(...) with the default beta",
                 atol=1e-5, hint="The default beta is 0.1.")
    far, zero = torch.tensor([-1.0, -300.0]), torch.zeros(2)
    got = dpo(far, far.flip(0), zero, zero, beta=1.0)
    hint = ""
    if isinstance(got, torch.Tensor) and got.numel() == 1 and not bool(torch.isfinite(got).all()):
        hint = ("Your loss is not finite: log(sigmoid(z)) rounds sigmoid(-299) to 0 and takes log(0). "
                "F.logsigmoid(z) computes the same value without the rounding.")
    expect.close(got, dpo_by_hand(far, far.flip(0), zero, zero, 1.0), "dpo_loss with margins of +299 and -299 "
                 "(beta=1)", atol=1e-4, hint=hint)
