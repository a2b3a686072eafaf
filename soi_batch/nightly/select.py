"""What needs classifying: new ids, changed texts, another model version (and, on request, errors).

Two streaming passes over the input, in input order, in memory bounded by ``bucket_rows``:

1. :func:`select_rows` reads the id and text columns batch by batch and writes each row's
   ``(id, position, sha256 of the text)`` to one of B Parquet bucket files by a hash of the id;
   the output table's ``(id, text_sha256, model_id, error)`` is bucketed the same way.  Each
   bucket pair is then read alone (about ``bucket_rows`` rows): duplicated ids dropped (the
   **last** row in input order wins), rows without an id dropped, the rest compared with the
   output's state.  What stays on the driver is two bits per input row (selected; id new to
   the output), never ids, digests or narratives.
2. :func:`stage_rows` reads the input again and writes only the selected rows (all columns plus
   ``text_sha256`` and ``_soi_new_id``: the id is not in the output yet, so the sink appends the
   row instead of MERGEing it) as Parquet files of ``chunk_rows`` rows, which Ray Data then reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from soi_batch.errors import InputSchemaError
from soi_batch.nightly.keys import KEY_COL, with_key
from soi_batch.nightly.sink import NEW_ID_COL
from soi_batch.storage import StorageOptions, arrow_filesystem, delta_storage_options, is_uri
from soi_batch.tables import InputSnapshot, InputSpec

log = logging.getLogger(__name__)
TEXT_SHA_COL = "text_sha256"
MAX_IDS_LISTED = 1000
"""Ids listed in the manifest (dropped duplicates, repaired ids); the counts are complete."""
_NO_PREBUFFER = pads.ParquetFragmentScanOptions(pre_buffer=False)
_NULL_TEXT_DIGEST = hashlib.sha256(b"\xff<null>").hexdigest()  # b"\xff" is never valid UTF-8 text


def text_digests(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Hex sha256 of each text's UTF-8 bytes (null texts get a digest no text can have)."""
    kind = texts.type.value_type if pa.types.is_dictionary(texts.type) else texts.type
    if pa.types.is_dictionary(texts.type):
        texts = texts.cast(kind)
    raw = texts.cast(pa.large_binary() if pa.types.is_large_string(kind) else pa.binary())  # bytes as stored:
    return pa.array(  # a text that is not valid UTF-8 (a per-row error later) still gets its digest
        [_NULL_TEXT_DIGEST if t is None else hashlib.sha256(t).hexdigest() for t in raw.to_pylist()],
        type=pa.string(),
    )


@dataclass(frozen=True)
class InputSource:
    """An input pinned for one run (:class:`~soi_batch.tables.InputSnapshot`) and its fingerprint.

    With a composite id (several ``id_cols``) its rows carry the generated key column
    :data:`~soi_batch.nightly.keys.KEY_COL` as their last column."""

    snapshot: InputSnapshot
    fingerprint: str
    """``delta:PATH@vN`` for a Delta table, else a digest of the files' paths, sizes and mtimes."""
    id_cols: tuple[str, ...] = ()

    @classmethod
    def open(cls, spec: InputSpec, id_cols: Sequence[str] = ()) -> InputSource:
        snapshot = InputSnapshot.open(spec)
        if snapshot.version is not None:
            return cls(snapshot, f"delta:{spec.path}@v{snapshot.version}", tuple(id_cols))
        return cls(snapshot, _files_fingerprint(list(snapshot.files), spec), tuple(id_cols))

    @property
    def spec(self) -> InputSpec:
        return self.snapshot.spec

    @property
    def version(self) -> int | None:
        return self.snapshot.version

    @property
    def composite(self) -> bool:
        return len(self.id_cols) > 1

    @property
    def schema(self) -> pa.Schema:
        schema = self.snapshot.schema
        return schema.append(pa.field(KEY_COL, pa.string())) if self.composite else schema

    def batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """The input's rows in a fixed order (the same on every pass of a run)."""
        if not self.composite:
            yield from self.snapshot.batches(columns)
            return
        read = None if columns is None else list(dict.fromkeys(
            [c for c in columns if c != KEY_COL] + list(self.id_cols)))
        for batch in self.snapshot.batches(read):
            batch = with_key(batch, self.id_cols)
            yield batch if columns is None else batch.select(columns)


