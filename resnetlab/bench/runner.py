"""Measure every mode of one model side by side: throughput, agreement with the reference, share of peak.

Everything comes from one run on one machine, so ratios hold even when the machine
is shared: the machine's peak is measured in the same run (large fp32 and bf16
matmuls), and the timed repeats of the modes are *interleaved* (repeat 1 of every
mode, then repeat 2, ...), so a burst of load from another process slows all modes
alike instead of one. Images/s is the median of the repeats; the ratio to
``eager-fp32`` is the median of the per-round ratios.

Conventions:
  * a training step is what ``resnetlab train`` does per iteration: a batch from
    :class:`~resnetlab.data.MemoryLoader` (crop + flip + normalise on the device),
    forward under autocast, cross-entropy, backward, SGD with momentum;
  * GFLOP/s counts 2 FLOPs per multiply-add of convolutions and the fc layer (as
    ``resnetlab models``); a training image costs 3 forward passes (forward, and a
    backward pass of twice the forward's work), inference one;
  * agreement: every mode runs the same input from the same weights as ``eager-fp32``;
    the error is ``max|out - ref| / max(1, max|ref|)`` on the logits (as ``resnetlab
    export`` checks), and for training also the cosine similarity of the gradient of
    all parameters with the reference's.
"""

from __future__ import annotations

import copy
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import MemoryLoader
from ..engine.evaluate import autocast
from ..errors import UserError
from ..hardware import device_name
from ..models import create_model, model_family
from ..models.profile import count_macs, meta_model
from .augment import AugmentCost, format_costs, time_augmentations
from .modes import DEFAULT, REFERENCE, Mode

# Agreement with eager-fp32, by autocast dtype: (largest logit error, smallest gradient
# cosine similarity). fp32 modes differ by summation order only (oneDNN NHWC kernels,
# inductor fusion, folded BN). Gradients are compared by direction, not elementwise: at
# initialisation a deep net's early BN gradients are sums that largely cancel, so bf16's
# 8-bit mantissa moves them a lot (ResNet-56, batch 128: bf16 autocast is 21% from a
# float64 run in norm, up to 80% on single BN biases, cosine 0.977; channels_last fp32
# 0.5%, cosine 0.99999). A wrong backward pass (a missing term, a sign) lands far below
# these limits.
TOLERANCE = {"none": (1e-3, 0.999), "bf16": (5e-2, 0.9), "fp16": (1e-2, 0.99)}
# Some check points are ill-conditioned: at torchvision's init in train mode, rounding
# ResNet-50's *input* to bf16 already moves the fp32 reference's logits by 9% and its gradient
# to cosine 0.57; fp32 itself is at cosine 0.9998 from float64 (docs/scripts/conditioning.py).
# No bf16 computation can match such a reference to the stated limits. So the reference is also run on its input
# rounded to each mode's precision, and a mode's limits are widened to this many times that
# self-disagreement: well-conditioned nets (ResNet-20/56: 1e-3 and cosine 0.9996) keep the
# stated limits. Where the widened cosine limit would fall to 0 or below (the reference's own
# gradient on a rounded input is at cosine <= 0.9 from itself: ResNet-50 at a 16-32 px check
# input, batch 4, is at cosine -0.1 to 0.01 on both AVX-512 and AVX2 CPUs), no comparison of
# directions can tell a correct backward pass from a sign error, so the gradient is reported as
# unchecked for that precision and the mode is judged on its logits alone.
SENSITIVITY_FACTOR = 10.0
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# SGD as the recipes use it; a small rate so minutes of steps on random labels stay finite.
BENCH_LR = 0.01
# Memory for the synthetic training set of each loader (uint8, padded).
LOADER_BYTES = 256 * 2**20


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work so wall-clock timings cover it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 3) -> float:
    """Achieved GFLOP/s of a ``size`` x ``size`` x ``size`` product in ``dtype``: the machine's practical peak.

    The best repeat of the best of three GEMM routes: ``torch.mm``, the same product as
    a 1x1 convolution, and oneDNN's inner product on CPU. They differ a lot on AMD CPUs,
    where MKL's fp32 ``torch.mm`` reaches about half of what oneDNN (the convolution
    library) gets from the same cores. The best repeat, not the median: another
    process can only slow a repeat down, and a peak is what the cores can do.
    """
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device, dtype)
    b = torch.randn(size, size, generator=gen).to(device, dtype)
    # 1x1 convolution over a 1 x size x (size/32) x 32 map: size*size*size multiply-adds, same as a @ b.
    x = a.t().reshape(1, size, size // 32, 32).contiguous(memory_format=torch.channels_last)
    w = b.reshape(size, size, 1, 1).contiguous(memory_format=torch.channels_last)
    routes: list[Callable[[], Any]] = [lambda: torch.mm(a, b), lambda: F.conv2d(x, w)]
    if device.type == "cpu" and torch.backends.mkldnn.is_available():
        try:  # private API: oneDNN's GEMM on its own tensor layout; skipped where it is missing
            am, bm = a.to_mkldnn(), b.to_mkldnn()
            torch._C._nn.mkldnn_linear(am, bm)
            routes.append(lambda: torch._C._nn.mkldnn_linear(am, bm))
        except (AttributeError, RuntimeError):
            pass
    flops = 2 * size**3
    best = 0.0
    for fn in routes:
        fn()  # warm-up: library dispatch, first-touch of the output
        for _ in range(repeats):
            synchronize(device)
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            best = max(best, flops / max(time.perf_counter() - t0, 1e-9) / 1e9)
    return best


def relative_error(out: Tensor, ref: Tensor) -> float:
    """``max|out - ref| / max(1, max|ref|)``: absolute for logits of order one, relative for huge ones."""
    out, ref = out.detach().float().cpu(), ref.detach().float().cpu()
    return float((out - ref).abs().max()) / max(1.0, float(ref.abs().max()))


def rounded_like(x: Tensor, precision: str) -> Tensor:
    """``x`` carrying one rounding error of ``precision``: a bf16/fp16 round trip, or for fp32 one ulp
    up on a seeded half of the elements."""
    if precision != "fp32":
        return x.to(PRECISION_DTYPES[precision]).to(x.dtype)
    up = (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) < 0.5).to(x.device)
    return torch.where(up, torch.nextafter(x, torch.full_like(x, math.inf)), x)


