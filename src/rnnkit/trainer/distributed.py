"""Process-group and random-state helpers of the training loop: ``torchrun`` ranks, seeding, RNG snapshots."""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["DistInfo", "dist_info", "init_distributed", "resolve_device", "seed_everything", "rng_state",
           "set_rng_state"]


class DistInfo(NamedTuple):
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """Rank, world size and local rank of this process; ``(0, 1, 0)`` outside ``torch.distributed``."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return DistInfo(0, 1, 0)


def init_distributed() -> DistInfo:
    """Join the process group when launched by ``torchrun`` (its ``RANK``/``WORLD_SIZE`` variables are set).

    Uses NCCL with one GPU per local rank when CUDA is available, gloo on CPU. A no-op otherwise or when
    the group already exists.
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and dist.is_available() and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist_info()


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The device ``name`` stands for on this process: "auto" is this rank's GPU when CUDA is available, else the
    CPU; a bare "cuda" is this rank's GPU too. A :class:`ValueError` when this machine lacks the device, so that
    a run can refuse it before it writes anything."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available here (torch {torch.__version__}); "
                             "use --device cpu")
        index = local_rank if device.index is None else device.index
        if index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"numbered from 0; rank {local_rank} needs cuda:{index}")
        return torch.device("cuda", index)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r}: MPS is not available here; use --device cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed python's ``random``, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The states of torch (CPU and CUDA), numpy and python's ``random``, to store in a checkpoint."""
    # numpy's key array becomes a tensor so that the state file loads with torch.load(weights_only=True).
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
