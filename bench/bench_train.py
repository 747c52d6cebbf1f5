"""Training benchmarks for the tiny GPT, each measured in one run on this machine.

    python bench/bench_train.py                  # both parts
    python bench/bench_train.py --part default   # only: train with the defaults, then evaluate
    python bench/bench_train.py --part speed     # only: tokens/s, ours vs nn.TransformerEncoderLayer
    python bench/bench_train.py --part samples   # only: whole documents vs windows, exact answers
    python bench/bench_train.py --smoke          # a few steps of each: checks that it still runs

1. ``default``: ``tiny-llm train`` with its defaults (the book's model), timed
   from the command's start to its end (tokenizer training included), then
   ``tiny-llm evaluate``: test perplexity against the baselines, and the share
   of each split's questions the model answers exactly (greedy).
   Targets: training <= 2 minutes on 2 CPU cores; >= 90% of the training
   questions answered exactly; test perplexity reported beside the baselines'.
2. ``speed``: training tokens/s of TinyGPT against a model of the same sizes
   built from PyTorch's ``nn.TransformerEncoderLayer`` (pre-norm, GELU, causal
   mask, tied output layer), same batches, same optimiser. The two are timed
   in alternating rounds so that a change in machine load hits both alike.
   Target: ours at least 0.8x PyTorch's.
3. ``samples``: the book's model and schedule trained twice, on whole
   documents from position 0 (the default) and on windows at random offsets
   of the same token stream (end-of-text between documents); for each, the
   share of the training questions answered exactly, greedily.

Prints a table and writes bench/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results_file import add_smoke_flag, write_results  # noqa: E402

from tinyllm.answers import answer_questions  # noqa: E402
from tinyllm.data import read_corpus, split_corpus, split_documents, token_stream, training_data  # noqa: E402
from tinyllm.model import GPTConfig  # noqa: E402
from tinyllm.train import Trainer, TrainConfig, build_model, make_optimizer, train_step  # noqa: E402


def run_default(threads: int | None, max_steps: int | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cli = [sys.executable, "-m", "tinyllm.cli"]
        thread_args = ["--threads", str(threads)] if threads else []
        step_args = ["--max-steps", str(max_steps), "--no-progress"] if max_steps else []
        start = time.perf_counter()
        subprocess.run([*cli, "train", "--out", tmp, *thread_args, *step_args], check=True)
        train_seconds = time.perf_counter() - start
        checkpoint = str(Path(tmp) / "checkpoint.pt")
        scores = json.loads(subprocess.run([*cli, "evaluate", checkpoint, "--json", *thread_args], check=True,
                                           capture_output=True, text=True).stdout)
        sample = subprocess.run([*cli, "generate", checkpoint, "--max-new-tokens", "60", "--temperature", "0.8",
                                 "--prompt", "Q: What is decoding"], check=True, capture_output=True,
                                text=True).stdout
    models = scores["models"]
    return {
        "load_average_1min_at_end": os.getloadavg()[0],
        "train_seconds": train_seconds,
        "test_perplexity": models["tiny GPT"]["perplexity"],
        "test_bits_per_byte": models["tiny GPT"]["bits_per_byte"],
        "bigram_perplexity": models["bigram"]["perplexity"],
        "unigram_perplexity": models["unigram"]["perplexity"],
        "exact_answers": scores["exact_answers"],
        "sample": sample,
    }


class TorchEncoderGPT(nn.Module):
    """TinyGPT's architecture from PyTorch's own layers: the yardstick for our speed."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.tok_emb = nn.Embedding(config.vocab_size, config.d_model)
        self.pos_emb = nn.Embedding(config.context_length, config.d_model)
        layer = nn.TransformerEncoderLayer(config.d_model, config.n_heads, config.d_ff, config.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, config.n_layers, enable_nested_tensor=False)
        self.ln_f = nn.LayerNorm(config.d_model)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.lm_head.weight = self.tok_emb.weight
        self.drop = nn.Dropout(config.dropout)

    def forward(self, idx, targets=None):
        B, T = idx.shape
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=idx.device)  # (T, T), -inf above
        x = self.drop(self.tok_emb(idx) + self.pos_emb(torch.arange(T, device=idx.device)))  # (B, T, d_model)
        x = self.ln_f(self.blocks(x, mask=mask, is_causal=True))
        logits = self.lm_head(x)  # (B, T, V)
        if targets is None:  # train_step computes the loss itself, as for TinyGPT
            return logits, None
        return logits, nn.functional.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T))


