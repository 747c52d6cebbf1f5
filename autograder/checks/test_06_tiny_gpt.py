"""Public checks for 06_tiny_gpt: TinyGPT, top_k_filter, top_p_filter, sample_next_token, generate."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from autograder.grading import expect
from autograder.grading.api import Proxy
from autograder.sandbox.forbidden import GROUPS
from autograder.grading.registry import check
from tinyllm.model import GPTConfig, TinyGPT

BOOK_MODEL = "book/08_tiny_gpt.html"
BOOK_DECODING = "book/09_decoding.html"
SMALL = dict(vocab_size=300, context_length=16, d_model=32, n_layers=2, n_heads=4, d_ff=64, dropout=0.0)
INF = float("-inf")


def reference_model(seed: int, **sizes) -> TinyGPT:
    torch.manual_seed(seed)
    return TinyGPT(GPTConfig(**{**SMALL, **sizes})).eval()


def state_of(model: TinyGPT) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def student_model(sub, cls, reference: TinyGPT):
    """The student's TinyGPT built from the same config, carrying the reference weights."""
    config = sub.library("tinyllm.model:GPTConfig")(**reference.config.to_dict())
    model = cls(config)
    model.load_state_dict(state_of(reference))
    return model.eval()


def library_model(sub, reference: TinyGPT):
    """The book's TinyGPT inside the submission's process, carrying the reference weights."""
    config = sub.library("tinyllm.model:GPTConfig")(**reference.config.to_dict())
    model = sub.library("tinyllm.model:TinyGPT")(config)
    model.load_state_dict(state_of(reference))
    return model.eval()


def pair(result, what):
    expect.true(isinstance(result, tuple) and len(result) == 2,
                f"{what} should return a tuple (logits, loss); it returned {expect.describe_tensor(result)}.")
    return result


@check("06_tiny_gpt", "TinyGPT", points=2, book=BOOK_MODEL + "#the-model")
def test_TinyGPT_public(sub):
    """TinyGPT with the reference weights gives the reference logits and cross-entropy loss."""
    cls = sub.cls("TinyGPT", ["config"])
    reference = reference_model(seed=0)
    model = student_model(sub, cls, reference)
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, SMALL["vocab_size"], (2, 10), generator=g)
    targets = torch.randint(0, SMALL["vocab_size"], (2, 10), generator=g)
    logits, loss = pair(model(idx, targets), "TinyGPT.forward(idx, targets)")
    ref_logits, _ = reference(idx)
    expect.close(logits, ref_logits.detach(), "the logits of TinyGPT(config)(idx)", "idx of shape (2, 10)",
                 hint="tok_emb(idx) + pos_emb(positions), the blocks, ln_f, then lm_head.")
    expect.close(loss, F.cross_entropy(ref_logits.detach().view(-1, SMALL["vocab_size"]), targets.view(-1)),
                 "the loss of TinyGPT(config)(idx, targets)", hint="The mean cross-entropy over all B*T positions.")
    _, no_loss = pair(model(idx), "TinyGPT.forward(idx)")
    expect.true(no_loss is None, "TinyGPT.forward(idx) without targets should return (logits, None).")
    full = torch.randint(0, SMALL["vocab_size"], (1, SMALL["context_length"]), generator=g)
    logits, _ = pair(model(full), "TinyGPT.forward(idx) on a sequence of context_length tokens")
    expect.close(logits, reference(full)[0].detach(), f"the logits of TinyGPT(config)(idx) for idx of the full "
                 f"context_length, {SMALL['context_length']} tokens", hint="A sequence as long as context_length "
                 "fits: only a longer one raises ValueError.")


@check("06_tiny_gpt", "TinyGPT", points=1, book=BOOK_MODEL + "#the-model")
def test_TinyGPT_errors_public(sub):
    """TinyGPT raises ValueError for a sequence longer than context_length (the error contract, checked apart)."""
    model = student_model(sub, sub.cls("TinyGPT", ["config"]), reference_model(seed=0))
    too_long = torch.zeros(1, SMALL["context_length"] + 1, dtype=torch.long)
    expect.raises(lambda: model(too_long), ValueError, "TinyGPT on a sequence longer than context_length")


def fresh_student_model(sub, cls, seed: int, **sizes):
    """The student's TinyGPT as its constructor leaves it, built after seeding the submission's torch."""
    sub.library("torch:manual_seed")(seed)
    config = sub.library("tinyllm.model:GPTConfig")(**{**SMALL, **sizes})
    return cls(config)


