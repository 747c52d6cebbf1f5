"""``tiny-llm``: train a BPE tokenizer and a TinyGPT, evaluate it, generate from it.

The command line is a thin shell over the library the book shows: the
tokenizer of chapter 2 (``tinyllm.bpe``), the model of chapter 8
(``tinyllm.model``), its training loop and checkpoints (``tinyllm.train``, with
``tinyllm.batches`` and ``tinyllm.evaluation``) and
the samplers of chapter 9 (``tinyllm.sampling``). Defaults are the book's
small model, so ``tiny-llm train`` reproduces chapter 8's run.

Errors a user can cause (a bad file, a bad size, a damaged checkpoint) are
reported in one line, with exit status 1 and no traceback; argparse's own
usage errors exit with 2, and so do options that cannot go together (a
draft model with another tokenizer, a bit width or group size that
``quantize`` cannot use), also in one line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import re
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path

import torch

from tinyllm.bpe import BPETokenizer
from tinyllm.answers import QUESTION_FRAME, answer_questions, ask, askable
from tinyllm.data import corpus_path, encode_splits, read_corpus, split_corpus, split_documents, token_stream
from tinyllm.model import ARCHITECTURES, GPTConfig, with_kv_cache
from tinyllm.ngram import NGramLM
from tinyllm.posttrain import (ChatTokenizer, FineTuneConfig, FineTuner, grow_vocabulary,
                               load_finetune, parse_qa, save_finetune, score_answers)
from tinyllm.quantize import BITS, load_quantized, quantize_model, save_quantized
from tinyllm.sampling import CallRecorder, generate, generate_cached
from tinyllm.speculative import speculative_generate
from tinyllm.evaluation import bits_per_byte, evaluate, evaluate_documents
from tinyllm.train import SAMPLES, Checkpoint, TrainConfig, Trainer, build_model, cpu_threads, load_checkpoint

CHECKPOINT_NAME = "checkpoint.pt"

# Model sizes and training settings, each with its command-line help. The defaults come
# from the dataclasses, so the command line cannot drift from the book's configuration.
MODEL_OPTIONS = {
    "vocab_size": "vocabulary: 256 byte tokens plus (vocab_size - 256) BPE merges; at least 256",
    "context_length": "longest sequence the model sees, in tokens (its learned positions); at least 1",
    "d_model": "width of every token's vector; must be divisible by --n-heads",
    "n_layers": "number of transformer blocks",
    "n_heads": "attention heads per block (each of width d_model / n_heads)",
    "d_ff": "hidden width of the feed-forward network (usually 4 x d_model)",
    "dropout": "dropout probability during training, in [0, 1)",
    "arch": "gpt2: learned positions, LayerNorm, GELU; llama: RoPE, RMSNorm, SwiGLU, grouped-query attention",
    "n_kv_heads": "llama only: key/value heads shared by the query heads (default: --n-heads)",
}
OPTION_TYPES = {"arch": str, "n_kv_heads": int}  # where the dataclass default (a string, None) does not say
TRAIN_OPTIONS = {
    "samples": "documents: each sample one whole document from position 0, ended by an end-of-text token, "
               "padding not scored; windows: context-length windows at any offset of the joined text",
    "batch_size": "training samples (documents or windows) per optimiser step",
    "lr": "peak learning rate (AdamW), reached after the warm-up",
    "min_lr": "learning rate at the end of the cosine decay",
    "warmup_steps": "steps of linear warm-up from 0 to --lr",
    "max_steps": "optimiser steps in the whole run",
    "weight_decay": "AdamW decoupled weight decay, on weight matrices only",
    "grad_clip": "clip the global gradient norm to this value",
    "eval_interval": "steps between validations; 'epoch' validates once per pass over the training split",
    "keep": "last: train all --max-steps and keep the final weights (to memorise the corpus); best: stop early "
            "when the validation loss stops improving and keep the best weights (to generalise)",
    "patience": "with --keep best: stop after this many validations without a new best validation loss",
    "seed": "seed for the initial weights, the batch order and dropout: same seed, same run",
}


FINETUNE_OPTIONS = {
    "steps": "optimiser steps in the whole run",
    "batch_size": "questions per step, drawn at random with replacement",
    "lr": "learning rate (AdamW, constant, no weight decay)",
    "lora_rank": "0: fine-tune every weight; r >= 1: freeze the model and train LoRA matrices of rank r",
    "lora_alpha": "LoRA's scale: the update is multiplied by alpha / rank",
    "seed": "seed for the batch order and LoRA's initial matrices",
}
FINETUNE_NAME = "finetune.pt"

CHOICES = {"samples": SAMPLES, "keep": ("last", "best")}

# Where the command line departs from the library's TrainConfig: nowhere, so that its defaults train
# the book's model ('--eval-interval epoch' validates once per pass over the training split).
CLI_TRAIN_DEFAULTS: dict = {}


class CliError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""

    status = 1


class CliUsageError(CliError):
    """Options that cannot work together (exit status 2, as argparse's usage errors), in one line."""

    status = 2


# --------------------------------------------------------------------------- parser


def _defaults(cls) -> dict:
    return {f.name: f.default for f in fields(cls)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Append "(default: X)" to an option's help once: not when the help already
    states its default, and not for options whose default None means "not given"."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "(default:" in text or action.default is None or action.default is argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tiny-llm",
        description="Train a byte-level BPE tokenizer and a tiny GPT on a text file, "
        "evaluate it against counting baselines, and generate text from it.",
        epilog="Run 'tiny-llm COMMAND --help' for the options of each command.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        help="train a tokenizer and a model; writes DIR/checkpoint.pt",
        description="Train the BPE tokenizer on the training split of the corpus, then a TinyGPT on it, "
        "with AdamW, warm-up and cosine decay, gradient clipping, validation and early stopping. "
        "The checkpoint is rewritten (atomically) after every validation, so an interrupted run "
        "(Ctrl-C, a crash, --until) continues exactly with --resume.",
        formatter_class=_HelpFormatter,
    )
    _corpus_option(train)
    train.add_argument("--out", type=Path, default=Path("runs/tiny-gpt"), metavar="DIR",
                       help="folder for the checkpoint")
    sizes = train.add_argument_group("model sizes (defaults: the book's model)")
    for name, text in MODEL_OPTIONS.items():
        default = _defaults(GPTConfig)[name]
        sizes.add_argument(_flag(name), type=OPTION_TYPES.get(name, type(default)), default=None,
                           choices=ARCHITECTURES if name == "arch" else None,
                           help=text if "(default:" in text else f"{text} (default: {default})")
    tokenizing = train.add_argument_group("tokenizer")
    tokenizing.add_argument("--no-split", action="store_true",
                            help="run BPE over the whole text, so that merges may cross words and lines (chapter 2's "
                            "first tokenizer); by default the text is first split with GPT-2's pattern")
    training = train.add_argument_group("training")
    for name, text in TRAIN_OPTIONS.items():
        default = CLI_TRAIN_DEFAULTS.get(name, _defaults(TrainConfig)[name])
        kind = _eval_interval if name == "eval_interval" else type(default)
        training.add_argument(_flag(name), type=kind, default=None, choices=CHOICES.get(name),
                              help=f"{text} (default: {default})")
    run = _run_options(train, "checkpoint.pt")
    _device_options(run)
    run.add_argument("--no-progress", action="store_true", help="no progress bar (one line per validation)")

    evaluate_cmd = commands.add_parser(
        "evaluate",
        help="test perplexity and bits per byte, against unigram and bigram baselines",
        description="Score a trained model on a held-out split of the corpus it was trained on: mean loss, "
        "perplexity per token and bits per byte (comparable across tokenizers), beside unigram and "
        "bigram models counted on the same training split with the same tokenizer. A model trained on documents "
        "is also asked every question of each split, greedily: cut from the very sequence it was trained on, and "
        "typed (end-of-text, then 'Q: ...\\nA:' encoded on its own); it counts the answers that are the "
        "corpus's, token for token.",
        formatter_class=_HelpFormatter,
    )
    _checkpoint_argument(evaluate_cmd)
    _corpus_option(evaluate_cmd)
    evaluate_cmd.add_argument("--split", choices=("test", "val", "train"), default="test",
                              help="which split to score")
    evaluate_cmd.add_argument("--json", action="store_true", help="print the scores as JSON")
    _device_options(evaluate_cmd)

    generate_cmd = commands.add_parser(
        "generate",
        help="continue a prompt with a trained model",
        description="Continue a prompt. Decoding is greedy with --greedy (or --temperature 0); otherwise "
        "it samples, optionally from the top-k tokens and/or the top-p nucleus (chapter 9).",
        formatter_class=_HelpFormatter,
    )
    _checkpoint_argument(generate_cmd)
    generate_cmd.add_argument("--prompt", default="Q: What is",
                              help="text to continue (any Unicode); \\n in it is a newline and \\t a tab, as typed "
                              "in a shell (\\\\ for a backslash), so \"Q: What is a token?\\nA:\" asks a question")
    generate_cmd.add_argument("--max-new-tokens", type=int, default=100, help="tokens to generate")
    generate_cmd.add_argument("--greedy", action="store_true", help="always take the most likely token")
    _sampling_options(generate_cmd, 1.0, "divide the logits by this before sampling; 0 means greedy")
    generate_cmd.add_argument("--repetition-penalty", type=float, default=1.0,
                              help="divide the positive logits of tokens already in the text by this (multiply the negative ones)")
    generate_cmd.add_argument("--samples", type=int, default=1, help="number of continuations")
    _seed_option(generate_cmd, "text")
    generate_cmd.add_argument("--no-cache", action="store_true",
                              help="recompute the whole sequence for every token instead of using the KV cache "
                              "(the same text, slower; the cache needs prompt + tokens within the context)")
    generate_cmd.add_argument("--draft", type=Path, default=None, metavar="CHECKPOINT",
                              help="speculative decoding (chapter 14): a smaller model with the same tokenizer "
                              "drafts tokens that the model checks, several per call; the text is distributed "
                              "as the model's own (with --greedy, the same text)")
    generate_cmd.add_argument("--draft-tokens", type=int, default=4, metavar="K",
                              help="with --draft: tokens the draft model proposes per round")
    _device_options(generate_cmd)

    ask_cmd = commands.add_parser(
        "ask",
        help="ask a trained model a question, as the corpus frames one",
        description="Ask a question: the model reads it as the corpus writes its questions, "
        f"{QUESTION_FRAME.format(question='QUESTION')!r} after end-of-text, and its answer is what it writes up to "
        "its own end-of-text. Greedy unless --temperature is above 0.",
        formatter_class=_HelpFormatter,
    )
    _checkpoint_argument(ask_cmd, " (on documents)")
    ask_cmd.add_argument("question", help="the question, as you would type it (\"What is a token?\")")
    _sampling_options(ask_cmd, 0.0, "0: the most likely token every time (the answer as trained); above 0: sample")
    _seed_option(ask_cmd, "answer")
    _device_options(ask_cmd)

    quantize = commands.add_parser(
        "quantize",
        help="store a trained model's weights in 8 or 4 bits; the result loads in generate and evaluate",
        description="Quantize every weight matrix of a model written by 'tiny-llm train' (chapter 14): symmetric "
        "absmax codes of --bits bits with one float32 scale per row, or per group of --group-size consecutive "
        "weights of a row. Norms and biases stay in float32; the layers dequantize their weights when they run. "
        "'tiny-llm generate' and 'tiny-llm evaluate' read the file it writes.",
        formatter_class=_HelpFormatter,
    )
    _checkpoint_argument(quantize)
    quantize.add_argument("--bits", type=int, required=True, metavar="8|4", help="bits per weight: 8 or 4")
    quantize.add_argument("--group-size", type=int, default=None, metavar="N",
                          help="one scale per N consecutive weights of a row; N must divide every matrix's "
                          "input features (default: one scale per row)")
    quantize.add_argument("--out", type=Path, default=None, metavar="FILE",
                          help="where to write (default: next to the checkpoint, named after the scheme)")
    _threads_option(quantize)

    finetune = commands.add_parser(
        "finetune",
        help="supervised fine-tuning on questions and answers, in the chat template; writes DIR/finetune.pt",
        description="Fine-tune a model written by 'tiny-llm train' to answer in the chat template of chapter 12 "
        "(end-of-text, <|user|>, the question, <|assistant|>, the answer, end-of-text), with the loss on the "
        "answer only. The two role markers get new ids after end-of-text, so the model's token table grows by "
        "two rows. With --lora-rank the model is frozen and only LoRA matrices on its blocks' linear layers "
        "train. The checkpoint is rewritten (atomically) every --save-every steps, so an interrupted run "
        "continues exactly with --resume.",
        formatter_class=_HelpFormatter,
    )
    _checkpoint_argument(finetune, " (on documents)")
    finetune.add_argument("--qa", type=Path, default=None, metavar="FILE",
                          help="UTF-8 text of 'Q: ...' / 'A: ...' documents separated by blank lines "
                          "(default: the training split of the book's corpus)")
    finetune.add_argument("--out", type=Path, default=Path("runs/finetune"), metavar="DIR",
                          help="folder for the fine-tuning checkpoint")
    tuning = finetune.add_argument_group("fine-tuning")
    for name, text in FINETUNE_OPTIONS.items():
        default = _defaults(FineTuneConfig)[name]
        tuning.add_argument(_flag(name), type=type(default), default=None, help=f"{text} (default: {default})")
    tuning.add_argument("--unmasked", action="store_true",
                        help="score every token, the question included, not only the answer")
    ft_run = _run_options(finetune, "finetune.pt")
    ft_run.add_argument("--save-every", type=int, default=50, metavar="STEPS",
                        help="steps between checkpoints (and progress lines)")
    _device_options(ft_run)
    return parser


# Options more than one command takes: each defined here once, so that their
# spelling, type, default and help cannot drift apart between commands.

def _checkpoint_argument(parser: argparse.ArgumentParser, note: str = "") -> None:
    parser.add_argument("checkpoint", type=Path, help=f"a checkpoint written by 'tiny-llm train'{note}")


def _run_options(parser: argparse.ArgumentParser, checkpoint: str) -> argparse._ArgumentGroup:
    """The "run" group of a command that trains: --resume, --force, --until (DIR/``checkpoint`` is its save)."""
    run = parser.add_argument_group("run")
    run.add_argument("--resume", action="store_true",
                     help=f"continue the run saved in DIR/{checkpoint} exactly where it stopped")
    run.add_argument("--force", action="store_true", help="start a new run even if DIR already holds one")
    run.add_argument("--until", type=int, default=None, metavar="STEP",
                     help="stop at this step and save (continue later with --resume)")
    return run


def _sampling_options(parser: argparse.ArgumentParser, temperature: float, temperature_help: str) -> None:
    """--temperature (its default and meaning are the command's), --top-k, --top-p."""
    parser.add_argument("--temperature", type=float, default=temperature, help=temperature_help)
    parser.add_argument("--top-k", type=int, default=None, help="sample only from the k most likely tokens")
    parser.add_argument("--top-p", type=float, default=None,
                        help="sample only from the smallest set of tokens whose probability reaches p")


def _seed_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--seed", type=int, default=0, help=f"seed for sampling: same seed, same {what}")


def _threads_option(parser) -> None:
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")


def _corpus_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--corpus", type=Path, default=None, metavar="FILE",
                        help="UTF-8 text, documents separated by blank lines (default: the book's corpus)")


def _device_options(parser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where to run: auto picks CUDA when available")
    _threads_option(parser)


def _eval_interval(value: str) -> int | str:
    if value == "epoch":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of steps or 'epoch', got {value!r}") from None


# --------------------------------------------------------------------------- helpers


def _device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda was asked for, but PyTorch sees no CUDA device")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def _threads(n: int | None) -> int | None:
    if n is not None and n < 1:
        raise CliError(f"--threads must be at least 1, got {n}")
    return n


def _corpus(path: Path | None) -> tuple[str, Path]:
    path = corpus_path() if path is None else path
    if path.is_dir():
        raise CliError(f"corpus {path} is a folder, not a text file")
    return read_corpus(path), path


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _load(path: Path, quantized: bool = False) -> Checkpoint:
    """The checkpoint at ``path``; with ``quantized``, one written by 'tiny-llm quantize' too."""
    try:
        ckpt = load_checkpoint(path)
    except ValueError as err:
        try:
            ckpt = load_quantized(path)
        except ValueError:
            pass
        else:
            if not quantized:
                raise CliError(f"{path} is a quantized checkpoint (from 'tiny-llm quantize'); this command needs "
                               "the float weights of a checkpoint written by 'tiny-llm train'") from None
            return ckpt
        try:
            load_finetune(path)
        except ValueError:
            raise err from None
        raise CliError(f"{path} is a fine-tuning checkpoint (from 'tiny-llm finetune'); this command reads "
                       "checkpoints written by 'tiny-llm train'") from None
    if ckpt.merges is None:
        raise CliError(f"{path} holds no tokenizer merges, so its text cannot be encoded")
    return ckpt


def _encode_splits(text: str, tokenizer: BPETokenizer, context_length: int, samples: str):
    splits = split_corpus(text)
    ids = encode_splits(text, tokenizer, context_length, samples)
    if samples == "documents":
        return splits, ids
    if len(ids["train"]) < context_length + 1:
        raise CliError(
            f"the training split has {len(ids['train'])} tokens, fewer than one window of "
            f"--context-length {context_length} + 1; use a larger corpus or a shorter context"
        )
    if len(ids["val"]) < 2:
        raise CliError("the validation split has fewer than 2 tokens; use a larger corpus")
    return splits, ids


# --------------------------------------------------------------------------- train


def _configs(args, base_model: dict, base_train: dict) -> tuple[dict, dict, list[str]]:
    """The configurations asked for: ``base`` updated with the options given; and their names."""
    given = []
    model, train = dict(base_model), dict(base_train)
    for name in MODEL_OPTIONS:
        if getattr(args, name) is not None:
            model[name] = getattr(args, name)
            given.append(name)
    for name in TRAIN_OPTIONS:
        if getattr(args, name) is not None:
            train[name] = getattr(args, name)
            given.append(name)
    return model, train, given


def cmd_train(args) -> int:
    device = _device(args.device)
    text, corpus_file = _corpus(args.corpus)
    checkpoint = args.out / CHECKPOINT_NAME
    if args.until is not None and args.until < 1:
        raise CliError(f"--until must be at least 1, got {args.until}")

    if args.resume:
        if not checkpoint.exists():
            raise CliError(f"nothing to resume: {checkpoint} does not exist")
        ckpt = _load(checkpoint)
        model_cfg, train_cfg, given = _configs(args, ckpt.model_config.to_dict(), ckpt.train_config.to_dict())
        changed = [n for n in given if (model_cfg | train_cfg)[n] != (ckpt.model_config.to_dict()
                                                                    | ckpt.train_config.to_dict())[n]]
        if args.no_split and ckpt.split:
            changed.append("no_split")
        if changed:
            raise CliError("--resume continues the saved run with its own settings; these differ from it: "
                           + ", ".join(_flag(n) for n in changed))
        if ckpt.meta.get("corpus_sha256") not in (None, _digest(text)):
            raise CliError(f"{checkpoint} was trained on another corpus ({ckpt.meta.get('corpus', '?')}); "
                           "resume with the same --corpus")
        tokenizer = ckpt.tokenizer()
        _, ids = _encode_splits(text, tokenizer, ckpt.model_config.context_length, ckpt.train_config.samples)
        trainer = Trainer.resume(checkpoint, ids["train"], ids["val"], device=device)
        if trainer.finished:
            print(f"{checkpoint} is a finished run (step {trainer.step}); nothing to do", file=sys.stderr)
            return 0
        print(f"resuming {checkpoint} at step {trainer.step} of {trainer.config.max_steps}", file=sys.stderr)
    else:
        if checkpoint.exists() and not args.force:
            raise CliError(f"{checkpoint} already exists: continue it with --resume, or replace it with --force")
        model_cfg, train_cfg, _ = _configs(args, _defaults(GPTConfig), _defaults(TrainConfig) | CLI_TRAIN_DEFAULTS)
        model_config = GPTConfig(**model_cfg)  # ValueError on impossible sizes, before any work
        interval = train_cfg["eval_interval"]
        train_cfg["eval_interval"] = 1 if interval == "epoch" else interval
        train_config = TrainConfig(**train_cfg)
        start = time.perf_counter()
        splits = split_corpus(text)
        documents = train_config.samples == "documents"
        tokenizer = BPETokenizer.train(splits.train, model_config.vocab_size, end_of_text=documents,
                                       split=not args.no_split)
        if tokenizer.vocab_size < model_config.vocab_size:
            raise CliError(f"the training split is too small for --vocab-size {model_config.vocab_size}: "
                           f"it supports only {tokenizer.vocab_size}")
        print(f"tokenizer: {len(tokenizer.merges)} merges learned in {time.perf_counter() - start:.1f} s",
              file=sys.stderr)
        _, ids = _encode_splits(text, tokenizer, model_config.context_length, train_config.samples)
        if interval == "epoch":  # one pass over the training documents (or tokens), in steps
            per_step = train_config.batch_size * (1 if documents else model_config.context_length)
            train_config = TrainConfig(**(train_cfg | {"eval_interval": max(1, len(ids["train"]) // per_step)}))
        model = build_model(model_config, train_config.seed)
        trainer = Trainer(model, ids["train"], ids["val"], train_config, device=device, merges=tokenizer.merges,
                          end_of_text=documents, split=tokenizer.split)
        trainer.meta = {"corpus": str(corpus_file), "corpus_sha256": _digest(text)}
        print(f"model: {model.num_parameters():,} parameters on {device}; "
              f"{len(ids['train']):,} training and {len(ids['val']):,} validation "
              f"{'documents' if documents else 'tokens'}", file=sys.stderr)

    _train_with_progress(trainer, checkpoint, args.until, show_bar=not args.no_progress)
    h = trainer.history
    if trainer.finished:
        how = "stopped early" if h.stopped_early else "finished"
        print(f"{how} at step {trainer.step}: best validation loss {h.best_val_loss:.4f} "
              f"(perplexity {math.exp(h.best_val_loss):.2f}) at step {h.best_step}; "
              f"{h.train_seconds:.1f} s of training, {h.tokens_per_s:,.0f} tokens/s", file=sys.stderr)
        kept = "the best weights" if trainer.config.keep == "best" else "the final weights"
        print(f"saved {checkpoint} ({kept}); score it with: tiny-llm evaluate {checkpoint}",
              file=sys.stderr)
    else:
        print(f"stopped at step {trainer.step}; saved {checkpoint}; continue with: "
              f"tiny-llm train --out {args.out} --resume", file=sys.stderr)
    return 0


def _train_with_progress(trainer: Trainer, checkpoint: Path, until: int | None, show_bar: bool) -> None:
    """Run the trainer with a progress bar, saving after every validation; Ctrl-C stops and saves."""
    from tqdm.auto import tqdm

    bar = tqdm(total=trainer.config.max_steps, initial=trainer.step, unit="step", disable=not show_bar,
               dynamic_ncols=True, file=sys.stderr)

    def callback(progress) -> bool:
        if progress.is_eval:
            if not trainer.finished:  # a finished run is saved below, once it holds the weights it keeps
                trainer.save(checkpoint)  # between steps: a consistent state to resume from
            tqdm.write(f"step {progress.step:6d}  train loss {progress.loss:.4f}  val loss {progress.val_loss:.4f}  "
                       f"(best {trainer.history.best_val_loss:.4f})", file=sys.stderr)
        else:
            bar.update(1)
            bar.set_postfix(loss=f"{progress.loss:.3f}", lr=f"{progress.lr:.1e}",
                            tok_s=f"{progress.tokens_per_s:,.0f}", refresh=False)
        return sigint.interrupted

    with _first_sigint_stops() as sigint:
        try:
            trainer.train(callback=callback, until=until)
        finally:
            bar.close()
    trainer.save(checkpoint)
    if sigint.interrupted:
        print("interrupted", file=sys.stderr)


class _Interruption:
    interrupted = False


@contextmanager
def _first_sigint_stops():
    """While the block runs, a first Ctrl-C only sets ``.interrupted`` (the loop stops and saves at the
    next step); a second one raises KeyboardInterrupt at once, and the last saved checkpoint stands."""
    state = _Interruption()

    def on_sigint(signum, frame):
        if state.interrupted:
            raise KeyboardInterrupt
        state.interrupted = True

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, previous)


# --------------------------------------------------------------------------- evaluate


def evaluation_scores(ckpt: Checkpoint, text: str, split: str, device: torch.device) -> dict:
    """Loss, perplexity and bits per byte of the model and of unigram/bigram baselines on one split;
    for a model trained on documents, also the share of each split's questions it answers exactly."""
    tokenizer = ckpt.tokenizer()
    config = ckpt.model_config
    documents = ckpt.train_config.samples == "documents"
    splits, ids = _encode_splits(text, tokenizer, config.context_length if documents else 1,
                                 ckpt.train_config.samples)
    # The baselines count and score the same tokens: for documents, the stream EOT doc EOT doc ... EOT.
    streams = {name: token_stream(seqs) for name, seqs in ids.items()} if documents else ids
    held_out = streams[split]
    if len(held_out) < 2:
        raise CliError(f"the {split} split has fewer than 2 tokens")
    model = ckpt.model(device)
    losses = {
        "tiny GPT": (evaluate_documents(model, ids[split]) if documents
                     else evaluate(model, held_out, config.context_length)),
        "unigram": NGramLM(1, config.vocab_size).fit(streams["train"]).nll(held_out),
        "bigram": NGramLM(2, config.vocab_size).fit(streams["train"]).nll(held_out),
    }
    exact = {}
    if documents:
        for name in ("train", "val", "test"):
            questions = askable(tokenizer, split_documents(getattr(splits, name)), config.context_length)
            if questions:  # documents that are a question and its answer, the question inside the window
                answers = answer_questions(model, tokenizer, questions)
                typed = answer_questions(model, tokenizer, questions, typed=True)
                exact[name] = {"questions": len(answers), "exact": sum(a.exact for a in answers),
                               "typed": sum(a.exact for a in typed)}
    return {
        "split": split,
        "tokens": len(held_out),
        "bytes": sum(len(tokenizer.token_bytes(t)) for t in held_out),
        "models": {
            name: {"loss": loss, "perplexity": math.exp(loss),
                   "bits_per_byte": bits_per_byte(loss, held_out, tokenizer.token_bytes)}
            for name, loss in losses.items()
        },
        "exact_answers": exact,
    }


def cmd_evaluate(args) -> int:
    device = _device(args.device)
    ckpt = _load(args.checkpoint, quantized=True)
    text, corpus_file = _corpus(args.corpus)
    trained_on = ckpt.meta.get("corpus_sha256")
    if trained_on is not None and trained_on != _digest(text):
        print(f"warning: {args.checkpoint} was trained on {ckpt.meta.get('corpus', 'another corpus')}, "
              f"not on {corpus_file}: its splits differ, and held-out text may have been trained on",
              file=sys.stderr)
    scores = evaluation_scores(ckpt, text, args.split, device)
    if args.json:
        print(json.dumps(scores, indent=2))
        return 0
    print(f"{args.split} split: {scores['tokens']:,} tokens, {scores['bytes']:,} bytes")
    print(f"{'model':10} {'loss':>8} {'perplexity':>11} {'bits/byte':>10}")
    for name, s in scores["models"].items():
        print(f"{name:10} {s['loss']:8.4f} {s['perplexity']:11.3f} {s['bits_per_byte']:10.4f}")
    if scores["exact_answers"]:
        print("questions answered exactly (greedy decoding, the corpus's answer), the question")
        print(f"  {'':5} {'':9} {'cut from training':>17} {'typed':>15}")
        for name, e in scores["exact_answers"].items():
            print(f"  {name:5} {e['questions']:5,} asked {e['exact']:9,} {100 * e['exact'] / e['questions']:6.1f}% "
                  f"{e['typed']:7,} {100 * e['typed'] / e['questions']:6.1f}%")
    return 0


# --------------------------------------------------------------------------- generate and ask


def unescape(prompt: str) -> str:
    """A prompt as typed in a shell: ``\\n`` is a newline, ``\\t`` a tab, ``\\\\`` one backslash; the rest stays."""
    return re.sub(r"\\([nt\\])", lambda m: {"n": "\n", "t": "\t", "\\": "\\"}[m.group(1)], prompt)


def _sampling(args, device: torch.device, greedy: bool = False) -> dict:
    """The sampling settings of generate and ask, checked: greedy, or the temperature, top-k, top-p and seed."""
    if args.temperature < 0:
        raise CliError(f"--temperature must be at least 0, got {args.temperature}")
    if args.top_k is not None and args.top_k < 1:
        raise CliError(f"--top-k must be at least 1, got {args.top_k}")
    if args.top_p is not None and not 0 < args.top_p <= 1:
        raise CliError(f"--top-p must be in (0, 1], got {args.top_p}")
    if greedy or args.temperature == 0:
        return {"temperature": 0.0}
    return {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
            "generator": torch.Generator(device=device).manual_seed(args.seed)}


def cmd_generate(args) -> int:
    device = _device(args.device)
    if args.max_new_tokens < 0:
        raise CliError(f"--max-new-tokens must be at least 0, got {args.max_new_tokens}")
    if args.samples < 1:
        raise CliError(f"--samples must be at least 1, got {args.samples}")
    sampling = _sampling(args, device, greedy=args.greedy)
    if args.repetition_penalty <= 0:
        raise CliError(f"--repetition-penalty must be positive, got {args.repetition_penalty}")
    if not args.prompt:
        raise CliError("--prompt is empty: the model needs at least one token to continue")
    prompt = unescape(args.prompt)
    ckpt = _load(args.checkpoint, quantized=True)
    draft_ckpt = _draft(args, ckpt)
    tokenizer = ckpt.tokenizer()
    model = ckpt.model(device)
    prompt_ids = tokenizer.encode(prompt)  # byte-level: every character has bytes to fall back on
    eot = tokenizer.end_of_text_id
    if eot is not None:  # a model trained on documents reads the prompt as the start of one
        prompt_ids = [eot] + prompt_ids
    idx = torch.tensor([prompt_ids] * args.samples, dtype=torch.long, device=device)  # (samples, T)
    cached = not args.no_cache and idx.shape[1] + args.max_new_tokens <= model.config.context_length
    if not args.no_cache and not cached and draft_ckpt is None:  # the uncached generate slides a window
        print(f"(without the KV cache: prompt + tokens exceed the context of {model.config.context_length})",
              file=sys.stderr)
    decode = generate_cached if cached else generate
    if draft_ckpt is not None:
        out = _speculative(model, draft_ckpt.model(device), idx, args, sampling)
    else:
        out = decode(model, idx, args.max_new_tokens, repetition_penalty=args.repetition_penalty, **sampling)
    for i, row in enumerate(out.tolist()):
        if args.samples > 1:
            print(f"--- sample {i + 1}")
        if eot is not None:  # the text between the opening end-of-text and the first one written
            row = row[1:]
            written = row[len(prompt_ids) - 1 :]
            row = row[: len(prompt_ids) - 1 + (written.index(eot) if eot in written else len(written))]
        print(tokenizer.decode(row))
    return 0


def cmd_ask(args) -> int:
    device = _device(args.device)
    sampling = _sampling(args, device)
    if not args.question.strip():
        raise CliError("the question is empty")
    ckpt = _load(args.checkpoint)
    if not ckpt.end_of_text:
        raise CliError(f"{args.checkpoint} was trained without an end-of-text token (--samples windows): its answers "
                       "have no end; ask a model trained on documents, or use 'tiny-llm generate'")
    print(ask(ckpt.model(device), ckpt.tokenizer(), unescape(args.question), **sampling))
    return 0


def _draft(args, ckpt: Checkpoint) -> Checkpoint | None:
    """The --draft checkpoint, checked against the model's: None without --draft."""
    if args.draft is None:
        return None
    if args.draft_tokens < 1:
        raise CliUsageError(f"--draft-tokens must be at least 1, got {args.draft_tokens}")
    for flag, given in (("--no-cache", args.no_cache), ("--repetition-penalty", args.repetition_penalty != 1.0)):
        if given:
            raise CliUsageError(f"--draft cannot be combined with {flag}: speculative decoding keeps both models' "
                                "KV caches and samples from the models' own distributions")
    draft = _load(args.draft, quantized=True)
    if (draft.merges, draft.end_of_text, draft.split) != (ckpt.merges, ckpt.end_of_text, ckpt.split):
        raise CliUsageError(f"the draft {args.draft} was trained with another tokenizer than {args.checkpoint}: "
                            "speculative decoding needs both models to share one vocabulary")
    return draft


def _speculative(model, draft, idx: torch.Tensor, args, sampling: dict) -> torch.Tensor:
    """Each sample speculatively decoded (one sequence at a time); how many target calls it took, on stderr."""
    context = min(model.config.context_length, draft.config.context_length)
    if idx.shape[1] + args.max_new_tokens > context:
        raise CliUsageError(f"prompt ({idx.shape[1]} tokens) + --max-new-tokens {args.max_new_tokens} exceed the "
                            f"context of {context} tokens: speculative decoding keeps KV caches, which cannot slide")
    target = CallRecorder(with_kv_cache(model))  # a TinyGPT reads caches through its wrapper
    rows = [speculative_generate(target, draft, idx[i : i + 1], args.max_new_tokens, k=args.draft_tokens, **sampling)
            for i in range(idx.shape[0])]
    calls = len(target.lengths())
    written = idx.shape[0] * args.max_new_tokens
    print(f"speculative decoding: {written} tokens in {calls} calls of the model "
          f"({written / max(calls, 1):.2f} tokens per call, {args.draft_tokens} drafted per round)", file=sys.stderr)
    return torch.cat(rows, dim=0)


# --------------------------------------------------------------------------- quantize


def cmd_quantize(args) -> int:
    if args.bits not in BITS:
        raise CliUsageError(f"--bits must be 8 or 4, got {args.bits}")
    if args.group_size is not None and args.group_size < 1:
        raise CliUsageError(f"--group-size must be at least 1, got {args.group_size}")
    ckpt = _load(args.checkpoint)
    try:  # every matrix's input features must split into whole groups: checked before anything is written
        quantize_model(ckpt.model("cpu"), args.bits, args.group_size)
    except ValueError as err:
        raise CliUsageError(f"--group-size {args.group_size}: {err}") from None
    scheme = f"int{args.bits}" + (f"-g{args.group_size}" if args.group_size else "")
    out = args.out or args.checkpoint.with_name(f"{args.checkpoint.stem}-{scheme}.pt")
    if out.resolve() == args.checkpoint.resolve():
        raise CliUsageError(f"--out {out} is the checkpoint itself: write the quantized model to another file")
    save_quantized(out, ckpt, args.bits, args.group_size)
    before, after = args.checkpoint.stat().st_size, out.stat().st_size
    print(f"wrote {out}: {after:,} bytes ({args.bits} bits per weight, one scale per "
          f"{'group of ' + str(args.group_size) if args.group_size else 'row'}); the checkpoint was {before:,} bytes "
          f"with its optimiser state. Use it with: tiny-llm generate {out}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- finetune


def _base_for_finetune(path: Path) -> Checkpoint:
    """The checkpoint to fine-tune from, or a one-line error saying what kind of file it is instead."""
    if not path.is_file():
        raise CliError(f"checkpoint not found: {path}")
    ckpt = _load(path)
    if not ckpt.end_of_text:
        raise CliError(f"{path} was trained without an end-of-text token (--samples windows): the chat template "
                       "needs one; fine-tune a model trained on documents")
    return ckpt


def _qa(path: Path | None) -> tuple[list[tuple[str, str]], str]:
    if path is None:
        return parse_qa(split_corpus(read_corpus()).train), "the training split of the book's corpus"
    if not path.is_file():
        raise CliError(f"Q&A file {path} {'is a folder, not a text file' if path.is_dir() else 'not found'}")
    try:
        text = read_corpus(path)
    except ValueError as err:
        raise CliError(str(err).replace("corpus file", "Q&A file")) from None
    try:
        return parse_qa(text), str(path)
    except ValueError as err:
        raise CliError(f"Q&A file {path}: {err}") from None


def cmd_finetune(args) -> int:
    device = _device(args.device)
    ckpt = _base_for_finetune(args.checkpoint)
    pairs, source = _qa(args.qa)
    out = args.out / FINETUNE_NAME
    for name in ("until", "save_every"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise CliError(f"{_flag(name)} must be at least 1, got {getattr(args, name)}")
    given = {name: getattr(args, name) for name in FINETUNE_OPTIONS if getattr(args, name) is not None}
    if args.unmasked:
        given["masked"] = False
    chat = ChatTokenizer(ckpt.tokenizer())
    examples = [chat.example(q, a) for q, a in pairs]
    if args.resume:
        if not out.exists():
            raise CliError(f"nothing to resume: {out} does not exist")
        state = load_finetune(out)
        if [tuple(m) for m in state["merges"]] != list(ckpt.merges) or state["base_config"] != ckpt.model_config.to_dict():
            raise CliError(f"{out} was fine-tuned from another model than {args.checkpoint}")
        if state["meta"].get("qa_sha256") != _digest(repr(pairs)):
            raise CliError(f"{out} was fine-tuned on other questions ({state['meta'].get('qa', '?')}); "
                           "resume with the same --qa")
        config = FineTuneConfig(**state["config"])
        changed = [_flag(n) if n != "masked" else "--unmasked" for n, v in given.items() if getattr(config, n) != v]
        if changed:
            raise CliError("--resume continues the saved run with its own settings; these differ from it: "
                           + ", ".join(changed))
        model = grow_vocabulary(ckpt.model(device), 2)
        tuner = FineTuner(model, examples, chat.end_of_text_id, config)
        tuner.load_state(state)
        print(f"resuming {out} at step {tuner.step} of {config.steps}", file=sys.stderr)
    else:
        if out.exists() and not args.force:
            raise CliError(f"{out} already exists: continue it with --resume, or replace it with --force")
        config = FineTuneConfig(**given)
        model = grow_vocabulary(ckpt.model(device), 2)
        tuner = FineTuner(model, examples, chat.end_of_text_id, config)
        trainable = sum(p.numel() for p in tuner.model.parameters() if p.requires_grad)
        print(f"fine-tuning {trainable:,} of {sum(p.numel() for p in tuner.model.parameters()):,} parameters "
              f"({'LoRA rank ' + str(config.lora_rank) if config.lora_rank else 'all'}) on {len(examples):,} "
              f"questions from {source}", file=sys.stderr)
    meta = {"qa": source, "qa_sha256": _digest(repr(pairs)), "base": str(args.checkpoint)}
    stop_at = config.steps if args.until is None else min(args.until, config.steps)

    def callback(step: int, loss: float) -> bool:
        if step % args.save_every == 0 and step < config.steps:
            save_finetune(out, tuner, ckpt.model_config.to_dict(), ckpt.merges, meta)
            print(f"step {step:6d}  loss {loss:.4f}", file=sys.stderr)
        return sigint.interrupted

    with _first_sigint_stops() as sigint:
        tuner.train(until=stop_at, callback=callback)
    save_finetune(out, tuner, ckpt.model_config.to_dict(), ckpt.merges, meta)
    if tuner.step < config.steps:
        print(f"stopped at step {tuner.step}; saved {out}; continue with: tiny-llm finetune {args.checkpoint} "
              f"--out {args.out} --resume", file=sys.stderr)
        return 0
    score = score_answers(tuner.model, chat, pairs)
    print(f"finished at step {tuner.step}: last loss {tuner.losses[-1]:.4f}; answers {round(score.exact * len(pairs))} "
          f"of {len(pairs)} questions exactly, ends {round(score.ends * len(pairs))} with end-of-text; saved {out}",
          file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- main


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "generate": cmd_generate, "ask": cmd_ask,
            "finetune": cmd_finetune, "quantize": cmd_quantize}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        # --threads holds for this command only (main may be called in-process).
        with cpu_threads(_threads(args.threads)):
            return COMMANDS[args.command](args)
    except (CliError, ValueError, FileNotFoundError, IsADirectoryError, PermissionError) as err:
        print(f"tiny-llm {args.command}: error: {err}", file=sys.stderr)
        return getattr(err, "status", 1)
    except KeyboardInterrupt:
        print(f"tiny-llm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
