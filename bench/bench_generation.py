"""Generation speed with and without the KV cache, at several lengths, in one run on this machine.

    python bench/bench_generation.py                    # 1 .. 512 new tokens
    python bench/bench_generation.py --lengths 8 64 --repeats 1

The modern model (TinyLlama) at the book's sizes (d_model 64, 2 layers, 4 query
heads sharing 2 key/value heads, SwiGLU width 176), with a context long enough
for the longest run; random weights, since speed does not depend on what the
weights are. For each number of new tokens, greedy ``generate`` (the whole
sequence through the model for every token) and ``generate_cached`` (the
prompt once, then one token per call) continue the same 16-token prompt; the
two are timed in alternating order and the faster of ``--repeats`` runs is
kept, so that a change in machine load hits both alike. Both must return the
same ids. Target: the cached generate at least 5x faster at 512 new tokens.

Prints a table and writes bench/results/generation.json.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results_file import add_smoke_flag, write_results  # noqa: E402

from tinyllm.layers import swiglu_hidden  # noqa: E402
from tinyllm.model import GPTConfig, make_model  # noqa: E402
from tinyllm.sampling import generate, generate_cached  # noqa: E402

PROMPT_LENGTH = 16


def timed(function, *args, **kwargs) -> tuple[float, torch.Tensor]:
    start = time.perf_counter()
    out = function(*args, **kwargs)
    return time.perf_counter() - start, out


def measure(lengths: list[int], repeats: int) -> list[dict]:
    config = GPTConfig(arch="llama", n_kv_heads=2, d_ff=swiglu_hidden(64), dropout=0.0,
                       context_length=PROMPT_LENGTH + max(lengths))
    torch.manual_seed(0)
    model = make_model(config).eval()
    prompt = torch.randint(0, config.vocab_size, (1, PROMPT_LENGTH), generator=torch.Generator().manual_seed(1))
    generate_cached(model, prompt, 4, temperature=0)  # warm-up: first calls allocate
    rows = []
    for n in lengths:
        best = {"uncached": float("inf"), "cached": float("inf")}
        outputs = {}
        for r in range(repeats):
            order = ("uncached", "cached") if r % 2 == 0 else ("cached", "uncached")
            for name in order:
                decode = generate if name == "uncached" else generate_cached
                seconds, outputs[name] = timed(decode, model, prompt, n, temperature=0)
                best[name] = min(best[name], seconds)
        if not torch.equal(outputs["cached"], outputs["uncached"]):
            raise SystemExit(f"the cached and uncached generate differ at {n} new tokens")
        row = {"new_tokens": n, "uncached_seconds": best["uncached"], "cached_seconds": best["cached"],
               "uncached_tokens_per_second": n / best["uncached"], "cached_tokens_per_second": n / best["cached"],
               "speedup": best["uncached"] / best["cached"]}
        rows.append(row)
        print(f"{n:>6} {row['uncached_tokens_per_second']:>14,.0f} {row['cached_tokens_per_second']:>14,.0f} "
              f"{row['speedup']:>8.2f}x", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512],
                        help="numbers of new tokens to generate")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; the fastest counts")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    add_smoke_flag(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.lengths, args.repeats = [1, 4], 1
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{'new':>6} {'uncached tok/s':>14} {'cached tok/s':>14} {'speed-up':>9}")
    rows = measure(args.lengths, args.repeats)
    # The crossover: the shortest run from which on the cache wins at every length measured.
    crossover = next((r["new_tokens"] for i, r in enumerate(rows) if all(x["speedup"] > 1.0 for x in rows[i:])), None)
    print(f"the cached generate is faster from {crossover} new tokens on" if crossover else "the cache never wins")
    write_results("generation", {
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "prompt_length": PROMPT_LENGTH, "repeats": args.repeats, "rows": rows, "crossover": crossover},
        smoke=args.smoke)
    return 0


def summary(results: dict) -> list[tuple[str, str]]:
    """The README's rows: (figure, value)."""
    longest = results["rows"][-1]
    return [(f"generation with the KV cache / without, {longest['new_tokens']} new tokens",
             f"{longest['speedup']:.1f}x faster")]


if __name__ == "__main__":
    sys.exit(main())
