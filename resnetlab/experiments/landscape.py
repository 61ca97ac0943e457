"""Loss landscapes of trained networks (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets").

The loss is evaluated on a line ``theta + a * d1`` or a plane ``theta + a * d1 + b * d2`` through a
checkpoint's weights ``theta``. The directions are random Gaussian and **filter-normalised** (Li et al.
Sec. 4): every filter of a direction, i.e. every output-channel slice ``d[i]`` of a convolution or
fully connected weight, is rescaled to the norm of the same filter of the weights,
``d[i] <- d[i] / ||d[i]|| * ||theta[i]||``, so that a step of 1 moves every filter by its own size
and landscapes of different networks are comparable whatever the scale of their weights (which BN
makes arbitrary). Biases and BN parameters and buffers get a zero direction: they are not moved
(the paper's ``--xignore biasbn``).

The draws come from a CPU generator seeded by ``seed`` and depend only on the shapes of the model's
weights (in ``state_dict`` order), so checkpoints of one architecture share the random draws and
their pictures are comparable; ``d2`` is drawn after ``d1``, so a 1-D landscape is the ``b = 0``
row of the 2-D one with the same seed.

Each grid point is evaluated on training images without augmentation, with the normalisation the
checkpoint records, BN in eval mode (running statistics), fp32, no gradients, by the project's own
:func:`~resnetlab.engine.evaluate.evaluate` (cross-entropy and top-1 error). After each point the
results so far go to ``partial.json`` in the output folder (atomically), so an interrupted run
continues where it stopped when run again with the same arguments, and refuses other arguments.
"""

from __future__ import annotations

import hashlib
import math
import re
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from .. import __version__
from ..errors import UserError

PARTIAL_FILE = "partial.json"
PARTIAL_FORMAT = "resnetlab-landscape-partial/1"
CENTRE_KEY = "centre"
EPS = 1e-10  # as Li et al.'s net_plotter.normalize_direction
DATA_NAMES = ("cifar", "sample", "synthetic")  # data names that need not exist as paths (as evaluate)


# ----------------------------------------------------------------------------- arguments


