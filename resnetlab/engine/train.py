"""The training loop: one function that reads top to bottom.

``train(cfg)`` opens the data, builds the model, resolves the recipe into a
schedule, and runs SGD, evaluating on the validation set at regular intervals.
Each evaluation appends a line to ``metrics.jsonl`` and writes ``last.pt`` (and
``best.pt`` when the validation error improved) atomically, so a crash, a kill or
a diverged loss never costs more than one evaluation interval of work.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import signal
import sys
import threading
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..data import DataBundle, MemoryLoader, StreamLoader, open_data, with_normalization
from ..data.augment import mix_batch, soft_target_cross_entropy
from ..data.loader import batch_generator, make_val_loader
from ..errors import UserError
from ..hardware import bf16_support, device_name, native_bf16
from ..io import atomic_write_text
from ..models import create_model
from ..models.profile import count_layers
from . import distributed
from ..weights import atomic_save, load_checkpoint, load_pretrained, load_weights, make_checkpoint, unwrap
from .config import TrainConfig, check_amp, saved_split_seed
from .ema import WeightEma
from .graphs import GraphedForward, GraphedTrainStep, check_cuda_graphs
from .evaluate import autocast, evaluate
from .schedule import Schedule, lr_at


NORMALIZE_TEXT = {"channel": "per channel (mean/std)", "pixel-mean": "by the per-pixel mean image (paper Sec. 4.2)"}


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is left in place."""


@dataclass
class RunResult:
    """What a finished (or interrupted) run left behind."""

    out_dir: Path
    step: int
    total: int
    status: str  # "completed" | "interrupted"
    best: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    signal: int | None = None  # the signal (SIGINT, SIGTERM) that stopped an interrupted run


MIX_STREAM = 2  # the mixing draws' own random stream per batch (the loader's are 0 and 1)
EARLY_LOSSES = 200  # per-iteration training losses logged from the start of a run

# --------------------------------------------------------------------------- set-up helpers


def default_out_dir(model: str) -> Path:
    """``runs/<model>-<timestamp>``."""
    return Path("runs") / f"{model}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def fast_defaults(cfg: TrainConfig, device: torch.device) -> tuple[bool, str]:
    """channels_last and autocast dtype, where unset: the settings measured fastest per device.

    channels_last everywhere: oneDNN (CPU) and cuDNN (tensor cores) run NHWC convolutions
    fastest. bf16 autocast wherever the hardware computes in bf16 natively
    (:func:`resnetlab.hardware.native_bf16`): CUDA GPUs with bf16 (fp16 before Ampere) and CPUs
    with AVX512-BF16 or AMX. On the project's AVX512-BF16 CPU (``resnetlab bench``,
    docs/benchmarks.md, one thread, interleaved repeats) bf16 made the ResNet-20/56 batch-128
    training step 1.4-1.6x faster than channels_last fp32 without compile. CPUs without native
    bf16 would emulate it, several times slower than fp32, so they stay fp32.
    """
    channels_last = True if cfg.channels_last is None else cfg.channels_last
    if cfg.amp is not None:
        return channels_last, check_amp(cfg.amp)
    if device.type == "cuda":
        return channels_last, "bf16" if native_bf16(device) else "fp16"
    return channels_last, "bf16" if native_bf16(device) else "none"


def logged_sessions(config: dict[str, Any]) -> list[dict[str, Any]]:
    """The sessions a run's ``config.json`` (or checkpoint config) logged; a run from before the log gets
    one first session from its config, its hardware unrecorded."""
    resolved = config.get("resolved", {})
    return resolved.get("sessions") or [{
        "from_iteration": 0, "device": resolved.get("device"), "hardware": None, "amp": resolved.get("amp"),
        "channels_last": resolved.get("channels_last"), "compile": config.get("compile"),
        "world_size": resolved.get("world_size")}]


def session_precision(config: dict[str, Any]) -> str:
    """The precision a run trained in, as its engine resolved it: ``fp32``, ``bf16 autocast``, ...; a run resumed
    in another precision (on another machine) says where it changed: ``fp32, bf16 autocast from 12,285``."""
    parts, last = [], None
    for session in logged_sessions(config):
        amp = session.get("amp") or "none"
        word = "fp32" if amp == "none" else f"{amp} autocast"
        if word != last:
            parts.append(word if last is None else f"{word} from {session['from_iteration']:,}")
        last = word
    return ", ".join(parts)


