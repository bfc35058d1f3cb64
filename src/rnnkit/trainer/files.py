"""Files that are either absent, the old version or the complete new one: atomic writes and safetensors weights.

A run directory is written while training goes on, and an interrupted process (Ctrl-C, a killed job, a full
disk) must never leave a half-written file where a later run or ``--resume`` would read it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

__all__ = ["atomic_write_bytes", "save_weights", "load_weights"]


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the complete new one.

    The bytes go to a temporary file in the same directory (same filesystem, so the rename is atomic),
    are flushed to disk, then the temporary file replaces ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)  # mkstemp creates the file 0600; give it the mode a plain open() would
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike, **metadata: str) -> None:
    """Atomically save a state dict as safetensors (tensors copied to contiguous CPU memory)."""
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in state_dict.items()}
    atomic_write_bytes(path, save_safetensors(tensors, metadata=metadata or None))


def load_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Load safetensors weights into ``model`` (strict: names and shapes must match)."""
    tensors = load_safetensors(Path(path).read_bytes())
    model.load_state_dict(tensors, strict=True)
