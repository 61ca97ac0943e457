"""``resnetlab train`` and ``resnetlab recipes``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import types
import typing
from pathlib import Path
from typing import Any

from ..engine.config import RECIPES, TrainConfig, recipe_config
from ..errors import UserError


def _model_arg(text: str) -> tuple[str, object]:
    """``key=value`` with the value read as JSON when it parses (numbers, true/false), else as a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--model-arg takes key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


# Fields that are not flags of their own: model_args has --model-arg KEY=VALUE (repeatable).
_NOT_FLAGS = {"model_args"}
_RECIPE_FIELDS = {name for recipe in RECIPES.values() for name in recipe.values}


def _flag_type(hint: Any) -> tuple[Any, dict[str, Any]]:
    """The argparse ``type`` and extras for a TrainConfig annotation (``int | None`` is an int flag)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    base = args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) else hint
    if base is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(base) is tuple:
        return typing.get_args(base)[0], {"nargs": "*"}
    return base, {}


def add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per :class:`TrainConfig` field, help and choices from the field's metadata; all default None."""
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in _NOT_FLAGS:
            continue
        kind, extra = _flag_type(hints[f.name])
        meta = {k: v for k, v in f.metadata.items() if k != "help"}
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.name in _RECIPE_FIELDS:
            note = " (set by the recipe)"
        else:
            note = f" (default {default})" if default not in (None, "", ()) else ""
        help_text = f.metadata.get("help", "") + note
        if kind is not None:
            extra["type"] = kind
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=None, help=help_text, **extra, **meta)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (see `resnetlab recipes`); every config field is a flag")
    p.add_argument("--config", metavar="FILE", help="start from the config.json of an earlier run "
                                                    "(its recipe and every field; flags given here win)")
    p.add_argument("--model-arg", action="append", type=_model_arg, default=[], metavar="KEY=VALUE",
                   help="constructor override, e.g. shortcut=B or zero_init_residual=true (repeatable)")
    add_config_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("recipes", help="list the training recipes and their settings")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_recipes)


def config_from_file(path: str) -> dict[str, Any]:
    """The TrainConfig fields of an earlier run's config.json, less where it ran (``out``, ``resume``)."""
    try:
        saved = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"--config {path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"--config {path} is not JSON ({exc.msg} at line {exc.lineno})") from None
    known = {f.name for f in dataclasses.fields(TrainConfig)} - {"out", "resume"}
    fields = {k: v for k, v in saved.items() if k in known}
    if "milestones" in fields:
        fields["milestones"] = tuple(fields["milestones"])
    return fields


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Recipe, then the --config file, then the flags given: the resolved TrainConfig of a command line."""
    base = config_from_file(args.config) if args.config else {}
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
             if f.name not in _NOT_FLAGS and getattr(args, f.name) is not None}
    if "milestones" in given:
        given["milestones"] = tuple(given["milestones"])
    if args.model_arg:
        given["model_args"] = dict(args.model_arg)
    if given.get("iters") is not None and given.get("epochs") is not None:
        raise UserError("give the run length once: --iters or --epochs, not both")
    for name, value in given.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise UserError(f"--{name.replace('_', '-')} must not be negative, got {value}")
    recipe = given.get("recipe") or base.get("recipe") or TrainConfig.recipe
    if base and ("iters" in given or "epochs" in given):  # a length given here replaces the file's
        base = {k: v for k, v in base.items() if k not in ("iters", "epochs")}
    init = given.get("init") or base.get("init")
    if init and "normalize" not in given and "normalize" not in base:
        given["normalize"] = init_normalization(init)
    return recipe_config(recipe, **{**base, **given})


def init_normalization(init: str) -> str | None:
    """How the ``--init`` weights' inputs were normalised ("pixel-mean" or "channel"); None where they don't say.

    Fine-tuning feeds the weights inputs prepared their way, as timm and torchvision take the
    transforms from the pretrained weights: the shipped CIFAR nets saw the per-pixel mean image
    subtracted and no division (paper Sec. 4.2), 4x the scale of per-channel standardised inputs.
    The statistics themselves are recomputed on the new training images.
    """
    from ..weights import read_weights
    from ..weights.checkpoint import normalization_kind

    mean = read_weights(init).mean
    return None if mean is None else normalization_kind(mean)


def cmd_train(args: argparse.Namespace) -> int:
    from ..engine.train import train

    result = train(config_from_args(args), argv=sys.argv)
    if result.status == "interrupted":
        return 128 + int(result.signal or signal.SIGINT)
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps({n: {"description": r.description, "source": r.source, **r.values}
                          for n, r in RECIPES.items()}, indent=2))
        return 0
    for name, recipe in RECIPES.items():
        print(f"{name}\n  {recipe.description}\n  source: {recipe.source}")
        print("  " + ", ".join(f"{k}={v}" for k, v in recipe.values.items()))
    return 0