def session_hardware(config: dict[str, Any]) -> str:
    """The hardware a run trained on, from its sessions log (each distinct machine once, oldest first);
    ``not logged`` for a run, or the sessions of one, from before the engine kept the log."""
    return "; ".join(dict.fromkeys(s.get("hardware") or "not logged" for s in logged_sessions(config)))


def session_log(resume_ckpt: dict[str, Any] | None, step: int, device: torch.device, amp: str,
                channels_last: bool, compile: bool, world: int) -> list[dict[str, Any]]:
    """Every session that trained the run so far, this one last: from which iteration, on what, how.

    A run resumed on another machine keeps its recipe but may change precision, since the default is
    per device (bf16 only where it is native, :func:`fast_defaults`); the log keeps what each part of
    the run used. Sessions that ended before their first checkpoint (from ``step`` on) trained nothing
    that survived and are dropped. A checkpoint from before the log: :func:`logged_sessions`.
    """
    before = [] if resume_ckpt is None else logged_sessions(resume_ckpt.get("config", {}))
    now = {"from_iteration": step, "device": str(device), "hardware": device_name(device), "amp": amp,
           "channels_last": channels_last, "compile": compile, "world_size": world,
           "started": datetime.now().astimezone().isoformat(timespec="seconds")}
    return [s for s in before if s["from_iteration"] < step] + [now]


def precision_note(cfg: TrainConfig, device: torch.device, amp: str) -> str:
    """One line saying which precision a run uses and why (the first lines of ``resnetlab train``)."""
    what = {"none": "fp32", "bf16": "bf16 autocast", "fp16": "fp16 autocast with a GradScaler"}[amp]
    if cfg.amp is not None:
        return f"precision: {what} (--amp {cfg.amp})"
    support = bf16_support(device)
    if amp == "bf16":
        why = f"{support.reason}: bf16 computes natively, measured faster than fp32 by `resnetlab bench train`"
    elif amp == "fp16":
        why = f"{support.reason}; fp16 tensor cores instead"
    else:
        why = support.reason
    return f"precision: {what}, the default on this {device.type} ({why}; --amp to choose)"


