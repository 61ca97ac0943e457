"""One ``ResNet`` class for every network in the zoo (He et al. 2015 Table 1 and Sec. 4.2; He et al. 2016).

The ImageNet layout (7x7 stem, max-pool, four stages of 64..512) and the CIFAR
layout (3x3 stem of 16 filters, three stages of 16/32/64, no max-pool) differ only
in data passed to the constructor: stem type and stage widths. Keys of the state
dict match torchvision (``conv1, bn1, layer1.0.conv1, ..., fc``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from .blocks import BLOCKS, NormLayer, PadShortcut, conv1x1

SHORTCUT_OPTIONS = ("A", "B", "C")
STEMS = ("imagenet", "cifar")


def resolve_norm(norm_layer: str | NormLayer | None) -> NormLayer:
    """Turn a norm-layer name (``"batchnorm"``, ``"groupnorm"``) or callable into a callable ``f(channels)``."""
    if norm_layer is None or norm_layer == "batchnorm":
        return nn.BatchNorm2d
    if norm_layer == "groupnorm":
        # 32 groups as in Wu & He 2018, fewer when a layer has fewer channels.
        return _GroupNorm
    if callable(norm_layer):
        return norm_layer
    raise ValueError(f"unknown norm_layer {norm_layer!r}; use 'batchnorm', 'groupnorm' or a callable")


class _GroupNorm(nn.GroupNorm):
    def __init__(self, num_channels: int) -> None:
        super().__init__(min(32, num_channels), num_channels)


def make_shortcut(
    option: str, inplanes: int, outplanes: int, stride: int, norm_layer: NormLayer, preact: bool
) -> nn.Module | None:
    """The shortcut of one unit, by the paper's options (Sec. 3.3 and Table 3).

    A: parameter-free identity, zero-padding new channels; B: projection only where
    the shape changes; C: projection on every unit. Pre-activation units project
    with a bare 1x1 convolution (their input is already normalised).
    """
    changes = stride != 1 or inplanes != outplanes
    if option == "A":
        return PadShortcut(inplanes, outplanes, stride) if changes else None
    if option == "B" and not changes:
        return None
    if preact:
        return nn.Sequential(conv1x1(inplanes, outplanes, stride))
    return nn.Sequential(conv1x1(inplanes, outplanes, stride), norm_layer(outplanes))


def make_stage(
    block: type[nn.Module],
    inplanes: int,
    planes: int,
    blocks: int,
    stride: int,
    *,
    shortcut: str,
    residual: bool,
    groups: int,
    base_width: int,
    stride_in_1x1: bool,
    norm_layer: NormLayer,
) -> tuple[nn.Sequential, int]:
    """Build one stage of ``blocks`` units; returns it and its output channel count.

    The first unit changes resolution (``stride``) and channels; the rest keep them.
    A pure function: no ``self.inplanes`` threaded through the builder.
    """
    outplanes = planes * block.expansion
    units = []
    for i in range(blocks):
        unit_in, unit_stride = (inplanes, stride) if i == 0 else (outplanes, 1)
        downsample = (
            make_shortcut(shortcut, unit_in, outplanes, unit_stride, norm_layer, block.preact) if residual else None
        )
        units.append(
            block(
                unit_in, planes, unit_stride, downsample, groups, base_width, 1, norm_layer,
                residual=residual, stride_in_1x1=stride_in_1x1,
            )
        )
    return nn.Sequential(*units), outplanes


class ResNet(nn.Module):
    """Residual network (or its plain twin with ``residual=False``) built from a block type and stage counts.

    Args:
        block: a block class from :mod:`resnetlab.models.blocks`.
        layers: units per stage, e.g. ``[2, 2, 2, 2]`` for ResNet-18, ``[3, 3, 3]`` for ResNet-20.
        num_classes: size of the classifier.
        in_chans: input channels (1 for grayscale data).
        stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max-pool) or ``"cifar"`` (3x3/1 conv, no pool).
        stage_widths: bottleneck/basic ``planes`` per stage; the stem has ``stage_widths[0]`` filters.
        width: multiplier applied to the stem and every stage width.
        groups, width_per_group: ResNeXt cardinality and group width (Wide ResNet: width_per_group=128).
        shortcut: ``"A"``, ``"B"`` or ``"C"`` (paper Sec. 4.1, Table 3).
        residual: ``False`` removes every shortcut (the paper's plain networks).
        stride_in_1x1: stride on the bottleneck's first 1x1 (paper, v1) instead of the 3x3 (torchvision, v1.5).
        zero_init_residual: start each residual branch at zero.
        norm_layer: ``"batchnorm"`` (default), ``"groupnorm"`` or a callable ``f(channels) -> nn.Module``.
    """

    def __init__(
        self,
        block: type[nn.Module] | str,
        layers: Sequence[int],
        *,
        num_classes: int = 1000,
        in_chans: int = 3,
        stem: str = "imagenet",
        stage_widths: Sequence[int] = (64, 128, 256, 512),
        width: float = 1.0,
        groups: int = 1,
        width_per_group: int = 64,
        shortcut: str = "B",
        residual: bool = True,
        stride_in_1x1: bool = False,
        zero_init_residual: bool = False,
        norm_layer: str | Callable[[int], nn.Module] | None = None,
    ) -> None:
        super().__init__()
        block = BLOCKS[block] if isinstance(block, str) else block
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if shortcut not in SHORTCUT_OPTIONS:
            raise ValueError(f"shortcut must be one of {SHORTCUT_OPTIONS}, got {shortcut!r}")
        if len(layers) != len(stage_widths):
            raise ValueError(f"{len(layers)} stage counts for {len(stage_widths)} stage widths")
        if width <= 0 or num_classes < 1 or in_chans < 1:
            raise ValueError("width, num_classes and in_chans must be positive")
        norm = resolve_norm(norm_layer)
        widths = [max(1, int(round(w * width))) for w in stage_widths]
        stem_width = widths[0] if stem == "cifar" else max(1, int(round(64 * width)))
        self.preact = bool(block.preact)

        # Stem: conv1, BN, ReLU (and a max-pool on ImageNet) for every family. In pre-activation
        # nets this BN-ReLU is the first unit's pre-activation: "for the first Residual Unit (that
        # follows a stand-alone convolutional layer, conv1), we adopt the first activation right
        # after conv1 and before splitting into two paths" (He et al. 2016, appendix); the unit's
        # own bn1/relu1 are removed below so it is applied once, to both paths.
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(in_chans, stem_width, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_chans, stem_width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = norm(stem_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1) if stem == "imagenet" else nn.Identity()

        # Stages: resolution halves and width doubles at the start of each stage after the first.
        channels = stem_width
        self.stage_names: list[str] = []
        self.stage_channels: list[int] = []
        for i, (planes, count) in enumerate(zip(widths, layers)):
            stage, channels = make_stage(
                block, channels, planes, count, 1 if i == 0 else 2,
                shortcut=shortcut, residual=residual, groups=groups, base_width=width_per_group,
                stride_in_1x1=stride_in_1x1, norm_layer=norm,
            )
            if self.preact and i == 0:
                stage[0].bn1, stage[0].relu1 = nn.Identity(), nn.Identity()  # the stem's BN-ReLU, see above
            name = f"layer{i + 1}"
            self.add_module(name, stage)
            self.stage_names.append(name)
            self.stage_channels.append(channels)

        # Pre-activation nets end with the BN-ReLU the last unit left out (He et al. 2016, Fig. 4e).
        self.final_bn = norm(channels) if self.preact else nn.Identity()
        self.final_relu = nn.ReLU(inplace=True) if self.preact else nn.Identity()
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(channels, num_classes)
        self.num_features = channels
        self.num_classes = num_classes

        self.reset_parameters(zero_init_residual)

    def reset_parameters(self, zero_init_residual: bool = False) -> None:
        """He normal init for convs (He et al. 2015b, as the paper Sec. 3.4), norm weight 1 and bias 0."""
        for m in self.modules():
            # On the meta device (profile.meta_model: shapes and counts only) there are no values to draw,
            # and torch's meta normal_ imports dynamo on first use, 2-3 s of every `reproduce` run.
            if isinstance(m, nn.Conv2d) and not m.weight.is_meta:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if hasattr(m, "zero_init_last") and getattr(m, "residual", False):
                    m.zero_init_last()

    def forward_stem(self, x: Tensor) -> Tensor:
        """conv1, BN, ReLU and (ImageNet stem only) max-pool."""
        x = self.conv1(x)
        x = self.bn1(x)
        x = self.relu(x)
        x = self.maxpool(x)
        return x

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """The feature map after each stage (``layer1`` ... ``layerN``), for FPN-style backbones."""
        x = self.forward_stem(x)
        features = []
        for name in self.stage_names:
            x = getattr(self, name)(x)
            features.append(x)
        return features

    def forward_head(self, x: Tensor) -> Tensor:
        """Final pre-activation (if any), global average pool and the fully connected classifier."""
        x = self.final_bn(x)
        x = self.final_relu(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        x = self.fc(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = self.forward_stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
        return self.forward_head(x)
