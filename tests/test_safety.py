"""Input/output safety of `soi-batch classify`, the nightly reader and `classify_dataset`: CSVs of
any size and line ending, broken quotes anywhere in a file, outputs that overlap the input,
relative paths, non-destructive --overwrite, checks before any row is classified.

Real OSHA rows (training/data/severeinjury_2015-2016.csv.xz) written to tmp_path; real Delta
tables (deltalake); real local Ray where a test says so.  Each case is listed in tests/README.md.
"""

from __future__ import annotations

import csv
import io
import lzma
from pathlib import Path

import pytest

from soi_batch.io import inspect_input, read_table
from soi_batch.nightly.select import InputSource
from training.split import OSHA_SIR

TEXT = "Final Narrative"


# --- helpers ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def osha_rows() -> tuple[list[str], list[list[str]]]:
    """The OSHA SIR 2015-2016 header and rows, as the strings of the cp1252 file."""
    with lzma.open(OSHA_SIR) as fh:
        raw = fh.read().decode("cp1252")
    rows = list(csv.reader(io.StringIO(raw, newline="")))
    return rows[0], rows[1:]


def _write_osha_csv(path: Path, header: list[str], rows: list[list[str]], *, eol: str = "\r\n",
                    quoting: int = csv.QUOTE_ALL) -> Path:
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator=eol, quoting=quoting)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_bytes(buf.getvalue().encode("cp1252"))
    return path


# --- CSV size × line ending × quoting (#18.2) ---------------------------------------------------------
@pytest.mark.parametrize("quoting", [csv.QUOTE_ALL, csv.QUOTE_MINIMAL], ids=["quoted", "unquoted"])
@pytest.mark.parametrize("eol", ["\n", "\r\n"], ids=["LF", "CRLF"])
@pytest.mark.parametrize("rows", [1000, 3000, 10_000])  # ≈ 0.5, 1.5 and 5 MiB
def test_osha_csv_of_any_size_and_line_ending_is_read(tmp_path, osha_rows, rows, eol, quoting):
    header, body = osha_rows
    src = _write_osha_csv(tmp_path / "osha.csv", header, body[:rows], eol=eol, quoting=quoting)
    size = src.stat().st_size
    assert (size < 1 << 20) if rows == 1000 else (size > (1 << 20) if rows == 3000 else size > 4 << 20)
    spec = inspect_input(src)
    assert spec.encoding == "cp1252" and spec.columns == header
    table = read_table(spec)
    assert table.num_rows == rows and table.column(TEXT).to_pylist() == [r[header.index(TEXT)] for r in body[:rows]]
    # the nightly job's reader (select + stage) sees the same rows
    assert sum(b.num_rows for b in InputSource.open(spec).batches([TEXT])) == rows
