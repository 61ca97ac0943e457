"""``resnetlab compare``: training runs side by side (differing config fields, errors, wall time, curves)."""

from __future__ import annotations

import argparse
import shlex

from ..errors import UserError
from ..experiments.compare import comparison_table, load_run, write_comparison


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="training runs side by side: the config fields they differ in, final and "
                                       "best validation error, wall time, and their curves",
                       description="Reads each run folder (config.json, metrics.jsonl), prints a table of the "
                                   "config fields in which the runs differ with their validation errors and wall "
                                   "times; with --out also writes compare.md, results.json and compare.png "
                                   "(error against epochs and wall-clock minutes). Unfinished runs count as far "
                                   "as they got.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders written by `resnetlab train`")
    p.add_argument("--labels", help="comma-separated names for the runs (default: the folders' names)")
    p.add_argument("--out", help="folder for compare.md, results.json and compare.png")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else [None] * len(args.runs)
    if len(labels) != len(args.runs):
        raise UserError(f"--labels names {len(labels)} runs, but {len(args.runs)} run folders were given")
    runs = [load_run(path, label) for path, label in zip(args.runs, labels)]
    print(comparison_table(runs))
    if args.out:
        command = shlex.join(["resnetlab", "compare", *args.runs]
                             + (["--labels", args.labels] if args.labels else []) + ["--out", args.out])
        written = write_comparison(runs, args.out, command)
        print(f"wrote {', '.join(written)} to {args.out}")
    return 0
