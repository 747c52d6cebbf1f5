"""Training benchmarks for the tiny GPT, each measured in one run on this machine.

    python bench/bench_train.py                  # both parts
    python bench/bench_train.py --part default   # only: train with the defaults, then evaluate
    python bench/bench_train.py --part speed     # only: tokens/s, ours vs nn.TransformerEncoderLayer

1. ``default``: ``tiny-llm train`` with its defaults (the book's model), timed
   from the command's start to its end (tokenizer training included), then
   ``tiny-llm evaluate``: test perplexity against the baselines.
   Targets: test perplexity <= 4, training <= ~2 minutes on 2 CPU cores.
2. ``speed``: training tokens/s of TinyGPT against a model of the same sizes
   built from PyTorch's ``nn.TransformerEncoderLayer`` (pre-norm, GELU, causal
   mask, tied output layer), same batches, same optimiser. The two are timed
   in alternating rounds so that a change in machine load hits both alike.
   Target: ours at least 0.8x PyTorch's.

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

from bench.results_file import write_results  # noqa: E402

from tinyllm.model import GPTConfig  # noqa: E402
from tinyllm.train import TrainConfig, build_model, make_optimizer, train_step  # noqa: E402


def run_default(threads: int | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cli = [sys.executable, "-m", "tinyllm.cli"]
        thread_args = ["--threads", str(threads)] if threads else []
        start = time.perf_counter()
        subprocess.run([*cli, "train", "--out", tmp, *thread_args], check=True)
        train_seconds = time.perf_counter() - start
        checkpoint = str(Path(tmp) / "checkpoint.pt")
        scores = json.loads(subprocess.run([*cli, "evaluate", checkpoint, "--json", *thread_args], check=True,
                                           capture_output=True, text=True).stdout)
        sample = subprocess.run([*cli, "generate", checkpoint, "--max-new-tokens", "60", "--top-p", "0.9",
                                 "--temperature", "0.8"], check=True, capture_output=True, text=True).stdout
    models = scores["models"]
    return {
        "train_seconds": train_seconds,
        "test_perplexity": models["tiny GPT"]["perplexity"],
        "test_bits_per_byte": models["tiny GPT"]["bits_per_byte"],
        "bigram_perplexity": models["bigram"]["perplexity"],
        "unigram_perplexity": models["unigram"]["perplexity"],
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
        loss = nn.functional.cross_entropy(logits.reshape(B * T, -1), targets.reshape(B * T))
        return logits, loss


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=("all", "default", "speed"), default="all")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    parser.add_argument("--rounds", type=int, default=6, help="alternating timing rounds for the speed part")
    parser.add_argument("--steps", type=int, default=40, help="training steps per model per round")
    args = parser.parse_args()
    results = {"machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}}
    if args.part in ("all", "default"):
        results["default"] = d = run_default(args.threads)
        print(f"default run: trained in {d['train_seconds']:.1f} s; test perplexity {d['test_perplexity']:.3f} "
              f"(bigram {d['bigram_perplexity']:.3f}, unigram {d['unigram_perplexity']:.2f}); "
              f"{d['test_bits_per_byte']:.3f} bits per byte")
        print(f"sample: {d['sample'].strip()!r}")
    if args.part in ("all", "speed"):
        results["speed"] = s = run_speed(args.threads, args.rounds, args.steps)
        for name, value in s["tokens_per_s"].items():
            print(f"{name:28} {value:10,.0f} training tokens/s  ({s['parameters'][name]:,} parameters)")
        print(f"ratio ours / PyTorch: {s['ratio']:.2f}x  ({s['threads']} threads, {s['rounds']} rounds)")
    write_results("train", results)


if __name__ == "__main__":
    main()
