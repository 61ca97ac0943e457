"""Deployment and interoperability: ONNX, torch.export, TorchScript, BN folding, weight conversion.

Every export is verified numerically before it lands at its path: the file is
written beside it under a temporary name, loaded back with its own runtime
(onnxruntime, ``torch.export.load``, ``torch.jit.load``), run on random inputs
and compared with the PyTorch model; only a file that passes is renamed into place.

Tolerances compare the largest absolute difference with the largest logit,
``max|out - ref| / max(1, max|ref|)``: an absolute limit for logits of order one,
and a relative one for the huge logits of deep random-weight networks in eval mode.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import UserError
from ..io import atomic_write
from ..weights import (
    LoadedModel,
    Weights,
    build_from_weights,
    default_normalization,
    infer_architecture,
    load_model,
    load_pretrained,
    read_weights,
    save_safetensors,
    strip_prefixes,
)
from .convert import convert
from .fuse import fold_conv_bn, foldable_pairs, fuse_bn

FORMATS = {"onnx": ".onnx", "exported": ".pt2", "torchscript": ".ts"}
EXPORT_FORMAT = "resnetlab-export/1"
# Largest allowed max|out - ref| / max(1, max|ref|) per format (fp32).
TOLERANCE = {"onnx": 1e-4, "exported": 1e-5, "torchscript": 1e-5}
FUSE_TOLERANCE = 1e-5
METADATA_FILE = "resnetlab.json"  # extra file inside .pt2 and TorchScript archives


@dataclass
class ExportReport:
    """What :func:`export_model` did, for printing."""

    path: Path
    format: str
    seconds: float
    size_bytes: int
    checks: list[str] = field(default_factory=list)
    detail: str = ""
    folding: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """Human-readable summary, one fact a line."""
        mb = self.size_bytes / 2**20
        return [*self.folding, f"wrote {self.path} ({self.detail}, {mb:.1f} MiB) in {self.seconds:.1f} s", *self.checks]


def parity(diff: float, scale: float, limit: float) -> tuple[bool, str]:
    """Whether ``diff`` is within ``limit`` of logits as large as ``scale``, and a phrase saying so."""
    error = diff / max(1.0, scale)
    text = f"max abs difference {diff:.1e}"
    if scale > 1.0:
        text += f", {error:.1e} of the largest logit {scale:.3g}"
    return error <= limit, f"{text} (limit {limit:.0e})"


def guess_format(out: str | Path) -> str | None:
    """The export format an output file name implies (``.onnx``, ``.pt2``, ``.ts``/``.torchscript``), if any."""
    suffix = Path(out).suffix.lower()
    if suffix == ".torchscript":
        return "torchscript"
    return next((f for f, s in FORMATS.items() if s == suffix), None)


def _max_diff(ref_model: nn.Module, run: Any, inputs: list[torch.Tensor]) -> tuple[float, float]:
    diff = scale = 0.0
    with torch.no_grad():
        for x in inputs:
            ref, out = ref_model(x), run(x)
            diff = max(diff, float((out - ref).abs().max()))
            scale = max(scale, float(ref.abs().max()))
    return diff, scale


def export_model(
    loaded: LoadedModel | nn.Module,
    out: str | Path,
    format: str,
    *,
    batch: int | None = None,
    fuse: bool = False,
    opset: int | None = None,
    input_size: tuple[int, ...] | list[int] | None = None,
) -> ExportReport:
    """Export, reload and check one model; raises :class:`UserError` (writing nothing) when a check fails.

    ``loaded`` is a :class:`LoadedModel` (from :func:`load_model`, which carries classes
    and normalisation into the file) or a bare model. ``batch=None`` exports a
    dynamic batch dimension and checks batches of 1 and 3; an integer fixes it.
    ``fuse`` folds BatchNorm into convolutions first (checked to 1e-5).
    """
    if format not in FORMATS:
        raise UserError(f"unknown export format {format!r}; use one of {', '.join(FORMATS)}")
    if batch is not None and batch < 1:
        raise UserError(f"batch must be a positive integer or dynamic, got {batch}")
    if not isinstance(loaded, LoadedModel):
        model = loaded.eval()
        mean, std = default_normalization()
        loaded = LoadedModel(model, [str(i) for i in range(model.num_classes)], mean, std,
                             list(model.default_input_size), getattr(model.spec, "name", "model"))
    model = loaded.model.eval()
    size = list(input_size or loaded.input_size)
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(b, *size, generator=generator) for b in ((1, 3) if batch is None else (batch,))]
    checks: list[str] = []
    folding: list[str] = []

    exported = model
    if fuse:
        exported = fuse_bn(model)
        ok, text = parity(*_max_diff(model, exported, inputs), FUSE_TOLERANCE)
        left = sum(isinstance(m, nn.BatchNorm2d) for m in exported.modules())
        folding.append(f"folded {len(exported.folded_bn)} conv+BN pairs ({left} BatchNorm left): {text}")
        if not ok:
            raise UserError(f"BatchNorm folding changed the outputs: {text}")

    metadata = {
        "format": EXPORT_FORMAT,
        **loaded.metadata(),
        "input_size": size,
        "batch": "dynamic" if batch is None else batch,
        "bn_folded": fuse,
        "input": "float32 N x C x H x W, (pixels / 255 - mean) / std",
    }
    out = Path(out)
    batch_text = "dynamic batch" if batch is None else f"batch {batch}"
    sizes = " and ".join(str(len(x)) for x in inputs)
    # Written and checked under a temporary name; only an export that passed its check replaces `out`.
    with atomic_write(out, suffix=out.suffix or FORMATS[format]) as tmp:
        start = time.perf_counter()
        if format == "onnx":
            from .onnx import DEFAULT_OPSET, compare_onnx, export_onnx, onnx_opset

            export_onnx(exported, tmp, input_size=size, batch=batch, opset=opset or DEFAULT_OPSET, metadata=metadata)
            seconds = time.perf_counter() - start
            detail = f"ONNX opset {onnx_opset(tmp)}, {batch_text}"
            diff, scale = compare_onnx(tmp, model, inputs)
            runtime = "onnxruntime"
        elif format == "exported":
            dynamic = None if batch is not None else ({0: torch.export.Dim("batch")},)
            program = torch.export.export(exported, (inputs[-1],), dynamic_shapes=dynamic)
            torch.export.save(program, tmp, extra_files={METADATA_FILE: json.dumps(metadata)})
            seconds = time.perf_counter() - start
            detail = f"torch.export program, {batch_text}"
            diff, scale = _max_diff(model, torch.export.load(tmp).module(), inputs)
            runtime = "torch.export.load"
        else:
            with warnings.catch_warnings():
                # torch.jit is deprecated in favour of torch.export; the CLI says so once.
                warnings.simplefilter("ignore", DeprecationWarning)
                with torch.no_grad():
                    traced = torch.jit.trace(exported, inputs[-1], check_trace=False)
                torch.jit.save(traced, str(tmp), _extra_files={METADATA_FILE: json.dumps(metadata)})
                seconds = time.perf_counter() - start
                detail = f"TorchScript (traced), {batch_text}"
                diff, scale = _max_diff(model, torch.jit.load(str(tmp)), inputs)
            runtime = "torch.jit.load"
        ok, text = parity(diff, scale, TOLERANCE[format])
        checks.append(f"{runtime} vs PyTorch on random inputs (batch {sizes}): {text}")
        if not ok:
            raise UserError(f"{runtime} output differs from PyTorch: {text}; nothing written")
    return ExportReport(out, format, seconds, out.stat().st_size, checks, detail, folding)


def read_export_metadata(path: str | Path) -> dict[str, Any]:
    """The resnetlab record stored in a ``.onnx``, ``.pt2`` or TorchScript file by :func:`export_model`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"file not found: {path}")
    if path.suffix.lower() == ".onnx":
        from .onnx_predict import read_onnx_metadata

        return read_onnx_metadata(path)
    extra = {METADATA_FILE: ""}
    if path.suffix.lower() == ".pt2":
        torch.export.load(path, extra_files=extra)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.load(str(path), _extra_files=extra)
    text = extra[METADATA_FILE]
    if not text:
        raise UserError(f"{path} carries no resnetlab metadata")
    return json.loads(text.decode() if isinstance(text, bytes) else text)


__all__ = [
    "FORMATS", "TOLERANCE", "FUSE_TOLERANCE", "ExportReport", "LoadedModel", "Weights",
    "build_from_weights", "convert", "export_model", "fold_conv_bn", "foldable_pairs", "fuse_bn",
    "guess_format", "infer_architecture", "load_model", "load_pretrained", "parity", "read_export_metadata",
    "read_weights", "save_safetensors", "strip_prefixes",
]
