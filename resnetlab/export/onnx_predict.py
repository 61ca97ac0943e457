"""Classify uint8 images with an exported ONNX file, the way a checkpoint would.

``resnetlab export --format onnx`` stores classes, normalisation and input size in
the file (``metadata_props["resnetlab"]``); the graph itself takes normalised float
input like torchvision models. :class:`OnnxClassifier` applies the same
``(pixels / 255 - mean) / std`` as the PyTorch path, so top-k agrees with the
checkpoint. An ONNX file from elsewhere (no metadata) is read with ImageNet
normalisation, class indices and the size its input declares.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..engine.predict import load_image, topk_records
from ..errors import UserError
from .onnx import METADATA_KEY, require

# ImageNet statistics, the convention of torchvision-style ONNX files that carry no metadata.
_IMAGENET_MEAN = [0.485, 0.456, 0.406]
_IMAGENET_STD = [0.229, 0.224, 0.225]


def _static(dim: Any) -> int | None:
    return dim if isinstance(dim, int) and dim > 0 else None


def _metadata(custom: dict[str, str], input_shape: list[Any], output_shape: list[Any], where: str) -> dict[str, Any]:
    """Classes, normalisation and input size from resnetlab metadata, or defaults from the graph's shapes."""
    if METADATA_KEY in custom:
        try:
            meta = json.loads(custom[METADATA_KEY])
        except json.JSONDecodeError:
            raise UserError(f"{where}: its '{METADATA_KEY}' metadata is not valid JSON") from None
        meta["from_metadata"] = True
        return meta
    size = [_static(d) for d in input_shape[1:]]
    n_classes = _static(output_shape[-1]) if output_shape else None
    if n_classes is None:
        raise UserError(f"{where} has no resnetlab metadata and no fixed class count; cannot name its outputs")
    return {
        "model": None,
        "classes": [str(i) for i in range(n_classes)],
        "normalization": {"mean": _IMAGENET_MEAN, "std": _IMAGENET_STD},
        "input_size": size,
        "from_metadata": False,
    }


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """What an ONNX file says about itself: ``model``, ``classes``, ``normalization``, ``input_size``.

    ``from_metadata`` is False when the file was not written by resnetlab and the
    defaults above were used (``input_size`` entries are None where the graph is dynamic).
    """
    onnx = require("onnx")
    path = Path(path)
    if not path.is_file():
        raise UserError(f"ONNX file not found: {path}")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - any parse failure means "not an ONNX model"
        raise UserError(f"{path} is not a readable ONNX model ({str(exc)[:120]})") from None

    def dims(value_info: Any) -> list[Any]:
        return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value_info.type.tensor_type.shape.dim]

    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    props = {p.key: p.value for p in proto.metadata_props}
    return _metadata(props, dims(inputs[0]), dims(proto.graph.output[0]), str(path))


def _broadcastable(values: Any) -> np.ndarray:
    """A per-channel list as 1 x C x 1 x 1, a per-pixel C x H x W mean image as 1 x C x H x W."""
    array = np.asarray(values, dtype=np.float32)
    return array.reshape(1, -1, 1, 1) if array.ndim == 1 else array[None]


class OnnxClassifier:
    """An onnxruntime session plus the preprocessing recorded at export; call it on uint8 N x C x H x W images."""

    def __init__(self, path: str | Path, providers: list[str] | None = None) -> None:
        ort = require("onnxruntime")
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"ONNX file not found: {self.path}")
        try:
            self.session = ort.InferenceSession(str(self.path), providers=providers or ort.get_available_providers())
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types for bad files
            raise UserError(f"{self.path} is not a usable ONNX model ({str(exc)[:120]})") from None
        inp, out = self.session.get_inputs()[0], self.session.get_outputs()[0]
        self.input_name = inp.name
        self.metadata = _metadata(
            self.session.get_modelmeta().custom_metadata_map, list(inp.shape), list(out.shape), str(self.path)
        )
        self.batch = _static(inp.shape[0])
        self.input_size = [_static(d) for d in inp.shape[1:]]
        norm = self.metadata["normalization"]
        self.mean, self.std = _broadcastable(norm["mean"]), _broadcastable(norm["std"])
        self.classes: list[str] = list(self.metadata["classes"])

    def preprocess(self, images: Any) -> np.ndarray:
        """uint8 N x C x H x W (numpy or torch) to the normalised float32 batch the graph takes."""
        array = images.numpy() if hasattr(images, "numpy") else np.asarray(images)
        if array.dtype != np.uint8 or array.ndim != 4:
            raise UserError(f"expected uint8 images of shape N x C x H x W, got {array.dtype} {array.shape}")
        want = [d if d is not None else got for d, got in zip(self.input_size, array.shape[1:])]
        if list(array.shape[1:]) != want:
            raise UserError(
                f"images are {'x'.join(map(str, array.shape[1:]))} but {self.path.name} takes "
                f"{'x'.join(map(str, want))}; resize them first"
            )
        # Same arithmetic, in the same order and precision, as the PyTorch predict path.
        return (array.astype(np.float32) / 255.0 - self.mean) / self.std

    def __call__(self, images: Any) -> np.ndarray:
        """Logits (float32, N x classes) for uint8 N x C x H x W images."""
        x = self.preprocess(images)
        if self.batch is None:
            return self.session.run(None, {self.input_name: x})[0]
        # A fixed-batch graph: feed it full batches, padding the last with zeros.
        outputs = []
        for start in range(0, len(x), self.batch):
            chunk = x[start:start + self.batch]
            pad = self.batch - len(chunk)
            if pad:
                chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), dtype=chunk.dtype)])
            outputs.append(self.session.run(None, {self.input_name: chunk})[0][: self.batch - pad])
        return np.concatenate(outputs) if outputs else np.zeros((0, len(self.classes)), dtype=np.float32)


def onnx_predict(path: str | Path, images_uint8_nchw: Any) -> np.ndarray:
    """Logits for uint8 N x C x H x W images from the ONNX file at ``path`` (one-off; reuse :class:`OnnxClassifier`)."""
    return OnnxClassifier(path)(images_uint8_nchw)


def predict_onnx_images(path: str, images: Sequence[str], *, topk: int = 5) -> list[dict[str, Any]]:
    """Like :func:`~resnetlab.engine.predict.predict_images` for a file written by ``resnetlab export --format onnx``.

    The ONNX file carries class names, normalisation and input size as metadata, and
    images go through the same resize, so the top-k matches the checkpoint's.
    """
    clf = OnnxClassifier(path)
    c, size = clf.input_size[0] or 3, clf.input_size[-1] or clf.metadata.get("input_size", [3, 224, 224])[-1]
    batch = torch.stack([load_image(p, size, c) for p in images])
    probs = torch.from_numpy(clf(batch)).float().softmax(1)
    return topk_records(probs, clf.classes, images, topk)
