"""Typed training configuration and the named recipes (``resnetlab recipes``).

A recipe is a named set of values for :class:`TrainConfig` fields; command-line
flags override it field by field, and the resolved config (recipe + flags + what
was derived from the model and data) is written to ``config.json`` in the run folder.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..errors import UserError


AMP_CHOICES = ("none", "bf16", "fp16")  # autocast dtypes of --amp, for training and inference alike


def check_amp(amp: str) -> str:
    """``amp`` if it names an autocast dtype (``AMP_CHOICES``), else a one-line user error."""
    if amp not in AMP_CHOICES:
        raise UserError(f"--amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    return amp


def opt(default: Any = None, help: str = "", *, factory: Any = None, **cli: Any) -> Any:
    """A config field with its command-line help (and argparse extras such as ``choices``) as metadata.

    ``resnetlab train`` builds one flag per field from this metadata, so the CLI and the config
    cannot drift apart.
    """
    meta = {"help": help, **cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` means "derive it" (from recipe, model or data)."""

    # What to train, on what.
    model: str = opt("resnet20", "model name (`resnetlab models`)")
    model_args: dict[str, Any] = opt(help="constructor overrides (on the command line: --model-arg KEY=VALUE)",
                                     factory=dict)
    data: str | None = opt(None, "cifar10, cifar100, a CIFAR archive/folder, IDX folder or image folder; "
                                 "default: CIFAR-10 if cached or downloadable, else the bundled sample")
    val_split: int = opt(0, "hold out N training images (stratified) as validation")
    subset: int = opt(0, "train on N images (stratified) for a quick run")
    # Seeds which images --val-split holds out and --subset keeps, apart from ``seed`` (init, order,
    # augmentation): runs that differ only in ``seed`` are scored on the same held-out images, as the
    # paper's Table 6 runs are on one test set.
    split_seed: int = opt(0, "seeds which images --val-split holds out and --subset keeps (whatever --seed is)")
    image_size: int | None = opt(None, "crop size for large-image folders (default 224)")
    init: str | None = opt(None, "start from these weights: a checkpoint, shipped weights' name, "
                                 "torchvision/timm state dict or safetensors")

    # Optimisation (paper Sec. 3.4 / 4.2: SGD, momentum 0.9, weight decay 1e-4, batch 128).
    recipe: str = opt("paper-cifar", "training recipe (`resnetlab recipes`); flags override it field by field")
    batch_size: int = opt(128, "global batch size")
    lr: float = opt(0.1, "peak learning rate")
    momentum: float = opt(0.9, "SGD momentum")
    nesterov: bool = opt(False, "Nesterov momentum")
    weight_decay: float = opt(1e-4, "L2 weight decay")
    decay_norm_and_bias: bool = opt(True, "weight decay on BN parameters and biases too (--no-...: conv/fc only)")
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy")

    # Schedule: the length is ``iters`` or ``epochs`` (one of them); milestones are fractions of it.
    iters: int | None = opt(64_000, "run length in iterations (replaces the recipe's length)")
    epochs: float | None = opt(None, "run length in epochs (replaces the recipe's length)")
    schedule: str = opt("step", "learning-rate schedule", choices=("step", "cosine", "linear"))
    milestones: tuple[float, ...] = opt((0.5, 0.75), "step schedule: fractions of the run where lr is "
                                                     "multiplied by --gamma (32k and 48k of 64k, Sec. 4.2)")
    gamma: float = opt(0.1, "step schedule: lr factor at each milestone")
    warmup_iters: int = opt(0, "warm-up iterations")
    warmup_lr: float | None = opt(None, "constant warm-up lr (Sec. 4.2: 0.01); unset: a linear ramp to --lr")
    warmup_min_depth: int = opt(0, "warm up only networks at least this deep (Sec. 4.2: 110)")

    # Input normalisation: "channel" (mean/std per channel, computed on the training images) or
    # "pixel-mean" (subtract the training images' mean image, the 2015 paper's Sec. 4.2 for CIFAR).
    normalize: str = opt("channel", "input normalisation", choices=("channel", "pixel-mean"))
    # Data augmentation.
    augment: str = opt("crop-flip", "crop-flip (pad and crop, flip), rrc-flip (scale augmentation) or none",
                       choices=("crop-flip", "rrc-flip", "none"))
    pad: int = opt(4, "zero padding of crop-flip's random crops (Sec. 4.2: 4)")
    # Beyond the paper, batched on the device for in-memory (CIFAR-size) data, after crop and flip:
    # one policy operation per image, then cutout; mixup/cutmix mix the normalised batch and its labels.
    policy: str = opt("none", "per-image augmentation policy: AutoAugment's CIFAR-10 policy (Cubuk et al. 2019) "
                              "or TrivialAugment (Mueller & Hutter 2021)",
                      choices=("none", "autoaugment", "trivialaugment"))
    cutout: int = opt(0, "cutout square side in pixels, 0: off (DeVries & Taylor 2017: 16 on CIFAR-10)")
    mix: str = opt("none", "mix images and labels: mixup (Zhang et al. 2018) or cutmix (Yun et al. 2019)",
                   choices=("none", "mixup", "cutmix"))
    mix_alpha: float = opt(1.0, "Beta(alpha, alpha) of the mixing weight (mixup: 1.0 on CIFAR-10, cutmix: 1.0)")
    ema_decay: float = opt(0.0, "keep an exponential moving average of the weights and BN buffers with this "
                                "decay per iteration (e.g. 0.999), evaluated beside the raw model; 0: off")

    # Runtime.
    device: str = opt("auto", "where to train", choices=("auto", "cpu", "cuda"))
    channels_last: bool | None = opt(None, "NHWC memory format (default: on, measured faster on CPU and CUDA)")
    amp: str | None = opt(None, "autocast dtype (default: the faster measured on this hardware)",
                          choices=AMP_CHOICES)
    compile: bool = opt(False, "torch.compile the model")
    cuda_graphs: bool = opt(False, "replay each training step and evaluation batch as a CUDA graph (CUDA only, "
                                   "without --compile or fp16; SGD runs fused with the lr as a device tensor)")
    seed: int = opt(0, "seeds the initial weights, batch order and augmentation")
    workers: int = opt(2, "DataLoader workers for large-image folders")
    eval_every: int | None = opt(None, "iterations between evaluations (default: about 20 per run, "
                                       "at most once an epoch)")
    out: str | None = opt(None, "run folder (default runs/<model>-<timestamp>)")
    resume: str | None = opt(None, "continue the run in DIR from its last checkpoint; 'auto': continue --out "
                                   "if it holds one, else start there (for torchrun --max-restarts)",
                             metavar="DIR")
    sync_bn: bool = opt(False, "SyncBatchNorm under torchrun")
    tta_flip: bool = opt(False, "evaluate on the image and its mirror, averaged")

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (unknown names are a clear error)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise UserError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        return dataclasses.asdict(self)