def parameter_groups(model: nn.Module, weight_decay: float, decay_norm_and_bias: bool) -> list[dict[str, Any]]:
    """SGD parameter groups; optionally no weight decay on norm weights and biases (1-D parameters)."""
    if decay_norm_and_bias:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def resolve_schedule(cfg: TrainConfig, steps_per_epoch: int, depth: int) -> Schedule:
    """Turn the recipe's length (iterations or epochs), milestones (fractions) and warm-up into iterations."""
    if cfg.iters is not None:
        total = int(cfg.iters)
    elif cfg.epochs is not None:
        total = int(round(cfg.epochs * steps_per_epoch))
    else:
        raise UserError("give the run a length: --iters or --epochs")
    if total < 1:
        raise UserError(f"the run has no iterations (iters={cfg.iters}, epochs={cfg.epochs})")
    # Paper Sec. 4.2: only 110 layers and deeper need the 0.01 warm-up.
    warmup = cfg.warmup_iters if depth >= cfg.warmup_min_depth else 0
    warmup = min(warmup, total // 2)
    milestones = tuple(int(round(f * total)) for f in cfg.milestones)
    return Schedule(cfg.lr, total, cfg.schedule, milestones, cfg.gamma, warmup, cfg.warmup_lr)


class StopRequest:
    """SIGINT/SIGTERM set a flag the loop checks after every step; a second signal aborts at once."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum: int, _frame: Any) -> None:
        if self.signum is not None:  # second Ctrl-C: give up on a clean stop
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\nresnetlab: {signal.Signals(signum).name} received; saving a checkpoint and stopping", file=sys.stderr)

    @contextmanager
    def installed(self) -> Iterator["StopRequest"]:
        if threading_main():
            old = {s: signal.signal(s, self._handle) for s in (signal.SIGINT, signal.SIGTERM)}
        else:
            old = {}
        try:
            yield self
        finally:
            for s, h in old.items():
                signal.signal(s, h)


def threading_main() -> bool:
    """Signal handlers can only be installed from the main thread."""
    return threading.current_thread() is threading.main_thread()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """A run folder's ``metrics.jsonl``: one record per evaluation, in order."""
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


class MetricsLog:
    """metrics.jsonl, curves.png and TensorBoard events (when tensorboard is installed), rank 0 only.

    metrics.jsonl gets every record at once; curves.png is redrawn at most every ``plot_every_s`` seconds
    and at :meth:`close` (a figure costs about 0.3 s on these CPUs, more than a short run's evaluation).
    """

    def __init__(self, out_dir: Path, enabled: bool, title: str, plot_every_s: float = 30.0) -> None:
        self.out_dir, self.enabled, self.title = out_dir, enabled, title
        self.plot_every_s = plot_every_s
        self.plotted_at = time.monotonic()  # the first drawing waits an interval too: a short run draws once
        self.unplotted = False
        self.path = out_dir / "metrics.jsonl"
        self.history: list[dict[str, Any]] = []
        if self.path.exists():
            self.history = read_metrics(out_dir)
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out_dir / "tb"))
            except Exception:  # noqa: BLE001 - tensorboard is optional
                self.tb = None

    def truncate(self, step: int) -> None:
        """Forget lines written after ``step`` (a resumed run re-does them)."""
        self.history = [m for m in self.history if m["iteration"] <= step]
        if self.enabled:
            atomic_write_text(self.path, "".join(json.dumps(m) + "\n" for m in self.history))

    def append(self, record: dict[str, Any]) -> None:
        self.history.append(record)
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key in ("train_loss", "train_err", "val_loss", "val_top1_err", "val_top5_err", "lr", "img_s"):
                if record.get(key) is not None:
                    self.tb.add_scalar(key, record[key], record["iteration"])
            self.tb.flush()
        self.unplotted = True
        if time.monotonic() - self.plotted_at >= self.plot_every_s:
            self.plot()

    def plot(self) -> None:
        """Draw curves.png from every record so far."""
        from .curves import plot_run

        plot_run(self.history, self.out_dir / "curves.png", self.title)
        self.plotted_at, self.unplotted = time.monotonic(), False

    def close(self) -> None:
        """Draw what the last drawing left out; close TensorBoard's writer."""
        if self.unplotted:  # only ever set where enabled
            self.plot()
        if self.tb is not None:
            self.tb.close()


def make_loaders(
    data: DataBundle, cfg: TrainConfig, device: torch.device, channels_last: bool, info: distributed.DistInfo
) -> tuple[Any, Any]:
    """The training and validation loaders: device-resident for in-memory data, DataLoader workers otherwise."""
    common = dict(mean=data.mean, std=data.std, device=device, channels_last=channels_last,
                  rank=info.rank, world=info.world)
    if cfg.batch_size % info.world:
        raise UserError(f"batch size {cfg.batch_size} does not split over {info.world} processes")
    if data.in_memory:
        train = MemoryLoader(data.train.images, data.train.labels, cfg.batch_size, train=True, seed=cfg.seed,
                             pad=cfg.pad if cfg.augment == "crop-flip" else 0, flip=cfg.augment != "none",
                             policy=cfg.policy, cutout=cfg.cutout, **common)
    else:
        if cfg.policy != "none" or cfg.cutout:
            raise UserError("--policy and --cutout run on in-memory (CIFAR-size) data only; this data set is "
                            "streamed from disk")
        train = StreamLoader(data.train, cfg.batch_size, train=True, seed=cfg.seed, workers=cfg.workers, **common)
    val = None
    if data.val is not None and len(data.val):
        val = make_val_loader(data.val, data.in_memory, cfg.batch_size, seed=cfg.seed, workers=cfg.workers, **common)
    if len(train) == 0:
        raise UserError(f"batch size {cfg.batch_size} is larger than the {len(data.train)} training images")
    return train, val


# --------------------------------------------------------------------------- resolving and building a run


@dataclass
class ResolvedRun:
    """Which run to train: its config, its folder and, when it continues one, the checkpoint it continues."""

    cfg: TrainConfig
    out_dir: Path
    checkpoint: dict[str, Any] | None = None  # the resumed run's last.pt; None for a new run

    @property
    def start_step(self) -> int:
        """The iteration training starts at: the checkpoint's, or 0 for a new run."""
        return int(self.checkpoint["step"]) if self.checkpoint is not None else 0


