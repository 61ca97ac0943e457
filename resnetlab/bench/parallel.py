"""``resnetlab bench parallel``: the training throughput of K runs sharing one machine, K = 1, 2, 4, ...

A CIFAR ResNet at batch 128 leaves a large GPU idle between kernel launches (docs/benchmarks.md: every
compile mode ran at 0.9-1.1x eager on an H100), and on a 2-core CPU one two-thread run pays a barrier at
every operator. Either way K independent runs (``reproduce --parallel K``) may get more images through
than one. This measures it with the training loop's own pieces: each of K processes builds its run with
:func:`resnetlab.engine.train.build_run` (data on the device as uint8, the recipe's model and optimizer,
``--cuda-graphs`` when asked) and steps it with :func:`resnetlab.engine.train.train_step`. All K warm up
(graph capture included), wait at one barrier, then train for the same ``seconds``; only that window
is timed, synchronised with the device at both ends.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import statistics
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..engine import distributed
from ..engine.config import TrainConfig
from ..engine.graphs import check_cuda_graphs
from ..engine.train import LoopState, build_run, fast_defaults, resolve_run, train_step
from ..errors import UserError
from ..hardware import device_name
from .runner import synchronize

BARRIER_TIMEOUT_S = 900.0  # set-up of the slowest process: imports, data to the device, warm-up and capture


@dataclass(frozen=True)
class ParallelPoint:
    """K concurrent runs: each one's images/s over the common timed window."""

    procs: int
    threads: int
    per_run_img_s: list[float]

    @property
    def total_img_s(self) -> float:
        return sum(self.per_run_img_s)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_img_s": self.total_img_s}


@dataclass(frozen=True)
class ParallelResult:
    """The points of one ``bench parallel`` and what they ran on."""

    model: str
    recipe: str
    batch_size: int
    device: str
    amp: str
    cuda_graphs: bool
    seconds: float
    points: list[ParallelPoint]

    def to_dict(self) -> dict[str, Any]:
        return {**{k: v for k, v in asdict(self).items() if k != "points"},
                "points": [p.to_dict() for p in self.points]}


