"""``resnetlab analyze NAME``: analyses that need no training (gradients at init, shattered gradients, FLOPs)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..experiments.analyze import ANALYSES, analysis_command, run_analysis


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze", help="analyses without training: gradient norms at init, shattered gradients, FLOPs (Table 1)",
        description="gradients: per-layer gradient norm at initialisation, plain vs residual, depth 8-110, with "
                    "and without BN. shattered: correlation of input gradients of nearby inputs (Balduzzi et al. "
                    "2017). flops: He et al. 2015 Table 1 multiply-adds, v1 and v1.5, and the CIFAR family. Each "
                    "writes a PNG, report.md, results.json and config.json.")
    p.add_argument("name", choices=list(ANALYSES), help="which analysis")
    p.add_argument("--out", help="output folder (default: runs/analyze-NAME)")
    p.add_argument("--quick", action="store_true", help="small setting (depths 8 and 20, a few images): seconds")
    p.add_argument("--seed", type=int, default=0, help="seed for inputs, labels and initial weights (default 0)")
    p.set_defaults(func=cmd_analyze)
    register_explain(sub)


def cmd_analyze(args: argparse.Namespace) -> int:
    out = Path(args.out or f"runs/analyze-{args.name}")
    start = time.perf_counter()
    analysis = run_analysis(args.name, out, quick=args.quick, seed=args.seed,
                            command=analysis_command(args.name, out, args.quick, args.seed))
    for line in analysis.headline:
        print(line)
    files = ", ".join(["report.md", "results.json", "config.json", *analysis.figures])
    print(f"wrote {files} to {out} in {time.perf_counter() - start:.1f} s")
    return 0


def register_explain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("explain", help="Grad-CAM / Grad-CAM++ heat maps of a network's top classes on images",
                       description="For each image: a PNG with the image and, for each of the top-K classes, the "
                                   "class-activation heat map and the probability. The default layer is the last "
                                   "stage's last block (8x8 on CIFAR nets, 7x7 on ImageNet nets).")
    p.add_argument("checkpoint", help="best.pt / last.pt, a run folder, or the name of shipped weights")
    p.add_argument("images", nargs="+")
    p.add_argument("--layer", help="module name, e.g. layer3.2 (default: the last stage's last block)")
    p.add_argument("--method", choices=["gradcam", "gradcam++"], default="gradcam")
    p.add_argument("--topk", type=int, default=3, help="classes per image (default 3)")
    p.add_argument("--out", required=True, help="folder for the PNGs")
    p.set_defaults(func=cmd_explain)


def cmd_explain(args: argparse.Namespace) -> int:
    from ..experiments.explain import explain

    records = explain(args.checkpoint, args.images, args.out, layer=args.layer, method=args.method, topk=args.topk)
    for r in records:
        tops = ", ".join(f"{t['class']} {t['prob'] * 100:.1f}%" for t in r["top"])
        print(f"{r['image']}: {tops} -> {r['png']}")
    return 0
