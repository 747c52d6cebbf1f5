"""The ``tiny-llm`` command line: training, resuming, evaluation, generation and its error messages."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tinyllm.cli import MODEL_OPTIONS, TRAIN_OPTIONS, build_parser, main, unescape
from tinyllm.data import read_corpus, split_documents
from tinyllm.train import load_checkpoint

TINY = ["--vocab-size", "270", "--context-length", "8", "--d-model", "16", "--n-layers", "1", "--n-heads", "2",
        "--d-ff", "32", "--batch-size", "8", "--warmup-steps", "2", "--threads", "1", "--no-progress"]


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory) -> Path:
    """The first 150 documents of the book's corpus: enough for all three splits, quick to tokenize."""
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text("\n\n".join(split_documents(read_corpus())[:150]) + "\n", encoding="utf-8")
    return path


def train(out: Path, corpus: Path, *extra: str) -> int:
    return main(["train", "--out", str(out), "--corpus", str(corpus), *TINY, *extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, small_corpus) -> Path:
    out = tmp_path_factory.mktemp("run")
    assert train(out, small_corpus, "--max-steps", "40", "--eval-interval", "10") == 0
    return out / "checkpoint.pt"


def test_help_explains_every_option(capsys):
    for command, options in (("train", [*MODEL_OPTIONS, *TRAIN_OPTIONS, "resume", "until", "out", "corpus", "device",
                                        "no_split"]),
                             ("evaluate", ["split", "corpus", "json"]),
                             ("generate", ["prompt", "max_new_tokens", "greedy", "temperature", "top_k", "top_p",
                                           "seed", "repetition_penalty", "draft", "draft_tokens"]),
                             ("ask", ["question", "temperature", "top_k", "top_p", "seed", "device"]),
                             ("quantize", ["bits", "group_size", "out"]),
                             ("finetune", ["qa", "out", "steps", "batch_size", "lr", "lora_rank", "lora_alpha",
                                           "unmasked", "resume", "until", "seed", "save_every"])):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([command, "--help"])
        assert exit_info.value.code == 0
        text = capsys.readouterr().out
        for option in options:
            assert "--" + option.replace("_", "-") in text or option in text, (command, option)
        # Each option states its default once, and "not given" (None) is not a default to show.
        entries = re.split(r"\n  (?=-)", " ".join(text.split("\n\n")[2:]))
        for entry in entries:
            flat = " ".join(entry.split())
            assert flat.count("(default:") <= 1 and "(default: None)" not in flat, (command, flat)


# Options several commands share on purpose with a different meaning: their help says which.
MEANT_TO_DIFFER = {"out", "seed", "temperature", "resume", "batch_size", "lr", "checkpoint",
                   "samples"}  # train: documents or windows; generate: how many continuations


def test_an_option_shared_by_commands_behaves_the_same_in_each():
    """--force, --until, --top-k, --top-p, --threads, --device, --corpus: one definition each, so the
    same type, default, choices and help in every command that takes it; --resume names each command's file."""
    import argparse

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    seen: dict[str, list[tuple[str, argparse.Action]]] = {}
    for name, command in commands.items():
        for action in command._actions:
            if action.dest != "help":
                seen.setdefault(action.dest, []).append((name, action))
    shared = {dest: uses for dest, uses in seen.items() if len(uses) > 1}
    assert {"force", "until", "top_k", "top_p", "threads", "device", "resume"} <= set(shared)
    for dest, uses in shared.items():
        assert len({tuple(a.option_strings) for _, a in uses}) == 1, dest
        if dest not in MEANT_TO_DIFFER:
            assert len({(type(a), a.type, a.choices, a.metavar, a.default, a.help) for _, a in uses}) == 1, dest
    resume = {name: action.help for name, action in shared["resume"]}
    assert "DIR/checkpoint.pt" in resume["train"] and "DIR/finetune.pt" in resume["finetune"]
    assert resume["train"].replace("checkpoint.pt", "finetune.pt") == resume["finetune"]


def test_a_tiny_model_trains_and_its_validation_loss_falls(trained):
    ckpt = load_checkpoint(trained)
    assert ckpt.finished and ckpt.step == 40
    val = ckpt.history.val_loss
    assert len(val) == 4 and val[-1] < val[0] - 0.5, val
    assert ckpt.model_config.d_model == 16 and ckpt.model_config.vocab_size == 270
    assert len(ckpt.merges) == 13 and ckpt.end_of_text and ckpt.meta["corpus_sha256"]  # 256 + 13 + end-of-text
    assert ckpt.split and ckpt.tokenizer().split  # the book's tokenizer: GPT-2's pre-split, then BPE


def test_no_split_trains_the_unsplit_tokenizer(tmp_path, small_corpus):
    from tinyllm.bpe import BPETokenizer
    from tinyllm.data import split_corpus

    assert train(tmp_path, small_corpus, "--max-steps", "2", "--no-split") == 0
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert not ckpt.split
    assert ckpt.merges == BPETokenizer.train(split_corpus(small_corpus.read_text()).train, 269).merges
    assert main(["train", "--out", str(tmp_path), "--corpus", str(small_corpus), *TINY, "--resume",
                 "--no-split"]) == 0  # the same setting: it resumes (and finds the run finished)


def test_same_seed_same_run_other_seed_another(tmp_path, small_corpus, trained):
    assert train(tmp_path / "a", small_corpus, "--max-steps", "40", "--eval-interval", "10") == 0
    assert train(tmp_path / "b", small_corpus, "--max-steps", "40", "--eval-interval", "10", "--seed", "1") == 0
    same, other, ref = (load_checkpoint(p).history for p in
                        (tmp_path / "a/checkpoint.pt", tmp_path / "b/checkpoint.pt", trained))
    assert same.loss == ref.loss
    assert other.loss != ref.loss


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).model_state


