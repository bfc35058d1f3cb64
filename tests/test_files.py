"""Tests for rnnkit.trainer.files: atomic writes and safetensors weights."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn

from rnnkit.trainer.files import atomic_write_bytes, load_weights, save_weights


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
    a, b = nn.Linear(5, 3), nn.Linear(5, 3)
    save_weights(a.state_dict(), tmp_path / "w.safetensors", epoch="1")
    load_weights(b, tmp_path / "w.safetensors")
    for (name, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), name


def test_load_weights_is_strict(tmp_path):
    save_weights(nn.Linear(5, 3).state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_weights(nn.Linear(5, 4), tmp_path / "w.safetensors")
