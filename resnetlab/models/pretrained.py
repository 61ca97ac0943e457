"""Weights trained with this project and shipped inside the package (torchvision ``Weights``-style).

Each shipped network is a safetensors file under ``models/weights/`` plus an entry in
``models/weights/index.json`` that says how it was made: recipe and iterations, the
training data, normalisation, precision, hardware, wall time, the project commit, the
held-out validation error, and the file's size and sha256. ``create_model(name,
pretrained=True)`` loads one strictly; everywhere a checkpoint path is accepted
(``evaluate``, ``predict``, ``export``, ``--init``) the name works too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
INDEX_FILE = WEIGHTS_DIR / "index.json"


@dataclass(frozen=True)
class PretrainedWeights:
    """One shipped network: its file and the metadata of the run that trained it."""

    name: str
    file: str
    sha256: str
    meta: dict[str, Any]

    @property
    def path(self) -> Path:
        return INDEX_FILE.parent / self.file

    def verify(self) -> None:
        """Raise a UserError if the file is missing or its sha256 is not the recorded one."""
        if not self.path.is_file():
            raise UserError(f"pretrained weights for {self.name} are listed but {self.path} is missing")
        digest = file_sha256(self.path)
        if digest != self.sha256:
            raise UserError(f"{self.path} is damaged: sha256 {digest[:12]}... is not the recorded {self.sha256[:12]}...")

    def record(self) -> dict[str, Any]:
        """The resnetlab record stored in the file (model spec, classes, normalisation, input size)."""
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            return json.loads((f.metadata() or {})["resnetlab"])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The weights as float32 (files may store float16 where the logits stay within 1e-3)."""
        from safetensors.torch import load_file

        self.verify()
        state = load_file(str(self.path))
        return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _index() -> dict[str, PretrainedWeights]:
    """The index file's entries (re-read when the file changes, e.g. after ``resnetlab publish``)."""
    if not INDEX_FILE.is_file():
        return {}
    return _read_index(INDEX_FILE, INDEX_FILE.stat().st_mtime_ns)


@lru_cache(maxsize=4)
def _read_index(path: Path, _mtime_ns: int) -> dict[str, PretrainedWeights]:
    entries = json.loads(path.read_text())
    return {name: PretrainedWeights(name, e["file"], e["sha256"], e) for name, e in entries.items()}


def list_pretrained() -> list[str]:
    """Names of the networks whose weights ship with resnetlab."""
    return sorted(_index())


def is_pretrained_name(name: str) -> bool:
    """Whether ``name`` names shipped weights (and not, say, a file path)."""
    return name in _index()


def get_weights(name: str) -> PretrainedWeights:
    """The shipped weights of ``name``; a one-line UserError listing what ships otherwise."""
    index = _index()
    if name not in index:
        raise UserError(_not_shipped(name))
    return index[name]


def _not_shipped(name: str) -> str:
    return f"no pretrained weights ship for {name!r}; shipped: {', '.join(list_pretrained()) or 'none yet'}"


def missing_file_error(source: str | Path, what: str) -> UserError:
    """The one-line error for a ``source`` that is neither a file nor shipped weights' name.

    A registered model name (``resnet56`` before its weights ship) is a request for
    pretrained weights, so the error lists those that ship instead of a missing path.
    """
    from .registry import MODELS  # the registry imports this module for create_model(pretrained=True)

    if str(source) in MODELS:
        return UserError(f"{_not_shipped(str(source))} (or give a checkpoint's path)")
    return UserError(f"{what} not found: {source}")
