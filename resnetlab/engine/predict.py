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

from ..data import ArrayDataset, MemoryLoader, StreamLoader, load_eval_split, open_data
from ..data import transforms as T
from ..data.loader import make_val_loader
from ..errors import UserError
from ..weights import load_checkpoint, model_from_checkpoint
from .config import check_amp, saved_split_seed
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


def evaluate_checkpoint(path: str, data: str | None, *, batch_size: int = 256, device: str = "auto",
                        workers: int = 2, amp: str | None = None, channels_last: bool | None = None,
                        tta_flip: bool | None = None, ema: bool = False, log=print) -> dict[str, Any]:
    """Top-1/top-5, loss, per-class accuracy and confusion matrix of a checkpoint.

    ``data`` given: on its evaluation split, in fp32 NCHW unless ``amp``/``channels_last`` say
    otherwise (faster, and the error can move by a few borderline images). ``data`` None: on the
    run's own held-out validation split, rebuilt from the checkpoint's config (same data, subset
    and split seed) and evaluated exactly as training evaluated it (its precision, memory format,
    batch size), so the error printed is the one the run logged for this checkpoint.
    ``tta_flip`` defaults to the run's own setting (flip TTA in ``fast-cifar``). ``ema``: the
    checkpoint's weight average instead of its weights (the run logged it as ``ema_val_top1_err``).
    """
    ckpt = load_checkpoint(path, ema=ema)
    saved = ckpt.get("config") or {}
    tta = bool(saved.get("tta_flip", False)) if tta_flip is None else tta_flip
    if data is None:
        return _evaluate_run_split(ckpt, str(path), device, workers, amp, channels_last, tta, log)
    amp, channels_last = amp or "none", bool(channels_last)
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
    result = evaluate(model, loader.epoch(0), len(classes), device=dev, amp=amp, tta_flip=tta)
    return _labelled(result, ckpt, path, str(data), amp, channels_last, tta)


def _labelled(result: dict[str, Any], ckpt: dict[str, Any], path: str, data: str, amp: str, channels_last: bool,
              tta: bool) -> dict[str, Any]:
    result.update(amp=amp, channels_last=channels_last, tta_flip=tta, classes=ckpt["classes"],
                  checkpoint=str(path), data=data, weights=ckpt.get("weights", "trained"))
    return result


def _evaluate_run_split(ckpt: dict[str, Any], path: str, device: str, workers: int, amp: str | None,
                        channels_last: bool | None, tta: bool, log) -> dict[str, Any]:
    """The run's validation split, rebuilt from its config and evaluated as its training loop did."""
    saved = ckpt.get("config") or {}
    resolved = saved.get("resolved") or {}
    if not saved.get("data") or not saved.get("val_split"):
        raise UserError(f"{path} was not trained with a held-out validation split (--val-split); "
                        "pass --data to say what to evaluate on")
    if not Path(saved["data"]).exists() and not saved["data"].startswith(("cifar", "sample", "synthetic")):
        raise UserError(f"the run's data {saved['data']} is not found from here; pass --data")
    data = open_data(saved["data"], val_split=int(saved["val_split"]), subset=int(saved.get("subset") or 0),
                     seed=saved_split_seed(saved), image_size=saved.get("image_size"), log=log)
    if data.val is None or not len(data.val):
        raise UserError(f"{saved['data']} gave no validation split; pass --data")
    amp = check_amp(amp if amp is not None else resolved.get("amp", "none"))
    channels_last = bool(resolved.get("channels_last", False)) if channels_last is None else channels_last
    dev = resolve_device(device)
    model = _inference_model(ckpt, dev, amp, channels_last)
    norm = ckpt["normalization"]
    batch = int(saved.get("batch_size", 128))
    common = dict(mean=norm["mean"], std=norm["std"], device=dev, channels_last=channels_last)
    loader = make_val_loader(data.val, data.in_memory, batch, seed=int(saved.get("seed", 0)), workers=workers,
                             **common)  # the training loop's val loader
    result = evaluate(model, loader.epoch(0), len(ckpt["classes"]), device=dev, amp=amp, tta_flip=tta)
    name = f"the run's validation split ({len(data.val):,} images of {saved['data']}, split seed " \
           f"{saved_split_seed(saved)})"
    return _labelled(result, ckpt, path, name, amp, channels_last, tta)


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
                   channels_last: bool = False, ema: bool = False) -> list[dict[str, Any]]:
    """Top-k class names and probabilities for each image file (``amp``/``channels_last``/``ema`` as in evaluate)."""
    ckpt = load_checkpoint(path, ema=ema)
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
