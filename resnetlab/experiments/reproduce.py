"""``resnetlab reproduce NAME``: the paper's CIFAR-10 experiments, each one command from training to report.

Every experiment is a list of runs (:class:`~resnetlab.experiments.runs.RunSpec`) trained by
the same engine, recipe (``paper-cifar``, He et al. 2015 Sec. 4.2) and checkpoints as
``resnetlab train``, then one analysis that reads the run folders and draws the figure:

* ``degradation``: plain-20/32/44/56 vs ResNet-20/32/44/56 (He et al. 2015 Fig. 6);
* ``table6``: ResNet-20/32/44/56/110 (and 1202 with ``with_1202``) against Table 6;
* ``layer-responses``: std of each 3x3 layer's response, plain-20/56 vs ResNet-20/56/110 (Fig. 7);
* ``shortcuts``: options A/B/C on ResNet-20/32 (the CIFAR analogue of Table 3);
* ``preact``: original vs pre-activation units, ResNet-110/164 (He et al. 2016 Table 3).

A budget sets how long each run trains: ``full`` is the paper's 64k iterations,
``short`` the same schedule scaled down (milestones are fractions of the run, so the
lr still drops at 50% and 75%), ``smoke`` a few iterations on a few images for tests.
The output folder gets ``report.md``, ``results.json``, ``config.json`` and PNG figures
(:func:`~resnetlab.experiments.report.write_report`); the run folders go to
``OUT/runs/<run>/`` unless ``runs_dir`` puts them (and their checkpoints) elsewhere.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .. import __version__
from ..data import MemoryLoader, open_data
from ..weights import load_checkpoint, model_from_checkpoint
from ..engine.config import TrainConfig, check_amp, saved_split_seed
from ..engine.distributed import resolve_device
from ..engine.curves import plot_error_curves
from ..engine.train import read_metrics, session_hardware, session_precision
from ..errors import UserError
from ..hardware import device_name
from ..models.profile import count_params, meta_model
from .layer_responses import measure_responses
from .plots import caption_line, new_figure, require_matplotlib, save_figure
from .report import markdown_table, write_report
from .runs import (RUNTIME_FIELDS, Budget, RunRecord, RunSpec, average_histories, base_config, copy_metrics,
                   ensure_run, first_difference, fmt_pct, fmt_stat, mean_std, read_run, run_all, run_state)

# --------------------------------------------------------------------------------------------- budgets

PAPER_ITERS = 64_000  # He et al. 2015 Sec. 4.2: stop at 64k iterations (lr /10 at 32k and 48k)
# The short budget, ~3% of the paper's run, sized on this project's idle 2-core CPU (2 threads,
# torch.compile + bf16 autocast + channels_last): a training iteration of batch 128 costs ~0.09 s
# (ResNet-20) to ~0.23 s (56 layers), so one iteration of all eight `degradation` networks is ~1.3 s;
# 2,000 iterations + 16 evaluations of 5,000 images + 8 compilations come to about 50 minutes.
# Reproductions now train in fp32 by default, as the paper did (`--amp bf16 --compile` restore that
# speed and are written into the report): fp32 is about 1.5x slower on an AVX512-BF16 CPU.
# (The first short budget, 640 iterations, was sized on a loaded machine and was too short for the
# deeper ResNets to get past their first few hundred iterations at lr 0.1; see docs/results.)
SHORT_ITERS = 2000
SHORT_EVALS = 16
SHORT_RAMP = 0.1  # fraction of the short run spent on the lr ramp (see the budget)

BUDGETS: dict[str, Budget] = {
    "full": Budget("full", PAPER_ITERS, "the paper's schedule: 64k iterations, lr 0.1, /10 at 32k and 48k"),
    # One thread: on the loaded 2-core machine two OpenMP threads that wait for each other at every
    # barrier were 2-5x *slower* than one (ResNet-20 eager: 59-204 vs 268-324 img/s; compiled: 84 vs
    # 425 img/s); `--threads 2` gives the second core back on an idle machine.
    # The warm-up is this budget's one deviation from the recipe, measured (ResNet-56, bf16, 300
    # iterations, seed 0; docs/results/degradation): at lr 0.1 from the first step the training loss
    # sits at chance (2.29 at iteration 300, validation error 69%); the paper's remedy, lr 0.01 first
    # (Sec. 4.2), brings it to ~1.9, but the jump to 0.1 after 100 or 200 iterations spikes the
    # loss to 4.9-5.6 and back to chance (73% / 90% validation error at 300); a linear ramp to 0.1
    # over the first 200 iterations reaches 1.87 (54%). A 64k run recovers from a bad start; a 2k
    # run, whose lr drops at 50%, does not, so the short budget ramps every network alike.
    "short": Budget("short", SHORT_ITERS,
                    f"the paper's schedule scaled to {SHORT_ITERS:,} iterations ({SHORT_ITERS / PAPER_ITERS:.0%} of "
                    f"64k): lr 0.1, /10 at {SHORT_ITERS // 2:,} and {SHORT_ITERS * 3 // 4:,}; one deviation: every "
                    f"network (plain and residual, every depth) ramps the lr linearly from 0 to 0.1 over the first "
                    f"{SHORT_RAMP:.0%} ({round(SHORT_RAMP * SHORT_ITERS)} iterations) instead of the paper's "
                    f"lr-0.01 warm-up of 110+ layers, because at this length a bad start at lr 0.1 is never "
                    f"recovered from; {SHORT_EVALS} evaluations per run",
                    evals=SHORT_EVALS, threads=1, ramp=SHORT_RAMP),
    # One thread for the same reason; a ResNet-56 smoke run took 2.4 s with one thread, 20 s with two.
    # One evaluation (at the end): the smoke runs of every experiment are most of the test suite's reproduce time.
    "smoke": Budget("smoke", 2, "2 iterations of batch 8 on 32 images, for tests: checks plumbing, not results",
                    batch_size=8, val_split=20, subset=32, evals=1, threads=1),
}

RUN_LOGS = "run-logs"  # copies of metrics.jsonl/config.json when the run folders live elsewhere
PLAIN_COLOR = {20: "#f4a582", 32: "#d6604d", 44: "#b2182b", 56: "#67001f"}
RESNET_COLOR = {20: "#92c5de", 32: "#4393c3", 44: "#2166ac", 56: "#053061", 110: "#000000"}


# --------------------------------------------------------------------------------------------- plumbing


@dataclass
class Context:
    """What an experiment function gets: where to write, what budget and data, how many seeds."""

    name: str
    out: Path
    runs_dir: Path
    budget: Budget
    cfg: TrainConfig
    seeds: int
    log: Callable[[str], None]
    from_dirs: tuple[Path, ...] = ()  # --from: folders whose finished runs are read instead of trained
    finished_only: bool = False  # --finished-only: train nothing; report on the runs that are finished
    with_1202: bool = False
    images: int = 0  # layer-responses: images to measure on (0: the whole validation set)
    parallel: int = 1  # runs trained at once, one process each (runs.run_all)
    threads: int | None = None  # torch threads of each parallel run

    def run_all(self, specs: Sequence[RunSpec]) -> list[RunRecord]:
        """Train (or read back) ``specs``, ``parallel`` at a time."""
        return run_all(specs, self.cfg, self.runs_dir, self.log, self.parallel, self.threads)

    def specs(self, models: Sequence[tuple[str, str, dict[str, Any], str]]) -> list[RunSpec]:
        """One :class:`RunSpec` per (run name, model, model args, group) and seed 0..K-1."""
        return [RunSpec(f"{name}-s{seed}", model, name, seed, dict(args), group)
                for name, model, args, group in models for seed in range(self.seeds)]

    def seeds_text(self, curves: bool = False) -> str:
        """``seed 0`` or ``seeds 0..K-1`` (and, for figures, that curves are averaged over them)."""
        if self.seeds == 1:
            return "seed 0"
        return f"seeds 0..{self.seeds - 1}" + (", curves averaged over seeds" if curves else "")

    def schedule_text(self, records: Sequence[RunRecord] = ()) -> str:
        """The schedule for figure captions, with the resolved milestones of a run when there is one."""
        b = self.budget
        text = f"{b.name} budget: {self.cfg.iters:,} iterations (paper: 64k), batch {self.cfg.batch_size}, lr 0.1"
        if records:
            ms = records[0].config.get("resolved", {}).get("milestones_iters", [])
            if ms:
                text += ", /10 at " + " and ".join(f"{m:,}" for m in ms)
        return text

    def data_text(self, records: Sequence[RunRecord]) -> str:
        """The data a figure came from, as the engine described it."""
        sources = [r.config.get("resolved", {}).get("data_source", "?") for r in records]
        if len(set(sources)) == 1:
            return sources[0]
        # Runs from before split_seed existed held out (and subset) their own images per seed.
        return sources[0] + " (first run; the runs hold out different images)"

    def split_text(self, records: Sequence[RunRecord]) -> str:
        """Whether every run was scored on the same held-out images, for a report's spread over seeds."""
        split_seeds = {saved_split_seed(r.config) for r in records}
        if len(split_seeds) == 1:
            return (f"Every seed holds out the same validation images (split seed {split_seeds.pop()}), so the "
                    "spread is that of training alone.")
        return ("These runs hold out different validation images (split seeds "
                f"{', '.join(map(str, sorted(split_seeds)))}), so the spread includes that of the split.")


