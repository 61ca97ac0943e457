"""Evaluate a checkpoint on a dataset and classify image files, with nothing but the checkpoint.

The checkpoint carries the architecture, class names, normalisation and input
size, so neither needs ``--model``. Classes of an image folder are matched to the
checkpoint's by name, whatever their order on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from PIL import Image

from ..data import ArrayDataset, MemoryLoader, StreamLoader, load_eval_split
from ..data import transforms as T
from ..errors import UserError
from .checkpoint import load_checkpoint, model_from_checkpoint
from .config import check_amp
from .distributed import resolve_device
from .evaluate import autocast, evaluate


def _inference_model(ckpt: dict[str, Any], dev: torch.device, amp: str, channels_last: bool) -> torch.nn.Module:
    """The checkpoint's model on ``dev`` in eval mode, NHWC if asked; checks ``amp`` (a user's flag).

    Inference defaults to fp32 NCHW, the reference numbers; ``--amp bf16 --channels-last`` is the fast
    path (ResNet-50 batch 16: 2.31x eager fp32 on this project's AVX512-BF16 CPU, docs/benchmarks.md).
    """
    check_amp(amp)
    model = model_from_checkpoint(ckpt).to(dev).eval()
    return model.to(memory_format=torch.channels_last) if channels_last else model


def evaluate_checkpoint(path: str, data: str, *, batch_size: int = 256, device: str = "auto",
                        workers: int = 2, amp: str = "none", channels_last: bool = False,
                        log=print) -> dict[str, Any]:
    """Top-1/top-5, loss, per-class accuracy and confusion matrix of a checkpoint on ``data``'s evaluation split.

    ``amp`` ("none", "bf16", "fp16") runs the forward pass under autocast and ``channels_last``
    in NHWC: faster, and the error can move by a few borderline images.
    """
    ckpt = load_checkpoint(path)
    dev = resolve_device(device)
    model = _inference_model(ckpt, dev, amp, channels_last)
    classes = ckpt["classes"]
    norm = ckpt["normalization"]
    size = ckpt["input_size"][-1]
    ds = load_eval_split(data, classes, image_size=size, log=log)
    if isinstance(ds, ArrayDataset):
        if ds.images.shape[1] != ckpt["input_size"][0]:
            raise UserError(f"{data} has {ds.images.shape[1]}-channel images; the checkpoint expects "
                            f"{ckpt['input_size'][0]}")
        loader = MemoryLoader(ds.images, ds.labels, batch_size, train=False, mean=norm["mean"], std=norm["std"],
                              device=dev, channels_last=channels_last)
    else:
        loader = StreamLoader(ds, batch_size, train=False, mean=norm["mean"], std=norm["std"], device=dev,
                              channels_last=channels_last, workers=workers)
    result = evaluate(model, loader.epoch(0), len(classes), device=dev, amp=amp)
    result["amp"], result["channels_last"] = amp, channels_last
    result["classes"] = classes
    result["checkpoint"] = str(path)
    result["data"] = str(data)
    return result


def load_image(path: str | Path, size: int, channels: int) -> torch.Tensor:
    """One image file as uint8 C x size x size: direct resize for CIFAR-size models, resize + centre crop otherwise."""
    try:
        with Image.open(path) as im:
            im = im.convert("L") if channels == 1 else T.to_rgb(im)
            if size <= 64:
                im = im.resize((size, size), Image.BILINEAR)
            else:
                im = T.eval_transform(size)(im, None)
            return T.pil_to_tensor(im)
    except FileNotFoundError:
        raise UserError(f"image not found: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None


def predict_images(path: str, images: Sequence[str], *, topk: int = 5, device: str = "auto", amp: str = "none",
                   channels_last: bool = False) -> list[dict[str, Any]]:
    """Top-k class names and probabilities for each image file (``amp``/``channels_last`` as in evaluate)."""
    ckpt = load_checkpoint(path)
    dev = resolve_device(device)
    model = _inference_model(ckpt, dev, amp, channels_last)
    c, size = ckpt["input_size"][0], ckpt["input_size"][-1]
    batch = torch.stack([load_image(p, size, c) for p in images])
    norm = ckpt["normalization"]
    loader = MemoryLoader(batch, torch.zeros(len(images), dtype=torch.long), len(images), train=False,
                          mean=norm["mean"], std=norm["std"], device=dev, channels_last=channels_last)
    x, _ = loader.batch(0, 0)
    with torch.no_grad(), autocast(dev, amp):
        probs = model(x).float().softmax(1).cpu()
    return topk_records(probs, ckpt["classes"], images, topk)


def topk_records(probs: torch.Tensor, classes: list[str], images: Sequence[str], topk: int) -> list[dict[str, Any]]:
    """Per image: its path and the ``topk`` (class, probability) pairs, most likely first."""
    k = min(topk, len(classes))
    values, indices = probs.topk(k, 1)
    return [
        {"image": str(img), "top": [{"class": classes[i], "prob": float(p)} for p, i in zip(v.tolist(), ix.tolist())]}
        for img, v, ix in zip(images, values, indices)
    ]


def predict_onnx_images(path: str, images: Sequence[str], *, topk: int = 5) -> list[dict[str, Any]]:
    """Like :func:`predict_images` for a file written by ``resnetlab export --format onnx``.

    The ONNX file carries class names, normalisation and input size as metadata, and
    images go through the same resize, so the top-k matches the checkpoint's.
    """
    from ..export.onnx_predict import OnnxClassifier

    clf = OnnxClassifier(path)
    c, size = clf.input_size[0] or 3, clf.input_size[-1] or clf.metadata.get("input_size", [3, 224, 224])[-1]
    batch = torch.stack([load_image(p, size, c) for p in images])
    probs = torch.from_numpy(clf(batch)).float().softmax(1)
    return topk_records(probs, clf.classes, images, topk)
