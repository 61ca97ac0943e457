"""Residual units of He et al. 2015 (Fig. 2, Fig. 5) and He et al. 2016 (Fig. 4e).

All four block classes share one constructor signature (torchvision's, plus the
keyword-only ``residual`` and ``stride_in_1x1``) and declare ``expansion``, so
:class:`resnetlab.models.resnet.ResNet` can build any of them from data.
Attribute names (``conv1``, ``bn1``, ..., ``downsample``) match torchvision so
torchvision/timm state dicts load with ``strict=True``.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NormLayer = Callable[[int], nn.Module]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding, no bias (BN follows, paper Sec. 3.4)."""
    return nn.Conv2d(
        in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation,
        groups=groups, bias=False, dilation=dilation,
    )


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias: projection shortcuts and bottleneck reductions."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class PadShortcut(nn.Module):
    """Option A shortcut (paper Sec. 4.2): identity with stride-2 subsampling and zero-padded channels.

    A module rather than a lambda so the model pickles, exports and compiles. It
    holds no parameters: option A adds nothing to the parameter count.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        if out_planes < in_planes:
            raise ValueError(f"option A cannot shrink channels ({in_planes} -> {out_planes})")
        self.stride = stride
        self.pad = out_planes - in_planes

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = self.subsample(x, self.stride)
        if self.pad:
            # Pad the channel dimension at the end (F.pad pads the last dims first).
            x = F.pad(x, (0, 0, 0, 0, 0, self.pad))
        return x

    @staticmethod
    def subsample(x: Tensor, stride: int) -> Tensor:
        """Keep every ``stride``-th pixel in both spatial dimensions, in ``x``'s memory format.

        A strided slice and a 1x1 average pool with the same stride give identical
        values. They differ in the layout of the gradient: slicing's backward
        writes it into a fresh NCHW tensor, so on ``channels_last`` activations
        the stage boundary's add and ReLU backward mix layouts and fall off
        PyTorch's vectorised path (three calls, 6-7 ms of an 88 ms ResNet-20 bf16
        step on the 2-core CPU; docs/scripts/op_layouts.py). The pool keeps
        ``channels_last`` both ways, but on NCHW it is 2.6-3.9x slower than the
        slice, so NCHW keeps the slice.
        """
        if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
            return F.avg_pool2d(x, kernel_size=1, stride=stride)
        return x[:, :, ::stride, ::stride]

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad_channels={self.pad}"


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a shortcut (paper Fig. 2 / Fig. 5 left).

    ``residual=False`` drops the shortcut and gives the paper's plain baseline
    (Sec. 3.4 "Plain Network"), with exactly the same layers and parameters.
    """

    expansion: int = 1
    preact: bool = False

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer: NormLayer | None = None,
        *,
        residual: bool = True,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        if dilation > 1:
            raise NotImplementedError("dilation > 1 is not supported in BasicBlock")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.residual = residual
        self.stride = stride

    def zero_init_last(self) -> None:
        """Zero the layer that ends the residual branch so the unit starts as the identity (Goyal et al. 2017)."""
        nn.init.zeros_(self.bn2.weight)

    def forward(self, x: Tensor) -> Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)

        if self.residual:
            if self.downsample is not None:
                identity = self.downsample(x)
            out = out + identity
        out = self.relu(out)

        return out


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (paper Fig. 5 right), with groups/width for ResNeXt and Wide ResNet.

    ``stride_in_1x1=False`` (default) puts the stride on the 3x3 convolution, as
    torchvision does ("ResNet v1.5"); ``True`` puts it on the first 1x1 as the
    original paper and its Caffe models do (v1), which costs fewer multiply-adds.
    """

    expansion: int = 4
    preact: bool = False

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer: NormLayer | None = None,
        *,
        residual: bool = True,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(inplanes, width, stride_1x1)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride_3x3, groups, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.residual = residual
        self.stride = stride

    def zero_init_last(self) -> None:
        """Zero the layer that ends the residual branch so the unit starts as the identity (Goyal et al. 2017)."""
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: Tensor) -> Tensor:
        identity = x

        out = self.conv1(x)
        out = self.bn1(out)
        out = self.relu(out)

        out = self.conv2(out)
        out = self.bn2(out)
        out = self.relu(out)

        out = self.conv3(out)
        out = self.bn3(out)

        if self.residual:
            if self.downsample is not None:
                identity = self.downsample(x)
            out = out + identity
        out = self.relu(out)

        return out


class PreActBasicBlock(nn.Module):
    """Full pre-activation unit, BN-ReLU-conv twice (He et al. 2016, Fig. 4e).

    The shortcut path carries the sum untouched (no ReLU after the addition), which
    is the point of the 2016 paper: a clean identity path for signal and gradient.
    A projection shortcut reads the pre-activated input, as in the authors' code. In a
    network's first unit ``bn1``/``relu1`` are identities: the stem's BN-ReLU right after
    conv1 is that unit's pre-activation, applied before the split into both paths
    (He et al. 2016, appendix), so its shortcut also carries the activated input.
    """

    expansion: int = 1
    preact: bool = True

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer: NormLayer | None = None,
        *,
        residual: bool = True,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        if groups != 1 or base_width != 64:
            raise ValueError("PreActBasicBlock only supports groups=1 and base_width=64")
        self.bn1 = norm_layer(inplanes)
        self.relu1 = nn.ReLU(inplace=True)  # bn1's own ReLU, so the network's first unit can hand both to the stem
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn2 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.downsample = downsample
        self.residual = residual
        self.stride = stride

    def zero_init_last(self) -> None:
        """Zero the layer that ends the residual branch so the unit starts as the identity (Goyal et al. 2017)."""
        nn.init.zeros_(self.conv2.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(x)
        out = self.relu1(out)
        # Projections (and option A) see the activated input; pure identity sees x itself.
        identity = self.downsample(out) if self.downsample is not None else x

        out = self.conv1(out)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv2(out)

        if self.residual:
            out = out + identity
        return out


class PreActBottleneck(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-1x1, BN-ReLU-3x3, BN-ReLU-1x1 (He et al. 2016, ResNet-164/1001)."""

    expansion: int = 4
    preact: bool = True

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        groups: int = 1,
        base_width: int = 64,
        dilation: int = 1,
        norm_layer: NormLayer | None = None,
        *,
        residual: bool = True,
        stride_in_1x1: bool = False,
    ) -> None:
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        width = int(planes * (base_width / 64.0)) * groups
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.bn1 = norm_layer(inplanes)
        self.relu1 = nn.ReLU(inplace=True)  # bn1's own ReLU, so the network's first unit can hand both to the stem
        self.conv1 = conv1x1(inplanes, width, stride_1x1)
        self.bn2 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride_3x3, groups, dilation)
        self.bn3 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.residual = residual
        self.stride = stride

    def zero_init_last(self) -> None:
        """Zero the layer that ends the residual branch so the unit starts as the identity (Goyal et al. 2017)."""
        nn.init.zeros_(self.conv3.weight)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(x)
        out = self.relu1(out)
        identity = self.downsample(out) if self.downsample is not None else x

        out = self.conv1(out)
        out = self.bn2(out)
        out = self.relu(out)
        out = self.conv2(out)
        out = self.bn3(out)
        out = self.relu(out)
        out = self.conv3(out)

        if self.residual:
            out = out + identity
        return out


BLOCKS: dict[str, type[nn.Module]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "preact_basic": PreActBasicBlock,
    "preact_bottleneck": PreActBottleneck,
}
