"""Read weights from wherever they came from, fit them to a model, and write them as safetensors.

Accepted inputs, all loaded without running pickled code (``weights_only=True``):

* resnetlab checkpoints (``.pt`` or a run folder) and resnetlab ``.safetensors``,
  which record their architecture, classes and normalisation;
* torchvision and timm ``resnet*`` weights: a bare state dict (``.pth``/``.bin``/
  ``.safetensors``), or a training checkpoint that wraps one under ``state_dict``,
  ``model`` or ``model_state_dict`` (timm's ``args`` namespace is allowed);
* any of these with the ``module.`` prefix DataParallel/DDP leave, ``_orig_mod.``
  from ``torch.compile`` or ``model.`` from Lightning.

Key names of :class:`~resnetlab.models.ResNet` match torchvision, so loading is
always strict: a wrong architecture or class count names the first mismatching key.
The one exception is :func:`load_pretrained` with ``replace_classifier=True``
(``train --init``): when *only* the classifier differs, the model keeps its fresh one.
"""

from __future__ import annotations

import argparse
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..io import atomic_write
from ..models import FAMILIES, MODELS, create_model
from ..models.pretrained import get_weights, is_pretrained_name, missing_file_error
from .checkpoint import FORMAT, first_mismatch, load_checkpoint, load_weights, normalization_record

SAFETENSORS_FORMAT = "resnetlab-safetensors/1"
# Prefixes wrappers add to every key: DataParallel/DDP, torch.compile, Lightning modules.
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")
# Keys under which training scripts nest the model's state dict (torchvision references, timm, tutorials).
WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net")
CLASSIFIER_KEYS = ("fc.weight", "fc.bias")


@dataclass
class Weights:
    """A state dict read from a file, plus whatever the file says about the model it belongs to."""

    state_dict: dict[str, torch.Tensor]
    kind: str
    model: dict[str, Any] | None = None
    classes: list[str] | None = None
    mean: list | None = None  # per channel, or a C x H x W per-pixel mean image
    std: list[float] | None = None
    input_size: list[int] | None = None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> str:
        """``kind`` with its notes, e.g. ``state dict (stripped prefix 'module.')``."""
        return self.kind + (f" ({'; '.join(self.notes)})" if self.notes else "")


@dataclass
class LoadedModel:
    """A model ready for inference with the metadata export and predict need."""

    model: nn.Module
    classes: list[str]
    mean: list  # per channel, or a C x H x W per-pixel mean image
    std: list[float]
    input_size: list[int]
    description: str
    notes: list[str] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        """The JSON-able record stored in exported files so they can be used without the checkpoint."""
        spec = getattr(self.model, "spec", None)
        return {
            "model": spec.to_dict() if spec is not None else None,
            "classes": list(self.classes),
            "normalization": normalization_record(self.mean, self.std),
            "input_size": list(self.input_size),
        }


# ---------------------------------------------------------------------------------------------- reading


def _is_safetensors(path: Path) -> bool:
    """Sniff the safetensors layout (u64 little-endian header length, then a JSON object)."""
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return struct.unpack("<Q", head[:8])[0] < path.stat().st_size


def _read_safetensors(path: Path) -> Weights:
    try:
        from safetensors import safe_open
    except ImportError:
        raise UserError("reading .safetensors needs the safetensors package: pip install 'resnetlab[export]'") from None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            state = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not a safetensors file we can read"
        raise UserError(f"{path} is not a readable safetensors file ({str(exc)[:120]})") from None
    weights = Weights(state, "safetensors")
    if "resnetlab" in meta:
        try:
            record = json.loads(meta["resnetlab"])
        except json.JSONDecodeError:
            raise UserError(f"{path}: its 'resnetlab' metadata is not valid JSON") from None
        weights.kind = "resnetlab safetensors"
        _take_record(weights, record)
    return weights


def _take_record(weights: Weights, record: dict[str, Any]) -> None:
    """Copy model spec, classes, normalisation and input size from a checkpoint-like record."""
    weights.model = record.get("model")
    weights.classes = record.get("classes")
    norm = record.get("normalization") or {}
    weights.mean, weights.std = norm.get("mean"), norm.get("std")
    weights.input_size = record.get("input_size")


