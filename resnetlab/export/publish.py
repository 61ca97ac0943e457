"""Ship a trained network inside the package: ``resnetlab publish RUN_DIR/last.pt --name resnet20``.

Writes ``models/weights/<name>.safetensors`` (float16 when the logits on the bundled
sample stay within ``FP16_TOLERANCE`` of float32, float32 otherwise) and the entry of
``models/weights/index.json`` that ``create_model(name, pretrained=True)`` reads: how the
weights were made (recipe, iterations, data, normalisation, precision, hardware, wall
time, commit), their held-out validation error, and the file's size and sha256.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..data import MemoryLoader, open_data
from ..weights import load_checkpoint, model_from_checkpoint, save_safetensors
from ..engine.train import session_hardware, session_precision
from ..errors import UserError
from ..io import atomic_write_text
from ..models.pretrained import INDEX_FILE, WEIGHTS_DIR, file_sha256

PINNED_IMAGES = 4
FP16_TOLERANCE = 1e-3  # largest |logit difference| on the sample for which float16 storage is accepted
DATA_NOTE = "CIFAR-10's training images as re-encoded 32x32 JPEGs (not the original PNG-exact pixels)"


def sample_logits(model: torch.nn.Module, norm: dict[str, Any]) -> torch.Tensor:
    """float32 logits of the bundled sample's 600 held-out images (a fixed input, not an accuracy measure)."""
    data = open_data("sample", log=lambda _msg: None)
    assert data.val is not None
    loader = MemoryLoader(data.val.images, data.val.labels, 600, train=False, mean=norm["mean"], std=norm["std"])
    x, _ = loader.batch(0, 0)
    with torch.no_grad():
        return model.eval()(x).float()


def rounded_to_fp16(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose float weights and buffers went through float16 (still float32 tensors)."""
    import copy

    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for t in list(rounded.parameters()) + list(rounded.buffers()):
            if t.is_floating_point():
                t.copy_(t.half().float())
    return rounded


def create_pretrained_like(stored: torch.nn.Module) -> torch.nn.Module:
    """A float32 copy of the model as it is stored (what ``pretrained=True`` will load)."""
    import copy

    return copy.deepcopy(stored).float().eval()


def publish(checkpoint: str, name: str, *, commit: str, hardware: str | None = None, dest: Path = WEIGHTS_DIR,
            log=print) -> dict[str, Any]:
    """Write ``name``'s shipped weights and index entry from a training checkpoint; returns the entry.
    ``hardware`` defaults to the machines the run's sessions log names."""
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt).eval()
    if model.spec.name != name:
        raise UserError(f"{checkpoint} holds a {model.spec.name}, not {name}")
    norm = ckpt["normalization"]
    reference = sample_logits(model, norm)
    rounded = rounded_to_fp16(model)
    fp16_diff = float((sample_logits(rounded, norm) - reference).abs().max())
    use_fp16 = fp16_diff <= FP16_TOLERANCE
    stored = rounded.half() if use_fp16 else model
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{name}.safetensors"
    save_safetensors(stored, path, classes=ckpt["classes"], mean=norm["mean"], std=norm["std"],
                     input_size=ckpt["input_size"])
    cfg = ckpt.get("config", {})
    resolved = cfg.get("resolved", {})
    metrics = ckpt.get("metrics") or {}
    entry = {
        "file": path.name, "sha256": file_sha256(path), "size_bytes": path.stat().st_size,
        "dtype": "float16" if use_fp16 else "float32", "fp16_max_logit_diff": fp16_diff,
        "recipe": cfg.get("recipe"), "iterations": int(ckpt.get("step", 0)), "total_iterations":
        resolved.get("total_iters"), "batch_size": cfg.get("batch_size"),
        "data": DATA_NOTE, "train_images": None, "val_split": cfg.get("val_split"), "split_seed": cfg.get("split_seed"),
        "normalization": norm.get("kind", "channel"), "precision": session_precision(cfg),
        "channels_last": resolved.get("channels_last"), "hardware": hardware or session_hardware(cfg),
        "wall_time_s": round(float(ckpt.get("wall_time", 0.0)), 1), "commit": commit, "seed": cfg.get("seed"),
        "val_top1_err": metrics.get("val_top1_err"), "val_top5_err": metrics.get("val_top5_err"),
        "val_images": cfg.get("val_split"), "checkpoint": Path(checkpoint).name,
        "config": {k: v for k, v in cfg.items() if k != "resolved"},
    }
    if resolved.get("sessions"):  # a run carried over several machines: each session's hardware and precision
        entry["sessions"] = resolved["sessions"]
    entry["train_images"] = _train_images(resolved)
    # Pinned: the float32 logits of the first sample images, recomputed by the tests to catch a silent
    # change of architecture or normalisation.
    entry["sample_logits"] = [[round(v, 5) for v in row] for row in sample_logits(
        create_pretrained_like(stored), norm)[:PINNED_IMAGES].tolist()]
    index_file = dest / INDEX_FILE.name
    index = json.loads(index_file.read_text()) if index_file.is_file() else {}
    index[name] = entry
    atomic_write_text(index_file, json.dumps(dict(sorted(index.items())), indent=2) + "\n")
    log(f"wrote {path} ({entry['size_bytes']:,} bytes, {entry['dtype']}, fp16 logit change {fp16_diff:.2e}); "
        f"validation top-1 error {100 * (entry['val_top1_err'] or float('nan')):.2f}%")
    return entry


def _train_images(resolved: dict[str, Any]) -> int | None:
    """The training image count from the run's data description (``45,000 train / ...``)."""
    text = str(resolved.get("data_source", ""))
    head = text.split(": ", 1)[-1].split(" train", 1)[0].replace(",", "")
    return int(head) if head.isdigit() else None
