"""One bad row or one damaged file never ends in a traceback, a lost run or a blocking output.

Real OSHA rows written in tmp_path as Parquet, Delta and CSV files; the CLI through the session's
local Ray with the tiny bundle where rows are classified.  A bad value in one row gives that row
an ``error``; a damaged or mis-formatted file gives one line ``soi-batch classify: error: …``
naming the file and the fix (exit code 2), and leaves no output behind.
"""

from __future__ import annotations

import gzip
import lzma
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

from soi_batch.cli import main
from soi_batch.tables import INVALID_UTF8_ERROR, MAX_CSV_FIELD_CHARS, inspect_input

TEXT = "Final Narrative"


def _rows(osha: pd.DataFrame, n: int = 40) -> pd.DataFrame:
    return osha.iloc[:n][["ID", TEXT]].astype({"ID": str}).reset_index(drop=True)


def _classify(src: Path, out: Path, bundle: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    rc = main(["classify", str(src), str(out), "--model", str(bundle), "--id-col", "ID", *extra])
    captured = capsys.readouterr()
    return rc, captured.err + captured.out


def _refused(src: Path, tmp_path: Path, bundle: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    """Run the CLI on a bad input: exit code 2, one error line, no output left behind."""
    out = tmp_path / "out"
    rc, text = _classify(src, out, bundle, capsys, *extra)
    assert rc == 2, text
    assert text.splitlines()[-1].startswith(f"soi-batch classify: error: {src}")
    assert not out.exists()
    return text


@pytest.mark.slow
def test_invalid_utf8_in_one_parquet_string_is_a_row_error(osha, tiny_bundle, ray_local, tmp_path, capsys):
    """Parquet does not check string encodings: one narrative with bytes that are not UTF-8 used to fail
    the whole run (UnicodeDecodeError, 0 rows written)."""
    rows = _rows(osha)
    values = [text.encode("utf-8") for text in rows[TEXT]]
    values[7] = b"Employee cut \xff\xfe hand on a box cutter"
    narratives = pa.array(values, pa.binary()).view(pa.string())  # no validation, like a foreign writer
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"ID": rows["ID"].tolist(), TEXT: narratives}), src)
    out = tmp_path / "out"
    rc, text = _classify(src, out, tiny_bundle, capsys)
    assert rc == 0, text
    table = pads.dataset(str(out), format="parquet").to_table().to_pandas().set_index("ID")
    assert len(table) == len(rows)
    bad = table.loc[rows["ID"][7]]
    assert bad["error"] == INVALID_UTF8_ERROR and bad["source_code"] is None
    assert bad[TEXT] == "Employee cut \ufffd\ufffd hand on a box cutter"
    others = table.drop(index=rows["ID"][7])
    assert others["error"].isna().all() and others["source_code"].notna().all()
    assert "errors: 1 " in text


@pytest.mark.slow
def test_corrupt_parquet_data_page_is_one_line_and_no_output(osha, tiny_bundle, ray_local, tmp_path, capsys):
    """The footer is intact (the up-front check passes); a data page is overwritten, so Ray's read task fails."""
    src = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pandas(_rows(osha), preserve_index=False), src)
    data = bytearray(src.read_bytes())
    data[200:400] = b"A" * 200  # inside the first column chunk's pages
    src.write_bytes(bytes(data))
    text = _refused(src, tmp_path, tiny_bundle, capsys)
    assert "in.parquet is damaged and cannot be read" in text and "Write that file again" in text


@pytest.mark.slow
def test_a_failed_append_keeps_the_earlier_output(osha, tiny_bundle, ray_local, tmp_path, capsys):
    """Only a new output is removed when the run fails; an output appended to keeps its earlier rows."""
    good, bad = tmp_path / "good.parquet", tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pandas(_rows(osha), preserve_index=False), good)
    out = tmp_path / "out"
    rc, text = _classify(good, out, tiny_bundle, capsys, "--output-format", "delta")
    assert rc == 0, text
    pq.write_table(pa.Table.from_pandas(_rows(osha), preserve_index=False), bad)
    data = bytearray(bad.read_bytes())
    data[200:400] = b"A" * 200
    bad.write_bytes(bytes(data))
    rc, text = _classify(bad, out, tiny_bundle, capsys, "--output-format", "delta", "--mode", "append")
    assert rc == 2 and "bad.parquet is damaged" in text
    assert DeltaTable(str(out)).to_pyarrow_table().num_rows == len(_rows(osha))


