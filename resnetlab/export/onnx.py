"""ONNX export (torch.onnx) and its check against PyTorch with onnxruntime.

The exported graph takes ``input``: float32 N x C x H x W, already normalised
(``(pixels / 255 - mean) / std``, as torchvision models do) and returns ``logits``.
The batch dimension is dynamic unless a fixed batch is asked for. Classes,
normalisation and input size go into the model's ``metadata_props`` under
``resnetlab`` (JSON), so :mod:`resnetlab.export.onnx_predict` can use the file alone.

Opset 18 and later use the ``torch.export``-based exporter (``dynamo=True``, needs
onnxscript; it has no implementations below 18 and cannot down-convert a ResNet to
17). Opset 17 therefore uses the legacy TorchScript-based exporter, for runtimes
that stop at 17.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch import nn

from ..errors import UserError

METADATA_KEY = "resnetlab"
DEFAULT_OPSET = 18
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def require(package: str) -> Any:
    """Import an optional package of the ``[export]`` extra or raise a one-line :class:`UserError`."""
    try:
        return __import__(package)
    except ImportError:
        raise UserError(f"this needs {package}: pip install 'resnetlab[export]'") from None


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's chatter (missing torchvision ops, deprecations) that is not about this model."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            # The legacy exporter cannot constant-fold option A's strided slice; harmless, the graph is checked.
            warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
            yield
    finally:
        logger.setLevel(level)


def export_onnx(
    model: nn.Module,
    path: str | Path,
    *,
    input_size: tuple[int, ...] | list[int],
    batch: int | None = None,
    opset: int = DEFAULT_OPSET,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write ``model`` (in eval mode) to ``path`` as one self-contained ONNX file.

    ``batch=None`` makes the batch dimension dynamic (named ``batch``); an integer
    fixes it. ``metadata`` is stored as JSON in ``metadata_props["resnetlab"]``.
    """
    onnx = require("onnx")
    if opset < 17:
        raise UserError(f"ONNX opset {opset} is too old; use 17 or later")
    path = str(path)
    example = torch.randn(batch or 2, *input_size)
    model = model.eval()
    with _quiet_exporter():
        if opset >= 18:
            require("onnxscript")
            dynamic = None if batch else ({0: torch.export.Dim("batch")},)
            torch.onnx.export(
                model, (example,), path, dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_shapes=dynamic, external_data=False, verbose=False,
            )
        else:
            axes = None if batch else {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
            torch.onnx.export(
                model, (example,), path, dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME], dynamic_axes=axes,
            )
    proto = onnx.load(path)
    if metadata is not None:
        entry = proto.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
        spec = (metadata.get("model") or {}).get("name")
        proto.doc_string = f"resnetlab {spec or 'model'}: input float32 NxCxHxW normalised, output logits"
    onnx.checker.check_model(proto)
    onnx.save(proto, path)


def onnx_opset(path: str | Path) -> int:
    """The default-domain opset version an ONNX file was written with."""
    onnx = require("onnx")
    proto = onnx.load(str(path), load_external_data=False)
    return max((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), default=0)


def compare_onnx(
    path: str | Path, model: nn.Module, inputs: list[torch.Tensor]
) -> tuple[float, float]:
    """Run ``inputs`` through onnxruntime and ``model``; returns (max abs difference, max abs PyTorch logit)."""
    ort = require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    diff = scale = 0.0
    model = model.eval()
    for x in inputs:
        with torch.no_grad():
            ref = model(x).float().numpy()
        out = session.run(None, {name: x.numpy()})[0]
        if out.shape != ref.shape:
            raise UserError(f"onnxruntime returned shape {out.shape} for input {tuple(x.shape)}, PyTorch {ref.shape}")
        diff = max(diff, float(np.abs(out - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
    return diff, scale