def _torch_load(path: Path) -> Any:
    # timm's train.py stores its argparse.Namespace under "args": plain data, safe to allow.
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - translate every unpickling failure into one line
        text = str(exc)
        if "Unsupported global" in text or "GLOBAL" in text:
            name = text.split("GLOBAL", 1)[-1].split()[0] if "GLOBAL" in text else "a Python class"
            raise UserError(
                f"{path} stores pickled Python objects ({name}), not just weights; refusing to unpickle it "
                "(save model.state_dict() instead)"
            ) from None
        if "torch.jit.load" in text or "constants.pkl" in text:
            raise UserError(f"{path} is a TorchScript file, not weights; convert the checkpoint it came from") from None
        raise UserError(f"{path} is not a readable weights file ({type(exc).__name__}: {text[:120]})") from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _find_state_dict(obj: Any, depth: int = 0) -> tuple[dict[str, torch.Tensor], str] | None:
    """The tensor dict in ``obj`` and the key path it sat under ("" for a bare state dict)."""
    if _is_state_dict(obj):
        return dict(obj), ""
    if not isinstance(obj, dict) or depth > 2:
        return None
    for key in WRAPPER_KEYS:
        if key in obj:
            found = _find_state_dict(obj[key], depth + 1)
            if found is not None:
                return found[0], "/".join(filter(None, (key, found[1])))
    return None


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove wrapper prefixes (``module.``, ``_orig_mod.``, ``model.``) that *every* key carries.

    Returns the new dict and the prefixes removed, outermost first.
    """
    removed = []
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if state_dict and all(k.startswith(prefix) for k in state_dict):
                state_dict = {k[len(prefix):]: v for k, v in state_dict.items()}
                removed.append(prefix)
                changed = True
    return state_dict, removed


def read_weights(path: str | Path) -> Weights:
    """Read a state dict from any supported file (see the module docstring); never runs pickled code.

    A name of shipped weights (``list_pretrained()``) that is not also a path reads those weights.
    """
    if not Path(path).exists() and is_pretrained_name(str(path)):
        shipped = get_weights(str(path))
        shipped.verify()
        path = shipped.path
    path = Path(path)
    if path.is_dir():
        ckpt = load_checkpoint(path)
        weights = Weights(dict(ckpt["state_dict"]), "resnetlab checkpoint")
        _take_record(weights, ckpt)
        return weights
    if not path.is_file():
        raise missing_file_error(path, "weights file")
    if path.suffix.lower() in (".onnx", ".pt2"):
        raise UserError(f"{path} is an exported model, not weights; convert the checkpoint it came from")
    if path.suffix.lower() == ".safetensors" or _is_safetensors(path):
        weights = _read_safetensors(path)
    else:
        obj = _torch_load(path)
        if isinstance(obj, dict) and obj.get("format") == FORMAT:
            weights = Weights(dict(obj["state_dict"]), "resnetlab checkpoint")
            _take_record(weights, obj)
        else:
            found = _find_state_dict(obj)
            if found is None:
                what = f"keys {', '.join(map(repr, list(obj)[:6]))}" if isinstance(obj, dict) else type(obj).__name__
                raise UserError(
                    f"{path} holds no state dict ({what}); expected tensors, or a dict with one under "
                    f"{', '.join(repr(k) for k in WRAPPER_KEYS[:3])}"
                )
            state, where = found
            weights = Weights(state, "state dict")
            if where:
                weights.notes.append(f"found under {where!r}")
    weights.state_dict, removed = strip_prefixes(weights.state_dict)
    if removed:
        weights.notes.append("stripped prefix " + ", ".join(repr(p) for p in removed))
    return weights


# ------------------------------------------------------------------------------------ fitting to a model


def complete_state_dict(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Add the BatchNorm ``num_batches_tracked`` counters older files (torchvision's v1 weights) lack.

    BatchNorm's own loader does the same for old state dicts; we need it explicitly
    because loading is strict. Only counters of BNs whose statistics are present are added.
    """
    own = model.state_dict()
    added = {}
    for key in own:
        if key.endswith(".num_batches_tracked") and key not in state_dict:
            if key.removesuffix("num_batches_tracked") + "running_mean" in state_dict:
                added[key] = torch.zeros((), dtype=torch.long)
    return {**state_dict, **added} if added else state_dict


def _mismatched_keys(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> set[str]:
    own = model.state_dict()
    keys = set(own) ^ set(state_dict)
    keys |= {k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape)}
    return keys