@pytest.mark.parametrize("suffix, compress", [(".csv.gz", gzip.compress), (".csv.xz", lzma.compress)])
def test_truncated_compressed_csv(osha, tiny_bundle, tmp_path, capsys, suffix, compress):
    src = tmp_path / f"in{suffix}"
    src.write_bytes(compress(_rows(osha).to_csv(index=False).encode("utf-8"))[:-40])
    text = _refused(src, tmp_path, tiny_bundle, capsys)
    assert "truncated or damaged" in text and "compress it again" in text


def test_empty_delta_input_writes_an_empty_output(osha, tiny_bundle, tmp_path, capsys):
    """A Delta table without rows takes the 0-row path (no Ray), as an empty CSV or Parquet input does."""
    src = tmp_path / "in"
    write_deltalake(str(src), pa.Table.from_pandas(_rows(osha), preserve_index=False).schema.empty_table())
    assert inspect_input(src).num_rows == 0
    out = tmp_path / "out"
    rc, text = _classify(src, out, tiny_bundle, capsys)
    assert rc == 0, text
    assert "has 0 rows" in text
    table = pads.dataset(str(out), format="parquet").to_table()
    assert table.num_rows == 0 and {"ID", TEXT, "source_code", "error"} <= set(table.column_names)


def test_id_types_that_differ_across_parquet_files(osha, tiny_bundle, tmp_path, capsys):
    rows = _rows(osha)
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(pa.Table.from_pandas(rows.iloc[:20], preserve_index=False), src / "a.parquet")
    pq.write_table(pa.Table.from_pandas(rows.iloc[20:].astype({"ID": int}), preserve_index=False), src / "b.parquet")
    text = _refused(src, tmp_path, tiny_bundle, capsys)
    assert "column 'ID' has type string in" in text and "int64 in" in text and "b.parquet" in text


def test_duplicate_csv_header(osha, tiny_bundle, tmp_path, capsys):
    src = tmp_path / "in.csv"
    rows = _rows(osha)
    pd.DataFrame({"ID": rows["ID"], "Other": rows["ID"], TEXT: rows[TEXT]}).to_csv(src, index=False)
    src.write_text(src.read_text(encoding="utf-8").replace("ID,Other,", "ID,ID,", 1), encoding="utf-8")
    assert "the header names ['ID'] more than once" in _refused(src, tmp_path, tiny_bundle, capsys)


def test_utf16_csv_gets_an_encoding_hint(osha, tiny_bundle, tmp_path, capsys):
    src = tmp_path / "in.csv"
    src.write_bytes(_rows(osha).to_csv(index=False).encode("utf-16"))
    text = _refused(src, tmp_path, tiny_bundle, capsys)
    assert "looks like UTF-16" in text and "--encoding utf-16" in text


def test_tab_separated_file_gets_a_delimiter_hint(osha, tiny_bundle, tmp_path, capsys):
    src = tmp_path / "in.csv"
    _rows(osha).to_csv(src, index=False, sep="\t")
    text = _refused(src, tmp_path, tiny_bundle, capsys)
    assert "holding tabs" in text and "comma-separated" in text


