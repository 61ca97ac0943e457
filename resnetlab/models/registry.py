"""The model zoo as data: each name is a family, a block type and stage counts (timm-style registry).

``create_model(name, **overrides)`` builds any of them; ``create_model("resnet",
depth=..., family="cifar")`` (also ``"plain"``, ``"preact_resnet"``) builds any
other valid depth. Every model remembers how it was built (``model.spec``) so a
checkpoint can rebuild it without being told the architecture.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from ..errors import UserError
from .resnet import ResNet


@dataclass(frozen=True)
class Family:
    """What a family fixes: stem, stage widths and the defaults a user can override."""

    stem: str
    stage_widths: tuple[int, ...]
    num_classes: int
    shortcut: str
    input_size: tuple[int, int, int]
    description: str


FAMILIES: dict[str, Family] = {
    # Paper Table 1: 7x7/2 conv, 3x3/2 max-pool, stages of 64/128/256/512 at 56/28/14/7.
    "imagenet": Family("imagenet", (64, 128, 256, 512), 1000, "B", (3, 224, 224), "ImageNet, He et al. 2015 Table 1"),
    # Paper Sec. 4.2: 3x3 conv of 16 filters, 6n layers on maps of 32/16/8 with 16/32/64 filters.
    "cifar": Family("cifar", (16, 32, 64), 10, "A", (3, 32, 32), "CIFAR-10, He et al. 2015 Sec. 4.2"),
}


@dataclass(frozen=True)
class ModelDef:
    """One registered name: family, block type, units per stage and fixed constructor arguments."""

    family: str
    block: str
    layers: tuple[int, ...]
    args: dict[str, Any] = field(default_factory=dict)
    paper: str = ""


def _cifar(block: str, n: int, **args: Any) -> ModelDef:
    return ModelDef("cifar", block, (n, n, n), args)


_IMAGENET_LAYERS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
                    101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3))}

MODELS: dict[str, ModelDef] = {
    # ImageNet family (He et al. 2015 Table 1; torchvision layout and weights).
    **{f"resnet{d}": ModelDef("imagenet", b, l) for d, (b, l) in _IMAGENET_LAYERS.items()},
    # ResNeXt (Xie et al. 2017) and Wide ResNet-50/101-2 (Zagoruyko & Komodakis 2016) as torchvision defines them.
    "resnext50_32x4d": ModelDef("imagenet", "bottleneck", (3, 4, 6, 3), {"groups": 32, "width_per_group": 4}),
    "resnext101_32x8d": ModelDef("imagenet", "bottleneck", (3, 4, 23, 3), {"groups": 32, "width_per_group": 8}),
    "resnext101_64x4d": ModelDef("imagenet", "bottleneck", (3, 4, 23, 3), {"groups": 64, "width_per_group": 4}),
    "wide_resnet50_2": ModelDef("imagenet", "bottleneck", (3, 4, 6, 3), {"width_per_group": 128}),
    "wide_resnet101_2": ModelDef("imagenet", "bottleneck", (3, 4, 23, 3), {"width_per_group": 128}),
    # The paper's plain baselines (Sec. 3.4, Fig. 4 left): same layers, no shortcuts.
    "plain18": ModelDef("imagenet", "basic", (2, 2, 2, 2), {"residual": False}),
    "plain34": ModelDef("imagenet", "basic", (3, 4, 6, 3), {"residual": False}),
    # Pre-activation ImageNet nets (He et al. 2016).
    **{f"preact_resnet{d}": ModelDef("imagenet", "preact_" + b, l) for d, (b, l) in _IMAGENET_LAYERS.items()},
    # CIFAR family (Sec. 4.2, Table 6): depth 6n+2.
    **{f"resnet{6 * n + 2}": _cifar("basic", n) for n in (3, 5, 7, 9, 18, 200)},
    **{f"plain{6 * n + 2}": _cifar("basic", n, residual=False) for n in (3, 5, 7, 9, 18)},
    # Pre-activation CIFAR nets (He et al. 2016 Table 2/3): 110 with basic units, 164/1001 bottleneck (9n+2).
    "preact_resnet110": _cifar("preact_basic", 18, shortcut="B"),
    "preact_resnet164": _cifar("preact_bottleneck", 18, shortcut="B"),
    "preact_resnet1001": _cifar("preact_bottleneck", 111, shortcut="B"),
}

# Names that take a ``depth`` (and ``family``) instead of naming a fixed network.
GENERIC = {"resnet": ("basic", True), "plain": ("basic", False), "preact_resnet": ("preact_bottleneck", True)}

_CONSTRUCTOR_ARGS = [
    p for p in inspect.signature(ResNet.__init__).parameters if p not in ("self", "block", "layers")
]


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model: its name and the overrides it was created with (JSON-able)."""

    name: str
    overrides: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "overrides": dict(self.overrides)}


def list_models(family: str | None = None) -> list[str]:
    """Registered model names, in registry order, optionally of one family (``"imagenet"`` or ``"cifar"``)."""
    return [n for n, d in MODELS.items() if family is None or d.family == family]


