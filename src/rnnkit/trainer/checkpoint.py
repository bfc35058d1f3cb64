"""Resumable checkpoints of the training loop: what is written after every epoch, and how a run picks up again.

Files (under the trainer's ``out_dir``), each written atomically (see :mod:`rnnkit.trainer.files`)::

    out_dir/model.safetensors                 weights of the best epoch so far (what inference loads)
    out_dir/checkpoint/epoch-K.safetensors    weights after epoch K (kept: the last and the best epoch)
    out_dir/checkpoint/average-K.safetensors  the moving average of the weights after epoch K (with ``ema``)
    out_dir/checkpoint/trainer_state.pt       optimizer, RNG states, history; names the weight files above

``trainer_state.pt`` is written last and is the commit point: a run interrupted between two writes
resumes from the previous complete epoch. It also holds the RNG states of every process and the
:class:`TrainerConfig`, so a resumed run replays the next epochs exactly, and refuses settings that would not;
and the number of CPU threads, as torch's kernels sum in an order that depends on it: resuming with another
number prints a warning, since the weights then differ from an uninterrupted run's by float rounding.
"""

from __future__ import annotations

import io
import os
import pickle
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn
from torch.optim.swa_utils import AveragedModel

from rnnkit.trainer.config import TrainerConfig
from rnnkit.trainer.distributed import set_rng_state
from rnnkit.trainer.files import atomic_write_bytes, save_weights

__all__ = ["WEIGHTS_FILE", "CHECKPOINT_DIR", "STATE_FILE", "CheckpointError", "Progress", "save_checkpoint",
           "load_checkpoint"]

WEIGHTS_FILE = "model.safetensors"
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "trainer_state.pt"

# What every trainer_state.pt holds ("scheduler" and the average's entries came later or only with ema).
_STATE_KEYS = ("epoch", "last_weights", "best_weights", "best_epoch", "best_score", "history", "optimizer", "rng",
               "config")
