"""An experiment is a list of training runs: each one a ``resnetlab train`` run folder, resumable.

:func:`ensure_run` is the only way an experiment trains anything. It looks at the
run's folder and does what is left to do:

* ``summary.json`` present: the run finished; read its history, train nothing;
* ``last.pt`` present: the run was interrupted; continue it with the engine's
  exact ``--resume`` (same weights, optimizer, RNG and schedule as if never stopped);
* otherwise: start it.

So the state of an experiment is its run folders, nothing else, and re-invoking an
interrupted experiment repeats no finished run. A folder that holds a run of some
other configuration (another budget, model or data) is refused rather than mixed in.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..engine.config import RECIPES, TrainConfig, recipe_config, saved_split_seed
from ..engine.train import read_metrics, train
from ..errors import UserError

# Fields that define what a run computes; a folder whose config differs in any of them is another run
# (reused only when all match: length, recipe fields, augmentation, precision, compile, data and split).
IDENTITY_FIELDS = ("model", "model_args", "data", "val_split", "subset", "split_seed", "recipe", "batch_size", "lr",
                   "iters", "epochs", "schedule", "milestones", "gamma", "warmup_iters", "warmup_lr", "momentum",
                   "nesterov", "weight_decay", "decay_norm_and_bias", "label_smoothing", "augment", "pad",
                   "policy", "cutout", "mix", "mix_alpha", "ema_decay",
                   "normalize", "tta_flip", "amp", "compile", "cuda_graphs", "seed")
# Of those, the ones that say how a run was computed rather than what: a finished run brought in with
# ``reproduce --from`` may differ in them (a bf16 run in an fp32 report), and the report's table states,
# per network, the precision it used.
RUNTIME_FIELDS = ("amp", "compile", "cuda_graphs")


class ExperimentInterrupted(UserError):
    """A run stopped on SIGINT/SIGTERM with a checkpoint; re-running the same command continues it."""


@dataclass(frozen=True)
class RunSpec:
    """One run of an experiment: folder name, model and constructor overrides, seed and a legend label."""

    name: str
    model: str
    label: str
    seed: int = 0
    model_args: dict[str, Any] = field(default_factory=dict)
    group: str = ""


@dataclass
class RunRecord:
    """A finished run as an experiment sees it: its folder, history (metrics.jsonl) and summary."""

    spec: RunSpec
    out_dir: Path
    history: list[dict[str, Any]]
    summary: dict[str, Any]
    config: dict[str, Any]
    trained_now: bool

    @property
    def final(self) -> dict[str, Any]:
        """The last evaluation record (end of training)."""
        return self.history[-1] if self.history else (self.summary.get("last") or {})

    @property
    def wall_time(self) -> float:
        """Seconds the run took, summed over all its (resumed) sessions, as the engine recorded it."""
        return float(self.summary.get("wall_time") or 0.0)


def run_state(run_dir: Path) -> str:
    """``"done"`` (summary.json), ``"partial"`` (last.pt, no summary) or ``"new"``."""
    if (run_dir / "summary.json").is_file():
        return "done"
    if (run_dir / "last.pt").is_file():
        return "partial"
    return "new"


def first_difference(saved: dict[str, Any], cfg: TrainConfig, ignore: Sequence[str] = ()) -> str | None:
    """The first identity field in which a run folder's config.json differs from ``cfg``, in words; None: same run.

    A field the folder's config lacks (written by an older version) counts as the default it had then:
    ``TrainConfig``'s own default. Fields in ``ignore`` are not compared.
    """
    want = cfg.to_dict()
    defaults = TrainConfig().to_dict()
    saved = {**saved, "split_seed": saved_split_seed(saved)}
    for key in (k for k in IDENTITY_FIELDS if k not in ignore):
        a, b = saved.get(key, defaults.get(key)), want.get(key)
        if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
            a, b = list(a or []), list(b or [])
        if a != b:
            return f"{key}: the folder's run has {a!r}, this experiment wants {b!r}"
    return None


def read_run(spec: RunSpec, run_dir: Path, trained_now: bool = False) -> RunRecord:
    """Load a finished run folder (config.json, metrics.jsonl, summary.json) into a :class:`RunRecord`."""
    history = read_metrics(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    return RunRecord(spec, run_dir, history, summary, config, trained_now)


def ensure_run(spec: RunSpec, cfg: TrainConfig, runs_dir: Path,
               log: Callable[[str], None] = print) -> RunRecord:
    """Finish ``spec`` in ``runs_dir/spec.name`` with ``cfg`` (start, resume or just read it); see the module doc."""
    run_dir = runs_dir / spec.name
    cfg = cfg.replace(model=spec.model, model_args=dict(spec.model_args), seed=spec.seed, out=str(run_dir))
    state = run_state(run_dir)
    if state != "new" and (run_dir / "config.json").is_file():
        diff = first_difference(json.loads((run_dir / "config.json").read_text()), cfg)
        if diff:
            raise UserError(f"{run_dir} holds a different run ({diff}); pick another --out/--runs or delete that "
                            "folder")
    if state == "done":
        log(f"[{spec.name}] finished earlier; reusing {run_dir}")
        return read_run(spec, run_dir)
    if state == "partial":
        log(f"[{spec.name}] continuing the interrupted run in {run_dir}")
        cfg = cfg.replace(resume=str(run_dir))
    else:
        log(f"[{spec.name}] training {spec.model} {spec.model_args or ''} seed {spec.seed} -> {run_dir}")
    result = train(cfg, argv=["resnetlab-reproduce", spec.name], log=log)
    if result.status != "completed":
        raise ExperimentInterrupted(
            f"stopped during {spec.name} at iteration {result.step} of {result.total}; run the same command "
            "again to continue (finished runs are not repeated)")
    return read_run(spec, run_dir, trained_now=True)


def run_all(specs: Sequence[RunSpec], cfg: TrainConfig, runs_dir: Path,
            log: Callable[[str], None] = print, parallel: int = 1, threads: int | None = None) -> list[RunRecord]:
    """:func:`ensure_run` for every spec; an interruption stops the experiment (resumable).

    ``parallel=K`` trains K runs at once in K processes (each its own run folder, ``threads`` torch
    threads each), so a device that one small CIFAR run cannot fill (a launch-bound GPU, a CPU whose
    cores one run's threads leave waiting) is used K times over. Records come back in ``specs`` order.
    """
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate run names in {names}")
    if parallel < 1:
        raise UserError(f"--parallel must be at least 1, got {parallel}")
    if parallel == 1 or len(specs) < 2:
        return [ensure_run(spec, cfg, runs_dir, log) for spec in specs]
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: a forked child would inherit torch's thread pools and any CUDA context mid-use.
    with ProcessPoolExecutor(max_workers=parallel, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(_run_in_process, spec, cfg, runs_dir, threads) for spec in specs]
        try:
            return [f.result() for f in futures]
        except KeyboardInterrupt:  # the workers got the SIGINT too: each saves its checkpoint and stops
            pool.shutdown(wait=True, cancel_futures=True)
            raise ExperimentInterrupted("interrupted; run the same command again to continue (finished runs "
                                        "are not repeated)") from None


def _run_in_process(spec: RunSpec, cfg: TrainConfig, runs_dir: Path, threads: int | None) -> RunRecord:
    """One run of :func:`run_all` in a worker process; its log lines carry the run's name."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    return ensure_run(spec, cfg, runs_dir, log=lambda msg: print(f"[{spec.name}] {msg}", flush=True))


def copy_metrics(records: Sequence[RunRecord], dest: Path) -> list[str]:
    """Copy each run's metrics.jsonl and config.json to ``dest/<run>/`` (small files only, no checkpoints).

    Used when the run folders (with their .pt files) live outside the report folder,
    so the report folder still carries every curve's raw numbers.
    """
    written = []
    for rec in records:
        target = dest / rec.spec.name
        target.mkdir(parents=True, exist_ok=True)
        for name in ("metrics.jsonl", "config.json"):
            if (rec.out_dir / name).is_file() and (rec.out_dir / name).resolve() != (target / name).resolve():
                shutil.copyfile(rec.out_dir / name, target / name)
                written.append(str(target / name))
    return written


# --------------------------------------------------------------------------------------------- numbers


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value; NaN mean for none)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return float("nan"), float("nan")
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def fmt_pct(mean: float, std: float | None = None, digits: int = 2) -> str:
    """``12.34`` or ``12.34 ± 0.56`` from fractions (error rates are stored as fractions, shown in %)."""
    if mean is None or not math.isfinite(mean):
        return "n/a"
    if std is None:
        return f"{100 * mean:.{digits}f}"
    return f"{100 * mean:.{digits}f} ± {100 * std:.{digits}f}"


