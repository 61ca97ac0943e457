"""``bench train --augment``: what each augmentation beyond crop and flip adds to a training step.

Each augmentation is timed the way training runs it: the loader's batch (crop, flip, the
policy or cutout, normalise, all batched on the device) and, for mixup and CutMix, the
mixing of that batch (:func:`~resnetlab.engine.train.mixed_targets`). Its cost is the median
time per batch minus the median of plain crop + flip timed in the same rounds, and its share
is that cost over the step it would join: the benchmarked mode's step time plus the cost
(the step already includes crop + flip). Rounds are interleaved across augmentations, as
the modes are, so load that comes and goes hits them alike.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from ..data import MemoryLoader
from ..data.augment import mix_batch
from ..errors import UserError

BASELINE = "crop+flip"
CUTOUT_SIZE = 16  # DeVries & Taylor's side for CIFAR-10
MIX_ALPHA = 1.0
# Loader options per augmentation; "mix" is applied to the loader's batch, as train_step does.
AUGMENTATIONS: dict[str, dict[str, Any]] = {
    BASELINE: {},
    "cutout": {"cutout": CUTOUT_SIZE},
    "autoaugment": {"policy": "autoaugment"},
    "trivialaugment": {"policy": "trivialaugment"},
    "mixup": {"mix": "mixup"},
    "cutmix": {"mix": "cutmix"},
}
# Images in the synthetic set: enough batches that a repeat walks over several.
SET_BATCHES = 8


@dataclass
class AugmentCost:
    """One augmentation's measured time per batch, and what it adds over crop + flip."""

    name: str
    ms_per_batch: float
    extra_ms: float
    repeats_ms: list[float] = field(default_factory=list)

    def share_pct(self, step_ms: float) -> float:
        """Percent of a step of ``step_ms`` (crop + flip included) that this augmentation would take."""
        extra = max(self.extra_ms, 0.0)
        return 100 * extra / (step_ms + extra)

    def to_dict(self, step_ms: float | None) -> dict[str, Any]:
        """JSON-able record; the share only where a step time is known."""
        out = {"ms_per_batch": round(self.ms_per_batch, 3), "extra_ms": round(self.extra_ms, 3),
               "repeats_ms": [round(v, 3) for v in self.repeats_ms]}
        if step_ms is not None and self.name != BASELINE:
            out["step_share_pct"] = round(self.share_pct(step_ms), 2)
        return out


def resolve_augmentations(spec: str) -> list[str]:
    """``all`` or a comma-separated list of :data:`AUGMENTATIONS` names; crop+flip is always first."""
    names = list(AUGMENTATIONS) if spec.strip() == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise UserError(f"unknown augmentation {unknown[0]!r} for --augment; choose from all, "
                        + ", ".join(AUGMENTATIONS))
    return [BASELINE] + [n for n in dict.fromkeys(names) if n != BASELINE]


def _producer(name: str, images: Tensor, labels: Tensor, batch_size: int, num_classes: int,
              device: torch.device, channels_last: bool, seed: int) -> Callable[[int], Tensor]:
    """A function of the batch index that makes one augmented batch, as the training step gets it."""
    options = dict(AUGMENTATIONS[name])
    mix = options.pop("mix", None)
    loader = MemoryLoader(images, labels, batch_size, train=True, mean=[0.5] * images.shape[1],
                          std=[0.25] * images.shape[1], device=device, channels_last=channels_last, seed=seed,
                          **options)
    steps = len(loader)

    def produce(index: int) -> Tensor:
        x, y = loader.batch(*divmod(index, steps))
        if mix is not None:
            x, _ = mix_batch(x, y, num_classes, mix, MIX_ALPHA, torch.Generator().manual_seed(seed + index))
        return x

    return produce


def time_augmentations(names: list[str], *, size: tuple[int, int, int], batch_size: int, num_classes: int,
                       device: torch.device, channels_last: bool, seed: int = 0, repeats: int = 5,
                       min_time: float = 0.5, warmup: int = 2,
                       synchronize: Callable[[torch.device], None] = lambda _d: None) -> list[AugmentCost]:
    """Median time per batch of each augmentation in ``names`` (the first must be crop+flip) and its extra cost."""
    if not names or names[0] != BASELINE:
        raise ValueError(f"the first augmentation must be {BASELINE}")
    gen = torch.Generator().manual_seed(seed)
    n = SET_BATCHES * batch_size
    images = torch.randint(0, 256, (n, *size), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    producers = [_producer(name, images, labels, batch_size, num_classes, device, channels_last, seed)
                 for name in names]
    for produce in producers:
        for i in range(warmup):
            produce(i)
    iters = [_iterations(produce, min_time, device, synchronize) for produce in producers]
    rounds: list[list[float]] = [[] for _ in names]
    for _ in range(repeats):
        for k, produce in enumerate(producers):
            synchronize(device)
            t0 = time.perf_counter()
            for i in range(iters[k]):
                produce(i)
            synchronize(device)
            rounds[k].append(1e3 * (time.perf_counter() - t0) / iters[k])
    # Paired, like the modes' ratios: each round's cost against crop+flip's of the same round.
    return [AugmentCost(name, statistics.median(ms), statistics.median(a - b for a, b in zip(ms, rounds[0])), ms)
            for name, ms in zip(names, rounds)]


def _iterations(produce: Callable[[int], Tensor], min_time: float, device: torch.device,
                synchronize: Callable[[torch.device], None]) -> int:
    """Batches per repeat for about ``min_time`` seconds, from one timed batch."""
    synchronize(device)
    t0 = time.perf_counter()
    produce(0)
    synchronize(device)
    return max(1, math.ceil(min_time / max(time.perf_counter() - t0, 1e-6)))


def format_costs(costs: list[AugmentCost], step_ms: float | None, step_mode: str | None) -> list[str]:
    """The table of ``bench train --augment``: per augmentation, ms per batch, extra ms and share of the step."""
    of = f"share of the step ({step_mode})" if step_mode else "share of the step"
    header = f"{'augmentation':<18}{'ms/batch':>10}{'extra ms':>10}  {of}"
    lines = ["", "augmentation on the data path (batched on the device; cost over crop+flip, same rounds):",
             header, "-" * len(header)]
    for c in costs:
        share = "" if c.name == BASELINE or step_ms is None else f"{c.share_pct(step_ms):.1f}%"
        lines.append(f"{c.name:<18}{c.ms_per_batch:>10.2f}{c.extra_ms:>10.2f}  {share}")
    return lines
