"""The ``soi-batch`` command: one subcommand per module in :mod:`soi_batch.commands`."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from soi_batch.errors import SoiError

COMMANDS = ("classify", "evaluate", "calibrate", "trends", "package")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soi-batch",
        description="Code accident reports with their OIICS v2.01 source of injury.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"soi_batch.commands.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except SoiError as exc:
        print(f"soi-batch {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
