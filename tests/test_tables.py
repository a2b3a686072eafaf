"""soi_batch.tables: the one format rule, the readers, the writers, append_results; and the Ray Data path.

Every input is a real file written here from the OSHA sample (``soi_batch/data/osha_sir_sample.csv``:
1,000 rows, 26 columns, cp1252, CRLF, narratives with line breaks), and must read back equal to
the rows Python's own csv module finds in that file.
"""

from __future__ import annotations

import csv
import gzip
import lzma
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from soi_batch.errors import ConfigError, InputReadError
from soi_batch.tables import (
    InputSnapshot,
    append_results,
    arrow_reads_directly,
    detect_format,
    inspect_input,
    is_delta_table,
    kept_columns,
    read_table,
    write_table,
)

SAMPLE = Path(__file__).parents[1] / "soi_batch" / "data" / "osha_sir_sample.csv"
TEXT = "Final Narrative"


@pytest.fixture(scope="module")
def source() -> pa.Table:
    """The sample's rows as Python's csv module reads them (every value a string)."""
    with open(SAMPLE, encoding="cp1252", newline="") as fh:
        header, *rows = list(csv.reader(fh))
    assert len(rows) == 1000 and len(header) == 26
    return pa.table({name: [row[i] for row in rows] for i, name in enumerate(header)})


def _csv_lf(source: pa.Table, path: Path) -> None:
    """UTF-8, LF line ends, every field quoted (quoted line breaks inside narratives kept)."""
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, quoting=csv.QUOTE_ALL, lineterminator="\n")
        writer.writerow(source.column_names)
        writer.writerows(zip(*(source.column(c).to_pylist() for c in source.column_names)))


def _write(kind: str, source: pa.Table, root: Path) -> Path:
    raw = SAMPLE.read_bytes()  # cp1252, CRLF: OSHA's own export
    if kind == "csv-lf":
        path = root / "reports.csv"
        _csv_lf(source, path)
    elif kind == "csv-crlf":
        path = root / "reports.csv"
        path.write_bytes(raw)
    elif kind == "csv-upper-case-name":
        path = root / "REPORTS.CSV"
        path.write_bytes(raw)
    elif kind == "txt":
        path = root / "reports.txt"
        path.write_bytes(raw)
    elif kind == "csv-gz":
        path = root / "reports.csv.gz"
        path.write_bytes(gzip.compress(raw))
    elif kind == "csv-xz":
        path = root / "reports.csv.xz"
        path.write_bytes(lzma.compress(raw))
    elif kind == "parquet-file":
        path = root / "reports.parquet"
        pq.write_table(source, path)
    elif kind == "parquet-file-no-suffix":
        path = root / "reports"
        pq.write_table(source, path)
    elif kind == "parquet-directory":
        path = root / "reports_pq"
        path.mkdir()
        pq.write_table(source.slice(0, 400), path / "part-00000.parquet")
        pq.write_table(source.slice(400), path / "part-00001.parquet")
    elif kind == "delta":
        from deltalake import write_deltalake

        path = root / "reports_delta"
        write_deltalake(str(path), source)
    else:
        raise AssertionError(kind)
    return path


# kind written, detected format, encoding found (CSV)
CASES = [
    ("csv-lf", "csv", "utf-8"),
    ("csv-crlf", "csv", "cp1252"),
    ("csv-upper-case-name", "csv", "cp1252"),
    ("txt", "csv", "cp1252"),
    ("csv-gz", "csv", "cp1252"),
    ("csv-xz", "csv", "cp1252"),
    ("parquet-file", "parquet", None),
    ("parquet-file-no-suffix", "parquet", None),
    ("parquet-directory", "parquet", None),
    ("delta", "delta", None),
]


