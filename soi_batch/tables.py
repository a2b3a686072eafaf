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
    """Row count when it is known before the rows are read (Parquet footers; CSV: the records
    counted by the strict scan of the whole file), else None (Delta)."""

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


def absolute_uri(path: str | Path) -> str:
    """A local path made absolute (Ray's workers keep the working directory Ray started in, and
    Ray's Delta writer needs a URI); a URI with a scheme (``s3://…``) as it is."""
    text = str(path)
    return text if "://" in text else str(Path(text).expanduser().absolute())


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


_CSV_FIELD_LIMIT = 2**31 - 1
"""Python's csv refuses fields over 128 KiB by default; Arrow has no such limit."""


def _scan_csv(path: Path, encoding: str) -> tuple[list[str], int]:
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
        with _open_bytes(path) as raw, io.TextIOWrapper(raw, encoding=encoding, errors="replace", newline="") as text:
            reader = csv.reader(text, strict=True)
            for record in reader:
                if not record:
                    pass
                elif header is None:
                    header = [record[0].removeprefix("\ufeff"), *record[1:]]  # Arrow drops a UTF-8 BOM too
                elif len(record) != len(header):
                    raise InputReadError(
                        f"{path}: malformed CSV near line {start}: Expected {len(header)} columns, got "
                        f"{len(record)} (the header has {len(header)}); fix that row, or export the file again "
                        "with every field quoted"
                    )
                else:
                    rows += 1
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
            columns, num_rows = _scan_csv(p, enc)
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

        write_deltalake(str(path), table, mode=mode, schema_mode="overwrite" if mode == "overwrite" else None)
    elif fmt == "parquet":
        if Path(path).exists() and mode == "error":
            raise ConfigError(f"{path} exists; choose another output or delete it")
        pq.write_table(table, str(path))
    else:
        raise ConfigError(f"output format {fmt!r} is not one of {list(OUTPUT_FORMATS)}")