def resolve_run(cfg: TrainConfig) -> ResolvedRun:
    """A new run, ``--resume DIR`` or ``--resume auto``, resolved from the run folder alone (no data, no model).

    A resumed run's own saved config wins, except where this process runs and how fast.
    """
    resume_ckpt = None
    if cfg.resume == "auto":
        # torchrun --max-restarts relaunches the same command: the first attempt starts the run in --out,
        # a restarted one continues it from there.
        if not cfg.out:
            raise UserError("--resume auto needs --out DIR (the run folder to continue, or to start the run in)")
        cfg = cfg.replace(resume=cfg.out if (Path(cfg.out) / "last.pt").is_file() else None)
    if cfg.resume:
        resume_dir = Path(cfg.resume)
        if not (resume_dir / "last.pt").is_file():
            raise UserError(f"--resume {resume_dir}: no such run folder (expected {resume_dir / 'last.pt'})")
        resume_ckpt = load_checkpoint(resume_dir / "last.pt")
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        saved = {k: v for k, v in resume_ckpt["config"].items() if k in known}
        saved["milestones"] = tuple(saved.get("milestones", ()))
        saved["split_seed"] = saved_split_seed(resume_ckpt["config"])
        # --sync-bn may be added on resume: a run started by 1 process can continue on N with synced statistics.
        cfg = TrainConfig(**saved).replace(
            resume=str(resume_dir), out=str(resume_dir), device=cfg.device, compile=cfg.compile, workers=cfg.workers,
            sync_bn=cfg.sync_bn or bool(saved.get("sync_bn")),
        )

    out_dir = Path(cfg.out) if cfg.out else default_out_dir(cfg.model)
    if not cfg.resume and (out_dir / "last.pt").exists():
        raise UserError(f"{out_dir} already holds a run; continue it with --resume {out_dir} or pick another --out")
    return ResolvedRun(cfg, out_dir, resume_ckpt)


@dataclass
class Run:
    """Everything a run trains with, built once before the loop (:func:`build_run`)."""

    cfg: TrainConfig
    info: distributed.DistInfo
    out_dir: Path
    data: DataBundle
    model: nn.Module  # the user's model, on its device: what checkpoints save and evaluations broadcast
    forward: Callable[..., torch.Tensor]  # the training forward: model inside DDP and/or torch.compile
    eval_forward: Callable[..., torch.Tensor]
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    schedule: Schedule
    train_loader: Any
    val_loader: Any
    steps_per_epoch: int
    eval_every: int
    channels_last: bool
    amp: str
    config: dict[str, Any]  # config.json: the config plus what it resolved to here
    metrics: MetricsLog
    ema: WeightEma | None  # --ema-decay: the moving average of the weights, evaluated beside them
    # Where a resumed run left off; a new run starts at 0 with no time spent and no best record.
    start_step: int = 0
    wall_before: float = 0.0
    best: dict[str, Any] | None = None
    graphed: GraphedTrainStep | None = None  # --cuda-graphs: the step replayed from a CUDA graph

    @property
    def input_size(self) -> list[int]:
        """C, H, W of the model's input, as checkpoints record it."""
        return [self.data.in_chans, self.data.image_size, self.data.image_size]

    def describe(self) -> str:
        """The log line that opens training."""
        cfg, total, spe = self.cfg, self.schedule.total, self.steps_per_epoch
        return (
            f"training {cfg.model} ({count_layers(unwrap(self.model))} layers) for {total} iterations "
            f"({total / spe:.1f} epochs of {spe}), batch {cfg.batch_size}, "
            f"recipe {cfg.recipe}, {self.info.device}, channels_last={self.channels_last}, amp={self.amp}, "
            f"compile={cfg.compile}, world={self.info.world}; writing to {self.out_dir}"
        )