@dataclass
class Outcome:
    """What an experiment produced: report title and sections, numbers, settings, figures, console lines."""

    title: str
    sections: list[tuple[str, str]]
    results: dict[str, Any]
    figures: list[str]
    records: list[RunRecord]
    headline: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def verdict(ok: bool) -> str:
    """How a report states whether one of the paper's claims holds in this run."""
    return "**holds**" if ok else "**does not hold**"


def display_name(model: str) -> str:
    """``plain56`` -> ``plain-56``, ``resnet110`` -> ``ResNet-110`` (the paper's spelling)."""
    for prefix, shown in (("plain", "plain-"), ("resnet", "ResNet-")):
        if model.startswith(prefix) and model[len(prefix):].isdigit():
            return shown + model[len(prefix):]
    return model


def params_of(spec: RunSpec) -> int:
    """Parameters of a run's model (built on the meta device: no weights allocated)."""
    return count_params(meta_model(spec.model, **spec.model_args))


def group_by_label(records: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    """The records of each configuration (all seeds of one label), in first-seen order."""
    out: dict[str, list[RunRecord]] = {}
    for r in records:
        out.setdefault(r.spec.label, []).append(r)
    return out


def final_err(rec: RunRecord, key: str = "val_top1_err") -> float:
    """The error at the end of training (last evaluation), NaN when there is none."""
    value = rec.final.get(key)
    return float("nan") if value is None else float(value)


def best_err(rec: RunRecord) -> float:
    """The lowest validation error over one run's evaluations: optimistic, since it picks the evaluation on the
    very images it reports. Not the paper's "best": Table 6's "best (mean ± std)" for ResNet-110 is the
    best of 5 *runs* by final test error; :func:`run_summary` gives that as ``best_run_val_err``."""
    best = rec.summary.get("best") or {}
    return float(best.get("val_top1_err", float("nan")))


def run_summary(records: Sequence[RunRecord]) -> dict[str, Any]:
    """Per configuration: params, final train/val error and best val error (mean, std, per seed), wall times."""
    out = {}
    for label, recs in group_by_label(records).items():
        entry: dict[str, Any] = {"model": recs[0].spec.model, "model_args": recs[0].spec.model_args,
                                 "params": params_of(recs[0].spec), "seeds": [r.spec.seed for r in recs]}
        for key, fn in (("final_train_err", lambda r: final_err(r, "train_err")), ("final_val_err", final_err),
                        ("best_val_err", best_err)):
            vals = [fn(r) for r in recs]
            m, s = mean_std(vals)
            entry[key] = {"mean": m, "std": s, "per_seed": vals}
        finals = entry["final_val_err"]["per_seed"]
        best_seed = min(range(len(finals)), key=lambda i: (math.isnan(finals[i]), finals[i]))
        # As the paper's Table 6 reports ResNet-110: the best run by final error, beside the mean ± std.
        entry["best_run_val_err"] = {"value": finals[best_seed], "seed": recs[best_seed].spec.seed}
        entry["iters"] = [r.summary.get("total_iters") for r in recs]
        entry["precision"] = sorted({session_precision(r.config) for r in recs})
        entry["hardware"] = sorted({session_hardware(r.config) for r in recs})
        entry["wall_seconds"] = [round(r.wall_time, 1) for r in recs]
        entry["run_dirs"] = [str(r.out_dir) for r in recs]
        entry["history"] = average_histories([r.history for r in recs])
        out[label] = entry
    return out


def _ylim_top(histories: Sequence[list[dict[str, Any]]]) -> float:
    """An upper error limit (%) that shows the curves once past the first evaluation (paper Fig. 6 crops too)."""
    vals = [100 * m[k] for h in histories for m in h[1:] for k in ("train_err", "val_top1_err")
            if m.get(k) is not None and math.isfinite(m[k])]
    if not vals:
        vals = [100 * m[k] for h in histories for m in h for k in ("train_err", "val_top1_err") if m.get(k) is not None]
    return min(100.0, max(vals) * 1.08) if vals else 100.0


def _milestone_lines(ax: Any, records: Sequence[RunRecord]) -> None:
    """Dotted verticals at the lr drops of the schedule (paper Fig. 6 has its drops at 32k and 48k)."""
    ms = records[0].config.get("resolved", {}).get("milestones_iters", []) if records else []
    for m in ms:
        ax.axvline(m, color="0.6", linestyle=":", linewidth=1.0)


def curves_figure(path: Path, panels: Sequence[tuple[str, list[tuple[str, list[dict[str, Any]]]], list[str]]],
                  records: Sequence[RunRecord], caption: str, title: str) -> Path:
    """Paper-style error curves (thin dashed train, bold val), one panel per group, shared y-axis."""
    fig, axes = new_figure(1, len(panels), panel_size=(5.6, 4.8), sharey=True)
    top = _ylim_top([h for _, runs, _ in panels for _, h in runs])
    val_name = (records[0].config.get("resolved", {}).get("val_name") or "val") if records else "val"
    for ax, (panel_title, runs, colors) in zip(axes[0], panels):
        # Legend below the axes: inside, it would hide the ends of the deep nets' curves.
        plot_error_curves(ax, runs, colors, val_name=val_name, legend=dict(
            fontsize=7, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.16), frameon=False))
        _milestone_lines(ax, records)
        ax.set_title(panel_title, fontsize=10)
        ax.set_ylim(0, top)
        ax.tick_params(labelleft=True)
    return save_figure(fig, path, caption, title)


# --------------------------------------------------------------------------------------------- experiments as data


@dataclass(frozen=True)
class Column:
    """A report table column: its header and its cell for one configuration, ``cell(ctx, label, summary[label])``."""

    header: str
    cell: Callable[[Context, str, dict[str, Any]], Any]


@dataclass(frozen=True)
class Check:
    """One of the paper's claims: whether it holds, and the sentence (with its numbers) saying what was compared.

    Both are pure functions of the experiment's summary, so each can be tested on synthetic summaries.
    """

    holds: Callable[[dict[str, Any]], bool]
    claim: Callable[[dict[str, Any]], str]


RunList = Sequence[tuple[str, str, dict[str, Any], str]]  # (label, model, model args, group)


def _run_folder_config(folder: Path) -> dict[str, Any] | None:
    """The config.json of a ``resnetlab train`` run folder (not of an experiment's report folder), else None."""
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return cfg if isinstance(cfg, dict) and "model" in cfg and "experiment" not in cfg else None


def _candidates(from_dir: Path, spec: RunSpec) -> list[Path]:
    """Where one ``--from`` folder may hold ``spec``'s finished run.

    The folder itself when it is a run of the same model, arguments and seed (``runs/paper-r20``, or a
    committed log folder such as ``docs/results/paper-cifar-resnet20``); otherwise ``DIR/<run>``,
    ``DIR/runs/<run>`` and the runs folder an experiment's config.json names.
    """
    own = _run_folder_config(from_dir)
    if own is not None:
        same = (own["model"], own.get("model_args") or {}, own.get("seed", 0)) == (spec.model, spec.model_args,
                                                                                 spec.seed)
        return [from_dir] if same else []
    candidates = [from_dir / spec.name, from_dir / "runs" / spec.name]
    try:
        runs_dir = json.loads((from_dir / "config.json").read_text()).get("runs_dir")
    except (OSError, ValueError):
        runs_dir = None
    if runs_dir:
        candidates.append(Path(runs_dir) / spec.name)
    return candidates


def _reusable(from_dirs: Sequence[Path], spec: RunSpec, cfg: TrainConfig, need_checkpoint: bool) -> Path | None:
    """A finished run folder for ``spec`` under one of ``from_dirs``, else None.

    Reused only when its identity matches ``cfg`` for this spec (:func:`first_difference`) in everything but
    how it was computed (:data:`RUNTIME_FIELDS`: precision, compile, CUDA graphs), which the report states
    per network; a folder that differs in anything else is refused in one line naming the field. Without
    ``last.pt`` (a committed log folder) a run serves reports that read its logs, not ``need_checkpoint`` ones.
    """
    want = cfg.replace(model=spec.model, model_args=dict(spec.model_args), seed=spec.seed)
    for from_dir in from_dirs:
        for c in _candidates(from_dir, spec):
            if not (c / "summary.json").is_file() or (need_checkpoint and not (c / "last.pt").is_file()):
                continue
            diff = first_difference(json.loads((c / "config.json").read_text()), want, ignore=RUNTIME_FIELDS)
            if diff:
                raise UserError(f"--from: {c} is not the run this experiment needs ({diff})")
            return c
    return None