def calibrated_limits(amp: str, sensitivity: dict[str, float] | None) -> tuple[float, float | None]:
    """``TOLERANCE[amp]``, widened to ``SENSITIVITY_FACTOR`` times the reference's disagreement with itself
    on an input rounded to the mode's precision (``sensitivity``: its ``error`` and ``grad_cosine``).

    The cosine limit is ``None`` (gradient unchecked) where widening would take it to 0 or below.
    """
    tol, min_cos = TOLERANCE[amp]
    if sensitivity:
        tol = max(tol, SENSITIVITY_FACTOR * sensitivity["error"])
        if sensitivity.get("grad_cosine") is not None:
            widened = 1.0 - SENSITIVITY_FACTOR * (1.0 - sensitivity["grad_cosine"])
            return tol, (min(min_cos, widened) if widened > 0.0 else None)
    return tol, min_cos


def gradient_cosine(grad: Tensor, ref: Tensor) -> float:
    """Cosine similarity of two flattened gradients (1.0: the same direction)."""
    grad, ref = grad.double().cpu(), ref.double().cpu()
    return float(torch.dot(grad, ref) / (grad.norm() * ref.norm()).clamp(min=1e-300))


# --------------------------------------------------------------------------- runners: one per mode


class _Runner:
    """A mode made ready to run: ``check()`` gives its outputs for agreement, ``step()`` one timed iteration."""

    images_per_step: int

    def check(self, x: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Logits (and, training, all parameter gradients) on the check input, or on ``x`` instead."""
        raise NotImplementedError

    def step(self, index: int) -> float:
        """Run one iteration; return the seconds of it spent producing the batch (0 when there is none)."""
        raise NotImplementedError


def _memory_format(mode: Mode) -> torch.memory_format:
    return torch.channels_last if mode.channels_last else torch.contiguous_format


def _compiled(model: nn.Module, mode: Mode, options: dict[str, Any]) -> Callable[..., Tensor]:
    """``torch.compile(model)`` with inductor ``options``; CUDA-graph modes add ``triton.cudagraphs``
    (what ``mode="reduce-overhead"`` sets, which cannot be combined with ``options``)."""
    if mode.cudagraphs:
        options = {**options, "triton.cudagraphs": True}
    return torch.compile(model, options=options) if options else torch.compile(model)


class _TrainRunner(_Runner):
    def __init__(self, base: nn.Module, mode: Mode, loader: MemoryLoader, check_batch: tuple[Tensor, Tensor],
                 device: torch.device) -> None:
        model = copy.deepcopy(base).to(device).train()
        if mode.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model, self.mode, self.loader, self.device = model, mode, loader, device
        # As the training loop: compile the module, autocast outside it.
        self.forward = _compiled(model, mode, {}) if mode.compile else model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=BENCH_LR, momentum=0.9, weight_decay=1e-4)
        x, y = check_batch
        self.check_batch = (x.contiguous(memory_format=_memory_format(mode)), y)
        self.images_per_step = loader.batch_size
        self.steps_per_epoch = len(loader)

    @property
    def check_input(self) -> Tensor:
        return self.check_batch[0]

    def check(self, x: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        x = self.check_batch[0] if x is None else x.contiguous(memory_format=_memory_format(self.mode))
        y = self.check_batch[1]
        with autocast(self.device, self.mode.amp):
            logits = self.forward(x)
            loss = F.cross_entropy(logits, y)
        loss.backward()
        grads = torch.cat([p.grad.detach().float().flatten() for p in self.model.parameters()])
        self.optimizer.zero_grad(set_to_none=True)
        return logits.detach().float(), grads

    def step(self, index: int) -> float:
        epoch, i = divmod(index, self.steps_per_epoch)
        # On CUDA the previous step's kernels may still be running: without this wait the
        # loader's share would include them (measured: 70% "data" for ResNet-50 on an H100).
        synchronize(self.device)
        t0 = time.perf_counter()
        x, y = self.loader.batch(epoch, i)
        synchronize(self.device)
        data_s = time.perf_counter() - t0
        with autocast(self.device, self.mode.amp):
            logits = self.forward(x)
            loss = F.cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return data_s


class _InferRunner(_Runner):
    def __init__(self, base: nn.Module, mode: Mode, x: Tensor, device: torch.device) -> None:
        model = copy.deepcopy(base).eval()
        if mode.fused:
            from ..export.fuse import fuse_bn

            model = fuse_bn(model)
        model = model.to(device)
        if mode.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.mode, self.device = mode, device
        # Inference graphs are frozen: weights become constants, so inductor folds BN and
        # pre-packs convolution weights into oneDNN's blocked layout once instead of every call.
        self.forward = _compiled(model, mode, {"freezing": True}) if mode.compile else model
        self.x = x.to(device).contiguous(memory_format=_memory_format(mode))
        self.images_per_step = len(x)

    @property
    def check_input(self) -> Tensor:
        return self.x

    def check(self, x: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        x = self.x if x is None else x.to(self.device).contiguous(memory_format=_memory_format(self.mode))
        with torch.no_grad(), autocast(self.device, self.mode.amp):
            return self.forward(x).float(), None

    def step(self, index: int) -> float:
        with torch.no_grad(), autocast(self.device, self.mode.amp):
            self.forward(self.x)
        return 0.0


class _OnnxRunner(_Runner):
    def __init__(self, base: nn.Module, x: Tensor, tmp_dir: Path) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise _Skip("onnxruntime is not installed (pip install 'resnetlab[export]')") from None
        from ..export.onnx import export_onnx

        path = tmp_dir / "model.onnx"
        # Opset 17 goes through the TorchScript-based exporter: fast, and onnxruntime folds BN itself.
        export_onnx(copy.deepcopy(base).eval(), path, input_size=list(x.shape[1:]), batch=len(x), opset=17)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.x = x.cpu().numpy()
        self.images_per_step = len(x)

    def check(self, x: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        feed = self.x if x is None else x.cpu().numpy()
        return torch.from_numpy(self.session.run(None, {self.input_name: feed})[0]), None

    def step(self, index: int) -> float:
        self.session.run(None, {self.input_name: self.x})
        return 0.0


class _Skip(Exception):
    """A mode that cannot run here (missing package, no compiler); reported, not fatal."""


# --------------------------------------------------------------------------- results


@dataclass
class Measurement:
    """What was measured for one set of flags; ``skipped`` says why there is nothing.

    Modes with the same flags (``default`` and the listed mode it equals) are measured once
    and share this record by reference.
    """

    precision: str
    tolerance: float
    grad_min_cosine: float | None
    img_s: float | None = None
    repeats_img_s: list[float] = field(default_factory=list)
    ratio: float | None = None
    gflops: float | None = None
    peak_pct: float | None = None
    data_pct: float | None = None
    error: float | None = None
    grad_cosine: float | None = None
    agrees: bool | None = None
    setup_s: float = 0.0
    skipped: str | None = None
    profile: list[dict[str, Any]] = field(default_factory=list)  # --profile: the busiest operators, per step
    # While timing: the runner, iterations per repeat, the next step index and the time sums.
    runner: _Runner | None = field(default=None, repr=False)
    iters: int = 0
    next_step: int = 0
    data_time: float = 0.0
    total_time: float = 0.0


@dataclass
class ModeResult:
    """A mode (its name and flags) and its measurement (``r.measured.img_s``)."""

    mode: Mode
    measured: Measurement

    def to_dict(self) -> dict[str, Any]:
        """JSON-able record."""
        m = self.measured
        r = lambda v, d=4: None if v is None else round(v, d)  # noqa: E731
        out: dict[str, Any] = {
            "img_s": r(m.img_s, 2), "ratio": r(m.ratio, 3), "gflops": r(m.gflops, 2),
            "peak_pct": r(m.peak_pct, 2), "repeats_img_s": [round(v, 2) for v in m.repeats_img_s],
            "max_error": m.error, "tolerance": m.tolerance, "agrees": m.agrees,
            "setup_s": round(m.setup_s, 2), "flags": self.mode.summary(), "description": self.mode.description,
        }
        if m.grad_cosine is not None:
            out["grad_cosine"], out["grad_min_cosine"] = m.grad_cosine, m.grad_min_cosine
        if m.data_pct is not None:
            out["data_pct"] = r(m.data_pct, 2)
        if m.skipped:
            out["skipped"] = m.skipped
        if m.profile:
            out["profile"] = m.profile
        return out


@dataclass
class BenchResult:
    """Everything one ``resnetlab bench`` run measured."""

    task: str
    model: str
    device: str
    batch_size: int
    input_size: tuple[int, int, int]
    macs: int
    peak_gflops: dict[str, float]
    results: list[ModeResult]
    threads: int
    load_before: tuple[float, float, float] | None = None
    load_after: tuple[float, float, float] | None = None
    # Per precision: how far the reference moves when its input is rounded to that precision.
    sensitivity: dict[str, dict[str, float]] = field(default_factory=dict)
    augment: list[AugmentCost] = field(default_factory=list)  # --augment: each augmentation's cost per batch

    @property
    def augment_step(self) -> tuple[str, float] | None:
        """The step augmentation shares are of: ``default``'s (what ``resnetlab train`` runs), else the
        reference's; (mode name, ms per step), None when neither was measured."""
        for name in (DEFAULT, REFERENCE):
            r = next((r for r in self.results if r.mode.name == name and r.measured.img_s), None)
            if r is not None:
                return name, 1e3 * self.batch_size / r.measured.img_s
        return None

    @property
    def flops_per_image(self) -> int:
        """2 FLOPs per multiply-add; a training image is 3 forward passes' worth (forward + backward)."""
        return 2 * self.macs * (3 if self.task == "train" else 1)

    @property
    def best(self) -> str | None:
        """The fastest mode whose outputs agree with the reference, by the (paired, load-robust) ratio."""
        ok = [r for r in self.results if r.measured.ratio is not None and r.measured.agrees]
        return max(ok, key=lambda r: r.measured.ratio).mode.name if ok else None

    @property
    def agree(self) -> bool:
        """Whether every mode that ran matches eager-fp32 within its tolerance."""
        return all(r.measured.agrees for r in self.results if r.measured.skipped is None)

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` object."""
        return {
            "task": self.task, "model": self.model, "device": self.device, "batch_size": self.batch_size,
            "input_size": list(self.input_size), "threads": self.threads, "torch": torch.__version__,
            "macs_per_image": self.macs,
            "flop_convention": "2 FLOPs per multiply-add (convs + fc); training image = 3 forward passes",
            "peak_gflops": {k: round(v, 2) for k, v in self.peak_gflops.items()},
            "load_avg_before": self.load_before, "load_avg_after": self.load_after, "env": _threading_env(),
            "modes": {r.mode.name: r.to_dict() for r in self.results},
            "sensitivity": self.sensitivity, "sensitivity_factor": SENSITIVITY_FACTOR,
            "best": self.best, "agree": self.agree,
            **({"augment": self._augment_dict()} if self.augment else {}),
        }

    def _augment_dict(self) -> dict[str, Any]:
        step = self.augment_step
        return {"step_mode": step and step[0], "step_ms": step and round(step[1], 3),
                **{c.name: c.to_dict(step and step[1]) for c in self.augment}}


# --------------------------------------------------------------------------- the benchmark


def _peaks(device: torch.device, precisions: list[str], size: int) -> dict[str, float]:
    return {p: matmul_peak(device, PRECISION_DTYPES[p], size) for p in precisions}


def _threading_env() -> dict[str, str]:
    """The OpenMP/MKL settings in force: on a shared machine they change every figure (docs/benchmarks.md)."""
    keys = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "MKL_NUM_THREADS", "KMP_BLOCKTIME")
    return {k: os.environ[k] for k in keys if k in os.environ}


def _loadavg() -> tuple[float, float, float] | None:
    try:
        return tuple(round(v, 2) for v in os.getloadavg())  # type: ignore[return-value]
    except OSError:  # not on every platform
        return None


def _sensitivity(runner: _Runner, out: Tensor, grad: Tensor | None,
                 precisions: set[str]) -> dict[str, dict[str, float]]:
    """How far the reference's outputs move when its check input carries one rounding error of each precision."""
    found = {}
    for precision in sorted(precisions):
        p_out, p_grad = runner.check(rounded_like(runner.check_input, precision))
        found[precision] = {"error": relative_error(p_out, out)}
        if p_grad is not None and grad is not None:
            found[precision]["grad_cosine"] = gradient_cosine(p_grad, grad)
    return found


@dataclass
class _Setup:
    """What every mode is built from: the same initial weights, the same data, the same warm-up."""

    task: str
    device: torch.device
    base: nn.Module
    loaders: dict[bool, MemoryLoader]
    check_batch: tuple[Tensor, Tensor] | None
    x: Tensor | None
    tmp: Path
    warmup: int
    torch_precisions: set[str]


@dataclass
class _Reference:
    """eager-fp32's answers on the check input, and how far rounding that input moves them."""

    out: Tensor
    grad: Tensor | None
    sensitivity: dict[str, dict[str, float]]


def _bench_inputs(task: str, base: nn.Module, modes: list[Mode], size: tuple[int, int, int], batch_size: int,
                  device: torch.device, seed: int) -> tuple[dict[bool, MemoryLoader], Any, Tensor | None]:
    """Training: loaders (one per memory format) and the check batch; inference: one random batch."""
    gen = torch.Generator().manual_seed(seed)
    if task != "train":
        return {}, None, torch.randn(batch_size, *size, generator=gen)
    # Synthetic uint8 images through the real loader: crop + flip + normalise as in training.
    # As many as fast-cifar's 45k-image split where they fit in LOADER_BYTES: the per-batch
    # shuffle (a permutation of the whole set) is part of the data path being measured.
    padded = size[0] * (size[1] + 8) * (size[2] + 8)
    n = min(45_000, max(4 * batch_size, LOADER_BYTES // padded))
    images = torch.randint(0, 256, (n, *size), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, base.num_classes, (n,), generator=gen)
    loaders = {cl: MemoryLoader(images, labels, batch_size, train=True, mean=[0.5] * size[0], std=[0.25] * size[0],
                                device=device, channels_last=cl, seed=seed)
               for cl in {m.channels_last for m in modes}}
    return loaders, loaders[modes[0].channels_last].batch(0, 0), None


def _runner_for(mode: Mode, s: _Setup) -> _Runner:
    if mode.runtime == "onnxruntime":
        return _OnnxRunner(s.base, s.x, s.tmp)
    if s.task == "train":
        return _TrainRunner(s.base, mode, s.loaders[mode.channels_last], s.check_batch, s.device)
    return _InferRunner(s.base, mode, s.x, s.device)


def _set_up(mode: Mode, s: _Setup, ref: _Reference | None) -> tuple[Measurement, _Reference | None]:
    """Build, check and warm up ``mode``; the first mode (``ref`` None) is the reference and returns it."""
    tol, min_cos = TOLERANCE[mode.amp]
    m = Measurement(mode.precision, tol, min_cos if s.task == "train" else None)
    t0 = time.perf_counter()
    try:
        runner = _runner_for(mode, s)
        out, grad = runner.check()
        if ref is None:  # before any step changes the weights
            ref = _Reference(out, grad, _sensitivity(runner, out, grad, s.torch_precisions))
        for i in range(s.warmup):
            runner.step(i)
        synchronize(s.device)
    except _Skip as exc:
        m.skipped = str(exc)
    except Exception as exc:  # noqa: BLE001 - a mode that fails here (e.g. no C compiler) is reported
        if mode.name == REFERENCE:
            raise
        m.skipped = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    m.setup_s = time.perf_counter() - t0
    if not m.skipped:
        m.runner, m.next_step = runner, s.warmup
        _judge(m, mode.amp, out, grad, ref)
    return m, ref


def _judge(m: Measurement, amp: str, out: Tensor, grad: Tensor | None, ref: _Reference) -> None:
    """Compare a mode's check outputs with the reference's, under limits calibrated to the check's conditioning."""
    m.tolerance, min_cos = calibrated_limits(amp, ref.sensitivity.get(m.precision))
    if m.grad_min_cosine is not None:
        m.grad_min_cosine = min_cos
    m.error = relative_error(out, ref.out)
    if grad is not None and ref.grad is not None:
        m.grad_cosine = gradient_cosine(grad, ref.grad)
    m.agrees = m.error <= m.tolerance and (m.grad_cosine is None or min_cos is None or m.grad_cosine >= min_cos)


def _calibrate(m: Measurement, min_time: float, device: torch.device) -> None:
    """Enough iterations per repeat for about ``min_time`` seconds, from one timed step."""
    synchronize(device)
    t0 = time.perf_counter()
    m.runner.step(m.next_step)
    synchronize(device)
    m.iters = max(1, math.ceil(min_time / max(time.perf_counter() - t0, 1e-6)))
    m.next_step += 1


def _time_repeat(m: Measurement, device: torch.device) -> None:
    """One timed repeat of ``m.iters`` steps; only the device's work counts (synchronised at both ends)."""
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(m.iters):
        m.data_time += m.runner.step(m.next_step)
        m.next_step += 1
    synchronize(device)
    elapsed = time.perf_counter() - t0
    m.total_time += elapsed
    m.repeats_img_s.append(m.iters * m.runner.images_per_step / elapsed)


def _summarise(m: Measurement, task: str, ref_repeats: list[float], flops_per_image: int, peak: float) -> None:
    """Median throughput, the paired ratio to the reference, GFLOP/s and share of peak; drops the runner."""
    m.img_s = statistics.median(m.repeats_img_s)
    if task == "train":
        m.data_pct = 100 * m.data_time / m.total_time
    # Paired: each repeat against the reference's repeat of the same round (seconds
    # apart), so load that comes and goes between rounds cancels out of the ratio.
    m.ratio = statistics.median(x / r for x, r in zip(m.repeats_img_s, ref_repeats))
    m.gflops = m.img_s * flops_per_image / 1e9
    m.peak_pct = 100 * m.gflops / peak
    m.runner = None


def run_bench(
    task: str,
    model_name: str,
    modes: list[Mode],
    *,
    device: torch.device,
    batch_size: int,
    input_size: tuple[int, int, int] | None = None,
    repeats: int = 5,
    min_time: float = 1.0,
    warmup: int = 3,
    peak_size: int = 2048,
    seed: int = 0,
    profile_steps: int = 0,
    augmentations: list[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> BenchResult:
    """Measure ``modes`` (the first must be ``eager-fp32``) of ``model_name`` on ``device`` for ``task``.

    Each mode is built from the same initial weights, checked against the reference on
    the same input, warmed up ``warmup`` iterations (compilation happens there), then
    timed ``repeats`` times, interleaved with the other modes, for about ``min_time``
    seconds per repeat. A mode that cannot run here (no onnxruntime, a compiler
    error) is reported as skipped. ``profile_steps`` > 0 then runs that many more
    iterations of each mode under ``torch.profiler`` (untimed) to say where its time goes.
    ``augmentations`` (training; crop+flip first, :mod:`.augment`) are then timed on the data
    path and reported as a share of the ``default`` mode's step.
    """
    log = log or (lambda _msg: None)
    if not modes or modes[0].name != REFERENCE:
        raise ValueError(f"the first mode must be {REFERENCE}")
    if batch_size < 1 or repeats < 1 or warmup < 1:
        raise UserError("--batch-size, --repeats and --warmup must be at least 1")
    size = tuple(input_size or model_family(model_name).input_size)
    overrides = {"in_chans": size[0]} if size[0] != 3 else {}
    macs = count_macs(meta_model(model_name, **overrides), size)
    load_before = _loadavg()
    precisions = ["fp32"] + sorted({m.precision for m in modes} - {"fp32"})
    peak = _peaks(device, precisions, peak_size)
    log("peak: " + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items()))

    torch.manual_seed(seed)
    base = create_model(model_name, **overrides)
    measured: dict[tuple, Measurement] = {}  # one record per set of flags
    results: list[ModeResult] = []
    ref: _Reference | None = None
    with tempfile.TemporaryDirectory(prefix="resnetlab-bench-") as tmp:
        setup = _Setup(task, device, base, *_bench_inputs(task, base, modes, size, batch_size, device, seed),
                       Path(tmp), warmup, {m.precision for m in modes if m.runtime == "torch"})
        for mode in modes:
            if mode.flags not in measured:
                log(f"setting up {mode.name} ({mode.summary()})")
                measured[mode.flags], ref = _set_up(mode, setup, ref)
                if measured[mode.flags].skipped:
                    log(f"  skipped: {measured[mode.flags].skipped}")
            results.append(ModeResult(mode, measured[mode.flags]))
        live = [m for m in measured.values() if m.runner is not None]
        for m in live:
            _calibrate(m, min_time, device)
        for rep in range(repeats):
            for m in live:
                _time_repeat(m, device)
            log(f"repeat {rep + 1}/{repeats} done")
        if profile_steps > 0:
            for m in live:
                m.profile = profile_ops(m.runner, m.next_step, profile_steps, device)
                m.next_step += profile_steps
            log(f"profiled {profile_steps} steps per mode")
    costs = _augment_costs(task, augmentations, modes, size, batch_size, base.num_classes, device, seed,
                           repeats, min_time, log)

    # The peak once more after the modes, keeping the better: load may have eased since.
    peak = {k: max(v, peak[k]) for k, v in _peaks(device, precisions, peak_size).items()}
    result = BenchResult(task, model_name, device_name(device), batch_size, size, macs, peak, results,
                         torch.get_num_threads(), load_before, _loadavg(), ref.sensitivity, costs)
    ref_repeats = list(results[0].measured.repeats_img_s)
    for m in live:
        _summarise(m, task, ref_repeats, result.flops_per_image, peak[m.precision])
    return result


def _augment_costs(task: str, names: list[str] | None, modes: list[Mode], size: tuple[int, int, int],
                   batch_size: int, num_classes: int, device: torch.device, seed: int, repeats: int,
                   min_time: float, log: Callable[[str], None]) -> list[AugmentCost]:
    """``--augment``: each augmentation timed in the memory format of the step it joins (``default``'s)."""
    if not names or task != "train":
        return []
    log(f"timing augmentations: {', '.join(names)}")
    step_mode = next((m for m in modes if m.name == DEFAULT), modes[0])
    return time_augmentations(names, size=size, batch_size=batch_size, num_classes=num_classes, device=device,
                              channels_last=step_mode.channels_last, seed=seed, repeats=repeats,
                              min_time=min_time / 2, synchronize=synchronize)


PROFILE_TOP = 10  # operators listed per mode by --profile


def profile_ops(runner: _Runner, first_index: int, steps: int, device: torch.device,
                top: int = PROFILE_TOP) -> list[dict[str, Any]]:
    """The ``top`` operators by self time over ``steps`` iterations (torch.profiler), per iteration.

    Each row: ``op``, ``ms_per_step``, ``pct`` (of all operators' self time, so the shares of
    convolutions, BatchNorm and elementwise work add up) and ``calls_per_step``. On CUDA
    the time is the kernels' device time, not the launch time.
    """
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for i in range(steps):
            runner.step(first_index + i)
        synchronize(device)
    events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    self_us = {e.key: (e.self_device_time_total if cuda else e.self_cpu_time_total) for e in events}
    total = sum(self_us.values()) or 1.0
    rows = sorted(events, key=lambda e: self_us[e.key], reverse=True)[:top]
    return [{"op": e.key, "ms_per_step": round(self_us[e.key] / 1e3 / steps, 3),
             "pct": round(100 * self_us[e.key] / total, 2), "calls_per_step": round(e.count / steps, 2)}
            for e in rows]


ERR_WIDTH = 46


def format_result(result: BenchResult) -> str:
    """The human-readable table of a :class:`BenchResult`."""
    c, h, w = result.input_size
    lines = [
        f"resnetlab bench {result.task}: {result.model}, batch {result.batch_size}, {c}x{h}x{w}, {result.device}, "
        f"torch {torch.__version__}",
        f"{result.macs / 1e6:.1f} M multiply-adds per image forward; "
        f"{result.flops_per_image / 1e9:.3f} GFLOP per {'training' if result.task == 'train' else 'inference'} "
        "image (2 FLOPs/MAC" + (", forward + backward = 3 forwards)" if result.task == "train" else ")"),
        "peak (best large matmul, same run): " + ", ".join(f"{k} {v:.0f} GFLOP/s"
                                                           for k, v in result.peak_gflops.items()),
    ]
    if result.load_before is not None:
        env = " ".join(f"{k}={v}" for k, v in _threading_env().items())
        lines.append(f"load average before {result.load_before[0]:.2f}, after {result.load_after[0]:.2f} "
                     f"({os.cpu_count()} CPUs)" + (f"; {env}" if env else ""))
    data_col = result.task == "train"
    header = f"{'mode':<34}{'img/s':>9}{'ratio':>8}{'GFLOP/s':>9}{'%peak':>7}" + (f"{'data%':>7}" if data_col else "")
    header += f"  {'error (limit)':<{ERR_WIDTH}}agrees"
    lines += ["", header, "-" * len(header)]
    for r in result.results:
        if r.measured.skipped:
            lines.append(f"{r.mode.name:<34}skipped: {r.measured.skipped}")
            continue
        err = f"{r.measured.error:.1e} ({r.measured.tolerance:.0e})"
        if r.measured.grad_cosine is not None:
            limit = "unchecked" if r.measured.grad_min_cosine is None else f">={r.measured.grad_min_cosine:.4g}"
            err += f", grad cos {r.measured.grad_cosine:.4f} ({limit})"
        line = f"{r.mode.name:<34}{r.measured.img_s:>9.1f}{r.measured.ratio:>7.2f}x{r.measured.gflops:>9.1f}{r.measured.peak_pct:>6.1f}%"
        if data_col:
            line += f"{r.measured.data_pct:>6.1f}%"
        line += f"  {err:<{ERR_WIDTH}}{'yes' if r.measured.agrees else 'NO'}"
        lines.append(line)
    profiled = set()  # flags already listed: ``default`` shares its profile with the mode it equals
    for r in result.results:
        if r.measured.profile and r.mode.flags not in profiled:
            profiled.add(r.mode.flags)
            lines += ["", f"profile of {r.mode.name} (torch.profiler, self time per step; % of all operators):"]
            lines += [f"  {row['op'][:60]:<60}{row['ms_per_step']:>9.2f} ms{row['pct']:>7.1f}%"
                      f"{row['calls_per_step']:>8g} calls" for row in r.measured.profile]
    if result.augment:
        step = result.augment_step
        lines += format_costs(result.augment, step and step[1], step and step[0])
    default = next((r for r in result.results if r.mode.name == "default"), None)
    lines.append("")
    if default is not None:
        lines.append(f"default = {default.mode.summary()}")
    best = result.best
    if best:
        ratio = next(r.measured.ratio for r in result.results if r.mode.name == best)
        lines.append(f"best: {best} ({ratio:.2f}x eager-fp32)")
    what = "logits and parameter gradients" if result.task == "train" else "logits"
    rule = "logits: max|out-ref|/max(1,max|ref|) <= limit" + ("; gradients: cosine >= limit"
                                                               if result.task == "train" else "")
    for precision, sens in result.sensitivity.items():
        amp = "none" if precision == "fp32" else precision
        if calibrated_limits(amp, sens) != TOLERANCE[amp]:
            cos = f" and its gradient to cosine {sens['grad_cosine']:.4f}" if "grad_cosine" in sens else ""
            unchecked = ("; its gradient direction is noise at this precision, so gradients are unchecked"
                         if calibrated_limits(amp, sens)[1] is None else "")
            lines.append(f"ill-conditioned check: rounding eager-fp32's input to {precision} alone moves its logits "
                         f"by {sens['error']:.1e}{cos}; {precision} limits relaxed to {SENSITIVITY_FACTOR:g}x that where it "
                         f"exceeds them{unchecked}")
    if result.agree:
        lines.append(f"agreement: every mode's {what} match eager-fp32 within tolerance ({rule})")
    else:
        bad = ", ".join(r.mode.name for r in result.results if r.measured.skipped is None and not r.measured.agrees)
        lines.append(f"agreement: FAILED for {bad}")
    return "\n".join(lines)