def build_run(resolved: ResolvedRun, argv: list[str], log: Callable[[str], None],
              info: distributed.DistInfo) -> Run:
    """Open the data, build the model, optimizer, GradScaler, schedule and loaders, restore a resumed run's
    state, write ``config.json`` and open the metrics log: everything the loop needs, in one :class:`Run`."""
    cfg, out_dir, resume_ckpt, device = resolved.cfg, resolved.out_dir, resolved.checkpoint, info.device

    # Data first: the class count and channels decide the classifier and stem.
    data = open_data(cfg.data, val_split=cfg.val_split, subset=cfg.subset, seed=cfg.split_seed,
                     image_size=cfg.image_size, log=log)
    data = with_normalization(data, cfg.normalize)
    log(f"data: {data.source}; normalised {NORMALIZE_TEXT[cfg.normalize]}")

    torch.manual_seed(cfg.seed)
    model_args = {"num_classes": len(data.classes), "in_chans": data.in_chans, **cfg.model_args}
    model = create_model(cfg.model, **model_args)
    if cfg.init and resume_ckpt is None:
        log(load_pretrained(model, cfg.init, replace_classifier=True))
    if cfg.sync_bn and info.world > 1:
        model = distributed.convert_sync_batchnorm(model, device)

    channels_last, amp = fast_defaults(cfg, device)
    log(precision_note(cfg, device, amp))
    if cfg.cuda_graphs:
        check_cuda_graphs(device, amp, cfg.compile, info.world)
    train_loader, val_loader = make_loaders(data, cfg, device, channels_last, info)
    steps_per_epoch = len(train_loader)
    schedule = resolve_schedule(cfg, steps_per_epoch, count_layers(unwrap(model)))
    eval_every = cfg.eval_every or max(1, min(steps_per_epoch, math.ceil(schedule.total / 20)))

    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        parameter_groups(model, cfg.weight_decay, cfg.decay_norm_and_bias),
        lr=schedule.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
        # A graphed step needs the fused kernel: it takes the lr as a device tensor without a host read.
        **({"fused": True} if cfg.cuda_graphs else {}),
    )

    # fp16's 5-bit exponent underflows small gradients; the loss is scaled up and the step skipped on
    # overflow (torch.amp.GradScaler). bf16 has fp32's exponent and needs no scaler.
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    step, wall_before, best = resolved.start_step, 0.0, None
    ema = WeightEma(model, cfg.ema_decay) if cfg.ema_decay else None
    if resume_ckpt is not None:
        load_weights(unwrap(model), resume_ckpt["state_dict"], source=f"{cfg.resume}/last.pt")
        optimizer.load_state_dict(resume_ckpt["optimizer"])
        if resume_ckpt.get("grad_scaler"):
            scaler.load_state_dict(resume_ckpt["grad_scaler"])
        wall_before = float(resume_ckpt.get("wall_time", 0.0))
        best = resume_ckpt.get("best")
        torch.set_rng_state(resume_ckpt["rng"]["torch"])
        if ema is not None:
            ema.load_state_dict(resume_ckpt["ema_state_dict"])
        log(f"resumed {cfg.resume} at iteration {step} of {schedule.total}")
    if not distributed.same_on_all_ranks(step, info):
        # E.g. a node that cannot see the run folder starts afresh while rank 0 resumes.
        raise UserError(f"the {info.world} processes start at different iterations (rank {info.rank} at {step}); "
                        "the run folder must be on storage that every node sees")

    config = {
        **cfg.to_dict(),
        "out": str(out_dir),
        "resolved": {
            "total_iters": schedule.total, "milestones_iters": list(schedule.milestones),
            "warmup_iters": schedule.warmup_iters, "warmup_lr": schedule.warmup_lr,
            "steps_per_epoch": steps_per_epoch, "eval_every": eval_every, "device": str(device),
            "channels_last": channels_last, "amp": amp, "world_size": info.world,
            "model_args": model_args, "depth": count_layers(unwrap(model)),
            "classes": data.classes, "mean": list(data.mean), "std": list(data.std),
            "data_source": data.source, "val_name": data.val_name,
            "sessions": session_log(resume_ckpt, step, device, amp, channels_last, cfg.compile, info.world),
        },
        "command": argv,
    }
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.json", json.dumps(config, indent=2) + "\n")
    metrics = MetricsLog(out_dir, info.is_main, f"{cfg.model} | {cfg.recipe} | {data.source}")
    metrics.truncate(step)

    ddp_model = model
    if info.world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    forward = torch.compile(ddp_model) if cfg.compile else ddp_model
    # Evaluation goes around DDP: DDP broadcasts buffers on every forward, which needs the same number of eval
    # batches on every rank, and sharding the last partial batch does not give that (StreamLoader); rank 0's
    # buffers are broadcast once per evaluation instead.
    eval_forward = forward if info.world == 1 else (torch.compile(model) if cfg.compile else model)
    graphed = None
    if cfg.cuda_graphs:
        loss_fn = functools.partial(training_loss, label_smoothing=cfg.label_smoothing)
        graphed = GraphedTrainStep(forward, optimizer, loss_fn, device, amp)
        eval_forward = GraphedForward(model, amp)
    return Run(cfg, info, out_dir, data, model, forward, eval_forward, optimizer, scaler, schedule, train_loader,
               val_loader, steps_per_epoch, eval_every, channels_last, amp, config, metrics, ema, step, wall_before,
               best, graphed)


