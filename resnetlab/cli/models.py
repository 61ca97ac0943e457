"""``resnetlab models``, ``summary`` and ``blocks``: what is in the zoo and what it costs."""

from __future__ import annotations

import argparse
import json

from ..models import MODELS, get_weights, list_pretrained, model_family
from ..models.profile import block_arithmetic, count_macs, count_params, format_summary, meta_model, summary
from .common import parse_input_size


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list every model with family, parameters and multiply-adds")
    p.add_argument("--family", choices=["imagenet", "cifar"], help="only this family")
    p.add_argument("--json", action="store_true", help="one JSON object per model instead of a table")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("pretrained", help="the weights that ship with resnetlab: how they were trained and their error")
    p.set_defaults(func=cmd_pretrained)

    p = sub.add_parser("summary", help="layer table: output shape, params and multiply-adds per stage and block")
    p.add_argument("name", help="model name, e.g. resnet56")
    p.add_argument("--input-size", help="C x H x W, e.g. 3x32x32 (default: the model's native size)")
    p.add_argument("--num-classes", type=int, help="classifier size (default: the family's)")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("blocks", help="weights and multiply-adds of a basic unit versus a bottleneck (paper Fig. 5)")
    p.add_argument("--channels", type=int, default=256)
    p.add_argument("--resolution", type=int, default=56)
    p.set_defaults(func=cmd_blocks)


def cmd_models(args: argparse.Namespace) -> int:
    rows = []
    for name, definition in MODELS.items():
        if args.family and definition.family != args.family:
            continue
        model = meta_model(name)
        size = model.default_input_size
        rows.append({
            "name": name, "family": definition.family, "block": definition.block,
            "params": count_params(model), "macs": count_macs(model, size), "input_size": list(size),
        })
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"{'model':<20}{'family':<10}{'block':<19}{'params':>13}{'mult-adds':>12}  input")
    for r in rows:
        print(f"{r['name']:<20}{r['family']:<10}{r['block']:<19}{r['params']:>13,}{r['macs'] / 1e9:>11.3f}G"
              f"  {'x'.join(map(str, r['input_size']))}")
    return 0


def cmd_pretrained(args: argparse.Namespace) -> int:
    names = list_pretrained()
    if not names:
        print("no pretrained weights ship with this version")
        return 0
    print(f"{'name':<12}{'val top-1 err':>14}  {'recipe':<12}{'iterations':>11}  {'dtype':<8}{'size':>10}  trained on")
    for name in names:
        m = get_weights(name).meta
        err = f"{100 * m['val_top1_err']:.2f}%" if m.get("val_top1_err") is not None else "n/a"
        print(f"{name:<12}{err:>14}  {m['recipe']:<12}{m['iterations']:>11,}  {m['dtype']:<8}"
              f"{m['size_bytes']:>10,}  {m['hardware']}, {m['precision']}, {m['wall_time_s'] / 60:.0f} min")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    overrides = {} if args.num_classes is None else {"num_classes": args.num_classes}
    family = model_family(args.name)
    size = parse_input_size(args.input_size) if args.input_size else family.input_size
    if size[0] != 3:
        overrides["in_chans"] = size[0]
    model = meta_model(args.name, **overrides)
    rows, params, macs = summary(model, size)
    print(format_summary(args.name, rows, params, macs, size))
    return 0


def cmd_blocks(args: argparse.Namespace) -> int:
    print(f"Residual units on {args.channels} channels at {args.resolution}x{args.resolution} (paper Sec. 3.3, Fig. 5)")
    print(f"{'design':<46}{'conv weights':>14}{'params':>12}{'mult-adds':>16}")
    for c in block_arithmetic(args.channels, args.resolution):
        print(f"{c.design:<46}{c.conv_weights:>14,}{c.params:>12,}{c.macs:>16,}")
    return 0
