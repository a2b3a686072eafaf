"""Reading reports and writing results: CSV (OSHA's cp1252 included), Parquet, Delta.

Formats are inferred from the path when not given: a directory with ``_delta_log`` is Delta,
``*.csv``/``*.csv.gz``/``*.csv.xz`` is CSV, anything else Parquet (file or directory).
CSV columns are read as strings, so codes and ids keep their leading digits.
"""

from __future__ import annotations

import codecs
import io
import lzma
import gzip
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

    def require(self, *names: str | None, role: str = "column") -> None:
        """Raise :class:`InputSchemaError` naming the missing column and those available."""
        for name in names:
            if name is not None and name not in self.columns:
                raise InputSchemaError(
                    f"{self.path}: {role} {name!r} not found; available columns: {self.columns}. "
                    f"Pass the right name with --text-col / --id-col."
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


def _csv_header(path: Path, encoding: str) -> list[str]:
    with _open_bytes(path) as fh:
        head = fh.read(1 << 20)
    try:
        table = pacsv.read_csv(io.BytesIO(head), read_options=pacsv.ReadOptions(encoding=encoding, block_size=1 << 20))
    except pa.ArrowInvalid:
        table = pacsv.read_csv(io.BytesIO(head.split(b"\n", 1)[0]), read_options=pacsv.ReadOptions(encoding=encoding))
    return table.column_names


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
            return InputSpec(str(p), "csv", _csv_header(p, enc), enc)
        if fmt == "delta":
            from deltalake import DeltaTable

            schema = DeltaTable(str(p)).schema().to_arrow()
            return InputSpec(str(p), "delta", list(pa.schema(schema).names))
        return InputSpec(str(p), "parquet", list(pq.ParquetDataset(str(p)).schema.names))
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