# TrainerConfig fields a resumed run must share with the checkpoint to replay the same epochs.
_REPLAY_FIELDS = ("batch_size", "lr", "weight_decay", "grad_clip", "seed", "warmup", "schedule", "token_budget", "ema")


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be resumed (missing, incomplete, or from another configuration)."""


class Progress(NamedTuple):
    """Where a run stands after ``epoch``: the per-epoch history and the best epoch, its score and weights."""

    epoch: int
    history: list[dict[str, float]]
    best_epoch: int
    best_score: float
    best_state: dict[str, torch.Tensor]


def save_checkpoint(out_dir: str | os.PathLike, progress: Progress, *, model: nn.Module,
                    average: AveragedModel | None, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler, config: TrainerConfig,
                    rng: Sequence[Mapping[str, Any]]) -> None:
    """Write the checkpoint of ``progress.epoch`` (``rng``: every process's RNG state, in rank order)."""
    epoch, best_epoch = progress.epoch, progress.best_epoch
    ckpt = Path(out_dir) / CHECKPOINT_DIR
    # The epoch files hold the trained weights; with ema the average files hold what is scored and kept.
    scored = "epoch" if average is None else "average"
    last_name, best_name = f"epoch-{epoch}.safetensors", f"{scored}-{best_epoch}.safetensors"
    save_weights(model.state_dict(), ckpt / last_name, epoch=str(epoch))
    average_name = None
    if average is not None:
        average_name = f"average-{epoch}.safetensors"
        save_weights(average.module.state_dict(), ckpt / average_name, epoch=str(epoch))
    if best_epoch == epoch:
        save_weights(progress.best_state, Path(out_dir) / WEIGHTS_FILE, epoch=str(epoch))
    state = {
        "epoch": epoch,
        "last_weights": last_name,
        "best_weights": best_name,
        "average_weights": average_name,
        "average_updates": None if average is None else int(average.n_averaged),
        "best_epoch": best_epoch,
        "best_score": progress.best_score,
        "history": progress.history,
        "optimizer": optimizer.state_dict(),
        "scheduler": {"step": scheduler.last_epoch},
        "rng": list(rng),
        "config": asdict(config),
        "threads": torch.get_num_threads(),  # the CPU kernels' summation order, and so the last digits, follow it
    }
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(ckpt / STATE_FILE, buffer.getvalue())
    for stale in [*ckpt.glob("epoch-*.safetensors"), *ckpt.glob("average-*.safetensors")]:
        if stale.name not in (last_name, best_name, average_name):
            stale.unlink(missing_ok=True)


def load_checkpoint(out_dir: str | os.PathLike | None, *, model: nn.Module, average: AveragedModel | None,
                    optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                    config: TrainerConfig, rank: int, world_size: int) -> Progress:
    """Restore the last checkpoint in ``out_dir`` into the model, average, optimizer, scheduler and this
    process's RNGs, and return its progress. :class:`CheckpointError` when there is none, it is damaged, or it
    was written by another number of processes or with other settings of ``config``'s replay fields."""
    if out_dir is None:
        raise CheckpointError("resume needs an out_dir holding a checkpoint")
    ckpt = Path(out_dir) / CHECKPOINT_DIR
    state_path = ckpt / STATE_FILE
    if not state_path.is_file():
        raise CheckpointError(f"{state_path}: no checkpoint to resume from")
    state = _read_state(state_path)
    if len(state["rng"]) != world_size:
        raise CheckpointError(f"{state_path}: written by {len(state['rng'])} process(es), resumed with {world_size}")
    defaults = asdict(TrainerConfig())  # a field newer than the checkpoint had its default then
    saved = {k: state["config"].get(k, defaults[k]) for k in _REPLAY_FIELDS}
    changed = [k for k in _REPLAY_FIELDS if saved[k] != getattr(config, k)]
    if changed:
        was = ", ".join(f"{k}={saved[k]!r}" for k in changed)
        raise CheckpointError(f"{state_path}: written with {was}; resuming needs the same settings")
    if state["epoch"] > config.epochs:
        raise CheckpointError(f"{state_path}: already at epoch {state['epoch']} > epochs={config.epochs}")
    threads = state.get("threads", torch.get_num_threads())  # older checkpoints did not record it
    if rank == 0 and threads != torch.get_num_threads():
        print(f"rnnkit: warning: {state_path}: written with {threads} CPU thread(s), resumed with "
              f"{torch.get_num_threads()}: the weights will differ from an uninterrupted run's in the last digits",
              file=sys.stderr)
    _read_weights(ckpt / state["last_weights"], into=model)
    if average is not None:
        _read_weights(ckpt / state["average_weights"], into=average.module)
        average.n_averaged.fill_(state["average_updates"])
    best_state = _read_weights(ckpt / state["best_weights"])
    try:
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"][rank])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{state_path}: damaged checkpoint (optimizer or RNG state: {err})") from None
    if "scheduler" in state:  # the optimizer state holds the next step's rates; the schedule goes on from there
        scheduler.last_epoch = state["scheduler"]["step"]
    return Progress(state["epoch"], state["history"], state["best_epoch"], state["best_score"], best_state)


def _read_state(path: Path) -> dict[str, Any]:
    """The contents of ``trainer_state.pt``; :class:`CheckpointError` when it is unreadable or lacks an entry."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, pickle.UnpicklingError, EOFError, ValueError):
        raise CheckpointError(f"{path}: damaged checkpoint (not a state file torch.save wrote)") from None
    missing = [key for key in _STATE_KEYS if key not in state] if isinstance(state, dict) else list(_STATE_KEYS)
    if missing or not isinstance(state["rng"], list) or not isinstance(state["config"], dict):
        raise CheckpointError(f"{path}: damaged checkpoint (no valid {', '.join(map(repr, missing or _STATE_KEYS))})")
    return state


def _read_weights(path: Path, into: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint's weight file, loaded ``into`` a module when given (strictly);
    :class:`CheckpointError` naming the file when it is missing, damaged or of another model."""
    try:
        tensors = load_safetensors(path.read_bytes())
        if into is not None:
            into.load_state_dict(tensors, strict=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; the checkpoint is incomplete") from None
    except (OSError, SafetensorError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{path}: damaged checkpoint weights ({reason})") from None
    return tensors
