"""Tests for rnnkit.erc.training: the model-agnostic loop, checkpoints, resume and atomic writes."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from rnnkit.erc.training import (
    CHECKPOINT_DIR,
    STATE_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    Trainer,
    TrainerConfig,
    atomic_write_bytes,
    load_weights,
    save_weights,
)


def _items(n: int = 24, seed: int = 7) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return list(zip(x, y))


def _model() -> nn.Module:
    # Dropout makes the result depend on the RNG state, which resume has to restore.
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))


def _collate(items):
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def _loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def _trainer(out_dir=None, epochs=3, seed=0, dev=None):
    dev = dev or _items(16, seed=8)
    x_dev, y_dev = _collate(dev)

    def evaluate(model):
        accuracy = (model(x_dev).argmax(-1) == y_dev).float().mean().item() * 100
        return {"accuracy": accuracy, "neg_loss": -_loss(model, (x_dev, y_dev)).item()}

    config = TrainerConfig(epochs=epochs, batch_size=5, lr=1e-2, seed=seed, quiet=True)
    return Trainer(_model(), _items(), _collate, _loss, evaluate, "neg_loss", config, out_dir)


def _assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), name


def test_fit_keeps_the_best_dev_epoch(tmp_path):
    trainer = _trainer(tmp_path, epochs=4)
    result = trainer.fit()
    scores = [h["neg_loss"] for h in result.history]
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert result.best_epoch == scores.index(max(scores)) + 1
    assert result.best_score == max(scores)
    # The model left in memory and model.safetensors are the best epoch's weights: they reproduce its score.
    assert trainer.evaluate(trainer.model.eval())["neg_loss"] == pytest.approx(result.best_score, abs=1e-6)
    reloaded = _model()
    load_weights(reloaded, tmp_path / WEIGHTS_FILE)
    _assert_same_weights(reloaded, trainer.model)


def test_training_reduces_the_loss():
    result = _trainer(epochs=5).fit()
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_same_seed_same_weights_other_seed_differs():
    a, b, c = _trainer(seed=3), _trainer(seed=3), _trainer(seed=4)
    ra, rb, rc = a.fit(), b.fit(), c.fit()
    _assert_same_weights(a.model, b.model)
    assert ra.history == rb.history
    assert ra.history != rc.history


def test_resume_matches_an_uninterrupted_run(tmp_path):
    full = _trainer(tmp_path / "full", epochs=3)
    full_result = full.fit()

    _trainer(tmp_path / "split", epochs=2).fit()
    resumed = _trainer(tmp_path / "split", epochs=3)
    resumed_result = resumed.fit(resume=True)

    assert resumed_result == full_result
    _assert_same_weights(resumed.model, full.model)
    last_full, last_split = _model(), _model()
    load_weights(last_full, tmp_path / "full" / CHECKPOINT_DIR / "epoch-3.safetensors")
    load_weights(last_split, tmp_path / "split" / CHECKPOINT_DIR / "epoch-3.safetensors")
    _assert_same_weights(last_full, last_split)


def test_checkpoint_dir_keeps_only_last_and_best(tmp_path):
    result = _trainer(tmp_path, epochs=4).fit()
    names = {p.name for p in (tmp_path / CHECKPOINT_DIR).iterdir()}
    assert names == {STATE_FILE, "epoch-4.safetensors", f"epoch-{result.best_epoch}.safetensors"}
    state = torch.load(tmp_path / CHECKPOINT_DIR / STATE_FILE, weights_only=True)
    assert state["epoch"] == 4 and state["best_epoch"] == result.best_epoch
    assert not [p for p in tmp_path.rglob("*.tmp")]


def test_resume_of_a_finished_run_returns_its_result(tmp_path):
    first = _trainer(tmp_path, epochs=2).fit()
    again = _trainer(tmp_path, epochs=2)
    assert again.fit(resume=True) == first


def test_resume_without_checkpoint_raises(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        _trainer(tmp_path).fit(resume=True)


def test_resume_past_the_configured_epochs_raises(tmp_path):
    _trainer(tmp_path, epochs=3).fit()
    with pytest.raises(CheckpointError, match="already at epoch 3 > epochs=2"):
        _trainer(tmp_path, epochs=2).fit(resume=True)


def test_missing_monitored_score_raises():
    trainer = _trainer(epochs=1)
    trainer.monitor = "f1"
    with pytest.raises(KeyError, match="lacks the monitored score 'f1'"):
        trainer.fit()


def test_empty_training_set_raises():
    with pytest.raises(ValueError, match="train_items is empty"):
        Trainer(_model(), [], _collate, _loss, lambda m: {"a": 0.0}, "a")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epochs": 0}, "TrainerConfig.epochs must be an integer >= 1, got 0"),
        ({"batch_size": 2.5}, "TrainerConfig.batch_size must be an integer >= 1, got 2.5"),
        ({"lr": 0.0}, "TrainerConfig.lr must be a finite number > 0, got 0.0"),
        ({"grad_clip": -1.0}, "TrainerConfig.grad_clip must be a finite number >= 0, got -1.0"),
        ({"seed": -2}, "TrainerConfig.seed must be an integer >= 0, got -2"),
        ({"device": "toaster"}, "TrainerConfig.device must be 'auto' or a torch device"),
    ],
)
def test_trainer_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        TrainerConfig(**kwargs)


def test_atomic_write_keeps_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    target = tmp_path / "metrics.json"
    atomic_write_bytes(target, b"old")

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_save_and_load_weights_round_trip(tmp_path):
    a, b = _model(), nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
    save_weights(a.state_dict(), tmp_path / "w.safetensors", epoch="1")
    load_weights(b, tmp_path / "w.safetensors")
    _assert_same_weights(a, b)


def test_resume_with_other_optimisation_settings_raises(tmp_path):
    _trainer(tmp_path, epochs=2).fit()
    trainer = _trainer(tmp_path, epochs=3)
    trainer.config.lr = 0.5
    with pytest.raises(CheckpointError, match=r"written with lr=0\.01; resuming needs the same settings"):
        trainer.fit(resume=True)


def test_resume_from_a_damaged_checkpoint_raises(tmp_path):
    _trainer(tmp_path, epochs=2).fit()
    (tmp_path / CHECKPOINT_DIR / STATE_FILE).write_bytes(b"\x00 not a checkpoint")
    with pytest.raises(CheckpointError, match="damaged checkpoint"):
        _trainer(tmp_path, epochs=3).fit(resume=True)
