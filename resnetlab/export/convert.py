"""``resnetlab convert``: weights from any supported file to a resnetlab checkpoint or safetensors.

Reading and fitting the weights is :mod:`resnetlab.weights`; this module only picks the output.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..weights import atomic_save, load_model, make_checkpoint, save_safetensors


def read_classes_file(path: str | Path) -> list[str]:
    """Class names from a text file, one per line (blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"classes file not found: {path}")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def convert(
    src: str | Path, dst: str | Path, model_name: str | None = None, classes: list[str] | None = None
) -> list[str]:
    """Convert weights ``src`` to ``dst``: ``.safetensors`` or a resnetlab checkpoint (``.pt``/``.pth``).

    Returns the lines ``resnetlab convert`` prints. The output always rebuilds
    itself (``resnetlab export``/``predict`` need no ``--model``).
    """
    dst = Path(dst)
    kind = dst.suffix.lower()
    if kind not in (".safetensors", ".pt", ".pth", ".ckpt"):
        raise UserError(f"cannot tell the output format of {dst}: name it .safetensors or .pt")
    if str(src).endswith(".onnx") or Path(src).suffix == ".pt2":
        raise UserError(f"{src} is an exported model, not weights; convert the checkpoint it came from")
    loaded = load_model(src, model_name) if Path(src).exists() else None
    if loaded is None:
        raise UserError(f"weights file not found: {src}")
    if classes is not None:
        if len(classes) != loaded.model.num_classes:
            raise UserError(f"{len(classes)} class names for a model with {loaded.model.num_classes} classes")
        loaded.classes = list(classes)
        loaded.notes = [n for n in loaded.notes if not n.startswith("classes are indices")]
    model = loaded.model
    lines = [f"read {loaded.description}"]
    lines += [f"  note: {n}" for n in loaded.notes]
    if kind == ".safetensors":
        save_safetensors(model, dst, classes=loaded.classes, mean=loaded.mean, std=loaded.std,
                         input_size=loaded.input_size)
        what = "safetensors with resnetlab metadata"
    else:
        atomic_save(make_checkpoint(model, classes=loaded.classes, mean=loaded.mean, std=loaded.std,
                                    input_size=loaded.input_size), dst)
        what = "resnetlab checkpoint"
    n = len(model.state_dict())
    lines.append(f"wrote {dst} ({what}: {n} tensors, {model.num_classes} classes)")
    return lines