def _reuse_or_train(ctx: Context, specs: list[RunSpec], need_checkpoint: bool = False) -> list[RunRecord]:
    """The finished runs of ``--from`` where their identity matches; the rest trained here (or, with
    ``--finished-only``, only read back where this experiment's runs folder has them finished)."""
    found = {s.name: _reusable(ctx.from_dirs, s, ctx.cfg, need_checkpoint) for s in specs}
    for name, folder in found.items():
        if folder is not None:
            ctx.log(f"[{name}] reusing the finished run in {folder}")
    rest = [s for s in specs if found[s.name] is None]
    if ctx.finished_only:
        rest = [s for s in rest if run_state(ctx.runs_dir / s.name) == "done"]
    own = {r.spec.name: r for r in ctx.run_all(rest)}
    return [read_run(s, found[s.name]) if found[s.name] is not None else own[s.name]
            for s in specs if found[s.name] is not None or s.name in own]


def _from_text(ctx: Context) -> str:
    """The ``--from`` folders, for a report's prose."""
    return ", ".join(f"`{d}`" for d in ctx.from_dirs)


def _reused(ctx: Context, records: Sequence[RunRecord]) -> dict[str, str]:
    """Run name -> folder, for the runs that came from ``--from`` rather than this experiment's runs folder."""
    if not ctx.from_dirs:
        return {}
    return {r.spec.name: str(r.out_dir) for r in records if r.out_dir.parent.resolve() != ctx.runs_dir.resolve()}


def _summarise_runs(_ctx: Context, records: list[RunRecord]) -> dict[str, Any]:
    return run_summary(records)


def _nothing(*_args: Any) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Experiment:
    """An experiment as data: its runs, table columns, figure and checks; :func:`render` writes the report.

    ``obtain`` trains the runs or reads back finished ones; ``collect`` turns the records into the
    per-configuration summary that columns, checks and figure read (default :func:`run_summary`);
    ``notes`` adds text after the checks, ``extra`` numbers to ``results.json``, ``config`` settings
    to ``config.json``.
    """

    name: str
    title: str
    runs: Callable[[Context], RunList]
    columns: Sequence[Column]
    what: Callable[[Context, list[RunRecord]], str]
    figure: Callable[[Context, dict[str, Any], list[RunRecord]], Path]
    headline: Callable[[dict[str, Any]], list[str]]
    checks: dict[str, Check] = field(default_factory=dict)
    claims_heading: str = ""
    table_heading: str = "Results"
    summary_key: str = "runs"
    obtain: Callable[[Context, list[RunSpec]], list[RunRecord]] = _reuse_or_train
    collect: Callable[[Context, list[RunRecord]], dict[str, Any]] = _summarise_runs
    notes: Callable[[Context, dict[str, Any], dict[str, bool], list[RunRecord]], str] | None = None
    extra: Callable[[Context, dict[str, Any], list[RunRecord]], dict[str, Any]] = _nothing
    config: Callable[[Context, list[RunRecord]], dict[str, Any]] = _nothing
    partial_ok: bool = False  # --finished-only may leave out unfinished configurations (table6: row by row)


def check_all(checks: dict[str, Check], summary: dict[str, Any]) -> dict[str, bool]:
    """Every named check over ``summary``."""
    return {name: c.holds(summary) for name, c in checks.items()}


def _not_finished(ctx: Context, exp: Experiment, runs: RunList, records: list[RunRecord]) -> list[str]:
    """With ``--finished-only``: the configurations that have no finished run, which the report leaves out.

    Only an experiment whose table and figure stand row by row (``partial_ok``) may leave some out; the
    claims of the others compare every configuration with every other.
    """
    present = {r.spec.label for r in records}
    missing = [label for label, *_ in runs if label not in present]
    where = f"`{ctx.runs_dir}`" + (f" or {_from_text(ctx)}" if ctx.from_dirs else "")
    if not present:
        raise UserError(f"--finished-only: no finished run of {exp.name} in {where}")
    if missing and not exp.partial_ok:
        raise UserError(f"--finished-only: {exp.name} compares all its networks, and "
                        f"{', '.join(map(display_name, missing))} have no finished run in {where}")
    return missing


def in_progress(ctx: Context, spec: RunSpec) -> tuple[Path, dict[str, Any], int] | None:
    """An unfinished run of ``spec`` (``last.pt``, no summary) in the runs folder or a ``--from`` folder:
    the folder, its last evaluation and its length in iterations."""
    for folder in [ctx.runs_dir / spec.name] + [c for d in ctx.from_dirs for c in _candidates(d, spec)]:
        if run_state(folder) != "partial":
            continue
        history = read_metrics(folder)
        try:
            total = json.loads((folder / "config.json").read_text())["resolved"]["total_iters"]
        except (OSError, ValueError, KeyError):
            continue
        if history:
            return folder, history[-1], int(total)
    return None


def _missing_text(ctx: Context, specs: Sequence[RunSpec], missing: Sequence[str]) -> str:
    """The report's words on the configurations a ``--finished-only`` report leaves out, and how far each is
    (its first seed's run)."""
    first_seed = {s.label: s for s in reversed(specs)}
    lines = []
    for label in missing:
        found = in_progress(ctx, first_seed[label])
        if found is None:
            lines.append(f"- {display_name(label)}: no run yet.")
            continue
        folder, last, total = found
        lines.append(f"- {display_name(label)}: in progress in `{folder}`, iteration {last['iteration']:,} of "
                     f"{total:,}; validation error {fmt_pct(last.get('val_top1_err', float('nan')))}% at that "
                     f"point (lr {last.get('lr', float('nan')):g}, not a final number).")
    where = f"`{ctx.runs_dir}`" + (f" or {_from_text(ctx)}" if ctx.from_dirs else "")
    return ("No finished run in " + where + " for:\n\n" + "\n".join(lines) + "\n\n`--finished-only` reports on "
            "the others and trains nothing; without it, the same command trains these (an interrupted run continues "
            "from its `last.pt`).")


def render(exp: Experiment, ctx: Context) -> Outcome:
    """Obtain the runs, then the report every experiment shares: what is run, the table, the checks, the budget."""
    runs = exp.runs(ctx)
    specs = ctx.specs(runs)
    records = exp.obtain(ctx, specs)
    missing = _not_finished(ctx, exp, runs, records)
    runs = [r for r in runs if r[0] not in missing]
    summary = exp.collect(ctx, records)
    checks = check_all(exp.checks, summary)
    figure = exp.figure(ctx, summary, records)
    table = markdown_table([c.header for c in exp.columns],
                           [[c.cell(ctx, label, summary[label]) for c in exp.columns] for label, *_ in runs])
    sections = [("What is run", exp.what(ctx, records)), (exp.table_heading, table)]
    if missing:
        sections.append(("Not trained yet", _missing_text(ctx, specs, missing)))
    if exp.checks or exp.notes:
        reading = "\n".join(f"- {c.claim(summary)}: {verdict(checks[n])}." for n, c in exp.checks.items())
        sections.append((exp.claims_heading, reading + (exp.notes(ctx, summary, checks, records) if exp.notes else "")))
    sections.append(("What this budget does and does not show", budget_note(ctx, exp.name)))
    results = {exp.summary_key: summary, **({"checks": checks} if exp.checks else {}),
               **({"not_trained": missing} if missing else {}), **exp.extra(ctx, summary, records)}
    return Outcome(exp.title, sections, results, [figure.name], records, exp.headline(summary),
                   exp.config(ctx, records))


def network_cell(_ctx: Context, label: str, _e: dict[str, Any]) -> str:
    return display_name(label)


def params_cell(_ctx: Context, _label: str, e: dict[str, Any]) -> str:
    return f"{e['params']:,}"


def stat_cell(key: str, spread: bool = True) -> Callable[[Context, str, dict[str, Any]], str]:
    """A ``mean ± std`` cell of a :func:`run_summary` statistic (± only over several seeds when ``spread``)."""
    return lambda ctx, _label, e: fmt_stat(e[key], spread and ctx.seeds > 1)


def curve_panels(ctx: Context, summary: dict[str, Any], records: list[RunRecord], file: str, title: str,
                 panels: Sequence[tuple[str, Sequence[tuple[str, str, str]]]], extra: str) -> Path:
    """Paper-style curves, one panel per ``(title, [(label, legend, colour), ...])``."""
    drawn = [(t, [(legend, summary[label]["history"]) for label, legend, _ in runs], [c for *_, c in runs])
             for t, runs in panels]
    caption = caption_line(ctx.data_text(records), ctx.schedule_text(records), None, extra)
    return curves_figure(ctx.out / file, drawn, records, caption, title)


# --------------------------------------------------------------------------------------------- degradation

DEGRADATION_DEPTHS = (20, 32, 44, 56)


