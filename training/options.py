"""Options the training scripts share (``python -m training.mini.train``, ``training.small.train``).

The options they share with the ``soi-batch`` commands (model cache, input columns, logging) come
from :mod:`soi_batch.commands.options`; this module holds the ones only training runs have.
"""

from __future__ import annotations

import argparse
import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any


def add_run_options(p: argparse.ArgumentParser, *, device: str) -> None:
    """``--out`` (the run's directory), ``--device`` and ``--set KEY=VALUE`` config overrides."""
    p.add_argument("--out", type=Path, required=True, help="directory the run writes")
    p.add_argument("--device", default=device, help="torch device to train on (default: %(default)s)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override fields of the training config, e.g. --set seed=1 lm_epochs=2")


def parse_overrides(items: list[str], *, parse_value: Callable[[str], Any] = ast.literal_eval) -> dict[str, Any]:
    """``--set`` items as ``{key: value}``; a value ``parse_value`` cannot read stays a string."""
    out: dict[str, Any] = {}
    for item in items:
        key, _, raw = item.partition("=")
        try:
            out[key] = parse_value(raw)
        except (ValueError, SyntaxError):  # json.JSONDecodeError is a ValueError
            out[key] = raw
    return out


def route_overrides(values: dict[str, Any], groups: dict[str, set[str]], *, what: str) -> dict[str, dict[str, Any]]:
    """Split ``{key: value}`` overrides by the group whose keys hold each key; an unknown key stops
    the run with ``what`` (the option or variant it came from) and every known key."""
    routed: dict[str, dict[str, Any]] = {group: {} for group in groups}
    for key, value in values.items():
        group = next((g for g, keys in groups.items() if key in keys), None)
        if group is None:
            raise SystemExit(f"{what}: unknown key {key!r}; known: {sorted(set().union(*groups.values()))}")
        routed[group][key] = value
    return routed
