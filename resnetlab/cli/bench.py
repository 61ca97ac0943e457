"""``resnetlab bench {train,infer}``: throughput of every execution mode, side by side, in one run."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager
from typing import Iterator

from ..errors import UserError
from .common import parse_input_size

DEFAULT_BATCH = {"train": 128, "infer": 16}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="images/s of every execution mode (eager, channels_last, bf16, compile, fused, onnxruntime)",
        description="Measure a training step or an inference pass of one model in several execution modes on the "
                    "same input, in one run: images/s (median of interleaved repeats), ratio to eager-fp32, "
                    "GFLOP/s and share of the machine's matmul peak measured in the same run, and whether every "
                    "mode's outputs match eager-fp32. Exit status 1 when a mode disagrees.",
    )
    p.add_argument("task", choices=["train", "infer", "parallel"],
                   help="a training step (data + forward + backward + SGD), an inference forward pass, or "
                        "'parallel': the training throughput of K runs sharing the machine (--procs)")
    p.add_argument("--model", default="resnet20", help="model name (`resnetlab models`), default resnet20")
    p.add_argument("--batch-size", type=int, help="default 128 for train, 16 for infer")
    p.add_argument("--input-size", help="C x H x W, e.g. 3x224x224 (default: the model's native size)")
    p.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"], help="default auto")
    p.add_argument("--modes", help="comma-separated modes, or 'all' (default: the modes that can win on this "
                                   "hardware, marked * by --list-modes: no compile modes on a CPU, no emulated "
                                   "bf16); eager-fp32 is always included as the reference")
    p.add_argument("--list-modes", action="store_true", help="print the modes and exit")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per mode; the median is reported")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per timed repeat (default 1)")
    p.add_argument("--warmup", type=int, default=3, help="untimed iterations first (compilation happens here)")
    p.add_argument("--peak-size", type=int, default=2048, help="N of the N x N x N matmul that measures the peak")
    p.add_argument("--threads", type=int, help="torch (and onnxruntime) CPU threads (default: torch's, one per core)")
    p.add_argument("--profile", type=int, default=0, metavar="STEPS",
                   help="after timing, profile STEPS more iterations of each mode and list its busiest operators")
    p.add_argument("--augment", metavar="LIST",
                   help="train: also time these augmentations on the data path (comma-separated, or 'all': "
                        "cutout, autoaugment, trivialaugment, mixup, cutmix) and report each one's share "
                        "of the default mode's step")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    par = p.add_argument_group("parallel", "options of `bench parallel` (the training loop's own step, K processes)")
    par.add_argument("--procs", help="comma-separated run counts K (default 1,2,4,8)")
    par.add_argument("--seconds", type=float, help="timed seconds per K, after every run's warm-up (default 10)")
    par.add_argument("--data", help="training data, as `resnetlab train --data` (default: the bundled sample)")
    par.add_argument("--recipe", help="training recipe (default paper-cifar)")
    par.add_argument("--amp", choices=["none", "bf16", "fp16"], help="default: the engine's for the device")
    par.add_argument("--cuda-graphs", action="store_true", help="replay each training step as a CUDA graph")
    p.set_defaults(func=cmd_bench)

PARALLEL_ONLY = ("procs", "seconds", "data", "recipe", "amp")
NOT_PARALLEL = ("modes", "list_modes", "profile", "augment", "input_size")


def cmd_bench(args: argparse.Namespace) -> int:
    if args.task == "parallel":
        return cmd_parallel(args)
    given = [n for n in PARALLEL_ONLY if getattr(args, n) is not None] + (["cuda_graphs"] if args.cuda_graphs else [])
    if given:
        raise UserError(f"--{given[0].replace('_', '-')} is an option of `bench parallel`, not `bench {args.task}`")
    from ..bench import MODES, default_mode, default_modes, emulated, format_result, modes_for, resolve_modes, run_bench
    from ..engine.distributed import resolve_device

    device = resolve_device(args.device)
    if args.list_modes:
        known = {m.name: m for m in MODES}
        chosen = default_modes(args.task, device)
        print(f"modes of `bench {args.task}` on {device.type} (* = run by default):")
        for name in modes_for(args.task):
            mode = known.get(name) or default_mode(device)
            note = " [bf16 emulated on this CPU: slow]" if emulated(mode, device) else ""
            print(f"{'*' if name in chosen else ' '} {name:<34}{mode.description}{note}")
        return 0
    batch = args.batch_size if args.batch_size is not None else DEFAULT_BATCH[args.task]
    if batch < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch}")
    if args.min_time <= 0 or args.peak_size < 32 or args.peak_size % 32:
        raise UserError("--min-time must be positive and --peak-size a multiple of 32")
    if args.profile < 0:
        raise UserError(f"--profile must not be negative, got {args.profile}")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be at least 1, got {args.threads}")
    augmentations = None
    if args.augment is not None:
        if args.task != "train":
            raise UserError("--augment times the training data path: use it with `bench train`")
        from ..bench.augment import resolve_augmentations
        augmentations = resolve_augmentations(args.augment)
    names = [n.strip() for n in args.modes.split(",") if n.strip()] if args.modes else None
    modes = resolve_modes(args.task, names, device)
    for mode in modes:
        if emulated(mode, device):
            print(f"bench: note: {mode.name} runs bf16 emulated on this CPU (no AVX512-BF16/AMX): expect it slow",
                  file=sys.stderr)
    size = parse_input_size(args.input_size) if args.input_size else None
    log = (lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True))
    with _threads(args.threads):
        result = run_bench(args.task, args.model, modes, device=device, batch_size=batch, input_size=size,
                           repeats=args.repeats, min_time=args.min_time, warmup=args.warmup,
                           peak_size=args.peak_size, profile_steps=args.profile,
                           augmentations=augmentations, log=log)
    print(json.dumps(result.to_dict()) if args.json else format_result(result))
    return 0 if result.agree else 1


def cmd_parallel(args: argparse.Namespace) -> int:
    from ..bench.parallel import format_parallel, run_parallel_bench
    from ..data.resolve import SAMPLE_DIR
    from ..engine.config import recipe_config

    wrong = [n for n in NOT_PARALLEL if getattr(args, n) not in (None, False, 0)]
    if wrong:
        raise UserError(f"--{wrong[0].replace('_', '-')} is not an option of `bench parallel`")
    try:
        procs = [int(k) for k in (args.procs or "1,2,4,8").split(",") if k.strip()]
    except ValueError:
        raise UserError(f"--procs takes comma-separated counts, e.g. 1,2,4,8, got {args.procs!r}") from None
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1, got {args.threads}")
    # As long as the timing can run: the schedule never ends inside it (its lr is irrelevant to speed).
    cfg = recipe_config(args.recipe or "paper-cifar", model=args.model, data=args.data or str(SAMPLE_DIR),
                        batch_size=args.batch_size, device=args.device, amp=args.amp,
                        cuda_graphs=args.cuda_graphs, iters=10**9, epochs=None)
    log = (lambda msg: print(f"bench: {msg}", file=sys.stderr, flush=True))
    result = run_parallel_bench(cfg, procs, seconds=args.seconds or 10.0, warmup=max(args.warmup, 5),
                                threads=args.threads, log=log)
    print(json.dumps(result.to_dict()) if args.json else format_parallel(result))
    return 0


@contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    """torch's CPU thread count set to ``threads`` for the benchmark and restored after it (the process may
    be a test session or a notebook that goes on)."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