def _files_fingerprint(paths: list[str], spec: InputSpec) -> str:
    """sha256 over (path, size, mtime) of the input files: changes when any file changes."""
    h = hashlib.sha256()
    fs = arrow_filesystem(spec.path, spec.storage_options)[0] if is_uri(spec.path) else None
    for p in paths:
        if fs is not None:  # a remote input: the object store's size and modification time
            info = fs.get_file_info(arrow_filesystem(p, spec.storage_options)[1] if is_uri(p) else p)
            h.update(json.dumps([p, info.size, info.mtime_ns]).encode())
            continue
        st = Path(p).stat()
        h.update(json.dumps([p, st.st_size, st.st_mtime_ns]).encode())
    return f"files:{len(paths)}:{h.hexdigest()[:16]}"


class RowBits:
    """One bit per input row (``np.packbits`` order): 1 MB holds 8 M rows."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.bits = np.zeros((n + 7) // 8, dtype=np.uint8)

    def set(self, positions: np.ndarray) -> None:
        positions = np.asarray(positions, dtype=np.int64)
        np.bitwise_or.at(self.bits, positions >> 3, (128 >> (positions & 7)).astype(np.uint8))

    def get(self, start: int, count: int) -> np.ndarray:
        """Bools for rows ``start .. start + count - 1``."""
        first, last = start >> 3, (start + count + 7) >> 3
        unpacked = np.unpackbits(self.bits[first:last])
        return unpacked[start - (first << 3) : start - (first << 3) + count].astype(bool)


@dataclass
class Selection:
    """Which input rows (by position) go to the classifier, and why the others do not."""

    selected_rows: RowBits
    """Classify this input row now."""
    new_ids: RowBits
    """Selected, and its id is not in the output table (the sink appends it)."""
    rows_read: int = 0
    duplicate_ids_dropped: int = 0
    duplicate_ids: list = field(default_factory=list)
    """Ids that occur more than once in the input (the first :data:`MAX_IDS_LISTED`)."""
    null_ids_dropped: int = 0
    up_to_date: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    """Selected rows by reason: new, text_changed, model_changed, retry_error."""
    buckets: int = 1

    @property
    def selected(self) -> int:
        return sum(v for v in self.reasons.values())


def open_state(output: str, id_col: str, version: int | None = None,
               storage_options: StorageOptions | None = None) -> pads.Dataset | None:
    """The output table (at ``version``, else the latest) as a dataset, checked for the state
    columns; None if it does not exist yet."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        table = DeltaTable(output, version=version, storage_options=delta_storage_options(output, storage_options))
    except TableNotFoundError:
        return None
    names = pa.schema(table.schema().to_arrow()).names
    missing = [c for c in (id_col, TEXT_SHA_COL, "model_id", "error") if c not in names]
    if missing:
        raise InputSchemaError(
            f"{output}: output table lacks columns {missing} (columns: {list(names)}); "
            "it was not written by the nightly job — choose another --output"
        )
    return table.to_pyarrow_dataset()