def start_up(records: Sequence[RunRecord]) -> dict[str, dict[str, float | None]]:
    """Per configuration (its first seed): the peak loss of iterations 1-20 and the loss at 40 and 200, from the
    ``early_losses`` the engine logs in a run's first metrics record (runs from before it have none)."""
    out: dict[str, dict[str, float | None]] = {}
    for label, recs in group_by_label(records).items():
        losses = (recs[0].history[0].get("early_losses") if recs[0].history else None) or []
        if losses:
            at = lambda i: losses[i - 1] if len(losses) >= i else None  # noqa: E731 - iteration i is losses[i-1]
            out[label] = {"peak_1_20": max(losses[:20]), "at_40": at(40), "at_200": at(200)}
    return out


def _finals(s: dict[str, Any], arch: str, key: str) -> list[float]:
    """``key``'s mean over seeds for ``arch`` at every degradation depth."""
    return [s[f"{arch}{d}"][key]["mean"] for d in DEGRADATION_DEPTHS]


def _pair(s: dict[str, Any], arch: str, key: str, what: str) -> str:
    """``(ResNet-56 12.34% vs ResNet-20 23.45% training)``; ``what`` may be empty."""
    v = _finals(s, arch, key)
    name = display_name(f"{arch}{DEGRADATION_DEPTHS[-1]}"), display_name(f"{arch}{DEGRADATION_DEPTHS[0]}")
    return f"({name[0]} {fmt_pct(v[-1])}% vs {name[1]} {fmt_pct(v[0])}%" + (f" {what})" if what else ")")


def _series(s: dict[str, Any], arch: str, key: str) -> str:
    return " / ".join(fmt_pct(v) for v in _finals(s, arch, key)) + "%"


def _gains(s: dict[str, Any]) -> list[float]:
    """Plain minus ResNet training error at every depth (points): what the residual form buys."""
    return [p - r for p, r in zip(_finals(s, "plain", "final_train_err"), _finals(s, "resnet", "final_train_err"))]


def _rising(v: list[float]) -> bool:
    return all(a < b for a, b in zip(v, v[1:]))


DEPTHS_TEXT = "/".join(map(str, DEGRADATION_DEPTHS))
# The claims of the paper's Fig. 6 over the final errors (mean over seeds).
DEGRADATION_CHECKS = {
    "plain56_train_err_above_plain20": Check(
        lambda s: _finals(s, "plain", "final_train_err")[-1] > _finals(s, "plain", "final_train_err")[0],
        lambda s: "Deeper plain net has higher *training* error " + _pair(s, "plain", "final_train_err", "")),
    "plain_train_err_rises_with_depth": Check(
        lambda s: _rising(_finals(s, "plain", "final_train_err")),
        lambda s: f"Plain training error strictly rising over {DEPTHS_TEXT} ({_series(s, 'plain', 'final_train_err')})"),
    "resnet56_val_err_below_resnet20": Check(
        lambda s: _finals(s, "resnet", "final_val_err")[-1] < _finals(s, "resnet", "final_val_err")[0],
        lambda s: "Deeper ResNet has lower error " + _pair(s, "resnet", "final_val_err", "validation")),
    "resnet_val_err_falls_with_depth": Check(
        lambda s: _rising(_finals(s, "resnet", "final_val_err")[::-1]),
        lambda s: f"ResNet validation error strictly falling over {DEPTHS_TEXT} "
                  f"({_series(s, 'resnet', 'final_val_err')})"),
    "resnet56_train_err_below_resnet20": Check(
        lambda s: _finals(s, "resnet", "final_train_err")[-1] < _finals(s, "resnet", "final_train_err")[0],
        lambda s: "Deeper ResNet has lower training error " + _pair(s, "resnet", "final_train_err", "training")),
    "resnet56_val_err_below_plain56": Check(
        lambda s: s["resnet56"]["final_val_err"]["mean"] < s["plain56"]["final_val_err"]["mean"],
        lambda s: f"ResNet-56 beats plain-56 on validation error ({fmt_stat(s['resnet56']['final_val_err'], False)}% "
                  f"vs {fmt_stat(s['plain56']['final_val_err'], False)}%)"),
    # Fig. 6 left against middle: at the same depth and parameter count the residual net trains better,
    # and by more the deeper the nets (the plain nets degrade, the residual ones far less).
    "resnet_train_err_below_plain_at_every_depth": Check(
        lambda s: all(g > 0 for g in _gains(s)),
        lambda s: "At every depth the ResNet has lower training error than the plain net with the same parameters"),
    "residual_gain_grows_with_depth": Check(
        lambda s: _gains(s)[-1] > _gains(s)[0],
        lambda s: "The gain (plain minus ResNet, points of training error) is larger at 56 layers than at 20 ("
                  + ", ".join(f"{d}: {fmt_pct(g)}" for d, g in zip(DEGRADATION_DEPTHS, _gains(s))) + ")"),
}


def degradation_checks(summary: dict[str, Any]) -> dict[str, bool]:
    """The claims of the paper's Fig. 6 as booleans over a run summary (``plain{d}``/``resnet{d}`` entries)."""
    return check_all(DEGRADATION_CHECKS, summary)


def _start_up_notes(ctx: Context, _s: dict[str, Any], checks: dict[str, bool], records: list[RunRecord]) -> str:
    """The evidence for how each run started, and why a short run can reverse the ResNet ordering."""
    text = ""
    start = start_up(records)
    if start:
        text += "\n\nHow each run started (training loss of single iterations, seed 0, from `metrics.jsonl`'s " \
                "`early_losses`; chance is ln 10 = 2.30):\n\n" + markdown_table(
                    ["network", "peak in iterations 1-20", "iteration 40", "iteration 200"],
                    [[display_name(label), *(f"{v:.2f}" if v is not None else "-" for v in
                                             (e["peak_1_20"], e["at_40"], e["at_200"]))] for label, e in start.items()])
    if not checks["resnet56_val_err_below_resnet20"] and ctx.budget.name != "full":
        text += (
            "\n\nWhy the ResNet ordering can be reversed at this budget: the table above shows how each net starts "
            "under the schedule and in the precision stated above; the paper notes lr 0.1 is \"slightly too large "
            "to start converging\" for 110 layers (Sec. 4.2), and a run this short, whose lr drops at 50%, leaves "
            "the nets that start worst little time to catch up. The paper's result is about where training ends "
            "after 64k iterations; to see it, use `--budget full` or a longer `--iters`.")
    return text


def _degradation_what(ctx: Context, _records: list[RunRecord]) -> str:
    return ("The paper's CIFAR-10 recipe (He et al. 2015 Sec. 4.2: SGD, momentum 0.9, weight decay 1e-4, batch 128, "
            "lr 0.1 divided by 10 at 50% and 75% of the run, 4-pixel pad + random crop + flip) for plain and "
            "residual nets of depth 20, 32, 44 and 56 (option A shortcuts, so both kinds have the same "
            f"parameters). Budget `{ctx.budget.name}`: {ctx.budget.description}. Errors are at the end of "
            "training (last evaluation); \"best\" is the lowest validation error over one run's evaluations, an "
            "optimistic number, not the paper's best of several runs.")


def _degradation_figure(ctx: Context, s: dict[str, Any], records: list[RunRecord]) -> Path:
    panels = [(title, [(f"{arch}{d}", display_name(f"{arch}{d}"), colors[d]) for d in DEGRADATION_DEPTHS])
              for arch, colors, title in (("plain", PLAIN_COLOR, "plain networks"), ("resnet", RESNET_COLOR, "ResNets"))]
    seeds_note = f"mean of {ctx.seeds} seeds" if ctx.seeds > 1 else "seed 0"
    val_name = records[0].config["resolved"].get("val_name") or "val"
    return curve_panels(ctx, s, records, "degradation.png", "Plain vs residual networks on CIFAR-10 (He et al. 2015 "
                        "Fig. 6)", panels, f"{seeds_note}; thin dashed: training error (augmented batches, averaged "
                        f"over each evaluation interval), bold: {val_name} error; dotted verticals: lr drops")


DEGRADATION = Experiment(
    "degradation", "Degradation: plain vs residual networks (He et al. 2015 Fig. 6)",
    runs=lambda ctx: [(f"{a}{d}", f"{a}{d}", {}, a) for a in ("plain", "resnet") for d in DEGRADATION_DEPTHS],
    columns=[Column("network", network_cell), Column("params", params_cell),
             Column("final train err (%)", stat_cell("final_train_err")),
             Column("final val err (%)", stat_cell("final_val_err")),
             Column("best val err (%)", stat_cell("best_val_err", spread=False)),
             Column("wall (s)", lambda _c, _l, e: f"{sum(e['wall_seconds']):.0f}")],
    what=_degradation_what, figure=_degradation_figure, checks=DEGRADATION_CHECKS, notes=_start_up_notes,
    claims_heading="What the paper's Fig. 6 shows, and whether this run shows it",
    extra=lambda _ctx, _s, records: {"depths": list(DEGRADATION_DEPTHS), "start_up": start_up(records)},
    headline=lambda s: [f"plain train err 20->56: {_series(s, 'plain', 'final_train_err')}; "
                        f"ResNet val err 20->56: {_series(s, 'resnet', 'final_val_err')}"],
)


