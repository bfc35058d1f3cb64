"""Tests for rnnkit.erc.recipe: the ERC recipe called from Python writes the run ``rnnkit train`` writes."""

from __future__ import annotations

import json

import pytest

from rnnkit.cli import main
from rnnkit.erc import DataError, ERCConfig, evaluate_runs, load_data, load_run, predict_records, train_run
from rnnkit.erc.recipe import PRESETS, preset_settings
from rnnkit.trainer import TrainerConfig

SMALL_MODEL = {"embedding_dim": 8, "encoder_hidden": 8, "context_hidden": 8, "speaker_hidden": 8}
SMALL_TRAINER = {"epochs": 1, "batch_size": 4, "quiet": True}


def test_load_data_reads_the_builtin_corpus_cut_to_the_limit():
    data = load_data(limit=5)
    assert (data.source, data.format, data.limit) == (None, "builtin", 5)
    assert data.labels == ["anger", "joy", "neutral", "sadness", "surprise"]
    assert {split: len(dialogues) for split, dialogues in data.splits.items()} == {"train": 5, "dev": 5, "test": 5}
    with pytest.raises(ValueError, match="limit must be None or an integer >= 1, got 0"):
        load_data(limit=0)
    with pytest.raises(DataError, match="format 'jsonl' is read from a dataset directory"):
        load_data(format="jsonl")


def test_train_run_writes_what_the_command_line_writes(tmp_path):
    data = load_data(limit=8)
    metrics = train_run(tmp_path / "py", data, ERCConfig(num_labels=len(data.labels), **SMALL_MODEL),
                        TrainerConfig(**SMALL_TRAINER))
    flags = [f"--{name.replace('_', '-')}={value}" for name, value in {**SMALL_MODEL, **SMALL_TRAINER}.items()
             if name != "quiet"]
    assert main(["train", "--out", str(tmp_path / "cli"), "--limit", "8", "--quiet", *flags]) == 0
    written = {path.relative_to(tmp_path / "py") for path in (tmp_path / "py").rglob("*")}
    assert written == {path.relative_to(tmp_path / "cli") for path in (tmp_path / "cli").rglob("*")}
    assert json.loads((tmp_path / "py" / "metrics.json").read_text()) == metrics
    assert json.loads((tmp_path / "cli" / "metrics.json").read_text())["test"] == metrics["test"]

    run = load_run(tmp_path / "py")
    evaluated = evaluate_runs([run])
    assert (evaluated["data"], evaluated["format"], evaluated["split"]) == (None, "builtin", "test")
    assert {k: evaluated[k] for k in metrics["test"]} == metrics["test"]
    dialogues = data.splits["test"][:2]
    records = list(predict_records([run], dialogues))
    assert [(r["dialogue"], r["index"]) for r in records] == [(d.id, k) for d in dialogues
                                                              for k in range(len(d.utterances))]
    assert [r["prediction"] for r in records] == [label for labels in run.predict(dialogues) for label in labels]


def test_the_frozen_preset_averages_all_but_the_last_layer_of_the_encoder(tmp_path):
    model_dir = tmp_path / "mpnet"
    model_dir.mkdir()
    (model_dir / "config.json").write_text(json.dumps({"num_hidden_layers": 12}))
    assert preset_settings("frozen", str(model_dir))["encoder_layers"] == tuple(range(1, 12))
    assert preset_settings("frozen", "minilm")["encoder_layers"] == (1, 2, 3, 4, 5)
    assert preset_settings("tokens", "words") == PRESETS["tokens"]()
    (model_dir / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="num_hidden_layers"):
        preset_settings("frozen", str(model_dir))
