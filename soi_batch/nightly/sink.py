"""The output Delta table: created once with the full schema, then one MERGE commit per chunk.

Every chunk is MERGEd on the id (``when_matched_update_all`` + ``when_not_matched_insert_all``),
so re-running a chunk updates rows instead of duplicating them, and each commit is atomic: a
job killed mid-run leaves whole chunks committed and nothing half-written.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import pyarrow as pa

from soi_batch.errors import ConfigError

log = logging.getLogger(__name__)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class MergeResult:
    version: int
    inserted: int
    updated: int
    seconds: float


class DeltaSink:
    """MERGE-by-id writer for one output Delta table."""

    def __init__(self, uri: str, id_col: str, schema: pa.Schema, *, run_id: str) -> None:
        self.uri = uri
        self.id_col = id_col
        self.schema = schema
        self.run_id = run_id
        self.predicate = f"t.{_quote(id_col)} = s.{_quote(id_col)}"

    def ensure_table(self) -> int:
        """Create the (empty) table with the full schema if it does not exist; its current version."""
        from deltalake import DeltaTable, write_deltalake
        from deltalake.exceptions import TableNotFoundError

        try:
            table = DeltaTable(self.uri)
        except TableNotFoundError:
            write_deltalake(self.uri, self.schema.empty_table(), mode="error",
                            description="soi-batch nightly source-of-injury results")
            log.info("created output Delta table %s", self.uri)
            return DeltaTable(self.uri).version()
        existing = pa.schema(table.schema().to_arrow())
        missing = [f.name for f in self.schema if f.name not in existing.names]
        if missing:
            log.warning("output %s lacks columns %s; they are added by schema merge on the next commit",
                        self.uri, missing)
        return table.version()

    def merge(self, chunk: pa.Table) -> MergeResult:
        """MERGE one chunk (ids unique within it) as a single Delta commit."""
        from deltalake import CommitProperties, DeltaTable

        ids = chunk.column(self.id_col)
        if len(ids.unique()) != chunk.num_rows:
            raise ConfigError(f"chunk for {self.uri} has duplicated {self.id_col!r} values; de-duplicate first")
        source = chunk.select(self.schema.names).cast(self.schema)
        start = time.perf_counter()
        metrics = (
            DeltaTable(self.uri)
            .merge(source, predicate=self.predicate, source_alias="s", target_alias="t", merge_schema=True,
                   commit_properties=CommitProperties(custom_metadata={"soi_batch_run_id": self.run_id}))
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute()
        )
        return MergeResult(DeltaTable(self.uri).version(), int(metrics["num_target_rows_inserted"]),
                           int(metrics["num_target_rows_updated"]), time.perf_counter() - start)