def budget_note(ctx: Context, experiment: str) -> str:
    """Plain words on what the budget can and cannot support (short runs are not the paper's numbers)."""
    b = ctx.budget
    if b.name == "full":
        return ("The paper's full schedule. Remaining differences: held-out validation images instead of the "
                "test set unless `--val-split 0` is given with data that has a test split, and this "
                "implementation's initialisation and augmentation details.")
    if b.name == "smoke":
        return ("A smoke run: a few iterations on a few images. It checks that training, measuring, drawing and "
                "reporting work end to end; its numbers mean nothing.")
    frac = ctx.cfg.iters / PAPER_ITERS
    text = (f"The `{b.name}` budget trains every network for {ctx.cfg.iters:,} iterations, {frac:.1%} of the "
            f"paper's 64k (about {ctx.cfg.iters * ctx.cfg.batch_size / 45_000:.1f} epochs of 45k images), with the "
            "same recipe and the lr drops at the same fractions of the run"
            + (f", and with one deviation: a linear lr ramp over the first {b.ramp:.0%} for every network "
               "(the budget above says why)" if b.ramp is not None else ", and the 110-layer warm-up scaled alike")
            + ". "
            "What it can show is how hard each network is to *optimise* at the start of training, which is "
            "the paper's point about degradation: a deeper plain net fits the training set worse, so its "
            "higher error is not overfitting. What it cannot show: the paper's error rates (every network "
            "is far from converged, tens of points above Fig. 6 and Table 6); where the curves end after 64k "
            "iterations, which is where the paper's deeper ResNets pull ahead; overfitting of very deep "
            "nets (ResNet-1202); and differences of a point or two between neighbouring depths, which are "
            "within seed-to-seed noise unless `--seeds` > 1 shows otherwise.")
    if experiment == "layer-responses":
        text += (" Layer responses are measured on these short-trained networks; the BN scales have moved less "
                 "from their initial value of 1 than after 64k iterations.")
    return text


# --------------------------------------------------------------------------------------------- table 6

# He et al. 2015 Table 6: test error (%) on CIFAR-10; 110 is "best of 5 runs" (mean 6.61 ± 0.16).
PAPER_TABLE6_ERR = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}
PAPER_TABLE6_PARAMS = {20: "0.27M", 32: "0.46M", 44: "0.66M", 56: "0.85M", 110: "1.7M", 1202: "19.4M"}


def _table6_depths(ctx: Context) -> list[int]:
    return [20, 32, 44, 56, 110] + ([1202] if ctx.with_1202 else [])


def _depth(label: str) -> int:
    return int(label.removeprefix("resnet"))


