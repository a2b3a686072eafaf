"""Tables in and out: format detection, reading and writing for every caller.

One rule decides the format of a path (:func:`detect_format`): a directory with ``_delta_log``
is Delta; a name ending in ``.csv``, ``.csv.gz``, ``.csv.xz`` or ``.txt`` is CSV; anything else
Parquet (a file or a directory of files).  :func:`inspect_input` checks an input before any work
starts (a CSV file is parsed strictly, end to end, and its encoding sniffed: UTF-8, else OSHA's
cp1252); :func:`read_table` reads it whole, :class:`InputSnapshot` streams it in a fixed order,
and Ray Data reads it with the options given here (:mod:`soi_batch.ray_data`).  CSV columns are
read as strings, so codes and ids keep their leading digits.

Every location may be a local path or a URI (``s3://…``, ``gs://…``, ``abfs://…``, ``file://…``)
with storage options (:mod:`soi_batch.storage`); a URI is kept as a string, never made a Path.

:func:`append_results` is the one rule for adding result columns to input rows: results go
last, and an input column with a result's name is replaced; the runners refuse such inputs up
front (:func:`check_result_names`), so that happens only on purpose.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import lzma
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from soi_batch.errors import ConfigError, InputReadError, InputSchemaError
from soi_batch.storage import (
    StorageOptions,
    absolute_location,
    arrow_filesystem,
    delta_storage_options,
    is_uri,
    join,
    local_path,
)

InputFormat = Literal["csv", "parquet", "delta"]
OutputFormat = Literal["parquet", "delta"]
INPUT_FORMATS: tuple[str, ...] = ("csv", "parquet", "delta")
OUTPUT_FORMATS: tuple[str, ...] = ("parquet", "delta")


@dataclass(frozen=True)
class InputSpec:
    """A validated input: where, what format, which encoding (CSV), which columns."""

    path: str
    format: InputFormat
    columns: list[str]
    encoding: str | None = None
    schema: pa.Schema | None = None
    """Column types (Parquet/Delta; None for CSV, whose columns are all read as strings)."""
    num_rows: int | None = None
    """Row count when it is known before the rows are read (Parquet footers; CSV: the records
    counted by the strict scan of the whole file), else None (Delta)."""
    storage_options: dict[str, str] | None = field(default=None, repr=False)
    """How to reach a remote ``path`` (:mod:`soi_batch.storage`); None: local, or the environment's."""

    def require(self, *names: str | None, role: str = "column") -> None:
        """Raise :class:`InputSchemaError` naming the missing column and those available."""
        for name in names:
            if name is not None and name not in self.columns:
                raise InputSchemaError(
                    f"{self.path}: {role} {name!r} not found; available columns: {self.columns}. "
                    f"Pass the right name with --text-col / --id-col."
                )

    def require_text(self, name: str, role: str = "text column") -> None:
        """Raise :class:`InputSchemaError` unless column ``name`` holds strings (or only nulls)."""
        self.require(name, role=role)
        if self.schema is None:
            return  # CSV: every column is read as a string
        kind = self.schema.field(name).type
        if not is_text_type(kind):
            raise InputSchemaError(
                f"{self.path}: {role} {name!r} has type {kind}, not string; the narratives must be text. "
                f"Cast the column to string, or pass the narrative column with --text-col."
            )


def is_text_type(kind: pa.DataType) -> bool:
    """A column of strings (plain, large, view or dictionary-encoded) or of nulls only."""
    value = kind.value_type if pa.types.is_dictionary(kind) else kind
    return (pa.types.is_string(value) or pa.types.is_large_string(value) or pa.types.is_string_view(value)
            or pa.types.is_null(value))


absolute_uri = absolute_location
"""A local path made absolute; a URI (``s3://…``) as it is (:func:`soi_batch.storage.absolute_location`)."""


CSV_SUFFIXES: tuple[str, ...] = (".csv", ".csv.gz", ".csv.xz", ".txt")
"""Names read as CSV (case-insensitive)."""


