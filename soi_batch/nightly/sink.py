"""The output Delta table: created once with the full schema, then committed chunk by chunk.

A chunk's rows whose id was not in the table when the run selected them are **appended**; the
rest (changed texts, another model version, retried errors) are **MERGEd** on the id
(``when_matched_update_all`` + ``when_not_matched_insert_all``).  Each commit is atomic, so a job
killed mid-run leaves whole commits and nothing half-written, and the next run selects whatever
is not committed yet: nothing is lost and nothing duplicated.

One writer per table at a time, enforced by the table itself: every commit is a conditional
commit on the version of this writer's last commit (the transaction reads the table pinned at
that version and ``max_commit_retries=0``, so delta-rs refuses to commit on top of any other
writer's commit instead of retrying after its conflict checks, which let two appends through).
The loser gets :class:`~soi_batch.errors.ConcurrentWriteError` and nothing of its chunk is
written.  Should duplicate ids exist anyway (a table written by older versions, or by hand),
:meth:`DeltaSink.repair_duplicate_ids` keeps one row per id in one commit.

Why not MERGE everything: a delta-rs MERGE scans every output file whose id range may match the
chunk, so its memory and time grow with the output table (a 5,000-row MERGE into a 1 M-row
table peaked near 1 GiB).  An append reads nothing, and the MERGE runs with the chunk's id range
as an early filter (``streamed_exec=False``), so files outside that range are skipped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from soi_batch.errors import ConcurrentWriteError, InputSchemaError
from soi_batch.storage import StorageOptions, delta_storage_options

log = logging.getLogger(__name__)

NEW_ID_COL = "_soi_new_id"
"""Staged column: True where the row's id was not in the output table at selection time."""


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(value: Any) -> str:
    """A SQL literal for an id value (ids are integers or strings: see ``soi_batch.nightly.keys``)."""
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise InputSchemaError(f"id value {value!r} of type {type(value).__name__} cannot be written in a predicate")


@dataclass
class CommitResult:
    version: int
    """Output table version after the chunk's last commit."""
    inserted: int
    updated: int
    seconds: float
    commits: int
    """1, or 2 when the chunk had both new ids (append) and known ids (MERGE)."""


