"""Command-line options that several entry points share, each defined once, and the logging they set up.

Used by the ``soi-batch`` subcommands, ``jobs/nightly.py`` (through ``soi-batch nightly``) and the
``python -m training.…`` scripts of a checkout.  ``from_config=True`` is for a command whose
settings may also come from a config file (the nightly job's YAML): its flags then default to
None, so that an unset flag leaves the file's value (or the library's default) in place.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from soi_batch.datasets.osha import TEXT_COL
from soi_batch.named_models import DEFAULT_MODEL, NAMED_MODELS
from soi_batch.pretrained import default_cache_dir
from soi_batch.tables import INPUT_FORMATS, OUTPUT_FORMATS, WRITE_MODES

CACHE_ENV = "SOI_BATCH_CACHE"
RAY_ADDRESS_ENV = "RAY_ADDRESS"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
ENGINES = ("auto", "hf", "vllm")


def add_logging_options(p: argparse.ArgumentParser, *, default: object = False) -> None:
    """``-v/--verbose``.  A subcommand's copy passes ``default=argparse.SUPPRESS`` so that it does not
    reset a ``-v`` given before the subcommand's name."""
    p.add_argument("-v", "--verbose", action="store_true", default=default, help="debug logging")


QUIET_LIBRARY_LOGGERS: tuple[str, ...] = ("torchao", "torch.utils._pytree")
"""Library loggers whose warnings a user cannot act on (torchao's optional GPU kernels that do not
load on a CPU machine, torch's deprecation notes aimed at library authors): ERROR only, unless ``-v``."""