# --------------------------------------------------------------------------- the loop


@dataclass
class LoopState:
    """What changes as the loop runs: the iteration, the best record, the timers and the running sums."""

    step: int
    best: dict[str, Any] | None  # the record of the lowest validation error so far
    wall_before: float  # seconds the run trained before this process (earlier, resumed-from processes)
    started: float  # time.perf_counter() when this process's loop began
    sums: torch.Tensor  # float64 [loss sum, errors, images] since the last evaluation
    # The loss of each of the first EARLY_LOSSES iterations, kept in the first metrics record: how a
    # run *starts* (deep nets at lr 0.1 spike, He et al. 2015 Sec. 4.2) is lost in interval averages.
    early_losses: list[float] | None
    train_time: float = 0.0  # seconds spent in training steps since the last evaluation (for img/s)
    last_record: dict[str, Any] | None = None
    status: str = "completed"  # "completed" | "interrupted"

    @classmethod
    def start(cls, run: Run) -> "LoopState":
        """The state at the run's first iteration in this process (0, or where a resumed run left off)."""
        return cls(
            step=run.start_step, best=run.best, wall_before=run.wall_before, started=time.perf_counter(),
            sums=torch.zeros(3, dtype=torch.float64, device=run.info.device),
            early_losses=[] if run.start_step == 0 else None,
        )

    def wall_time(self) -> float:
        """Seconds the run has trained, over all its processes."""
        return self.wall_before + (time.perf_counter() - self.started)

    def running_loss(self) -> float:
        """The mean training loss since the last evaluation."""
        return float(self.sums[0] / self.sums[2].clamp(min=1))


def train(cfg: TrainConfig, argv: list[str] | None = None, log: Callable[[str], None] | None = None) -> RunResult:
    """Train ``cfg.model`` on ``cfg.data`` with ``cfg``'s recipe; see the module docstring."""
    info = distributed.setup(cfg.device)
    log = log or (lambda msg: print(msg, flush=True) if info.is_main else None)
    try:
        result = _train(cfg, argv or [], log, info)
    except BaseException:
        distributed.teardown(wait_for_peers=False)
        raise
    distributed.teardown()
    return result


def _train(cfg: TrainConfig, argv: list[str], log: Callable[[str], None], info: distributed.DistInfo) -> RunResult:
    """Resolve and build the run, then step until its last iteration or a stop signal, evaluating and
    checkpointing every ``eval_every`` iterations, at the end and when stopped."""
    run = build_run(resolve_run(cfg), argv, log, info)
    log(run.describe())
    state = LoopState.start(run)
    total = run.schedule.total
    progress = Progress(enabled=info.is_main, steps_per_epoch=run.steps_per_epoch, total=total)
    stop = StopRequest()
    with stop.installed(), closing(run.metrics):  # curves.png is drawn up to date even on a crash
        while state.step < total:
            lr = train_step(run, state)
            progress.update(state.step, loss=state.running_loss() if progress.tty else None, lr=lr)
            stopping = distributed.broadcast_flag(stop.signum is not None, info)
            if state.step % run.eval_every == 0 or state.step == total or stopping:
                record = evaluate_and_checkpoint(run, state, lr, stopping)
                progress.log_eval(record, run.data.val_name)
            if stopping:
                state.status = "interrupted"
                log(f"stopped at iteration {state.step}; checkpoint {run.out_dir / 'last.pt'}; "
                    f"continue with --resume {run.out_dir}")
                break
    progress.close()
    return finish_run(run, state, stop.signum, log)


