"""What needs classifying: new ids, changed texts, another model version (and, on request, errors).

Two streaming passes over the input, in input order, never holding the narratives:

1. :func:`select_rows` reads the id and text columns batch by batch, keeps each row's id and
   the sha256 of its text, drops duplicated ids (the **last** row in input order wins) and rows
   without an id, and compares the rest with the output table's ``(id, text_sha256, model_id,
   error)``.  The driver holds one id + one digest per input row (O(rows), no texts).
2. :func:`stage_rows` reads the input again and writes only the selected rows (all columns plus
   ``text_sha256`` and ``_soi_new_id``: the id is not in the output yet, so the sink appends the
   row instead of MERGEing it) as Parquet files of ``chunk_rows`` rows, which Ray Data then reads.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from soi_batch.errors import InputReadError, InputSchemaError
from soi_batch.io import InputSpec, csv_options
from soi_batch.nightly.sink import NEW_ID_COL

log = logging.getLogger(__name__)
TEXT_SHA_COL = "text_sha256"
_NULL_TEXT_DIGEST = hashlib.sha256(b"\xff<null>").hexdigest()  # b"\xff" is never valid UTF-8 text


def text_digests(texts: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Hex sha256 of each text's UTF-8 bytes (null texts get a digest no text can have)."""
    return pa.array(
        [_NULL_TEXT_DIGEST if t is None else hashlib.sha256(t.encode("utf-8")).hexdigest()
         for t in texts.to_pylist()],
        type=pa.string(),
    )


