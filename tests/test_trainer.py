"""Tests for rnnkit.trainer: the model-agnostic loop, checkpoints, resume, schedules and parameter groups."""

from __future__ import annotations

import itertools
import re

import pytest
import torch
from torch import nn

from rnnkit.trainer import (
    CHECKPOINT_DIR,
    STATE_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    DivergenceError,
    Trainer,
    TrainerConfig,
    load_weights,
    lr_factor,
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


def _trainer(out_dir=None, epochs=3, seed=0, dev=None, ema=0.0, patience=0):
    dev = dev or _items(16, seed=8)
    x_dev, y_dev = _collate(dev)

    def evaluate(model):
        accuracy = (model(x_dev).argmax(-1) == y_dev).float().mean().item() * 100
        return {"accuracy": accuracy, "neg_loss": -_loss(model, (x_dev, y_dev)).item()}

    config = TrainerConfig(epochs=epochs, batch_size=5, lr=1e-2, seed=seed, quiet=True, ema=ema, patience=patience)
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


def test_a_diverged_epoch_stops_training_before_its_checkpoint(tmp_path):
    trainer, batches = _trainer(tmp_path, epochs=3), itertools.count()
    # NaN from the first of epoch 2's batches on (24 items in batches of 5: 5 batches an epoch)
    trainer.loss_fn = lambda model, batch: _loss(model, batch) * (float("nan") if next(batches) >= 5 else 1)
    with pytest.raises(DivergenceError, match=re.escape("epoch 2: the mean training loss is nan: the weights diverged")
                       + ".*" + re.escape(f"{tmp_path} still holds the checkpoint of epoch 1 and the best epoch's")):
        trainer.fit()
    assert torch.load(tmp_path / CHECKPOINT_DIR / STATE_FILE, weights_only=False)["epoch"] == 1
    first = _trainer(epochs=1)
    first.fit()
    saved = _model()
    load_weights(saved, tmp_path / WEIGHTS_FILE)
    _assert_same_weights(saved, first.model)


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


# -- early stopping -------------------------------------------------------------------------------------------

# A dev curve that peaks at epoch 2, ties it at epoch 4 (a tie is no improvement) and rises again from epoch 6.
_CURVE = [1.0, 3.0, 2.0, 3.0, 2.5, 5.0, 6.0, 7.0]


def _scripted(trainer: Trainer, done: int = 0) -> Trainer:
    """``trainer`` with the dev score of epoch e set to ``_CURVE[e - 1]``, from epoch ``done + 1`` on; an epoch
    past the curve cannot be scored."""
    scores = iter(_CURVE[done:])
    trainer.evaluate = lambda model: {"neg_loss": next(scores)}
    return trainer


def test_patience_stops_after_that_many_epochs_without_a_higher_dev_score(tmp_path):
    trainer = _scripted(_trainer(tmp_path, epochs=len(_CURVE), patience=3))
    result = trainer.fit()
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4, 5]
    assert (result.best_epoch, result.best_score) == (2, 3.0)
    assert torch.load(tmp_path / CHECKPOINT_DIR / STATE_FILE, weights_only=True)["epoch"] == 5
    # The weights kept are the best epoch's, as a run of two epochs ends with them.
    two = _scripted(_trainer(epochs=2))
    two.fit()
    _assert_same_weights(trainer.model, two.model)
    saved = _model()
    load_weights(saved, tmp_path / WEIGHTS_FILE)
    _assert_same_weights(saved, two.model)


def test_patience_0_runs_all_epochs():
    result = _scripted(_trainer(epochs=len(_CURVE), patience=0)).fit()
    assert [h["epoch"] for h in result.history] == list(range(1, len(_CURVE) + 1))
    assert result.best_epoch == len(_CURVE)


def test_a_patience_longer_than_the_dips_trains_to_the_cap():
    result = _scripted(_trainer(epochs=len(_CURVE), patience=4)).fit()
    assert len(result.history) == len(_CURVE) and result.best_epoch == len(_CURVE)


