"""``resnetlab evaluate`` and ``resnetlab predict``."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from ..engine.config import AMP_CHOICES


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="top-1/top-5, loss, per-class accuracy and confusion matrix of a checkpoint")
    p.add_argument("checkpoint", help="best.pt / last.pt, a run folder, or the name of shipped weights")
    p.add_argument("--data", help="data to evaluate on (its test/val split if it has one); default: the run's own "
                                  "held-out validation split, evaluated as training did (prints the error it logged)")
    p.add_argument("--tta-flip", action=argparse.BooleanOptionalAction, default=None,
                   help="average the logits of each image and its mirror (default: as the run was trained)")
    p.add_argument("--ema", action="store_true",
                   help="evaluate the checkpoint's weight average (runs trained with --ema-decay)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plots", metavar="DIR", nargs="?", const=".", help="write confusion.png (into DIR)")
    p.add_argument("--batch-size", type=int, default=256, help="with --data (the run's split uses the run's)")
    p.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    add_speed_flags(p, default=None, default_text="fp32 with --data; the run's own without")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="class names and probabilities for image files")
    p.add_argument("checkpoint", help="checkpoint (best.pt / last.pt / run folder) or exported .onnx file")
    p.add_argument("images", nargs="+")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--ema", action="store_true", help="use the checkpoint's weight average (--ema-decay runs)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    add_speed_flags(p)
    p.set_defaults(func=cmd_predict)


def add_speed_flags(p: argparse.ArgumentParser, default: str | None = "none",
                    default_text: str = "none: fp32, the reference numbers") -> None:
    """--amp and --channels-last: the fast inference path, off by default so the numbers are fp32's."""
    p.add_argument("--amp", default=default, choices=AMP_CHOICES,
                   help=f"autocast dtype for the forward pass (default {default_text})")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None if default is None else False,
                   help="run the model in NHWC memory format")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..engine.predict import evaluate_checkpoint

    # With --json, stdout carries the JSON object alone: progress lines go to stderr.
    with contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext():
        res = evaluate_checkpoint(args.checkpoint, args.data, batch_size=args.batch_size, device=args.device,
                                  amp=args.amp, channels_last=args.channels_last, tta_flip=args.tta_flip,
                                  ema=args.ema)
    if args.plots is not None:
        res["confusion_png"] = str(plot_confusion(res, Path(args.plots)))
    if args.json:
        print(json.dumps(res))
        return 0
    how = f"{'fp32' if res['amp'] == 'none' else res['amp']}{', flip TTA' if res['tta_flip'] else ''}" \
          f"{', weight average' if res['weights'] == 'ema' else ''}"
    print(f"{res['n']} images from {res['data']} ({how}): top-1 {res['top1'] * 100:.2f}% "
          f"(error {res['top1_err'] * 100:.2f}%), top-5 {res['top5'] * 100:.2f}%, loss {res['loss']:.4f}")
    width = max(len(c) for c in res["classes"])
    for name, acc in zip(res["classes"], res["per_class"]):
        print(f"  {name:<{width}}  {acc * 100:6.2f}%")
    if "confusion_png" in res:
        print(f"confusion matrix: {res['confusion_png']}")
    return 0


def plot_confusion(res: dict, out_dir: Path) -> Path:
    """confusion.png: row-normalised confusion matrix with class names."""
    from ..errors import UserError

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("--plots needs matplotlib: pip install 'resnetlab[plot]'") from None
    import numpy as np

    cm = np.array(res["confusion"], dtype=float)
    cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    n = len(res["classes"])
    fig, ax = plt.subplots(figsize=(1 + 0.5 * n, 1 + 0.5 * n))
    ax.imshow(cm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), res["classes"], rotation=90, fontsize=8)
    ax.set_yticks(range(n), res["classes"], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"top-1 {res['top1'] * 100:.2f}% on {res['n']} images", fontsize=9)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "confusion.png"
    from ..io import atomic_write

    with atomic_write(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path


def cmd_predict(args: argparse.Namespace) -> int:
    from ..engine.predict import predict_images

    if args.checkpoint.endswith(".onnx"):
        from ..errors import UserError
        from ..export.onnx_predict import predict_onnx_images

        if args.ema:
            raise UserError("--ema picks a checkpoint's weight average; an .onnx file has one set of weights")

        records = predict_onnx_images(args.checkpoint, args.images, topk=args.topk)
    else:
        records = predict_images(args.checkpoint, args.images, topk=args.topk, device=args.device, amp=args.amp,
                                 channels_last=args.channels_last, ema=args.ema)
    if args.json:
        print(json.dumps(records))
        return 0
    for r in records:
        print(r["image"])
        for t in r["top"]:
            print(f"  {t['prob'] * 100:6.2f}%  {t['class']}")
    return 0