@dataclass
class InputSource:
    """An input pinned for one run: a Delta version, or a Parquet/CSV file set and fingerprint."""

    spec: InputSpec
    version: int | None
    fingerprint: str
    schema: pa.Schema
    _fragments: list[pads.Fragment] = field(default_factory=list, repr=False)

    @classmethod
    def open(cls, spec: InputSpec) -> InputSource:
        try:
            if spec.format == "delta":
                from deltalake import DeltaTable

                table = DeltaTable(spec.path)
                dataset = table.to_pyarrow_dataset()
                fragments = list(dataset.get_fragments())  # the log's file order, pinned at this version
                return cls(spec, table.version(), f"delta:{spec.path}@v{table.version()}", dataset.schema,
                           fragments)
            if spec.format == "parquet":
                dataset = pads.dataset(spec.path, format="parquet")
                fragments = sorted(dataset.get_fragments(), key=lambda f: f.path)
                return cls(spec, None, _files_fingerprint([f.path for f in fragments]), dataset.schema, fragments)
            return cls(spec, None, _files_fingerprint([spec.path]), pa.schema([(c, pa.string()) for c in spec.columns]))
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise InputReadError(f"{spec.path}: cannot open as {spec.format}: {exc}") from exc

    def batches(self, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        """The input's rows in a fixed order (the same on every pass of a run)."""
        if self.spec.format == "csv":
            read, parse, convert = csv_options(self.spec)
            if columns is not None:
                convert.include_columns = columns
            with pacsv.open_csv(self.spec.path, read_options=read, parse_options=parse,
                                convert_options=convert) as reader:
                yield from reader
            return
        for fragment in self._fragments:
            yield from fragment.to_batches(schema=self.schema, columns=columns, use_threads=False, batch_size=65536)


def _files_fingerprint(paths: list[str]) -> str:
    """sha256 over (path, size, mtime) of the input files: changes when any file changes."""
    h = hashlib.sha256()
    for p in paths:
        st = Path(p).stat()
        h.update(json.dumps([p, st.st_size, st.st_mtime_ns]).encode())
    return f"files:{len(paths)}:{h.hexdigest()[:16]}"


@dataclass
class Selection:
    """Which input rows (by position) go to the classifier, and why the others do not."""

    mask: np.ndarray
    """One bool per input row in input order: classify it now."""
    new: np.ndarray
    """One bool per input row: selected, and its id is not in the output table."""
    digests: pa.ChunkedArray
    """``text_sha256`` of every input row, in input order."""
    rows_read: int = 0
    duplicate_ids_dropped: int = 0
    null_ids_dropped: int = 0
    up_to_date: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    """Selected rows by reason: new, text_changed, model_changed, retry_error."""

    @property
    def selected(self) -> int:
        return int(self.mask.sum())


def read_state(output: str, id_col: str) -> pa.Table | None:
    """``(id, text_sha256, model_id, error)`` of the output table, or None if it does not exist yet."""
    from deltalake import DeltaTable
    from deltalake.exceptions import TableNotFoundError

    try:
        table = DeltaTable(output)
    except TableNotFoundError:
        return None
    names = pa.schema(table.schema().to_arrow()).names
    missing = [c for c in (id_col, TEXT_SHA_COL, "model_id", "error") if c not in names]
    if missing:
        raise InputSchemaError(
            f"{output}: output table lacks columns {missing} (columns: {list(names)}); "
            "it was not written by the nightly job — choose another --output"
        )
    return table.to_pyarrow_dataset().to_table(columns=[id_col, TEXT_SHA_COL, "model_id", "error"])


def select_rows(source: InputSource, state: pa.Table | None, *, id_col: str, text_col: str, model_id: str,
                retry_errors: bool = False) -> Selection:
    """Pass 1: which rows need classifying by ``model_id`` (see the module doc)."""
    ids: list[pa.Array] = []
    digests: list[pa.Array] = []
    for batch in source.batches([id_col, text_col]):
        ids.append(batch.column(id_col))
        digests.append(text_digests(batch.column(text_col)))
    n = sum(len(a) for a in ids)
    id_type = ids[0].type if ids else pa.string()
    keys = pa.table({"id": pa.chunked_array(ids, type=id_type), "pos": pa.array(np.arange(n, dtype=np.int64))})
    all_digests = pa.chunked_array(digests, type=pa.string())
    null_ids = keys.column("id").null_count
    keys = keys.filter(pc.is_valid(keys.column("id")))
    last = keys.group_by("id", use_threads=False).aggregate([("pos", "max")]).rename_columns(["id", "pos"])
    duplicates = keys.num_rows - last.num_rows
    last = last.append_column("digest", pc.take(all_digests, last.column("pos")))

    reasons = {"new": 0, "text_changed": 0, "model_changed": 0, "retry_error": 0}
    if state is None or state.num_rows == 0:
        chosen = new_pos = last.column("pos")
        reasons["new"] = last.num_rows
        up_to_date = 0
    else:
        state = state.rename_columns(["id", "t_digest", "t_model", "t_error"])
        state = state.cast(pa.schema([pa.field("id", id_type), ("t_digest", pa.string()), ("t_model", pa.string()),
                                      ("t_error", pa.string())]))
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
        up_to_date = joined.num_rows - len(chosen)
        # one reason per row, in this precedence: new > text_changed > model_changed > retry_error
        reasons["new"] = pc.sum(is_new).as_py() or 0
        reasons["text_changed"] = pc.sum(changed).as_py() or 0
        reasons["model_changed"] = pc.sum(pc.and_(other_model, pc.invert(changed))).as_py() or 0
        if retry_errors:
            rest = pc.invert(pc.or_(pc.or_(is_new, changed), other_model))
            reasons["retry_error"] = pc.sum(pc.and_(errored, rest)).as_py() or 0
    mask = np.zeros(n, dtype=bool)
    mask[np.asarray(chosen.to_numpy(), dtype=np.int64)] = True
    new = np.zeros(n, dtype=bool)
    new[np.asarray(new_pos.to_numpy(), dtype=np.int64)] = True
    sel = Selection(mask, new, all_digests, rows_read=n, duplicate_ids_dropped=duplicates, null_ids_dropped=null_ids,
                    up_to_date=up_to_date, reasons=reasons)
    log.info("input %s: %d rows, %d duplicate ids dropped (last row kept), %d without id; "
             "%d up to date, %d to classify %s", source.spec.path, n, duplicates, null_ids, up_to_date,
             sel.selected, {k: v for k, v in reasons.items() if v})
    if null_ids:
        log.warning("%d rows have no %r and are not classified (they could never be MERGEd by id)", null_ids, id_col)
    return sel


def stage_rows(source: InputSource, selection: Selection, staging: Path, *, rows_per_file: int) -> int:
    """Pass 2: write the selected rows (+ ``text_sha256``) as Parquet files under ``staging``."""
    staging.mkdir(parents=True, exist_ok=True)
    writer: pq.ParquetWriter | None = None
    in_file = files = written = 0
    pos = 0
    for batch in source.batches():
        take = selection.mask[pos : pos + batch.num_rows]
        digests = selection.digests.slice(pos, batch.num_rows)
        new = pa.array(selection.new[pos : pos + batch.num_rows])
        pos += batch.num_rows
        if not take.any():
            continue
        table = pa.Table.from_batches([batch]).append_column(TEXT_SHA_COL, digests).append_column(NEW_ID_COL, new)
        table = table.filter(pa.array(take))
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