class DeltaSink:
    """Append-new / MERGE-known writer for one output Delta table."""

    def __init__(self, uri: str, id_col: str, schema: pa.Schema, *, run_id: str,
                 storage_options: StorageOptions | None = None) -> None:
        self.uri = uri
        self.storage_options = delta_storage_options(uri, storage_options)
        """Delta Lake's options for a remote ``uri`` (:mod:`soi_batch.storage`); None for a local table."""
        self.id_col = id_col
        self.schema = schema
        self.run_id = run_id
        self.predicate = f"t.{_quote(id_col)} = s.{_quote(id_col)}"
        self.version: int | None = None
        """The table version of this writer's last commit (or of ``ensure_table``)."""
        self.before_commit: Callable[[str], None] | None = None
        """Called with ``"append"``, ``"merge"`` or ``"repair"`` after the table is read at
        :attr:`version` and just before the commit (a hook point for tests and tracing)."""

    def _pinned(self, operation: str) -> Any:
        """The table at this writer's last version, for a conditional commit; then ``before_commit``."""
        from deltalake import DeltaTable

        table = DeltaTable(self.uri, version=self.version, storage_options=self.storage_options)
        if self.before_commit is not None:
            self.before_commit(operation)
        return table

    def _properties(self) -> Any:
        from deltalake import CommitProperties

        return CommitProperties(custom_metadata={"soi_batch_run_id": self.run_id}, max_commit_retries=0)

    def _conflict(self, operation: str, exc: Exception) -> ConcurrentWriteError:
        from deltalake import DeltaTable

        latest = DeltaTable(self.uri, storage_options=self.storage_options).version()
        return ConcurrentWriteError(
            f"{self.uri}: another writer committed to the table (now version {latest}) since this run's last "
            f"commit v{self.version}; this {operation} was not committed ({exc}). Only one nightly job may write "
            "an output table at a time — stop the other job and re-run this one (committed chunks are kept)")

    def ensure_table(self) -> int:
        """Create the (empty) table with the full schema if it does not exist; its current version."""
        from deltalake import DeltaTable, write_deltalake
        from deltalake.exceptions import TableNotFoundError

        try:
            table = DeltaTable(self.uri, storage_options=self.storage_options)
        except TableNotFoundError:
            write_deltalake(self.uri, self.schema.empty_table(), mode="error",
                            description="soi-batch nightly source-of-injury results", storage_options=self.storage_options)
            log.info("created output Delta table %s", self.uri)
            self.version = DeltaTable(self.uri, storage_options=self.storage_options).version()
            return self.version
        existing = pa.schema(table.schema().to_arrow())
        missing = [f.name for f in self.schema if f.name not in existing.names]
        if missing:
            log.warning("output %s lacks columns %s; they are added by schema merge on the next commit",
                        self.uri, missing)
        self.version = table.version()
        return self.version

    def commit(self, chunk: pa.Table) -> CommitResult:
        """Commit one chunk (ids unique within it): append its new ids, MERGE the others.

        Each commit is conditional on :attr:`version`: :class:`ConcurrentWriteError` if any other
        writer has committed since (nothing of that commit is written)."""
        from deltalake import write_deltalake
        from deltalake.exceptions import CommitFailedError

        ids = chunk.column(self.id_col)
        if len(ids.unique()) != chunk.num_rows:
            raise InputSchemaError(f"chunk for {self.uri} has duplicated {self.id_col!r} values; de-duplicate first")
        if NEW_ID_COL not in chunk.column_names:
            raise InputSchemaError(f"chunk for {self.uri} lacks the staged {NEW_ID_COL!r} column (True where the id "
                                   "is not in the table yet); stage the rows with soi_batch.nightly.select.stage_rows")
        is_new = pc.fill_null(chunk.column(NEW_ID_COL), False)
        rows = chunk.select(self.schema.names).cast(self.schema)
        new, known = rows.filter(is_new), rows.filter(pc.invert(is_new))
        start = time.perf_counter()
        inserted = updated = commits = 0
        if new.num_rows:
            table = self._pinned("append")
            try:
                write_deltalake(table, new, mode="append", schema_mode="merge", commit_properties=self._properties())
            except CommitFailedError as exc:
                raise self._conflict("append", exc) from exc
            inserted, commits = new.num_rows, 1
            self.version += 1
        if known.num_rows:
            table = self._pinned("merge")
            try:
                metrics = (
                    table.merge(known, predicate=self.predicate, source_alias="s", target_alias="t",
                                merge_schema=True, streamed_exec=False, commit_properties=self._properties())
                    .when_matched_update_all()
                    .when_not_matched_insert_all()
                    .execute()
                )
            except CommitFailedError as exc:
                raise self._conflict("MERGE", exc) from exc
            inserted += int(metrics["num_target_rows_inserted"])
            updated += int(metrics["num_target_rows_updated"])
            commits += 1
            self.version += 1
        return CommitResult(self.version, inserted, updated, time.perf_counter() - start, commits)

    def duplicate_ids(self) -> list[Any]:
        """Ids that occur more than once in the table (reads the id column only)."""
        from deltalake import DeltaTable

        ids = DeltaTable(self.uri, version=self.version, storage_options=self.storage_options).to_pyarrow_dataset().to_table(columns=[self.id_col])
        counts = ids.group_by(self.id_col, use_threads=False).aggregate([(self.id_col, "count")])
        return counts.filter(pc.greater(counts.column(f"{self.id_col}_count"), 1)).column(self.id_col).to_pylist()

    def repair_duplicate_ids(self) -> list[Any]:
        """Keep one row per duplicated id, in one conditional commit; the ids repaired (sorted).

        The row kept is one without ``error`` if there is one, else the last one read; a kept row
        whose text or model is not current is re-classified by the run as usual."""
        import pyarrow.dataset as pads
        from deltalake import write_deltalake
        from deltalake.exceptions import CommitFailedError

        duplicated = sorted(self.duplicate_ids())
        if not duplicated:
            return []
        table = self._pinned("repair")
        rows = table.to_pyarrow_dataset().to_table(filter=pads.field(self.id_col).isin(duplicated))
        ok = (pc.is_null(rows.column("error")).to_pylist() if "error" in rows.column_names
              else [True] * rows.num_rows)
        chosen: dict[Any, int] = {}
        for pos, value in enumerate(rows.column(self.id_col).to_pylist()):
            if value not in chosen or ok[pos] or not ok[chosen[value]]:
                chosen[value] = pos
        kept = rows.take(pa.array(sorted(chosen.values()), pa.int64()))
        predicate = f"{_quote(self.id_col)} IN ({', '.join(_literal(v) for v in duplicated)})"
        try:
            write_deltalake(table, kept, mode="overwrite", predicate=predicate, schema_mode=None,
                            commit_properties=self._properties())
        except CommitFailedError as exc:
            raise self._conflict("repair of duplicate ids", exc) from exc
        self.version += 1
        return duplicated


@dataclass
class Committed:
    """What one run committed to the table, from the commits' ``soi_batch_run_id`` metadata."""

    commits: int = 0
    inserted: int = 0
    updated: int = 0
    last_version: int | None = None


def committed_by_run(uri: str, run_id: str, storage_options: StorageOptions | None = None) -> Committed:
    """Sum the commits of ``run_id`` in the table's history (appends: rows added; MERGEs: inserted, updated)."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    found = Committed()
    try:
        history = DeltaTable(uri, storage_options=delta_storage_options(uri, storage_options)).history()
    except TableNotFoundError:
        return found
    for entry in history:
        if entry.get("soi_batch_run_id") != run_id:
            continue
        metrics = entry.get("operationMetrics") or {}
        found.commits += 1
        if entry.get("operation") == "MERGE":
            found.inserted += int(metrics.get("num_target_rows_inserted", 0))
            found.updated += int(metrics.get("num_target_rows_updated", 0))
        else:
            found.inserted += int(metrics.get("num_added_rows", 0))
        version = entry.get("version")
        if version is not None:
            found.last_version = max(found.last_version or version, version)
    return found