@check("06_tiny_gpt", "TinyGPT", points=2, book=BOOK_MODEL + "#where-the-parameters-are")
def test_TinyGPT_parameters_public(sub):
    """lm_head.weight IS tok_emb.weight (one table, counted once), and num_parameters() counts it."""
    cls = sub.cls("TinyGPT", ["config"])
    model = fresh_student_model(sub, cls, seed=0)
    reference = reference_model(seed=0)
    state = state_of(reference)
    state["lm_head.weight"] = state["lm_head.weight"] + 1.0  # a different table under the second name
    model.load_state_dict(state)
    loaded = model.method("state_dict")
    expect.true(torch.equal(loaded["tok_emb.weight"], loaded["lm_head.weight"]),
                "lm_head.weight is not tied to tok_emb.weight: after loading two different tables under the two "
                "names, your model still holds two. Weight tying means ONE parameter used twice: write "
                "`self.lm_head.weight = self.tok_emb.weight` in __init__ (copying the values is not tying).")
    expected = reference.num_parameters()
    got = model.method("num_parameters")
    table = SMALL["vocab_size"] * SMALL["d_model"]
    hint = "Count each distinct parameter once: sum(p.numel() for p in self.parameters())."
    if got == expected + table:
        hint = ("You counted the tied table twice (vocab_size * d_model = "
                f"{table:,} too many): self.parameters() yields a shared parameter once.")
    expect.equal(got, expected, "TinyGPT(config).num_parameters()", f"config {SMALL}", hint=hint)


@check("06_tiny_gpt", "TinyGPT", points=1, book=BOOK_MODEL + "#the-model")
def test_TinyGPT_init_public(sub):
    """A fresh TinyGPT has N(0, 0.02) weights and zero biases (as GPT-2)."""
    cls = sub.cls("TinyGPT", ["config"])
    model = fresh_student_model(sub, cls, seed=0)
    state = model.method("state_dict")
    for name, weight in state.items():
        if not name.endswith(".weight") or weight.dim() != 2:
            continue  # LayerNorm gains are ones (the given LayerNorm does it)
        std, mean = weight.double().std().item(), weight.double().mean().item()
        expect.true(0.018 < std < 0.022 and abs(mean) < 0.004,
                    f"{name} of a fresh TinyGPT has mean {mean:.4f} and standard deviation {std:.4f}; "
                    "_init_weights draws every nn.Linear and Embedding weight from N(0, 0.02^2). Is "
                    "`self.apply(self._init_weights)` the last line of __init__ (after every submodule exists)?")
        bias = state.get(name[: -len("weight")] + "bias")
        if bias is not None:  # a 2-d weight with a bias: an nn.Linear
            expect.true(bool((bias == 0).all()),
                        f"{name[:-len('.weight')]}.bias of a fresh TinyGPT is not zero (largest "
                        f"{bias.abs().max().item():.3g}); _init_weights sets every nn.Linear bias to zero.")


    rates = Proxy(sub, "tinyllm.model:dropout_rates", ())(fresh_student_model(sub, cls, 0, dropout=0.25))
    wrong = {name: rate for name, rate in (rates.items() if isinstance(rates, dict) else []) if rate != 0.25}
    expect.true(isinstance(rates, dict) and not wrong and len(rates) >= 1 + SMALL["n_layers"],
                "In TinyGPT(config) with config.dropout = 0.25 every dropout must use 0.25: the embeddings' drop "
                "and each block's (TransformerBlock(d_model, n_heads, d_ff, dropout)); "
                + (f"yours has {', '.join(f'{n}: {r:g}' for n, r in wrong.items())}." if wrong else
                   f"yours has {len(rates) if isinstance(rates, dict) else 0} dropout layers."))


def top_k_by_hand(logits: torch.Tensor, k: int) -> torch.Tensor:
    kth = logits.sort(dim=-1, descending=True).values[..., k - 1 : k]
    return logits.masked_fill(logits < kth, INF)


@check("06_tiny_gpt", "top_k_filter", points=1, book=BOOK_DECODING + "#cutting-the-tail-top-k-and-top-p",
       reference="tinyllm.sampling:top_k_filter")
def test_top_k_filter_public(sub):
    """top_k_filter keeps the k largest logits per row (and ties with the k-th)."""
    top_k = sub.function("top_k_filter", ["logits", "k"], forbid=GROUPS["sampling"])
    logits = torch.tensor([[1.0, 5.0, 3.0, 2.0], [0.0, 2.0, 2.0, -1.0]])
    expect.close(top_k(logits, 2), torch.tensor([[INF, 5.0, 3.0, INF], [INF, 2.0, 2.0, INF]]),
                 "top_k_filter(logits, 2)", "[[1, 5, 3, 2], [0, 2, 2, -1]]")
    expect.close(top_k(logits, 1), torch.tensor([[INF, 5.0, INF, INF], [INF, 2.0, 2.0, INF]]),
                 "top_k_filter(logits, 1)", logits, hint="Entries equal to the k-th largest value are kept: "
                 "row 1 has two 2.0s, and both stay.")
    expect.close(top_k(logits, 10), logits, "top_k_filter(logits, 10) with only 4 entries", logits)
    batched = torch.stack([logits, logits.flip(-1)])  # (2, 2, 4)
    expect.close(top_k(batched, 2), torch.stack([top_k_by_hand(logits, 2), top_k_by_hand(logits.flip(-1), 2)]),
                 "top_k_filter(logits, 2) for logits of shape (2, 2, 4)", batched,
                 hint="Filter along the last dimension, V, whatever the shape (..., V).")


