"""Reading reports and writing results: CSV (OSHA's cp1252 included), Parquet, Delta.

Formats are inferred from the path when not given: a directory with ``_delta_log`` is Delta,
``*.csv``/``*.csv.gz``/``*.csv.xz`` is CSV, anything else Parquet (file or directory).
CSV columns are read as strings, so codes and ids keep their leading digits.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import lzma
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from soi_batch.errors import ConfigError, InputReadError, InputSchemaError

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
    """Row count when it is known without reading the rows (Parquet footers, small CSV), else None."""

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
        value = kind.value_type if pa.types.is_dictionary(kind) else kind
        if not (pa.types.is_string(value) or pa.types.is_large_string(value) or pa.types.is_string_view(value)
                or pa.types.is_null(value)):
            raise InputSchemaError(
                f"{self.path}: {role} {name!r} has type {kind}, not string; the narratives must be text. "
                f"Cast the column to string, or pass the narrative column with --text-col."
            )


def detect_format(path: str | Path) -> InputFormat:
    p = Path(path)
    if (p / "_delta_log").is_dir():
        return "delta"
    if p.name.lower().endswith((".csv", ".csv.gz", ".csv.xz", ".txt")):
        return "csv"
    return "parquet"


def _open_bytes(path: Path) -> io.BufferedIOBase:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    if path.suffix == ".xz":
        return lzma.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def sniff_encoding(path: str | Path) -> str:
    """``"utf-8"`` if the whole file decodes as UTF-8, else ``"cp1252"`` (OSHA's encoding)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with _open_bytes(Path(path)) as fh:
            while chunk := fh.read(1 << 22):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return "cp1252"
    return "utf-8"


_CSV_HEAD_BYTES = 1 << 20


def _check_csv_quoting(path: Path, head: str, complete: bool) -> None:
    """Parse ``head`` strictly (Python's csv module); raise on a broken quote.

    Arrow's CSV reader accepts an unterminated quote silently and swallows the following
    rows into one field, so a stray quote would lose rows without an error.  Only the first
    MiB is checked (``complete``: it is the whole file, so the end must not be inside quotes).
    """
    reader = csv.reader(io.StringIO(head, newline=""), strict=True)
    try:
        for _ in reader:
            pass
    except csv.Error as exc:
        if not complete and "unexpected end of data" in str(exc):
            return  # the head was cut inside a quoted field; the rest of the file continues it
        raise InputReadError(
            f"{path}: malformed CSV near line {reader.line_num}: {exc} (a quote is not closed or is "
            "followed by text); fix the quoting, or export the file again with every field quoted"
        ) from exc


def _csv_header(path: Path, encoding: str) -> tuple[list[str], int | None]:
    """Column names, and the row count when the whole file fits in the first MiB."""
    with _open_bytes(path) as fh:
        head = fh.read(_CSV_HEAD_BYTES + 1)
    complete = len(head) <= _CSV_HEAD_BYTES
    head = head[:_CSV_HEAD_BYTES]
    text = head.decode(encoding, errors="replace")
    _check_csv_quoting(path, text, complete)
    if not complete:
        # the head ends mid-row: take the header record alone (Python's csv, like the quote check;
        # Arrow would need the header's line ending, and reads an LF header line without one as empty)
        header = next(csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline="")), [])
        if header:
            return header, None
    table = pacsv.read_csv(io.BytesIO(head), read_options=pacsv.ReadOptions(encoding=encoding, block_size=1 << 20),
                           parse_options=pacsv.ParseOptions(newlines_in_values=True))
    return table.column_names, table.num_rows


def inspect_input(path: str | Path, *, fmt: InputFormat | None = None, encoding: str | None = None) -> InputSpec:
    """Check the input exists and is readable, and list its columns — before any work starts."""
    p = Path(path)
    if not p.exists():
        raise InputReadError(f"{path}: no such file or directory")
    fmt = fmt or detect_format(p)
    if fmt not in INPUT_FORMATS:
        raise ConfigError(f"input format {fmt!r} is not one of {list(INPUT_FORMATS)}")
    try:
        if fmt == "csv":
            if p.is_dir():
                raise InputReadError(f"{path}: is a directory; CSV input must be one file")
            enc = encoding or sniff_encoding(p)
            columns, num_rows = _csv_header(p, enc)
            return InputSpec(str(p), "csv", columns, enc, num_rows=num_rows)
        if fmt == "delta":
            from deltalake import DeltaTable

            schema = pa.schema(DeltaTable(str(p)).schema().to_arrow())
            return InputSpec(str(p), "delta", list(schema.names), schema=schema)
        dataset = pq.ParquetDataset(str(p))
        num_rows = sum(fragment.metadata.num_rows for fragment in dataset.fragments)
        return InputSpec(str(p), "parquet", list(dataset.schema.names), schema=dataset.schema, num_rows=num_rows)
    except (pa.ArrowException, OSError, ValueError) as exc:
        if isinstance(exc, InputReadError):
            raise
        raise InputReadError(f"{path}: cannot read as {fmt}: {exc}") from exc


def csv_options(spec: InputSpec) -> tuple[pacsv.ReadOptions, pacsv.ParseOptions, pacsv.ConvertOptions]:
    """Arrow CSV options that keep every column a string and allow quoted newlines."""
    return (
        pacsv.ReadOptions(encoding=spec.encoding or "utf-8", block_size=1 << 24),
        pacsv.ParseOptions(newlines_in_values=True),
        pacsv.ConvertOptions(column_types={c: pa.string() for c in spec.columns}, strings_can_be_null=False,
                             quoted_strings_can_be_null=False),
    )


def read_table(spec: InputSpec) -> pa.Table:
    """The whole input as one Arrow table (for evaluation and small inputs; batch jobs stream)."""
    try:
        if spec.format == "csv":
            read, parse, convert = csv_options(spec)
            with _open_bytes(Path(spec.path)) as fh:
                return pacsv.read_csv(fh, read_options=read, parse_options=parse, convert_options=convert)
        if spec.format == "delta":
            from deltalake import DeltaTable

            return DeltaTable(spec.path).to_pyarrow_table()
        return pq.read_table(spec.path)
    except (pa.ArrowException, OSError) as exc:
        raise InputReadError(f"{spec.path}: cannot read as {spec.format}: {exc}") from exc


def write_table(table: pa.Table, path: str | Path, *, fmt: OutputFormat, mode: Literal["overwrite", "append", "error"] = "error") -> None:
    """Write one Arrow table as a Parquet file or a Delta table."""
    if fmt == "delta":
        from deltalake import write_deltalake

        write_deltalake(str(path), table, mode=mode)
    elif fmt == "parquet":
        if Path(path).exists() and mode == "error":
            raise ConfigError(f"{path} exists; choose another output or delete it")
        pq.write_table(table, str(path))
    else:
        raise ConfigError(f"output format {fmt!r} is not one of {list(OUTPUT_FORMATS)}")