def _table6_figure(ctx: Context, summary: dict[str, Any], records: list[RunRecord]) -> Path:
    """Error against depth beside the paper's, and the training curves."""
    depths = [_depth(label) for label in summary]
    fig, axes = new_figure(1, 2, panel_size=(5.4, 4.2))
    ax = axes[0, 0]
    means = [100 * summary[f"resnet{d}"]["final_val_err"]["mean"] for d in depths]
    stds = [100 * summary[f"resnet{d}"]["final_val_err"]["std"] for d in depths]
    ax.errorbar(depths, means, yerr=stds, marker="o", capsize=3, color="tab:blue",
                label=f"this run, final val error (mean ± std, {ctx.seeds} seed(s))")
    # The paper's whole table, also at depths not trained yet (a --finished-only report), for where ours sit.
    paper_depths = sorted(set(depths) | set(_table6_depths(ctx)))
    ax.plot(paper_depths, [PAPER_TABLE6_ERR[d] for d in paper_depths], "s--", color="0.4",
            label="paper Table 6 (test error)")
    ax.set_xscale("log")
    ax.set_xticks(paper_depths, [str(d) for d in paper_depths])
    ax.minorticks_off()
    ax.set_xlabel("depth (layers)")
    ax.set_ylabel("top-1 error (%)")
    ax.set_title("Error vs depth", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    colors = [RESNET_COLOR.get(d, "tab:purple") for d in depths]
    plot_error_curves(axes[0, 1], [(f"ResNet-{d}", summary[f"resnet{d}"]["history"]) for d in depths], colors,
                      val_name=records[0].config["resolved"].get("val_name") or "val")
    _milestone_lines(axes[0, 1], records)
    axes[0, 1].set_ylim(0, _ylim_top([summary[f"resnet{d}"]["history"] for d in depths]))
    axes[0, 1].set_title("Training curves" + (f" (mean of {ctx.seeds} seeds)" if ctx.seeds > 1 else ""),
                         fontsize=10)
    caption = caption_line(ctx.data_text(records), ctx.schedule_text(records), None,
                           f"{ctx.seeds_text(True)}; paper numbers are CIFAR-10 test error after 64k iterations")
    return save_figure(fig, ctx.out / "table6.png", caption, "CIFAR-10 ResNets (He et al. 2015 Table 6)")


def _table6_what(ctx: Context, records: list[RunRecord]) -> str:
    return (f"ResNet-{', '.join(map(str, _table6_depths(ctx)))} (option A shortcuts) with the paper's recipe (He et "
            f"al. 2015 Sec. 4.2; 110 layers and deeper warm up at lr 0.01 for 400 of 64k iterations), "
            f"{ctx.seeds_text()}. Budget `{ctx.budget.name}`: {ctx.budget.description}. {ctx.split_text(records)} "
            "As the paper reports ResNet-110, each network has the mean ± std of the final validation error over "
            "seeds and the best run (lowest final error); with one seed both are that run.")


def _best_run_cell(_ctx: Context, _label: str, e: dict[str, Any]) -> str:
    return f"{fmt_pct(e['best_run_val_err']['value'])} (seed {e['best_run_val_err']['seed']})"


def _paper_t6_cell(_ctx: Context, label: str, _e: dict[str, Any]) -> str:
    return f"{PAPER_TABLE6_ERR[_depth(label)]:.2f}" + (" (best of 5 runs; mean 6.61 ± 0.16)"
                                                       if _depth(label) == 110 else "")


TABLE6 = Experiment(
    "table6", "CIFAR-10 ResNets against He et al. 2015 Table 6",
    runs=lambda ctx: [(f"resnet{d}", f"resnet{d}", {}, "resnet") for d in _table6_depths(ctx)],
    columns=[Column("network", network_cell), Column("params", lambda _c, _l, e: f"{e['params'] / 1e6:.2f}M"),
             Column("paper params", lambda _c, label, _e: PAPER_TABLE6_PARAMS[_depth(label)]),
             Column("final val err (%) mean ± std", stat_cell("final_val_err")),
             Column("best run: final val err (%)", _best_run_cell), Column("paper test err (%)", _paper_t6_cell),
             Column("seeds", lambda _c, _l, e: len(e["seeds"])),
             Column("precision", lambda _c, _l, e: ", ".join(e["precision"])),
             Column("hardware", lambda _c, _l, e: "; ".join(e["hardware"])),
             Column("wall time per run (h)", lambda _c, _l, e: f"{statistics.fmean(e['wall_seconds']) / 3600:.2f}")],
    what=_table6_what, figure=_table6_figure, table_heading="Table 6", partial_ok=True,
    extra=lambda ctx, _s, _r: {"paper_test_err_pct": {str(k): v for k, v in PAPER_TABLE6_ERR.items()},
                               "depths": _table6_depths(ctx)},
    headline=lambda s: [f"{display_name(k)}: {fmt_pct(e['final_val_err']['mean'])}% "
                        f"(paper {PAPER_TABLE6_ERR[_depth(k)]}%)" for k, e in s.items()],
)


# --------------------------------------------------------------------------------------------- layer responses

RESPONSE_MODELS = (("plain20", "plain"), ("plain56", "plain"), ("resnet20", "resnet"), ("resnet56", "resnet"),
                   ("resnet110", "resnet"))
RESPONSE_STYLE = {"plain20": (PLAIN_COLOR[20], "--"), "plain56": (PLAIN_COLOR[56], "--"),
                  "resnet20": (RESNET_COLOR[32], "-"), "resnet56": (RESNET_COLOR[56], "-"),
                  "resnet110": ("#000000", "-")}


def _measure_run(ctx: Context, rec: RunRecord, data_cache: dict[tuple, Any]) -> dict[str, list]:
    """One trained network's responses (last checkpoint, eval mode) on its own held-out images."""
    cfg = rec.config
    key = (cfg["data"], cfg["val_split"], saved_split_seed(cfg))
    if key not in data_cache:
        data_cache[key] = open_data(cfg["data"], val_split=cfg["val_split"], seed=key[2], log=ctx.log)
    data = data_cache[key]
    split = data.val if data.val is not None and len(data.val) else data.train
    images, labels = split.images, split.labels
    if ctx.images:
        images, labels = images[: ctx.images], labels[: ctx.images]
    ckpt = load_checkpoint(rec.out_dir / "last.pt")
    norm = ckpt["normalization"]
    loader = MemoryLoader(images, labels, 500, train=False, mean=norm["mean"], std=norm["std"])
    ctx.log(f"[{rec.spec.name}] measuring layer responses on {len(labels):,} images")
    return {**measure_responses(model_from_checkpoint(ckpt), loader.epoch(0)), "images": len(labels)}


def measure_all_responses(ctx: Context, records: list[RunRecord]) -> dict[str, dict[str, Any]]:
    """Per configuration: each 3x3 layer's response std averaged over seeds, and its summaries."""
    cache: dict[tuple, Any] = {}
    reused = _reused(ctx, records)
    out: dict[str, dict[str, Any]] = {}
    for label, recs in group_by_label(records).items():
        start = time.perf_counter()
        per_seed = [_measure_run(ctx, r, cache) for r in recs]
        std = [statistics.fmean(s["std"][i] for s in per_seed) for i in range(len(per_seed[0]["std"]))]
        cstd = [statistics.fmean(s["channel_std"][i] for s in per_seed) for i in range(len(std))]
        out[label] = {"layers": per_seed[0]["layers"], "std": std, "channel_std": cstd,
                      "std_sorted": sorted(std, reverse=True), "mean_std": sum(std) / len(std),
                      "median_std": sorted(std)[len(std) // 2], "mean_channel_std": sum(cstd) / len(cstd),
                      "per_seed_std": [s["std"] for s in per_seed], "images": per_seed[0]["images"],
                      "val_err": mean_std([final_err(r) for r in recs])[0], "iters": recs[0].summary.get("total_iters"),
                      "run": ("reused: " + ", ".join(reused[r.spec.name] for r in recs)
                              if all(r.spec.name in reused for r in recs) else "trained here"),
                      "measure_seconds": round(time.perf_counter() - start, 1)}
    return out


def _responses_figure(ctx: Context, responses: dict[str, Any], records: list[RunRecord]) -> Path:
    """Fig. 7's two panels: responses in layer order, and sorted by magnitude."""
    fig, axes = new_figure(2, 1, panel_size=(9.0, 3.6))
    for row, (key, xlabel, title) in enumerate((
            ("std", "layer index (original order, input to output)", "Responses in layer order"),
            ("std_sorted", "layer index (sorted by magnitude)", "Responses sorted by magnitude"))):
        ax = axes[row, 0]
        for label, _ in RESPONSE_MODELS:
            color, ls = RESPONSE_STYLE[label]
            ys = responses[label][key]
            ax.plot(range(1, len(ys) + 1), ys, ls, color=color, lw=1.4, label=display_name(label))
        spread = [v for lab, _ in RESPONSE_MODELS for v in responses[lab][key] if v > 0]
        if spread and max(spread) > 50 * min(spread):  # e.g. barely trained smoke nets: keep all curves visible
            ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("std of response")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=5)
    seed_note = ("mean over " if ctx.seeds > 1 else "") + ctx.seeds_text()
    caption = caption_line(ctx.data_text(records), ctx.schedule_text(records), None,
                           f"trained nets, eval mode, {seed_note}; std over all outputs of each 3x3 layer's BN "
                           f"(before ReLU/addition) on {responses['resnet20']['images']:,} held-out images")
    return save_figure(fig, ctx.out / "layer_responses.png", caption,
                       "Std of layer responses on CIFAR-10 (He et al. 2015 Fig. 7)")


def _m(s: dict[str, Any], label: str) -> float:
    return s[label]["mean_std"]


# The claims of the paper's Fig. 7 over each network's mean response std (Sec. 4.2).
RESPONSE_CHECKS = {
    "resnet20_below_plain20": Check(
        lambda s: _m(s, "resnet20") < _m(s, "plain20"),
        lambda s: f"ResNet-20 responds more weakly than plain-20 ({_m(s, 'resnet20'):.3f} vs {_m(s, 'plain20'):.3f})"),
    "resnet56_below_plain56": Check(
        lambda s: _m(s, "resnet56") < _m(s, "plain56"),
        lambda s: f"ResNet-56 responds more weakly than plain-56 ({_m(s, 'resnet56'):.3f} vs {_m(s, 'plain56'):.3f})"),
    "resnet_shrinks_20_56_110": Check(
        lambda s: _m(s, "resnet20") > _m(s, "resnet56") > _m(s, "resnet110"),
        lambda s: "Deeper ResNets have smaller responses (20 > 56 > 110: "
                  + ", ".join(f"{_m(s, k):.3f}" for k in ("resnet20", "resnet56", "resnet110")) + ")"),
}


def response_checks(mean: dict[str, float]) -> dict[str, bool]:
    """The claims of the paper's Fig. 7 over each network's mean response std."""
    return check_all(RESPONSE_CHECKS, {k: {"mean_std": v} for k, v in mean.items()})


def _response_notes(ctx: Context, responses: dict[str, Any], checks: dict[str, bool], _r: list[RunRecord]) -> str:
    """What the paper reads into Fig. 7, and what a short budget's responses reflect instead."""
    text = ("\n\nThe paper reads this as support for its motivation (Sec. 3.1): residual functions are generally "
            "closer to zero than non-residual ones, and with more layers each unit of a ResNet modifies the signal "
            "less.")
    if ctx.budget.name == "full" or all(checks.values()):
        return text
    near_one = [display_name(k) for k, r in responses.items() if 0.8 <= r["median_std"] <= 1.25]
    spiky = {display_name(k): (max(r["std"]), r["std"].index(max(r["std"])) + 1)
             for k, r in responses.items() if max(r["std"]) > 2 * r["median_std"]}
    text += ("\n\nAt this budget the responses mostly reflect how far training has moved BN's scales from their "
             "initial 1" + (f" (median response within 0.8-1.25 for {', '.join(near_one)})" if near_one else "") + ".")
    if spiky:
        text += (" Layers above twice their network's median: " + "; ".join(
            f"{k}: {v:.2f} at layer {i}" for k, (v, i) in spiky.items()) + ". These are the networks whose start "
            "was unstable; their first steps inflated some weights and BN scales, and a short run has not shrunk "
            "them back. The paper's figure is of networks trained for 64k iterations.")
    return text


def _responses_what(ctx: Context, _records: list[RunRecord]) -> str:
    from_note = (f"Networks whose finished runs were found in {_from_text(ctx)} are those runs (column \"run\"); "
                 "the rest were trained here on the same budget." if ctx.from_dirs else "Every network was trained here.")
    return ("For each trained network (last checkpoint), in eval mode on the held-out validation images: the "
            "standard deviation of the output of every 3x3 layer after its BN and before the ReLU or the "
            "addition (He et al. 2015 Sec. 4.2, Fig. 7): the stem's BN and both BNs of every basic unit, "
            "2n per stage + 1 = depth - 1 layers. \"std\" is over all values of the layer (images, channels, "
            "positions); \"mean channel std\" averages each channel's own std, leaving out the spread of the "
            f"channel means. {from_note} Budget `{ctx.budget.name}`: {ctx.budget.description}.")


LAYER_RESPONSES = Experiment(
    "layer-responses", "Layer responses of plain and residual networks (He et al. 2015 Fig. 7)",
    runs=lambda ctx: [(m, m, {}, g) for m, g in RESPONSE_MODELS],
    columns=[Column("network", network_cell), Column("3x3 layers", lambda _c, _l, r: len(r["std"]))]
    + [Column(h, lambda _c, _l, r, k=k: f"{r[k] if k != 'max_std' else max(r['std']):.3f}") for h, k in (
        ("mean std", "mean_std"), ("median std", "median_std"), ("max std", "max_std"),
        ("mean channel std", "mean_channel_std"))]
    + [Column("val err (%)", lambda _c, _l, r: fmt_pct(r["val_err"])), Column("iters", lambda _c, _l, r: r["iters"]),
       Column("run", lambda _c, _l, r: r["run"])],
    what=_responses_what, figure=_responses_figure, checks=RESPONSE_CHECKS, notes=_response_notes,
    claims_heading="What the paper's Fig. 7 shows, and whether this run shows it", summary_key="responses",
    obtain=lambda ctx, specs: _reuse_or_train(ctx, specs, need_checkpoint=True), collect=measure_all_responses,
    extra=lambda ctx, s, records: {"runs": run_summary(records), "reused_runs": _reused(ctx, records),
                                   "measure_seconds": round(sum(r["measure_seconds"] for r in s.values()), 1)},
    headline=lambda s: ["mean response std: " + ", ".join(f"{k} {_m(s, k):.3f}" for k in s)],
)


# --------------------------------------------------------------------------------------------- shortcuts

# Final validation and training error, mean ± std over seeds (shortcuts and preact tables).
FINAL_ERR_COLUMNS = (Column("final val err (%)", lambda _c, _l, e: fmt_stat(e["final_val_err"])),
                     Column("final train err (%)", lambda _c, _l, e: fmt_stat(e["final_train_err"])))

# He et al. 2015 Table 3: ResNet-34 top-1 error (%, 10-crop) on ImageNet val with options A/B/C.
PAPER_TABLE3_TOP1 = {"A": 25.03, "B": 24.52, "C": 24.19}
SHORTCUT_DEPTHS, SHORTCUT_OPTIONS = (20, 32), ("A", "B", "C")
OPTION_COLOR = {"A": "tab:blue", "B": "tab:orange", "C": "tab:green"}


def _shortcuts_what(ctx: Context, _records: list[RunRecord]) -> str:
    return ("He et al. 2015 Sec. 3.3 / Table 3: (A) zero-padding identity shortcuts, parameter-free; (B) 1x1 "
            "projections (+BN) only where the shape changes, identity elsewhere; (C) projections on every unit. "
            "The paper compares them on ImageNet with ResNet-34 (its numbers are beside ours for reference, not "
            "comparable in value); here the same comparison on CIFAR-10 ResNet-20 and 32 with the paper's CIFAR "
            f"recipe, {ctx.seeds_text()}. Budget `{ctx.budget.name}`: {ctx.budget.description}. The paper "
            "found B slightly better than A and C marginally better than B, and concluded projections are not "
            "essential for the degradation problem.")


SHORTCUTS = Experiment(
    "shortcuts", "Shortcut options A, B, C on CIFAR-10 (He et al. 2015 Table 3 analogue)",
    runs=lambda ctx: [(f"resnet{d}-{o}", f"resnet{d}", {"shortcut": o}, f"resnet{d}")
                      for d in SHORTCUT_DEPTHS for o in SHORTCUT_OPTIONS],
    columns=[Column("network", lambda _c, label, _e: display_name(label.split("-")[0])),
             Column("shortcut", lambda _c, label, _e: label[-1]), Column("params", params_cell),
             *FINAL_ERR_COLUMNS,
             Column("paper: ResNet-34 ImageNet top-1 (%)", lambda _c, label, _e: f"{PAPER_TABLE3_TOP1[label[-1]]:.2f}")],
    what=_shortcuts_what,
    figure=lambda ctx, s, records: curve_panels(
        ctx, s, records, "shortcuts.png", "Shortcut options A/B/C on CIFAR-10 (analogue of He et al. 2015 Table 3)",
        [(f"ResNet-{d}", [(f"resnet{d}-{o}", f"option {o}", OPTION_COLOR[o]) for o in SHORTCUT_OPTIONS])
         for d in SHORTCUT_DEPTHS], ctx.seeds_text(True)),
    extra=lambda *_: {"paper_table3_resnet34_top1_pct": PAPER_TABLE3_TOP1},
    headline=lambda s: [f"{k}: {fmt_pct(v['final_val_err']['mean'])}%" for k, v in s.items()],
)


# --------------------------------------------------------------------------------------------- pre-activation

# He et al. 2016 Table 3: CIFAR-10 test error (%), original units vs full pre-activation.
PAPER_2016_TABLE3 = {"resnet110": 6.61, "preact_resnet110": 6.37, "resnet164": 5.93, "preact_resnet164": 5.46}
PREACT_MODELS = (
    # (run label, model, model args, group): each pair differs only in the unit design. Both originals use
    # projection shortcuts where the shape changes (option B), like the pre-activation nets they are compared
    # with; the paper's 6.61% for the original ResNet-110 is the 2015 paper's option-A net.
    ("resnet110", "resnet", {"depth": 110, "shortcut": "B"}, "110"),
    ("preact_resnet110", "preact_resnet110", {}, "110"),
    ("resnet164", "resnet", {"depth": 164, "block": "bottleneck", "shortcut": "B"}, "164"),
    ("preact_resnet164", "preact_resnet164", {}, "164"),
)
UNIT = {"resnet": ("original", "tab:red"), "preact": ("pre-activation", "tab:blue")}


def _unit(label: str) -> tuple[str, str]:
    """(unit name, colour) of a pre-activation experiment's run label."""
    return UNIT["preact" if label.startswith("preact_") else "resnet"]


def _preact_what(ctx: Context, _records: list[RunRecord]) -> str:
    return ("He et al. 2016 (Identity Mappings) Table 3 compares the original unit (conv-BN-ReLU-conv-BN, add, "
            "ReLU; Fig. 4a) with the full pre-activation unit (BN-ReLU-conv twice, add, nothing after; Fig. 4e) "
            "on CIFAR-10 ResNet-110 (basic units) and ResNet-164 (bottlenecks). Each pair differs only in the "
            "unit: all four use projection shortcuts where the shape changes (option B); the paper's 6.61% "
            "for the original ResNet-110 is the 2015 paper's option-A net. Both trained here with the "
            "2015 paper's CIFAR recipe (lr 0.01 warm-up for the first 400 of 64k iterations, then 0.1), "
            f"{ctx.seeds_text()}. Budget `{ctx.budget.name}`: {ctx.budget.description}.")


PREACT = Experiment(
    "preact", "Original vs pre-activation residual units (He et al. 2016 Table 3)",
    runs=lambda ctx: PREACT_MODELS,
    columns=[Column("network", lambda _c, label, _e: label.replace("preact_", "").replace("resnet", "ResNet-")),
             Column("unit", lambda _c, label, _e: _unit(label)[0]), Column("params", params_cell),
             *FINAL_ERR_COLUMNS,
             Column("paper test err (%)", lambda _c, label, _e: f"{PAPER_2016_TABLE3[label]:.2f}")],
    what=_preact_what,
    figure=lambda ctx, s, records: curve_panels(
        ctx, s, records, "preact.png", "Original vs pre-activation units on CIFAR-10 (He et al. 2016 Table 3)",
        [(f"ResNet-{g} ({kind} units)", [(label, *_unit(label)) for label, _m, _a, group in PREACT_MODELS
                                         if group == g]) for g, kind in (("110", "basic"), ("164", "bottleneck"))],
        ctx.seeds_text(True)),
    extra=lambda *_: {"paper_test_err_pct": PAPER_2016_TABLE3},
    headline=lambda s: [f"{k}: {fmt_pct(v['final_val_err']['mean'])}% (paper {PAPER_2016_TABLE3[k]}%)"
                        for k, v in s.items()],
)


# --------------------------------------------------------------------------------------------- entry point

EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (DEGRADATION, TABLE6, LAYER_RESPONSES, SHORTCUTS, PREACT)}


