"""``resnetlab train`` and ``resnetlab recipes``."""

from __future__ import annotations

import argparse
import json
import signal
import sys

from ..engine.config import AMP_CHOICES, RECIPES, recipe_config
from ..errors import UserError


def _model_arg(text: str) -> tuple[str, object]:
    """``key=value`` with the value read as JSON when it parses (numbers, true/false), else as a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--model-arg takes key=value, got {text!r}")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model (see `resnetlab recipes`)")
    p.add_argument("--model", default="resnet20", help="model name (`resnetlab models`), default resnet20")
    p.add_argument("--model-arg", action="append", type=_model_arg, default=[], metavar="KEY=VALUE",
                   help="constructor override, e.g. shortcut=B or zero_init_residual=true (repeatable)")
    p.add_argument("--data", help="cifar10, cifar100, a CIFAR archive/folder, IDX folder or image folder; "
                                  "default: CIFAR-10 if cached or downloadable, else the bundled sample")
    p.add_argument("--recipe", default="paper-cifar", help="training recipe (`resnetlab recipes`)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=float, help="run length in epochs (replaces the recipe's length)")
    length.add_argument("--iters", type=int, help="run length in iterations (replaces the recipe's length)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--label-smoothing", type=float)
    p.add_argument("--seed", type=int, help="seeds the initial weights, batch order and augmentation (default 0)")
    p.add_argument("--split-seed", type=int, help="seeds which images --val-split holds out and --subset keeps "
                                                  "(default 0, whatever --seed is)")
    p.add_argument("--val-split", type=int, help="hold out N training images (stratified) as validation")
    p.add_argument("--subset", type=int, help="train on N images (stratified) for a quick run")
    p.add_argument("--image-size", type=int, help="crop size for large-image folders (default 224)")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], help="default auto")
    p.add_argument("--amp", choices=AMP_CHOICES, help="autocast dtype (default: fastest measured)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--eval-every", type=int, help="iterations between evaluations")
    p.add_argument("--workers", type=int, help="DataLoader workers for large-image folders")
    p.add_argument("--sync-bn", action="store_true", default=None, help="SyncBatchNorm under torchrun")
    p.add_argument("--init", help="start from these weights (checkpoint, torchvision/timm state dict, safetensors)")
    p.add_argument("--out", help="run folder (default runs/<model>-<timestamp>)")
    p.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint; 'auto': "
                                                   "continue --out if it holds one, else start there "
                                                   "(for torchrun --max-restarts)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("recipes", help="list the training recipes and their settings")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_recipes)


def cmd_train(args: argparse.Namespace) -> int:
    from ..engine.train import train

    fields = dict(
        model=args.model, model_args=dict(args.model_arg) or None, data=args.data, epochs=args.epochs,
        iters=args.iters, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing, seed=args.seed, split_seed=args.split_seed,
        val_split=args.val_split, subset=args.subset,
        image_size=args.image_size, device=args.device, amp=args.amp, channels_last=args.channels_last,
        compile=args.compile, eval_every=args.eval_every, workers=args.workers, sync_bn=args.sync_bn,
        init=args.init, out=args.out, resume=args.resume,
    )
    for name, value in fields.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise UserError(f"--{name.replace('_', '-')} must not be negative, got {value}")
    cfg = recipe_config(args.recipe, **fields)
    result = train(cfg, argv=sys.argv)
    if result.status == "interrupted":
        return 128 + int(getattr(result, "signal", None) or signal.SIGINT)
    return 0


def cmd_recipes(args: argparse.Namespace) -> int:
    if args.json:
        print(json.dumps({n: {"description": r.description, "source": r.source, **r.values}
                          for n, r in RECIPES.items()}, indent=2))
        return 0
    for name, recipe in RECIPES.items():
        print(f"{name}\n  {recipe.description}\n  source: {recipe.source}")
        print("  " + ", ".join(f"{k}={v}" for k, v in recipe.values.items()))
    return 0
