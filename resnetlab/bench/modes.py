"""The benchmark's execution modes, as data: composable flags on the same model and input.

A mode is a set of switches applied to one model: memory format (NCHW or
``channels_last``), autocast dtype, ``torch.compile``, BatchNorm folded into the
convolutions, or onnxruntime instead of PyTorch. ``eager-fp32`` (NCHW, fp32, no
compile) is the reference: the same computation as torchvision's ResNet in a plain
loop. ``default`` is resolved at run time from :func:`resnetlab.engine.train.fast_defaults`,
so it is always exactly what ``resnetlab train`` does when no speed flag is given.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..hardware import native_bf16

TASKS = ("train", "infer")
REFERENCE = "eager-fp32"
DEFAULT = "default"


@dataclass(frozen=True)
class Mode:
    """One way of running the model: memory format, autocast dtype, compile, BN folding, runtime."""

    name: str
    description: str
    channels_last: bool = False
    amp: str = "none"  # "none" | "bf16" | "fp16" (torch.autocast)
    compile: bool = False
    fused: bool = False  # BatchNorm folded into the preceding convolution (inference only)
    runtime: str = "torch"  # "torch" | "onnxruntime" (inference only)
    cudagraphs: bool = False  # compiled, and the compiled graphs replayed as CUDA graphs (CUDA only)
    tasks: tuple[str, ...] = TASKS
    devices: tuple[str, ...] = ("cpu", "cuda")

    @property
    def flags(self) -> tuple[bool, str, bool, bool, str, bool]:
        """What decides the computation; two modes with equal flags are measured once."""
        return (self.channels_last, self.amp, self.compile, self.fused, self.runtime, self.cudagraphs)

    @property
    def precision(self) -> str:
        """Which measured matmul peak this mode is compared with: ``fp32``, ``bf16`` or ``fp16``."""
        return "fp32" if self.amp == "none" else self.amp

    def summary(self) -> str:
        """The flags in words, e.g. ``channels_last bf16 compile``."""
        parts = ["channels_last" if self.channels_last else "NCHW", "fp32" if self.amp == "none" else self.amp]
        if self.compile:
            parts.append("compile")
        if self.cudagraphs:
            parts.append("CUDA graphs")
        if self.fused:
            parts.append("BN folded")
        if self.runtime != "torch":
            parts = [self.runtime, "fp32", "BN folded by ORT"]
        return " ".join(parts)


_INFER = ("infer",)

# Order matters only for display; the reference comes first.
MODES: tuple[Mode, ...] = (
    Mode(REFERENCE, "reference: NCHW fp32 eager, torchvision's model in a textbook loop"),
    Mode("channels-last", "NHWC activations and weights (oneDNN / cuDNN prefer it)", channels_last=True),
    Mode("bf16", "NCHW, torch.autocast bfloat16", amp="bf16"),
    Mode("channels-last+bf16", "NHWC + autocast bfloat16", channels_last=True, amp="bf16"),
    Mode("compile", "NCHW fp32, torch.compile (inductor)", compile=True),
    Mode("channels-last+compile", "NHWC fp32, torch.compile", channels_last=True, compile=True),
    Mode("channels-last+bf16+compile", "NHWC + autocast bfloat16 + torch.compile",
         channels_last=True, amp="bf16", compile=True),
    # A CIFAR ResNet step on a GPU is a few hundred small kernels; replaying them as one CUDA
    # graph removes the per-kernel launch cost that dominates at batch 128.
    Mode("channels-last+bf16+cudagraphs", "NHWC + autocast bfloat16 + torch.compile(mode='reduce-overhead'): "
         "the compiled graphs replayed as CUDA graphs (CUDA only)",
         channels_last=True, amp="bf16", compile=True, cudagraphs=True, devices=("cuda",)),
    Mode("fused", "NCHW fp32 with every conv+BN pair folded into one conv", fused=True, tasks=_INFER),
    Mode("fused+channels-last", "BN folded, NHWC fp32", channels_last=True, fused=True, tasks=_INFER),
    Mode("fused+channels-last+bf16", "BN folded, NHWC, autocast bfloat16",
         channels_last=True, amp="bf16", fused=True, tasks=_INFER),
    Mode("fused+channels-last+bf16+compile", "BN folded, NHWC, autocast bfloat16, torch.compile",
         channels_last=True, amp="bf16", compile=True, fused=True, tasks=_INFER),
    Mode("onnxruntime", "ONNX export (opset 17) run by onnxruntime's CPU provider, fp32",
         runtime="onnxruntime", tasks=_INFER),
)
MODE_NAMES = tuple(m.name for m in MODES) + (DEFAULT,)


def default_mode(device: torch.device) -> Mode:
    """``resnetlab train``'s own settings on ``device`` when no speed flag is given (``fast_defaults``)."""
    from ..engine.config import TrainConfig
    from ..engine.train import fast_defaults

    cfg = TrainConfig()
    channels_last, amp = fast_defaults(cfg, device)
    mode = Mode(DEFAULT, "", channels_last=channels_last, amp=amp, compile=bool(cfg.compile))
    return dataclasses.replace(mode, description=f"resnetlab train's defaults on {device.type}: {mode.summary()}")