def is_delta_table(path: str | Path, storage_options: StorageOptions | None = None) -> bool:
    """A directory holding a Delta transaction log (``_delta_log``), local or remote."""
    if not is_uri(path):
        return (Path(local_path(path)) / "_delta_log").is_dir()
    fs, where = arrow_filesystem(str(path), storage_options)
    try:
        return fs.get_file_info(join(where, "_delta_log")).type == pafs.FileType.Directory
    except OSError as exc:
        raise InputReadError(f"{path}: cannot reach it: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _name(path: str | Path) -> str:
    """The last part of a path or URI, without making a URI a Path."""
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def detect_format(path: str | Path, storage_options: StorageOptions | None = None) -> InputFormat:
    """The format of ``path``, from the path alone: the one rule every reader uses.

    A directory with ``_delta_log`` is ``"delta"``; a name ending in one of :data:`CSV_SUFFIXES`
    is ``"csv"``; anything else is ``"parquet"`` (a file, or a directory of Parquet files).
    Pass the format explicitly for other names (``--input-format``).
    """
    if is_delta_table(path, storage_options):
        return "delta"
    if _name(path).lower().endswith(CSV_SUFFIXES):
        return "csv"
    return "parquet"


def _open_bytes(path: str | Path, storage_options: StorageOptions | None = None) -> io.BufferedIOBase:
    """The file's bytes for Python readers, ``.gz`` and ``.xz`` decompressed."""
    if is_uri(path):
        fs, where = arrow_filesystem(str(path), storage_options)
        raw = fs.open_input_stream(where, compression=None, buffer_size=1 << 22)
        if str(path).endswith(".gz"):
            return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
        if str(path).endswith(".xz"):
            return lzma.LZMAFile(raw, "rb")  # type: ignore[return-value]
        return raw  # type: ignore[return-value]
    path = Path(local_path(path))
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if path.suffix == ".xz":
        return lzma.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def _open_arrow(path: str | Path, storage_options: StorageOptions | None = None) -> pa.NativeFile:
    """The file's bytes for Arrow readers: Arrow decompresses ``.gz`` itself; it has no xz codec."""
    if is_uri(path):
        if str(path).endswith(".xz"):
            return pa.PythonFile(_open_bytes(path, storage_options), mode="r")
        fs, where = arrow_filesystem(str(path), storage_options)
        return fs.open_input_stream(where, compression="gzip" if str(path).endswith(".gz") else None,
                                    buffer_size=1 << 22)
    path = Path(local_path(path))
    if path.suffix == ".xz":
        return pa.PythonFile(lzma.open(path, "rb"), mode="r")
    return pa.input_stream(str(path), compression="gzip" if path.suffix == ".gz" else None)


def arrow_reads_directly(spec: InputSpec) -> bool:
    """Whether Arrow's file readers (and so Ray Data's) can open the input as it is on disk.

    True for Delta, Parquet, plain and ``.gz`` CSV; False for ``.xz`` CSV, which only the Python
    reader here decompresses (:func:`read_table`).
    """
    return not (spec.format == "csv" and spec.path.endswith(".xz"))


def sniff_encoding(path: str | Path, storage_options: StorageOptions | None = None) -> str:
    """``"utf-8"`` if the whole file decodes as UTF-8, else ``"cp1252"`` (OSHA's encoding).

    A file that mixes both (some lines valid UTF-8 with non-ASCII characters, others not UTF-8) is
    refused with the first line of each kind: read as cp1252 its UTF-8 lines would be garbled
    silently (``é`` → ``Ã©``), read as UTF-8 the others would fail.  Pass ``--encoding`` to choose.
    A file that starts like UTF-16 (a byte-order mark, or NUL bytes) is refused with that hint.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    first = True
    try:
        with _open_bytes(path, storage_options) as fh:
            while chunk := fh.read(1 << 22):
                if first and (chunk.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in chunk[:4096]):
                    raise InputReadError(
                        f"{path}: looks like UTF-16 (a byte-order mark or NUL bytes at the start); save it as "
                        "UTF-8, or pass --encoding utf-16"
                    )
                first = False
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        _refuse_mixed_encodings(path, storage_options)
        return "cp1252"
    return "utf-8"


def _lines(stream: io.BufferedIOBase) -> Iterator[bytes]:
    """The stream's lines (split at ``\\n``), read in 4 MiB chunks (Arrow's remote streams do not iterate)."""
    rest = b""
    while chunk := stream.read(1 << 22):
        *lines, rest = (rest + chunk).split(b"\n")
        yield from lines
    if rest:
        yield rest


def _refuse_mixed_encodings(path: str | Path, storage_options: StorageOptions | None = None) -> None:
    """Raise :class:`InputReadError` if some lines are UTF-8 with non-ASCII characters and others are not UTF-8."""
    utf8_line = other_line = None
    with _open_bytes(path, storage_options) as fh:
        for number, line in enumerate(_lines(fh), start=1):
            if line.isascii():
                continue
            try:
                line.decode("utf-8")
                utf8_line = utf8_line or number
            except UnicodeDecodeError:
                other_line = other_line or number
            if utf8_line and other_line:
                raise InputReadError(
                    f"{path}: mixes encodings: line {utf8_line} is UTF-8 with non-ASCII characters, line "
                    f"{other_line} is not UTF-8 (cp1252?); read as one encoding, the other lines would be "
                    "garbled. Save the file in one encoding, or pass --encoding to choose one for every line"
                )


_CSV_FIELD_LIMIT = 2**31 - 1
"""Python's csv refuses fields over 128 KiB by default; Arrow has no such limit."""


