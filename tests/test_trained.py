"""The shipped training runs (trained/, tools/trained.py): current, loadable, and what the code trains."""

from __future__ import annotations

import json

import pytest
import torch

from tools import execute_book, trained


def test_the_last_build_trained_nothing_that_is_not_shipped():
    """A fresh clone's build must read every run from trained/; what it trained instead is stale there."""
    missing = trained.stale()
    assert not missing, (f"the last build trained {len(missing)} runs that trained/ lacks, e.g. {missing[:3]}: "
                         "the training code changed; run `make runs` and commit trained/")


def test_every_shipped_entry_reads_as_the_book_reads_it():
    from tinyllm.train import load_checkpoint

    shipped = trained.entries(trained.SHIPPED)
    kinds = {name.rsplit("_", 1)[0] for name in shipped}
    assert {"tiny_gpt", "run_variant_history", "run_induction_run", "encoder", "seq2seq"} <= kinds, kinds
    for name, path in shipped.items():
        if name.endswith(".json"):
            json.loads(path.read_text(encoding="utf-8"))
        elif name.startswith("tiny_gpt_"):
            checkpoint = load_checkpoint(path)
            assert checkpoint.finished and checkpoint.merges is not None, name
            assert checkpoint.optimizer_state is None and checkpoint.best_model_state is None, f"{name} is not slim"
        else:
            assert isinstance(torch.load(path, map_location="cpu", weights_only=True), dict), name


def test_shipping_slims_checkpoints_and_seeding_fills_only_what_the_cache_lacks(tmp_path):
    from tinyllm.model import GPTConfig
    from tinyllm.train import TrainConfig, Trainer, build_model, load_checkpoint

    config = GPTConfig(vocab_size=260, context_length=8, d_model=8, n_heads=2, n_layers=1)
    ids = torch.randint(0, 260, (200,), generator=torch.Generator().manual_seed(0))
    run = Trainer(build_model(config, 0), ids, ids, TrainConfig(samples="windows", max_steps=2, warmup_steps=1,
                                                                 eval_interval=2, batch_size=2),
                  merges=[(1, 2), (3, 4), (5, 6), (7, 8)])
    run.train()
    cache, shipped = tmp_path / "cache", tmp_path / "shipped"
    cache.mkdir()
    run.save(cache / "tiny_gpt_0123.pt")
    (cache / "run_x_0123.json").write_text('{"loss": 1.5}')
    (cache / "run_x_0123.json.lock").write_text("")
    assert trained.ship(cache, shipped) == ["run_x_0123.json", "tiny_gpt_0123.pt"]
    assert sorted(p.name for p in shipped.iterdir()) == ["run_x_0123.json", "tiny_gpt_0123.pt"]
    full, slim = load_checkpoint(cache / "tiny_gpt_0123.pt"), load_checkpoint(shipped / "tiny_gpt_0123.pt")
    assert slim.optimizer_state is None and full.optimizer_state is not None
    assert all(torch.equal(slim.model_state[k], v) for k, v in full.model_state.items())
    assert slim.history.to_dict() == full.history.to_dict() and slim.merges == full.merges

    build = tmp_path / "build"
    build.mkdir()
    (build / "run_x_0123.json").write_text('{"loss": 9.0}')  # already there: a cache entry is never overwritten
    assert trained.seed(build, shipped) == 1
    assert (build / "run_x_0123.json").read_text() == '{"loss": 9.0}'
    before = set(trained.entries(build))
    (build / "run_y_4567.json").write_text("{}")  # what a chapter trained
    record = tmp_path / trained.RECORD
    assert trained.record(record, build, before) == ["run_y_4567.json"]
    assert trained.stale(record, shipped) == ["run_y_4567.json"]
    (shipped / "run_y_4567.json").write_text("{}")  # make runs shipped it
    assert trained.stale(record, shipped) == []


def test_the_build_copies_the_shipped_runs_unless_told_to_train(tmp_path, monkeypatch):
    shipped, models = tmp_path / "shipped", tmp_path / "models"
    shipped.mkdir()
    (shipped / "run_x_0123.json").write_text("{}")
    monkeypatch.setattr(trained, "SHIPPED", shipped)
    monkeypatch.setattr(execute_book, "chapters", lambda: [])  # nothing to execute: only the copying runs
    monkeypatch.setenv("TINYLLM_CACHE", str(models))
    execute_book.execute(jobs=1, cache_path=tmp_path / "jupyter", log=lambda line: None, shipped=False)
    assert not (models / "run_x_0123.json").exists()
    execute_book.execute(jobs=1, cache_path=tmp_path / "jupyter", log=lambda line: None)
    assert (models / "run_x_0123.json").read_text() == "{}"


@pytest.mark.slow
def test_shipped_runs_are_what_the_code_trains(tmp_path, monkeypatch):
    """Train again, from nothing, the book's model (read by five chapters) and one of chapter 12's runs.

    Training runs on one thread, so the weights and the results must be the
    shipped ones exactly; a difference means trained/ was not made by this code
    (or training stopped being deterministic).
    """
    from tinyllm.book import compare_runs, new_facts_run, trained_tiny_gpt
    from tinyllm.train import load_checkpoint

    monkeypatch.setenv("TINYLLM_CACHE", str(tmp_path))
    model, _, history = trained_tiny_gpt()
    (checkpoint,) = tmp_path.glob("tiny_gpt_*.pt")
    assert (trained.SHIPPED / checkpoint.name).exists(), f"{checkpoint.name} is not shipped: run `make runs`"
    shipped = load_checkpoint(trained.SHIPPED / checkpoint.name)
    for name, value in model.state_dict().items():
        assert torch.equal(value, shipped.model_state[name]), f"{checkpoint.name}: {name} differs"
    assert history.loss == shipped.history.loss and history.val_loss == shipped.history.val_loss

    variant = dict(rank=4, lr=2e-3, steps=60)  # chapter 12's "LoRA, rank 4"
    result = compare_runs(new_facts_run, {"LoRA, rank 4": variant}, seeds=(0,), processes=1)
    (run,) = tmp_path.glob("run_new_facts_run_*.json")
    assert (trained.SHIPPED / run.name).exists(), f"{run.name} is not shipped: does chapter 12 still run {variant}?"
    assert result.results["LoRA, rank 4"][0] == json.loads((trained.SHIPPED / run.name).read_text(encoding="utf-8"))
