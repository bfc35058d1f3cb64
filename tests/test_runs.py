"""Tests for rnnkit.erc.runs: the run directory train_run writes (file modes, digests, leftovers of killed writes)
and load_run's checks of it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file

from rnnkit.cli import main
from rnnkit.erc import ERCConfig, RunError, load_data, load_run, train_run
from rnnkit.erc.runs import seal_run
from rnnkit.trainer import TrainerConfig
from rnnkit.trainer.files import TEMP_SUFFIX, save_weights

SMALL_MODEL = {"embedding_dim": 8, "encoder_hidden": 8, "context_hidden": 8, "speaker_hidden": 8}


def _train(directory: Path, epochs: int = 1, resume: bool = False) -> None:
    data = load_data(limit=8)
    train_run(directory, data, ERCConfig(num_labels=len(data.labels), **SMALL_MODEL),
              TrainerConfig(epochs=epochs, batch_size=4, quiet=True), resume=resume)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A run trained under umask 022, as most systems set it."""
    out = tmp_path_factory.mktemp("runs") / "run"
    old = os.umask(0o022)
    try:
        _train(out)
    finally:
        os.umask(old)
    return out


@pytest.fixture
def copy(run_dir, tmp_path) -> Path:
    """A copy of the trained run to damage."""
    return Path(shutil.copytree(run_dir, tmp_path / "copy"))


def _edit_config(directory: Path, edit) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))


def test_every_file_of_a_run_is_readable_by_all_under_umask_022(run_dir):
    modes = {str(p.relative_to(run_dir)): oct(p.stat().st_mode & 0o777) for p in run_dir.rglob("*")}
    assert {"config.json", "vocab.json", "model.safetensors", "checkpoint/trainer_state.pt"} <= set(modes)
    assert modes == {name: oct(0o755 if (run_dir / name).is_dir() else 0o644) for name in modes}


def test_a_complete_run_records_the_digests_of_its_labels_and_weights(run_dir):
    config = json.loads((run_dir / "config.json").read_text())
    labels = json.dumps(config["labels"], ensure_ascii=False).encode()
    assert config["sha256"] == {"labels": hashlib.sha256(labels).hexdigest(),
                                "model.safetensors": hashlib.sha256((run_dir / "model.safetensors").read_bytes())
                                .hexdigest()}


def test_reordered_labels_are_refused(copy, capsys):
    _edit_config(copy, lambda config: config["labels"].reverse())
    with pytest.raises(RunError, match=r"config.json: the labels differ from those the run was trained with"):
        load_run(copy)
    for argv in (["evaluate", "--run", str(copy)], ["predict", "--run", str(copy), "--input", "unread.jsonl"]):
        assert main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith(f"rnnkit: error: {copy / 'config.json'}: the labels differ")
        assert len(captured.err.splitlines()) == 1


def test_other_weights_of_the_same_shapes_are_refused(copy):
    tensors = load_file(copy / "model.safetensors")
    save_weights({name: t + 1 for name, t in tensors.items()}, copy / "model.safetensors")
    with pytest.raises(RunError, match=r"model.safetensors: the weights differ from those the run was trained "
                                       r"with \(their sha256 digest does not match the one in config.json\)"):
        load_run(copy)


def test_a_run_without_digests_loads_unchecked(run_dir, copy):
    _edit_config(copy, lambda config: (config.pop("sha256"), config["labels"].reverse()))
    reordered = load_run(run_dir).labels[::-1]
    assert load_run(copy).labels == reordered
    seal_run(copy)  # the reordered labels become the recorded ones
    assert load_run(copy).labels == reordered


def test_damaged_weights_of_a_run_without_digests_are_refused(copy):
    _edit_config(copy, lambda config: config.pop("sha256"))
    (copy / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(RunError, match=r"model.safetensors: cannot load the weights"):
        load_run(copy)


def test_a_malformed_digests_field_is_refused(copy):
    _edit_config(copy, lambda config: config.update(sha256=["not", "a", "mapping"]))
    with pytest.raises(RunError, match=r"config.json: field 'sha256' must map names to sha256 digests"):
        load_run(copy)


def test_writing_a_run_removes_the_leftovers_of_killed_writes_and_nothing_else(copy):
    leftovers = [copy / f".metrics.json.x7k2{TEMP_SUFFIX}", copy / "checkpoint" / f".trainer_state.pt.q1{TEMP_SUFFIX}"]
    kept = [copy / "notes.tmp", copy / "checkpoint" / "mine.tmp"]
    for path in leftovers + kept:
        path.write_bytes(b"half a file")
    _train(copy, epochs=2, resume=True)
    assert [path for path in leftovers if path.exists()] == []
    assert [path.read_bytes() for path in kept] == [b"half a file"] * 2
    assert not list(copy.rglob(f"*{TEMP_SUFFIX}"))
    load_run(copy)  # resealed: the new weights match their digest
