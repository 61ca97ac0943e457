"""Error curves drawn the way the paper draws them (Fig. 1, 4, 6): thin dashed training error, bold validation error."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Sequence

from ..io import atomic_write


def plot_error_curves(ax: Any, runs: Sequence[tuple[str, list[dict[str, Any]]]], colors: Sequence[str] | None = None,
                      val_name: str = "val", legend: dict[str, Any] | None = None) -> None:
    """Draw training (thin, dashed) and validation (bold) top-1 error in % against iterations, one colour per run.

    ``legend``: keyword arguments for ``ax.legend`` (placement, columns), over the default font size 8.
    """
    for i, (label, history) in enumerate(runs):
        color = colors[i] if colors else f"C{i}"
        it = [m["iteration"] for m in history]
        ax.plot(it, [100 * m["train_err"] for m in history], "--", lw=0.9, color=color, label=f"{label} train")
        val = [(m["iteration"], 100 * m["val_top1_err"]) for m in history if m.get("val_top1_err") is not None]
        if val:
            ax.plot(*zip(*val), "-", lw=2.2, color=color, label=f"{label} {val_name}")
    ax.set_xlabel("iteration")
    ax.set_ylabel("top-1 error (%)")
    ax.grid(alpha=0.3)
    ax.legend(**{"fontsize": 8, **(legend or {})})


# About as many characters of the 9-point title as fit across the 7-inch figure.
TITLE_CHARS = 110


def plot_run(history: list[dict[str, Any]], path: Path, title: str) -> None:
    """``curves.png`` of one run; silently skipped when matplotlib is not installed (it is an optional extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig = run_figure(plt, history, title)
    with atomic_write(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def run_figure(plt: Any, history: list[dict[str, Any]], title: str) -> Any:
    """The figure ``plot_run`` saves: one run's error curves under its title (wrapped to fit the width)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    plot_error_curves(ax, [("", history)])
    # The title names the data source, which can be longer than the figure is wide: wrap it and make room.
    lines = textwrap.wrap(title, width=TITLE_CHARS) or [""]
    ax.set_title("\n".join(lines), fontsize=9)
    top = 0.93 - 0.035 * (len(lines) - 1)
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.11, top=top)  # fixed margins: tight_layout doubled the cost
    return fig