def test_resume_after_until_gives_the_uninterrupted_weights(tmp_path, small_corpus):
    options = ["--max-steps", "24", "--eval-interval", "5", "--dropout", "0.1"]
    assert train(tmp_path / "whole", small_corpus, *options) == 0
    assert train(tmp_path / "parts", small_corpus, *options, "--until", "7") == 0
    assert load_checkpoint(tmp_path / "parts/checkpoint.pt").step == 7
    assert main(["train", "--out", str(tmp_path / "parts"), "--corpus", str(small_corpus), "--resume",
                 "--threads", "1", "--no-progress", "--until", "16"]) == 0
    assert main(["train", "--out", str(tmp_path / "parts"), "--corpus", str(small_corpus), "--resume",
                 "--threads", "1", "--no-progress"]) == 0
    whole, parts = _weights(tmp_path / "whole/checkpoint.pt"), _weights(tmp_path / "parts/checkpoint.pt")
    assert whole.keys() == parts.keys()
    for name in whole:
        assert torch.equal(whole[name], parts[name]), name
    assert load_checkpoint(tmp_path / "parts/checkpoint.pt").history.loss == \
        load_checkpoint(tmp_path / "whole/checkpoint.pt").history.loss


@pytest.mark.slow
def test_ctrl_c_saves_and_resume_finishes_exactly(tmp_path, small_corpus):
    """A real interruption: SIGINT to a running ``tiny-llm train``, then ``--resume``."""
    options = ["--max-steps", "2000", "--eval-interval", "50"]
    command = [sys.executable, "-m", "tinyllm.cli", "train", "--corpus", str(small_corpus), *TINY, *options]
    interrupted = subprocess.Popen([*command, "--out", str(tmp_path / "parts")], stderr=subprocess.PIPE, text=True)
    checkpoint = tmp_path / "parts" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and time.monotonic() < deadline:  # the first validation has saved
        time.sleep(0.05)
    interrupted.send_signal(signal.SIGINT)
    _, stderr = interrupted.communicate(timeout=120)
    assert interrupted.returncode == 0, stderr
    assert "continue with" in stderr and "Traceback" not in stderr
    stopped_at = load_checkpoint(checkpoint).step
    assert 50 <= stopped_at < 2000, stopped_at
    subprocess.run([*command, "--out", str(tmp_path / "parts"), "--resume"], check=True, capture_output=True)
    subprocess.run([*command, "--out", str(tmp_path / "whole")], check=True, capture_output=True)
    whole, parts = _weights(tmp_path / "whole/checkpoint.pt"), _weights(checkpoint)
    for name in whole:
        assert torch.equal(whole[name], parts[name]), name