@pytest.mark.parametrize("kind,fmt,encoding", CASES, ids=[c[0] for c in CASES])
def test_each_format_is_detected_and_read_back_equal(kind, fmt, encoding, source, tmp_path):
    path = _write(kind, source, tmp_path)
    assert detect_format(path) == fmt
    assert is_delta_table(path) == (fmt == "delta")
    spec = inspect_input(path)
    assert (spec.format, spec.encoding, spec.columns) == (fmt, encoding, source.column_names)
    if fmt != "delta":  # Delta's count is not known before reading
        assert spec.num_rows == 1000
    table = read_table(spec)
    assert table.equals(source)
    assert table.column(TEXT).to_pylist() == source.column(TEXT).to_pylist()

    two = ["Source", TEXT]
    assert read_table(spec, columns=two).equals(source.select(two))

    snapshot = InputSnapshot.open(spec)
    assert snapshot.count_rows() == 1000
    first = pa.Table.from_batches(list(snapshot.batches()))
    assert first.equals(source)
    again = pa.Table.from_batches(list(snapshot.batches(two)))
    assert again.equals(source.select(two))


def test_a_forced_format_wins_over_the_name(source, tmp_path):
    path = tmp_path / "reports.data"
    path.write_bytes(SAMPLE.read_bytes())
    assert detect_format(path) == "parquet"
    with pytest.raises(InputReadError, match=r"reports\.data: cannot read as parquet"):
        inspect_input(path)
    spec = inspect_input(path, fmt="csv")
    assert (spec.format, spec.encoding) == ("csv", "cp1252")
    assert read_table(spec).equals(source)
    with pytest.raises(ConfigError, match=r"input format 'json' is not one of \['csv', 'parquet', 'delta'\]"):
        inspect_input(path, fmt="json")  # type: ignore[arg-type]


def test_arrow_reads_directly_all_but_xz(source, tmp_path):
    for kind, _, _ in CASES:
        root = tmp_path / kind
        root.mkdir()
        spec = inspect_input(_write(kind, source, root))
        assert arrow_reads_directly(spec) == (kind != "csv-xz"), kind


def test_a_delta_snapshot_keeps_its_version_while_the_table_grows(source, tmp_path):
    from deltalake import write_deltalake

    path = _write("delta", source, tmp_path)
    snapshot = InputSnapshot.open(inspect_input(path))
    write_deltalake(str(path), source.slice(0, 10), mode="append")
    assert snapshot.version == 0
    assert pa.Table.from_batches(list(snapshot.batches())).equals(source)
    assert InputSnapshot.open(inspect_input(path)).count_rows() == 1010


def test_write_table_parquet_refuses_an_existing_file_and_delta_overwrite_is_a_new_version(source, tmp_path):
    from deltalake import DeltaTable

    out = tmp_path / "out.parquet"
    write_table(source, out, fmt="parquet")
    assert pq.read_table(out).equals(source)
    with pytest.raises(ConfigError, match="out.parquet exists"):
        write_table(source, out, fmt="parquet")

    delta = tmp_path / "out_delta"
    write_table(source, delta, fmt="delta")
    replacement = append_results(source.slice(0, 5), {"confidence": pa.array([0.5] * 5)})
    write_table(replacement, delta, fmt="delta", mode="overwrite")
    table = DeltaTable(str(delta))
    assert table.version() == 1
    assert table.to_pyarrow_table().equals(replacement)
    table.load_as_version(0)
    assert table.to_pyarrow_table().equals(source)
    with pytest.raises(ConfigError, match=r"output format 'csv' is not one of \['parquet', 'delta'\]"):
        write_table(source, tmp_path / "x.csv", fmt="csv")  # type: ignore[arg-type]


