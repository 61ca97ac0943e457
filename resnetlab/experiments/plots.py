"""Figure helpers shared by every experiment: panels of curves, a caption stamp, PNG output.

Every figure leaves through :func:`save_figure`, which refuses to save without a
caption line saying what the numbers came from (data, schedule, seed): a figure
cut out of its report must still say whether it shows a 3-epoch smoke run or the
paper's 64k-iteration schedule.

matplotlib is optional (``pip install resnetlab[plot]``) and imported only here,
inside the functions, with the Agg canvas: no pyplot global state, no display
needed, and ``import resnetlab`` works without it.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .. import __version__
from ..errors import UserError
from ..io import atomic_write

if TYPE_CHECKING:  # pragma: no cover - typing only
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

CAPTION_FONTSIZE = 7.5
DPI = 150


def require_matplotlib() -> None:
    """Fail early with an installable hint when matplotlib is missing (before minutes of compute)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError("figures need matplotlib: pip install resnetlab[plot]") from None


def new_figure(nrows: int = 1, ncols: int = 1, *, panel_size: tuple[float, float] = (4.4, 3.4),
               sharey: bool | str = False) -> tuple[Figure, Any]:
    """A figure on the Agg canvas and a ``nrows x ncols`` array of axes (always 2-D)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=sharey)
    return fig, axes


def caption_line(data: str, schedule: str | None = None, seed: int | None = None, extra: str | None = None) -> str:
    """The standard provenance caption: ``Data: ... | Schedule: ... | seed N | resnetlab X``."""
    parts = [f"Data: {data}", f"Schedule: {schedule or 'none (no training)'}"]
    if seed is not None:
        parts.append(f"seed {seed}")
    if extra:
        parts.append(extra)
    parts.append(f"resnetlab {__version__}")
    return " | ".join(parts)


def stamp_caption(fig: Figure, caption: str) -> float:
    """Write ``caption`` along the bottom edge of ``fig``; returns the figure fraction it occupies."""
    if not caption or not caption.strip():
        raise ValueError("every figure needs a caption saying which data/schedule it came from")
    width_in, height_in = fig.get_size_inches()
    # About 17 characters per inch at 7.5 pt; wrap so a long caption never runs off the page.
    lines = textwrap.wrap(caption.strip(), width=max(40, int(width_in * 17)))
    fig.text(0.008, 0.008, "\n".join(lines), ha="left", va="bottom", fontsize=CAPTION_FONTSIZE,
             color="0.25", gid="caption")
    return (0.06 + 0.135 * len(lines)) / height_in


def save_figure(fig: Figure, path: str | Path, caption: str, title: str | None = None) -> Path:
    """Stamp the caption, add the title, lay out and write a PNG; returns the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bottom = stamp_caption(fig, caption)
    top = 1.0
    if title:
        fig.suptitle(title, fontsize=12, fontweight="bold")
        top = 1.0 - 0.3 / fig.get_size_inches()[1]
    fig.tight_layout(rect=(0.0, bottom, 1.0, top))
    with atomic_write(path, suffix=Path(path).suffix or ".png") as tmp:
        fig.savefig(tmp, dpi=DPI)
    return path


@dataclass
class Series:
    """One curve: ``y`` against ``x``, optionally with a shaded ``band=(low, high)`` (e.g. min/max over seeds)."""

    label: str | None
    x: Sequence[float]
    y: Sequence[float]
    color: Any = None
    linestyle: str = "-"
    linewidth: float = 1.6
    marker: str | None = None
    band: tuple[Sequence[float], Sequence[float]] | None = None


@dataclass
class Panel:
    """One set of axes: curves, axis labels, log scales and labelled horizontal reference lines."""

    title: str
    xlabel: str
    ylabel: str
    series: list[Series] = field(default_factory=list)
    logx: bool = False
    logy: bool = False
    hlines: list[tuple[float, str]] = field(default_factory=list)
    legend_title: str | None = None


def draw_panel(ax: Axes, panel: Panel) -> None:
    """Draw a :class:`Panel` onto existing axes (so figures can mix standard and custom panels)."""
    for s in panel.series:
        (line,) = ax.plot(s.x, s.y, color=s.color, linestyle=s.linestyle, linewidth=s.linewidth,
                          marker=s.marker, markersize=4, label=s.label)
        if s.band is not None:
            ax.fill_between(s.x, s.band[0], s.band[1], color=line.get_color(), alpha=0.15, linewidth=0)
    for y, label in panel.hlines:
        ax.axhline(y, color="0.4", linestyle=":", linewidth=1.2)
        ax.annotate(label, (0.01, y), xycoords=("axes fraction", "data"), fontsize=8, color="0.3",
                    va="bottom")
    if panel.logx:
        ax.set_xscale("log")
    if panel.logy:
        ax.set_yscale("log")
    ax.set_title(panel.title, fontsize=10)
    ax.set_xlabel(panel.xlabel)
    ax.set_ylabel(panel.ylabel)
    ax.grid(True, which="major", alpha=0.3)
    if any(s.label for s in panel.series):
        ax.legend(fontsize=7.5, title=panel.legend_title, title_fontsize=7.5, framealpha=0.85)


def plot_panels(path: str | Path, panels: Sequence[Panel], caption: str, title: str | None = None,
                ncols: int | None = None) -> Path:
    """A grid of :class:`Panel` s saved as one captioned PNG (e.g. training/test error curves per depth)."""
    if not panels:
        raise ValueError("plot_panels needs at least one panel")
    ncols = ncols or min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = new_figure(nrows, ncols)
    flat = list(axes.flat)
    for ax, panel in zip(flat, panels):
        draw_panel(ax, panel)
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    return save_figure(fig, path, caption, title)


def plain_log_ticks(ax: Axes, axis: str, values: Sequence[float]) -> None:
    """Put ticks at ``values`` on a log ``axis`` (``"x"`` or ``"y"``), labelled as plain numbers, not 2x10^1."""
    require_matplotlib()
    from matplotlib.ticker import FixedLocator, NullLocator, ScalarFormatter

    target = ax.xaxis if axis == "x" else ax.yaxis
    target.set_major_locator(FixedLocator(list(values)))
    target.set_major_formatter(ScalarFormatter())
    target.set_minor_locator(NullLocator())


def depth_colors(depths: Sequence[int], cmap: str = "viridis") -> dict[int, Any]:
    """One colour per depth, shallow to deep along a perceptually uniform colour map."""
    require_matplotlib()
    from matplotlib import colormaps

    cm = colormaps[cmap]
    n = max(1, len(depths) - 1)
    # Stop at 0.9: the top of viridis is a pale yellow that vanishes on white.
    return {d: cm(0.9 * i / n) for i, d in enumerate(depths)}