class _Buckets:
    """B Parquet files under ``root``; rows go to ``hash(id) % B`` (Python's hash: one process)."""

    def __init__(self, root: Path, name: str, count: int, schema: pa.Schema) -> None:
        self.root, self.name, self.count, self.schema = root, name, count, schema
        self.writers: dict[int, pq.ParquetWriter] = {}

    def bucket_of(self, ids: pa.Array) -> np.ndarray:
        if self.count == 1:
            return np.zeros(len(ids), dtype=np.int64)
        return np.fromiter((hash(v) % self.count for v in ids.to_pylist()), dtype=np.int64, count=len(ids))

    def write(self, table: pa.Table) -> None:
        buckets = self.bucket_of(table.column(0).combine_chunks())
        order = np.argsort(buckets, kind="stable")
        ordered = table.take(pa.array(order))
        bounds = np.searchsorted(buckets[order], np.arange(self.count + 1))
        for b in range(self.count):
            if bounds[b + 1] > bounds[b]:
                if b not in self.writers:
                    self.writers[b] = pq.ParquetWriter(str(self.path(b)), self.schema)
                self.writers[b].write_table(ordered.slice(bounds[b], bounds[b + 1] - bounds[b]))

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()

    def path(self, b: int) -> Path:
        return self.root / f"{self.name}-{b:05d}.parquet"

    def read(self, b: int) -> pa.Table:
        return pq.read_table(self.path(b)) if b in self.writers else self.schema.empty_table()


def select_rows(source: InputSource, state: pads.Dataset | None, *, id_col: str, text_col: str, model_id: str,
                work_dir: Path, retry_errors: bool = False, bucket_rows: int = 250_000) -> Selection:
    """Pass 1: which rows need classifying by ``model_id`` (see the module doc)."""
    id_type = source.schema.field(id_col).type
    state_rows = state.count_rows() if state is not None else 0
    count = max(1, math.ceil(max(source.snapshot.count_rows(), state_rows) / bucket_rows))
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    try:
        inputs = _Buckets(work_dir, "input", count,
                          pa.schema([("id", id_type), ("pos", pa.int64()), ("digest", pa.string())]))
        n = null_ids = 0
        for batch in source.batches([id_col, text_col]):
            ids = batch.column(id_col)
            keep = pc.is_valid(ids)
            null_ids += ids.null_count
            rows = pa.table({"id": ids, "pos": pa.array(np.arange(n, n + len(ids), dtype=np.int64)),
                             "digest": text_digests(batch.column(text_col))}).filter(keep)
            n += len(ids)
            inputs.write(rows)
        inputs.close()
        states = _Buckets(work_dir, "state", count, pa.schema([("id", id_type), ("t_digest", pa.string()),
                                                               ("t_model", pa.string()), ("t_error", pa.string())]))
        if state is not None:
            for batch in state.to_batches(columns=[id_col, TEXT_SHA_COL, "model_id", "error"],
                                          fragment_scan_options=_NO_PREBUFFER):
                states.write(pa.Table.from_batches([batch]).rename_columns(states.schema.names).cast(states.schema))
        states.close()
        selection = Selection(RowBits(n), RowBits(n), rows_read=n, null_ids_dropped=null_ids, buckets=count,
                              reasons={"new": 0, "text_changed": 0, "model_changed": 0, "retry_error": 0})
        for b in range(count):
            _select_bucket(inputs.read(b), states.read(b), selection, model_id=model_id, retry_errors=retry_errors)
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    log.info("input %s: %d rows, %d duplicate ids dropped (last row kept), %d without id; "
             "%d up to date, %d to classify %s (%d bucket(s))", source.spec.path, n, selection.duplicate_ids_dropped,
             null_ids, selection.up_to_date, selection.selected, {k: v for k, v in selection.reasons.items() if v},
             count)
    if null_ids:
        log.warning("%d row(s) have no %r and are not classified (they could never be MERGEd by id); give every "
                    "row an id, or choose other id columns", null_ids, id_col)
    if selection.duplicate_ids_dropped:
        selection.duplicate_ids.sort(key=str)
        log.warning("%d row(s) dropped: their %r repeats later in the input (the last row of each id is "
                    "classified), ids %s%s. If these are different reports, use a key that tells them apart "
                    "(several --id-col columns, e.g. --id-col ID --id-col EventDate; see the README)",
                    selection.duplicate_ids_dropped, id_col, selection.duplicate_ids[:20],
                    " …" if len(selection.duplicate_ids) > 20 else "")
    return selection


