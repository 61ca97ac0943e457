"""Per-call times and operand layouts of one ResNet training step (docs/benchmarks.md, the shortcut fix).

    python docs/scripts/op_layouts.py [--model resnet20]

Runs the default CPU step (channels_last + bf16 autocast, batch 128, 32x32) once under a
dispatch mode that times every convolution, BatchNorm and ReLU-backward call and names the
layout of its tensor operands (CL = channels_last, NCHW = contiguous), then times one
128x16x32x32 bf16 ReLU backward with matching and with mixed operand layouts, and option A's
subsampling as a slice and as a 1x1 average pool. Not a test:
numbers move with the machine's load; run it on an idle machine.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from resnetlab.models import create_model

WATCHED = ("convolution", "native_batch_norm", "threshold_backward")


def layout(t: object) -> str | None:
    if not isinstance(t, torch.Tensor) or t.dim() != 4:
        return None
    if t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous():
        return f"CL[{t.shape[1]}]"
    return f"NCHW[{t.shape[1]}]" if t.is_contiguous() else f"strided[{t.shape[1]}]"


class TimeCalls(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[str, float, list[str]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        t0 = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        ms = 1e3 * (time.perf_counter() - t0)
        name = str(func)
        if any(w in name for w in WATCHED):
            self.rows.append((name, ms, [x for x in map(layout, args) if x]))
        return out


def per_call(model_name: str) -> None:
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(128, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    mode = TimeCalls()
    with mode:
        step()
    totals: dict[str, float] = {}
    for name, ms, layouts in mode.rows:
        totals[name] = totals.get(name, 0.0) + ms
        if "threshold_backward" in name:
            print(f"{name:36s} {ms:6.2f} ms  {' '.join(layouts)}")
    for name, ms in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"total {name:30s} {ms:7.2f} ms")
    # A stride-1 3x3 convolution of a CIFAR ResNet is 128 * 32^2 * 16^2 * 9 multiply-adds whatever its
    # width (the map halves as the channels double): 0.604 GFLOP forward, twice that backward.
    gflop = 2 * 128 * 32 * 32 * 16 * 16 * 9 / 1e9
    for kind, work in (("convolution.default", gflop), ("convolution_backward.default", 2 * gflop)):
        by_width: dict[str, list[float]] = {}
        for name, ms, layouts in mode.rows:
            if name.endswith(kind) and layouts and not layouts[0].endswith("[3]"):  # not the stem
                by_width.setdefault(layouts[0], []).append(ms)
        for width, times in sorted(by_width.items()):
            med = sorted(times)[len(times) // 2]
            print(f"{kind:30s} input {width:8s} median {med:5.2f} ms = {work / med * 1e3:5.0f} GFLOP/s "
                  f"({len(times)} calls; stride-1 3x3 work assumed)")


def timed(fn, n: int = 30) -> float:
    """Milliseconds per call of ``fn`` over ``n`` calls, after 5 untimed ones."""
    for _ in range(5):
        fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return 1e3 * (time.perf_counter() - t0) / n


def mixed_layouts() -> None:
    out = torch.randn(128, 16, 32, 32).bfloat16().contiguous(memory_format=torch.channels_last)
    grad_cl = torch.randn_like(out)
    grad_nchw = grad_cl.contiguous()
    same = timed(lambda: torch.ops.aten.threshold_backward(grad_cl, out, 0), n=50)
    mixed = timed(lambda: torch.ops.aten.threshold_backward(grad_nchw, out, 0), n=50)
    print(f"ReLU backward 128x16x32x32 bf16: layouts match {same:.2f} ms, mixed {mixed:.2f} ms")


def shortcut_subsampling() -> None:
    """Option A's stride-2 subsampling + channel padding, forward and backward: slice against 1x1 pool."""
    for dtype in (torch.float32, torch.bfloat16):
        for fmt, label in ((torch.contiguous_format, "NCHW"), (torch.channels_last, "channels_last")):
            x = torch.randn(128, 16, 32, 32).to(dtype).contiguous(memory_format=fmt).requires_grad_()
            g = torch.randn(128, 32, 16, 16).to(dtype).contiguous(memory_format=fmt)
            sliced = timed(lambda: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, 16)).backward(g))
            pooled = timed(lambda: F.pad(F.avg_pool2d(x, 1, 2), (0, 0, 0, 0, 0, 16)).backward(g))
            print(f"shortcut {str(dtype)[6:]:8s} {label:13s}: slice {sliced:.2f} ms, 1x1 avg pool {pooled:.2f} ms")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="resnet20")
    per_call(p.parse_args().model)
    mixed_layouts()
    shortcut_subsampling()