def test_append_results_replaces_same_name_columns_and_keeps_order(source):
    table = source.select(["ID", "Source", TEXT, "EventDate"]).slice(0, 4)
    results = {
        "EventDate": pa.array(["r0", "r1", "r2", "r3"]),
        "confidence": pa.array([0.1, 0.2, 0.3, 0.4]),
        "Source": pa.array(["6", "62", "621", "6211"]),
    }
    out = append_results(table, results)
    assert out.column_names == ["ID", TEXT, "EventDate", "confidence", "Source"]
    assert out.column("ID").equals(table.column("ID"))
    assert out.column(TEXT).equals(table.column(TEXT))
    assert out.column("EventDate").to_pylist() == ["r0", "r1", "r2", "r3"]
    assert out.column("Source").to_pylist() == ["6", "62", "621", "6211"]
    assert out.schema.field("confidence").type == pa.float64()
    assert table.column_names == ["ID", "Source", TEXT, "EventDate"]  # the input is not changed

    typed = pa.schema([pa.field("Source", pa.string(), nullable=False, metadata={"role": "code"})])
    out = append_results(table, pa.table({"Source": ["8"] * 4}, schema=typed))
    assert out.column_names == ["ID", TEXT, "EventDate", "Source"]
    assert out.schema.field("Source") == typed.field("Source")
    assert out.schema.field("Source").metadata == {b"role": b"code"}

    empty = append_results(table.slice(0, 0), pa.schema([("x", pa.int8())]).empty_table())
    assert (empty.num_rows, empty.column_names) == (0, ["ID", "Source", TEXT, "EventDate", "x"])


def test_kept_columns_drops_every_column_a_result_is_named_after():
    assert kept_columns(["a", "error", "b", "error", "c"], ["error", "z"]) == [0, 2, 4]
    assert kept_columns([], ["a"]) == []
    assert kept_columns(["a", "b"], []) == [0, 1]


# --- the Ray Data path, on a real local Ray -------------------------------------------------------

def _rows(table: pa.Table, names: list[str]) -> list[tuple]:
    """The rows as tuples, sorted (Ray does not keep the order of files read in parallel)."""
    return sorted(zip(*(table.column(n).to_pylist() for n in names)))


RAY_CASES = ["csv-lf", "csv-crlf", "csv-gz", "csv-xz", "parquet-file", "parquet-directory", "delta"]


@pytest.mark.parametrize("kind", RAY_CASES)
def test_ray_reads_every_format_from_a_relative_path(kind, source, tmp_path, monkeypatch, ray_local):
    """Ray's workers run in Ray's directory, not this one: relative inputs must still be found."""
    from soi_batch.ray_data import read_dataset

    path = _write(kind, source, tmp_path)
    monkeypatch.chdir(tmp_path)
    spec = inspect_input(path.name)
    assert spec.path == path.name
    table = pa.concat_tables(ray_local.get(read_dataset(spec).to_arrow_refs()))
    assert table.column_names == source.column_names
    assert table.schema.field(TEXT).type == pa.string()
    assert _rows(table, source.column_names) == _rows(source, source.column_names)


@pytest.mark.parametrize("fmt", ["parquet", "delta"])
def test_ray_writes_to_a_relative_path_and_delta_overwrite_is_a_new_version(fmt, source, tmp_path, monkeypatch,
                                                                             ray_local):
    import ray.data

    from soi_batch.ray_data import write_dataset

    monkeypatch.chdir(tmp_path)
    write_dataset(ray.data.from_arrow(source), "out", fmt=fmt)
    written = read_table(inspect_input("out"))
    assert inspect_input("out").format == fmt
    assert _rows(written, source.column_names) == _rows(source, source.column_names)
    if fmt == "delta":
        from deltalake import DeltaTable

        smaller = source.slice(0, 7)
        write_dataset(ray.data.from_arrow(smaller), "out", fmt="delta", mode="overwrite")
        table = DeltaTable(str(tmp_path / "out"))
        assert table.version() == 1
        assert _rows(table.to_pyarrow_table(), ["ID", TEXT]) == _rows(smaller, ["ID", TEXT])
        table.load_as_version(0)
        assert table.to_pyarrow_table().num_rows == 1000
