"""The one place that decides what the hardware can do fast.

Every hardware-dependent choice in the project (the default precision of ``resnetlab train``,
the bench's default modes, the "emulated" label on a mode) asks :func:`native_bf16`, so a test
can force either answer with ``monkeypatch`` or the environment variable below, and no test
depends on the CPU it happens to run on.

Why it matters: on a CPU with AVX512-BF16 or AMX, oneDNN computes bf16 convolutions natively and
bf16 autocast makes a ResNet-20 training step 1.4-1.6x faster than fp32 (docs/benchmarks.md).
On an AVX2-only CPU (AMD Zen 3, older Intel) bf16 is emulated by converting to fp32 and back,
and the same step is several times *slower* than fp32.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch

# "1" or "0" forces the answer for CPUs: to reproduce an AVX2 machine's choices on an AVX-512 one
# (RESNETLAB_NATIVE_BF16=0; add ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 for its kernels too).
ENV_VAR = "RESNETLAB_NATIVE_BF16"
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})  # /proc/cpuinfo names of native bf16 arithmetic


def cpu_flags() -> frozenset[str]:
    """The instruction-set flags Linux reports for this CPU (empty where there is no /proc/cpuinfo)."""
    return frozenset(word for line in _cpuinfo_lines() for word in line.split())


@dataclass(frozen=True)
class Bf16Support:
    """Whether a device computes bf16 natively, and the reason in words."""

    native: bool
    reason: str


def cpu_bf16() -> Bf16Support:
    """bf16 on this CPU: native with AVX512-BF16 or AMX, emulated otherwise; ``RESNETLAB_NATIVE_BF16`` overrides."""
    forced = os.environ.get(ENV_VAR, "").strip()
    if forced in ("0", "1"):
        return Bf16Support(forced == "1", f"{ENV_VAR}={forced}")
    found = sorted(cpu_flags() & BF16_FLAGS)
    if found:
        return Bf16Support(True, f"the CPU has {'/'.join(f.upper() for f in found)}")
    return Bf16Support(False, "the CPU has no AVX512-BF16 or AMX, so bf16 would be emulated (slower than fp32)")


def bf16_support(device: torch.device) -> Bf16Support:
    """bf16 on ``device``: CUDA asks the driver (Ampere and later), CPUs go through :func:`cpu_bf16`."""
    if device.type == "cuda":
        native = bool(torch.cuda.is_bf16_supported())
        return Bf16Support(native, "the GPU supports bf16" if native else "the GPU has no bf16 (before Ampere)")
    return cpu_bf16()


def native_bf16(device: torch.device) -> bool:
    """True where bf16 autocast runs natively on ``device`` (the capability check every choice goes through)."""
    return bf16_support(device).native


def cpu_name() -> str:
    """The CPU's model name as Linux reports it (else the platform's word for it)."""
    for line in _cpuinfo_lines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _cpuinfo_lines() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


def device_name(device: torch.device, threads: bool = True) -> str:
    """``cuda (NVIDIA H200)`` or ``cpu (AMD EPYC, AVX512 kernels, 2 threads, native bf16)``: a report's hardware.

    The kernels' instruction set (ATen's CPU capability) is named because a hypervisor may
    report one model name ("AMD EPYC") for CPUs several times apart in speed: here a Zen 3
    (AVX2) and a Zen 4 (AVX-512 with AVX512-BF16) both say "AMD EPYC".
    """
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    n = torch.get_num_threads()
    count = f"{n} thread{'s' if n != 1 else ''}, " if threads else ""  # False: a report with a threads column
    bf16 = "native bf16" if native_bf16(device) else "bf16 emulated"
    kernels = torch.backends.cpu.get_cpu_capability()
    return f"cpu ({cpu_name()}, {kernels} kernels, {count}{bf16})"