def _scan_csv(path: str | Path, encoding: str, storage_options: StorageOptions | None = None
              ) -> tuple[list[str], int]:
    """Parse the whole file strictly (Python's csv, streaming): its header and its record count.

    Arrow's CSV reader accepts a broken quote silently: it swallows the following lines into one
    field, and when the field counts still match, rows are lost without an error.  So every record
    of the file is checked here, before any row is classified: a quote that is not closed or is
    followed by text, and a record whose field count differs from the header's, raise
    :class:`InputReadError` with the line where that record starts.  Blank lines are skipped, as
    Arrow skips them, so the count is the number of rows Arrow reads.
    """
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    header: list[str] | None = None
    rows, start = 0, 1
    try:
        with _open_bytes(path, storage_options) as raw, io.TextIOWrapper(raw, encoding=encoding, errors="replace", newline="") as text:
            reader = csv.reader(text, strict=True)
            for record in reader:
                if not record:
                    pass
                elif header is None:
                    header = [record[0].removeprefix("\ufeff"), *record[1:]]  # Arrow drops a UTF-8 BOM too
                    _check_header(path, header)
                elif len(record) != len(header):
                    raise InputReadError(
                        f"{path}: malformed CSV near line {start}: Expected {len(header)} columns, got "
                        f"{len(record)} (the header has {len(header)}); fix that row, or export the file again "
                        "with every field quoted"
                    )
                else:
                    rows += 1
                    longest = max(len(value) for value in record)
                    if longest > MAX_CSV_FIELD_CHARS:
                        raise InputReadError(
                            f"{path}: the record that starts on line {start} has a field of {longest:,} characters; "
                            f"fields longer than {MAX_CSV_FIELD_CHARS:,} characters are not read (a narrative is cut "
                            "to the prompt's limit anyway). Shorten that field, or drop the row"
                        )
                start = reader.line_num + 1
    except csv.Error as exc:
        raise InputReadError(
            f"{path}: malformed CSV near line {start}: {exc} (a quote opened in the record that starts on "
            f"line {start} is not closed, or a closing quote is followed by text; found at line "
            f"{reader.line_num}); fix the quoting (a quote inside a quoted field is written twice), or export "
            "the file again with every field quoted"
        ) from exc
    except LookupError as exc:
        raise ConfigError(f"{path}: unknown encoding {encoding!r}; pass a Python codec name with --encoding") from exc
    if header is None:
        raise InputReadError(f"{path}: cannot read as csv: Empty CSV file: no header line")
    return header, rows


MAX_CSV_FIELD_CHARS = 4 << 20
"""The longest CSV field read (characters): Arrow's reader needs a whole record in one block
(:func:`csv_options` sets 16 MiB blocks), so a longer field is refused before any work."""