def train_step(run: Run, state: LoopState) -> float:
    """One SGD iteration at ``state.step``: advances the step, the running sums and the early losses.

    Returns the iteration's learning rate; a non-finite loss raises :class:`TrainingDiverged`.
    """
    device = run.info.device
    epoch, index = divmod(state.step, run.steps_per_epoch)
    t0 = time.perf_counter()
    x, y = run.train_loader.batch(epoch, index)
    mixed = mixed_targets(run, x, y, epoch, index)
    x, target = mixed if mixed is not None else (x, y)
    lr = lr_at(state.step, run.schedule)
    loss, logits = run.graphed(x, target, lr) if run.graphed is not None else eager_step(run, x, target, lr)
    if run.ema is not None:
        run.ema.update(run.model)
    state.step += 1
    if state.early_losses is not None and state.step <= EARLY_LOSSES:
        state.early_losses.append(round(float(loss.detach()), 4))
    with torch.no_grad():
        state.sums += torch.stack([loss.detach().double() * len(y), (logits.argmax(1) != y).sum().double(),
                                   torch.tensor(float(len(y)), dtype=torch.float64, device=device)])
    if device.type == "cpu" or state.step % 50 == 0 or state.step % run.eval_every == 0:
        if not torch.isfinite(state.sums[0]):
            raise TrainingDiverged(
                f"loss became non-finite near iteration {state.step} (lr {lr:g}); the last good checkpoint "
                f"is {run.out_dir / 'last.pt'}; lower --lr or check the data"
            )
    state.train_time += time.perf_counter() - t0
    return lr


