"""resnetlab: deep residual networks (He et al. 2015, 2016) end to end."""

from .models import (
    BasicBlock,
    Bottleneck,
    PadShortcut,
    PreActBasicBlock,
    PreActBottleneck,
    ResNet,
    create_model,
    list_models,
    list_pretrained,
)

__version__ = "0.1.0"
__all__ = [
    "BasicBlock", "Bottleneck", "PadShortcut", "PreActBasicBlock", "PreActBottleneck", "ResNet",
    "create_model", "list_models", "list_pretrained", "__version__",
]