def reproduce_command(name: str, out: str | Path, budget: str, seeds: int, *, data: str | None = None,
                      runs_dir: str | Path | None = None, val_split: int | None = None, device: str = "auto",
                      iters: int | None = None, from_dirs: Sequence[str | Path] = (), finished_only: bool = False,
                      with_1202: bool = False, images: int = 0, threads: int | None = None, amp: str = "none",
                      compile: bool = False, parallel: int = 1, cuda_graphs: bool = False) -> str:
    """The exact ``resnetlab reproduce`` command line that produces (or resumes) an experiment."""
    # (flag, value) in the order the command reads; None or False leaves a flag out, True is a bare switch.
    flags: list[tuple[str, Any]] = [
        ("--budget", budget), ("--seeds", seeds), ("--parallel", parallel if parallel > 1 else None),
        ("--amp", amp if amp != "none" else None), ("--compile", compile), ("--cuda-graphs", cuda_graphs),
        ("--data", data), ("--val-split", val_split), ("--iters", iters or None),
        *(("--from", d) for d in from_dirs), ("--finished-only", finished_only), ("--with-1202", with_1202),
        ("--images", images or None), ("--device", device if device != "auto" else None),
        ("--threads", threads or None), ("--out", out), ("--runs", runs_dir or None),
    ]
    parts = ["resnetlab", "reproduce", name]
    for flag, value in flags:
        if value is True:
            parts.append(flag)
        elif value is not None and value is not False:
            parts += [flag, str(value)]
    return shlex.join(parts)


# config.json keys that make two calls of an experiment the same one (their invocations add up).
REPORT_IDENTITY = ("budget", "iters", "seeds", "data", "val_split", "amp", "compile", "cuda_graphs")


def previous_invocations(out: Path, name: str, identity: dict[str, Any]) -> list[dict[str, Any]]:
    """The invocations recorded in ``out/results.json`` by earlier calls of the same experiment (else none).

    Only calls with the same ``identity`` (budget, length, seeds, data) count: a report rewritten with
    another budget starts its own list instead of adding the old budget's hours to the new one's.
    """
    try:
        old_config = json.loads((out / "config.json").read_text())
        if old_config.get("experiment") != name or any(old_config.get(k) != v for k, v in identity.items()):
            return []
        old = json.loads((out / "results.json").read_text())
    except (OSError, ValueError):
        return []
    if "invocations" in old:
        return list(old["invocations"])
    if "invocation_wall_seconds" in old:  # written before invocations were listed
        return [{"wall_seconds": old["invocation_wall_seconds"], "trained": old.get("trained_in_this_invocation", [])}]
    return []