def eager_step(run: Run, x: torch.Tensor, target: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward, loss, backward and SGD step at ``lr``, as written; returns (loss, logits)."""
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    with autocast(run.info.device, run.amp):
        logits = run.forward(x)
        loss = training_loss(logits, target, run.cfg.label_smoothing)
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()  # the identity unless fp16
    run.scaler.step(run.optimizer)
    run.scaler.update()
    return loss, logits


def mixed_targets(run: Run, x: torch.Tensor, y: torch.Tensor, epoch: int,
                  index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``--mix mixup|cutmix``: the mixed batch and its soft targets (None: no mixing), seeded by (seed, epoch,
    batch, rank); each rank mixes within its own shard of the batch."""
    if run.cfg.mix == "none":
        return None
    g = batch_generator(run.cfg.seed, epoch, index + 1, MIX_STREAM, run.info.rank)
    return mix_batch(x, y, len(run.data.classes), run.cfg.mix, run.cfg.mix_alpha, g)


def training_loss(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Cross-entropy against class indices, or against soft targets (mixup/cutmix), label smoothing on either."""
    if targets.ndim == 1:
        return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
    k = logits.shape[1]
    return soft_target_cross_entropy(logits, targets * (1 - label_smoothing) + label_smoothing / k)


def evaluate_and_checkpoint(run: Run, state: LoopState, lr: float, stopping: bool) -> dict[str, Any]:
    """End an evaluation interval: the interval's training metrics, the validation metrics (unless stopping),
    a metrics line (unless stopping), ``best.pt`` when the validation error improved, and ``last.pt``.

    Returns the interval's record; resets the running sums and the interval timer.
    """
    info = run.info
    # Every rank joins the all-reduce of the train sums and the sharded evaluation.
    if info.world > 1:
        dist.all_reduce(state.sums)
    sums, step = state.sums, state.step
    n_seen = max(1.0, float(sums[2]))
    record = {
        "iteration": step, "epoch": round(step / run.steps_per_epoch, 3), "lr": lr,
        "train_loss": float(sums[0]) / n_seen, "train_err": float(sums[1]) / n_seen,
        "img_s": float(sums[2]) / max(state.train_time, 1e-9),
    }
    if run.val_loader is not None and not stopping:
        distributed.broadcast_buffers(run.model, info)
        res = evaluate(run.eval_forward, run.val_loader.epoch(0), len(run.data.classes), device=info.device,
                       amp=run.amp, tta_flip=run.cfg.tta_flip)
        record.update(val_loss=res["loss"], val_top1_err=res["top1_err"], val_top5_err=res["top5_err"])
        if run.ema is not None:
            res = evaluate(run.ema.model, run.val_loader.epoch(0), len(run.data.classes), device=info.device,
                           amp=run.amp, tta_flip=run.cfg.tta_flip)
            record.update(ema_val_loss=res["loss"], ema_val_top1_err=res["top1_err"], ema_val_top5_err=res["top5_err"])
    record["wall_time"] = state.wall_time()
    if state.early_losses:
        record["early_losses"], state.early_losses = state.early_losses, None
    sums.zero_()
    state.train_time = 0.0
    state.last_record = record
    if "val_top1_err" in record and (state.best is None or record["val_top1_err"] < state.best["val_top1_err"]):
        state.best = dict(record)
        save_checkpoint(run, state, "best.pt", record)
    if not stopping:
        run.metrics.append(record)
    save_checkpoint(run, state, "last.pt", record)
    return record


def save_checkpoint(run: Run, state: LoopState, name: str, record: dict[str, Any] | None) -> None:
    """Write ``run.out_dir / name`` atomically (rank 0 only): weights, optimizer, GradScaler, RNG, step and config."""
    if not run.info.is_main:
        return
    ckpt = make_checkpoint(
        run.model, classes=run.data.classes, mean=run.data.mean, std=run.data.std, input_size=run.input_size,
        optimizer=run.optimizer.state_dict(), step=state.step, epoch=state.step / run.steps_per_epoch,
        rng={"torch": torch.get_rng_state()}, config=run.config, best=state.best, metrics=record,
        wall_time=state.wall_time(),
    )
    if run.scaler.is_enabled():
        ckpt["grad_scaler"] = run.scaler.state_dict()
    if run.ema is not None:
        ckpt["ema_state_dict"] = run.ema.state_dict()
    atomic_save(ckpt, run.out_dir / name)


def finish_run(run: Run, state: LoopState, signum: int | None, log: Callable[[str], None]) -> RunResult:
    """The run's :class:`RunResult`; a completed run also writes ``summary.json`` and logs its best error."""
    result = RunResult(run.out_dir, state.step, run.schedule.total, state.status, state.best, state.last_record,
                       run.metrics.history, signal=signum)
    if run.info.is_main and state.status == "completed":
        summary = {"best": state.best, "last": state.last_record, "total_iters": run.schedule.total,
                   "wall_time": state.wall_time()}
        atomic_write_text(run.out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
        err = f"{state.best['val_top1_err'] * 100:.2f}%" if state.best else "n/a (no validation set)"
        log(f"done: best {run.data.val_name or 'validation'} top-1 error {err}; checkpoints in {run.out_dir}")
    return result


class Progress:
    """A tqdm bar per epoch on a terminal; plain log lines otherwise (CI, files, pipes)."""

    def __init__(self, enabled: bool, steps_per_epoch: int, total: int) -> None:
        self.enabled, self.steps_per_epoch, self.total = enabled, steps_per_epoch, total
        self.tty = enabled and sys.stderr.isatty()
        self.bar = None
        self.last_print = time.perf_counter()

    def update(self, step: int, loss: float | None, lr: float) -> None:
        if not self.tty:
            return
        from tqdm import tqdm

        epoch, index = divmod(step - 1, self.steps_per_epoch)
        if self.bar is None or index == 0:
            if self.bar is not None:
                self.bar.close()
            remaining = min(self.steps_per_epoch, self.total - epoch * self.steps_per_epoch)
            self.bar = tqdm(total=remaining, initial=index, desc=f"epoch {epoch + 1}", unit="it", leave=False)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.3g}", refresh=False)

    def log_eval(self, r: dict[str, Any], val_name: str) -> None:
        if not self.enabled:
            return
        val = (f" {val_name or 'val'} loss {r['val_loss']:.3f} top-1 err {r['val_top1_err'] * 100:.2f}%"
               f" top-5 err {r['val_top5_err'] * 100:.2f}%" if "val_loss" in r else "")
        line = (f"iter {r['iteration']}/{self.total} epoch {r['epoch']:.2f} lr {r['lr']:.3g} "
                f"train loss {r['train_loss']:.3f} err {r['train_err'] * 100:.2f}%{val} "
                f"{r['img_s']:.0f} img/s {r['wall_time']:.0f}s")
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