def _select_bucket(rows: pa.Table, state: pa.Table, selection: Selection, *, model_id: str,
                   retry_errors: bool) -> None:
    """Compare one bucket's input rows with the same bucket of the output's state."""
    grouped = rows.group_by("id", use_threads=False).aggregate([("pos", "max"), ("pos", "count")])
    last = grouped.select(["id", "pos_max"]).rename_columns(["id", "pos"])
    selection.duplicate_ids_dropped += rows.num_rows - last.num_rows
    if rows.num_rows > last.num_rows and len(selection.duplicate_ids) < MAX_IDS_LISTED:
        repeated = grouped.filter(pc.greater(grouped.column("pos_count"), 1)).column("id").to_pylist()
        selection.duplicate_ids.extend(repeated[: MAX_IDS_LISTED - len(selection.duplicate_ids)])
    last = last.join(rows.select(["pos", "digest"]), keys="pos", use_threads=False)
    reasons = selection.reasons
    if state.num_rows == 0:
        chosen = new_pos = last.column("pos")
        reasons["new"] += last.num_rows
    else:
        joined = last.join(state, keys="id", join_type="left outer", use_threads=False)
        is_new = pc.is_null(joined.column("t_digest"))
        known = pc.invert(is_new)
        changed = pc.fill_null(pc.and_(known, pc.not_equal(joined.column("digest"), joined.column("t_digest"))), False)
        other_model = pc.fill_null(pc.and_(known, pc.not_equal(joined.column("t_model"), pa.scalar(model_id))), False)
        errored = pc.and_(known, pc.is_valid(joined.column("t_error")))
        need = pc.or_(pc.or_(is_new, changed), other_model)
        if retry_errors:
            need = pc.or_(need, errored)
        chosen = joined.filter(need).column("pos")
        new_pos = joined.filter(is_new).column("pos")
        selection.up_to_date += joined.num_rows - len(chosen)
        # one reason per row, in this precedence: new > text_changed > model_changed > retry_error
        reasons["new"] += pc.sum(is_new).as_py() or 0
        reasons["text_changed"] += pc.sum(changed).as_py() or 0
        reasons["model_changed"] += pc.sum(pc.and_(other_model, pc.invert(changed))).as_py() or 0
        if retry_errors:
            rest = pc.invert(pc.or_(pc.or_(is_new, changed), other_model))
            reasons["retry_error"] += pc.sum(pc.and_(errored, rest)).as_py() or 0
    selection.selected_rows.set(chosen.to_numpy())
    selection.new_ids.set(new_pos.to_numpy())


def stage_rows(source: InputSource, selection: Selection, staging: Path, *, text_col: str, rows_per_file: int) -> int:
    """Pass 2: write the selected rows (+ ``text_sha256``, ``_soi_new_id``) as Parquet files under ``staging``."""
    staging.mkdir(parents=True, exist_ok=True)
    writer: pq.ParquetWriter | None = None
    in_file = files = written = 0
    pos = 0
    for batch in source.batches():
        take = selection.selected_rows.get(pos, batch.num_rows)
        new = selection.new_ids.get(pos, batch.num_rows)
        pos += batch.num_rows
        if not take.any():
            continue
        table = pa.Table.from_batches([batch]).filter(pa.array(take))
        table = table.append_column(TEXT_SHA_COL, text_digests(table.column(text_col)))
        table = table.append_column(NEW_ID_COL, pa.array(new[take]))
        start = 0
        while start < table.num_rows:
            if writer is None:
                writer = pq.ParquetWriter(str(staging / f"part-{files:05d}.parquet"), table.schema)
                files += 1
            part = table.slice(start, rows_per_file - in_file)
            writer.write_table(part)
            start += part.num_rows
            in_file += part.num_rows
            written += part.num_rows
            if in_file >= rows_per_file:
                writer.close()
                writer, in_file = None, 0
    if writer is not None:
        writer.close()
    log.info("staged %d rows in %d Parquet file(s) under %s", written, files, staging)
    return written