def saved_split_seed(saved: dict[str, Any]) -> int:
    """The split seed of a saved ``config.json``; configs from before ``split_seed`` split with ``seed``."""
    return int(saved.get("split_seed", saved.get("seed", 0)))


@dataclass(frozen=True)
class Recipe:
    """A named preset: a description, where its numbers come from, and the fields it sets."""

    description: str
    source: str
    values: dict[str, Any]


_FAST_CIFAR: dict[str, Any] = dict(
    batch_size=256, lr=0.4, momentum=0.9, nesterov=True, weight_decay=5e-4, decay_norm_and_bias=False,
    label_smoothing=0.1, iters=None, epochs=20, schedule="linear", milestones=(), gamma=0.1,
    warmup_iters=176, warmup_lr=None, warmup_min_depth=0, normalize="channel", augment="crop-flip", pad=4, tta_flip=True)

RECIPES: dict[str, Recipe] = {
    "paper-cifar": Recipe(
        "He et al. 2015 Sec. 4.2: SGD 0.9, wd 1e-4, batch 128, lr 0.1 /10 at 32k and 48k, stop at 64k; "
        "per-pixel mean subtracted, pad-4 crop + flip; lr 0.01 for the first 400 iterations on 110 layers and deeper",
        "He et al. 2015, Sec. 4.2",
        dict(batch_size=128, lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4, decay_norm_and_bias=True,
             label_smoothing=0.0, iters=64_000, epochs=None, schedule="step", milestones=(0.5, 0.75), gamma=0.1,
             warmup_iters=400, warmup_lr=0.01, warmup_min_depth=110, normalize="pixel-mean", augment="crop-flip", pad=4,
             tta_flip=False),
    ),
    "fast-cifar": Recipe(
        "short CPU budget: batch 256, nesterov, lr 0.4 with a linear ramp up (1 epoch) and linear decay to 0, "
        "label smoothing 0.1, wd 5e-4 on conv/fc weights only, flip test-time augmentation; 20 epochs",
        "measured on the 45k/5k CIFAR-10 split; see README",
        _FAST_CIFAR,
    ),
    "fast-cifar-b128": Recipe(
        "fast-cifar at batch 128: lr 0.2 (scaled with the batch), the one-epoch ramp in 352 iterations, "
        "twice the steps for the same images; 20 epochs",
        "measured against fast-cifar on the 45k/5k CIFAR-10 split, ResNet-20 and ResNet-56; see docs/benchmarks.md",
        # Batch, lr and ramp scaled together (the ramp stays one epoch of images); the rest is fast-cifar's.
        {**_FAST_CIFAR, "batch_size": 128, "lr": 0.2, "warmup_iters": 352},
    ),
    "paper-imagenet": Recipe(
        "He et al. 2015 Sec. 3.4: SGD 0.9, batch 256, lr 0.1 /10 every 30 epochs, 90 epochs, wd 1e-4, "
        "scale augmentation (random-resized crop + flip)",
        "He et al. 2015, Sec. 3.4; torchvision's reference recipe",
        dict(batch_size=256, lr=0.1, momentum=0.9, nesterov=False, weight_decay=1e-4, decay_norm_and_bias=True,
             label_smoothing=0.0, iters=None, epochs=90, schedule="step", milestones=(1 / 3, 2 / 3), gamma=0.1,
             warmup_iters=0, warmup_lr=None, warmup_min_depth=0, normalize="channel", augment="rrc-flip", pad=0, tta_flip=False),
    ),
}


def recipe_config(name: str, **overrides: Any) -> TrainConfig:
    """The config of a named recipe with field overrides applied (``None`` overrides are ignored)."""
    if name not in RECIPES:
        raise UserError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    values = {**RECIPES[name].values, **{k: v for k, v in overrides.items() if v is not None}}
    # A length given in one unit replaces the recipe's length in the other.
    if overrides.get("epochs") is not None and overrides.get("iters") is None:
        values["iters"] = None
    if overrides.get("iters") is not None and overrides.get("epochs") is None:
        values["epochs"] = None
    return TrainConfig(recipe=name).replace(**values)
