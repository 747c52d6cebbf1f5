"""The training loop: schedule, data windows, evaluation, reproducibility, checkpoints and resuming."""

from __future__ import annotations

import pytest
import torch

from tinyllm.model import GPTConfig
from tinyllm.batches import BatchSampler, windows
from tinyllm.evaluation import evaluate
from tinyllm.train import TrainConfig, Trainer, build_model, load_checkpoint, lr_at, param_groups, save_checkpoint

TINY = GPTConfig(vocab_size=260, context_length=8, d_model=16, n_layers=1, n_heads=2, d_ff=32, dropout=0.1)


def tiny_data(n: int = 600, seed: int = 0) -> list[int]:
    """A learnable sequence: a repeating pattern with some noise, ids in [0, 260)."""
    g = torch.Generator().manual_seed(seed)
    pattern = torch.tensor([256, 257, 258, 259, 10, 20, 30])
    ids = pattern.repeat(n // len(pattern) + 1)[:n].clone()
    noise = torch.rand(n, generator=g) < 0.1
    ids[noise] = torch.randint(0, 256, (int(noise.sum()),), generator=g)
    return ids.tolist()


def tiny_trainer(max_steps: int = 30, seed: int = 0, **overrides) -> Trainer:
    settings = dict(samples="windows", batch_size=8, lr=1e-2, min_lr=1e-3, warmup_steps=5, max_steps=max_steps,
                    eval_interval=10, keep="best", patience=100, seed=seed)
    config = TrainConfig(**{**settings, **overrides})
    return Trainer(build_model(TINY, seed), tiny_data(), tiny_data(200, seed=1), config, device="cpu",
                   merges=[(97, 98), (99, 100), (101, 102), (103, 104)])


def test_loss_falls_in_a_few_steps():
    trainer = tiny_trainer(max_steps=40)
    val = tiny_data(200, seed=1)
    before = evaluate(trainer.model, val, TINY.context_length)
    history = trainer.train()
    after = evaluate(trainer.model, val, TINY.context_length)
    assert after < before - 1.0, (before, after)
    assert history.val_loss[-1] < history.val_loss[0]
    assert len(history.loss) == 40 and history.eval_step == [10, 20, 30, 40]


def test_same_seed_same_curve_and_other_seed_another():
    a = tiny_trainer(seed=3).train()
    b = tiny_trainer(seed=3).train()
    c = tiny_trainer(seed=4).train()
    assert a.loss == b.loss and a.val_loss == b.val_loss
    assert a.loss != c.loss


def test_training_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny_trainer(max_steps=5).train()
    assert torch.equal(torch.rand(3), expected)


def test_resume_after_interruption_is_bit_exact(tmp_path):
    whole = tiny_trainer(max_steps=30)
    whole.train()

    first = tiny_trainer(max_steps=30)
    first.train(until=17)  # interrupted between evaluations, mid-schedule
    first.save(tmp_path / "run.pt")
    del first
    resumed = Trainer.resume(tmp_path / "run.pt", tiny_data(), tiny_data(200, seed=1), device="cpu")
    assert resumed.step == 17
    resumed.train()

    for (name, p), q in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(p, q), f"{name} differs after resuming"
    assert whole.history.loss == resumed.history.loss
    assert whole.history.val_loss == resumed.history.val_loss


def test_stop_requested_by_callback_at_an_eval_step_resumes_exactly(tmp_path):
    whole = tiny_trainer(max_steps=30)
    whole.train()
    first = tiny_trainer(max_steps=30)
    first.train(callback=lambda p: p.step == 20 and not p.is_eval)  # e.g. Ctrl-C in a CLI
    assert first.step == 20 and first.history.eval_step == [10, 20]  # the evaluation still ran
    first.save(tmp_path / "stopped.pt")
    resumed = Trainer.resume(tmp_path / "stopped.pt", tiny_data(), tiny_data(200, seed=1), device="cpu")
    resumed.train()
    assert resumed.history.val_loss == whole.history.val_loss
    assert all(torch.equal(a, b) for a, b in zip(whole.model.parameters(), resumed.model.parameters()))


def test_callback_sees_steps_and_evaluations_and_can_stop():
    seen = []
    trainer = tiny_trainer(max_steps=30)
    trainer.train(callback=lambda p: seen.append(p) or (p.is_eval and p.step == 20))
    assert trainer.step == 20 and not trainer.finished
    evals = [p for p in seen if p.is_eval]
    assert [p.step for p in evals] == [10, 20] and all(p.val_loss is not None for p in evals)
    assert all(p.tokens_per_s > 0 and p.lr > 0 for p in seen)


def test_throughput_counts_the_tokens_predicted_and_the_padded_positions_apart():
    """Documents of different lengths: a batch is padded to its longest, padding is computed, never scored."""
    from tinyllm.batches import DocumentSampler

    g = torch.Generator().manual_seed(0)
    documents = [[256] + torch.randint(0, 256, (int(n),), generator=g).tolist() + [256]
                 for n in torch.randint(1, 7, (20,), generator=g)]  # 3 to 8 ids each: at most T + 1 = 9
    config = TrainConfig(samples="documents", batch_size=4, max_steps=6, eval_interval=3, warmup_steps=1)
    trainer = Trainer(build_model(TINY, 0), documents, documents[:5], config, device="cpu")
    seen = []
    history = trainer.train(callback=lambda p: None if p.is_eval else seen.append(p))
    batches = DocumentSampler(documents, 4, seed=0)  # the trainer's batches, drawn again
    scored = padded = 0
    for _ in range(6):
        x, y = batches.next_batch()
        scored, padded = scored + int((y >= 0).sum()), padded + x.numel()
    assert history.tokens_seen == scored < padded == history.positions_seen <= 6 * 4 * TINY.context_length
    assert history.tokens_per_s == pytest.approx(scored / history.train_seconds)
    assert len(seen) == 6 and all(p.tokens_per_s > 0 for p in seen)


def test_early_stopping_keeps_the_best_weights():
    trainer = tiny_trainer(max_steps=200, lr=3e-2, min_lr=3e-2, patience=2)
    history = trainer.train()
    assert history.stopped_early and trainer.step < 200
    assert history.best_val_loss == min(history.val_loss)
    final = evaluate(trainer.model, tiny_data(200, seed=1), TINY.context_length)
    assert final == pytest.approx(history.best_val_loss, abs=1e-6)


def test_checkpoint_round_trip(tmp_path):
    trainer = tiny_trainer(max_steps=12)
    trainer.train()
    path = tmp_path / "sub" / "ckpt.pt"
    trainer.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["ckpt.pt"]  # no temporary file left behind
    ckpt = load_checkpoint(path)
    assert ckpt.model_config == TINY and ckpt.train_config == trainer.config
    assert ckpt.merges == [(97, 98), (99, 100), (101, 102), (103, 104)]
    assert ckpt.step == 12 and ckpt.finished and ckpt.history.loss == trainer.history.loss
    assert ckpt.best_val_loss == trainer.history.best_val_loss
    model = ckpt.model()
    x = torch.tensor([tiny_data()[:8]])
    trainer.model.eval()
    assert torch.equal(model(x)[0], trainer.model(x)[0])


def test_corrupt_or_foreign_checkpoint_is_a_value_error_naming_the_file(tmp_path):
    trainer = tiny_trainer(max_steps=2)
    trainer.train()
    good = tmp_path / "good.pt"
    trainer.save(good)

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    mismatched = tmp_path / "mismatched.pt"
    state = trainer.state()
    state["model_config"] = {**state["model_config"], "d_model": 32, "n_heads": 2}
    save_checkpoint(mismatched, **state)

    for path in (truncated, garbage, foreign, mismatched):
        with pytest.raises(ValueError, match=path.name):
            load_checkpoint(path)


def test_lr_schedule_warmup_peak_and_end():
    config = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    assert lr_at(0, config) == pytest.approx(1e-4)  # 1/10 of the peak
    assert lr_at(4, config) == pytest.approx(5e-4)
    assert lr_at(9, config) == pytest.approx(1e-3)  # last warm-up step: the peak
    assert lr_at(10, config) == pytest.approx(1e-3)  # cosine starts at the peak
    assert lr_at(60, config) == pytest.approx(5.5e-4)  # half-way: the mean of peak and floor
    assert lr_at(110, config) == pytest.approx(1e-4)
    assert lr_at(500, config) == pytest.approx(1e-4)
    values = [lr_at(s, config) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay


def test_windows_are_every_start_with_targets_shifted_by_one():
    ids = list(range(100, 120))
    x, y = windows(ids, 5)
    assert x.shape == y.shape == (15, 5)
    assert x[0].tolist() == [100, 101, 102, 103, 104] and y[0].tolist() == [101, 102, 103, 104, 105]
    assert x[-1].tolist() == ids[14:19] and y[-1].tolist() == ids[15:20]
    assert torch.equal(x[:, 1:], y[:, :-1])
    with pytest.raises(ValueError):
        windows([1, 2, 3], 5)


def test_batch_sampler_is_seeded_and_resumable():
    a = BatchSampler(list(range(50)), 4, 3, seed=7)
    b = BatchSampler(list(range(50)), 4, 3, seed=7)
    a.next_batch()
    b.load_state_dict(a.state_dict())
    xa, ya = a.next_batch()
    xb, yb = b.next_batch()
    assert torch.equal(xa, xb) and torch.equal(ya, yb) and xa.shape == (3, 4)
    assert torch.equal(ya, xa + 1)


class CountingModel(torch.nn.Module):
    """Records which targets it is asked to predict; its loss is a constant 2 nats."""

    def __init__(self, context_length: int):
        super().__init__()
        self.config = GPTConfig(vocab_size=256, context_length=context_length)
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.targets: list[int] = []

    def forward(self, idx, targets):
        assert idx.shape[-1] <= self.config.context_length
        self.targets += targets.flatten().tolist()
        return None, torch.tensor(2.0)


def test_evaluate_predicts_every_token_once():
    ids = list(range(1, 24))  # 22 targets: two full windows of 8 and a tail of 6
    model = CountingModel(context_length=8)
    assert evaluate(model, ids, 8, batch_size=1) == pytest.approx(2.0)
    assert sorted(model.targets) == ids[1:]
    # a real model: the mean equals the per-token losses summed by hand
    trainer = tiny_trainer(max_steps=1)
    data = tiny_data(45)
    trainer.model.eval()
    total = 0.0
    for start in range(0, 44, 8):
        chunk = torch.tensor(data[start : min(start + 9, 45)])
        with torch.no_grad():
            _, loss = trainer.model(chunk[None, :-1], chunk[None, 1:])
        total += loss.item() * (len(chunk) - 1)
    assert evaluate(trainer.model, data, 8, batch_size=2) == pytest.approx(total / 44, rel=1e-5)


def test_no_weight_decay_on_biases_norms_and_embeddings():
    model = build_model(TINY, 0)
    decay, keep = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decayed == {n for n, p in model.named_parameters() if n.endswith("weight") and p.dim() == 2
                       and "emb" not in n}
    assert "tok_emb.weight" in {names[id(p)] for p in keep["params"]}
    assert keep["weight_decay"] == 0.0 and decay["weight_decay"] == 0.1
    assert len(decay["params"]) + len(keep["params"]) == len(list(model.parameters()))


def test_train_config_rejects_nonsense():
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig(lr=1e-4, min_lr=1e-3)
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    assert TrainConfig.from_dict(TrainConfig(seed=5).to_dict()) == TrainConfig(seed=5)
