"""Parameter and multiply-add counts, a torchinfo-style summary, and the bottleneck arithmetic.

Multiply-adds come from torch's own ``torch.utils.flop_counter`` (FLOPs / 2), run
on the ``meta`` device so even ResNet-1202 or Wide ResNet-101 costs no compute.
Like the paper's Table 1 (and fvcore/ptflops), only convolutions and the fully
connected layer count; BN, ReLU, pooling and additions are left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .blocks import BasicBlock, Bottleneck
from .registry import create_model


def count_params(model: nn.Module) -> int:
    """Number of parameters (trainable or not; BN running statistics are buffers and do not count)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """Multiply-adds of one forward pass on a single ``input_size`` (C, H, W) image."""
    counter = FlopCounterMode(display=False)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with counter, torch.no_grad():
        model(torch.zeros(1, *input_size, device=device))
    model.train(was_training)
    return counter.get_total_flops() // 2


def count_layers(model: nn.Module) -> int:
    """Depth as the paper counts it: weighted layers on the main path (convs and the fc), not projections."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "downsample" not in n]
    return len(convs) + sum(isinstance(m, nn.Linear) for m in model.modules())


def meta_model(name: str, **overrides: Any) -> nn.Module:
    """Build a model on the meta device: shapes and counts without allocating weights."""
    with torch.device("meta"):
        return create_model(name, **overrides)


@dataclass
class SummaryRow:
    """One line of :func:`summary`: a module, its depth in the tree, output shape, params and multiply-adds."""

    name: str
    kind: str
    depth: int
    output_shape: tuple[int, ...]
    params: int
    macs: int


def summary(model: nn.Module, input_size: tuple[int, ...]) -> tuple[list[SummaryRow], int, int]:
    """Per-layer rows for the stem, every stage and block, and the head; returns (rows, total params, total MACs).

    Stage and block rows include everything inside them; leaf rows are the stem
    and head layers, so the table reads top to bottom like the paper's Table 1.
    """
    shown: dict[str, nn.Module] = {}
    for name, module in model.named_children():
        if isinstance(module, nn.Identity):  # no max-pool on CIFAR, no final BN on post-activation nets
            continue
        shown[name] = module
        if name in getattr(model, "stage_names", []):
            for block_name, block in module.named_children():
                shown[f"{name}.{block_name}"] = block
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [
        m.register_forward_hook(lambda _m, _i, out, key=n: shapes.__setitem__(key, tuple(out.shape)))
        for n, m in shown.items()
    ]
    counter = FlopCounterMode(display=False)
    device = next(model.parameters()).device
    model.eval()
    try:
        with counter, torch.no_grad():
            model(torch.zeros(1, *input_size, device=device))
    finally:
        for h in hooks:
            h.remove()
    by_module = counter.get_flop_counts()
    root = type(model).__name__
    rows = []
    for name, module in shown.items():
        flops = sum(by_module.get(f"{root}.{name}", {}).values())
        rows.append(
            SummaryRow(name, type(module).__name__, name.count("."), shapes[name], count_params(module), flops // 2)
        )
    return rows, count_params(model), counter.get_total_flops() // 2


def format_summary(model_name: str, rows: list[SummaryRow], params: int, macs: int, input_size: tuple) -> str:
    """Render :func:`summary` rows as a fixed-width table."""
    lines = [f"{model_name}  input 1x{'x'.join(map(str, input_size))}"]
    header = f"{'Layer (type)':<38}{'Output shape':>22}{'Params':>14}{'Mult-adds':>16}"
    lines += ["=" * len(header), header, "=" * len(header)]
    for r in rows:
        label = "  " * r.depth + f"{r.name} ({r.kind})"
        shape = "x".join(map(str, r.output_shape))
        lines.append(f"{label:<38}{shape:>22}{r.params:>14,}{r.macs:>16,}")
    lines += [
        "=" * len(header),
        f"Total params: {params:,}",
        f"Total mult-adds: {macs:,} ({macs / 1e9:.3f} G)",
    ]
    return "\n".join(lines)


@dataclass
class BlockCost:
    """Weights (conv only), all parameters and multiply-adds of one residual unit at a given resolution."""

    design: str
    conv_weights: int
    params: int
    macs: int


def block_arithmetic(channels: int = 256, resolution: int = 56) -> list[BlockCost]:
    """The bottleneck argument of paper Sec. 3.3 / Fig. 5, computed from the real block modules.

    Two 3x3 convolutions on ``channels`` maps versus the 1x1-3x3-1x1 bottleneck
    that squeezes to ``channels / 4`` (256-64-64-256 in the paper), at ``resolution``.
    """
    mid = channels // Bottleneck.expansion
    designs = {
        f"basic: two 3x3 convs, {channels}-{channels}-{channels}": BasicBlock(channels, channels),
        f"bottleneck: 1x1-3x3-1x1, {channels}-{mid}-{mid}-{channels}": Bottleneck(channels, mid),
    }
    costs = []
    for label, block in designs.items():
        conv_weights = sum(m.weight.numel() for m in block.modules() if isinstance(m, nn.Conv2d))
        macs = count_macs(block, (channels, resolution, resolution))
        costs.append(BlockCost(label, conv_weights, count_params(block), macs))
    return costs