def test_huge_narrative_is_refused_for_its_size_not_its_quoting(osha, tiny_bundle, tmp_path, capsys):
    rows = _rows(osha, 5)
    rows.loc[2, TEXT] = "Employee fell from a ladder. " * (MAX_CSV_FIELD_CHARS // 29 + 2)
    src = tmp_path / "in.csv"
    rows.to_csv(src, index=False)
    text = _refused(src, tmp_path, tiny_bundle, capsys)
    assert re.search(r"the record that starts on line \d+ has a field of 4,\d{3},\d{3} characters", text)
    assert "quot" not in text


def test_csv_mixing_utf8_and_cp1252_rows_is_refused_with_both_lines(osha, tiny_bundle, tmp_path, capsys):
    """Read as cp1252 (the sniffed fallback) the UTF-8 rows would be garbled silently: é → Ã©."""
    rows = _rows(osha, 10)
    rows.loc[3, TEXT] = "Employee slipped near the café counter."
    rows.loc[6, TEXT] = "Employee was struck by a pallet — in the warehouse."
    data = rows.to_csv(index=False).encode("utf-8").replace("—".encode(), "—".encode("cp1252"))
    utf8_line, cp1252_line = (data[: data.index(marker)].count(b"\n") + 1 for marker in (b"caf", b"pallet"))
    src = tmp_path / "in.csv"
    src.write_bytes(data)
    text = _refused(src, tmp_path, tiny_bundle, capsys)
    assert f"mixes encodings: line {utf8_line} is UTF-8" in text and f"line {cp1252_line} is not UTF-8" in text
    # choosing the encoding is the way out: every line read as cp1252
    assert inspect_input(src, encoding="cp1252").num_rows == 10


# --- input columns named like result columns: refused up front, by every runner -----------------

@pytest.mark.parametrize("column, fmt", [("confidence", "parquet"), ("Error", "delta"), ("RUN_ID", "parquet")])
def test_cli_refuses_input_columns_named_like_results(osha, tiny_bundle, tmp_path, capsys, column, fmt):
    """``confidence`` was silently replaced; with Delta output an input ``Error`` crashed after all the work."""
    rows = _rows(osha)
    rows[column] = "kept by the user"
    src = tmp_path / "in.parquet"
    rows.to_parquet(src, index=False)
    text = _refused(src, tmp_path, tiny_bundle, capsys, "--output-format", fmt)
    assert f"input column(s) {column!r} (result {column.lower()!r}) have the name of a result column" in text
    assert "Rename or drop those columns first" in text


def test_cli_checks_probability_columns_only_when_kept(osha, tiny_bundle, tmp_path, capsys):
    rows = _rows(osha)
    rows["division_probs"] = "x"
    src = tmp_path / "in.parquet"
    rows.to_parquet(src, index=False)
    assert "'division_probs' (result 'division_probs')" in _refused(src, tmp_path, tiny_bundle, capsys,
                                                                     "--keep-probabilities")


def test_classify_dataset_refuses_result_names_before_running(osha, tiny_bundle, ray_local):
    import ray.data

    from soi_batch.errors import InputSchemaError
    from soi_batch.ray_data import classify_dataset

    rows = _rows(osha, 10)
    rows["Needs_Review"] = False
    ds = ray.data.from_pandas(rows)
    with pytest.raises(InputSchemaError, match=r"Ray Dataset: input column\(s\) 'Needs_Review' \(result 'needs_review'\)"):
        classify_dataset(ds, text_col=TEXT, model=tiny_bundle, run_id="r1")


@pytest.mark.slow
def test_classify_df_refuses_result_names_before_any_job(osha, tiny_bundle):
    pytest.importorskip("pyspark")
    from pyspark.sql import SparkSession

    from soi_batch.errors import InputSchemaError
    from soi_batch.spark import classify_df

    active = SparkSession.getActiveSession()  # another test module's session is reused, not stopped
    spark = active or (SparkSession.builder.master("local[1]").appName("soi-batch-result-names")
                       .config("spark.ui.enabled", "false").getOrCreate())
    try:
        rows = _rows(osha, 10)
        rows["source_code"] = "user's own code"
        df = spark.createDataFrame(rows)
        with pytest.raises(InputSchemaError, match=r"DataFrame: input column\(s\) 'source_code'"):
            classify_df(df, text_col=TEXT, model=tiny_bundle)
    finally:
        if active is None:
            spark.stop()
