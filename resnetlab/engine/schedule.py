"""The learning rate as a pure function of the iteration (nanoGPT's ``get_lr`` idea).

No scheduler object holds state, so resuming needs nothing but the step number,
and tests can check the paper's schedule point by point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Schedule:
    """A resolved schedule: total iterations, shape, milestones in iterations, warm-up."""

    lr: float
    total: int
    kind: str = "step"  # "step" | "cosine" | "linear"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_iters: int = 0
    warmup_lr: float | None = None  # None: linear ramp from lr/warmup_iters up to lr


def lr_at(step: int, s: Schedule) -> float:
    """Learning rate for iteration ``step`` (0-based).

    Warm-up first: a constant ``warmup_lr`` (the paper's 0.01 for 110+ layers,
    Sec. 4.2, "then go back to 0.1") or a linear ramp. Then ``step``: multiply
    by ``gamma`` at each milestone; ``cosine``/``linear``: decay to zero at ``total``.
    """
    if step < s.warmup_iters:
        if s.warmup_lr is not None:
            return s.warmup_lr
        return s.lr * (step + 1) / s.warmup_iters
    if s.kind == "step":
        return s.lr * s.gamma ** sum(step >= m for m in s.milestones)
    span = max(1, s.total - s.warmup_iters)
    t = min(1.0, (step - s.warmup_iters) / span)
    if s.kind == "cosine":
        return s.lr * 0.5 * (1 + math.cos(math.pi * t))
    if s.kind == "linear":
        return s.lr * (1 - t)
    raise ValueError(f"unknown schedule {s.kind!r}")