def _worker(cfg: TrainConfig, threads: int, warmup: int, seconds: float, barrier: Any, results: Any,
            index: int) -> None:
    """One of K runs: build, warm up, meet the others, train ``seconds``; put (index, img/s) or (index, error)."""
    try:
        torch.set_num_threads(threads)
        info = distributed.setup(cfg.device)
        run = build_run(resolve_run(cfg), [], lambda _m: None, info)
        state = LoopState.start(run)
        for _ in range(warmup):
            train_step(run, state)
        synchronize(info.device)
        barrier.wait(BARRIER_TIMEOUT_S)
        start, steps = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            train_step(run, state)
            steps += 1
        synchronize(info.device)
        results.put((index, steps * cfg.batch_size / (time.perf_counter() - start), None))
    except BaseException as exc:  # noqa: BLE001 - reported by the parent, which fails the measurement
        barrier.abort()
        results.put((index, None, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"))


def measure_point(cfg: TrainConfig, procs: int, threads: int, warmup: int, seconds: float) -> ParallelPoint:
    """``procs`` concurrent runs of ``cfg`` (``threads`` torch threads each) timed over one common window."""
    ctx = mp.get_context("spawn")  # CUDA cannot be used in a forked child
    barrier, results = ctx.Barrier(procs), ctx.Queue()
    with tempfile.TemporaryDirectory(prefix="resnetlab-parallel-") as tmp:
        workers = [ctx.Process(target=_worker, daemon=True,
                               args=(cfg.replace(out=str(Path(tmp) / f"run{i}")), threads, warmup, seconds,
                                     barrier, results, i))
                   for i in range(procs)]
        for w in workers:
            w.start()
        try:
            got = _collect(workers, results, deadline=time.monotonic() + BARRIER_TIMEOUT_S + 2 * seconds + 60)
        except BaseException:
            for w in workers:  # the others may wait at the barrier for minutes: no point in waiting for them
                w.kill()
            raise
        finally:
            for w in workers:
                w.join(timeout=30)
                if w.is_alive():
                    w.kill()
    return ParallelPoint(procs, threads, [got[i] for i in range(procs)])


def _collect(workers: list[Any], results: Any, deadline: float) -> dict[int, float]:
    """Each worker's img/s; a reported error, a worker that died without reporting (killed, out of memory)
    or the deadline is one UserError, at once rather than at the deadline."""
    got: dict[int, float] = {}
    n = len(workers)
    while len(got) < n:
        try:
            index, img_s, error = results.get(timeout=1.0)
        except queue.Empty:
            dead = [(i, w.exitcode) for i, w in enumerate(workers) if w.exitcode not in (None, 0) and i not in got]
            if dead:
                raise UserError(f"bench parallel: run {dead[0][0] + 1} of {n} exited with status {dead[0][1]} "
                                "before reporting") from None
            if time.monotonic() > deadline:
                raise UserError(f"bench parallel: {n - len(got)} of {n} runs did not report in time") from None
            continue
        if error is not None:
            raise UserError(f"bench parallel: run {index + 1} of {n} failed: {error.splitlines()[0]}")
        got[index] = img_s
    return got


def default_threads(procs: int) -> int:
    """torch threads per run: the cores shared out (a CPU run's speed; on a GPU they only feed the launches)."""
    return max(1, (os.cpu_count() or 1) // procs)


def run_parallel_bench(cfg: TrainConfig, procs: list[int], *, seconds: float = 10.0, warmup: int = 5,
                       threads: int | None = None, log: Callable[[str], None] | None = None) -> ParallelResult:
    """Measure ``cfg`` at each K in ``procs``; ``threads`` per run (default :func:`default_threads`)."""
    log = log or (lambda _m: None)
    if not procs or min(procs) < 1:
        raise UserError("--procs takes positive counts, e.g. 1,2,4,8")
    if seconds <= 0 or warmup < 1:
        raise UserError("--seconds must be positive and --warmup at least 1")
    if cfg.cuda_graphs and warmup < 5:
        raise UserError("--cuda-graphs needs --warmup 5 or more (3 eager steps, the capture, a replay)")
    device = distributed.resolve_device(cfg.device)
    amp = fast_defaults(cfg, device)[1]
    if cfg.cuda_graphs:  # the training loop's own check, here rather than in K processes
        check_cuda_graphs(device, amp, cfg.compile, world=1)
    from ..data import open_data
    from ..models.profile import meta_model

    meta_model(cfg.model, **cfg.model_args)  # an unknown model is one line here, not K failed processes
    open_data(cfg.data, val_split=cfg.val_split, subset=cfg.subset, seed=cfg.split_seed, image_size=cfg.image_size,
              log=log)  # once here: a bad --data is one line, and the K runs find the decoded images cached
    points = []
    for k in procs:
        n = threads or default_threads(k)
        log(f"{k} run(s) of {cfg.model}, {n} thread(s) each: setting up, then {seconds:g} s timed")
        points.append(measure_point(cfg, k, n, warmup, seconds))
        log(f"  {points[-1].total_img_s:,.0f} img/s in all")
    return ParallelResult(cfg.model, cfg.recipe, cfg.batch_size, device_name(device, threads=False),
                          amp, cfg.cuda_graphs, seconds, points)


def format_parallel(result: ParallelResult) -> str:
    """The table: K, threads per run, total img/s, per-run median (range), and the total against one run."""
    first = result.points[0]
    head = (f"bench parallel: {result.model}, batch {result.batch_size}, recipe {result.recipe}, {result.device}, "
            f"amp {result.amp}{', CUDA graphs' if result.cuda_graphs else ''}, "
            f"{result.seconds:g} s timed per point")
    lines = [head, "", "| runs | threads per run | img/s in all | img/s per run, median (range) | in all vs "
             f"{first.procs} run{'s' if first.procs != 1 else ''} |", "|---:|---:|---:|---:|---:|"]
    for p in result.points:
        per = p.per_run_img_s
        lines.append(f"| {p.procs} | {p.threads} | {p.total_img_s:,.0f} | {statistics.median(per):,.0f} "
                     f"({min(per):,.0f}-{max(per):,.0f}) | {p.total_img_s / first.total_img_s:.2f}x |")
    return "\n".join(lines)
