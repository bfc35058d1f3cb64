"""Tests for the ``rnnkit`` command line (rnnkit.cli), driven through ``main(argv)``."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import rnnkit
import rnnkit.erc
from rnnkit.cli import main
from rnnkit.erc import (
    Dialogue,
    ERCConfig,
    Utterance,
    builtin_corpus,
    write_jsonl,
)
from rnnkit.erc.recipe import PRESETS, features_preset, tokens_preset
from rnnkit.trainer import TrainerConfig

# Tiny settings: every CLI training here takes a few seconds.
SMALL = ["--limit", "8", "--embedding-dim", "8", "--encoder-hidden", "8", "--context-hidden", "8",
         "--speaker-hidden", "8", "--batch-size", "4", "--quiet"]
RUN_FILES = ("config.json", "encoder.json", "vocab.json", "model.safetensors", "metrics.json",
             "confusion_matrix.png", "training_curve.png", "class_scores.png", "class_f1_curve.png",
             "checkpoint/trainer_state.pt")


def _train(out: Path, *extra: str, epochs: int = 2) -> int:
    return main(["train", "--out", str(out), "--epochs", str(epochs), *SMALL, *extra])


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("rnnkit: error: ")
    assert "Traceback" not in err
    return lines[0]


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    assert _train(out) == 0
    return out


@pytest.fixture
def jsonl_data(tmp_path) -> Path:
    """A tiny jsonl dataset cut from the built-in corpus."""
    directory = tmp_path / "data"
    directory.mkdir()
    for split, n in (("train", 6), ("dev", 3), ("test", 3)):
        write_jsonl(directory / f"{split}.jsonl", builtin_corpus(split)[:n])
    return directory


# -- train / evaluate / predict --------------------------------------------------------------------------------

def test_train_writes_the_run_directory(run_dir, capsys):
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for split in ("dev", "test"):
        for key in ("weighted_f1", "accuracy"):
            assert 0 <= metrics[split][key] <= 100
        assert set(metrics[split]["report"]) >= {"anger", "joy", "neutral", "sadness", "surprise"}
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    best = max(metrics["history"], key=lambda h: h["weighted_f1"])
    assert metrics["best_epoch"] == best["epoch"] and metrics["dev"]["weighted_f1"] == best["weighted_f1"]
    config = json.loads((run_dir / "config.json").read_text())
    assert config["format"] == "builtin" and config["labels"] == ["anger", "joy", "neutral", "sadness", "surprise"]
    assert config["model"]["embedding_dim"] == 8 and config["trainer"]["epochs"] == 2
    assert (run_dir / "confusion_matrix.png").read_bytes().startswith(b"\x89PNG")


def test_evaluate_reproduces_the_test_metrics(run_dir, tmp_path, capsys):
    output = tmp_path / "eval.json"
    assert main(["evaluate", "--run", str(run_dir), "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    saved = json.loads((run_dir / "metrics.json").read_text())["test"]
    evaluated = json.loads(output.read_text())
    for key in ("weighted_f1", "accuracy", "report", "confusion"):
        assert evaluated[key] == saved[key], key
    assert f"weighted_f1 {saved['weighted_f1']:.2f}" in printed


def test_evaluate_on_a_jsonl_dataset(run_dir, jsonl_data, capsys):
    assert main(["evaluate", "--run", str(run_dir), "--data", str(jsonl_data), "--split", "dev"]) == 0
    out = capsys.readouterr().out
    assert "dev split" in out and "accuracy" in out


@pytest.mark.parametrize("to_file", [False, True])
def test_predict_writes_one_line_per_utterance(run_dir, tmp_path, capsys, to_file):
    dialogues = builtin_corpus("test")[:3]
    unlabeled = [Dialogue(d.id, tuple(Utterance(u.speaker, u.text) for u in d.utterances)) for d in dialogues]
    source = tmp_path / "input.jsonl"
    write_jsonl(source, unlabeled)
    argv = ["predict", "--run", str(run_dir), "--input", str(source)]
    if to_file:
        argv += ["--output", str(tmp_path / "pred.jsonl")]
    assert main(argv) == 0
    text = (tmp_path / "pred.jsonl").read_text() if to_file else capsys.readouterr().out
    records = [json.loads(line) for line in text.splitlines()]
    expected = [(d.id, k, u.speaker, u.text) for d in dialogues for k, u in enumerate(d.utterances)]
    assert [(r["dialogue"], r["index"], r["speaker"], r["text"]) for r in records] == expected
    for r in records:
        assert math.isclose(sum(r["probabilities"].values()), 1.0, abs_tol=1e-5)
        assert r["prediction"] == max(r["probabilities"], key=r["probabilities"].get)
        assert "label" not in r


def test_an_ensemble_averages_the_probabilities_of_its_runs(run_dir, tmp_path, capsys):
    other = tmp_path / "other"
    assert _train(other, "--seed", "1") == 0
    source = tmp_path / "input.jsonl"
    write_jsonl(source, builtin_corpus("test")[:4])
    outputs = {}
    for name, runs in (("a", [run_dir]), ("b", [other]), ("ab", [run_dir, other])):
        outputs[name] = tmp_path / f"{name}.jsonl"
        assert main(["predict", "--run", *map(str, runs), "--input", str(source), "--output", str(outputs[name])]) == 0
    a, b, ab = ([json.loads(line) for line in outputs[n].read_text().splitlines()] for n in ("a", "b", "ab"))
    assert a != b
    for ra, rb, rab in zip(a, b, ab, strict=True):
        for label, p in rab["probabilities"].items():
            assert p == pytest.approx((ra["probabilities"][label] + rb["probabilities"][label]) / 2, abs=1e-6)
        assert rab["prediction"] == max(rab["probabilities"], key=rab["probabilities"].get)

    output = tmp_path / "eval.json"
    assert main(["evaluate", "--run", str(run_dir), str(other), "--output", str(output)]) == 0
    evaluated = json.loads(output.read_text())
    assert evaluated["run"] == [str(run_dir), str(other)] and 0 <= evaluated["weighted_f1"] <= 100


def test_an_ensemble_of_runs_with_other_labels_is_refused(run_dir, tmp_path, capsys):
    data, other = tmp_path / "data", tmp_path / "other"
    data.mkdir()
    relabeled = {"anger": "upset", "sadness": "upset", "joy": "glad", "surprise": "glad", "neutral": "calm"}
    for split, n in (("train", 6), ("dev", 3), ("test", 3)):
        write_jsonl(data / f"{split}.jsonl", [
            Dialogue(d.id, tuple(Utterance(u.speaker, u.text, relabeled[u.label]) for u in d.utterances))
            for d in builtin_corpus(split)[:n]])
    assert main(["train", "--out", str(other), "--data", str(data), "--epochs", "1", *SMALL]) == 0
    capsys.readouterr()
    assert main(["evaluate", "--run", str(run_dir), str(other)]) == 2
    assert "an ensemble needs runs trained on the same labels" in _error_line(capsys)


def test_predict_reads_a_meld_csv(run_dir, tmp_path, capsys):
    source = tmp_path / "talk.csv"
    source.write_text("Utterance,Speaker,Dialogue_ID,Utterance_ID\nI am furious.,Ann,0,0\n\"So, the rent.\",Bob,0,1\n"
                      "Thrilled!,Ann,1,0\n")
    assert main(["predict", "--run", str(run_dir), "--input", str(source)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["dialogue"], r["index"], r["speaker"]) for r in records] == [("0", 0, "Ann"), ("0", 1, "Bob"),
                                                                             ("1", 0, "Ann")]


def test_a_run_loaded_in_python_predicts_what_the_command_line_predicts(run_dir, tmp_path):
    dialogues = builtin_corpus("test")[:3]
    write_jsonl(tmp_path / "input.jsonl", dialogues)
    assert main(["predict", "--run", str(run_dir), "--input", str(tmp_path / "input.jsonl"),
                 "--output", str(tmp_path / "pred.jsonl")]) == 0
    records = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    run = rnnkit.erc.load_run(run_dir)
    probabilities = run.probabilities(dialogues)
    assert [tuple(p.shape) for p in probabilities] == [(len(d.utterances), len(run.labels)) for d in dialogues]
    assert [label for labels in run.predict(dialogues) for label in labels] == [r["prediction"] for r in records]
    for p, r in zip(torch.cat(probabilities), records, strict=True):
        assert p.tolist() == pytest.approx([r["probabilities"][label] for label in run.labels], abs=1e-6)
    ensemble = rnnkit.erc.predict_probabilities([run.model, run.model], dialogues)
    assert all(torch.allclose(a, b) for a, b in zip(ensemble, probabilities, strict=True))
    with pytest.raises(rnnkit.erc.RunError, match="not a run directory .no config.json."):
        rnnkit.erc.load_run(tmp_path)


def test_a_features_run_predicts_from_a_features_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for split in ("train", "dev", "test"):
        rows = sum(len(d.utterances) for d in builtin_corpus(split)[:8])
        np.save(tmp_path / f"{split}.npy", rng.standard_normal((rows, 6)).astype(np.float32))
    run = tmp_path / "run"
    assert _train(run, "--encoder", f"features:{tmp_path}/{{split}}.npy") == 0
    dialogues = builtin_corpus("test")[:2]
    write_jsonl(tmp_path / "input.jsonl", dialogues)
    argv = ["predict", "--run", str(run), "--input", str(tmp_path / "input.jsonl")]
    assert main(argv) == 2
    assert "pass --features FILE" in _error_line(capsys)
    rows = sum(len(d.utterances) for d in dialogues)
    np.save(tmp_path / "input.npy", rng.standard_normal((rows, 6)).astype(np.float32))
    assert main(argv + ["--features", str(tmp_path / "input.npy")]) == 0
    assert len(capsys.readouterr().out.splitlines()) == rows
    with pytest.raises(rnnkit.erc.RunError, match=r"load it with load_run\(directory, encoder='features:FILE'\)"):
        rnnkit.erc.load_run(run).predict(dialogues)
    loaded = rnnkit.erc.load_run(run, encoder=f"features:{tmp_path / 'input.npy'}")
    assert [len(labels) for labels in loaded.predict(dialogues)] == [len(d.utterances) for d in dialogues]
    np.save(tmp_path / "narrow.npy", rng.standard_normal((rows, 5)).astype(np.float32))
    assert main(argv + ["--features", str(tmp_path / "narrow.npy")]) == 2
    assert "narrow.npy: expected 6 columns" in _error_line(capsys)


def test_same_seed_gives_identical_metrics(tmp_path):
    assert _train(tmp_path / "a", "--seed", "5") == 0
    assert _train(tmp_path / "b", "--seed", "5") == 0
    a, b = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in "ab")
    assert a == b
    wa, wb = (load_file(tmp_path / name / "model.safetensors") for name in "ab")
    assert wa.keys() == wb.keys() and all((wa[k] == wb[k]).all() for k in wa)


def test_resume_continues_to_the_uninterrupted_result(tmp_path):
    assert _train(tmp_path / "full", epochs=3) == 0
    assert _train(tmp_path / "split", epochs=2) == 0
    assert main(["train", "--out", str(tmp_path / "split"), "--resume", "--epochs", "3", "--quiet"]) == 0
    full, split = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("full", "split"))
    assert split["history"] == full["history"] and split["test"] == full["test"]
    assert json.loads((tmp_path / "split" / "config.json").read_text())["trainer"]["epochs"] == 3
    for name in ("model.safetensors", "checkpoint/epoch-3.safetensors"):
        wf, ws = load_file(tmp_path / "full" / name), load_file(tmp_path / "split" / name)
        assert all((wf[k] == ws[k]).all() for k in wf), name


def test_a_run_starts_from_its_encoder_preset_and_the_flags_given_override_it(run_dir, tmp_path, capsys):
    config = json.loads((run_dir / "config.json").read_text())
    assert config["preset"] == "tokens"
    preset = tokens_preset()
    assert config["trainer"]["patience"] == preset["patience"] and config["trainer"]["lr"] == preset["lr"]
    assert config["trainer"]["epochs"] == 2 and config["trainer"]["batch_size"] == 4  # given: they override
    assert _train(tmp_path / "run", "--preset", "features", "--patience", "1") == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line == f"preset features: {_flags(features_preset())} (given instead: --epochs --patience --batch-size)"
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["preset"] == "features" and config["trainer"]["patience"] == 1
    assert (config["trainer"]["ema"], config["trainer"]["class_weighting"]) == (0.98, 0.5)


def test_patience_stops_a_run_early_and_resume_keeps_its_preset(tmp_path, capsys):
    assert _train(tmp_path / "run", "--patience", "1", epochs=8) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    epochs = len(metrics["history"])
    assert epochs == 8 or epochs == metrics["best_epoch"] + 1
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"resuming {tmp_path / 'run'} (preset tokens)"
    again = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert again["history"] == metrics["history"] and again["test"] == metrics["test"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["preset"] == "tokens"


def test_help_lists_every_preset_with_its_values(capsys):
    assert main(["train", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for name, build in PRESETS.items():
        assert f"{name} {build.__doc__.split(': ')[0]} {_flags(build())}" in out, name


def _flags(settings: dict) -> str:
    """The flags that a preset's settings stand for, as --help and the run print them."""
    def flag(name, value):
        typed = "" if value is True else " " + (",".join(map(str, value)) if isinstance(value, tuple) else str(value))
        return f"--{name.replace('_', '-')}{typed}"

    return " ".join(flag(k, v) for k, v in settings.items())