def test_early_stopping_resumed_matches_an_uninterrupted_run(tmp_path):
    full = _scripted(_trainer(tmp_path / "full", epochs=len(_CURVE), patience=3))
    full_result = full.fit()
    # Interrupted after epoch 4 (two epochs without improvement: the counter is not saved, but derived).
    _scripted(_trainer(tmp_path / "split", epochs=4, patience=3)).fit()
    resumed = _scripted(_trainer(tmp_path / "split", epochs=len(_CURVE), patience=3), done=4)
    assert resumed.fit(resume=True) == full_result
    _assert_same_weights(resumed.model, full.model)
    # A run that had stopped ends at once when resumed: no epoch is trained or scored again.
    again = _scripted(_trainer(tmp_path / "full", epochs=len(_CURVE), patience=3), done=len(_CURVE))
    assert again.fit(resume=True) == full_result
    # More patience on resume trains on from the checkpoint, as an uninterrupted run with that patience would.
    longer = _scripted(_trainer(tmp_path / "full", epochs=len(_CURVE), patience=4), done=5)
    assert longer.fit(resume=True) == _scripted(_trainer(epochs=len(_CURVE), patience=4)).fit()


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
        ({"patience": -1}, "TrainerConfig.patience must be an integer >= 0, got -1"),
        ({"batch_size": 2.5}, "TrainerConfig.batch_size must be an integer >= 1, got 2.5"),
        ({"lr": 0.0}, "TrainerConfig.lr must be a finite number > 0, got 0.0"),
        ({"grad_clip": -1.0}, "TrainerConfig.grad_clip must be a finite number >= 0, got -1.0"),
        ({"weight_decay": float("nan")}, "TrainerConfig.weight_decay must be a finite number >= 0, got nan"),
        ({"lr": True}, "TrainerConfig.lr must be a finite number > 0, got True"),
        ({"seed": -2}, "TrainerConfig.seed must be an integer in [0, 2**32 - 1], got -2"),
        ({"seed": 2**32}, "TrainerConfig.seed must be an integer in [0, 2**32 - 1], got 4294967296"),
        ({"device": "toaster"}, "TrainerConfig.device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'toaster'"),
        ({"device": "meta"}, "TrainerConfig.device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'meta'"),
        ({"warmup": 1.0}, "TrainerConfig.warmup must be a fraction of the training steps in [0, 1), got 1.0"),
        ({"schedule": "step"}, "TrainerConfig.schedule must be one of constant, linear, cosine, got 'step'"),
        ({"token_budget": 0}, "TrainerConfig.token_budget must be None or an integer >= 1, got 0"),
        ({"class_weighting": -0.5}, "TrainerConfig.class_weighting must be a number in [0, 2], got -0.5"),
        ({"label_smoothing": 1.0}, "TrainerConfig.label_smoothing must be a number in [0, 1), got 1.0"),
        ({"contrastive": -0.1}, "TrainerConfig.contrastive must be a finite number >= 0, got -0.1"),
        ({"contrastive": float("inf")}, "TrainerConfig.contrastive must be a finite number >= 0, got inf"),
        ({"ema": 1.0}, "TrainerConfig.ema must be a number in [0, 1), got 1.0"),
    ],
)
def test_trainer_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        TrainerConfig(**kwargs)


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


def test_resume_with_another_thread_count_warns_once(tmp_path, capsys):
    _trainer(tmp_path, epochs=1).fit()
    _trainer(tmp_path, epochs=2).fit(resume=True)
    assert "warning" not in capsys.readouterr().err
    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:
        _trainer(tmp_path, epochs=3).fit(resume=True)
    finally:
        torch.set_num_threads(threads)
    warning, = capsys.readouterr().err.strip().splitlines()
    assert warning.startswith("rnnkit: warning: ") and f"written with {threads} CPU thread(s)" in warning


# -- moving average of the weights --------------------------------------------------------------------------


def test_ema_scores_and_keeps_the_moving_average_of_the_trained_weights(tmp_path):
    trainer = _trainer(tmp_path, epochs=1, ema=0.6)
    seen = []  # the trained weights before each step, i.e. after the step before it

    def loss_fn(model, batch):
        seen.append([p.detach().clone() for p in model.parameters()])
        return _loss(model, batch)

    trainer.loss_fn = loss_fn
    result = trainer.fit()
    last = _model()
    load_weights(last, tmp_path / CHECKPOINT_DIR / "epoch-1.safetensors")
    after_steps = seen[1:] + [[p.detach() for p in last.parameters()]]
    expected = after_steps[0]  # the average starts at the first step's weights
    for weights in after_steps[1:]:
        expected = [0.6 * a + 0.4 * w for a, w in zip(expected, weights)]
    kept = _model()
    load_weights(kept, tmp_path / WEIGHTS_FILE)
    for got, want in zip(kept.parameters(), expected):
        torch.testing.assert_close(got.detach(), want)
    assert not torch.allclose(next(kept.parameters()), next(last.parameters()))
    # The best epoch's score is the average's, and the model left in memory is the average.
    assert trainer.evaluate(trainer.model.eval())["neg_loss"] == pytest.approx(result.best_score, abs=1e-6)


def test_ema_resume_matches_an_uninterrupted_run(tmp_path):
    full = _trainer(tmp_path / "full", epochs=3, ema=0.8)
    full_result = full.fit()
    _trainer(tmp_path / "split", epochs=2, ema=0.8).fit()
    resumed = _trainer(tmp_path / "split", epochs=3, ema=0.8)
    assert resumed.fit(resume=True) == full_result
    _assert_same_weights(resumed.model, full.model)
    names = {p.name for p in (tmp_path / "full" / CHECKPOINT_DIR).iterdir()}
    assert names == {STATE_FILE, "epoch-3.safetensors", "average-3.safetensors",
                     f"average-{full_result.best_epoch}.safetensors"}