def _stage_counts(state_dict: dict[str, torch.Tensor]) -> tuple[int, ...]:
    """Units per stage from keys like ``layer3.4.conv1.weight``."""
    units: dict[int, set[int]] = {}
    for key in state_dict:
        parts = key.split(".")
        if len(parts) > 2 and parts[0].startswith("layer") and parts[0][5:].isdigit() and parts[1].isdigit():
            units.setdefault(int(parts[0][5:]), set()).add(int(parts[1]))
    return tuple(len(units[i]) for i in sorted(units))


def infer_architecture(state_dict: dict[str, torch.Tensor]) -> tuple[str, dict[str, Any]]:
    """The one registered model (name, overrides) whose keys and shapes the weights fit exactly.

    ``num_classes`` and ``in_chans`` are read from ``fc.weight`` and ``conv1.weight``.
    Ambiguous or unknown layouts are a :class:`UserError` asking for ``--model``.
    """
    if "fc.weight" not in state_dict or "conv1.weight" not in state_dict:
        raise UserError("these weights have no conv1.weight/fc.weight, so they are not a ResNet; pass --model NAME")
    num_classes, in_chans = state_dict["fc.weight"].shape[0], state_dict["conv1.weight"].shape[1]
    stages = _stage_counts(state_dict)
    fits = []
    for name, definition in MODELS.items():
        if tuple(definition.layers) != stages:
            continue  # cheap filter before building anything
        overrides: dict[str, Any] = {}
        if num_classes != FAMILIES[definition.family].num_classes:
            overrides["num_classes"] = int(num_classes)
        if in_chans != 3:
            overrides["in_chans"] = int(in_chans)
        with torch.device("meta"):  # shapes only, no memory
            candidate = create_model(name, **overrides)
        if first_mismatch(candidate, complete_state_dict(candidate, state_dict)) is None:
            fits.append((name, overrides))
    if len(fits) == 1:
        return fits[0]
    if fits:
        names = ", ".join(n for n, _ in fits)
        raise UserError(f"the weights fit several models ({names}), which differ only in computation; pass --model NAME")
    raise UserError(f"the weights (stages {list(stages)}) fit no registered model; pass --model NAME")


def default_normalization() -> tuple[list[float], list[float]]:
    """ImageNet mean and std: the convention of torchvision weights, used when a file records none."""
    # Imported here: the data package pulls in Pillow, which torch.hub users need not have.
    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD

    return list(IMAGENET_MEAN), list(IMAGENET_STD)


def build_from_weights(weights: Weights, model_name: str | None = None) -> tuple[nn.Module, str]:
    """Build the model ``weights`` belong to and load them strictly; returns it and how the architecture was known."""
    recorded = weights.model
    if recorded is not None and model_name and model_name != recorded["name"]:
        raise UserError(f"the file records model {recorded['name']!r}, but --model says {model_name!r}")
    if recorded is not None:
        name, overrides, how = recorded["name"], dict(recorded.get("overrides") or {}), "recorded in the file"
    elif model_name:
        name, how = model_name, "from --model"
        overrides = {}
        family = FAMILIES[MODELS[model_name].family] if model_name in MODELS else None
        # Class and input-channel counts are data, not architecture: take them from the weights.
        fc, conv1 = weights.state_dict.get("fc.weight"), weights.state_dict.get("conv1.weight")
        if family is not None and fc is not None and fc.shape[0] != family.num_classes:
            overrides["num_classes"] = int(fc.shape[0])
        if conv1 is not None and conv1.ndim == 4 and conv1.shape[1] != 3:
            overrides["in_chans"] = int(conv1.shape[1])
    else:
        name, overrides = infer_architecture(weights.state_dict)
        how = "inferred from keys and shapes"
    model = create_model(name, **overrides)
    load_weights(model, complete_state_dict(model, weights.state_dict), source=f"the weights ({weights.kind})")
    return model.eval(), how


