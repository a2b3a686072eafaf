#!/usr/bin/env python
"""Nightly incremental classification into a Delta table (safe to re-run; see soi_batch.nightly).

    python jobs/nightly.py --input reports_delta --output soi_results [--config nightly.yml]

Command-line flags override the YAML file.  Exit codes: 0 done, 2 bad input/config, 1 failure.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="nightly", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, help="YAML settings (see jobs/nightly.example.yml)")
    p.add_argument("--input", default=None, help="input Delta table, Parquet file/dir or CSV file")
    p.add_argument("--output", default=None, help="output Delta table (created if missing)")
    p.add_argument("--model", default=None,
                   help="named model (soi-small, soi-mini), bundle dir or hub id (default: the YAML's, else "
                        "soi_batch.named_models.DEFAULT_MODEL)")
    p.add_argument("--cache-dir", default=os.environ.get("SOI_BATCH_CACHE"),
                   help="where a named model is built on first use (default: $SOI_BATCH_CACHE or ~/.cache/soi-batch)")
    p.add_argument("--id-col", default=None, help="unique report id column (default: row_key)")
    p.add_argument("--text-col", default=None, help="narrative column (default: 'Final Narrative')")
    p.add_argument("--input-format", choices=("csv", "parquet", "delta"), default=None)
    p.add_argument("--ray-address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or local Ray)")
    p.add_argument("--ray-num-cpus", type=int, default=None, help="CPUs of the local Ray (default: all)")
    p.add_argument("--manifest-dir", default=None, help="run manifests (default: <output>_manifests)")
    p.add_argument("--chunk-rows", type=int, default=None, help="rows per commit (default: 5000)")
    p.add_argument("--retry-errors", action="store_true", default=None, help="re-classify rows with error set")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from soi_batch.errors import ConcurrentWriteError, SoiError
    from soi_batch.nightly import NightlyConfig, run_nightly

    try:
        config = NightlyConfig.build(
            args.config, input=args.input, output=args.output, model=args.model, cache_dir=args.cache_dir, id_col=args.id_col,
            text_col=args.text_col, input_format=args.input_format,
            ray_address=args.ray_address or os.environ.get("RAY_ADDRESS"), ray_num_cpus=args.ray_num_cpus,
            manifest_dir=args.manifest_dir, chunk_rows=args.chunk_rows, retry_errors=args.retry_errors,
        )
        manifest = run_nightly(config)
    except ConcurrentWriteError:
        raise  # exit 1, like any failed run: a retry once the other writer is done is safe
    except SoiError as exc:
        print(f"nightly: error: {exc}", file=sys.stderr)
        return 2
    c = manifest.counts
    print(f"run {manifest.run_id} {manifest.status}: read {c.read}, skipped {c.skipped}, classified {c.classified} "
          f"({c.errors} errors), duplicate ids dropped {c.duplicate_ids_dropped}, "
          f"{manifest.wall_seconds:.1f} s → {manifest.output} v{manifest.output_version_end}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