def run_speed(threads: int | None, rounds: int, steps: int) -> dict:
    if threads:
        torch.set_num_threads(threads)
    config, train_config = GPTConfig(), TrainConfig()
    torch.manual_seed(0)
    models = {"ours (TinyGPT)": build_model(config, seed=0), "nn.TransformerEncoderLayer": TorchEncoderGPT(config)}
    n_params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    optimizers = {name: make_optimizer(m, train_config) for name, m in models.items()}
    g = torch.Generator().manual_seed(0)
    B, T = train_config.batch_size, config.context_length
    batches = [torch.randint(config.vocab_size, (B, T + 1), generator=g) for _ in range(steps)]
    seconds = {name: 0.0 for name in models}
    for name, model in models.items():  # warm-up: allocator, kernels
        for batch in batches[:5]:
            train_step(model, optimizers[name], batch[:, :-1], batch[:, 1:], 1e-3, 1.0)
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            for batch in batches:
                train_step(model, optimizers[name], batch[:, :-1], batch[:, 1:], 1e-3, 1.0)
            seconds[name] += time.perf_counter() - start
    tokens = rounds * steps * B * T
    speed = {name: tokens / s for name, s in seconds.items()}
    return {"tokens_per_s": speed, "parameters": n_params,
            "ratio": speed["ours (TinyGPT)"] / speed["nn.TransformerEncoderLayer"],
            "threads": torch.get_num_threads(), "rounds": rounds, "steps_per_round": steps}


def run_samples(threads: int | None, max_steps: int | None = None) -> dict:
    """Documents against windows: same model, schedule, tokenizer and token budget; exact answers on train."""
    from dataclasses import replace

    text = read_corpus()
    model_config, base = GPTConfig(), TrainConfig()
    if max_steps:
        base = replace(base, max_steps=max_steps, warmup_steps=min(base.warmup_steps, max_steps),
                       eval_interval=max_steps)
    tokenizer, data = training_data(text, model_config.vocab_size, model_config.context_length, "documents")
    questions = split_documents(split_corpus(text).train)
    if max_steps:  # the smoke run: a few questions are enough to exercise the code
        questions = questions[:8]
    results = {}
    for samples in ("documents", "windows"):
        config = replace(base, samples=samples)
        train, val = (data["train"], data["val"]) if samples == "documents" else (
            token_stream(data["train"]), token_stream(data["val"]))
        trainer = Trainer(build_model(model_config, config.seed), train, val, config, device="cpu",
                          merges=tokenizer.merges, num_threads=threads or 1, end_of_text=True)
        history = trainer.train()
        answers = answer_questions(trainer.model, tokenizer, questions)
        last = history.loss[-100:]
        results[samples] = {"train_seconds": history.train_seconds, "questions": len(answers),
                            "exact": sum(a.exact for a in answers), "final_batch_loss": sum(last) / len(last),
                            "load_average_1min": os.getloadavg()[0]}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "default", "speed", "samples"), default="all")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    parser.add_argument("--rounds", type=int, default=6, help="alternating timing rounds for the speed part")
    parser.add_argument("--steps", type=int, default=40, help="training steps per model per round")
    add_smoke_flag(parser)
    args = parser.parse_args()
    max_steps = None
    if args.smoke:
        args.rounds, args.steps, max_steps = 1, 3, 5
    results = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}}
    if args.part in ("all", "default"):
        results["default"] = d = run_default(args.threads, max_steps)
        print(f"default run: trained in {d['train_seconds']:.1f} s; test perplexity {d['test_perplexity']:.3f} "
              f"(bigram {d['bigram_perplexity']:.3f}, unigram {d['unigram_perplexity']:.2f}); "
              f"{d['test_bits_per_byte']:.3f} bits per byte")
        for name, e in d["exact_answers"].items():
            print(f"  {name:5} questions answered exactly: {e['exact']} of {e['questions']} "
                  f"({100 * e['exact'] / e['questions']:.1f}%)")
        print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}")
        print(f"sample: {d['sample'].strip()!r}")
    if args.part in ("all", "speed"):
        results["speed"] = s = run_speed(args.threads, args.rounds, args.steps)
        for name, value in s["tokens_per_s"].items():
            print(f"{name:28} {value:10,.0f} training tokens/s  ({s['parameters'][name]:,} parameters)")
        print(f"ratio ours / PyTorch: {s['ratio']:.2f}x  ({s['threads']} threads, {s['rounds']} rounds)")
    if args.part in ("all", "samples"):
        results["samples"] = r = run_samples(args.threads, max_steps)
        for name, v in r.items():
            print(f"{name:10} {v['exact']} of {v['questions']} training questions answered exactly "
                  f"({100 * v['exact'] / v['questions']:.1f}%); last batches' loss {v['final_batch_loss']:.3f}; "
                  f"{v['train_seconds']:.0f} s (load {v['load_average_1min']:.1f})")
    write_results("train", results, smoke=args.smoke)


def summary(results: dict) -> list[tuple[str, str]]:
    """The README's rows: (figure, value)."""
    rows = []
    if "default" in results:
        d = results["default"]
        train = d["exact_answers"].get("train", {})
        rows.append(("`tiny-llm train` with the defaults, then `evaluate`",
                     f"{d['train_seconds']:.0f} s; test perplexity {d['test_perplexity']:.2f} "
                     f"(bigram {d['bigram_perplexity']:.2f}); {train.get('exact', 0)} of {train.get('questions', 0)} "
                     "training questions answered exactly"))
    if "speed" in results:
        rows.append(("training speed, TinyGPT / the same model from `nn.TransformerEncoderLayer`",
                     f"{results['speed']['ratio']:.2f}x"))
    return rows


if __name__ == "__main__":
    main()
