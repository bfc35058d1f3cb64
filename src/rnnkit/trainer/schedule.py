"""The learning-rate schedule of the training loop: a linear warm-up, then a constant, linear or cosine decay."""

from __future__ import annotations

import math

__all__ = ["SCHEDULES", "lr_factor"]

SCHEDULES = ("constant", "linear", "cosine")


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """The multiplier of the base learning rates at optimizer step ``step`` (0-based) of ``total_steps``.

    .. math::
        \\eta_s / \\eta = \\frac{s + 1}{w} \\ (s < w), \\qquad
        1, \\ 1 - p, \\ \\tfrac{1}{2}(1 + \\cos \\pi p) \\ (s \\ge w), \\qquad p = \\frac{s - w}{n - w}

    for the constant, linear and cosine schedules (the cosine one is Loshchilov & Hutter 2017, "SGDR", eq. 5,
    without restarts), with ``w = warmup_steps`` and ``n = total_steps``: the first step already moves (rate
    :math:`\\eta / w`), step ``w - 1`` reaches the full rate, and the decay ends one step short of 0 so that the
    last step still learns.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)  # p in [0, 1)
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0
