#!/usr/bin/env python
"""Nightly incremental classification into a Delta table: ``soi-batch nightly`` as a script to schedule.

    python jobs/nightly.py --input reports_delta --output soi_results [--config nightly.yml]

Command-line flags override the YAML file.  Exit codes: 0 done, 2 bad input/config, 1 failure.
Options and behaviour: :mod:`soi_batch.commands.nightly`.
"""

from __future__ import annotations

import sys

from soi_batch.cli import run_command
from soi_batch.commands.nightly import build_parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv), prog="nightly")


if __name__ == "__main__":
    sys.exit(main())
