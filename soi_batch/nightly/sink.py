"""The output Delta table: created once with the full schema, then committed chunk by chunk.

A chunk's rows whose id was not in the table when the run selected them are **appended**; the
rest (changed texts, another model version, retried errors) are **MERGEd** on the id
(``when_matched_update_all`` + ``when_not_matched_insert_all``).  Each commit is atomic, so a job
killed mid-run leaves whole commits and nothing half-written, and the next run selects whatever
is not committed yet: nothing is lost and nothing duplicated.  One writer per table at a time:
the sink checks before and after each commit that no other writer has committed since its own
last commit, and stops with :class:`~soi_batch.errors.ConcurrentWriteError` if one has.

Why not MERGE everything: a delta-rs MERGE scans every output file whose id range may match the
chunk, so its memory and time grow with the output table (a 5,000-row MERGE into a 1 M-row
table peaked near 1 GiB).  An append reads nothing, and the MERGE runs with the chunk's id range
as an early filter (``streamed_exec=False``), so files outside that range are skipped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from soi_batch.errors import ConcurrentWriteError, InputSchemaError
from soi_batch.storage import StorageOptions, delta_storage_options

log = logging.getLogger(__name__)

NEW_ID_COL = "_soi_new_id"
"""Staged column: True where the row's id was not in the output table at selection time."""


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


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

    def _expect_version(self, version: int, when: str) -> None:
        if version != self.version:
            raise ConcurrentWriteError(
                f"{self.uri}: another writer committed to the table {when} (version {version}, this run's last "
                f"commit was v{self.version}); only one nightly job may write an output table at a time — "
                "stop the other job and re-run this one (committed chunks are kept)")

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
        """Commit one chunk (ids unique within it): append its new ids, MERGE the others."""
        from deltalake import CommitProperties, DeltaTable, write_deltalake

        ids = chunk.column(self.id_col)
        if len(ids.unique()) != chunk.num_rows:
            raise InputSchemaError(f"chunk for {self.uri} has duplicated {self.id_col!r} values; de-duplicate first")
        if NEW_ID_COL not in chunk.column_names:
            raise InputSchemaError(f"chunk for {self.uri} lacks the staged {NEW_ID_COL!r} column (True where the id "
                                   "is not in the table yet); stage the rows with soi_batch.nightly.select.stage_rows")
        is_new = pc.fill_null(chunk.column(NEW_ID_COL), False)
        rows = chunk.select(self.schema.names).cast(self.schema)
        new, known = rows.filter(is_new), rows.filter(pc.invert(is_new))
        properties = CommitProperties(custom_metadata={"soi_batch_run_id": self.run_id})
        start = time.perf_counter()
        inserted = updated = commits = 0
        self._expect_version(DeltaTable(self.uri, storage_options=self.storage_options).version(), "before this chunk")
        if new.num_rows:
            write_deltalake(self.uri, new, mode="append", schema_mode="merge", commit_properties=properties,
                            storage_options=self.storage_options)
            inserted, commits = new.num_rows, 1
            self.version += 1
            self._expect_version(DeltaTable(self.uri, storage_options=self.storage_options).version(),
                                 "while this chunk was appended")
        if known.num_rows:
            metrics = (
                DeltaTable(self.uri, storage_options=self.storage_options)
                .merge(known, predicate=self.predicate, source_alias="s", target_alias="t", merge_schema=True,
                       streamed_exec=False, commit_properties=properties)
                .when_matched_update_all()
                .when_not_matched_insert_all()
                .execute()
            )
            inserted += int(metrics["num_target_rows_inserted"])
            updated += int(metrics["num_target_rows_updated"])
            commits += 1
            self.version += 1
            self._expect_version(DeltaTable(self.uri, storage_options=self.storage_options).version(),
                                 "while this chunk was MERGEd")
        return CommitResult(self.version, inserted, updated, time.perf_counter() - start, commits)