def test_evaluate_reports_the_model_and_the_baselines(trained, small_corpus, capsys):
    assert main(["evaluate", str(trained), "--corpus", str(small_corpus), "--json", "--threads", "1"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["split"] == "test" and scores["tokens"] > 100
    models = scores["models"]
    assert set(models) == {"tiny GPT", "unigram", "bigram"}
    for s in models.values():
        assert s["perplexity"] == pytest.approx(torch.tensor(s["loss"]).exp().item(), rel=1e-6)
        assert 0 < s["bits_per_byte"] < 8
    # Same checkpoint, same numbers as the library computes directly: each test document from position 0.
    from tinyllm.data import document_sequences, split_corpus
    from tinyllm.evaluation import evaluate_documents

    ckpt = load_checkpoint(trained)
    test_docs = split_documents(split_corpus(small_corpus.read_text()).test)
    sequences = document_sequences(test_docs, ckpt.tokenizer(), 8)
    assert models["tiny GPT"]["loss"] == pytest.approx(evaluate_documents(ckpt.model(), sequences), rel=1e-6)
    assert scores["exact_answers"] == {}  # with a context of 8 tokens no question fits: nothing to ask


@pytest.fixture(scope="module")
def questions_fit(tmp_path_factory, small_corpus) -> Path:
    """A run with the default context of 64, which the corpus's questions fit."""
    out = tmp_path_factory.mktemp("run64")
    at = TINY.index("--context-length")
    args = TINY[:at] + TINY[at + 2 :]
    assert main(["train", "--out", str(out), "--corpus", str(small_corpus), *args, "--max-steps", "5"]) == 0
    return out / "checkpoint.pt"


def test_evaluate_reports_exact_answers_per_split(questions_fit, small_corpus, capsys):
    from tinyllm.data import split_corpus

    capsys.readouterr()
    assert main(["evaluate", str(questions_fit), "--corpus", str(small_corpus), "--json",
                 "--threads", "1"]) == 0
    exact = json.loads(capsys.readouterr().out)["exact_answers"]
    splits = split_corpus(small_corpus.read_text())
    for name in ("train", "val", "test"):
        assert exact[name]["questions"] == len(split_documents(getattr(splits, name)))
        assert 0 <= exact[name]["exact"] <= exact[name]["questions"]
        assert 0 <= exact[name]["typed"] <= exact[name]["questions"]
    assert main(["evaluate", str(questions_fit), "--corpus", str(small_corpus), "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "questions answered exactly" in out and "cut from training" in out and "typed" in out


def test_evaluate_warns_about_another_corpus(trained, capsys):
    assert main(["evaluate", str(trained), "--threads", "1"]) == 0
    assert "was trained on" in capsys.readouterr().err


def test_generate_continues_any_prompt_reproducibly(trained, capsys):
    prompt = "Q: Что такое 注意力? 🙂"  # characters the tokenizer never saw: byte-level BPE still encodes them
    args = ["generate", str(trained), "--prompt", prompt, "--max-new-tokens", "12", "--seed", "3", "--top-k", "20",
            "--top-p", "0.9", "--temperature", "0.8", "--threads", "1"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith(prompt)
    assert main(args) == 0
    assert capsys.readouterr().out == first
    assert main(["generate", str(trained), "--greedy", "--max-new-tokens", "5", "--samples", "2"]) == 0
    greedy = capsys.readouterr().out.split("--- sample 2\n")
    assert greedy[0].removeprefix("--- sample 1\n") == greedy[1]


def test_a_prompt_is_read_as_typed_in_a_shell(trained, capsys):
    assert unescape(r"Q: Why?\nA:") == "Q: Why?\nA:" and unescape(r"a\tb") == "a\tb"
    assert unescape(r"C:\\new \x") == r"C:\new \x"  # a doubled backslash is one; other escapes stay
    assert main(["generate", str(trained), "--prompt", r"Q: Why?\nA:", "--max-new-tokens", "3", "--greedy"]) == 0
    assert capsys.readouterr().out.startswith("Q: Why?\nA:")


def test_ask_frames_the_question_and_answers_greedily(questions_fit, capsys):
    from tinyllm.answers import ask

    ckpt = load_checkpoint(questions_fit)
    capsys.readouterr()
    assert main(["ask", str(questions_fit), "What is a token?", "--threads", "1"]) == 0
    assert capsys.readouterr().out == ask(ckpt.model(), ckpt.tokenizer(), "What is a token?") + "\n"
    sampled = ["ask", str(questions_fit), "What is a token?", "--temperature", "0.9", "--seed", "2", "--threads", "1"]
    assert main(sampled) == 0
    first = capsys.readouterr().out
    assert main(sampled) == 0 and capsys.readouterr().out == first  # same seed, same answer


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory, trained) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("bad")
    files = {"empty": folder / "empty.txt", "latin1": folder / "latin1.txt", "garbage": folder / "garbage.pt",
             "foreign": folder / "foreign.pt", "truncated": folder / "truncated.pt"}
    files["empty"].write_text("  \n\n")
    files["latin1"].write_bytes("Q: Qu'est-ce qu'un caf\xe9 ?\n".encode("latin-1"))
    files["garbage"].write_bytes(os.urandom(2000))
    torch.save({"weights": torch.zeros(3)}, files["foreign"])
    files["truncated"].write_bytes(trained.read_bytes()[:5000])
    return files


BAD_INPUTS = {
    "missing corpus": (["train", "--corpus", "{missing}"], "corpus file not found"),
    "empty corpus": (["train", "--corpus", "{empty}"], "is empty"),
    "non-UTF-8 corpus": (["train", "--corpus", "{latin1}"], "is not valid UTF-8: bad byte 0xe9"),
    "vocabulary below 256": (["train", "--vocab-size", "200"], "vocab_size must be at least 256"),
    "context below 1": (["train", "--context-length", "0"], "context_length must be at least 1"),
    "heads do not divide d_model": (["train", "--d-model", "30", "--n-heads", "4"],
                                    "d_model (30) must be divisible by n_heads (4)"),
    "bad learning rates": (["train", "--lr", "0.001", "--min-lr", "0.01"], "need 0 < min_lr <= lr"),
    "resume without a run": (["train", "--resume", "--out", "{nowhere}"], "nothing to resume"),
    "overwrite a run": (["train", "--out", "{run}"], "already exists: continue it with --resume"),
    "resume with other sizes": (["train", "--out", "{run}", "--resume", "--d-model", "32"],
                                "these differ from it: --d-model"),
    "missing checkpoint": (["evaluate", "{missing}"], "checkpoint not found"),
    "garbage checkpoint": (["evaluate", "{garbage}"], "is not a readable tinyllm checkpoint"),
    "truncated checkpoint": (["generate", "{truncated}"], "is not a readable tinyllm checkpoint"),
    "foreign checkpoint": (["generate", "{foreign}"], "is not a tinyllm checkpoint"),
    "empty prompt": (["generate", "{checkpoint}", "--prompt", ""], "--prompt is empty"),
    "bad top-p": (["generate", "{checkpoint}", "--top-p", "1.5"], "--top-p must be in (0, 1]"),
    "bad temperature": (["generate", "{checkpoint}", "--temperature", "-1"], "--temperature must be at least 0"),
    "empty question": (["ask", "{checkpoint}", "  "], "the question is empty"),
    "ask with a bad temperature": (["ask", "{checkpoint}", "Why?", "--temperature", "-1"],
                                   "--temperature must be at least 0"),
    "ask a model without end-of-text": (["ask", "{windows}", "Why?"], "without an end-of-text token"),
    "question longer than the context": (["ask", "{checkpoint}", "What is a token?"],
                                         "the question fills the context window of 8 tokens"),
    "resume unsplit from a split run": (["train", "--out", "{run}", "--resume", "--no-split"],
                                        "these differ from it: --no-split"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_input_gets_a_clear_message(case, bad_files, trained, small_corpus, tmp_path, capsys):
    argv, message = BAD_INPUTS[case]
    names = {**{k: str(v) for k, v in bad_files.items()}, "missing": str(tmp_path / "missing.txt"),
             "nowhere": str(tmp_path / "nowhere"), "run": str(trained.parent), "checkpoint": str(trained)}
    if "{windows}" in argv:  # a model trained on windows: no end-of-text token
        assert train(tmp_path / "windows", small_corpus, "--samples", "windows", "--max-steps", "1") == 0
        names["windows"] = str(tmp_path / "windows" / "checkpoint.pt")
        capsys.readouterr()
    assert main([a.format(**names) for a in argv]) == 1
    err = capsys.readouterr().err
    assert message in err, err
    assert err.startswith(f"tiny-llm {argv[0]}: error: ") and err.count("\n") == 1, err


def test_errors_come_without_a_traceback_from_the_console_script(bad_files):
    script = Path(sys.executable).parent / "tiny-llm"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "tinyllm.cli"]
    result = subprocess.run([*command, "train", "--corpus", str(bad_files["latin1"])], capture_output=True, text=True)
    assert result.returncode == 1
    assert "not valid UTF-8" in result.stderr and "Traceback" not in result.stderr
    usage = subprocess.run([*command, "train", "--d-model", "many"], capture_output=True, text=True)
    assert usage.returncode == 2 and "invalid int value" in usage.stderr


# --------------------------------------------------------------------------- finetune

QA = "Q: What is a token?\nA: A piece of text.\n\nQ: What is a model?\nA: A function.\n\nQ: Why stop?\nA: To end.\n"


@pytest.fixture(scope="module")
def chat_ready(tmp_path_factory, small_corpus) -> tuple[Path, Path]:
    """A tiny model trained on documents with a context long enough for a chat turn, and a Q&A file."""
    out = tmp_path_factory.mktemp("chat")
    assert train(out, small_corpus, "--context-length", "40", "--max-steps", "4", "--eval-interval", "4") == 0
    qa = out / "qa.txt"
    qa.write_text(QA, encoding="utf-8")
    return out / "checkpoint.pt", qa


def finetune(checkpoint: Path, qa: Path, out: Path, *extra: str) -> int:
    return main(["finetune", str(checkpoint), "--qa", str(qa), "--out", str(out), "--steps", "6",
                 "--batch-size", "2", "--threads", "1", "--save-every", "2", *extra])


@pytest.mark.parametrize("extra", [[], ["--lora-rank", "2"]], ids=["full", "lora"])
def test_finetune_resumed_after_until_gives_the_uninterrupted_weights(chat_ready, tmp_path, extra, capsys):
    from tinyllm.posttrain import load_finetune

    checkpoint, qa = chat_ready
    assert finetune(checkpoint, qa, tmp_path / "whole", *extra) == 0
    assert "answers" in capsys.readouterr().err
    assert finetune(checkpoint, qa, tmp_path / "parts", *extra, "--until", "3") == 0
    assert load_finetune(tmp_path / "parts/finetune.pt")["step"] == 3
    assert finetune(checkpoint, qa, tmp_path / "parts", *extra, "--resume") == 0
    whole, parts = load_finetune(tmp_path / "whole/finetune.pt"), load_finetune(tmp_path / "parts/finetune.pt")
    assert whole["losses"] == parts["losses"] and whole["model"].keys() == parts["model"].keys()
    for name in whole["model"]:
        assert torch.equal(whole["model"][name], parts["model"][name]), name
    if extra:
        assert any("lora_b" in name for name in whole["model"])


FINETUNE_ERRORS = {
    "fine-tuning checkpoint as the base": ("{finetuned}", "{qa}", [], "is a fine-tuning checkpoint (from 'tiny-llm "
                                           "finetune'); this command reads checkpoints written by 'tiny-llm train'"),
    "window-trained base": ("{windows}", "{qa}", [], "trained without an end-of-text token"),
    "garbage base": ("{garbage}", "{qa}", [], "is not a readable tinyllm checkpoint"),
    "missing Q&A file": ("{checkpoint}", "{missing}", [], "Q&A file"),
    "Q&A file without answers": ("{checkpoint}", "{prose}", [], "is not a 'Q: ...' line followed by an 'A: ...'"),
    "non-UTF-8 Q&A file": ("{checkpoint}", "{latin1}", [], "Q&A file"),
    "resume without a run": ("{checkpoint}", "{qa}", ["--resume"], "nothing to resume"),
    "resume with another rank": ("{checkpoint}", "{qa}", ["--out", "{done}", "--resume", "--lora-rank", "3"],
                                 "these differ from it: --lora-rank"),
    "overwrite a run": ("{checkpoint}", "{qa}", ["--out", "{done}"], "already exists"),
}


@pytest.mark.parametrize("case", FINETUNE_ERRORS)
def test_finetune_bad_input_gets_a_clear_message(case, chat_ready, bad_files, small_corpus, tmp_path_factory,
                                                 capsys):
    checkpoint, qa = chat_ready
    folder = tmp_path_factory.getbasetemp() / "finetune-errors"
    if not (folder / "done/finetune.pt").exists():
        assert finetune(checkpoint, qa, folder / "done") == 0
        assert train(folder / "windows", small_corpus, "--samples", "windows", "--max-steps", "2",
                     "--eval-interval", "2") == 0
        (folder / "prose.txt").write_text("Just a sentence.\n\nAnother one.\n", encoding="utf-8")
    capsys.readouterr()
    names = {"checkpoint": str(checkpoint), "qa": str(qa), "finetuned": str(folder / "done/finetune.pt"),
             "windows": str(folder / "windows/checkpoint.pt"), "garbage": str(bad_files["garbage"]),
             "missing": str(folder / "missing.txt"), "prose": str(folder / "prose.txt"),
             "latin1": str(bad_files["latin1"]), "done": str(folder / "done")}
    base, qa_file, extra, message = FINETUNE_ERRORS[case]
    argv = ["finetune", base.format(**names), "--qa", qa_file.format(**names), "--out", str(folder / "new"),
            *[a.format(**names) for a in extra]]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert message in err, err
    assert err.startswith("tiny-llm finetune: error: ") and err.count("\n") == 1, err


def test_generate_and_evaluate_name_a_fine_tuning_checkpoint(chat_ready, tmp_path, capsys):
    checkpoint, qa = chat_ready
    assert finetune(checkpoint, qa, tmp_path / "run") == 0
    capsys.readouterr()
    for command in (["generate"], ["evaluate"]):
        assert main([*command, str(tmp_path / "run/finetune.pt")]) == 1
        err = capsys.readouterr().err
        assert "is a fine-tuning checkpoint" in err and err.count("\n") == 1, err


# --------------------------------------------------------------------------- the book's model, asked as typed


@pytest.mark.slow
def test_the_books_model_answers_typed_questions_from_the_command_line(capsys):
    """``tiny-llm evaluate`` measures >= 90% of the training questions answered exactly, cut from training and
    typed; ``ask`` and ``generate`` with a typed question give the corpus's answer (the book's model: from the
    build's cache, or trained here)."""
    from tinyllm.book import tiny_gpt_checkpoint
    from tinyllm.data import split_corpus
    from tinyllm.posttrain import parse_qa

    checkpoint = str(tiny_gpt_checkpoint())
    capsys.readouterr()
    assert main(["evaluate", checkpoint, "--json", "--threads", "1"]) == 0
    train = json.loads(capsys.readouterr().out)["exact_answers"]["train"]
    assert train["exact"] >= 0.9 * train["questions"] and train["typed"] >= 0.9 * train["questions"], train
    question, answer = parse_qa(split_corpus(read_corpus()).train)[0]  # "What do we mean by a token?"
    assert main(["ask", checkpoint, question, "--threads", "1"]) == 0
    assert capsys.readouterr().out == answer + "\n"
    assert main(["generate", checkpoint, "--prompt", f"Q: {question}\\nA:", "--greedy", "--threads", "1"]) == 0
    assert capsys.readouterr().out == f"Q: {question}\nA: {answer}\n"


# --------------------------------------------------------------------------- quantize, and generate --draft


@pytest.fixture(scope="module")
def quantized(chat_ready, small_corpus, tmp_path_factory) -> dict[str, Path]:
    """The chat-ready model (context 40) quantized two ways, and a model with another tokenizer."""
    checkpoint, _ = chat_ready
    folder = tmp_path_factory.mktemp("quantized")
    files = {"float": checkpoint, "int8": folder / "int8.pt", "int4": folder / "int4.pt"}
    assert main(["quantize", str(checkpoint), "--bits", "8", "--out", str(files["int8"])]) == 0
    assert main(["quantize", str(checkpoint), "--bits", "4", "--group-size", "8", "--out", str(files["int4"])]) == 0
    assert train(folder / "other", small_corpus, "--vocab-size", "266", "--context-length", "40", "--max-steps", "2",
                 "--eval-interval", "2") == 0
    files["other"] = folder / "other" / "checkpoint.pt"
    return files


def test_quantize_writes_a_model_that_generate_and_evaluate_read(quantized, small_corpus, capsys):
    from tinyllm.quantize import load_quantized

    for name, bits, group in (("int8", 8, None), ("int4", 4, 8)):
        ckpt = load_quantized(quantized[name])
        assert (ckpt.bits, ckpt.group_size) == (bits, group)
        assert ckpt.tokenizer().split and ckpt.merges == load_checkpoint(quantized["float"]).merges  # pre-split kept
        assert quantized[name].stat().st_size < quantized["float"].stat().st_size / 3  # no optimiser, small codes
        capsys.readouterr()
        assert main(["generate", str(quantized[name]), "--prompt", "Q", "--greedy", "--max-new-tokens", "6",
                     "--threads", "1"]) == 0
        assert capsys.readouterr().out.startswith("Q")
        assert main(["evaluate", str(quantized[name]), "--corpus", str(small_corpus), "--json", "--threads", "1"]) == 0
        scores = json.loads(capsys.readouterr().out)
        assert math.isfinite(scores["models"]["tiny GPT"]["loss"]) and scores["exact_answers"]


def test_generate_with_a_draft_writes_the_models_greedy_text(quantized, capsys):
    base = ["generate", str(quantized["float"]), "--prompt", "Q: What", "--max-new-tokens", "20", "--threads", "1"]
    assert main([*base, "--greedy"]) == 0
    alone = capsys.readouterr().out
    for draft in ("int4", "int8"):
        assert main([*base, "--greedy", "--draft", str(quantized[draft]), "--draft-tokens", "3"]) == 0
        captured = capsys.readouterr()
        assert captured.out == alone
        assert re.search(r"speculative decoding: 20 tokens in \d+ calls of the model", captured.err), captured.err
    sampled = [*base, "--draft", str(quantized["int4"]), "--seed", "5", "--samples", "2"]
    assert main(sampled) == 0
    first = capsys.readouterr().out
    assert main(sampled) == 0
    assert capsys.readouterr().out == first and first.count("--- sample") == 2


QUANTIZE_ERRORS = {  # options that cannot work: one line, exit status 2
    "bit width": (["quantize", "{float}", "--bits", "3"], "--bits must be 8 or 4, got 3"),
    "group size 0": (["quantize", "{float}", "--bits", "4", "--group-size", "0"], "--group-size must be at least 1"),
    "group size that does not divide": (["quantize", "{float}", "--bits", "4", "--group-size", "5"],
                                        "group size 5 does not divide the 16 input features of"),
    "draft with another tokenizer": (["generate", "{float}", "--draft", "{other}"],
                                     "was trained with another tokenizer than"),
    "no tokens drafted": (["generate", "{float}", "--draft", "{int4}", "--draft-tokens", "0"],
                          "--draft-tokens must be at least 1"),
    "draft without the cache": (["generate", "{float}", "--draft", "{int4}", "--no-cache"],
                                "--draft cannot be combined with --no-cache"),
    "draft past the context": (["generate", "{float}", "--draft", "{int4}", "--max-new-tokens", "60"],
                               "exceed the context of 40 tokens"),
}


@pytest.mark.parametrize("case", QUANTIZE_ERRORS)
def test_quantize_and_draft_errors_are_one_line_with_status_2(case, quantized, capsys):
    argv, message = QUANTIZE_ERRORS[case]
    capsys.readouterr()
    assert main([a.format(**{k: str(v) for k, v in quantized.items()}) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert err.startswith(f"tiny-llm {argv[0]}: error: ") and err.count("\n") == 1, err


def test_a_quantized_checkpoint_is_not_a_training_checkpoint(quantized, capsys):
    for argv in (["quantize", str(quantized["int8"]), "--bits", "4"],
                 ["finetune", str(quantized["int8"]), "--out", str(quantized["int8"].parent / "ft")]):
        capsys.readouterr()
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "is a quantized checkpoint (from 'tiny-llm quantize')" in err and err.count("\n") == 1, err
