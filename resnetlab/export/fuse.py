"""Fold BatchNorm into the convolution before it, for inference.

In eval mode a BatchNorm is a per-channel affine map, so ``bn(conv(x))`` equals one
convolution with rescaled weights and a bias. Folding removes every BN that directly
follows a convolution (post-activation units: stem, ``conv1/bn1``, ``conv2/bn2``,
``conv3/bn3``, projection shortcuts ``downsample.0/.1``).

Which pairs fold is read from the traced data flow (``torch.fx``), not from layer
names: in pre-activation units (He et al. 2016) ``bn1`` comes *before* ``conv1`` and
also feeds the shortcut, so it cannot fold, while ``conv1 -> bn2`` can. A pair folds
only when the convolution's output goes to the BN and nowhere else.
"""

from __future__ import annotations

import copy

import torch
import torch.fx
from torch import nn

from ..models.blocks import PadShortcut


class _Tracer(torch.fx.Tracer):
    """fx's tracer, with option A shortcuts kept whole: they branch on the input's memory format."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return isinstance(m, PadShortcut) or super().is_leaf_module(m, module_qualified_name)


def foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Qualified names ``(conv, bn)`` of every Conv2d whose only consumer is a BatchNorm2d, in graph order."""
    graph = _Tracer().trace(model)
    modules = dict(model.named_modules())
    # A module called from two places (weight sharing) cannot be rewritten for one of them.
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        source = node.args[0] if node.args else None
        if not isinstance(source, torch.fx.Node) or source.op != "call_module":
            continue
        conv, bn = modules[source.target], modules[node.target]
        if (
            isinstance(conv, nn.Conv2d)
            and len(source.users) == 1
            and calls[source.target] == 1
            and calls[node.target] == 1
            and bn.running_mean is not None  # without running statistics BN is not affine at inference
        ):
            pairs.append((source.target, node.target))
    return pairs


@torch.no_grad()
def fold_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new convolution equal to ``bn(conv(x))`` with ``bn`` in eval mode (its running statistics)."""
    dtype = conv.weight.dtype
    # float64 for the arithmetic: the folded layer should differ from the pair by rounding only.
    scale = bn.weight.double() if bn.affine else torch.ones_like(bn.running_var, dtype=torch.float64)
    shift = bn.bias.double() if bn.affine else torch.zeros_like(bn.running_mean, dtype=torch.float64)
    scale = scale / torch.sqrt(bn.running_var.double() + bn.eps)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    fused = copy.deepcopy(conv)
    fused.weight = nn.Parameter((conv.weight.double() * scale.view(-1, 1, 1, 1)).to(dtype))
    fused.bias = nn.Parameter(((bias - bn.running_mean.double()) * scale + shift).to(dtype))
    return fused


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def fuse_bn(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode with each conv+BN pair folded into one conv; the BN becomes Identity.

    The original is untouched. The copy is for inference only (the BN running
    statistics are baked in); its ``folded_bn`` attribute lists the folded pairs.
    BatchNorms that do not directly follow a convolution are left as they are.
    """
    fused = copy.deepcopy(model).eval()
    pairs = foldable_pairs(fused)
    for conv_name, bn_name in pairs:
        conv, bn = fused.get_submodule(conv_name), fused.get_submodule(bn_name)
        _set_submodule(fused, conv_name, fold_conv_bn(conv, bn))
        _set_submodule(fused, bn_name, nn.Identity())
    fused.folded_bn = pairs
    return fused
