"""``soi-batch classify INPUT OUTPUT``: the batch job on a file or table, through Ray Data."""

from __future__ import annotations

import argparse
import logging
import time
import uuid
from collections import Counter
from typing import Any

import pyarrow as pa

from soi_batch.bundle import load_bundle
from soi_batch.checks import check_output
from soi_batch.classifier import ClassifierConfig
from soi_batch.commands.options import (
    add_engine_options,
    add_input_options,
    add_model_options,
    add_output_options,
    add_progress_option,
    add_ray_options,
    add_storage_options,
    progress_wanted,
    quiet_ray_data_console,
)
from soi_batch.errors import ConfigError, InputReadError
from soi_batch.schema import PROBABILITIES_SCHEMA, RESULT_SCHEMA
from soi_batch.storage import StorageOptions, arrow_filesystem, join, parse_storage_options
from soi_batch.tables import (
    InputSpec,
    WriteMode,
    append_results,
    check_result_names,
    find_damaged_file,
    inspect_input,
    read_table,
    write_table,
)

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="classify reports from CSV/Parquet/Delta into Parquet/Delta",
                       description="Append source-of-injury codes, confidences and top-k to every input row.")
    p.add_argument("input", help="CSV file, Parquet file/directory or Delta table: a path or a URI (s3://…)")
    p.add_argument("output", help="output Parquet directory or Delta table: a path or a URI (s3://…)")
    add_model_options(p)
    add_input_options(p)
    p.add_argument("--id-col", default=None, help="report id column (checked to exist; kept in the output)")
    add_output_options(p)
    add_storage_options(p)
    add_engine_options(p)
    add_ray_options(p)
    p.add_argument("--keep-probabilities", action="store_true",
                   help="also write division_probs and major_group_probs (needed by `soi-batch trends`)")
    add_progress_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from soi_batch.ray_data import (
        RayOptions,
        classify_dataset,
        init_ray,
        read_dataset,
        row_progress,
        start_row_counter,
        write_dataset,
    )

    storage = parse_storage_options(args.storage_options)
    spec = inspect_input(args.input, fmt=args.input_format, encoding=args.encoding, storage_options=storage)
    spec.require_text(args.text_col, role="text column")
    spec.require(args.id_col, role="id column")
    spec.require(*(c for c in args.partition_by or () if c not in RESULT_SCHEMA.names), role="--partition-by column")
    check_result_names(spec.columns, result_names(args.keep_probabilities), source=spec.path)
    target = check_output(args.output, fmt=args.output_format, overwrite=args.overwrite, mode=args.mode,
                          input_path=spec.path, storage_options=storage)
    out = target.path  # absolute or a URI; a local output is replaced only once the new one is written
    bundle = load_bundle(args.model, args.cache_dir)  # validates (or builds) the bundle before Ray starts
    if spec.num_rows == 0:
        with target.write() as (path, mode):
            write_empty_output(spec, path, fmt=args.output_format, keep_probabilities=args.keep_probabilities,
                               mode=mode, partition_by=args.partition_by, storage_options=storage)
        print(f"input {spec.path} has 0 rows: wrote an empty output with the result columns → {out}")
        return 0
    engine_options: dict = {"quantization": args.quantization} if args.quantization else {}
    if args.compile:
        if args.engine == "vllm":
            raise ConfigError("--compile is an option of the hf engine; vLLM compiles on its own (enforce_eager=False)")
        engine_options["compile"] = True
    config = ClassifierConfig(engine=args.engine, batch_size=args.batch_size, top_k=args.top_k, beam=args.beam,
                              engine_options=engine_options)
    run_id = uuid.uuid4().hex
    verbose = bool(getattr(args, "verbose", False))
    init_ray(args.ray_address, quiet=not verbose)
    quiet_ray_data_console(verbose)
    counter = start_row_counter() if progress_wanted(args) else None
    ds = read_dataset(spec)
    ds = classify_dataset(ds, text_col=args.text_col, model=bundle, config=config, run_id=run_id,
                          keep_probabilities=args.keep_probabilities,
                          options=RayOptions(num_actors=args.num_actors, cpus_per_actor=args.cpus_per_actor),
                          row_counter=counter)
    ray_data_context().enable_progress_bars = verbose  # Ray's per-stage bars (this process is the CLI's)
    log.info("run %s: %s (%s) → %s (%s) with %s", run_id, spec.path, spec.format, out, args.output_format,
             bundle.model_id)
    start = time.perf_counter()
    try:
        with target.write() as (path, mode), row_progress(counter, total=spec.num_rows):
            write_dataset(ds, path, fmt=args.output_format, mode=mode, partition_by=args.partition_by,
                          storage_options=storage)
    except Exception as exc:
        damaged = damaged_input_error(spec)
        if damaged is None:
            raise
        raise damaged from exc
    elapsed = time.perf_counter() - start
    print(summarize(out, args.output_format, elapsed, storage_options=storage))
    return 0


