"""The nightly run: select → stage → classify on Ray Data → commit chunk by chunk → manifest.

:func:`run_nightly` takes a :class:`~soi_batch.nightly.config.NightlyConfig` and returns the
run's :class:`~soi_batch.nightly.manifest.RunManifest`.  It is safe to re-run at any time:

* rows already classified by this model version with the same text are skipped;
* results are committed in chunks of ``chunk_rows`` rows (new ids appended, known ids MERGEd:
  :mod:`soi_batch.nightly.sink`), so a killed run keeps every committed chunk and the next run
  classifies only what is left;
* a dead Ray actor is restarted and its batches retried (Ray Data's actor-pool defaults); a row
  that cannot be scored is committed with ``error`` set, never dropped.

One writer per output table at a time (schedule with ``max_active_runs=1`` / a lock); a second
writer's commit is refused by the table (:mod:`soi_batch.nightly.sink`), duplicate ids found in
the output are repaired, and what killed runs left (``running`` manifests, staging folders) is
cleaned up by the next run (:mod:`soi_batch.nightly.runs`).
"""

from __future__ import annotations

import logging
import shutil
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from soi_batch.bundle import ModelBundle, load_bundle
from soi_batch.nightly.config import NightlyConfig
from soi_batch.nightly.keys import key_column
from soi_batch.nightly.manifest import Counts, RunManifest, distribution, previous_manifest, total_variation
from soi_batch.nightly.runs import RunLock, clean_stale_staging, mark_interrupted
from soi_batch.nightly.select import (
    MAX_IDS_LISTED,
    TEXT_SHA_COL,
    InputSource,
    open_state,
    select_rows,
    stage_rows,
)
from soi_batch.nightly.sink import NEW_ID_COL, DeltaSink
from soi_batch.schema import PROBABILITIES_SCHEMA, RESULT_SCHEMA
from soi_batch.storage import StorageOptions, delta_storage_options
from soi_batch.tables import absolute_uri, append_results, check_result_names, inspect_input

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def output_schema(source: InputSource, *, keep_probabilities: bool) -> pa.Schema:
    """Input columns + ``text_sha256`` + the result columns (input columns of the same name replaced)."""
    results = [pa.field(TEXT_SHA_COL, pa.string()), *RESULT_SCHEMA,
               *(PROBABILITIES_SCHEMA if keep_probabilities else [])]
    merged = append_results(source.schema.empty_table(), pa.schema(results).empty_table())
    return merged.schema.remove_metadata()


def division_counts(output: str, storage_options: StorageOptions | None = None) -> Counter[str]:
    """Division codes over the whole output table (one column read)."""
    from deltalake import DeltaTable

    column = DeltaTable(output, storage_options=delta_storage_options(output, storage_options)).to_pyarrow_dataset().to_table(columns=["division_code"]).column("division_code")
    counts = pc.value_counts(column.drop_null()).to_pylist() if len(column) else []
    return Counter({c["values"]: c["counts"] for c in counts})


