"""Analyses that need no training: gradients at initialisation, shattered gradients, multiply-adds.

* ``gradients``: the norm of the loss gradient for every layer of plain and residual
  CIFAR networks of depth 8 to 110, with and without BN, at initialisation.
* ``shattered``: how correlated the input gradients of nearby inputs are, plain versus
  residual, as depth grows (Balduzzi et al. 2017, "The Shattered Gradients Problem").
* ``flops``: He et al. 2015 Table 1 (multiply-adds at 224x224) for the v1 and v1.5
  bottleneck placements side by side, and the CIFAR family.

Each ``<name>(out_dir, quick, seed)`` computes its numbers, saves its figure into
``out_dir`` and returns an :class:`Analysis`; :func:`run_analysis` times it and
writes ``report.md``, ``results.json`` and ``config.json`` next to the figure.
"""

from __future__ import annotations

import math
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import __version__
from ..errors import UserError
from ..models import create_model, list_models
from ..models.profile import count_macs, count_params, meta_model
from .plots import (Panel, Series, caption_line, depth_colors, draw_panel, new_figure, plain_log_ticks,
                    require_matplotlib, save_figure)
from .report import markdown_table, write_report

# CIFAR depths 6n+2 (He et al. 2015 Sec. 4.2 uses 20..110; 8 and 14 fill in the shallow end).
DEPTHS = (8, 14, 20, 32, 44, 56, 110)
QUICK_DEPTHS = (8, 20)
ARCHS = ("plain", "resnet")
NORMS = ("bn", "no_bn")
ARCH_LABEL = {"plain": "plain", "resnet": "residual"}
NORM_LABEL = {"bn": "with BN", "no_bn": "without BN"}
ARCH_COLOR = {"plain": "tab:red", "resnet": "tab:blue"}
NORM_STYLE = {"bn": "-", "no_bn": "--"}
IMAGE = (3, 32, 32)
NUM_CLASSES = 10


@dataclass
class Analysis:
    """What one analysis produced: numbers, settings, report sections, figure files and a console summary."""

    name: str
    title: str
    config: dict[str, Any]
    results: dict[str, Any]
    sections: list[tuple[str, str]]
    figures: list[str]
    headline: list[str] = field(default_factory=list)


def no_norm(channels: int) -> nn.Module:
    """The "without BN" variant: every normalisation layer becomes the identity."""
    return nn.Identity()


def cifar_net(depth: int, residual: bool, bn: bool = True) -> nn.Module:
    """A CIFAR ResNet/plain net of depth 6n+2 (paper Sec. 4.2, option A shortcuts), optionally without BN."""
    overrides: dict[str, Any] = {} if bn else {"norm_layer": no_norm}
    return create_model("resnet" if residual else "plain", depth=depth, family="cifar", **overrides)


def weighted_layers(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """(module name, weight) of every convolution and fully connected layer in forward order: the paper's "layers".

    Option A shortcuts hold no weights, so a CIFAR net of depth D has exactly D of them
    (1 stem conv + 6n block convs + 1 fc, paper Sec. 4.2).
    """
    return [(name.removesuffix(".weight"), p) for name, p in model.named_parameters() if p.dim() > 1]


def _seeds(gen: torch.Generator, count: int) -> list[int]:
    """Model-initialisation seeds drawn from ``gen``, so data and weights never share one random stream."""
    return [int(s) for s in torch.randint(0, 2**31 - 1, (count,), generator=gen)]


def _geomean(values: list[float]) -> float:
    """Geometric mean of positive finite values; NaN if any is zero, infinite or NaN (recorded as null)."""
    if not all(0 < v < math.inf for v in values):
        return float("nan")
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}g}"


# --------------------------------------------------------------------------------------------------------------
# gradients


