"""The ``resnetlab`` command line: one sub-command group per module of this package.

Every module listed in ``COMMAND_MODULES`` has ``register(subparsers)``, which adds
its sub-commands with ``set_defaults(func=handler)``; a handler takes the parsed
arguments and returns an exit status. Mistakes a user can make raise
:class:`~resnetlab.errors.UserError` and become one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import UserError

COMMAND_MODULES = [
    "resnetlab.cli.models",
    "resnetlab.cli.train",
    "resnetlab.cli.compare",
    "resnetlab.cli.evaluate",
    "resnetlab.cli.reproduce",
    "resnetlab.cli.analyze",
    "resnetlab.cli.bench",
    "resnetlab.cli.export",
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser, with every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="resnetlab", description="Deep residual networks (He et al. 2015, 2016): models, training, reproduction."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``resnetlab`` console script and ``python -m resnetlab``."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"resnetlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("resnetlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `resnetlab models | head`
        return 0
