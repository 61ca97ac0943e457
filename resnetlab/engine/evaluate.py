"""Top-1/top-5 error, loss, per-class accuracy and the confusion matrix over a loader.

Counts are summed as integers; under ``torch.distributed`` each rank evaluates its
own shard and the sums are all-reduced, so the result is exact (no padded
duplicates as a ``DistributedSampler`` would add).
"""

from __future__ import annotations

import contextlib
from typing import Iterable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn


def autocast(device: torch.device, amp: str, cache_enabled: bool = True) -> contextlib.AbstractContextManager:
    """``torch.autocast`` for ``amp`` in {"bf16", "fp16"}; a no-op for "none". ``cache_enabled=False`` for CUDA
    graphs: a weight cast cached outside a graph would be stale inside it."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16,
                          cache_enabled=cache_enabled)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    num_classes: int,
    *,
    device: torch.device,
    amp: str = "none",
    tta_flip: bool = False,
) -> dict:
    """Evaluate ``model`` (switched to eval mode and back) on ``batches`` of (images, labels).

    Returns ``top1``/``top5`` accuracies as fractions, mean ``loss``, ``n``, the
    error rates ``top1_err``/``top5_err``, ``per_class`` accuracy and ``confusion``
    (rows: true class, columns: predicted).
    """
    was_training = model.training
    model.eval()
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long, device=device)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, top-5 hits, n
    k = min(5, num_classes)
    for x, y in batches:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast(device, amp):
            logits = model(x)
            if tta_flip:
                logits = (logits + model(x.flip(3))) / 2
        logits = logits.float()
        sums[0] += F.cross_entropy(logits, y, reduction="sum")
        sums[1] += (logits.topk(k, 1).indices == y[:, None]).any(1).sum()
        sums[2] += len(y)
        confusion += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes**2).view(
            num_classes, num_classes
        )
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(confusion)
        dist.all_reduce(sums)
    model.train(was_training)
    n = int(sums[2].item())
    if n == 0:
        raise ValueError("evaluation set is empty")
    confusion = confusion.cpu()
    correct = int(confusion.diag().sum())
    per_class_total = confusion.sum(1).clamp(min=1)
    return {
        "top1": correct / n,
        "top5": float(sums[1]) / n,
        "top1_err": 1 - correct / n,
        "top5_err": 1 - float(sums[1]) / n,
        "loss": float(sums[0]) / n,
        "n": n,
        "per_class": (confusion.diag() / per_class_total).tolist(),
        "confusion": confusion.tolist(),
    }