def parse_range(text: str) -> tuple[float, float]:
    """``"LO:HI"`` (e.g. ``"-1:1"``) as two finite floats with LO < HI; UserError otherwise."""
    parts = str(text).split(":")
    try:
        if len(parts) != 2:
            raise ValueError
        lo, hi = float(parts[0]), float(parts[1])
    except ValueError:
        raise UserError(f"--range must be LO:HI, e.g. -1:1; got {text!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo >= hi:
        raise UserError(f"--range LO:HI needs finite LO < HI; got {text!r}")
    return lo, hi


def grid_coordinates(lo: float, hi: float, n: int) -> list[float]:
    """``n`` evenly spaced points from ``lo`` to ``hi``, both included; a point within rounding of 0 is 0 exactly.

    ``lo + (hi - lo) * i / (n - 1)`` in Python floats: -1:1 with 21 points gives 0.0 exactly at i = 10
    (``linspace`` in float32 would not), so the centre of the grid is the unperturbed network.
    """
    if n < 2:
        raise UserError(f"--grid must be at least 2, got {n}")
    coords = [lo + (hi - lo) * i / (n - 1) for i in range(n)]
    coords[-1] = hi
    return [0.0 if abs(c) <= 1e-12 * (hi - lo) else c for c in coords]


def check_settings(dims: int, grid: int, subset: int, batch_size: int) -> None:
    if dims not in (1, 2):
        raise UserError(f"--dims must be 1 or 2, got {dims}")
    if grid < 2:
        raise UserError(f"--grid must be at least 2, got {grid}")
    if subset < 0:
        raise UserError(f"--subset must be >= 0 (0: all training images), got {subset}")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")


# ---------------------------------------------------------------------------- directions


def filter_normalize(direction: Tensor, weight: Tensor) -> Tensor:
    """``direction`` with each filter (slice along dim 0) rescaled to the norm of the same filter of ``weight``."""
    d_norm = direction.flatten(1).norm(dim=1)
    w_norm = weight.detach().flatten(1).norm(dim=1).to(direction.dtype)
    scale = w_norm / (d_norm + EPS)
    return direction * scale.view(-1, *([1] * (direction.dim() - 1)))


def random_directions(model: nn.Module, seed: int, count: int = 1) -> list[dict[str, Tensor]]:
    """``count`` filter-normalised random directions, one tensor per floating ``state_dict`` entry.

    Weights of dimension > 1 (convolutions, fully connected) get Gaussian draws, filter-normalised to the
    model's weights; biases, BN weights and biases and BN running statistics get zeros. The draws are
    float32 from one CPU generator seeded by ``seed``, in ``state_dict`` order, all of ``d1`` before ``d2``:
    they depend on the weights' shapes alone.
    """
    gen = torch.Generator().manual_seed(int(seed))
    params = {name for name, _ in model.named_parameters()}
    state = model.state_dict()
    out = []
    for _ in range(count):
        d: dict[str, Tensor] = {}
        for name, w in state.items():
            if not w.is_floating_point():
                continue  # num_batches_tracked
            if name in params and w.dim() > 1:
                draw = torch.randn(tuple(w.shape), generator=gen, dtype=torch.float32)
                d[name] = filter_normalize(draw, w.cpu().float()).to(w.dtype)
            else:
                d[name] = torch.zeros(tuple(w.shape), dtype=w.dtype)
        out.append(d)
    return out


class Perturber:
    """Sets a model's weights to ``theta + sum_k c_k d_k`` (only the weights whose direction is non-zero).

    Every point starts again from a copy of ``theta``, and a zero coefficient adds nothing, so the
    centre is ``theta`` bit for bit whatever was evaluated before it. :meth:`restore` puts ``theta`` back.
    """

    def __init__(self, model: nn.Module, directions: Sequence[dict[str, Tensor]]) -> None:
        self.model = model
        moved = [name for name, _ in model.named_parameters() if any(d[name].dim() > 1 for d in directions)]
        params = dict(model.named_parameters())
        self.params = {name: params[name] for name in moved}
        self.theta = {name: p.detach().clone() for name, p in self.params.items()}
        device = next(iter(self.params.values())).device if self.params else torch.device("cpu")
        self.directions = [{name: d[name].to(device) for name in moved} for d in directions]

    @torch.no_grad()
    def set(self, coeffs: Sequence[float]) -> None:
        for name, p in self.params.items():
            value = self.theta[name].clone()
            for c, d in zip(coeffs, self.directions):
                if c != 0:
                    value.add_(d[name], alpha=float(c))
            p.copy_(value)

    def restore(self) -> None:
        self.set([0.0] * len(self.directions))


# ---------------------------------------------------------------------------------- data


def interleaved_first(labels: Tensor, n: int) -> Tensor:
    """Indices of the first ``n`` images taken class by class in turn (sorted); all when ``n`` is 0 or too big.

    The first image of every class, then the second of every class, and so on: "the first N training
    images" of a folder sorted by class would otherwise be N images of its first class.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64)
    total = len(labels)
    if n <= 0 or n >= total:
        return torch.arange(total)
    order = torch.argsort(labels, stable=True)
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty(total, dtype=torch.int64)
    rank[order] = torch.arange(total) - starts[labels[order]]
    key = rank * len(counts) + labels
    return torch.sort(torch.argsort(key, stable=True)[:n]).values


@dataclass
class Images:
    """The images one checkpoint is evaluated on: uint8 N x C x H x W, labels indexing its classes."""

    images: Tensor
    labels: Tensor
    source: str  # the data bundle's description
    spec: str  # what was opened (a path or name)
    sha256: str = ""


def _open_train(key: tuple, cache: dict[tuple, Any], log: Callable[[str], None]):
    from ..data import open_data

    if key not in cache:
        spec, val_split, subset, seed, image_size = key
        cache[key] = open_data(spec, val_split=val_split, subset=subset, seed=seed, image_size=image_size, log=log)
    return cache[key]


def landscape_images(ckpt: dict[str, Any], label: str, data: str | None, subset: int,
                     cache: dict[tuple, Any] | None = None, log: Callable[[str], None] = print) -> Images:
    """The first ``subset`` (class-interleaved) training images for ``ckpt``: of ``data``, else of the run's own data.

    Without ``data`` the run's training split is rebuilt from the checkpoint's config as
    ``resnetlab evaluate`` rebuilds its validation split (same data, held-out split and subset, split
    seed): the images it trained on, without augmentation.
    """
    from ..data import ArrayDataset
    from ..data.folder import map_labels
    from ..engine.config import saved_split_seed

    cache = {} if cache is None else cache
    size = int(ckpt["input_size"][-1])
    if data is not None:
        key = (str(data), 0, 0, 0, size)
        spec = str(data)
    else:
        saved = ckpt.get("config") or {}
        if not saved.get("data"):
            raise UserError(f"{label} records no training data; pass --data DIR")
        spec = str(saved["data"])
        if not Path(spec).exists() and not spec.startswith(DATA_NAMES):
            raise UserError(f"the training data of {label}, {spec}, is not found from here; pass --data DIR")
        key = (spec, int(saved.get("val_split") or 0), int(saved.get("subset") or 0), saved_split_seed(saved),
               saved.get("image_size") or size)
    bundle = _open_train(key, cache, log)
    train = bundle.train
    labels = map_labels(bundle.classes, train.labels, ckpt["classes"], spec)
    idx = interleaved_first(train.labels, subset)
    if isinstance(train, ArrayDataset):
        images = torch.index_select(train.images, 0, idx)
    else:  # streamed large images: decoded once, with the evaluation transform (resize + centre crop)
        ds = train.subset(idx, train=False)
        images = torch.stack([ds[i][0] for i in range(len(ds))])
    if images.shape[1] != int(ckpt["input_size"][0]):
        raise UserError(f"{spec} has {images.shape[1]}-channel images; {label} expects {ckpt['input_size'][0]}")
    labels = labels[idx].clone()
    digest = hashlib.sha256(images.contiguous().numpy().tobytes())
    digest.update(labels.numpy().tobytes())
    return Images(images, labels, bundle.source, spec, digest.hexdigest())


def weights_sha256(state_dict: dict[str, Tensor]) -> str:
    """A digest of a state dict's names and values, to notice a checkpoint rewritten between two runs."""
    digest = hashlib.sha256()
    for name, value in state_dict.items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------- evaluation


def evaluate_point(model: nn.Module, images: Images, norm: dict[str, Any], batch_size: int, num_classes: int,
                   device: torch.device) -> dict[str, float]:
    """Mean cross-entropy and top-1 error of ``model`` on ``images``: the loader and evaluation of ``evaluate``."""
    from ..data import MemoryLoader
    from ..engine.evaluate import evaluate

    loader = MemoryLoader(images.images, images.labels, batch_size, train=False, mean=norm["mean"], std=norm["std"],
                          device=device)
    res = evaluate(model, loader.epoch(0), num_classes, device=device)
    return {"loss": res["loss"], "error": res["top1_err"], "images": res["n"]}


@dataclass
class Grid:
    """The grid's coordinates and the keys of its points (``"i"`` or ``"i,j"``), plus the centre if off-grid."""

    dims: int
    alpha: list[float]
    beta: list[float]
    keys: list[str] = field(default_factory=list)
    coeffs: dict[str, tuple[float, ...]] = field(default_factory=dict)
    centre_key: str = CENTRE_KEY

    @classmethod
    def make(cls, dims: int, lo: float, hi: float, n: int) -> "Grid":
        alpha = grid_coordinates(lo, hi, n)
        beta = list(alpha) if dims == 2 else []
        g = cls(dims, alpha, beta)
        if dims == 1:
            for i, a in enumerate(alpha):
                g.keys.append(str(i))
                g.coeffs[str(i)] = (a,)
        else:
            for i, a in enumerate(alpha):
                for j, b in enumerate(beta):
                    g.keys.append(f"{i},{j}")
                    g.coeffs[f"{i},{j}"] = (a, b)
        centre = next((k for k in g.keys if all(c == 0.0 for c in g.coeffs[k])), None)
        if centre is None:  # 0 is outside --range: the unperturbed network is one more point
            g.keys.append(CENTRE_KEY)
            g.coeffs[CENTRE_KEY] = (0.0,) * dims
        else:
            g.centre_key = centre
        return g

    def grid_keys(self) -> list[str]:
        return [k for k in self.keys if k != CENTRE_KEY]

    def edge_keys(self) -> list[str]:
        last = len(self.alpha) - 1
        if self.dims == 1:
            return ["0", str(last)]
        return [k for k in self.grid_keys() if {0, last} & {int(v) for v in k.split(",")}]

    def array(self, points: dict[str, dict[str, Any]], what: str) -> np.ndarray:
        """``points[key][what]`` as an n (1-D) or n x n array indexed [alpha, beta]; NaN where missing/non-finite."""
        n = len(self.alpha)
        arr = np.full((n,) * self.dims, np.nan)
        for k in self.grid_keys():
            v = points.get(k, {}).get(what)
            if v is not None:
                arr[tuple(int(i) for i in k.split(","))] = float(v)
        return arr


def _finite_or_none(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(float(x)) else None


def summarise(grid: Grid, points: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Centre, minimum, maximum and the mean rise at the grid's edge, of the loss and the error."""
    centre = points[grid.centre_key]
    loss = grid.array(points, "loss")
    out: dict[str, Any] = {"centre_loss": centre["loss"], "centre_error": centre["error"]}
    if np.isfinite(loss).any():
        at = np.unravel_index(int(np.nanargmin(loss)), loss.shape)
        out["min_loss"] = float(np.nanmin(loss))
        out["min_at"] = [grid.alpha[at[0]]] + ([grid.beta[at[1]]] if grid.dims == 2 else [])
        out["max_loss"] = float(np.nanmax(loss))
    else:
        out.update(min_loss=None, min_at=None, max_loss=None)
    c_loss = centre["loss"]
    if grid.centre_key == CENTRE_KEY and c_loss is not None and math.isfinite(c_loss):  # off-grid centre
        if out["min_loss"] is None or c_loss < out["min_loss"]:
            out["min_loss"], out["min_at"] = float(c_loss), [0.0] * grid.dims
        out["max_loss"] = max(out["max_loss"] if out["max_loss"] is not None else c_loss, float(c_loss))
    edge = grid.edge_keys()
    edge_loss = [points[k]["loss"] for k in edge if points[k]["loss"] is not None and math.isfinite(points[k]["loss"])]
    edge_err = [points[k]["error"] for k in edge]
    out["edge_points"] = len(edge)
    out["edge_loss_mean"] = float(np.mean(edge_loss)) if edge_loss else None
    out["edge_loss_rise"] = (out["edge_loss_mean"] - centre["loss"]
                             if edge_loss and centre["loss"] is not None and math.isfinite(centre["loss"]) else None)
    out["edge_error_rise"] = float(np.mean(edge_err)) - centre["error"]
    out["non_finite_points"] = sum(1 for k in grid.keys if points[k]["loss"] is None
                                   or not math.isfinite(points[k]["loss"]))
    return out


# ------------------------------------------------------------------------------ partial file


def _read_partial(path: Path) -> dict[str, Any] | None:
    import json

    if not path.is_file():
        return None
    try:
        partial = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not readable ({exc}); delete it to start the grid afresh") from None
    if not isinstance(partial, dict) or partial.get("format") != PARTIAL_FORMAT:
        raise UserError(f"{path} is not a landscape partial-results file; use another --out or delete it")
    return partial


def _first_difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return f"{key} {old.get(key)!r} there, {new.get(key)!r} now"
    return None


def _write_partial(path: Path, partial: dict[str, Any]) -> None:
    from .report import dump_json

    partial = {k: v for k, v in partial.items() if k != "non_finite"}
    dump_json(partial, path)


# -------------------------------------------------------------------------------- the run


def _label_slug(k: int, label: str) -> str:
    p = Path(label)
    name = p.name.removesuffix(".pt") or label
    if name in ("best", "last") and len(p.parts) > 1:  # runs/r20/best.pt -> r20-best
        name = f"{p.parent.name}-{name}"
    return f"{k:02d}-" + (re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "checkpoint")


def landscape_command(checkpoints: Sequence[str], out: str | Path, *, dims: int, grid: int, lo: float, hi: float,
                      subset: int, data: str | None, seed: int, batch_size: int) -> str:
    """The ``resnetlab analyze landscape`` command line that reproduces (or resumes) a run."""
    parts = ["resnetlab", "analyze", "landscape", *map(str, checkpoints), "--dims", str(dims), "--grid", str(grid),
             f"--range={lo:g}:{hi:g}", "--subset", str(subset)]
    if data is not None:
        parts += ["--data", str(data)]
    parts += ["--seed", str(seed), "--batch-size", str(batch_size), "--out", str(out)]
    return shlex.join(parts)


def _schedule(ckpt: dict[str, Any]) -> str:
    saved = ckpt.get("config") or {}
    if not saved:
        return "not recorded in the checkpoint"
    length = (f"{saved['iters']} iters" if saved.get("iters") else
              f"{saved['epochs']} epochs" if saved.get("epochs") else "length not recorded")
    return f"{saved.get('recipe') or 'custom'}, {length}"


def run_landscape(checkpoints: Sequence[str], out: str | Path, *, dims: int = 1, grid: int = 21,
                  range_: str | tuple[float, float] = "-1:1", subset: int = 0, data: str | None = None, seed: int = 0,
                  batch_size: int = 256, device: str = "cpu", command: str | None = None,
                  max_points: int | None = None, progress: bool | None = None, figures: bool = True,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Evaluate the landscape of each checkpoint; write results, report and figures into ``out`` when complete.

    Returns ``{"complete": bool, "results": ..., "figures": [...], "done": n, "total": n}``. With
    ``max_points`` it stops after that many newly evaluated points (the rest on a later call with the
    same arguments); ``results`` is then None. ``figures=False`` writes the numbers and the report
    without figures (a second or so each).
    """
    from ..engine.distributed import resolve_device
    from ..weights import load_checkpoint, model_from_checkpoint
    from .plots import require_matplotlib

    if not checkpoints:
        raise UserError("give at least one checkpoint")
    check_settings(dims, grid, subset, batch_size)
    lo, hi = parse_range(range_) if isinstance(range_, str) else (float(range_[0]), float(range_[1]))
    if not lo < hi:
        raise UserError(f"--range LO:HI needs LO < HI; got {lo}:{hi}")
    require_matplotlib()  # before minutes of compute
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    checkpoints = [str(c) for c in checkpoints]
    command = command or landscape_command(checkpoints, out, dims=dims, grid=grid, lo=lo, hi=hi, subset=subset,
                                           data=data, seed=seed, batch_size=batch_size)
    settings = {"checkpoints": checkpoints, "dims": dims, "grid": grid, "range": [lo, hi], "subset": subset,
                "data": data, "seed": seed, "batch_size": batch_size}
    partial_path = out / PARTIAL_FILE
    partial = _read_partial(partial_path)
    if partial is not None:
        diff = _first_difference(partial.get("settings", {}), settings)
        if diff:
            raise UserError(f"{partial_path} was recorded with other arguments ({diff}): rerun with those, "
                            "or use another --out")
    else:
        partial = {"format": PARTIAL_FORMAT, "settings": settings, "checkpoints": {}, "points": {}}
    partial.setdefault("points", {})
    partial.setdefault("checkpoints", {})
    g = Grid.make(dims, lo, hi, grid)
    dev = resolve_device(device)
    total = len(checkpoints) * len(g.keys)
    done = sum(len([k for k in partial["points"].get(str(c), {}) if k in g.coeffs]) for c in range(len(checkpoints)))
    start = time.perf_counter()
    tty = sys.stderr.isatty() if progress is None else progress
    bar = None
    if tty:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=done, desc="landscape", unit="pt", file=sys.stderr, dynamic_ncols=True)
    new_points = new_images = 0
    data_cache: dict[tuple, Any] = {}
    records = []
    stopped = False
    try:
        for c, label in enumerate(checkpoints):
            ckpt = load_checkpoint(label)
            model = model_from_checkpoint(ckpt).to(dev).eval()
            w_sha = weights_sha256(ckpt["state_dict"])
            imgs = landscape_images(ckpt, label, data, subset, data_cache, log=log)
            ident = {"weights_sha256": w_sha, "images_sha256": imgs.sha256, "images": len(imgs.labels)}
            seen = partial["checkpoints"].get(str(c))
            if seen is not None and seen != ident:
                what = "weights" if seen.get("weights_sha256") != w_sha else "images"
                raise UserError(f"the {what} of {label} changed since {partial_path} was recorded; "
                                "use another --out, or delete it to start afresh")
            partial["checkpoints"][str(c)] = ident
            points = partial["points"].setdefault(str(c), {})
            todo = [k for k in g.keys if k not in points]
            if todo:
                dirs = random_directions(model, seed, dims)
                perturb = Perturber(model, dirs)
                norm = ckpt["normalization"]
                try:
                    for k in todo:
                        if max_points is not None and new_points >= max_points:
                            stopped = True
                            break
                        t0 = time.perf_counter()
                        perturb.set(g.coeffs[k])
                        r = evaluate_point(model, imgs, norm, batch_size, len(ckpt["classes"]), dev)
                        r["seconds"] = round(time.perf_counter() - t0, 4)
                        points[k] = r
                        _write_partial(partial_path, partial)
                        new_points += 1
                        new_images += r["images"]
                        if bar is not None:
                            bar.update(1)
                            bar.set_postfix(loss=f"{r['loss']:.3f}", refresh=False)
                        elif _progress_due(len(points), len(g.keys)):  # a log file or pipe: a line per tenth
                            log(f"{label}: {len(points)}/{len(g.keys)} points, {r['seconds']:.2f} s per point")
                finally:
                    perturb.restore()
            if stopped:
                break
            if not tty:
                log(f"{label}: all {len(g.keys)} points done")
            records.append({"label": label, "ckpt": ckpt, "images": imgs, "ident": ident})
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - start
    done = sum(len([k for k in partial["points"].get(str(c), {}) if k in g.coeffs]) for c in range(len(checkpoints)))
    if stopped:
        return {"complete": False, "results": None, "figures": [], "done": done, "total": total,
                "new_points": new_points, "new_images": new_images, "wall_seconds": wall}
    results, names = _write_outputs(out, command, settings, g, partial, records, dev, wall, new_points,
                                    new_images, figures)
    return {"complete": True, "results": results, "figures": names, "done": done, "total": total,
            "new_points": new_points, "new_images": new_images, "wall_seconds": wall}


def _progress_due(done: int, total: int) -> bool:
    """Whether a plain progress line is due after ``done`` of ``total`` points: ten lines a checkpoint."""
    step = max(1, total // 10)
    return done % step == 0 and done < total


# -------------------------------------------------------------------------------- outputs


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x * 100:.2f}%"


def _write_outputs(out: Path, command: str, settings: dict[str, Any], g: Grid, partial: dict[str, Any],
                   records: list[dict[str, Any]], dev: torch.device, wall: float, new_points: int,
                   new_images: int, draw: bool = True) -> tuple[dict[str, Any], list[str]]:
    from .report import markdown_table, write_report

    per = []
    for c, rec in enumerate(records):
        points = partial["points"][str(c)]
        ckpt = rec["ckpt"]
        loss, error = g.array(points, "loss"), g.array(points, "error")
        per.append({
            "checkpoint": rec["label"], "model": ckpt["model"]["name"], "pretrained": ckpt.get("pretrained"),
            "schedule": _schedule(ckpt), "data": rec["images"].source, "data_spec": rec["images"].spec,
            "images": rec["ident"]["images"], "weights_sha256": rec["ident"]["weights_sha256"],
            "images_sha256": rec["ident"]["images_sha256"], "normalization": ckpt["normalization"]["kind"],
            "loss": [_finite_or_none(v) for v in loss.ravel()] if g.dims == 1
            else [[_finite_or_none(v) for v in row] for row in loss],
            "error": error.tolist(),
            "centre": {k: points[g.centre_key][k] for k in ("loss", "error")},
            "centre_on_grid": g.centre_key != CENTRE_KEY,
            "summary": summarise(g, points),
            "images_evaluated": sum(int(p["images"]) for p in points.values()),
            "eval_seconds": round(sum(float(p["seconds"]) for p in points.values()), 2),
        })
    images_total = sum(p["images_evaluated"] for p in per)
    eval_total = round(sum(p["eval_seconds"] for p in per), 2)
    results = {
        "settings": settings,
        "coordinates": {"alpha": g.alpha, **({"beta": g.beta} if g.dims == 2 else {})},
        "layout": "loss[i] at alpha[i]" if g.dims == 1 else "loss[i][j] at (alpha[i], beta[j])",
        "directions": {"kind": "gaussian", "normalization": "filter", "ignore": "biasbn", "seed": settings["seed"],
                       "count": g.dims},
        "checkpoints": per,
        "points_per_checkpoint": len(g.keys),
        "images_evaluated": images_total,
        "eval_seconds": eval_total,
        "images_evaluated_this_run": new_images,
        "points_this_run": new_points,
        "wall_seconds": round(wall, 2),
        "threads": torch.get_num_threads(),
        "device": str(dev),
    }
    figures = _figures(out, g, per, settings) if draw else []
    config = {"analysis": "landscape", "command": command, **settings, "device": str(dev),
              "threads": torch.get_num_threads(), "torch": torch.__version__, "resnetlab": __version__}
    lo, hi = settings["range"]
    n = settings["grid"]
    shape = f"{n} points on [{lo:g}, {hi:g}]" if g.dims == 1 else f"{n} x {n} points on [{lo:g}, {hi:g}]^2"
    along = "one random direction" if g.dims == 1 else "two random directions"
    what = (f"The loss landscape of {len(per)} checkpoint(s) along {along} "
            f"(Li et al. 2018): {shape}"
            + ("" if g.centre_key != CENTRE_KEY else ", plus the unperturbed network (0 is outside the range)")
            + f". Directions: Gaussian, filter-normalised (each output-channel filter of every convolution and "
            f"fully connected weight rescaled to the norm of that filter of the checkpoint's weights), biases "
            f"and BN parameters and statistics not moved; drawn from seed {settings['seed']} and the weights' "
            f"shapes alone, so checkpoints of one architecture share them. Each point: mean cross-entropy and "
            f"top-1 error on training images without augmentation, the checkpoint's own normalisation, BN in "
            f"eval mode (running statistics), fp32, batch size {settings['batch_size']}.")
    data_lines = "\n".join(f"- `{p['checkpoint']}` ({p['model']}, {p['schedule']}): {p['images']:,} images "
                           f"(first {settings['subset'] or 'all'}, class-interleaved) of {p['data']}"
                           for p in per)
    rows = []
    for p in per:
        s = p["summary"]
        at = ", ".join(f"{v:g}" for v in s["min_at"]) if s["min_at"] else "n/a"
        rows.append([f"`{p['checkpoint']}`", p["model"], f"{p['images']:,}", _fmt(s["centre_loss"]),
                     _pct(s["centre_error"]), f"{_fmt(s['min_loss'])} at ({at})", _fmt(s["max_loss"]),
                     _fmt(s["edge_loss_rise"]), _pct(s["edge_error_rise"])])
    table = markdown_table(["checkpoint", "model", "images", "loss at centre", "error at centre", "min loss",
                            "max loss", "mean loss rise at edge", "mean error rise at edge"], rows,
                           align="llrrrrrrr")
    edge_note = (f"\n\nThe edge is the grid's {per[0]['summary']['edge_points']} outermost points; the rise is "
                 "their mean minus the centre's value, a crude sharpness: flatter minima rise less.")
    resumed = len(g.keys) * len(per) - new_points
    cost = (f"{images_total:,} image evaluations ({len(g.keys)} points x {len(per)} checkpoint(s) x images), "
            f"{eval_total:.1f} s of evaluation in all; this invocation evaluated {new_points} point(s) "
            f"({new_images:,} images) in {wall:.1f} s wall time"
            + (f", the other {resumed} came from {PARTIAL_FILE}" if resumed else "")
            + f". {torch.get_num_threads()} thread(s) on {dev}, torch {torch.__version__}.")
    sections = [("What was run", what + "\n\n" + data_lines), ("Summary", table + edge_note), ("Cost", cost)]
    write_report(out, f"Loss landscape ({g.dims}-D, filter-normalised directions)", command, config, results,
                 sections, figures)
    return results, figures


def _caption(settings: dict[str, Any], per: Sequence[dict[str, Any]]) -> str:
    from .plots import caption_line

    data = "; ".join(sorted({f"{p['images']:,} train images of {p['data_spec']}, no augmentation" for p in per}))
    schedule = per[0]["schedule"] if len(per) == 1 else "; ".join(f"{p['model']}: {p['schedule']}" for p in per)
    lo, hi = settings["range"]
    n = settings["grid"]
    grid = f"{n}-point" if settings["dims"] == 1 else f"{n}x{n}"
    return caption_line(data, schedule, settings["seed"],
                        f"{grid} grid on [{lo:g}, {hi:g}], filter-normalised directions, BN eval, fp32")


def _figures(out: Path, g: Grid, per: list[dict[str, Any]], settings: dict[str, Any]) -> list[str]:
    from .plots import Panel, Series, plot_panels

    caption = _caption(settings, per)
    if g.dims == 1:
        loss_panel = Panel("training loss", "alpha (filter-normalised direction)", "cross-entropy", logy=False)
        err_panel = Panel("training top-1 error", "alpha (filter-normalised direction)", "top-1 error (%)")
        for p in per:
            label = f"{p['checkpoint']} ({p['model']})"
            loss = [np.nan if v is None else v for v in p["loss"]]
            loss_panel.series.append(Series(label, g.alpha, loss, marker="."))
            err_panel.series.append(Series(label, g.alpha, [e * 100 for e in p["error"]], marker="."))
        name = "landscape-1d.png"
        plot_panels(out / name, [loss_panel, err_panel], caption, "1-D loss landscape (Li et al. 2018)", ncols=2)
        return [name]
    names = []
    for k, p in enumerate(per):
        slug = _label_slug(k, p["checkpoint"])
        cap = _caption(settings, [p])
        names.append(_contour(out / f"{slug}-contour.png", g, p, cap))
        names.append(_surface(out / f"{slug}-surface.png", g, p, cap))
    return names


def _loss_grid(p: dict[str, Any]) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in p["loss"]], dtype=float)


def _levels(z: np.ndarray, geometric: bool, n: int = 24) -> np.ndarray:
    """Contour levels between the finite minimum and maximum: geometric for losses (they span decades)."""
    finite = z[np.isfinite(z)]
    lo, hi = float(finite.min()), float(finite.max())
    if geometric and lo > 0:
        return np.geomspace(lo, hi, n)
    return np.linspace(lo, hi, n)


def _contour(path: Path, g: Grid, p: dict[str, Any], caption: str) -> str:
    from .plots import new_figure, save_figure

    fig, axes = new_figure(1, 2, panel_size=(4.6, 4.0))
    a, b = np.meshgrid(np.array(g.alpha), np.array(g.beta), indexing="ij")
    panels = ((axes[0, 0], _loss_grid(p), "training loss", True),
              (axes[0, 1], np.array(p["error"], dtype=float) * 100, "top-1 error (%)", False))
    for ax, z, title, geometric in panels:
        if np.isfinite(z).sum() >= 2 and np.nanmax(z) > np.nanmin(z):
            cs = ax.contour(a, b, np.ma.masked_invalid(z), levels=_levels(z, geometric), cmap="viridis",
                            linewidths=0.9)
            ax.clabel(cs, cs.levels[::4], inline=True, fontsize=6, fmt="%.3g")
        ax.plot([0], [0], marker="+", color="tab:red", markersize=10, mew=1.5)
        ax.set_title(f"{title}: {p['checkpoint']}", fontsize=9)
        ax.set_xlabel("alpha (direction 1)")
        ax.set_ylabel("beta (direction 2)")
        ax.set_aspect("equal")
    save_figure(fig, path, caption, f"2-D loss landscape, contours ({p['model']})")
    return path.name


def _surface(path: Path, g: Grid, p: dict[str, Any], caption: str) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .plots import require_matplotlib, save_figure

    require_matplotlib()
    fig = Figure(figsize=(6.0, 5.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(projection="3d")
    a, b = np.meshgrid(np.array(g.alpha), np.array(g.beta), indexing="ij")
    loss = _loss_grid(p)
    ax.plot_surface(a, b, np.ma.masked_invalid(loss), cmap="viridis", linewidth=0, antialiased=True,
                    rstride=1, cstride=1)
    ax.set_xlabel("alpha")
    ax.set_ylabel("beta")
    ax.set_zlabel("training loss")
    ax.set_title(p["checkpoint"], fontsize=9)
    save_figure(fig, path, caption, f"2-D loss landscape, surface ({p['model']})")
    return path.name
