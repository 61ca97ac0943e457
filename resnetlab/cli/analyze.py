"""``resnetlab analyze NAME``: analyses that need no training (gradients at init, shattered gradients, FLOPs), and
loss landscapes of trained checkpoints (``resnetlab analyze landscape``)."""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from ..experiments.analyze import ANALYSES, analysis_command, run_analysis


ANALYZE_HELP = {
    "gradients": "per-layer gradient norm at initialisation, plain vs residual, depth 8-110, with and without BN",
    "shattered": "correlation of input gradients of nearby inputs (Balduzzi et al. 2017)",
    "flops": "He et al. 2015 Table 1 multiply-adds, v1 and v1.5, and the CIFAR family",
}


class _AnalyzeParser(argparse.ArgumentParser):
    """Takes a value like ``-1:1`` after an option as that option's value, not as an unknown option."""

    def _parse_optional(self, arg_string):  # noqa: ANN001, ANN202 - argparse's own (private) hook
        if re.fullmatch(r"-[0-9.][0-9.eE+-]*:[-+]?[0-9.][0-9.eE+-]*", arg_string):
            return None
        return super()._parse_optional(arg_string)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "analyze", help="analyses: gradient norms at init, shattered gradients, FLOPs (Table 1), loss landscapes",
        description="gradients: per-layer gradient norm at initialisation, plain vs residual, depth 8-110, with "
                    "and without BN. shattered: correlation of input gradients of nearby inputs (Balduzzi et al. "
                    "2017). flops: He et al. 2015 Table 1 multiply-adds, v1 and v1.5, and the CIFAR family. "
                    "landscape: the loss landscape of checkpoints along filter-normalised random directions (Li "
                    "et al. 2018). Each writes PNGs, report.md, results.json and config.json.")
    # Also accepted before NAME (``analyze --quick flops``); the options after NAME, the usual place, win.
    p.add_argument("--out", help="output folder (default: runs/analyze-NAME)")
    p.add_argument("--quick", action="store_true", help="small setting (depths 8 and 20, a few images): seconds")
    p.add_argument("--seed", type=int, default=0, help="seed for inputs, labels and initial weights (default 0)")
    names = p.add_subparsers(dest="name", metavar="NAME", parser_class=_AnalyzeParser,
                             help=f"which analysis: {', '.join([*ANALYSES, 'landscape'])}")
    names.required = True
    for name in ANALYSES:
        a = names.add_parser(name, help=ANALYZE_HELP.get(name, name), description=ANALYZE_HELP.get(name))
        a.add_argument("--out", default=argparse.SUPPRESS, help="output folder (default: runs/analyze-NAME)")
        a.add_argument("--quick", action="store_true", default=argparse.SUPPRESS,
                       help="small setting (depths 8 and 20, a few images): seconds")
        a.add_argument("--seed", type=int, default=argparse.SUPPRESS,
                       help="seed for inputs, labels and initial weights (default 0)")
        a.set_defaults(func=cmd_analyze)
    register_landscape(names)
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


def register_landscape(names: argparse._SubParsersAction) -> None:
    """``resnetlab analyze landscape CHECKPOINT [CHECKPOINT ...] --out DIR``."""
    p = names.add_parser(
        "landscape", help="loss and error of checkpoints along 1 or 2 filter-normalised random directions "
                          "(Li et al. 2018)",
        description="Evaluates the training loss and top-1 error at theta + a*d1 (+ b*d2) on a grid, for each "
                    "checkpoint, on training images without augmentation, BN in eval mode. The directions are "
                    "Gaussian, filter-normalised (each filter rescaled to the norm of the weights' filter), "
                    "biases and BN left alone, drawn from --seed and the weights' shapes alone: checkpoints of "
                    "one architecture share them. Every finished grid point is recorded in OUT/partial.json; "
                    "the same command again resumes. Writes results.json, config.json, report.md and PNGs "
                    "(a line plot for --dims 1; a contour and a surface plot per checkpoint for --dims 2).")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT",
                   help="best.pt / last.pt, a run folder, or the name of shipped weights (e.g. resnet20)")
    p.add_argument("--dims", type=int, default=1, help="1: a line (default); 2: a plane")
    p.add_argument("--grid", type=int, default=21, help="points per direction, ends included (default 21)")
    p.add_argument("--range", default="-1:1", dest="range_", metavar="LO:HI",
                   help="coefficients of the directions, e.g. -1:1 (the default) or -0.5:0.5")
    p.add_argument("--subset", type=int, default=0,
                   help="evaluate on the first N training images, taken class by class in turn (default 0: all)")
    p.add_argument("--data", help="data whose training images to use (default: the checkpoint's own training "
                                  "split, rebuilt from its config)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random directions (default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"], help="default cpu")
    p.add_argument("--max-points", type=int, metavar="N",
                   help="stop after N newly evaluated grid points; the same command again goes on")
    p.add_argument("--out", required=True, help="output folder")
    p.set_defaults(func=cmd_landscape)


def cmd_landscape(args: argparse.Namespace) -> int:
    from ..experiments.landscape import run_landscape

    run = run_landscape(args.checkpoints, args.out, dims=args.dims, grid=args.grid, range_=args.range_,
                        subset=args.subset, data=args.data, seed=args.seed, batch_size=args.batch_size,
                        device=args.device, max_points=args.max_points)
    if not run["complete"]:
        print(f"stopped after {run['new_points']} new point(s): {run['done']} of {run['total']} done, recorded in "
              f"{Path(args.out) / 'partial.json'}; run the same command again to go on")
        return 0
    res = run["results"]
    for p in res["checkpoints"]:
        s = p["summary"]
        rise = "n/a" if s["edge_loss_rise"] is None else f"{s['edge_loss_rise']:+.4f}"
        centre = "n/a" if s["centre_loss"] is None else f"{s['centre_loss']:.4f}"
        print(f"{p['checkpoint']} ({p['model']}, {p['images']:,} images): loss at centre {centre}, "
              f"error {s['centre_error'] * 100:.2f}%, mean loss rise at the edge {rise}")
    files = ", ".join(["report.md", "results.json", "config.json", *run["figures"]])
    print(f"wrote {files} to {args.out}: {res['images_evaluated']:,} images evaluated "
          f"({res['points_this_run']} new points, {res['images_evaluated_this_run']:,} images) in "
          f"{run['wall_seconds']:.1f} s")
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