def _check_header(path: str | Path, header: list[str]) -> None:
    """Refuse a CSV header with repeated names, or one name holding tabs or semicolons (another delimiter)."""
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise InputReadError(f"{path}: the header names {repeated} more than once; rename the repeated columns")
    if len(header) == 1 and ("\t" in header[0] or ";" in header[0]):
        delimiter = "tabs" if "\t" in header[0] else "semicolons"
        raise InputReadError(
            f"{path}: the header is one column {header[0][:60]!r} holding {delimiter}; this reader expects "
            "comma-separated values. Export the file as CSV with commas (or as Parquet)"
        )


def _delta_num_rows(table: object) -> int | None:
    """Rows of a Delta table from its log's file statistics (0 for a table without files), or None if unknown."""
    actions = pa.table(table.get_add_actions(flatten=True))  # type: ignore[attr-defined]
    if actions.num_rows == 0:
        return 0
    counts = actions.column("num_records")
    return None if counts.null_count else int(pc.sum(counts).as_py())


def _check_parquet_schemas(path: str, dataset: pq.ParquetDataset) -> None:
    """Refuse a Parquet directory whose files give a column different types (Ray fails on it mid-run)."""
    first = dataset.fragments[0].path if dataset.fragments else None
    for fragment in dataset.fragments[1:]:
        schema = fragment.physical_schema
        for name in schema.names:
            if name in dataset.schema.names and not schema.field(name).type.equals(dataset.schema.field(name).type):
                raise InputSchemaError(
                    f"{path}: column {name!r} has type {dataset.schema.field(name).type} in {first} but "
                    f"{schema.field(name).type} in {fragment.path}; write every file with the same types "
                    "(cast the column), or classify the files separately"
                )


def inspect_input(path: str | Path, *, fmt: InputFormat | None = None, encoding: str | None = None,
                  storage_options: StorageOptions | None = None) -> InputSpec:
    """Check the input exists and is readable, and list its columns — before any work starts.

    ``path``: a local path or a URI (``s3://bucket/reports.csv``; ``storage_options`` say how to
    reach it, see :mod:`soi_batch.storage`).
    """
    where = str(path) if is_uri(path) else str(Path(local_path(path)))
    options = dict(storage_options) if storage_options else None
    is_dir = _check_exists(where, options)
    fmt = fmt or detect_format(where, options)
    if fmt not in INPUT_FORMATS:
        raise ConfigError(f"input format {fmt!r} is not one of {list(INPUT_FORMATS)}")
    try:
        if fmt == "csv":
            if is_dir:
                raise InputReadError(f"{path}: is a directory; CSV input must be one file")
            enc = encoding or sniff_encoding(where, options)
            columns, num_rows = _scan_csv(where, enc, options)
            return InputSpec(where, "csv", columns, enc, num_rows=num_rows, storage_options=options)
        if fmt == "delta":
            from deltalake import DeltaTable

            table = DeltaTable(where, storage_options=delta_storage_options(where, options))
            schema = pa.schema(table.schema().to_arrow())
            return InputSpec(where, "delta", list(schema.names), schema=schema, num_rows=_delta_num_rows(table),
                             storage_options=options)
        fs, fs_path = arrow_filesystem(where, options)
        dataset = pq.ParquetDataset(fs_path, filesystem=fs)
        _check_parquet_schemas(str(path), dataset)
        num_rows = sum(fragment.metadata.num_rows for fragment in dataset.fragments)
        return InputSpec(where, "parquet", list(dataset.schema.names), schema=dataset.schema, num_rows=num_rows,
                         storage_options=options)
    except (EOFError, lzma.LZMAError, gzip.BadGzipFile, zlib.error) as exc:
        raise InputReadError(
            f"{path}: the compressed file is truncated or damaged ({exc}); download or compress it again"
        ) from exc
    except (pa.ArrowException, OSError, ValueError) as exc:
        if isinstance(exc, (InputReadError, InputSchemaError)):
            raise
        raise InputReadError(f"{path}: cannot read as {fmt}: {_one_line(exc)}") from exc