def layer_gradient_norms(depth: int, residual: bool, bn: bool, x: Tensor, y: Tensor,
                         init_seed: int) -> tuple[list[str], list[float], float]:
    """Frobenius norm of dL/dW for every layer at initialisation; returns (layer names, norms, loss).

    The model is in train mode, so BN normalises with the statistics of ``x`` itself,
    as in the first training step.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = cifar_net(depth, residual, bn).train()
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    layers = weighted_layers(model)
    return [n for n, _ in layers], [float(p.grad.norm()) for _, p in layers], float(loss.detach())


def gradients(out_dir: Path, quick: bool = False, seed: int = 0, *, depths: tuple[int, ...] | None = None,
              batch_size: int | None = None, trials: int | None = None) -> Analysis:
    """Per-layer gradient norms of plain and residual nets, with and without BN, across depths; one figure."""
    depths = depths or (QUICK_DEPTHS if quick else DEPTHS)
    batch_size = batch_size or (4 if quick else 64)
    trials = trials or (1 if quick else 2)
    gen = torch.Generator().manual_seed(seed)
    draws = []
    for init_seed in _seeds(gen, trials):
        x = torch.randn(batch_size, *IMAGE, generator=gen)
        y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=gen)
        draws.append((x, y, init_seed))

    names: dict[str, list[str]] = {}
    norm_mean: dict[str, dict[str, dict[str, list[float]]]] = {k: {a: {} for a in ARCHS} for k in NORMS}
    norm_lo = {k: {a: {} for a in ARCHS} for k in NORMS}
    norm_hi = {k: {a: {} for a in ARCHS} for k in NORMS}
    ratio: dict[str, dict[str, dict[str, float]]] = {k: {a: {} for a in ARCHS} for k in NORMS}
    losses: dict[str, dict[str, dict[str, float]]] = {k: {a: {} for a in ARCHS} for k in NORMS}
    for norm in NORMS:
        for arch in ARCHS:
            for depth in depths:
                per_trial, trial_losses = [], []
                for x, y, init_seed in draws:
                    layer_names, norms, loss = layer_gradient_norms(depth, arch == "resnet", norm == "bn", x, y,
                                                                    init_seed)
                    per_trial.append(norms)
                    trial_losses.append(loss)
                names[str(depth)] = layer_names
                per_layer = list(zip(*per_trial))
                # Geometric mean: the norms span orders of magnitude and are plotted on a log axis.
                gm = [_geomean(list(v)) for v in per_layer]
                norm_mean[norm][arch][str(depth)] = gm
                norm_lo[norm][arch][str(depth)] = [min(v) for v in per_layer]
                norm_hi[norm][arch][str(depth)] = [max(v) for v in per_layer]
                ratio[norm][arch][str(depth)] = gm[0] / gm[-1] if gm[-1] else float("nan")
                losses[norm][arch][str(depth)] = sum(trial_losses) / len(trial_losses)

    # The median layer's gradient: the overall scale of a net's gradients, which the ratio leaves out.
    median = {n: {a: {str(d): _median(norm_mean[n][a][str(d)]) for d in depths} for a in ARCHS} for n in NORMS}
    results = {
        "depths": list(depths),
        "layer_names": names,
        "grad_norm_geomean": norm_mean,
        "grad_norm_min": norm_lo,
        "grad_norm_max": norm_hi,
        "first_over_last": ratio,
        "median_grad_norm": median,
        "initial_loss": losses,
        "reference_loss_ln10": math.log(NUM_CLASSES),
    }
    config = {"analysis": "gradients", "quick": quick, "seed": seed, "depths": list(depths),
              "batch_size": batch_size, "trials": trials, "input": "N(0,1) 3x32x32",
              "labels": "uniform random over 10 classes", "loss": "cross-entropy",
              "mode": "train (BN batch statistics)",
              "shortcut": "A", "init": "He normal, fan_out (He et al. 2015 Sec. 3.4)"}
    caption = caption_line(
        f"{batch_size} random N(0,1) 3x32x32 images, uniform random labels, cross-entropy", None, seed,
        f"at initialisation, train mode (BN uses batch statistics); {trials} draw(s) of data and weights: "
        f"line = geometric mean, band = min-max")
    figure = _plot_gradients(results, out_dir / "gradients.png", caption)

    deep = max(depths)
    columns = ["depth"] + [f"{ARCH_LABEL[a]}, {NORM_LABEL[n]}" for n in NORMS for a in ARCHS]
    table = markdown_table(columns, [[d] + [_fmt(ratio[n][a][str(d)]) for n in NORMS for a in ARCHS] for d in depths])
    mtable = markdown_table(columns, [[d] + [_fmt(median[n][a][str(d)]) for n in NORMS for a in ARCHS]
                                      for d in depths])
    pb, rb = ratio["bn"]["plain"][str(deep)], ratio["bn"]["resnet"][str(deep)]
    shallow = min(depths)
    sections = [
        ("What is measured", (
            "For every convolution and the final fully connected layer (a depth-D CIFAR net has exactly D of "
            "them, He et al. 2015 Sec. 4.2) the Frobenius norm of the gradient of the cross-entropy loss "
            "with respect to its weights, at initialisation (He et al. 2015 Sec. 3.4), on a batch of "
            f"{batch_size} N(0,1) images with random labels, model in train mode so BN uses the batch's "
            "statistics. \"Without BN\" replaces every BN layer by the identity. The layer axis of the figure "
            "is normalised, (l-1)/(D-1), so that nets of different depth overlay.")),
        ("First-layer over last-layer gradient norm", (
            "‖dL/dW‖ of the stem convolution divided by that of the classifier, geometric mean over draws. "
            "Near 1: every layer gets a gradient of similar size. Far above 1: gradients explode towards the "
            "input; far below: they vanish.\n\n" + table)),
        ("Median layer gradient norm", (
            "The median over a net's layers of ‖dL/dW‖: the overall scale, which the ratio above does not "
            "show.\n\n" + mtable)),
        ("Reading", (
            f"With BN at depth {deep}, the plain net's first layer receives {_fmt(pb)} times the gradient of its "
            f"last, the residual net's {_fmt(rb)} times. BN keeps the forward signal normalised, but in a "
            "plain stack each normalised layer multiplies the backward signal, so gradients grow "
            "geometrically towards the input (the explosion Balduzzi et al. 2017 and Yang et al. 2019 "
            "describe); identity shortcuts give every layer a direct path to the loss (He et al. 2016 Eq. 5, "
            "approximately here, as these 2015-style units apply a ReLU after the addition), which keeps the "
            "ratio modest. Without BN the profile along each net is flat, but its level moves "
            f"with depth: from depth {shallow} to {deep} the median layer gradient goes from "
            f"{_fmt(median['no_bn']['resnet'][str(shallow)])} to {_fmt(median['no_bn']['resnet'][str(deep)])} in "
            "the residual nets (each unit adds its branch's variance to the identity path, so activations and "
            f"gradients grow with depth) and from {_fmt(median['no_bn']['plain'][str(shallow)])} to "
            f"{_fmt(median['no_bn']['plain'][str(deep)])} in the plain nets.")),
    ]
    headline = [f"first/last layer gradient norm, depth {deep}: " + ", ".join(
        f"{ARCH_LABEL[a]} {NORM_LABEL[n]} {_fmt(ratio[n][a][str(deep)])}" for n in NORMS for a in ARCHS)]
    return Analysis("gradients", "Gradient norm per layer at initialisation", config, results, sections,
                    [figure.name], headline)


def _plot_gradients(results: dict[str, Any], path: Path, caption: str) -> Path:
    depths = results["depths"]
    colors = depth_colors(depths)
    fig, axes = new_figure(2, 3, panel_size=(4.6, 3.5))
    for row, norm in enumerate(NORMS):
        for col, arch in enumerate(ARCHS):
            series = []
            for d in depths:
                k = str(d)
                xs = [i / (d - 1) for i in range(d)]
                # One depth legend per row (left panel): the colours are shared across the row.
                band = (results["grad_norm_min"][norm][arch][k], results["grad_norm_max"][norm][arch][k])
                series.append(Series(f"D={d}" if arch == "plain" else None, xs,
                                     results["grad_norm_geomean"][norm][arch][k], color=colors[d], linewidth=1.3,
                                     band=band))
            draw_panel(axes[row, col], Panel(
                f"{ARCH_LABEL[arch].capitalize()} nets, {NORM_LABEL[norm]}",
                "layer position (l-1)/(D-1): input -> output", "||dL/dW|| per layer", series, logy=True,
                legend_title="depth"))
        # Same y range for plain and residual so the two panels of a row compare directly.
        axes[row, 1].sharey(axes[row, 0])
        axes[row, 0].autoscale()
        ratio = results["first_over_last"][norm]
        draw_panel(axes[row, 2], Panel(
            f"First / last layer gradient norm, {NORM_LABEL[norm]}", "depth D", "||dL/dW_1|| / ||dL/dW_D||",
            [Series(ARCH_LABEL[a], depths, [ratio[a][str(d)] for d in depths], color=ARCH_COLOR[a], marker="o")
             for a in ARCHS], logy=True, hlines=[(1.0, "equal")]))
    return save_figure(fig, path, caption, "Gradient norm per layer at initialisation, plain vs residual CIFAR nets "
                                           f"(depth {min(depths)}-{max(depths)})")


# --------------------------------------------------------------------------------------------------------------
# shattered gradients

# 256 points on a quarter great circle (Balduzzi et al. 2017 use 256 inputs on a line):
# a*cos(t) + b*sin(t) for two N(0,1) images a, b is itself N(0,1) for every t, so every
# point is a typical input, which a straight line between a and b would not be.
LINE_POINTS = 256
LINE_STEP = (math.pi / 2) / (LINE_POINTS - 1)
TRACE_COORD = (0, 16, 16)  # channel, row, column of the input coordinate plotted along the line


def line_inputs(points: int, gen: torch.Generator, step: float = LINE_STEP) -> Tensor:
    """``points`` images ``a cos(i*step) + b sin(i*step)`` with ``a, b ~ N(0, I)``, consecutive ones close."""
    a = torch.randn(*IMAGE, generator=gen)
    b = torch.randn(*IMAGE, generator=gen)
    theta = torch.arange(points, dtype=torch.float32).mul(step).view(-1, 1, 1, 1)
    return torch.cos(theta) * a + torch.sin(theta) * b


def freeze_bn_statistics(model: nn.Module, batch: Tensor) -> nn.Module:
    """Set every BN layer's running statistics to exactly those of ``batch``, then switch to eval mode.

    In train mode BN would couple the points of a batch, so a point's gradient would
    depend on its neighbours; frozen statistics make the network one fixed function
    of its input, whose gradient field is what Balduzzi et al. 2017 study.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average: after one batch, exactly that batch's statistics
    model.train()
    with torch.no_grad():
        model(batch)
    return model.eval()


