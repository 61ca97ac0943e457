"""Standard deviation of each 3x3 layer's response in a trained network (He et al. 2015 Sec. 4.2, Fig. 7).

The paper: "The responses are the outputs of each 3x3 layer, after BN and before other
nonlinearity (ReLU/addition)". In a CIFAR basic-block net every 3x3 convolution is
followed by a BN: the stem's ``bn1``, and in every unit ``bn1`` (before the ReLU) and
``bn2`` (before the addition and the ReLU). A forward hook on each of those BN modules
sees exactly the tensor the paper describes; ReLUs act in place *after* the hook has
read it. The plain nets have the same modules, so both kinds are measured alike.

Statistics are accumulated in float64 over the whole evaluation set (no batch is kept):
``std`` is the standard deviation of all the layer's outputs (images x channels x
positions); ``channel_std`` the mean over channels of each channel's standard deviation
(over images and positions), which leaves out the spread between channel means (BN's beta).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import Tensor, nn

from ..models.blocks import BasicBlock, Bottleneck


@dataclass
class LayerStats:
    """Running first and second moments of one layer's output, per channel, in float64."""

    name: str
    count: int = 0  # values per channel seen so far
    sum: Tensor | None = None
    sumsq: Tensor | None = None

    def add(self, out: Tensor) -> None:
        """Accumulate an N x C x H x W output (any memory format)."""
        x = out.detach().to(torch.float64)
        per_channel = x.transpose(0, 1).reshape(x.shape[1], -1)
        s, ss = per_channel.sum(1), per_channel.square().sum(1)
        self.sum = s if self.sum is None else self.sum + s
        self.sumsq = ss if self.sumsq is None else self.sumsq + ss
        self.count += per_channel.shape[1]

    def std(self) -> float:
        """Standard deviation over every value of the layer (population formula; the counts are large)."""
        n = self.count * self.sum.numel()
        mean = float(self.sum.sum()) / n
        return max(0.0, float(self.sumsq.sum()) / n - mean * mean) ** 0.5

    def channel_std(self) -> float:
        """Mean over channels of the per-channel standard deviation."""
        mean = self.sum / self.count
        var = (self.sumsq / self.count - mean.square()).clamp(min=0)
        return float(var.sqrt().mean())


def response_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The BN after every 3x3 convolution on the main path, in forward order (paper Fig. 7's "layers").

    Post-activation nets only (basic or bottleneck units, residual or plain): in
    pre-activation units the BN comes *before* the convolution, so there is no
    "after BN, before addition" tensor to measure. Bottleneck units contribute their
    3x3 (``conv2``/``bn2``); basic units both convolutions. Shortcut projections are
    not layers in the paper's count and are left out.
    """
    stem = getattr(model, "conv1", None)
    if not isinstance(stem, nn.Conv2d) or not isinstance(getattr(model, "bn1", None), nn.BatchNorm2d):
        raise ValueError("layer responses need a post-activation ResNet/plain net with a conv1 + bn1 stem")
    layers: list[tuple[str, nn.Module]] = []
    if stem.kernel_size == (3, 3):
        layers.append(("bn1", model.bn1))
    for stage in getattr(model, "stage_names", []):
        for i, unit in enumerate(getattr(model, stage)):
            if isinstance(unit, BasicBlock):
                pairs = (("conv1", "bn1"), ("conv2", "bn2"))
            elif isinstance(unit, Bottleneck):
                pairs = (("conv2", "bn2"),)
            else:
                raise ValueError(f"{type(unit).__name__} is not a post-activation unit; see response_layers' doc")
            for conv, bn in pairs:
                if getattr(unit, conv).kernel_size == (3, 3):
                    layers.append((f"{stage}.{i}.{bn}", getattr(unit, bn)))
    return layers


@torch.no_grad()
def measure_responses(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> dict[str, list]:
    """Run ``model`` in eval mode over ``batches``; per-layer ``std`` and ``channel_std`` in forward order.

    Eval mode as in testing: BN uses its running statistics, so a response's std is
    what the trained network produces on unseen images, not 1 by construction.
    """
    layers = response_layers(model)
    stats = [LayerStats(name) for name, _ in layers]
    handles = [m.register_forward_hook(lambda _m, _i, out, s=s: s.add(out)) for (_, m), s in zip(layers, stats)]
    was_training = model.training
    model.eval()
    try:
        for x, _ in batches:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if not stats or stats[0].count == 0:
        raise ValueError("no images were measured")
    return {"layers": [s.name for s in stats], "std": [s.std() for s in stats],
            "channel_std": [s.channel_std() for s in stats]}