def test_resume_of_a_checkpoint_older_than_a_setting_takes_its_default(tmp_path):
    _trainer(tmp_path / "full", epochs=3).fit()
    _trainer(tmp_path / "split", epochs=2).fit()
    path = tmp_path / "split" / CHECKPOINT_DIR / STATE_FILE
    state = torch.load(path, weights_only=True)
    del state["config"]["ema"], state["config"]["patience"]
    torch.save(state, path)
    resumed = _trainer(tmp_path / "split", epochs=3)
    assert resumed.fit(resume=True) == _trainer(tmp_path / "full", epochs=3).fit(resume=True)


def test_resume_with_another_ema_raises(tmp_path):
    _trainer(tmp_path, epochs=2, ema=0.8).fit()
    with pytest.raises(CheckpointError, match=r"written with ema=0\.8; resuming needs the same settings"):
        _trainer(tmp_path, epochs=3).fit(resume=True)


# -- learning-rate schedule, parameter groups, token-budget batches -------------------------------------------

def test_lr_factor_warms_up_then_decays():
    total, warmup = 10, 4
    assert [lr_factor(s, total, warmup, "constant") for s in range(total)] == [0.25, 0.5, 0.75] + [1.0] * 7
    linear = [lr_factor(s, total, warmup, "linear") for s in range(warmup, total)]
    assert linear == pytest.approx([1 - k / 6 for k in range(6)])
    cosine = [lr_factor(s, total, warmup, "cosine") for s in range(warmup, total)]
    assert cosine[0] == 1.0 and cosine[3] == pytest.approx(0.5)  # half-way through the decay
    assert all(a > b > 0 for a, b in zip(cosine, cosine[1:]))
    assert lr_factor(0, 5, 0, "linear") == 1.0  # no warm-up: the first step runs at the full rate


def _budget_trainer(out_dir=None, epochs=3, **settings):
    """A trainer with two parameter groups, a warm-up/decay schedule and token-budget batches."""
    model = _model()
    groups = [{"name": "first", "params": model[0].parameters(), "lr": 1e-2},
              {"name": "last", "params": model[3].parameters(), "lr": 1e-3}]
    config = TrainerConfig(epochs=epochs, batch_size=4, lr=5e-3, seed=1, quiet=True,
                           **{"warmup": 0.3, "schedule": "cosine", "token_budget": 9} | settings)
    dev = _collate(_items(8, seed=8))

    def evaluate(m):
        return {"neg_loss": -_loss(m, dev).item()}

    return Trainer(model, _items(), _collate, _loss, evaluate, "neg_loss", config, out_dir,
                   param_groups=groups, item_size=lambda item: 1 + int(item[0].abs().sum() * 2) % 5)  # 1..5


def test_param_groups_keep_their_rates_and_follow_the_schedule():
    trainer = _budget_trainer(epochs=2)
    seen = []
    loss_fn = trainer.loss_fn
    trainer.loss_fn = lambda m, b: seen.append([g["lr"] for g in trainer.optimizer.param_groups]) or loss_fn(m, b)
    trainer.fit()
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["first", "last"]
    total = len(trainer._epoch_batches(1)) + len(trainer._epoch_batches(2))
    warmup = round(0.3 * total)
    assert len(seen) == total and warmup >= 2
    for step, (first, last) in enumerate(seen):
        factor = lr_factor(step, total, warmup, "cosine")
        assert (first, last) == pytest.approx((1e-2 * factor, 1e-3 * factor))


def test_token_budget_epochs_are_deterministic_and_cover_every_item():
    a, b = _budget_trainer(), _budget_trainer()
    sizes = a._sizes
    for epoch in (1, 2):
        batches = a._epoch_batches(epoch)
        assert batches == b._epoch_batches(epoch)
        assert sorted(i for batch in batches for i in batch) == list(range(len(a.train_items)))
        assert all(sum(sizes[i] for i in batch) <= 9 and len(batch) <= 4 for batch in batches)
    assert a._epoch_batches(1) != a._epoch_batches(2)
    with pytest.raises(ValueError, match="token_budget needs Trainer.item_size"):
        Trainer(_model(), _items(), _collate, _loss, lambda m: {}, "a", TrainerConfig(token_budget=5))


def test_resume_with_schedule_and_token_budget_matches_an_uninterrupted_run(tmp_path):
    full = _budget_trainer(tmp_path / "full", epochs=3)
    full_result = full.fit()
    interrupted = _budget_trainer(tmp_path / "split", epochs=3)
    train_epoch = interrupted._train_epoch

    def stop_in_epoch_3(epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        return train_epoch(epoch)

    interrupted._train_epoch = stop_in_epoch_3
    with pytest.raises(KeyboardInterrupt):
        interrupted.fit()
    with pytest.raises(CheckpointError, match=r"written with schedule='cosine'"):
        _budget_trainer(tmp_path / "split", epochs=3, schedule="linear").fit(resume=True)
    resumed = _budget_trainer(tmp_path / "split", epochs=3)
    assert resumed.fit(resume=True) == full_result
    assert resumed.scheduler.last_epoch == full.scheduler.last_epoch
    assert [g["lr"] for g in resumed.optimizer.param_groups] == [g["lr"] for g in full.optimizer.param_groups]
    _assert_same_weights(resumed.model, full.model)