def run_nightly(config: NightlyConfig, *, progress: bool = False, quiet: bool = False) -> RunManifest:
    """Run the nightly job once.  ``progress``: a bar in rows on stderr as rows are classified (rows/s,
    ETA); ``quiet``: Ray's own console lines and the workers' output kept to Ray's session logs
    (:func:`~soi_batch.ray_data.init_ray`).  The per-chunk INFO log lines say what was committed."""
    started, t0 = _now(), time.perf_counter()
    spec = inspect_input(config.input, fmt=config.input_format, encoding=config.encoding,
                         storage_options=config.storage_options)
    spec.require_text(config.text_col)
    spec.require(*config.id_columns, role="id column")
    check_result_names(spec.columns, [TEXT_SHA_COL, NEW_ID_COL, *RESULT_SCHEMA.names,
                                      *(PROBABILITIES_SCHEMA.names if config.keep_probabilities else [])],
                       source=spec.path)
    bundle = load_bundle(config.model, Path(config.cache_dir) if config.cache_dir else None)
    classifier_config = config.classifier_config()
    ray_options = config.ray_options()
    source = InputSource.open(spec, config.id_columns)
    key = key_column(source.snapshot.schema, config.id_columns, where=spec.path)
    run_id = uuid.uuid4().hex
    manifest_dir = Path(config.resolved_manifest_dir)
    staging = Path(config.resolved_staging_dir) / run_id
    lock = RunLock(staging.parent, run_id)  # held until the final manifest is written
    manifest = RunManifest(
        run_id=run_id, model_id=bundle.model_id, model_path=str(bundle.path), input=spec.path,
        input_format=spec.format, input_version=source.version, input_fingerprint=source.fingerprint,
        output=config.output, chunk_rows=config.chunk_rows, started_at=started, lock_file=str(lock.path),
        config=config.model_dump(mode="json"),
    )
    try:
        manifest.write(manifest_dir)
        log.info("run %s: %s (%s) → %s with %s, chunks of %d rows", run_id, source.fingerprint, spec.format,
                 config.output, bundle.model_id, config.chunk_rows)
        try:
            mark_interrupted(manifest_dir, config.output, exclude_run=run_id, storage_options=config.storage_options)
            _run(config, key, manifest, source, bundle, classifier_config, ray_options, staging,
                 progress=progress, quiet=quiet)
            manifest.status = "completed"
        except BaseException as exc:
            manifest.status, manifest.error = "failed", f"{type(exc).__name__}: {exc}"
            raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            manifest.ended_at = _now()
            manifest.wall_seconds = round(time.perf_counter() - t0, 3)
            path = manifest.write(manifest_dir)
            log.info("run %s %s in %.1f s: %s; manifest %s", run_id, manifest.status, manifest.wall_seconds,
                     manifest.counts.model_dump(exclude={"selected_by_reason"}), path)
    finally:
        lock.release()
        try:  # the shared staging root goes when the last run using it is done
            staging.parent.rmdir()
        except OSError:
            pass
    return manifest


def _run(config: NightlyConfig, key: str, manifest: RunManifest, source: InputSource, bundle: ModelBundle,
         classifier_config, ray_options, staging: Path, *, progress: bool = False, quiet: bool = False) -> None:
    schema = output_schema(source, keep_probabilities=config.keep_probabilities)
    sink = DeltaSink(config.output, key, schema, run_id=manifest.run_id, storage_options=config.storage_options)
    clean_stale_staging(staging.parent, keep=staging.name)
    counts: Counts = manifest.counts
    # the selection reads the table at the version every commit of this run is conditional on
    manifest.output_version_start = manifest.output_version_end = sink.ensure_table()
    repaired = sink.repair_duplicate_ids()
    if repaired:
        counts.duplicate_ids_repaired, counts.repaired_ids = len(repaired), repaired[:MAX_IDS_LISTED]
        manifest.output_version_end = sink.version
        log.warning("output %s held %d id(s) more than once (another writer, or a table written by an older "
                    "version): kept one row of each in v%d, e.g. %s", config.output, len(repaired), sink.version,
                    repaired[:10])
    selection = select_rows(source, open_state(config.output, key, sink.version, config.storage_options), id_col=key,
                            text_col=config.text_col, model_id=manifest.model_id, retry_errors=config.retry_errors,
                            work_dir=staging / "_select")
    counts.read, counts.duplicate_ids_dropped = selection.rows_read, selection.duplicate_ids_dropped
    counts.duplicate_ids = selection.duplicate_ids
    counts.null_ids_dropped, counts.skipped = selection.null_ids_dropped, selection.up_to_date
    counts.selected, counts.selected_by_reason = selection.selected, selection.reasons
    divisions: Counter[str] = Counter()
    if selection.selected:
        stage_rows(source, selection, staging, text_col=config.text_col, rows_per_file=config.chunk_rows)
        del selection
        start = time.perf_counter()
        _classify_and_commit(config, manifest, sink, bundle, classifier_config, ray_options, staging, divisions,
                             progress=progress, quiet=quiet)
        elapsed = time.perf_counter() - start
        manifest.rows_per_second = round(counts.classified / elapsed, 2) if elapsed > 0 else None
    else:
        log.info("nothing to classify: every row is up to date for %s", manifest.model_id)
    manifest.label_distribution = distribution(divisions)
    manifest.label_distribution_table = distribution(division_counts(config.output, config.storage_options))
    previous = previous_manifest(config.resolved_manifest_dir, exclude_run=manifest.run_id)
    if previous is not None:
        manifest.previous_run_id = previous.run_id
        manifest.label_shift_tvd_table = total_variation(manifest.label_distribution_table,
                                                         previous.label_distribution_table)
    reference = previous_manifest(config.resolved_manifest_dir, exclude_run=manifest.run_id, classified_only=True)
    if reference is not None:
        manifest.label_shift_reference_run_id = reference.run_id
        manifest.label_shift_tvd = total_variation(manifest.label_distribution, reference.label_distribution)
    if manifest.label_shift_tvd is not None:
        log.info("division shift vs run %s: TVD %.3f (this run), %s (whole table)", reference.run_id,
                 manifest.label_shift_tvd, manifest.label_shift_tvd_table)