def invocations_text(invocations: list[dict[str, Any]]) -> str:
    """The report's note on every call that wrote it: those that trained listed, those that only read counted.

    Regenerating a report from finished runs (``--from``, ``--finished-only``) trains nothing; listing each such
    call would grow the line by one entry per regeneration without saying anything new.
    """
    if len(invocations) < 2:
        return ""
    trained = [i for i in invocations if i["trained"]]
    idle = [i for i in invocations if not i["trained"]]
    parts = [f"{i['wall_seconds']:,.0f} s training {len(i['trained'])}" for i in trained]
    if idle:
        parts.append(f"{len(idle)} that trained nothing, {sum(i['wall_seconds'] for i in idle):,.0f} s in all")
    return f" (all {len(invocations)} invocations: " + ", ".join(parts) + ")"


def _precision_text(amp: str, compile: bool, cuda_graphs: bool, hardware: str, trained_here: int,
                    reused: bool) -> str:
    """The report's precision and hardware line: this command's settings, and that reused runs keep their own."""
    own = (f"Precision: {'fp32, as the paper trained' if amp == 'none' else amp + ' autocast (the paper: fp32)'}"
           f"; torch.compile {'on' if compile else 'off'}{'; CUDA graphs (fused SGD)' if cuda_graphs else ''}"
           f"; hardware: {hardware}.")
    if not reused:
        return own
    kept = ("keep the precision they trained with (the table's precision column where it has one; every "
            "network's `precision` in `results.json`) and their own hardware (the hardware column where it has one, "
            "from each run's sessions log)")
    if not trained_here:
        return f"Every run was read from `--from`, none trained by this command: they {kept}."
    return f"Runs trained by this command: {own} Runs reused from `--from` {kept}."


def run_experiment(name: str, out: str | Path, *, budget: str = "short", seeds: int = 1, data: str | None = None,
                   runs_dir: str | Path | None = None, val_split: int | None = None, device: str = "auto",
                   iters: int | None = None, from_dirs: Sequence[str | Path] = (), finished_only: bool = False,
                   with_1202: bool = False, images: int = 0, threads: int | None = None, amp: str = "none",
                   compile: bool = False, parallel: int = 1, cuda_graphs: bool = False, command: str | None = None,
                   log: Callable[[str], None] | None = None) -> Outcome:
    """Train (or resume, or reuse) an experiment's runs, then write its figures and report into ``out``.

    ``runs_dir`` (default ``out/runs``) holds the run folders with their checkpoints; when
    it lies outside ``out``, each run's ``metrics.jsonl`` and ``config.json`` are copied
    to ``out/run-logs/<run>/`` so the report folder keeps every curve's numbers but no weights
    (not ``out/runs/``: the repository's .gitignore ignores every folder named ``runs``).
    ``threads`` sets torch's intra-op threads for the experiment (default: the budget's). Runs train
    in fp32 without compile, as the paper did, unless ``amp``/``compile`` say otherwise; the report
    states which, beside the results. ``parallel=K`` trains K runs at once, one process each, with
    ``threads`` (default: the budget's, else the cores split K ways) torch threads each.
    """
    if name not in EXPERIMENTS:
        raise UserError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    if budget not in BUDGETS:
        raise UserError(f"unknown budget {budget!r}; choose from {', '.join(BUDGETS)}")
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    for from_dir in from_dirs:
        if not Path(from_dir).is_dir():
            raise UserError(f"--from {from_dir}: no such folder")
    require_matplotlib()  # before hours of training, not after
    log = log or (lambda msg: print(msg, flush=True))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    runs = Path(runs_dir) if runs_dir else out / "runs"
    b = BUDGETS[budget]
    if iters and iters != b.iters:
        warm = (f"a linear lr ramp over the first {b.ramp:.0%} for every network" if b.ramp is not None
                else "the lr-0.01 warm-up of 110+ layers")
        b = dataclasses.replace(b, description=f"`--iters {iters}`: the paper's schedule (lr drops at 50% and 75%, "
                                               f"{warm}) scaled to {iters:,} iterations")
    cfg = base_config(b, data, val_split, device, iters, amp=check_amp(amp), compile=compile, cuda_graphs=cuda_graphs)
    if parallel < 1:
        raise UserError(f"--parallel must be at least 1, got {parallel}")
    per_run_threads = threads or b.threads or max(1, (os.cpu_count() or 1) // parallel)
    ctx = Context(name, out, runs, b, cfg, seeds, log, from_dirs=tuple(Path(d) for d in from_dirs),
                  finished_only=finished_only, with_1202=with_1202, images=images, parallel=parallel,
                  threads=per_run_threads if parallel > 1 else None)
    out.mkdir(parents=True, exist_ok=True)
    threads_before = torch.get_num_threads()
    if threads or b.threads:
        torch.set_num_threads(threads or b.threads)
    started = time.perf_counter()
    try:
        outcome = render(EXPERIMENTS[name], ctx)
        threads_used = torch.get_num_threads()
        hardware = device_name(resolve_device(device))
    finally:
        torch.set_num_threads(threads_before)
    wall = time.perf_counter() - started

    inside = runs.resolve().is_relative_to(out.resolve())
    copied = [] if inside else copy_metrics(outcome.records, out / RUN_LOGS)
    trained = [r.spec.name for r in outcome.records if r.trained_now]
    reused = _reused(ctx, outcome.records)
    run_walls = {r.spec.name: round(r.wall_time, 1) for r in outcome.records}
    config = {
        "experiment": name, "budget": b.name, "budget_description": b.description, "seeds": seeds,
        "data": data, "val_split": cfg.val_split, "subset": cfg.subset, "iters": cfg.iters, "device": device,
        "amp": amp, "compile": compile, "cuda_graphs": cuda_graphs, "hardware": hardware, "parallel": parallel,
        "out": str(out), "runs_dir": str(runs), "metrics_copied_to": str(out / RUN_LOGS) if copied else None,
        "train_config": cfg.to_dict(), "runs": [{"name": r.spec.name, "model": r.spec.model,
                                                 "model_args": r.spec.model_args, "seed": r.spec.seed,
                                                 "dir": str(r.out_dir)} for r in outcome.records],
        "torch": torch.__version__, "resnetlab": __version__, "threads": threads_used,
        "from": [str(d) for d in ctx.from_dirs], "finished_only": finished_only, "reused_runs": reused,
        **outcome.config,
    }
    # Every invocation that wrote this report (a resumed experiment has several), oldest first.
    identity = {k: config[k] for k in REPORT_IDENTITY}
    invocations = previous_invocations(out, name, identity) + [{"wall_seconds": round(wall, 1), "trained": trained}]
    own = {k: v for k, v in run_walls.items() if k not in reused}
    total = sum(own.values())
    outcome.results.update({
        "invocation_wall_seconds": round(wall, 1),
        "runs_wall_seconds": run_walls,
        "runs_wall_seconds_total": round(total, 1),  # runs reused from --from are not counted
        "trained_in_this_invocation": trained,
        "invocations": invocations,
    })
    counted_there = f"{sum(run_walls[k] for k in reused):,.0f} s of training counted there"
    reuse_note = f" ({len(reused)} more reused from {_from_text(ctx)}, their {counted_there})" if reused else ""
    summed = (f"Training: {total:,.0f} s ({total / 60:.1f} min) summed over the {len(own)} runs' own wall "
              f"times{reuse_note} (a resumed run counts all its sessions)" if own else
              f"Training: none here; the {len(reused)} run(s) were read from {_from_text(ctx)}, "
              f"their {counted_there}")
    logs_copied = (f"; each run's `metrics.jsonl` and `config.json` are copied under `{RUN_LOGS}/` here"
                   if copied else "")
    folders = f" Run folders (checkpoints, full logs): `{runs}`{logs_copied}." if own or runs.exists() else ""
    timing = (f"{summed}; this invocation took {wall:,.0f} s ({wall / 60:.1f} min) and trained {len(trained)} "
              f"of {len(outcome.records)}"
              + invocations_text(invocations)
              + (f"; {parallel} runs at once, {per_run_threads} CPU thread(s) each, " if parallel > 1 else
                 f"; {threads_used} CPU thread(s), ")
              + f"torch {torch.__version__}.{folders}")
    command = command or reproduce_command(name, out, budget, seeds, data=data, runs_dir=runs_dir,
                                           val_split=val_split, device=device, iters=iters, from_dirs=from_dirs,
                                           finished_only=finished_only,
                                           with_1202=with_1202, images=images, threads=threads, amp=amp,
                                           compile=compile, parallel=parallel, cuda_graphs=cuda_graphs)
    precision = _precision_text(amp, compile, cuda_graphs, hardware, len(own), bool(reused))
    sections = outcome.sections[:1] + [("Precision and hardware", precision)] + outcome.sections[1:]
    sections = sections + [("Run", timing + "\n\nRunning the same command again resumes: finished runs "
                                           "are read back, an interrupted one continues from its `last.pt`.")]
    write_report(out, outcome.title, command, config, outcome.results, sections, outcome.figures)
    return outcome
