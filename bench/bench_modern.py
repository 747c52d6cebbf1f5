"""The GPT-2-style model against the modern one with 4, 2 and 1 key/value heads, trained on the book's corpus.

    python bench/bench_modern.py                 # the four models, the book's training defaults
    python bench/bench_modern.py --kv-heads 1    # GPT-2 style and one modern model only

Each modern model is ``modern_counterpart(GPTConfig(), n_kv_heads)``: the book's
sizes with the SwiGLU width whose parameter count is nearest the GPT-2-style
model's. All train with the same ``TrainConfig`` (steps, batches, schedule,
seed) through the book's cached trainer (``tinyllm.book.trained_tiny_gpt``,
one thread), so a model the book has already trained is loaded, not trained
again. For each: parameters, KV-cache bytes per token (float32), final
validation loss, and the exact-answer rate on the test split's questions.

Prints a table and writes bench/results/modern.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results_file import add_smoke_flag, write_results  # noqa: E402

from tinyllm.answers import exact_answer_rate  # noqa: E402
from tinyllm.book import trained_tiny_gpt  # noqa: E402
from tinyllm.data import read_corpus, split_corpus, split_documents  # noqa: E402
from tinyllm.model import GPTConfig, modern_counterpart  # noqa: E402
from tinyllm.scaling import kv_cache_bytes  # noqa: E402
from tinyllm.train import TrainConfig  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kv-heads", type=int, nargs="+", default=[4, 2, 1], help="key/value heads to try")
    add_smoke_flag(parser)
    args = parser.parse_args(argv)
    train_config = TrainConfig()
    if args.smoke:  # a few steps, trained here rather than taken from the book's cache
        args.kv_heads = [2]
        train_config = TrainConfig(max_steps=4, warmup_steps=2, eval_interval=4)
    base = GPTConfig()
    configs = {"GPT-2 style": base} | {f"modern, {n} KV heads": modern_counterpart(base, n) for n in args.kv_heads}
    test_documents = split_documents(split_corpus(read_corpus()).test)
    rows = []
    print(f"{'model':22} {'d_ff':>5} {'parameters':>11} {'KV bytes/token':>15} {'val loss':>9} {'exact':>7} {'seconds':>8}")
    for name, config in configs.items():
        start = time.perf_counter()
        model, tokenizer, history = trained_tiny_gpt(config, train_config)
        seconds = time.perf_counter() - start
        row = {"model": name, "d_ff": config.d_ff, "parameters": model.num_parameters(),
               "kv_bytes_per_token": kv_cache_bytes(config.n_layers, config.kv_heads, config.d_model // config.n_heads,
                                                    seq_len=1, bytes_per_value=4),
               "val_loss": history.val_loss[-1], "steps": history.step[-1],
               "exact_answer_rate": exact_answer_rate(model, tokenizer, test_documents), "seconds": seconds}
        rows.append(row)
        print(f"{name:22} {row['d_ff']:5} {row['parameters']:11,} {row['kv_bytes_per_token']:15,} "
              f"{row['val_loss']:9.3f} {100 * row['exact_answer_rate']:6.1f}% {seconds:8.1f}", flush=True)
    write_results("modern", {"train_config": train_config.to_dict(), "rows": rows}, smoke=args.smoke)
    return 0


def summary(results: dict) -> list[tuple[str, str]]:
    """The README's rows: (figure, value)."""
    return [(f"validation loss after {results['train_config']['max_steps']:,} steps, one seed: " + row["model"],
             f"{row['val_loss']:.3f} ({row['parameters']:,} parameters, "
             f"{row['kv_bytes_per_token']:,} KV-cache bytes per token)") for row in results["rows"]]


if __name__ == "__main__":
    sys.exit(main())