def input_gradients(model: nn.Module, x: Tensor, unit: int = 0, chunk: int = 32) -> Tensor:
    """d(output ``unit``)/d(input) for every image of ``x`` (model in eval mode, so images are independent)."""
    grads = []
    for part in x.split(chunk):
        part = part.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(model(part)[:, unit].sum(), part)
        grads.append(g)
    return torch.cat(grads)


def lag_correlations(grads: Tensor, max_lag: int) -> list[float]:
    """Mean Pearson correlation between gradients ``k`` points apart along the line, for k = 1..max_lag."""
    g = grads.flatten(1).double()
    g = g - g.mean(dim=1, keepdim=True)
    g = g / g.norm(dim=1, keepdim=True)
    return [float((g[k:] * g[:-k]).sum(dim=1).mean()) for k in range(1, max_lag + 1)]


def gradient_field(depth: int, residual: bool, bn: bool, x: Tensor, calibration: Tensor,
                   init_seed: int) -> Tensor:
    """Input gradients of logit 0 of a freshly initialised net at every point of ``x``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = cifar_net(depth, residual, bn)
    freeze_bn_statistics(model, calibration)
    return input_gradients(model, x)


def shattered(out_dir: Path, quick: bool = False, seed: int = 0, *, depths: tuple[int, ...] | None = None,
              points: int | None = None, calibration_size: int | None = None) -> Analysis:
    """Correlation of input gradients between nearby inputs, plain vs residual, with depth; one figure."""
    depths = depths or (QUICK_DEPTHS if quick else DEPTHS)
    points = points or (16 if quick else LINE_POINTS)
    calibration_size = calibration_size or (16 if quick else 64)
    max_lag = min(64, points - 1)
    gen = torch.Generator().manual_seed(seed)
    (init_seed,) = _seeds(gen, 1)
    x = line_inputs(points, gen)
    calibration = torch.randn(calibration_size, *IMAGE, generator=gen)
    neighbour_distance = float((x[1:] - x[:-1]).flatten(1).norm(dim=1).mean())
    input_norm = float(x.flatten(1).norm(dim=1).mean())
    trace_depth = 56 if 56 in depths else max(depths)

    lag: dict[str, dict[str, dict[str, list[float]]]] = {k: {a: {} for a in ARCHS} for k in NORMS}
    neighbour: dict[str, dict[str, dict[str, float]]] = {k: {a: {} for a in ARCHS} for k in NORMS}
    trace: dict[str, list[float]] = {}
    for norm in NORMS:
        for arch in ARCHS:
            for depth in depths:
                grads = gradient_field(depth, arch == "resnet", norm == "bn", x, calibration, init_seed)
                curve = lag_correlations(grads, max_lag)
                lag[norm][arch][str(depth)] = curve
                neighbour[norm][arch][str(depth)] = curve[0]
                if norm == "bn" and depth == trace_depth:
                    trace[arch] = grads[(slice(None), *TRACE_COORD)].tolist()

    results = {
        "depths": list(depths), "points": points, "max_lag": max_lag,
        "neighbour_distance_l2": neighbour_distance, "input_norm_l2": input_norm,
        "neighbour_correlation": neighbour, "lag_correlation": lag,
        "trace": {"depth": trace_depth, "coordinate_chw": list(TRACE_COORD), "bn": trace},
    }
    config = {"analysis": "shattered", "quick": quick, "seed": seed, "depths": list(depths), "points": points,
              "arc_step_radians": LINE_STEP, "calibration_size": calibration_size,
              "output": "logit 0", "bn_statistics": "from an independent N(0,1) batch, then frozen (eval)",
              "correlation": "Pearson over the 3072 input coordinates, mean over pairs k points apart",
              "shortcut": "A", "init": "He normal, fan_out (He et al. 2015 Sec. 3.4)"}
    caption = caption_line(
        f"{points} points a*cos(t)+b*sin(t) on an arc between two N(0,1) 3x32x32 images "
        f"(neighbours {neighbour_distance:.2f} apart, images of norm {input_norm:.0f})", None, seed,
        f"at initialisation; gradient of logit 0 w.r.t. the input; BN statistics from {calibration_size} "
        "other N(0,1) images, then frozen")
    figure = _plot_shattered(results, out_dir / "shattered.png", caption)

    rows = [[d] + [_fmt(neighbour[n][a][str(d)]) for n in NORMS for a in ARCHS] for d in depths]
    table = markdown_table(["depth"] + [f"{ARCH_LABEL[a]}, {NORM_LABEL[n]}" for n in NORMS for a in ARCHS], rows)
    p56, r56 = neighbour["bn"]["plain"][str(trace_depth)], neighbour["bn"]["resnet"][str(trace_depth)]
    sections = [
        ("What is measured", (
            "Balduzzi et al. 2017 (\"The Shattered Gradients Problem\", Sec. 2 and Fig. 1) show that the "
            "gradient of a deep plain network with respect to its input decorrelates between nearby inputs "
            "until it resembles white noise, while in residual networks it stays correlated much longer. "
            f"Here: {points} inputs a*cos(t)+b*sin(t), t in steps of {LINE_STEP:.5f} rad, between two N(0,1) "
            f"images (every point is itself N(0,1); neighbours {neighbour_distance:.2f} apart against an image "
            f"norm of {input_norm:.0f}); for each, the gradient of logit 0 with respect to the input, from a "
            "freshly initialised CIFAR net whose BN statistics were set from an independent batch and "
            "frozen, so the network is one fixed function. The number reported is the Pearson correlation "
            "of the gradients (over the 3072 input coordinates) of points k steps apart, averaged along "
            "the line; k = 1 is the neighbour correlation.")),
        ("Neighbour correlation (k = 1)", table),
        ("Reading", (
            f"At depth {trace_depth} with BN the gradients of neighbouring inputs correlate at {_fmt(r56)} in "
            f"the residual net and {_fmt(p56)} in the plain net. Balduzzi et al. derive a decay like 2^-L for "
            "plain nets with BN against roughly 1/sqrt(L) for residual nets with BN, which is why the "
            "residual net's gradient remains a useful local direction at depths where the plain net's has "
            "shattered. The trace panel shows the same: one input coordinate's gradient along the line is "
            "smooth for the residual net and noise-like for the plain one.")),
    ]
    headline = [f"neighbour gradient correlation with BN, depth {trace_depth}: residual {_fmt(r56)}, "
                f"plain {_fmt(p56)}"]
    return Analysis("shattered", "Shattered gradients: input-gradient correlation along a line of inputs", config,
                    results, sections, [figure.name], headline)


def _plot_shattered(results: dict[str, Any], path: Path, caption: str) -> Path:
    depths, trace_depth = results["depths"], results["trace"]["depth"]
    fig, axes = new_figure(1, 3, panel_size=(4.7, 3.8))
    draw_panel(axes[0, 0], Panel(
        "Correlation of neighbouring inputs' gradients", "depth D", "mean corr(g(x_i), g(x_i+1))",
        [Series(f"{ARCH_LABEL[a]}, {NORM_LABEL[n]}", depths,
                [results["neighbour_correlation"][n][a][str(d)] for d in depths],
                color=ARCH_COLOR[a], linestyle=NORM_STYLE[n], marker="o") for n in NORMS for a in ARCHS],
        logx=True))
    plain_log_ticks(axes[0, 0], "x", depths)
    axes[0, 0].set_ylim(-0.05, 1.05)
    lags = list(range(1, results["max_lag"] + 1))
    draw_panel(axes[0, 1], Panel(
        f"Correlation against distance, depth {trace_depth}", "k (points apart along the line)",
        "mean corr(g(x_i), g(x_i+k))",
        [Series(f"{ARCH_LABEL[a]}, {NORM_LABEL[n]}", lags, results["lag_correlation"][n][a][str(trace_depth)],
                color=ARCH_COLOR[a], linestyle=NORM_STYLE[n]) for n in NORMS for a in ARCHS],
        logx=True))
    axes[0, 1].set_ylim(-0.05, 1.05)
    ax = axes[0, 2]
    for offset, arch in zip((0.0, 5.0), ARCHS):
        values = torch.tensor(results["trace"]["bn"][arch], dtype=torch.float64)
        # Standardise each trace so shape, not scale, is compared; offset to stack them.
        z = (values - values.mean()) / values.std().clamp_min(1e-30)
        ax.plot(range(len(z)), (z + offset).tolist(), color=ARCH_COLOR[arch], linewidth=1.0,
                label=f"{ARCH_LABEL[arch]}-{trace_depth}")
    c, h, w = results["trace"]["coordinate_chw"]
    ax.set_title(f"Gradient at input pixel ({c},{h},{w}) along the line, BN", fontsize=10)
    ax.set_xlabel("point index i along the line")
    ax.set_ylabel("d logit_0 / d x (standardised, offset)")
    ax.set_yticks([])
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper right")
    return save_figure(fig, path, caption, "Shattered gradients (Balduzzi et al. 2017): plain vs residual CIFAR nets "
                                           "at initialisation")


# --------------------------------------------------------------------------------------------------------------
# flops

# He et al. 2015 Table 1, last row ("FLOPs", which the paper counts as multiply-adds).
PAPER_TABLE1_GMACS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}
# VGG-19 is not in the zoo: its 19.6 billion multiply-adds are the paper's own figure (Sec. 3.3, Fig. 3).
VGG19_PAPER_GMACS = 19.6
# He et al. 2015 Table 6, "# params" of the CIFAR-10 ResNets.
PAPER_TABLE6_PARAMS_M = {"resnet20": 0.27, "resnet32": 0.46, "resnet44": 0.66, "resnet56": 0.85,
                         "resnet110": 1.7, "resnet1202": 19.4}
IMAGENET_SIZE = (3, 224, 224)
QUICK_IMAGENET = (18, 50)
QUICK_CIFAR = ("resnet20", "resnet56", "preact_resnet164")


def imagenet_macs(depth: int) -> dict[str, Any]:
    """Multiply-adds at 224x224 with the stride on the bottleneck's 1x1 (v1, the paper) and on its 3x3 (v1.5).

    Moving the stride to the 3x3 (torchvision, "ResNet v1.5") runs that convolution and
    the first 1x1 at the higher resolution in each stage's first unit, which costs more;
    basic-block nets (18, 34) have no 1x1 and are the same either way.
    """
    v15 = meta_model(f"resnet{depth}")
    v1 = meta_model(f"resnet{depth}", stride_in_1x1=True)
    return {"macs_v1": count_macs(v1, IMAGENET_SIZE), "macs_v1_5": count_macs(v15, IMAGENET_SIZE),
            "params": count_params(v15), "paper_gmacs": PAPER_TABLE1_GMACS[depth]}


def flops(out_dir: Path, quick: bool = False, seed: int = 0) -> Analysis:
    """Paper Table 1 multiply-adds (v1 and v1.5), the plain baselines, VGG-19 for scale, and the CIFAR family."""
    depths = QUICK_IMAGENET if quick else tuple(PAPER_TABLE1_GMACS)
    imagenet = {f"resnet{d}": imagenet_macs(d) for d in depths}
    plain = {} if quick else {n: {"macs": count_macs(meta_model(n), IMAGENET_SIZE),
                                  "params": count_params(meta_model(n))} for n in ("plain18", "plain34")}
    cifar_names = QUICK_CIFAR if quick else tuple(list_models("cifar"))
    cifar = {}
    for name in cifar_names:
        model = meta_model(name)
        cifar[name] = {"macs": count_macs(model, model.default_input_size), "params": count_params(model),
                       "depth": _cifar_depth(model), "block": type(model.layer1[0]).__name__,
                       "paper_params_m": PAPER_TABLE6_PARAMS_M.get(name)}
    results = {"imagenet": imagenet, "plain": plain, "vgg19_paper_gmacs": VGG19_PAPER_GMACS, "cifar": cifar,
               "input_size_imagenet": list(IMAGENET_SIZE), "input_size_cifar": list(IMAGE)}
    config = {"analysis": "flops", "quick": quick, "seed": seed, "imagenet_depths": list(depths),
              "cifar_models": list(cifar_names), "counter": "torch.utils.flop_counter on the meta device, FLOPs/2",
              "counted": "convolutions and the fully connected layer (BN, ReLU, pooling, additions left out)",
              "vgg19": "constant 19.6G from He et al. 2015 Sec. 3.3, not computed"}
    caption = caption_line(
        "none (counts only): multiply-adds of one 3x224x224 (ImageNet) or 3x32x32 (CIFAR) image, counted by "
        "torch.utils.flop_counter on meta-device models (convs + fc)", None, None,
        "VGG-19 and 'paper' bars are the paper's own numbers (He et al. 2015 Table 1, Sec. 3.3)")
    figure = _plot_flops(results, out_dir / "flops.png", caption)

    g = 1e9
    rows = [[name, f"{r['paper_gmacs']:.1f}", f"{r['macs_v1'] / g:.3f}", f"{r['macs_v1_5'] / g:.3f}",
             f"{(r['macs_v1_5'] - r['macs_v1']) / g:+.3f}", f"{r['params'] / 1e6:.2f}M",
             f"{100 * r['macs_v1'] / g / VGG19_PAPER_GMACS:.0f}%"] for name, r in imagenet.items()]
    rows += [[name, "3.6 (Sec. 3.3)" if name == "plain34" else "-", f"{r['macs'] / g:.3f}", f"{r['macs'] / g:.3f}",
              "+0.000",
              f"{r['params'] / 1e6:.2f}M", f"{100 * r['macs'] / g / VGG19_PAPER_GMACS:.0f}%"]
             for name, r in plain.items()]
    rows.append(["VGG-19 (paper, not computed)", f"{VGG19_PAPER_GMACS:.1f}", "-", "-", "-", "-", "100%"])
    table1 = markdown_table(["model", "paper Table 1 (G)", "v1: stride on 1x1 (G)", "v1.5: stride on 3x3 (G)",
                             "v1.5 - v1 (G)", "params", "v1 / VGG-19"], rows)
    crows = [[name, r["block"], r["depth"], f"{r['params']:,}",
              "-" if r["paper_params_m"] is None else f"{r['paper_params_m']}M", f"{r['macs'] / 1e6:.1f}M"]
             for name, r in cifar.items()]
    table6 = markdown_table(["model", "block", "depth", "params", "paper Table 6", "mult-adds"], crows)
    sections = [
        ("Counting", (
            "Multiply-adds of one image, from `torch.utils.flop_counter` (FLOPs / 2) on models built on the meta "
            "device. As in the paper's Table 1, only convolutions and the fully connected layer count. "
            "\"v1\" puts a bottleneck's stride on its first 1x1 convolution, as the paper and its Caffe models "
            "do; \"v1.5\" puts it on the 3x3, as torchvision does (the zoo's default). VGG-19's 19.6G is the "
            "paper's number (Sec. 3.3), quoted for scale, not computed.")),
        ("He et al. 2015 Table 1 at 224x224", table1),
        ("CIFAR family at 32x32 (paper Sec. 4.2, Table 6; He et al. 2016)", table6 + (
            "\n\nOption A shortcuts add no weights and no multiply-adds, so each plain net costs exactly as "
            "much as its residual twin.")),
    ]
    headline = [f"{n}: v1 {r['macs_v1'] / g:.3f}G, v1.5 {r['macs_v1_5'] / g:.3f}G (paper {r['paper_gmacs']}G)"
                for n, r in imagenet.items()]
    return Analysis("flops", "Multiply-adds: He et al. 2015 Table 1 and the CIFAR family", config, results,
                    sections, [figure.name], headline)


def _cifar_depth(model: nn.Module) -> int:
    """Counted as the paper does: stem conv + every conv in the units + fc (projection shortcuts excluded)."""
    units = [u for name in model.stage_names for u in getattr(model, name)]
    per_unit = sum(1 for n, m in units[0].named_modules() if isinstance(m, nn.Conv2d) and "downsample" not in n)
    return 2 + per_unit * len(units)


def _plot_flops(results: dict[str, Any], path: Path, caption: str) -> Path:
    fig, axes = new_figure(1, 2, panel_size=(5.6, 4.2))
    ax = axes[0, 0]
    imagenet = results["imagenet"]
    names = list(imagenet)
    width = 0.27
    bars = [("paper Table 1", [imagenet[n]["paper_gmacs"] for n in names], "0.6"),
            ("v1: stride on 1x1 (paper)", [imagenet[n]["macs_v1"] / 1e9 for n in names], "tab:blue"),
            ("v1.5: stride on 3x3 (torchvision)", [imagenet[n]["macs_v1_5"] / 1e9 for n in names], "tab:orange")]
    for i, (label, values, color) in enumerate(bars):
        xs = [j + (i - 1) * width for j in range(len(names))]
        ax.bar(xs, values, width, label=label, color=color)
        if i:  # value labels on the computed bars only; the paper's are the table's rounded numbers
            for x, v in zip(xs, values):
                ax.annotate(f"{v:.2f}", (x, v), ha="center", va="bottom", fontsize=6.5, rotation=90,
                            xytext=(0, 2), textcoords="offset points")
    ax.axhline(results["vgg19_paper_gmacs"], color="0.3", linestyle=":", linewidth=1.3)
    ax.annotate(f"VGG-19: {results['vgg19_paper_gmacs']}G (paper Sec. 3.3)", (0.02, results["vgg19_paper_gmacs"]),
                xycoords=("axes fraction", "data"), va="bottom", fontsize=8, color="0.25")
    ax.set_xticks(range(len(names)), [n.replace("resnet", "ResNet-") for n in names])
    ax.set_ylim(0, results["vgg19_paper_gmacs"] * 1.15)
    ax.set_ylabel("multiply-adds per 224x224 image (x10^9)")
    ax.set_title("ImageNet ResNets (He et al. 2015 Table 1)", fontsize=10)
    # Below the VGG-19 line (at 1/1.15 of the height) so the two never overlap.
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(0.0, 0.84))
    ax.grid(True, axis="y", alpha=0.3)

    ax = axes[0, 1]
    cifar = {n: r for n, r in results["cifar"].items() if not n.startswith("plain")}
    groups = {"basic units, 6n+2 (He et al. 2015)": "BasicBlock",
              "pre-act bottleneck, 9n+2 (He et al. 2016)": "PreActBottleneck",
              "pre-act basic (He et al. 2016)": "PreActBasicBlock"}
    all_depths, all_macs = [], []
    for (label, block), marker, offset in zip(groups.items(), ("o", "s", "^"), ((5, -8), (5, -8), (-4, 5))):
        members = [(r["depth"], r["macs"] / 1e6, r["params"], n) for n, r in cifar.items() if r["block"] == block]
        if not members:
            continue
        members.sort()
        (line,) = ax.plot([m[0] for m in members], [m[1] for m in members], marker=marker, label=label)
        for depth, macs, params, _ in members:
            ax.annotate(f"{params / 1e6:.2f}M", (depth, macs), fontsize=6.5, xytext=offset,
                        ha="left" if offset[0] > 0 else "right", textcoords="offset points", color=line.get_color())
        all_depths += [m[0] for m in members]
        all_macs += [m[1] for m in members]
    ax.set_xscale("log")
    ax.set_yscale("log")
    # Room on the right for the last point's parameter label.
    ax.set_xlim(min(all_depths) / 1.3, max(all_depths) * 1.8)
    plain_log_ticks(ax, "x", sorted(set(all_depths)))
    ax.tick_params(axis="x", labelrotation=90, labelsize=7.5)
    plain_log_ticks(ax, "y", [v for v in (10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
                              if min(all_macs) / 2 <= v <= max(all_macs) * 2])
    ax.set_xlabel("depth (weighted layers)")
    ax.set_ylabel("multiply-adds per 32x32 image (x10^6)")
    ax.set_title("CIFAR family, labelled with parameters (plain nets cost the same)", fontsize=10)
    ax.legend(fontsize=7.5, loc="upper left")
    ax.grid(True, which="major", alpha=0.3)
    return save_figure(fig, path, caption, "Multiply-adds: ImageNet ResNets v1 vs v1.5, and the CIFAR family")


# --------------------------------------------------------------------------------------------------------------

ANALYSES: dict[str, Callable[..., Analysis]] = {"gradients": gradients, "shattered": shattered, "flops": flops}


def analysis_command(name: str, out_dir: str | Path, quick: bool, seed: int) -> str:
    """The exact ``resnetlab analyze`` command line that reproduces a run."""
    parts = ["resnetlab", "analyze", name, "--out", str(out_dir), "--seed", str(seed)] + (["--quick"] if quick else [])
    return shlex.join(parts)


def run_analysis(name: str, out_dir: str | Path, *, quick: bool = False, seed: int = 0,
                 command: str | None = None) -> Analysis:
    """Run one analysis and write its figure, ``report.md``, ``results.json`` and ``config.json`` into ``out_dir``."""
    if name not in ANALYSES:
        raise UserError(f"unknown analysis {name!r}; choose from {', '.join(ANALYSES)}")
    require_matplotlib()  # before the compute, not after it
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    analysis = ANALYSES[name](out, quick=quick, seed=seed)
    wall = time.perf_counter() - start
    analysis.results["wall_seconds"] = round(wall, 2)
    analysis.config.update({"torch": torch.__version__, "resnetlab": __version__,
                            "threads": torch.get_num_threads()})
    sections = analysis.sections + [("Run", f"{wall:.1f} s wall time on {torch.get_num_threads()} CPU thread(s), "
                                            f"torch {torch.__version__}.")]
    write_report(out, analysis.title, command or analysis_command(name, out_dir, quick, seed), analysis.config,
                 analysis.results, sections, analysis.figures)
    return analysis