def configure_logging(verbose: bool) -> None:
    """Root logging for a command-line run: INFO, or DEBUG with ``-v``.  The one place that sets it up."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)
    for name in QUIET_LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else logging.ERROR)


QUIET_RAY_DATA_MESSAGES: tuple[str, ...] = ("Progress bars disabled",)
"""Ray Data warnings that tell a user of the CLI nothing to act on (the CLI turns Ray's bars off itself)."""


def _not_known_noise(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(QUIET_RAY_DATA_MESSAGES)


def quiet_ray_data_console(verbose: bool) -> None:
    """Ray Data's console lines (execution plans, per-stage progress, operator stats) at WARNING, or
    with ``-v`` as Ray sets them (INFO), and without :data:`QUIET_RAY_DATA_MESSAGES`.  Its session log
    file (``ray-data.log``) keeps them all.  Call after ``ray.data`` is imported: importing it sets up
    its loggers."""
    import ray.data  # noqa: F401  (sets up the 'ray.data' logger and its handlers)

    for handler in logging.getLogger("ray.data").handlers:
        if type(handler).__name__ == "PlainRayHandler":  # the console handler; the file handlers stay
            handler.setLevel(logging.INFO if verbose else logging.WARNING)
            if not verbose and _not_known_noise not in handler.filters:
                handler.addFilter(_not_known_noise)


def add_progress_option(p: argparse.ArgumentParser) -> None:
    """``--progress/--no-progress``: a progress bar in rows on stderr (default: when stderr is a terminal)."""
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="a progress bar in rows on stderr (default: when stderr is a terminal)")


def progress_wanted(args: argparse.Namespace) -> bool:
    """``--progress``/``--no-progress`` as given, else whether stderr is a terminal."""
    return sys.stderr.isatty() if args.progress is None else bool(args.progress)


def quiet_library_progress_bars(verbose: bool) -> None:
    """Without ``-v``: no transformers progress bars (its "Loading weights" bar) in this process, so that
    the command's own bar is the only one.  Imports transformers: call it when a model is to be loaded."""
    if not verbose:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()


def add_model_options(p: argparse.ArgumentParser, *, required: bool = False, from_config: bool = False) -> None:
    """``--model`` (a named model, bundle directory or hub id) and ``--cache-dir``."""
    names = ", ".join(sorted(NAMED_MODELS))
    if from_config:
        default, shown = None, f" (default: the config file's, else {DEFAULT_MODEL})"
    else:
        default, shown = (None, "") if required else (DEFAULT_MODEL, " (default: %(default)s)")
    p.add_argument("--model", required=required, default=default,
                   help=f"named model ({names}), model bundle directory or hub id{shown}")
    add_cache_dir_option(p, from_config=from_config)


def add_cache_dir_option(p: argparse.ArgumentParser, *, from_config: bool = False) -> None:
    """``--cache-dir``: where a named model's base is downloaded and its bundle built (``$SOI_BATCH_CACHE``)."""
    env = os.environ.get(CACHE_ENV)
    if from_config:
        default, shown = env or None, f"${CACHE_ENV}, else the config file's, else {default_cache_dir()}"
    else:
        default, shown = Path(env or default_cache_dir()), f"${CACHE_ENV} or %(default)s"
    p.add_argument("--cache-dir", type=Path, default=default,
                   help=f"where a named model (soi-small) is built on first use (default: {shown})")


def add_input_options(p: argparse.ArgumentParser, *, text_col: str | None = TEXT_COL,
                      encoding: bool = True, from_config: bool = False) -> None:
    """``--text-col``, ``--input-format`` and (``encoding=True``) ``--encoding`` of a reports table."""
    if from_config:
        text_col, shown = None, f"the config file's, else {TEXT_COL!r}"
    else:
        shown = "%(default)s"
    p.add_argument("--text-col", default=text_col, help=f"column with the narrative (default: {shown})")
    p.add_argument("--input-format", choices=INPUT_FORMATS, default=None,
                   help="default: " + ("the config file's, else " if from_config else "") + "from the path")
    if encoding:
        p.add_argument("--encoding", default=None, help="CSV encoding (default: utf-8 if valid, else cp1252)")


def add_batch_size_option(p: argparse.ArgumentParser) -> None:
    """``--batch-size``: reports per engine forward pass."""
    p.add_argument("--batch-size", type=int, default=64, help="reports per engine forward pass (default: %(default)s)")


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """The engine and its settings: ``--engine``, ``--quantization``, ``--compile``, ``--batch-size``,
    ``--beam``, ``--top-k`` (the fields of :class:`soi_batch.classifier.ClassifierConfig` a user sets)."""
    p.add_argument("--engine", choices=ENGINES, default="auto", help="inference engine (default: %(default)s)")
    p.add_argument("--quantization", choices=("fp8",), default=None,
                   help="FP8 weights and activations (vllm; hf on GPUs with FP8 tensor cores)")
    p.add_argument("--compile", action="store_true",
                   help="hf engine: torch.compile the model (1-2 min start-up, faster on large inputs)")
    add_batch_size_option(p)
    p.add_argument("--beam", type=int, default=3, help="major groups/groups expanded per report (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=3, help="most probable codes listed in the top_k column (default: %(default)s)")


def add_ray_options(p: argparse.ArgumentParser, *, from_config: bool = False) -> None:
    """``--ray-address``, and for a local Ray either the actor pool (``--num-actors``,
    ``--cpus-per-actor``) or, with ``from_config`` (the nightly job, whose pool is set in its
    config file), ``--ray-num-cpus``."""
    if from_config:
        p.add_argument("--ray-address", default=os.environ.get(RAY_ADDRESS_ENV),
                       help=f"Ray cluster address, e.g. auto or ray://head:10001 (default: ${RAY_ADDRESS_ENV}, "
                            "else the config file's, else a local Ray)")
        p.add_argument("--ray-num-cpus", type=int, default=None,
                       help="CPUs of the local Ray (default: the config file's, else all)")
        return
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster address, e.g. auto or ray://head:10001 (default: start a local Ray)")
    p.add_argument("--num-actors", type=int, default=None, help="Ray actors (default: one per GPU, or 1 on CPU)")
    p.add_argument("--cpus-per-actor", type=float, default=None,
                   help="Ray CPUs reserved per actor (default: 1, or a share that leaves one CPU of a small local "
                        "Ray for reading)")


def add_storage_options(p: argparse.ArgumentParser) -> None:
    """``--storage-option KEY=VALUE`` (repeatable): how to reach ``s3://``, ``gs://``, ``abfs://`` locations."""
    p.add_argument("--storage-option", dest="storage_options", action="append", default=None, metavar="KEY=VALUE",
                   help="for s3:// / gs:// / abfs:// inputs and outputs, in Delta Lake's names, e.g. "
                        "AWS_ENDPOINT_URL=http://localhost:9000, AWS_REGION=eu-west-1, AWS_ACCESS_KEY_ID=…; "
                        "repeatable (default: the environment's credentials)")


def add_output_options(p: argparse.ArgumentParser) -> None:
    """How an output table is written: ``--output-format``, ``--mode``, ``--overwrite``, ``--partition-by``."""
    p.add_argument("--output-format", choices=OUTPUT_FORMATS, default="parquet")
    p.add_argument("--mode", choices=WRITE_MODES, default=None,
                   help="if the output exists: error (default), append to it, or overwrite it "
                        "(Delta: a new table version, history kept)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing Parquet output / Delta table "
                   "(the same as --mode overwrite)")
    p.add_argument("--partition-by", action="append", default=None, metavar="COL",
                   help="write the output partitioned by this column (col=value/ folders); repeatable")