def load_model(source: str | Path, model_name: str | None = None, *, random_weights: bool = False) -> LoadedModel:
    """A model in eval mode from a checkpoint/weights file or a name of shipped weights.

    ``random_weights``: ``source`` is a registered model name, built untrained (the
    architecture alone, e.g. to time a deployment). Without it a model name means its
    shipped weights, and one without them is a one-line error listing those that ship:
    a name never silently exports an untrained network.
    Classes, normalisation and input size come from the file when it records them,
    otherwise class indices, ImageNet mean/std (torchvision's convention) and the
    model's native size; ``notes`` says which defaults were used.
    """
    if random_weights:
        if str(source) not in MODELS:
            raise UserError(f"--random-weights takes a model name (`resnetlab models`), not {source}")
        model = create_model(str(source)).eval()
        mean, std = default_normalization()
        n = model.num_classes
        return LoadedModel(
            model, [str(i) for i in range(n)], mean, std, list(model.default_input_size),
            f"{source} (random weights)", ["random weights: normalization is ImageNet's, classes are indices"],
        )
    weights = read_weights(source)  # a name of shipped weights reads those
    model, how = build_from_weights(weights, model_name)
    notes = list(weights.notes)
    classes = weights.classes
    if classes is None or len(classes) != model.num_classes:
        classes = [str(i) for i in range(model.num_classes)]
        notes.append("classes are indices (none recorded)")
    mean, std = weights.mean, weights.std
    if mean is None or std is None:
        mean, std = default_normalization()
        notes.append("normalization is ImageNet's mean/std (none recorded)")
    input_size = list(weights.input_size or model.default_input_size)
    description = f"{model.spec.name} from {source} ({weights.kind}, architecture {how})"
    return LoadedModel(model, list(classes), list(mean), list(std), input_size, description, notes)


def load_pretrained(model: nn.Module, path: str | Path, replace_classifier: bool = False) -> str:
    """Load weights from ``path`` into ``model`` strictly; returns a one-line message saying what happened.

    Used by ``resnetlab train --init FILE``. Any missing, unexpected or reshaped key is
    a :class:`UserError` naming the first one, except that with ``replace_classifier``
    a classifier of another class count (or none at all) is left as the model's
    freshly initialised ``fc`` and the message says so.
    """
    weights = read_weights(path)
    state = complete_state_dict(model, weights.state_dict)
    name = getattr(getattr(model, "spec", None), "name", type(model).__name__)
    bad = _mismatched_keys(model, state)
    source = f"{path} ({weights.describe()})"
    if not bad:
        model.load_state_dict(state, strict=True)
        return f"loaded all {len(state)} tensors from {source}"
    own = model.state_dict()
    their_fc = state.get("fc.weight")
    n_theirs = int(their_fc.shape[0]) if their_fc is not None and their_fc.ndim == 2 else None
    if bad <= set(CLASSIFIER_KEYS) and all(k in own for k in bad):
        if replace_classifier:
            kept = {k: own[k] for k in CLASSIFIER_KEYS}
            model.load_state_dict({**state, **kept}, strict=True)
            before = str(n_theirs) if n_theirs is not None else "no classifier"
            return (
                f"loaded {len(state) - len(set(CLASSIFIER_KEYS) & set(state))} tensors from {source}; "
                f"replaced the classifier ({before} -> {model.num_classes} classes, freshly initialised)"
            )
        problem = first_mismatch(model, state)
        theirs = f"{n_theirs} classes" if n_theirs is not None else "no classifier"
        raise UserError(
            f"{path} does not fit {name}: {problem} (the weights have {theirs}, the model "
            f"{model.num_classes} classes); use replace_classifier (train --init) to start a new classifier"
        )
    hint = ""
    if weights.model is not None and weights.model.get("name") != name:
        hint = f" (the file holds a {weights.model.get('name')})"
    problem = first_mismatch(model, state)
    raise UserError(f"{path} does not fit {name}: {problem}{hint}")


# ---------------------------------------------------------------------------------------------- writing


def save_safetensors(
    model: nn.Module,
    path: str | Path,
    *,
    classes: list[str],
    mean: list[float],
    std: list[float],
    input_size: list[int],
) -> None:
    """Write the weights as safetensors with the model spec, classes and normalisation as JSON metadata.

    Keys are torchvision's, so ``torchvision.models.resnet18().load_state_dict(
    safetensors.torch.load_file(path))`` works too. Written atomically.
    """
    try:
        from safetensors.torch import save_file
    except ImportError:
        raise UserError("writing .safetensors needs the safetensors package: pip install 'resnetlab[export]'") from None
    spec = getattr(model, "spec", None)
    record = {
        "format": SAFETENSORS_FORMAT,
        "model": spec.to_dict() if spec is not None else None,
        "classes": list(classes),
        "normalization": normalization_record(mean, std),
        "input_size": [int(i) for i in input_size],
    }
    # safetensors refuses shared or strided storage; a contiguous copy of each tensor is always accepted.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt", "resnetlab": json.dumps(record)})
