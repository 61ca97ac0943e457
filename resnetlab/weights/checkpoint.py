"""Checkpoints that rebuild themselves and never run pickled code.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so it
loads with ``torch.load(weights_only=True)``. It holds the model's name and
constructor overrides, class names, input normalisation and size, the weights,
and (for training checkpoints) optimizer state, RNG state, step and config.
Writes are atomic (temporary file in the same folder, fsync, rename): a crash or
a kill mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..io import atomic_write
from ..models import create_model
from ..models.pretrained import get_weights, is_pretrained_name, missing_file_error

FORMAT = "resnetlab-checkpoint/1"


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename over it."""
    with atomic_write(path) as tmp:
        torch.save(obj, tmp)


def model_record(model: nn.Module) -> dict[str, Any]:
    """The name and overrides ``create_model`` needs to rebuild ``model``."""
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ValueError("model was not built by resnetlab.create_model; it has no spec to record")
    for key, value in spec.overrides.items():
        if not isinstance(value, (bool, int, float, str, type(None), list, tuple)):
            raise UserError(f"override {key}={value!r} cannot be stored in a checkpoint; pass it by name")
    return spec.to_dict()


def normalization_kind(mean: Any) -> str:
    """"channel" for a per-channel mean, "pixel-mean" for a C x H x W mean image (paper Sec. 4.2)."""
    return "channel" if torch.as_tensor(mean).ndim == 1 else "pixel-mean"


def normalization_record(mean: Any, std: Any) -> dict[str, Any]:
    """``{"mean", "std", "kind"}`` as plain floats; ``kind`` as :func:`normalization_kind`."""
    mean_t = torch.as_tensor(mean, dtype=torch.float64)
    return {"mean": mean_t.tolist(), "std": torch.as_tensor(std, dtype=torch.float64).tolist(),
            "kind": normalization_kind(mean_t)}


def make_checkpoint(
    model: nn.Module,
    *,
    classes: list[str],
    mean: tuple[float, ...] | list,
    std: tuple[float, ...] | list[float],
    input_size: tuple[int, ...] | list[int],
    **extra: Any,
) -> dict[str, Any]:
    """A checkpoint dict for ``model``; ``extra`` adds training state (optimizer, rng, step, config, ...)."""
    state = {k: v.detach().to("cpu", copy=True) for k, v in unwrap(model).state_dict().items()}
    return {
        "format": FORMAT,
        "model": model_record(unwrap(model)),
        "classes": list(classes),
        "normalization": normalization_record(mean, std),
        "input_size": [int(i) for i in input_size],
        "state_dict": state,
        **extra,
    }


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def pretrained_checkpoint(name: str) -> dict[str, Any]:
    """A checkpoint dict for shipped weights (``list_pretrained()``), so a name works wherever a path does."""
    weights = get_weights(name)
    record = weights.record()
    model = create_model(name, pretrained=True)
    norm = record["normalization"]
    return make_checkpoint(model, classes=record["classes"], mean=norm["mean"], std=norm["std"],
                           input_size=record["input_size"], config=weights.meta.get("config", {}), pretrained=name)


def load_checkpoint(path: str | Path, *, ema: bool = False) -> dict[str, Any]:
    """Load a checkpoint file safely (``weights_only=True``); a file that is not one is a clear error.

    A name of shipped weights (``resnet20``...) that is not also a path loads those weights.
    ``ema``: the checkpoint with its weight average (``--ema-decay`` runs) as its weights.
    """
    ckpt = _load_checkpoint(path)
    return with_ema_weights(ckpt, path) if ema else ckpt


def with_ema_weights(ckpt: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """A shallow copy of ``ckpt`` whose ``state_dict`` is its EMA's; one clear error where it has none."""
    if "ema_state_dict" not in ckpt:
        raise UserError(f"{path} has no weight average (train with --ema-decay to keep one); drop --ema")
    return {**ckpt, "state_dict": ckpt["ema_state_dict"], "weights": "ema"}


def _load_checkpoint(path: str | Path) -> dict[str, Any]:
    if not Path(path).exists() and is_pretrained_name(str(path)):
        return pretrained_checkpoint(str(path))
    source, path = path, Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                path = path / name
                break
    if not path.is_file():
        raise missing_file_error(source, "checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "not a checkpoint we can trust"
        raise UserError(f"{path} is not a readable resnetlab checkpoint ({type(exc).__name__}: {str(exc)[:120]})")
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a resnetlab checkpoint (no '{FORMAT}' format tag)")
    return ckpt


def first_mismatch(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> str | None:
    """Describe the first key that is missing, unexpected or of another shape; None when all match."""
    own = model.state_dict()
    for key, value in own.items():
        if key not in state_dict:
            return f"missing key {key!r}"
        if tuple(state_dict[key].shape) != tuple(value.shape):
            return f"{key!r} has shape {tuple(state_dict[key].shape)}, the model expects {tuple(value.shape)}"
    for key in state_dict:
        if key not in own:
            return f"unexpected key {key!r}"
    return None


def load_weights(model: nn.Module, state_dict: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the first mismatching key."""
    problem = first_mismatch(model, state_dict)
    if problem:
        name = getattr(getattr(model, "spec", None), "name", type(model).__name__)
        raise UserError(f"{source} does not fit {name}: {problem}")
    model.load_state_dict(state_dict, strict=True)


def model_from_checkpoint(ckpt: dict[str, Any]) -> nn.Module:
    """Rebuild the checkpoint's model from its recorded name and overrides and load its weights."""
    record = ckpt["model"]
    model = create_model(record["name"], **record.get("overrides", {}))
    load_weights(model, ckpt["state_dict"])
    return model