def _check_exists(path: str, storage_options: StorageOptions | None) -> bool:
    """Raise :class:`InputReadError` (one line, naming ``path``) unless it exists; whether it is a directory."""
    if not is_uri(path):
        p = Path(path)
        if not p.exists():
            raise InputReadError(f"{path}: no such file or directory")
        return p.is_dir()
    fs, where = arrow_filesystem(path, storage_options)
    try:
        info = fs.get_file_info(where)
        if info.type == pafs.FileType.NotFound:
            bucket = where.split("/", 1)[0]
            if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
                raise InputReadError(f"{path}: no such bucket or container {bucket!r}")
            raise InputReadError(f"{path}: no such file or directory")
    except OSError as exc:
        if isinstance(exc, InputReadError):
            raise
        raise InputReadError(f"{path}: cannot reach it: {_one_line(exc)}; check the URI and --storage-option "
                             "settings (endpoint, credentials, region)") from exc
    return info.type == pafs.FileType.Directory


def csv_options(spec: InputSpec, columns: Sequence[str] | None = None
                ) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions, pacsv.ConvertOptions]:
    """Arrow CSV options that keep every column a string and allow quoted newlines.

    ``columns``: read only these (in this order); None: every column.
    """
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in spec.columns}, strings_can_be_null=False,
                                   quoted_strings_can_be_null=False)
    if columns is not None:
        convert.include_columns = list(columns)
    return (
        pacsv.ReadOptions(encoding=spec.encoding or "utf-8", block_size=1 << 24),
        pacsv.ParseOptions(newlines_in_values=True),
        convert,
    )


def read_table(spec: InputSpec, columns: Sequence[str] | None = None) -> pa.Table:
    """The whole input as one Arrow table (for evaluation and small inputs; batch jobs stream).

    ``columns``: read only these, in this order (each must exist: see :meth:`InputSpec.require`);
    None: every column.
    """
    cols = list(columns) if columns is not None else None
    try:
        if spec.format == "csv":
            read, parse, convert = csv_options(spec, cols)
            with _open_arrow(spec.path, spec.storage_options) as fh:
                return pacsv.read_csv(fh, read_options=read, parse_options=parse, convert_options=convert)
        if spec.format == "delta":
            from deltalake import DeltaTable

            return DeltaTable(spec.path, storage_options=_delta_options(spec)).to_pyarrow_table(columns=cols)
        fs, where = arrow_filesystem(spec.path, spec.storage_options)
        return pq.read_table(where, columns=cols, filesystem=fs)
    except (pa.ArrowException, OSError) as exc:
        raise InputReadError(f"{spec.path}: cannot read as {spec.format}: {exc}") from exc


def _delta_options(spec: InputSpec) -> dict[str, str] | None:
    return delta_storage_options(spec.path, spec.storage_options)


_NO_PREBUFFER = pads.ParquetFragmentScanOptions(pre_buffer=False)