def fmt_stat(stat: dict[str, Any], with_std: bool = True) -> str:
    """One ``run_summary`` statistic (``{"mean", "std", ...}``) as :func:`fmt_pct` text, ± std if asked."""
    return fmt_pct(stat["mean"], stat["std"] if with_std else None)


def average_histories(histories: Sequence[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Average the numeric fields of several histories at the iterations all of them share (seeds of one config)."""
    if len(histories) == 1:
        return list(histories[0])
    common = set.intersection(*({m["iteration"] for m in h} for h in histories))
    by_iter = [{m["iteration"]: m for m in h} for h in histories]
    out = []
    for it in sorted(common):
        rows = [h[it] for h in by_iter]
        rec: dict[str, Any] = {"iteration": it}
        for key in ("train_err", "train_loss", "val_top1_err", "val_loss"):
            vals = [r.get(key) for r in rows]
            if all(v is not None for v in vals):
                rec[key] = statistics.fmean(vals)
        out.append(rec)
    return out


def base_config(budget: "Budget", data: str | None, val_split: int | None, device: str,
                iters: int | None = None, amp: str = "none", compile: bool = False,
                cuda_graphs: bool = False) -> TrainConfig:
    """The paper-cifar recipe (He et al. 2015 Sec. 4.2) with the budget's length and runtime settings.

    fp32 without compile unless asked: the paper trained in fp32, and a reproduction should differ from
    it only where its report says so.
    """
    iters = iters or budget.iters
    eval_every = math.ceil(iters / budget.evals) if budget.evals else None
    recipe = RECIPES["paper-cifar"].values
    # The whole schedule scales with the run: the milestones are fractions already, and the
    # 400-iteration lr-0.01 warm-up of 110+ layer nets (Sec. 4.2) becomes the same fraction of
    # the run. Unscaled, a 640-iteration ResNet-110 would warm up past both lr drops and never
    # see lr 0.1 at all.
    warmup = round(recipe["warmup_iters"] * iters / recipe["iters"])
    cfg = recipe_config(
        "paper-cifar", data=data, iters=iters, batch_size=budget.batch_size,
        val_split=budget.val_split if val_split is None else val_split, subset=budget.subset,
        compile=compile, cuda_graphs=cuda_graphs, amp=amp, eval_every=eval_every, device=device,
        warmup_iters=warmup,
    )
    if budget.ramp is None:
        return cfg
    # A deviation, for budgets too short to recover from a bad start (see Budget.ramp): a linear
    # ramp to lr 0.1 over the first fraction of the run, for every depth, plain and residual alike.
    return dataclasses.replace(cfg, warmup_iters=max(1, round(budget.ramp * iters)), warmup_lr=None,
                               warmup_min_depth=0)


@dataclass(frozen=True)
class Budget:
    """How long each run trains, on what slice of the data, and with which runtime settings."""

    name: str
    iters: int
    description: str
    batch_size: int = 128
    val_split: int = 5000
    subset: int = 0
    evals: int | None = None  # evaluations per run; None: the engine's default (about 20, at most once an epoch)
    threads: int | None = None  # torch intra-op threads; None leaves torch's default
    # Fraction of the run spent ramping the lr linearly up to 0.1, for every depth; None keeps the
    # paper's warm-up (constant 0.01 for 110+ layers, Sec. 4.2), scaled to the run's length.
    ramp: float | None = None