def test_the_finetune_preset_finetunes(tmp_path, capsys):
    assert _train(tmp_path / "run", "--preset", "finetune") == 2
    assert "ERCConfig.finetune needs a transformer encoder ('minilm' or a local model directory), got encoder 'words'" \
        in _error_line(capsys)


def test_ablation_trains_three_variants_and_prints_a_table(tmp_path, capsys):
    assert main(["train", "--ablation", "--out", str(tmp_path / "abl"), "--epochs", "1", *SMALL]) == 0
    preset, *rows = capsys.readouterr().out.strip().splitlines()
    assert preset.startswith("preset tokens: --epochs ") and preset.endswith(" (given instead: --epochs --batch-size)")
    assert rows[0].split() == ["variant", "dev", "weighted_f1", "test", "weighted_f1"]
    for row, variant in zip(rows[1:], ("full", "no_context", "no_speaker")):
        metrics = json.loads((tmp_path / "abl" / variant / "metrics.json").read_text())
        assert row.split() == [variant, f"{metrics['dev']['weighted_f1']:.2f}", f"{metrics['test']['weighted_f1']:.2f}"]
        config = json.loads((tmp_path / "abl" / variant / "config.json").read_text())["model"]
        assert (config["use_context"], config["use_speaker"]) == (variant != "no_context", variant != "no_speaker")


