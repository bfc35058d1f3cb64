"""Safetensors weights, written atomically (:mod:`rnnkit.atomic`, whose helpers the trainer's modules use too)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from rnnkit.atomic import TEMP_SUFFIX, atomic_open, atomic_write_bytes, file_mode, remove_temporaries

__all__ = ["TEMP_SUFFIX", "atomic_open", "atomic_write_bytes", "file_mode", "remove_temporaries", "save_weights",
           "load_weights"]


def save_weights(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, **metadata: str) -> None:
    """Atomically save a state dict as safetensors (tensors copied to contiguous CPU memory)."""
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in state_dict.items()}
    atomic_write_bytes(path, save_safetensors(tensors, metadata=metadata or None))


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load safetensors weights into ``model`` (strict: names and shapes must match)."""
    tensors = load_safetensors(Path(path).read_bytes())
    model.load_state_dict(tensors, strict=True)