@dataclass(frozen=True)
class InputSnapshot:
    """An input pinned for several passes that see the same rows in the same order.

    Delta: the table at the version current when it was opened, its files in the log's order;
    Parquet: the files found when it was opened, sorted by path; CSV: the one file.
    """

    spec: InputSpec
    schema: pa.Schema
    version: int | None
    """The Delta table version read (None for Parquet and CSV)."""
    files: tuple[str, ...]
    """The data files read, in reading order."""
    _fragments: tuple[pads.Fragment, ...] = field(default=(), repr=False)

    @classmethod
    def open(cls, spec: InputSpec) -> InputSnapshot:
        try:
            if spec.format == "delta":
                from deltalake import DeltaTable

                table = DeltaTable(spec.path, storage_options=_delta_options(spec))
                dataset = table.to_pyarrow_dataset()
                fragments = tuple(dataset.get_fragments())  # the log's file order, pinned at this version
                return cls(spec, dataset.schema, table.version(), tuple(f.path for f in fragments), fragments)
            if spec.format == "parquet":
                fs, where = arrow_filesystem(spec.path, spec.storage_options)
                dataset = pads.dataset(where, format="parquet", filesystem=fs)
                fragments = tuple(sorted(dataset.get_fragments(), key=lambda f: f.path))
                return cls(spec, dataset.schema, None, tuple(f.path for f in fragments), fragments)
            return cls(spec, pa.schema([(c, pa.string()) for c in spec.columns]), None, (spec.path,))
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise InputReadError(f"{spec.path}: cannot open as {spec.format}: {exc}") from exc

    def batches(self, columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
        """The rows, batch by batch, in the snapshot's order (the same on every pass)."""
        if self.spec.format == "csv":
            read, parse, convert = csv_options(self.spec, columns)
            with _open_arrow(self.spec.path, self.spec.storage_options) as fh, pacsv.open_csv(
                fh, read_options=read, parse_options=parse, convert_options=convert
            ) as reader:
                yield from reader
            return
        cols = list(columns) if columns is not None else None
        for fragment in self._fragments:
            # no pre-buffering: Arrow would keep the file's read ranges cached for the whole scan
            yield from fragment.to_batches(schema=self.schema, columns=cols, use_threads=False, batch_size=65536,
                                           fragment_scan_options=_NO_PREBUFFER)

    def count_rows(self) -> int:
        """The number of rows: from the Parquet footers (Delta, Parquet), or the strict scan's count (CSV)."""
        if self.spec.format == "csv":
            return self.spec.num_rows or 0
        return sum(f.count_rows() for f in self._fragments)


WriteMode = Literal["error", "append", "overwrite"]
WRITE_MODES: tuple[str, ...] = ("error", "append", "overwrite")


def write_table(table: pa.Table, path: str | Path, *, fmt: OutputFormat, mode: WriteMode = "error",
                storage_options: StorageOptions | None = None, partition_by: Sequence[str] | None = None) -> None:
    """Write one Arrow table as a Parquet file (a directory of them with ``partition_by``) or a Delta table.

    ``path``: a local path or a URI; ``storage_options``: how to reach it (:mod:`soi_batch.storage`).
    """
    where = str(path) if is_uri(path) else local_path(path)
    parts = list(partition_by) if partition_by else None
    if fmt == "delta":
        from deltalake import write_deltalake

        write_deltalake(where, table, mode=mode, schema_mode="overwrite" if mode == "overwrite" else None,
                        partition_by=parts, storage_options=delta_storage_options(where, storage_options))
    elif fmt == "parquet":
        fs, fs_path = arrow_filesystem(where, storage_options)
        if mode == "error" and fs.get_file_info(fs_path).type != pafs.FileType.NotFound:
            raise ConfigError(f"{path} exists; choose another output or delete it")
        if parts:
            pq.write_to_dataset(table, fs_path, partition_cols=parts, filesystem=fs)
        else:
            pq.write_table(table, fs_path, filesystem=fs)
    else:
        raise ConfigError(f"output format {fmt!r} is not one of {list(OUTPUT_FORMATS)}")


def check_result_names(columns: Sequence[str], result_names: Sequence[str], *, source: str) -> None:
    """Refuse input ``columns`` named like a result column, compared case-insensitively, before any work.

    :func:`append_results` would replace such a column silently (a user's ``error`` or
    ``confidence`` lost), and Delta tables and Spark compare names case-insensitively, so an input
    ``Error`` next to the result ``error`` fails the Delta write after every row was classified.
    Every runner calls this in its up-front checks.  Raises :class:`InputSchemaError` naming the
    clashing columns and the fix.
    """
    reserved = {name.lower(): name for name in result_names}
    clashes = [name for name in columns if name.lower() in reserved]
    if clashes:
        pairs = ", ".join(f"{name!r} (result {reserved[name.lower()]!r})" for name in clashes)
        raise InputSchemaError(
            f"{source}: input column(s) {pairs} have the name of a result column (names compared "
            "case-insensitively, as Delta and Spark do); the results would replace or clash with them. "
            "Rename or drop those columns first (an earlier run's output: keep only its input columns)"
        )


def kept_columns(names: Sequence[str], result_names: Sequence[str]) -> list[int]:
    """Positions of the input columns that stay when results are appended: those no result is named after."""
    replaced = set(result_names)
    return [i for i, name in enumerate(names) if name not in replaced]


def append_results(table: pa.Table, results: pa.Table | Mapping[str, pa.Array | pa.ChunkedArray]) -> pa.Table:
    """``table`` with the ``results`` columns appended in their order, replacing same-name columns.

    An input column named like a result is dropped from its place and the result goes last, so
    every output has the input's other columns, in their order, then the result columns.  Results
    given as a table keep their fields (types, nullability, metadata); given as a mapping, each
    array's type.  The input table's schema metadata is kept.
    """
    if isinstance(results, pa.Table):
        new = list(zip(results.schema, results.columns))
    else:
        new = [(pa.field(name, column.type), column) for name, column in results.items()]
    out = table.select(kept_columns(table.column_names, [f.name for f, _ in new]))
    for result_field, column in new:
        out = out.append_column(result_field, column)
    return out


INVALID_UTF8_ERROR = "text is not valid UTF-8 (shown with U+FFFD in place of the bad bytes); fix the input's encoding"
"""The ``error`` of a row whose narrative holds bytes that are not UTF-8 (Parquet and Delta do not check)."""


def invalid_utf8_rows(column: pa.Array | pa.ChunkedArray) -> tuple[pa.ChunkedArray, pa.ChunkedArray | None]:
    """``column`` with invalid UTF-8 values repaired (bad bytes → U+FFFD), and a mask of those rows.

    Parquet and Delta store strings without checking their encoding, so one bad value would fail the
    whole batch where Python decodes it.  The mask is None when every value is valid (the usual
    case, checked in Arrow without decoding).
    """
    chunked = column if isinstance(column, pa.ChunkedArray) else pa.chunked_array([column])
    try:
        chunked.validate(full=True)
        return chunked, None
    except pa.ArrowInvalid:
        pass
    raw = chunked.cast(pa.large_binary() if pa.types.is_large_string(chunked.type) else pa.binary()).to_pylist()
    bad, repaired = [], []
    for value in raw:
        try:
            repaired.append(None if value is None else value.decode("utf-8"))
            bad.append(False)
        except UnicodeDecodeError:
            repaired.append(value.decode("utf-8", errors="replace"))
            bad.append(True)
    return pa.chunked_array([pa.array(repaired, chunked.type)]), pa.chunked_array([pa.array(bad, pa.bool_())])


def classify_valid_utf8(batch: pa.Table, text_col: str, classify: Callable[[pa.Table], pa.Table], *,
                        error_col: str = "error") -> pa.Table:
    """``classify(batch)`` (which appends result columns), with per-row errors for texts that are not UTF-8.

    Such a text is passed to ``classify`` as null, and its row gets :data:`INVALID_UTF8_ERROR` in
    ``error_col``; the text column of the result shows it with U+FFFD in place of the bad bytes, so
    every writer can store it.  A batch of valid texts goes to ``classify`` as it is.
    """
    position = batch.column_names.index(text_col)
    texts, bad = invalid_utf8_rows(batch.column(position))
    if bad is None:
        return classify(batch)
    blanked = batch.set_column(position, text_col, pc.if_else(bad, pa.scalar(None, texts.type), texts))
    out = classify(blanked).set_column(position, text_col, texts)
    where = out.column_names.index(error_col)
    return out.set_column(where, out.schema.field(where),
                          pc.if_else(bad, pa.scalar(INVALID_UTF8_ERROR, pa.string()), out.column(where)))


def find_damaged_file(spec: InputSpec) -> tuple[str, str] | None:
    """The first data file of a Parquet or Delta input that cannot be read to the end, and why; else None.

    The up-front check reads only Parquet footers; a corrupt data page shows only when the rows are
    read.  Called after a run failed, to tell a damaged input from any other failure (it reads the
    files batch by batch, every column).
    """
    if spec.format == "csv":
        return None
    snapshot = InputSnapshot.open(spec)
    for fragment, path in zip(snapshot._fragments, snapshot.files):
        try:
            for _ in fragment.to_batches(use_threads=False, batch_size=65536, fragment_scan_options=_NO_PREBUFFER):
                pass
        except (pa.ArrowException, OSError) as exc:
            return path, str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return None