def modes_for(task: str, device_type: str | None = None) -> list[str]:
    """Names of every mode that applies to ``task`` (on ``device_type``, if given), reference first, ``default`` last."""
    return [m.name for m in MODES if task in m.tasks and device_type in (None, *m.devices)] + [DEFAULT]


def emulated(mode: Mode, device: torch.device) -> bool:
    """True for a bf16 mode on a device without native bf16 (it runs, converting to fp32 and back, slowly)."""
    return mode.amp == "bf16" and not native_bf16(device)


def default_modes(task: str, device: torch.device) -> list[str]:
    """The modes ``resnetlab bench`` runs without ``--modes``: those that can win on this hardware.

    Left out (still available by name, or all at once with ``--modes all``): bf16 where it is
    emulated, and on a CPU the compile modes, which take minutes to compile and measured no
    faster than eager there (docs/benchmarks.md); on CUDA only CUDA graphs beat eager at
    CIFAR batch sizes, so the CUDA-graph mode stays in.
    """
    keep = []
    for m in MODES:
        if task not in m.tasks or device.type not in m.devices or emulated(m, device):
            continue
        if m.compile and not (device.type == "cuda" and m.cudagraphs):
            continue
        keep.append(m.name)
    return keep + [DEFAULT]


def resolve_modes(task: str, names: list[str] | None, device: torch.device) -> list[Mode]:
    """The modes to run for ``task``: ``names`` (:func:`default_modes` when None, every mode for ``["all"]``),
    the reference always first.

    Unknown names and modes that do not apply to the task are a :class:`UserError`;
    ``default`` becomes the concrete flags of :func:`default_mode`.
    """
    if task not in TASKS:
        raise UserError(f"unknown benchmark task {task!r}; use train or infer")
    if names == ["all"]:
        names = modes_for(task, device.type)
    wanted = default_modes(task, device) if not names else list(dict.fromkeys(names))
    by_name = {m.name: m for m in MODES}
    resolved = []
    for name in wanted:
        if name == DEFAULT:
            resolved.append(default_mode(device))
            continue
        if name not in by_name:
            close = difflib.get_close_matches(name, MODE_NAMES, n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; choose from {', '.join(MODE_NAMES)}"
            raise UserError(f"unknown benchmark mode {name!r}{hint}")
        if task not in by_name[name].tasks:
            raise UserError(f"mode {name!r} is inference-only; run it with `resnetlab bench infer`")
        if device.type not in by_name[name].devices:
            raise UserError(f"mode {name!r} needs a {' or '.join(by_name[name].devices).upper()} device; "
                            f"this one is {device.type}")
        resolved.append(by_name[name])
    if REFERENCE not in [m.name for m in resolved]:
        resolved.insert(0, by_name[REFERENCE])  # ratios and agreement are measured against it
    else:
        resolved.sort(key=lambda m: m.name != REFERENCE)
    return resolved