@check("06_tiny_gpt", "top_p_filter", points=2, book=BOOK_DECODING + "#cutting-the-tail-top-k-and-top-p",
       reference="tinyllm.sampling:top_p_filter")
def test_top_p_filter_public(sub):
    """top_p_filter keeps the smallest most-likely set reaching p, including the token that crosses p."""
    top_p = sub.function("top_p_filter", ["logits", "p"], forbid=GROUPS["sampling"])
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])
    logits = probs.log()
    expect.close(top_p(logits, 0.7), torch.where(probs >= 0.3, logits, INF), "top_p_filter(logits, 0.7)",
                 "probabilities [0.05, 0.5, 0.15, 0.3]", hint="0.5 alone is below 0.7, so the 0.3 token that "
                 "carries the total to 0.8 is kept; 0.15 and 0.05 are dropped.")
    expect.close(top_p(logits, 0.5), torch.where(probs >= 0.5, logits, INF), "top_p_filter(logits, 0.5)",
                 hint="The most likely token alone reaches 0.5: keep only it.")
    expect.close(top_p(logits, 1.0), logits, "top_p_filter(logits, 1.0)")
    confident = torch.tensor([[30.0, 0.0, 0.0, 0.0, 0.0]])
    expect.close(top_p(confident, 1.0), confident, "top_p_filter(logits, 1.0) when one token has probability "
                 "1 - 4e-13", "logits [[30, 0, 0, 0, 0]]",
                 hint="p = 1 keeps every token: the tokens before the last have a total below 1, even where a "
                 "float32 running sum rounds it to 1.0 (return the logits as they are when p >= 1).")


@check("06_tiny_gpt", "sample_next_token", points=2, book=BOOK_DECODING + "#sampling-and-temperature",
       reference="tinyllm.sampling:sample_next_token")
def test_sample_next_token_public(sub):
    """sample_next_token: greedy at temperature 0, seeded, respects top-k, follows the distribution."""
    sample = sub.function("sample_next_token", ["logits", "temperature", "top_k", "top_p", "generator"],
                          forbid=GROUPS["sampling"])
    with expect.blame(sub, "top_k_filter", "top_p_filter"):
        check_sampling(sample)


def check_sampling(sample):
    logits = torch.tensor([[0.0, 3.0, 1.0, -1.0], [2.0, 0.0, 0.0, 0.0]])
    expect.equal(sample(logits, temperature=0), torch.tensor([1, 0]), "sample_next_token(logits, temperature=0)",
                 logits, hint="Temperature 0 means greedy: the argmax of each row.")
    batched = torch.stack([logits, logits.flip(-1)])  # (2, 2, 4): ids of shape (2, 2)
    expect.equal(sample(batched, temperature=0), torch.tensor([[1, 0], [2, 3]]),
                 "sample_next_token(logits, temperature=0) for logits of shape (2, 2, 4)", batched,
                 hint="The ids are chosen along the last dimension, V, whatever the shape (..., V).")
    many = logits[0].repeat(4000, 1)
    draws = sample(many, generator=torch.Generator().manual_seed(0))
    expect.true(isinstance(draws, torch.Tensor) and tuple(draws.shape) == (4000,),
                f"sample_next_token on logits of shape (4000, 4) should return 4000 ids; got "
                f"{expect.describe_tensor(draws)}.")
    again = sample(many, generator=torch.Generator().manual_seed(0))
    expect.equal(again, draws, "sample_next_token with the same seeded generator twice",
                 hint="Pass the generator to torch.multinomial so results are reproducible.")
    frequencies = torch.bincount(draws.long(), minlength=4).double() / 4000
    expect.close(frequencies, F.softmax(logits[0].double(), -1), "the frequency of each sampled id", atol=0.03,
                 rtol=0.0, hint="Sample from softmax(logits / temperature).")
    hot = sample(many, temperature=2.0, generator=torch.Generator().manual_seed(3))
    frequencies = torch.bincount(hot.long(), minlength=4).double() / 4000
    expect.close(frequencies, F.softmax(logits[0].double() / 2.0, -1), "the frequency of each id sampled at "
                 "temperature 2.0", atol=0.03, rtol=0.0, hint="Divide the logits by the temperature: "
                 "softmax(logits / temperature) (a higher temperature flattens the distribution).")
    cube = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(4)) * 3
    ids = sample(cube, top_k=1, generator=torch.Generator().manual_seed(5))
    expect.equal(ids, cube.argmax(-1), "sample_next_token(logits, top_k=1) for logits of shape (2, 3, 5)", cube,
                 hint="One id per row of the last dimension: ids of shape (2, 3), each drawn from its own row "
                 "(with top_k=1, that row's largest logit).")
    apart = cube + torch.tensor([[300.0], [0.0], [-300.0]])[None]  # rows hundreds apart: probabilities per row
    ids = sample(apart, top_k=1, generator=torch.Generator().manual_seed(6))
    expect.equal(ids, apart.argmax(-1), "sample_next_token(logits, top_k=1) for logits (2, 3, 5) whose rows lie "
                 "300 apart", hint="Each row's probabilities are a softmax of that row alone (along dim -1), "
                 "whatever the other rows hold.")
    top2 = sample(many, top_k=2, generator=torch.Generator().manual_seed(1))
    expect.true(set(top2.tolist()) <= {1, 2}, "with top_k=2, only the two most likely ids (1 and 2) may be drawn.")
    ordered = torch.tensor([0.4, 0.3, 0.2, 0.1]).log().repeat(200, 1)
    both = sample(ordered, top_k=2, top_p=0.5, generator=torch.Generator().manual_seed(2))
    drawn = sorted(set(both.tolist())) if isinstance(both, torch.Tensor) else both
    expect.true(drawn == [0], f"with top_k=2 and top_p=0.5 on probabilities [0.4, 0.3, 0.2, 0.1] only id 0 may be "
                f"drawn (top-k first keeps 0.4 and 0.3, which become 0.57 and 0.43; then top-p keeps 0.57 alone); "
                f"yours drew {drawn}.")