def ray_data_context() -> Any:
    """Ray Data's context of this process (the CLI's own)."""
    from ray.data import DataContext

    return DataContext.get_current()


def result_names(keep_probabilities: bool) -> list[str]:
    """The columns a classify run appends."""
    return [*RESULT_SCHEMA.names, *(PROBABILITIES_SCHEMA.names if keep_probabilities else [])]


def damaged_input_error(spec: InputSpec) -> InputReadError | None:
    """After a failed run: the one-line error naming a damaged file of the input, or None if it reads whole.

    The checks of :func:`~soi_batch.tables.inspect_input` read a CSV whole but only the footers of
    Parquet files: a corrupt data page surfaces inside a Ray read task, as a ``RayTaskError``.
    """
    damaged = find_damaged_file(spec)
    if damaged is None:
        return None
    path, detail = damaged
    return InputReadError(
        f"{spec.path}: the file {path} is damaged and cannot be read ({detail}); nothing was written. "
        "Write that file again (or remove it from the input), then re-run"
    )


def write_empty_output(spec: InputSpec, out: str, *, fmt: str, keep_probabilities: bool, mode: WriteMode = "append",
                       partition_by: list[str] | None = None, storage_options: StorageOptions | None = None) -> None:
    """The output of a 0-row input: the input's columns and the result columns, no rows (no model load).

    ``out``: a local path or a URI.  Delta keeps ``partition_by`` in the table's metadata; a Parquet
    output is one file without rows, as there are no partition values.
    """
    table = read_table(spec)
    if table.num_rows:
        raise ConfigError(f"{spec.path}: expected 0 rows, found {table.num_rows}")
    results = pa.schema([*RESULT_SCHEMA, *(PROBABILITIES_SCHEMA if keep_probabilities else [])])
    table = append_results(table, results.empty_table())
    if fmt == "delta":
        write_table(table, out, fmt="delta", mode=mode, partition_by=partition_by, storage_options=storage_options)
        return
    # a directory of Parquet files, like the Ray writer's
    fs, where = arrow_filesystem(out, storage_options)
    if mode == "overwrite":
        fs.delete_dir_contents(where, missing_dir_ok=True)
    fs.create_dir(where)
    write_table(table, join(out, "part-00000.parquet"), fmt="parquet", mode="overwrite",
                storage_options=storage_options)


def summarize(path: str, fmt: str, elapsed: float, storage_options: StorageOptions | None = None) -> str:
    """Rows, errors, reviews and the top sources of a written output, read back column-wise."""
    columns = ["source_code", "source_title", "error", "needs_review"]
    table = read_table(inspect_input(path, fmt=fmt, storage_options=storage_options), columns=columns)
    rows = table.num_rows
    errors = rows - table.column("error").null_count
    review = sum(1 for v in table.column("needs_review").to_pylist() if v)
    top = Counter(zip(table.column("source_code").to_pylist(), table.column("source_title").to_pylist()))
    lines = [
        f"classified {rows} rows in {elapsed:.1f} s ({rows / elapsed:.0f} rows/s incl. model load) → {path}",
        f"errors: {errors}   needs_review: {review}",
        "top sources:",
    ]
    for (code, title), count in top.most_common(6):
        if code is not None:
            lines.append(f"  {code:>5}  {count:6d}  {title}")
    return "\n".join(lines)
