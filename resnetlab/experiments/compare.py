"""``resnetlab compare RUN_DIR ...``: training runs side by side, read from their folders alone.

What a recipe comparison needs (issue #15: "validation error and the curve"): the config fields in which
the runs differ, each run's final and best validation error (the final one is the honest figure, the best
is picked on the same held-out images), its EMA's where it kept one, iterations and wall time, and one
figure of validation error against epochs and against wall-clock minutes. Unfinished runs (still
training, or stopped) are compared as far as they got and marked so.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..engine.config import TrainConfig
from ..engine.train import read_metrics
from ..errors import UserError
from ..io import atomic_write_text
from .plots import Panel, Series, caption_line, draw_panel, new_figure, save_figure

# The training config's fields, less those that name where a run lives or how it was started.
COMPARED = [f.name for f in dataclasses.fields(TrainConfig) if f.name not in {"out", "resume", "workers"}]
_DEFAULTS = TrainConfig().to_dict()


@dataclass(frozen=True)
class RunView:
    """One run folder: its resolved config, its evaluations (metrics.jsonl) and how far it got."""

    label: str
    path: Path
    config: dict[str, Any]
    history: list[dict[str, Any]]
    total_iters: int | None

    @property
    def evaluations(self) -> list[dict[str, Any]]:
        return [m for m in self.history if m.get("val_top1_err") is not None]

    @property
    def finished(self) -> bool:
        return bool(self.history) and self.total_iters is not None and self.history[-1]["iteration"] >= self.total_iters


def load_run(path: str | Path, label: str | None = None) -> RunView:
    """Read a run folder written by ``resnetlab train``; a :class:`UserError` names what is missing."""
    run = Path(path)
    if not run.is_dir():
        raise UserError(f"no such run folder: {run}")
    for name in ("config.json", "metrics.jsonl"):
        if not (run / name).is_file():
            raise UserError(f"{run} is not a run folder: it has no {name}")
    config = json.loads((run / "config.json").read_text())
    view = RunView(label or run.name, run, config, read_metrics(run), config.get("resolved", {}).get("total_iters"))
    if not view.evaluations:
        raise UserError(f"{run} has no validation evaluation yet (train with --val-split to compare runs)")
    return view


def effective(config: dict[str, Any], key: str) -> Any:
    """A config field as the run used it: ``amp``, ``channels_last``, ``device``... left to auto (None) read
    from the run's ``resolved`` record; a field the run's config predates counts as ``TrainConfig``'s default."""
    value = config.get(key, _DEFAULTS.get(key))  # a field newer than the run: the default it trained with
    return config.get("resolved", {}).get(key, value) if value is None else value


def differing_fields(runs: Sequence[RunView]) -> list[str]:
    """Training config fields whose effective values are not the same in every run, in the config's order."""
    return [k for k in COMPARED if len({json.dumps(effective(r.config, k), sort_keys=True) for r in runs}) > 1]


def summarize(run: RunView) -> dict[str, Any]:
    """The figures of one run: final and best validation error, its EMA's, iterations, wall time."""
    evals = run.evaluations
    last, best = evals[-1], min(evals, key=lambda m: m["val_top1_err"])
    return {
        "label": run.label, "path": str(run.path), "model": run.config.get("model"),
        "recipe": run.config.get("recipe"), "finished": run.finished,
        "iterations": run.history[-1]["iteration"], "total_iters": run.total_iters,
        "epochs": run.history[-1].get("epoch"), "wall_time": run.history[-1].get("wall_time"),
        "final_val_top1_err": last["val_top1_err"], "final_iteration": last["iteration"],
        "best_val_top1_err": best["val_top1_err"], "best_iteration": best["iteration"],
        "final_ema_val_top1_err": last.get("ema_val_top1_err"),
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def comparison_table(runs: Sequence[RunView]) -> str:
    """A Markdown table, one row per run: the differing fields, then the figures of :func:`summarize`."""
    fields = differing_fields(runs)
    head = ["run", *fields, "final val err", "best val err (iteration)", "EMA final", "iterations", "wall time"]
    rows = []
    for r in runs:
        s = summarize(r)
        done = f"{s['iterations']}" + ("" if s["finished"] else f" of {s['total_iters']} (unfinished)")
        wall = "-" if s["wall_time"] is None else f"{s['wall_time'] / 60:.1f} min"
        rows.append([r.label, *(_value(effective(r.config, k)) for k in fields), _pct(s["final_val_top1_err"]),
                     f"{_pct(s['best_val_top1_err'])} ({s['best_iteration']})", _pct(s["final_ema_val_top1_err"]),
                     done, wall])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _caption(runs: Sequence[RunView]) -> str:
    """The provenance caption :func:`~.plots.save_figure` requires: each distinct data/split and schedule."""
    data = sorted({f"{r.config.get('data')} ({r.config.get('val_split')} held out)" for r in runs})
    schedule = sorted({f"{r.config.get('recipe')} {r.total_iters} iters" for r in runs})
    seeds = {r.config.get("seed") for r in runs}
    return caption_line("; ".join(data), "; ".join(schedule), seeds.pop() if len(seeds) == 1 else None)


def plot_comparison(runs: Sequence[RunView], path: Path) -> None:
    """Validation (bold) and training (dashed) error against epochs and against wall-clock minutes."""
    fig, axes = new_figure(1, 2, panel_size=(5.5, 3.8), sharey=True)
    for col, (x_key, scale, xlabel) in enumerate((("epoch", 1, "epoch"), ("wall_time", 60, "wall time (min)"))):
        panel = Panel("validation bold, training dashed" if col == 0 else "", xlabel,
                      "top-1 error (%)" if col == 0 else "")
        for i, r in enumerate(runs):
            train = [(m[x_key] / scale, 100 * m["train_err"]) for m in r.history if x_key in m and "train_err" in m]
            val = [(m[x_key] / scale, 100 * m["val_top1_err"]) for m in r.evaluations if x_key in m]
            if train:
                panel.series.append(Series(None, *zip(*train), color=f"C{i}", linestyle="--", linewidth=0.9))
            if val:
                panel.series.append(Series(r.label if col == 0 else None, *zip(*val), color=f"C{i}", linewidth=2.0))
        draw_panel(axes[0, col], panel)
    save_figure(fig, path, _caption(runs))


def write_comparison(runs: Sequence[RunView], out: str | Path, command: str) -> list[str]:
    """``compare.md`` (the command and the table), ``results.json`` and ``compare.png`` in ``out``; the files written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot_comparison(runs, out / "compare.png")
    text = [f"# {' vs '.join(r.label for r in runs)}", "", "```", command, "```", "", comparison_table(runs), "",
            "Validation error is on each run's own held-out split. The final evaluation is the honest figure; "
            "the best is picked on the same images and is optimistic.", "", "![curves](compare.png)"]
    atomic_write_text(out / "compare.md", "\n".join(text) + "\n")
    results = {"command": command, "differing_fields": differing_fields(runs), "runs": [summarize(r) for r in runs]}
    atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
    return ["compare.md", "results.json", "compare.png"]
