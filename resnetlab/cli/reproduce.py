"""``resnetlab reproduce NAME``: train, measure and draw one of the paper's CIFAR-10 experiments, then report."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import UserError


def register(sub: argparse._SubParsersAction) -> None:
    from ..experiments.reproduce import BUDGETS, EXPERIMENTS

    p = sub.add_parser(
        "reproduce", help="reproduce a CIFAR-10 experiment of the papers: degradation, table6, layer-responses, ...",
        description="degradation: plain vs ResNet-20/32/44/56 error curves (He et al. 2015 Fig. 6). table6: "
                    "ResNet-20..110 error mean +- std over seeds against Table 6. layer-responses: std of every 3x3 "
                    "layer's response (Fig. 7). shortcuts: options A/B/C on ResNet-20/32 (Table 3 analogue). "
                    "preact: original vs pre-activation ResNet-110/164 (He et al. 2016 Table 3). Each writes "
                    "report.md, results.json, config.json and PNG figures; re-running the same command resumes.")
    p.add_argument("name", choices=list(EXPERIMENTS), help="which experiment")
    p.add_argument("--data", help="training data (as for `resnetlab train --data`), e.g. an image folder")
    p.add_argument("--budget", choices=list(BUDGETS), default="short",
                   help="full: the paper's 64k iterations; short: the same schedule scaled down to "
                        f"{BUDGETS['short'].iters:,} iterations; smoke: seconds, for tests (default short)")
    p.add_argument("--seeds", type=int, default=1, help="train each configuration K times, seeds 0..K-1 (default 1)")
    p.add_argument("--val-split", type=int,
                   help="hold out N training images as validation (default 5000 for full/short, the paper's 45k/5k "
                        "split; 50 for smoke); 0 uses the data's test split")
    p.add_argument("--iters", type=int, help="override the budget's run length (the schedule scales with it)")
    p.add_argument("--from", dest="from_dirs", metavar="DIR", action="append", default=[],
                   help="read finished runs instead of training them: a run folder (runs/paper-r20, or its "
                        "committed logs in docs/results/...), a runs folder, or another experiment's --out or "
                        "--runs; repeatable. A run is reused only if its recipe, data, split, length and seed "
                        "match (precision may differ: the report says per network)")
    p.add_argument("--finished-only", action="store_true",
                   help="train nothing: report on the finished runs (--from, or this experiment's runs folder) "
                        "and list the networks not trained yet (table6; the other experiments need every network)")
    p.add_argument("--with-1202", action="store_true", help="table6: also train ResNet-1202")
    p.add_argument("--images", type=int, default=0,
                   help="layer-responses: measure on the first N validation images (default all)")
    p.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none",
                   help="autocast dtype (default none: fp32, as the paper trained; the report says which was used)")
    p.add_argument("--compile", action="store_true", help="torch.compile each network (written into the report)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="replay each training step as a CUDA graph (CUDA only; written into the report)")
    p.add_argument("--parallel", type=int, default=1, metavar="K",
                   help="train K runs at once, one process each, on the same device (a launch-bound GPU or a "
                        "CPU one run does not fill); --threads is then per run (default: the cores split K ways)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: 1 for short and smoke, measured "
                                               "fastest on the shared 2-core CPU; torch's default for full)")
    p.add_argument("--out", help="report folder (default runs/reproduce-NAME)")
    p.add_argument("--runs", dest="runs_dir", metavar="DIR",
                   help="where the run folders and checkpoints go (default OUT/runs); outside OUT, each run's "
                        "metrics.jsonl and config.json are copied to OUT/run-logs/")
    p.set_defaults(func=cmd_reproduce)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from ..experiments.reproduce import reproduce_command, run_experiment

    for flag in ("seeds", "val_split", "iters", "images", "threads"):
        value = getattr(args, flag)
        if value is not None and value < 0:
            raise UserError(f"--{flag.replace('_', '-')} must not be negative, got {value}")
    out = Path(args.out or f"runs/reproduce-{args.name}")
    kwargs = dict(budget=args.budget, seeds=args.seeds, data=args.data, runs_dir=args.runs_dir,
                  val_split=args.val_split, device=args.device, iters=args.iters, from_dirs=args.from_dirs,
                  finished_only=args.finished_only,
                  with_1202=args.with_1202, images=args.images, threads=args.threads, amp=args.amp,
                  compile=args.compile, parallel=args.parallel, cuda_graphs=args.cuda_graphs)
    outcome = run_experiment(args.name, out, command=reproduce_command(args.name, out, **kwargs), **kwargs)
    for line in outcome.headline:
        print(line)
    print(f"wrote report.md, results.json, config.json, {', '.join(outcome.figures)} to {out}")
    return 0
