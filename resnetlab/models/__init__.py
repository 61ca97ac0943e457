"""Model zoo: the ``ResNet`` class, its blocks, and the registry of named variants."""

from .blocks import BasicBlock, Bottleneck, PadShortcut, PreActBasicBlock, PreActBottleneck
from .registry import FAMILIES, MODELS, ModelSpec, create_model, list_models, model_family
from .pretrained import get_weights, list_pretrained
from .resnet import ResNet

__all__ = [
    "BasicBlock", "Bottleneck", "PadShortcut", "PreActBasicBlock", "PreActBottleneck", "ResNet",
    "FAMILIES", "MODELS", "ModelSpec", "create_model", "list_models", "model_family",
    "get_weights", "list_pretrained",
]
