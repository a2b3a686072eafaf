"""Options several subcommands share, defined once."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from soi_batch.named_models import DEFAULT_MODEL, NAMED_MODELS
from soi_batch.pretrained import default_cache_dir

CACHE_ENV = "SOI_BATCH_CACHE"


def add_model_options(p: argparse.ArgumentParser, *, required: bool = False) -> None:
    """``--model`` (a named model, bundle directory or hub id) and ``--cache-dir``."""
    names = ", ".join(sorted(NAMED_MODELS))
    p.add_argument("--model", required=required, default=None if required else DEFAULT_MODEL,
                   help=f"named model ({names}), model bundle directory or hub id"
                        + ("" if required else " (default: %(default)s)"))
    p.add_argument("--cache-dir", type=Path, default=Path(os.environ.get(CACHE_ENV) or default_cache_dir()),
                   help=f"where soi-small is built on first use (default: ${CACHE_ENV} or %(default)s)")
