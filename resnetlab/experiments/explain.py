"""Class-activation maps of a trained network: Grad-CAM (Selvaraju et al. 2017) and Grad-CAM++
(Chattopadhay et al. 2018), for ``resnetlab explain``.

A map says where in the image the evidence for one class lies, as seen by one layer: the layer's
activations ``A`` (C x h x w), weighted per channel by how much the class score ``y`` grows with
them, summed over channels, ReLU'd, and upsampled to the image. Grad-CAM weights channel ``k`` by
the spatial mean of dy/dA_k; Grad-CAM++ by a per-position weighting of the positive gradients that
lets several separate regions of one class all show. The default layer is the last stage's last
block, the last layer with a spatial map before global pooling: 8x8 on CIFAR nets, 7x7 on ImageNet
nets at 224 px.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import UserError

METHODS = ("gradcam", "gradcam++")


def default_layer(model: nn.Module) -> str:
    """The last stage's last block (e.g. ``layer3.2`` of ResNet-20, ``layer4.1`` of ResNet-18)."""
    stages = getattr(model, "stage_names", None)
    if not stages:
        raise UserError("this model has no stages to explain; pass --layer NAME")
    last = getattr(model, stages[-1])
    return f"{stages[-1]}.{len(last) - 1}"


def _layer(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        options = ", ".join(n for n, _ in model.named_modules() if n.count(".") <= 1 and n)
        raise UserError(f"no layer {name!r} in this model; e.g. {options}") from None


def _channel_weights(acts: Tensor, grads: Tensor, method: str) -> Tensor:
    """Per-channel weights (N x C) of the activations for one class's score."""
    if method == "gradcam":
        return grads.mean(dim=(2, 3))
    # Grad-CAM++ (Chattopadhay et al. 2018, eq. 19), for an exponential of the score, whose higher
    # derivatives are powers of the first: alpha = g^2 / (2 g^2 + sum(A) g^3).
    g2, g3 = grads.pow(2), grads.pow(3)
    denom = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g3
    alpha = torch.where(grads != 0, g2 / torch.where(denom != 0, denom, torch.ones_like(denom)), 0.0)
    return (alpha * F.relu(grads)).sum(dim=(2, 3))


def class_maps(model: nn.Module, x: Tensor, classes: Sequence[int], layer: str | None = None,
               method: str = "gradcam") -> Tensor:
    """Heat maps (K x H x W, each scaled to 0..1) of one image ``x`` (1 x C x H x W) for ``classes``."""
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    module = _layer(model, layer or default_layer(model))
    saved: dict[str, Tensor] = {}

    def keep(_m: nn.Module, _inp: object, out: Tensor) -> None:
        out.retain_grad()
        saved["acts"] = out

    handle = module.register_forward_hook(keep)
    maps = []
    try:
        model.eval()
        for c in classes:
            model.zero_grad(set_to_none=True)
            scores = model(x)
            scores[0, int(c)].backward()
            acts, grads = saved["acts"].detach(), saved["acts"].grad.detach()
            weights = _channel_weights(acts, grads, method)
            cam = F.relu((weights[:, :, None, None] * acts).sum(1, keepdim=True))
            cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
            maps.append(cam / cam.max() if cam.max() > 0 else cam)
    finally:
        handle.remove()
    return torch.stack(maps)


@dataclass
class Explanation:
    """One image: its top-K classes, their probabilities and heat maps."""

    image: str
    classes: list[str]
    probs: list[float]
    maps: Tensor  # K x H x W, 0..1
    layer: str
    map_size: tuple[int, int]


def explain_image(model: nn.Module, x: Tensor, image_name: str, class_names: Sequence[str], *, topk: int = 3,
                  layer: str | None = None, method: str = "gradcam") -> Explanation:
    """Top-``topk`` classes of ``x`` (1 x C x H x W, normalised) with their maps."""
    layer = layer or default_layer(model)
    with torch.no_grad():
        probs = torch.softmax(model.eval()(x).float(), dim=1)[0]
    k = max(1, min(topk, len(class_names)))
    top = probs.topk(k)
    saved: dict[str, tuple[int, int]] = {}

    def size_of(_m: nn.Module, _inp: object, out: Tensor) -> None:  # returns None: the output is unchanged
        saved["size"] = (int(out.shape[-2]), int(out.shape[-1]))

    hook = _layer(model, layer).register_forward_hook(size_of)
    try:
        maps = class_maps(model, x, top.indices.tolist(), layer, method)
    finally:
        hook.remove()
    return Explanation(image_name, [class_names[i] for i in top.indices.tolist()], top.values.tolist(), maps,
                       layer, saved["size"])


def draw(exp: Explanation, image: Tensor, path: Path, method: str) -> Path:
    """A PNG: the image, then one overlay per class with its probability."""
    from ..io import atomic_write
    from .plots import new_figure, require_matplotlib

    require_matplotlib()
    k = len(exp.classes)
    fig, axes = new_figure(1, k + 1, panel_size=(2.4, 2.6))
    shown = image.permute(1, 2, 0).numpy()
    shown = shown[..., 0] if shown.shape[-1] == 1 else shown
    axes[0, 0].imshow(shown, cmap="gray" if image.shape[0] == 1 else None)
    axes[0, 0].set_title(Path(exp.image).name[:24], fontsize=8)
    for i, (name, p) in enumerate(zip(exp.classes, exp.probs)):
        ax = axes[0, i + 1]
        ax.imshow(shown, cmap="gray" if image.shape[0] == 1 else None)
        ax.imshow(exp.maps[i].numpy(), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        ax.set_title(f"{name}: {p * 100:.1f}%", fontsize=8)
    for ax in axes[0]:
        ax.axis("off")
    h, w = exp.map_size
    fig.suptitle(f"{method} at {exp.layer} ({h}x{w} map)", fontsize=8)
    fig.tight_layout()
    with atomic_write(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    return path


def explain(checkpoint: str, images: Sequence[str], out: str | Path, *, layer: str | None = None,
            method: str = "gradcam", topk: int = 3) -> list[dict]:
    """``resnetlab explain``: a PNG per image in ``out`` (image, then a heat map per top class); returns records.

    ``checkpoint`` is a checkpoint file, a run folder or the name of shipped weights.
    """
    from ..data.loader import norm_tensor
    from ..weights import load_checkpoint, model_from_checkpoint
    from ..engine.predict import load_image

    if topk < 1:
        raise UserError(f"--topk must be at least 1, got {topk}")
    ckpt = load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt).eval()
    norm = ckpt["normalization"]
    c, size = ckpt["input_size"][0], ckpt["input_size"][-1]
    out = Path(out)
    records = []
    for n, image in enumerate(images):
        pixels = load_image(image, size, c).float().div(255)
        x = ((pixels.unsqueeze(0) - norm_tensor(norm["mean"])) / norm_tensor(norm["std"])).requires_grad_(False)
        exp = explain_image(model, x, image, ckpt["classes"], topk=topk, layer=layer, method=method)
        png = draw(exp, pixels, out / f"{n:03d}-{Path(image).stem}.png", method)
        peaks = [divmod(int(m.argmax()), m.shape[1]) for m in exp.maps]
        records.append({"image": str(image), "png": str(png), "layer": exp.layer, "map_size": list(exp.map_size),
                        "top": [{"class": k, "prob": p, "peak_yx": list(pk)}
                                for k, p, pk in zip(exp.classes, exp.probs, peaks)]})
    return records
