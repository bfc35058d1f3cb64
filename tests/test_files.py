"""Tests for rnnkit.trainer.files: safetensors weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rnnkit.trainer.files import load_weights, save_weights


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