def _classify_and_commit(config: NightlyConfig, manifest: RunManifest, sink: DeltaSink, bundle: ModelBundle,
                        classifier_config, ray_options, staging: Path, divisions: Counter[str], *,
                        progress: bool, quiet: bool) -> None:
    import ray

    from soi_batch.ray_data import init_ray, start_row_counter

    own_ray = not ray.is_initialized()
    init_ray(config.ray_address, num_cpus=config.ray_num_cpus, object_store_memory=config.ray_object_store_memory,
             quiet=quiet)
    try:
        counter = start_row_counter() if progress else None
        _commit_chunks(config, manifest, sink, bundle, classifier_config, ray_options, staging, divisions, counter)
    finally:
        if own_ray:
            # End the Ray session this run started (or connected) while Python is fully alive. Left to
            # the interpreter's exit, Ray's atexit shutdown runs while its daemon listener threads
            # (ray_print_logs, ray_listen_error_messages) may still be inside C++ calls: the likely
            # cause of the rare exit -6 ("terminate called without an active exception") seen after
            # "completed" (about 1 run in 51; not reproduced in a few runs here).
            ray.shutdown()


def _commit_chunks(config: NightlyConfig, manifest: RunManifest, sink: DeltaSink, bundle: ModelBundle,
                   classifier_config, ray_options, staging: Path, divisions: Counter[str], counter=None) -> None:
    import ray.data

    from soi_batch.ray_data import classify_dataset, row_progress

    # blocks of chunk_rows rows: each actor task then returns about one chunk's results, so commits
    # follow classification (one huge read block would be classified whole before any commit)
    ds = ray.data.read_parquet(absolute_uri(staging)).repartition(target_num_rows_per_block=config.chunk_rows)
    ds = classify_dataset(ds, text_col=config.text_col, model=bundle, config=classifier_config,
                          run_id=manifest.run_id, keep_probabilities=config.keep_probabilities, options=ray_options,
                          row_counter=counter)
    ds.context.enable_progress_bars = config.ray_progress_bars  # this run's Datasets only, not the process's
    counts = manifest.counts
    with row_progress(counter, total=counts.selected):
        for chunk in ds.iter_batches(batch_size=config.chunk_rows, batch_format="pyarrow", prefetch_batches=1):
            result = sink.commit(chunk)
            errors = chunk.num_rows - chunk.column("error").null_count
            counts.classified += chunk.num_rows
            counts.errors += errors
            counts.inserted += result.inserted
            counts.updated += result.updated
            manifest.chunks_committed += 1
            manifest.commit_seconds = round(manifest.commit_seconds + result.seconds, 3)
            manifest.output_version_end = result.version
            ok = chunk.filter(pc.is_null(chunk.column("error"))).column("division_code")
            divisions.update({c["values"]: c["counts"] for c in pc.value_counts(ok.drop_null()).to_pylist()})
            log.info("chunk %d: %d rows (%d errors) → %s v%d (%d inserted, %d updated, %d commit(s) in %.2f s)",
                     manifest.chunks_committed, chunk.num_rows, errors, sink.uri, result.version, result.inserted,
                     result.updated, result.commits, result.seconds)
