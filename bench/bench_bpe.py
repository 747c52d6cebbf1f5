"""BPE training speed: our trainer vs the naive algorithm vs Hugging Face ``tokenizers``, one run.

    python bench/bench_bpe.py [--megabytes 1.0] [--merges 1000] [--skip-naive]

The text is the book's corpus repeated (and cut) to the asked size. Three
trainers learn the same number of merges from it:

- ``train_bpe_fast`` (tinyllm.bpe), the one the book and ``tiny-llm`` use:
  pair counts updated locally after each merge;
- ``train_bpe`` (tinyllm.bpe), the naive reference: recount every pair after
  every merge (chapter 2 shows it; the test suite proves the two equal);
- Hugging Face ``tokenizers`` (Rust), byte-level, without its regex
  pre-tokenizer, so that it too may merge across spaces as ours does
  (``pip install -e ".[bench]"``; skipped if missing).

Prints seconds and ratios, checks that ours and the naive one learned the same
merges, and writes bench/results/bpe.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results_file import add_smoke_flag, write_results  # noqa: E402

from tinyllm.bpe import train_bpe, train_bpe_fast  # noqa: E402
from tinyllm.data import read_corpus, split_documents  # noqa: E402


def sample_text(megabytes: float) -> str:
    corpus = read_corpus()
    size = int(megabytes * 1_000_000)
    text = corpus * (size // len(corpus.encode("utf-8")) + 1)
    return text.encode("utf-8")[:size].decode("utf-8", errors="ignore")


def time_it(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def hugging_face(text: str, vocab_size: int) -> tuple[float, int] | None:
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:
        return None
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=0, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    documents = split_documents(text)  # HF counts merges within each sequence it is given
    start = time.perf_counter()
    tokenizer.train_from_iterator(documents, trainer=trainer)
    return time.perf_counter() - start, tokenizer.get_vocab_size()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, default=1.0)
    parser.add_argument("--merges", type=int, default=1000)
    parser.add_argument("--skip-naive", action="store_true", help="the naive trainer takes minutes")
    add_smoke_flag(parser)
    args = parser.parse_args()
    if args.smoke:
        args.megabytes, args.merges = 0.01, 20
    text = sample_text(args.megabytes)
    vocab_size = 256 + args.merges
    n_bytes = len(text.encode("utf-8"))
    print(f"{n_bytes:,} bytes of text, {args.merges} merges")

    results: dict = {"bytes": n_bytes, "merges": args.merges, "seconds": {}}
    fast_s, fast_merges = time_it(train_bpe_fast, text, vocab_size)
    results["seconds"]["ours (train_bpe_fast)"] = fast_s
    if not args.skip_naive:
        naive_s, naive_merges = time_it(train_bpe, text, vocab_size)
        results["seconds"]["naive (train_bpe)"] = naive_s
        results["same_merges_as_naive"] = naive_merges == fast_merges
        assert naive_merges == fast_merges, "the fast trainer must learn exactly the naive trainer's merges"
    hf = hugging_face(text, vocab_size)
    if hf is not None:
        results["seconds"]["Hugging Face tokenizers"] = hf[0]
        results["hf_vocab_size"] = hf[1]
    else:
        print("Hugging Face tokenizers is not installed (pip install -e '.[bench]'); skipped")

    for name, seconds in results["seconds"].items():
        print(f"{name:26} {seconds:8.2f} s   {seconds / fast_s:7.2f}x the time of ours")
    results["ratios"] = {name: s / fast_s for name, s in results["seconds"].items()}
    write_results("bpe", results, smoke=args.smoke)


def summary(results: dict) -> list[tuple[str, str]]:
    """The README's rows: (figure, value)."""
    ratios = results["ratios"]
    text = f"{results['bytes'] / 1e6:.1f} MB, {results['merges']:,} merges: " + ", ".join(
        f"{name} {seconds:.2f} s" for name, seconds in results["seconds"].items())
    rows = [("BPE training", text)]
    if "naive (train_bpe)" in ratios:
        rows.append(("BPE training, the naive trainer / ours", f"{ratios['naive (train_bpe)']:.0f}x the time"))
    return rows


if __name__ == "__main__":
    main()