def model_family(name: str, **overrides: Any) -> Family:
    """The family a name (or a generic name with ``family=``) belongs to."""
    return FAMILIES[_resolve(name, dict(overrides))[0].family]


def _depth_def(name: str, depth: int, family: str, block: str | None) -> ModelDef:
    """The definition of a generic ``resnet``/``plain``/``preact_resnet`` of a given depth."""
    default_block, residual = GENERIC[name]
    preact = name == "preact_resnet"
    extra: dict[str, Any] = {} if residual else {"residual": False}
    if family == "imagenet":
        if depth not in _IMAGENET_LAYERS:
            raise UserError(f"{name} depth {depth} is not an ImageNet depth; use one of {sorted(_IMAGENET_LAYERS)}")
        b, layers = _IMAGENET_LAYERS[depth]
        return ModelDef("imagenet", ("preact_" + b) if preact else b, layers, extra)
    if family != "cifar":
        raise UserError(f"unknown family {family!r}; use 'cifar' or 'imagenet'")
    kind = block or ("bottleneck" if preact else "basic")
    kind = kind.removeprefix("preact_")
    # Basic units have 2 layers each (6n+2, paper Sec. 4.2); bottlenecks 3 (9n+2, He et al. 2016).
    per_unit = {"basic": 2, "bottleneck": 3}.get(kind)
    if per_unit is None:
        raise UserError(f"unknown block {block!r}; use 'basic' or 'bottleneck'")
    n, rem = divmod(depth - 2, 3 * per_unit)
    if rem or n < 1:
        rule = "6n+2 (20, 32, 44, 56, 110, ...)" if per_unit == 2 else "9n+2 (164, 1001, ...)"
        raise UserError(f"CIFAR {kind} depth must be {rule}; got {depth}")
    if preact:
        extra["shortcut"] = "B"
    return ModelDef("cifar", ("preact_" if preact else "") + kind, (n, n, n), extra)


def _resolve(name: str, overrides: dict[str, Any]) -> tuple[ModelDef, dict[str, Any]]:
    """Find a name's definition; consumes ``depth``/``family``/``block`` from overrides for generic names."""
    if name in MODELS:
        return MODELS[name], overrides
    if name in GENERIC:
        if "depth" not in overrides:
            raise UserError(f"model {name!r} needs depth=..., e.g. create_model('{name}', depth=20, family='cifar')")
        depth = int(overrides.pop("depth"))
        family = overrides.pop("family", "cifar")
        block = overrides.pop("block", None)
        return _depth_def(name, depth, family, block), overrides
    close = difflib.get_close_matches(name, list(MODELS) + list(GENERIC), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; run 'resnetlab models' for the list"
    raise UserError(f"unknown model {name!r}{hint}")


def create_model(name: str, pretrained: bool = False, **overrides: Any) -> nn.Module:
    """Build a registered model by name, e.g. ``create_model("resnet56", num_classes=100)``.

    Overrides are any :class:`ResNet` keyword argument (``num_classes``, ``in_chans``,
    ``zero_init_residual``, ``stem``, ``width``, ``norm_layer``, ``shortcut``,
    ``stride_in_1x1``, ...). The model's ``spec`` attribute records name and overrides.
    ``pretrained=True`` loads the weights shipped for ``name`` (``list_pretrained()``)
    strictly; with a different ``num_classes`` every weight but the classifier's is loaded,
    as timm does for fine-tuning.
    """
    if pretrained:
        return _pretrained_model(name, overrides)
    definition, rest = _resolve(name, dict(overrides))
    unknown = sorted(set(rest) - set(_CONSTRUCTOR_ARGS))
    if unknown:
        raise UserError(f"unknown argument(s) {', '.join(unknown)} for {name}; accepted: {', '.join(_CONSTRUCTOR_ARGS)}")
    family = FAMILIES[definition.family]
    args: dict[str, Any] = {
        "num_classes": family.num_classes,
        "stem": family.stem,
        "stage_widths": family.stage_widths,
        "shortcut": family.shortcut,
        **definition.args,
        **rest,
    }
    try:
        model = ResNet(definition.block, definition.layers, **args)
    except (ValueError, NotImplementedError) as exc:
        raise UserError(f"cannot build {name}: {exc}") from exc
    model.spec = ModelSpec(name, {k: v for k, v in overrides.items()})
    model.default_input_size = (args.get("in_chans", 3), *family.input_size[1:])
    return model


def _pretrained_model(name: str, overrides: dict[str, Any]) -> nn.Module:
    """``create_model(name, pretrained=True, **overrides)``: the shipped weights, loaded strictly."""
    from .pretrained import get_weights

    weights = get_weights(name)
    trained_with = dict(weights.record()["model"].get("overrides", {}))
    model = create_model(name, **{**trained_with, **overrides})
    state = weights.state_dict()
    if model.fc.weight.shape != state["fc.weight"].shape:  # a new classifier: everything else is loaded
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        state.update({k: v for k, v in model.state_dict().items() if k.startswith("fc.")})
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UserError(f"the shipped {name} weights do not fit these overrides ({str(exc).splitlines()[0]})") from None
    return model