def expect_eval_without_gradients(recorder, what: str) -> None:
    """Every call the generate made found the model in eval mode with gradients off (the recorder saw it)."""
    modes = recorder.method("modes")
    training = [i + 1 for i, (train, _) in enumerate(modes) if train]
    recording = [i + 1 for i, (_, grad) in enumerate(modes) if grad]
    expect.true(not training, f"{what} called the model in training mode (calls {training[:5]}), so dropout "
                "changed its logits: put the model in eval mode first (model.eval()).")
    expect.true(not recording, f"{what} called the model with gradients on (calls {recording[:5]}): run it "
                "under torch.no_grad() (the @torch.no_grad() decorator), since nothing is trained.")


@check("06_tiny_gpt", "generate", points=2, book=BOOK_DECODING + "#repetition-measured")
def test_generate_public(sub):
    """generate appends max_new_tokens ids; greedy decoding matches the reference."""
    generate = sub.function("generate", ["model", "idx", "max_new_tokens"], forbid=GROUPS["sampling"])
    reference = reference_model(seed=2)
    model = library_model(sub, reference)
    prompt = torch.tensor([[5, 17, 42], [1, 2, 3]])
    from tinyllm.sampling import generate as reference_generate

    with expect.blame(sub, "sample_next_token"):
        expected = reference_generate(reference, prompt, 12, temperature=0)
        got = generate(model, prompt, 12, temperature=0)
        expect.equal(got, expected, "generate(model, idx, 12, temperature=0)", prompt,
                     hint="Append one id at a time: the argmax of the last position's logits.")
        long_prompt = torch.randint(0, 300, (1, SMALL["context_length"] + 5), generator=torch.Generator().manual_seed(3))
        expected = reference_generate(reference, long_prompt, 3, temperature=0)
        expect.equal(generate(model, long_prompt, 3, temperature=0), expected, "generate on a prompt longer than "
                     "the context", hint="Feed the model only the last config.context_length tokens.")
        repeat = torch.tensor([[7, 7, 7, 9]])
        expected = reference_generate(reference, repeat, 6, repetition_penalty=50.0, temperature=0)
        expect.equal(generate(model, repeat, 6, repetition_penalty=50.0, temperature=0), expected,
                     "generate(model, idx, 6, repetition_penalty=50.0, temperature=0)", repeat,
                     hint="Before choosing each token, pass the last position's logits through "
                     "apply_repetition_penalty(logits, idx, repetition_penalty) with all the ids so far.")
        recorder = sub.library("tinyllm.sampling:CallRecorder")(library_model(sub, reference_model(2, dropout=0.5)))
        recorder.method("train")  # handed over in training mode, as a model is after a training loop
        generate(recorder, prompt, 3, temperature=0)
        expect_eval_without_gradients(recorder, "generate(model, idx, 3) on a model in training mode")
