"""``resnetlab bench``: every execution mode of a model measured side by side in one run.

:mod:`.modes` defines the modes as data (memory format, autocast, compile, BN folding,
onnxruntime); :mod:`.runner` builds each from the same weights, checks that its outputs
match the ``eager-fp32`` reference, and times them interleaved against the machine's
own measured matmul peak. See ``docs/benchmarks.md`` for results on the project's machine.
"""

from .modes import DEFAULT, MODES, REFERENCE, Mode, default_mode, default_modes, emulated, modes_for, resolve_modes
from .runner import TOLERANCE, BenchResult, Measurement, ModeResult, format_result, matmul_peak, run_bench

__all__ = [
    "DEFAULT", "MODES", "REFERENCE", "TOLERANCE", "BenchResult", "Measurement", "Mode", "ModeResult", "default_mode",
    "default_modes", "emulated", "format_result", "matmul_peak", "modes_for", "resolve_modes", "run_bench",
]
