"""``soi-batch nightly``: incremental classification into a Delta table (also ``python jobs/nightly.py``).

    soi-batch nightly --input reports_delta --output soi_results [--config nightly.yml]

Settings come from the YAML file (see ``jobs/nightly.example.yml``); command-line flags override it.
Safe to re-run: see :mod:`soi_batch.nightly`.  Exit codes: 0 done, 2 bad input/config, 1 failure.
"""

from __future__ import annotations

import argparse

from soi_batch.commands.options import (
    add_input_options,
    add_logging_options,
    add_model_options,
    add_progress_option,
    add_ray_options,
    progress_wanted,
    quiet_ray_data_console,
)

HELP = "classify new and changed reports into a Delta table, chunk by chunk (safe to re-run)"
DESCRIPTION = "Nightly incremental classification into a Delta table (safe to re-run; see soi_batch.nightly)."


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The nightly job's flags; each one left unset keeps the YAML's value (or NightlyConfig's default)."""
    p.add_argument("--config", default=None, help="YAML settings (see jobs/nightly.example.yml)")
    p.add_argument("--input", default=None, help="input Delta table, Parquet file/dir or CSV file")
    p.add_argument("--output", default=None, help="output Delta table (created if missing)")
    add_model_options(p, from_config=True)
    p.add_argument("--id-col", action="append", default=None, metavar="COLUMN",
                   help="unique report id column; repeat it for a key of several columns (OSHA files: "
                        "--id-col ID --id-col EventDate, or --id-col UPA). Default: the config file's, else row_key")
    add_input_options(p, encoding=False, from_config=True)
    add_ray_options(p, from_config=True)
    p.add_argument("--manifest-dir", default=None, help="run manifests (default: <output>_manifests)")
    p.add_argument("--chunk-rows", type=int, default=None, help="rows per commit (default: the config file's, else 5000)")
    p.add_argument("--retry-errors", action="store_true", default=None, help="re-classify rows with error set")
    add_progress_option(p)
    p.set_defaults(func=run)


def add_parser(sub: argparse._SubParsersAction) -> None:
    add_arguments(sub.add_parser("nightly", help=HELP, description=DESCRIPTION))


def build_parser(prog: str = "nightly") -> argparse.ArgumentParser:
    """The same command as a program of its own (``jobs/nightly.py``), with the same options as
    ``soi-batch nightly`` (whose ``-v`` the ``soi-batch`` parser adds)."""
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION)
    add_arguments(p)
    add_logging_options(p)
    return p


def run(args: argparse.Namespace) -> int:
    from soi_batch.nightly import NightlyConfig, run_nightly

    config = NightlyConfig.build(
        args.config, input=args.input, output=args.output, model=args.model,
        cache_dir=str(args.cache_dir) if args.cache_dir else None, id_col=_one_or_list(args.id_col), text_col=args.text_col,
        input_format=args.input_format, ray_address=args.ray_address, ray_num_cpus=args.ray_num_cpus,
        manifest_dir=args.manifest_dir, chunk_rows=args.chunk_rows, retry_errors=args.retry_errors,
    )
    verbose = bool(getattr(args, "verbose", False))
    quiet_ray_data_console(verbose)
    manifest = run_nightly(config, progress=progress_wanted(args), quiet=not verbose)
    c = manifest.counts
    print(f"run {manifest.run_id} {manifest.status}: read {c.read}, skipped {c.skipped}, classified {c.classified} "
          f"({c.errors} errors), duplicate ids dropped {c.duplicate_ids_dropped}, "
          f"duplicate ids repaired in the output {c.duplicate_ids_repaired}, "
          f"{manifest.wall_seconds:.1f} s → {manifest.output} v{manifest.output_version_end}")
    return 0


def _one_or_list(values: list[str] | None) -> str | list[str] | None:
    """``--id-col`` given once: that column; several times: the list (a composite key)."""
    if not values:
        return None
    return values[0] if len(values) == 1 else values
