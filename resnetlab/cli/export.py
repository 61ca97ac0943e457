"""``resnetlab export`` (ONNX, torch.export, TorchScript; verified) and ``resnetlab convert`` (weights interop)."""

from __future__ import annotations

import argparse
import sys

from ..errors import UserError
from .common import parse_input_size


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="write a checkpoint or model as ONNX, a torch.export program (.pt2) or TorchScript, checked against PyTorch",
    )
    p.add_argument("source", help="checkpoint (.pt, run folder, .safetensors, torchvision/timm weights) "
                                  "or a name of shipped weights (`resnetlab pretrained`)")
    p.add_argument("--random-weights", action="store_true",
                   help="SOURCE is a model name (`resnetlab models`): export its architecture untrained")
    p.add_argument("--format", choices=["onnx", "exported", "torchscript"],
                   help="output format (default: from --out: .onnx, .pt2, .ts)")
    p.add_argument("--out", required=True, help="output file")
    p.add_argument("--batch", default="dynamic", help="'dynamic' (default) or a fixed batch size N")
    p.add_argument("--fuse-bn", action="store_true", help="fold BatchNorm into the preceding convolutions first")
    p.add_argument("--opset", type=int, help="ONNX opset (default 18; 17 uses the legacy exporter)")
    p.add_argument("--input-size", help="C x H x W to export at (default: the checkpoint's, else the model's)")
    p.add_argument("--model", help="architecture of a bare state dict, e.g. resnet50 (default: inferred)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("convert", help="convert weights (torchvision, timm, DDP, safetensors, resnetlab) "
                                       "to .safetensors or a resnetlab .pt checkpoint")
    p.add_argument("input", metavar="IN", help="weights file or resnetlab checkpoint / run folder")
    p.add_argument("output", metavar="OUT", help="output: NAME.safetensors or NAME.pt")
    p.add_argument("--model", help="architecture of a bare state dict, e.g. resnet50 (default: inferred)")
    p.add_argument("--classes", help="text file of class names, one per line, to record in the output")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("publish", help="ship a trained checkpoint inside the package as pretrained weights "
                                       "(models/weights/NAME.safetensors and its index entry)")
    p.add_argument("checkpoint", help="the run's checkpoint, e.g. runs/paper-r20/last.pt")
    p.add_argument("--name", required=True, help="registered model name, e.g. resnet20")
    p.add_argument("--commit", required=True, help="the project commit the run was trained with")
    p.add_argument("--hardware", help="what it was trained on, e.g. '2 vCPUs, AMD EPYC, AVX512-BF16' "
                                     "(default: the machines in the run's sessions log)")
    p.set_defaults(func=cmd_publish)


def _parse_batch(text: str) -> int | None:
    if text == "dynamic":
        return None
    if not text.isdigit() or int(text) < 1:
        raise UserError(f"--batch must be 'dynamic' or a positive integer, got {text!r}")
    return int(text)


def cmd_export(args: argparse.Namespace) -> int:
    from ..export import export_model, guess_format, load_model

    fmt = args.format or guess_format(args.out)
    if fmt is None:
        raise UserError(f"cannot tell the format from {args.out}; pass --format onnx|exported|torchscript")
    batch = _parse_batch(args.batch)
    if args.opset is not None and fmt != "onnx":
        raise UserError("--opset only applies to --format onnx")
    loaded = load_model(args.source, args.model, random_weights=args.random_weights)
    size = parse_input_size(args.input_size) if args.input_size else None
    if size is not None and size[0] != loaded.input_size[0]:
        raise UserError(f"--input-size has {size[0]} channels; the model takes {loaded.input_size[0]}")
    print(f"exporting {loaded.description}")
    for note in loaded.notes:
        print(f"  note: {note}")
    if fmt == "torchscript":
        print("  note: TorchScript is deprecated in PyTorch; --format exported (torch.export) is its successor",
              file=sys.stderr)
    report = export_model(loaded, args.out, fmt, batch=batch, fuse=args.fuse_bn, opset=args.opset, input_size=size)
    for line in report.lines():
        print(line)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ..export.convert import convert, read_classes_file

    classes = read_classes_file(args.classes) if args.classes else None
    for line in convert(args.input, args.output, args.model, classes):
        print(line)
    return 0


def cmd_publish(args: argparse.Namespace) -> int:
    from ..export.publish import publish

    publish(args.checkpoint, args.name, commit=args.commit, hardware=args.hardware)
    return 0
