"""Optimisation settings of the training loop, one dataclass validated field by field."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rnnkit.trainer.schedule import SCHEDULES

__all__ = ["TrainerConfig", "check_number"]

# The devices the trainer runs on (fused AdamW, DDP with gloo or NCCL); "meta", "xla" and the like are refused.
_DEVICE_TYPES = ("cpu", "cuda", "mps")


def check_number(owner: str, name: str, value, ok: Callable[[float], bool], expected: str) -> None:
    """Raise ``ValueError("{owner}.{name} must be {expected}, got {value!r}")`` unless ``value`` is an int or
    float (not a bool) for which ``ok(value)`` holds: the field check of this and the task's config dataclasses."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
        raise ValueError(f"{owner}.{name} must be {expected}, got {value!r}")


@dataclass
class TrainerConfig:
    """Optimisation settings. ``grad_clip = 0`` disables clipping; ``device = "auto"`` picks CUDA when present.

    warmup: fraction of all optimizer steps over which the learning rate rises linearly to its value.
    schedule: "constant", "linear" or "cosine" decay after the warm-up (see :func:`lr_factor`); it spans all
        ``epochs``, so a run resumed with more epochs stretches the rest of its decay over the new total.
    token_budget: None, or the most tokens (as ``Trainer.item_size`` counts them) a batch may hold; batches
        then also hold at most ``batch_size`` items (see :func:`rnnkit.batching.budget_batches`).
    class_weighting, label_smoothing, contrastive: settings of a classification loss, read by whoever builds
        ``loss_fn`` (the Trainer itself does not use them; the task's loss does): the power p of
        the class weights ``(class count / mean count) ** -p`` (0 plain cross-entropy, 0.5 inverse square root
        of the class frequency, 1 its inverse); how much of the uniform distribution the target mixes with the
        true label (torch's ``cross_entropy(label_smoothing=...)``, Szegedy et al. 2016, sec. 7); the weight of a
        supervised contrastive term (Khosla et al. 2020), 0 none. They live here so that a run's saved trainer
        settings hold every optimisation choice.
    ema: decay of the moving average of the weights that is evaluated and saved (see :mod:`rnnkit.trainer`),
        in [0, 1); 0 none. With s optimizer steps per epoch, 1 - 1 / s averages over about
        the last epoch.
    patience: stop after this many epochs in a row without a higher dev score than the best so far (early
        stopping; ``epochs`` is then the cap); 0 trains all ``epochs``. A dev score that peaks at a different
        epoch on every corpus needs no per-corpus epoch count this way, only a cap.

    The defaults are the plain settings of each field; ``rnnkit train`` starts from a preset of the encoder's kind
    instead (see :data:`rnnkit.erc.recipe.PRESETS`).
    """

    epochs: int = 6
    batch_size: int = 16
    lr: float = 3e-3
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    quiet: bool = False
    warmup: float = 0.0
    schedule: str = "constant"
    token_budget: int | None = None
    class_weighting: float = 0.0
    label_smoothing: float = 0.0
    contrastive: float = 0.0
    ema: float = 0.0
    patience: int = 0

    def __post_init__(self) -> None:
        for name, minimum in (("epochs", 1), ("batch_size", 1), ("patience", 0)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"TrainerConfig.{name} must be an integer >= {minimum}, got {value!r}")
        check_number("TrainerConfig", "lr", self.lr, lambda lr: math.isfinite(lr) and lr > 0, "a finite number > 0")
        for name in ("weight_decay", "grad_clip"):
            check_number("TrainerConfig", name, getattr(self, name), lambda v: math.isfinite(v) and v >= 0,
                         "a finite number >= 0")
        check_number("TrainerConfig", "warmup", self.warmup, lambda w: 0 <= w < 1,
                     "a fraction of the training steps in [0, 1)")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"TrainerConfig.schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        budget = self.token_budget
        if budget is not None and (not isinstance(budget, int) or isinstance(budget, bool) or budget < 1):
            raise ValueError(f"TrainerConfig.token_budget must be None or an integer >= 1, got {budget!r}")
        check_number("TrainerConfig", "class_weighting", self.class_weighting, lambda p: 0 <= p <= 2,
                     "a number in [0, 2]")
        check_number("TrainerConfig", "label_smoothing", self.label_smoothing, lambda e: 0 <= e < 1,
                     "a number in [0, 1)")
        check_number("TrainerConfig", "contrastive", self.contrastive, lambda w: math.isfinite(w) and w >= 0,
                     "a finite number >= 0")
        check_number("TrainerConfig", "ema", self.ema, lambda d: 0 <= d < 1, "a number in [0, 1)")
        # numpy seeds take 32 bits, and the batch-order generator a 64-bit seed * 100_003 + epoch.
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not 0 <= self.seed < 2**32:
            raise ValueError(f"TrainerConfig.seed must be an integer in [0, 2**32 - 1], got {self.seed!r}")
        if self.device != "auto":
            try:
                kind = torch.device(self.device).type
            except (RuntimeError, ValueError):
                kind = None
            if kind not in _DEVICE_TYPES:
                raise ValueError(f"TrainerConfig.device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', "
                                 f"got {self.device!r}")