@pytest.mark.parametrize("command", ["train", "evaluate", "predict"])
def test_help_works_for_every_subcommand(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: rnnkit {command}") and "examples:" in out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"rnnkit {rnnkit.__version__} (torch {torch.__version__})\n"


def test_python_dash_m_rnnkit_runs_the_command_line():
    done = subprocess.run([sys.executable, "-m", "rnnkit", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == f"rnnkit {rnnkit.__version__} (torch {torch.__version__})\n"


def test_every_config_field_has_a_train_flag(capsys):
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    fields = [f.name for f in dataclasses.fields(ERCConfig) if f.name != "num_labels"]
    fields += [f.name for f in dataclasses.fields(TrainerConfig)]
    flags = {"use_context": "--no-context", "use_speaker": "--no-speaker"}
    for name in fields:
        assert flags.get(name, "--" + name.replace("_", "-")) in out, name


def test_a_finetuned_run_reloads_its_encoder_and_reproduces_its_metrics(tmp_path, capsys):
    out, output = tmp_path / "ft", tmp_path / "eval.json"
    assert main(["train", "--data", str(_meld(tmp_path)), "--out", str(out), "--encoder", "minilm", "--finetune",
                 "--encoder-lr", "1e-3", "--warmup", "0.5", "--schedule", "linear", "--token-budget", "12",
                 "--epochs", "1", "--batch-size", "2", "--context-hidden", "4", "--speaker-hidden", "4",
                 "--context-turns", "1", "--class-weighting", "0.5", "--encoder-layers", "3,-1",
                 "--label-smoothing", "0.1", "--encoder-lr-decay", "0.9", "--contrastive", "0.2", "--ema", "0.5", "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["finetune"] and config["model"]["encoder_lr"] == 1e-3
    assert config["model"]["encoder_lr_decay"] == 0.9
    assert config["model"]["encoder_layers"] == [3, -1]
    assert config["model"]["context_turns"] == 1 and config["trainer"]["class_weighting"] == 0.5
    assert config["trainer"]["label_smoothing"] == 0.1 and config["trainer"]["contrastive"] == 0.2
    assert config["trainer"]["ema"] == 0.5
    assert (config["trainer"]["warmup"], config["trainer"]["schedule"], config["trainer"]["token_budget"]) == \
        (0.5, "linear", 12)
    weights = load_file(out / "model.safetensors")
    name = "encoder.backbone.embeddings.word_embeddings.weight"
    pretrained = load_file(Path(json.loads((out / "encoder.json").read_text())["model_dir"]) / "model.safetensors")
    assert not np.array_equal(weights[name].numpy(), pretrained[name.replace("encoder.backbone.", "")].numpy())
    capsys.readouterr()
    assert main(["evaluate", "--run", str(out), "--output", str(output)]) == 0
    saved = json.loads((out / "metrics.json").read_text())["test"]
    evaluated = json.loads(output.read_text())
    for key in ("weighted_f1", "accuracy", "report", "confusion"):
        assert evaluated[key] == saved[key], key


# -- bad input: one line on stderr, exit status 2, nothing lost ----------------------------------------------------

_MELD_HEADER = "Utterance,Speaker,Emotion,Dialogue_ID,Utterance_ID\n"
_MELD_ROWS = "Hi there.,Ann,joy,0,0\nHello.,Bob,neutral,0,1\nGo away!,Ann,anger,1,0\n"


def _meld(tmp_path, *, train: str = _MELD_HEADER + _MELD_ROWS) -> Path:
    directory = tmp_path / "meld"
    directory.mkdir()
    (directory / "train_sent_emo.csv").write_text(train)
    for split in ("dev", "test"):
        (directory / f"{split}_sent_emo.csv").write_text(_MELD_HEADER + _MELD_ROWS)
    return directory


def _jsonl(tmp_path, train_line: str | bytes) -> Path:
    directory = tmp_path / "bad"
    directory.mkdir()
    good = builtin_corpus("train")[:2]
    write_jsonl(directory / "train.jsonl", good)
    with open(directory / "train.jsonl", "ab") as f:
        f.write(train_line if isinstance(train_line, bytes) else train_line.encode())
    for split in ("dev", "test"):
        write_jsonl(directory / f"{split}.jsonl", good)
    return directory


def test_missing_column(tmp_path, capsys):
    data = _meld(tmp_path, train="Utterance,Emotion,Dialogue_ID,Utterance_ID\nHi.,joy,0,0\n")
    assert _train(tmp_path / "run", "--data", str(data)) == 2
    line = _error_line(capsys)
    assert "train_sent_emo.csv" in line and "'Speaker'" in line


def test_unknown_label(tmp_path, capsys):
    data = _meld(tmp_path, train=_MELD_HEADER + "Hi.,Ann,happy,0,0\n")
    assert _train(tmp_path / "run", "--data", str(data)) == 2
    line = _error_line(capsys)
    assert "train_sent_emo.csv, line 2" in line and "'Emotion'" in line and "'happy'" in line


def test_unknown_label_in_dev_of_a_jsonl_dataset(tmp_path, capsys):
    data = _jsonl(tmp_path, "")
    dev = [Dialogue("odd", (Utterance("Ann", "Hm.", "bored"),))]
    write_jsonl(data / "dev.jsonl", dev)
    assert _train(tmp_path / "run", "--data", str(data)) == 2
    line = _error_line(capsys)
    assert "dev.jsonl, line 1, field 'utterances[0].label'" in line and "'bored'" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("split", ["train", "dev", "test"])
def test_a_split_without_labels_is_refused_before_anything_is_written(tmp_path, capsys, split):
    data = _jsonl(tmp_path, "")
    unlabeled = [Dialogue(d.id, tuple(Utterance(u.speaker, u.text) for u in d.utterances))
                 for d in builtin_corpus(split)[:2]]
    write_jsonl(data / f"{split}.jsonl", unlabeled)
    assert _train(tmp_path / "run", "--data", str(data)) == 2
    assert f"{split}.jsonl: no utterance carries a label" in _error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_the_builtin_format_with_a_data_directory_is_refused(tmp_path, jsonl_data, capsys):
    assert _train(tmp_path / "run", "--format", "builtin", "--data", str(jsonl_data)) == 2
    assert "format 'builtin' is the built-in corpus and reads no directory" in _error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_a_run_records_its_data_directory_absolute(tmp_path, jsonl_data, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert _train(Path("run"), "--data", "data") == 0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"] == str(jsonl_data.resolve())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    capsys.readouterr()
    assert main(["evaluate", "--run", str(tmp_path / "run")]) == 0
    assert capsys.readouterr().out.startswith(f"{jsonl_data.resolve()} (test split)")
    assert main(["train", "--resume", "--out", str(tmp_path / "run"), "--epochs", "3", "--quiet"]) == 0


@pytest.mark.parametrize(
    "line, expected",
    [
        ('{"id": "x", "utterances": [{"speaker": "Ann", "text": "  ", "label": "joy"}]}\n', "utterances[0].text"),
        ('{"id": "x", "utterances": []}\n', "dialogue with no utterances"),
        (b'{"id": "x", "utterances": [{"speaker": "Ann", "text": "caf\xe9", "label": "joy"}]}\n', "not valid UTF-8"),
    ],
    ids=["empty-text", "no-utterances", "non-utf8"],
)
def test_bad_jsonl_line(tmp_path, capsys, line, expected):
    data = _jsonl(tmp_path, line)
    assert _train(tmp_path / "run", "--data", str(data)) == 2
    message = _error_line(capsys)
    assert "train.jsonl, line 3" in message and expected in message


@pytest.mark.parametrize("rows, cols, expected", [(99, 4, "expected 13 rows"), (None, 5, "expected 4 columns")],
                         ids=["wrong-length", "wrong-width"])
def test_features_file_of_the_wrong_shape(tmp_path, capsys, rows, cols, expected):
    counts = {"train": 0, "dev": 0, "test": 0}
    for split in counts:
        counts[split] = sum(len(d.utterances) for d in builtin_corpus(split)[:8])
    sizes = {"train": (counts["train"], 4), "dev": (counts["dev"], 4), "test": (rows or counts["test"], cols)}
    for split, shape in sizes.items():
        np.save(tmp_path / f"{split}.npy", np.zeros(shape, dtype=np.float32))
    assert _train(tmp_path / "run", "--encoder", f"features:{tmp_path}/{{split}}.npy") == 2
    message = _error_line(capsys)
    expected = expected.replace("13", str(counts["test"]))
    assert "test.npy" in message and expected in message
    assert not (tmp_path / "run").exists()


def test_output_directory_that_is_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("keep me")
    assert _train(tmp_path / "taken") == 2
    assert "taken: exists and is not a directory" in _error_line(capsys)
    assert (tmp_path / "taken").read_text() == "keep me"


@pytest.mark.parametrize("flags, expected", [
    (["--seed", "1125899906842624"], "TrainerConfig.seed must be an integer in [0, 2**32 - 1]"),
    (["--device", "cuda:99"], "device 'cuda:99': "),
    (["--device", "meta"], "TrainerConfig.device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', got 'meta'"),
    (["--context-hidden", str(10**12)], "cannot build the model with these sizes"),
    (["--encoder-hidden", str(10**18)], "cannot build the model with these sizes"),
], ids=["seed-overflow", "absent-device", "unknown-device", "huge-context", "overflowing-encoder"])
def test_settings_that_cannot_run_are_refused_before_anything_is_written(tmp_path, capsys, flags, expected):
    assert _train(tmp_path / "run", *flags) == 2
    assert expected in _error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_an_out_under_a_file_is_refused_before_reading_the_data(tmp_path, capsys):
    (tmp_path / "taken").write_text("keep me")
    assert _train(tmp_path / "taken" / "run", "--data", str(tmp_path / "nowhere")) == 2
    assert "cannot create the run directory: " in _error_line(capsys)
    assert (tmp_path / "taken").read_text() == "keep me"


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _strip_state(path: Path) -> None:
    torch.save({"epoch": 2}, path)


@pytest.mark.parametrize("damage, expected", [
    (lambda run: _truncate(run / "checkpoint" / "epoch-2.safetensors"), "epoch-2.safetensors: damaged"),
    (lambda run: (run / "checkpoint" / "epoch-2.safetensors").unlink(), "epoch-2.safetensors: missing"),
    (lambda run: _truncate(run / "checkpoint" / "trainer_state.pt"), "trainer_state.pt: damaged checkpoint"),
    (lambda run: _strip_state(run / "checkpoint" / "trainer_state.pt"), "trainer_state.pt: damaged checkpoint"),
    (lambda run: (run / "vocab.json").unlink(), "vocab.json does not exist"),
], ids=["truncated-weights", "missing-weights", "truncated-state", "malformed-state", "missing-vocab"])
def test_a_resume_that_fails_leaves_the_run_byte_identical(run_dir, tmp_path, capsys, damage, expected):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    damage(run)
    before = _snapshot(run)
    assert main(["train", "--out", str(run), "--resume", "--epochs", "3"]) == 2
    assert expected in _error_line(capsys)
    assert _snapshot(run) == before


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_missing_run_directory(tmp_path, capsys, command):
    argv = [command, "--run", str(tmp_path / "nowhere")] + (["--input", "x.jsonl"] if command == "predict" else [])
    assert main(argv) == 2
    assert f"{tmp_path / 'nowhere'}: run directory not found" in _error_line(capsys)


def test_a_damaged_run_directory(run_dir, tmp_path, capsys):
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("config.json", "encoder.json", "vocab.json"):
        (damaged / name).write_bytes((run_dir / name).read_bytes())
    argv = ["evaluate", "--run", str(damaged)]
    assert main(argv) == 2
    assert "not a run directory (no model.safetensors)" in _error_line(capsys)
    (damaged / "model.safetensors").write_bytes(b"not weights")
    assert main(argv) == 2
    assert "model.safetensors: the weights differ from those the run was trained with" in _error_line(capsys)
    (damaged / "config.json").write_text("{")
    assert main(argv) == 2
    assert "config.json: not valid JSON" in _error_line(capsys)


def test_an_existing_run_is_never_clobbered(run_dir, tmp_path, capsys):
    before = _snapshot(run_dir)
    assert _train(run_dir) == 2
    assert "already holds a run; pass --resume" in _error_line(capsys)
    data = _meld(tmp_path, train=_MELD_HEADER + "Hi.,Ann,happy,0,0\n")
    assert main(["train", "--out", str(run_dir), "--resume", "--data", str(data)]) == 2
    assert "--data: cannot change when resuming" in _error_line(capsys)
    assert _snapshot(run_dir) == before


def test_bad_flag_values_are_one_line_errors(tmp_path, capsys):
    assert _train(tmp_path / "run", "--dropout", "1.5") == 2
    assert "ERCConfig.dropout must be a number in [0, 1), got 1.5" in _error_line(capsys)
    assert _train(tmp_path / "run", "--lr", "-1") == 2
    assert "TrainerConfig.lr must be a finite number > 0" in _error_line(capsys)
    assert main(["train", "--out", str(tmp_path / "run"), "--epochs", "two"]) == 2
    assert "--epochs: invalid int value: 'two'" in _error_line(capsys)
    assert main(["train", "--out", str(tmp_path / "run"), "--encoder-layers", "2,last"]) == 2
    assert "--encoder-layers: expected comma-separated layer numbers such as 2,3,4, got '2,last'" in _error_line(capsys)
    assert _train(tmp_path / "run", "--encoder", "minilm", "--encoder-layers", "9") == 2
    assert "encoder layer 9 does not exist in" in _error_line(capsys)
    assert main(["train", "--out", str(tmp_path / "r2"), "--resume"]) == 2
    assert "no config.json to resume from" in _error_line(capsys)
    assert not (tmp_path / "run").exists()


def test_a_diverged_training_is_a_one_line_error(tmp_path, capsys):
    # Which epoch overflows first depends on the CPU's rounding: the promise is one line, exit status 1,
    # and the checkpoint of the last finite epoch (none before epoch 1) kept as it was written.
    assert _train(tmp_path / "run", "--lr", "1e30", epochs=4) == 1
    found = re.search(r"epoch (\d+): the mean training loss is (nan|inf|-inf): the weights diverged",
                      _error_line(capsys))
    assert found, "no divergence message"
    epoch = int(found.group(1))
    checkpoint = tmp_path / "run" / "checkpoint"
    if epoch == 1:
        assert not checkpoint.exists()
    else:
        weights = sorted(p.name for p in checkpoint.glob("epoch-*.safetensors"))
        assert f"epoch-{epoch - 1}.safetensors" in weights and f"epoch-{epoch}.safetensors" not in weights
        state = torch.load(checkpoint / "trainer_state.pt", weights_only=False)
        assert state["epoch"] == epoch - 1


def test_ablation_rejects_a_variant_flag(tmp_path, capsys):
    assert main(["train", "--ablation", "--no-speaker", "--out", str(tmp_path / "x")]) == 2
    assert "--ablation trains the no-context and no-speaker variants itself" in _error_line(capsys)


def test_a_transformer_directory_without_a_readable_depth_is_one_line(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert main(["train", "--encoder", str(tmp_path / "model"), "--out", str(tmp_path / "run"), "--limit", "4"]) == 2
    assert "num_hidden_layers" in _error_line(capsys)
    assert not (tmp_path / "run").exists()
