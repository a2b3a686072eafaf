"""The ``soi-batch`` command: one subcommand per module in :mod:`soi_batch.commands`."""

from __future__ import annotations

import argparse
import importlib
import sys

from soi_batch.commands.options import add_logging_options, configure_logging
from soi_batch.errors import ConcurrentWriteError, SoiError
from soi_batch.named_models import DEFAULT_MODEL
from soi_batch.version import installed_version

COMMANDS = ("classify", "evaluate", "calibrate", "trends", "nightly", "package")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="soi-batch",
        description="Code accident reports with their OIICS v2.01 source of injury.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {installed_version()} (default model: {DEFAULT_MODEL})")
    add_logging_options(parser)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"soi_batch.commands.{name}").add_parser(sub)
    for command in sub.choices.values():  # -v also after the subcommand's name, without resetting one before it
        add_logging_options(command, default=argparse.SUPPRESS)
    return parser


def run_command(args: argparse.Namespace, *, prog: str) -> int:
    """Run a parsed command (``args.func``) with logging set up; a :class:`SoiError` becomes one line
    ``PROG: error: …`` on stderr and exit code 2 (bad config or input); any other exception, and a
    :class:`ConcurrentWriteError` (a failed run that is safe to retry), propagates: exit code 1."""
    configure_logging(args.verbose)
    try:
        return int(args.func(args) or 0)
    except ConcurrentWriteError:
        raise
    except SoiError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(args, prog=f"soi-batch {args.command}")


if __name__ == "__main__":
    sys.exit(main())
