"""Input/output safety of `soi-batch classify`, the nightly reader and `classify_dataset`: CSVs of
any size and line ending, broken quotes anywhere in a file, outputs that overlap the input,
relative paths, non-destructive --overwrite, checks before any row is classified.

Real OSHA rows (soi_batch/datasets/data/severeinjury_2015-2016.csv.xz) written to tmp_path; real Delta
tables (deltalake); real local Ray where a test says so.  Each case is listed in tests/README.md.
"""

from __future__ import annotations

import csv
import io
import lzma
from pathlib import Path

import pyarrow.csv as pacsv
import pytest

from soi_batch.cli import main
from soi_batch.datasets.osha import OSHA_SIR
from soi_batch.errors import InputReadError
from soi_batch.nightly import NightlyConfig, run_nightly
from soi_batch.nightly.select import InputSource
from soi_batch.tables import inspect_input, read_table

TEXT = "Final Narrative"


# --- helpers ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def osha_rows() -> tuple[list[str], list[list[str]]]:
    """The OSHA SIR 2015-2016 header and rows, as the strings of the cp1252 file."""
    with lzma.open(OSHA_SIR) as fh:
        raw = fh.read().decode("cp1252")
    rows = list(csv.reader(io.StringIO(raw, newline="")))
    return rows[0], rows[1:]


def _cli(args: list[str], capsys) -> tuple[int, str]:
    rc = main(["classify", *args])
    captured = capsys.readouterr()
    return rc, captured.err + captured.out


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


# --- a broken quote anywhere in a CSV (#20.3) ---------------------------------------------------------
BROKEN_COLUMNS = ["ID", "EventDate", TEXT, "Source"]


def _broken_osha_csv(tmp_path: Path, header: list[str], body: list[list[str]], *, eol: str, defect: str,
                     rows: int = 8000, after_bytes: int = 1 << 20) -> tuple[Path, int]:
    """8,000 real rows (id, date, narrative, code), one broken after ``after_bytes``; the file and its line.

    "closing quote dropped" is the issue's silent case: the broken narrative is followed by one that
    is quoted for a quote (no comma, no line break), so Arrow ends the swallowed field there and
    the merged row still has 4 fields; one row disappears without an error.
    """
    cols = [header.index(c) for c in BROKEN_COLUMNS]
    body = [[r[c] for c in cols] for r in body[:rows]]
    ti = BROKEN_COLUMNS.index(TEXT)
    good = _write_osha_csv(tmp_path / "good.csv", BROKEN_COLUMNS, body, eol=eol, quoting=csv.QUOTE_MINIMAL)
    text = good.read_bytes().decode("cp1252")

    def fits(i: int) -> bool:
        here, nxt = body[i][ti], body[i + 1][ti]
        return ("," in here and '"' not in here and len(text[: text.find(here)].encode("cp1252")) > after_bytes
                and (defect != "closing quote dropped" or ("," not in nxt and '"' in nxt and "\n" not in nxt)))

    k = next(i for i in range(rows - 1) if fits(i))
    narrative = body[k][ti]
    start = text.index(f'"{narrative}"')
    if defect == "closing quote dropped":
        broken = text[:start] + f'"{narrative}' + text[start + len(narrative) + 2:]
    else:  # an inner quote not doubled
        cut = narrative.index(" ", 10)
        broken = text[:start] + f'"{narrative[:cut]} "stop" {narrative[cut + 1:]}"' + text[start + len(narrative) + 2:]
    src = tmp_path / "broken.csv"
    src.write_bytes(broken.encode("cp1252"))
    return src, text[:start].count("\n") + 1


@pytest.mark.usefixtures("no_model_no_ray")
@pytest.mark.parametrize("defect", ["closing quote dropped", "unescaped quote"])
@pytest.mark.parametrize("eol", ["\n", "\r\n"], ids=["LF", "CRLF"])
def test_broken_quote_after_the_first_mib_fails_up_front(tmp_path, capsys, osha_rows, eol, defect):
    header, body = osha_rows
    src, line = _broken_osha_csv(tmp_path, header, body, eol=eol, defect=defect)
    if defect == "closing quote dropped":  # what Arrow alone makes of it: one row fewer, no error
        lenient = pacsv.read_csv(src, read_options=pacsv.ReadOptions(encoding="cp1252"),
                                 parse_options=pacsv.ParseOptions(newlines_in_values=True))
        assert lenient.num_rows == 7999
    with pytest.raises(InputReadError, match=rf"malformed CSV near line {line}\b"):
        inspect_input(src)
    rc, msg = _cli([str(src), str(tmp_path / "out"), "--id-col", "ID"], capsys)
    assert rc == 2, msg
    assert str(src) in msg and f"near line {line}:" in msg and "quote" in msg and msg.count("\n") == 1
    assert not (tmp_path / "out").exists()
    with pytest.raises(InputReadError, match=rf"near line {line}\b"):  # the nightly job checks the same way
        run_nightly(NightlyConfig(input=str(src), output=str(tmp_path / "nightly"), id_col="ID"))
    assert not (tmp_path / "nightly").exists()


def test_ragged_row_after_the_first_mib_fails_up_front(tmp_path, osha_rows):
    header, body = osha_rows
    rows = [list(r) for r in body[:8000]]
    rows[6000] = ["RAGGED-ROW", *rows[6000][1:], "extra"]
    src = _write_osha_csv(tmp_path / "ragged.csv", header, rows, eol="\n")
    text = src.read_bytes().decode("cp1252")
    line = text[: text.index('"RAGGED-ROW"')].count("\n") + 1  # narratives hold line breaks: not row + 2
    with pytest.raises(InputReadError, match=rf"{src}: malformed CSV near line {line}: Expected 26 columns, got 27"):
        inspect_input(src)


def test_csv_record_count_is_exact_for_any_size(tmp_path, osha_rows):
    header, body = osha_rows
    for rows, eol in ((1000, "\r\n"), (10_000, "\n")):
        src = _write_osha_csv(tmp_path / f"osha-{rows}.csv", header, body[:rows], eol=eol)
        assert inspect_input(src).num_rows == rows


# --- classify_dataset checks its model and text column before the Dataset runs (#18.7) --------------
def _ds_cases(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray.data

    table = pa.table({"id": ["1", "2"], TEXT: ["Employee fell from a ladder.", "Forklift struck a worker."],
                      "n": [1, 2]})
    pq.write_table(table, tmp_path / "in.parquet")
    (tmp_path / "in.csv").write_text('id,Final Narrative\n1,"Employee fell, hard."\n', encoding="utf-8")
    return {
        "arrow": ray.data.from_arrow(table),
        "parquet": ray.data.read_parquet(str(tmp_path / "in.parquet")),
        "csv": ray.data.read_csv(str(tmp_path / "in.csv")),  # schema known only after reading a block
    }


def test_classify_dataset_refuses_bad_model_or_text_column_up_front(tmp_path, ray_local):
    from soi_batch.errors import BundleError, InputSchemaError
    from soi_batch.ray_data import classify_dataset

    for name, ds in _ds_cases(tmp_path).items():
        with pytest.raises(BundleError, match="no_such_model"):
            classify_dataset(ds, text_col=TEXT, model=tmp_path / "no_such_model", run_id="r")
        with pytest.raises(InputSchemaError, match=r"text column 'Narrative' not found; available columns: "
                                                   r"\['id', 'Final Narrative'.*text_col="):
            classify_dataset(ds, text_col="Narrative", run_id="r")
        if name != "csv":
            with pytest.raises(InputSchemaError, match="text column 'n' has type int64, not string"):
                classify_dataset(ds, text_col="n", run_id="r")
        assert classify_dataset(ds, text_col=TEXT, run_id="r") is not None  # valid: still lazy, no error


# --- output checks before any row is classified; relative paths (#18.1) -------------------------------
def _small_inputs(root: Path, osha_rows, rows: int = 40) -> None:
    """reports.csv (cp1252, CRLF, quoted), reports.parquet and reports_delta/ with the same real rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import write_deltalake

    header, body = osha_rows
    keep = [header.index(c) for c in ("ID", "EventDate", TEXT, "Source")]
    cols = [header[i] for i in keep]
    body = [[f"r{n:03d}", *(r[i] for i in keep[1:])] for n, r in enumerate(body[:rows])]
    _write_osha_csv(root / "reports.csv", cols, body)
    table = pa.table({c: [r[i] for r in body] for i, c in enumerate(cols)})
    pq.write_table(table, root / "reports.parquet")
    write_deltalake(str(root / "reports_delta"), table)


@pytest.mark.usefixtures("no_model_no_ray")
@pytest.mark.parametrize("case", ["parent is a file", "parent not writable (/sys)", "parent not writable (chmod)",
                                  "exists, no --overwrite"])
def test_output_problems_fail_before_any_work(tmp_path, capsys, osha_rows, monkeypatch, case):
    import os

    monkeypatch.chdir(tmp_path)
    _small_inputs(tmp_path, osha_rows, rows=5)
    if case == "parent is a file":
        Path("notes.txt").write_text("x")
        output, expect = "notes.txt/results", "notes.txt is not a directory"
    elif case == "parent not writable (/sys)":
        if not Path("/sys").is_dir():
            pytest.skip("no /sys")
        output, expect = "/sys/soi-results", "/sys is not writable"
    elif case == "parent not writable (chmod)":
        if os.geteuid() == 0:
            pytest.skip("root writes anywhere")
        Path("ro").mkdir(mode=0o555)
        output, expect = "ro/sub/results", "ro is not writable"
    else:
        Path("results").mkdir()
        (Path("results") / "part-0.parquet").write_bytes(b"old")
        output, expect = "results", "exists; pass --overwrite"
    for fmt in ("parquet", "delta"):
        rc, msg = _cli(["reports.csv", output, "--output-format", fmt], capsys)
        assert rc == 2 and expect in msg and msg.count("\n") == 1, msg
    if case.startswith("exists"):
        assert (Path("results") / "part-0.parquet").read_bytes() == b"old"


def test_unknown_output_format_fails_before_the_dataset_runs(tmp_path, ray_local):
    import pyarrow as pa
    import ray.data

    from soi_batch.checks import check_output
    from soi_batch.errors import ConfigError
    from soi_batch.ray_data import write_dataset

    with pytest.raises(ConfigError, match=r"output format 'csv' is not one of \['parquet', 'delta'\]"):
        check_output(tmp_path / "out", fmt="csv", overwrite=False)

    def explode(batch):
        raise AssertionError("the Dataset ran")

    ds = ray.data.from_arrow(pa.table({"a": [1]})).map_batches(explode)
    with pytest.raises(ConfigError, match="output format 'csv'"):
        write_dataset(ds, tmp_path / "out", fmt="csv")


@pytest.mark.slow
def test_relative_paths_for_every_input_and_output(tmp_path, capsys, osha_rows, tiny_bundle, ray_local, monkeypatch):
    """The README's `classify reports_delta/ results_delta/ --output-format delta`, and CSV/Parquet, from
    another working directory than the one Ray started in; the nightly job with relative paths."""
    import os

    import pyarrow.dataset as pads
    from deltalake import DeltaTable

    monkeypatch.chdir(tmp_path)
    _small_inputs(tmp_path, osha_rows)
    model = ["--model", str(tiny_bundle), "--id-col", "ID", "--batch-size", "16"]
    for src, out, fmt in (("reports_delta/", "results_delta/", "delta"), ("reports.csv", "results", "parquet"),
                          ("./reports.parquet", "sub/../results_pq_delta", "delta")):
        rc, msg = _cli([src, out, "--output-format", fmt, *model], capsys)
        assert rc == 0, msg
        path = tmp_path / os.path.normpath(out)
        table = (DeltaTable(str(path)).to_pyarrow_table() if fmt == "delta"
                 else pads.dataset(str(path), format="parquet").to_table())
        assert sorted(table.column("ID").to_pylist()) == [f"r{n:03d}" for n in range(40)], (src, out)
    manifest = run_nightly(NightlyConfig(input="reports_delta", output="nightly_delta", id_col="ID",
                                         model=str(tiny_bundle), chunk_rows=100, ray={"batch_size": 100}))
    assert manifest.status == "completed" and manifest.counts.classified == 40
    assert DeltaTable(str(tmp_path / "nightly_delta")).to_pyarrow_table().num_rows == 40


# --- the output never overlaps the input; --overwrite deletes nothing before the new result (#20.1, #18.6)
def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.usefixtures("no_model_no_ray")
@pytest.mark.parametrize("case", [
    "csv, output = its folder", "csv, output = the file", "delta dir, output = input", "parquet dir, output = input",
    "delta dir, output inside", "parquet dir, output inside", "csv, output = folder via symlink",
    "delta dir, output = input via ./x/../", "output = folder above the input's folder",
])
def test_output_that_is_contains_or_is_inside_the_input_is_refused(tmp_path, capsys, osha_rows, monkeypatch, case):
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    _small_inputs(scratch, osha_rows, rows=5)
    (scratch / "ds").mkdir()
    pq.write_table(pq.read_table(scratch / "reports.parquet"), scratch / "ds" / "part-0.parquet")
    (scratch / "link").symlink_to(scratch, target_is_directory=True)
    before = _tree(tmp_path)
    src, out, expect = {
        "csv, output = its folder": ("scratch/reports.csv", "scratch", "contains the input"),
        "csv, output = the file": ("scratch/reports.csv", "scratch/reports.csv", "is the input"),
        "delta dir, output = input": ("scratch/reports_delta", "scratch/reports_delta", "is the input"),
        "parquet dir, output = input": ("scratch/ds", "scratch/ds/", "is the input"),
        "delta dir, output inside": ("scratch/reports_delta", "scratch/reports_delta/out", "is inside the input"),
        "parquet dir, output inside": ("scratch/ds", "scratch/ds/results", "is inside the input"),
        "csv, output = folder via symlink": ("scratch/reports.csv", "scratch/link", "contains the input"),
        "delta dir, output = input via ./x/../": ("scratch/reports_delta",
                                                  "./scratch/ds/../reports_delta", "is the input"),
        "output = folder above the input's folder": (str(scratch / "ds"), str(tmp_path), "contains the input"),
    }[case]
    for fmt in ("parquet", "delta"):
        rc, msg = _cli([src, out, "--overwrite", "--output-format", fmt], capsys)
        assert rc == 2 and expect in msg and "choose" in msg.lower() and msg.count("\n") == 1, msg
    assert _tree(tmp_path) == before  # nothing deleted, nothing written


@pytest.mark.usefixtures("no_model_no_ray")
def test_overwrite_refuses_a_folder_that_is_not_an_earlier_output(tmp_path, capsys, osha_rows):
    _small_inputs(tmp_path, osha_rows, rows=5)
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.docx").write_bytes(b"years of work")
    (out / "part-0.parquet").write_bytes(b"x")
    for fmt in ("parquet", "delta"):
        rc, msg = _cli([str(tmp_path / "reports.csv"), str(out), "--overwrite", "--output-format", fmt], capsys)
        assert rc == 2 and "not a Parquet output or a Delta table" in msg and "thesis.docx" in msg, msg
    assert (out / "thesis.docx").read_bytes() == b"years of work"


def _fail_while_writing(monkeypatch) -> None:
    """Everything up to the write runs for real; the write itself fails (no model, no Ray)."""
    import soi_batch.ray_data

    def crash(*args, **kwargs):
        raise RuntimeError("disk full while writing")

    monkeypatch.setattr(soi_batch.ray_data, "init_ray", lambda *a, **k: None)
    monkeypatch.setattr(soi_batch.ray_data, "read_dataset", lambda spec, **k: "dataset")
    monkeypatch.setattr(soi_batch.ray_data, "classify_dataset", lambda ds, **k: ds)
    monkeypatch.setattr(soi_batch.ray_data, "write_dataset", crash)


@pytest.mark.usefixtures("no_model_no_ray")
@pytest.mark.parametrize("old,fmt", [("delta", "delta"), ("parquet", "parquet"), ("parquet", "delta"),
                                     ("delta", "parquet")])
def test_overwrite_keeps_the_old_output_when_the_write_fails(tmp_path, osha_rows, monkeypatch, old, fmt):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from deltalake import DeltaTable, write_deltalake

    _small_inputs(tmp_path, osha_rows, rows=5)
    out = tmp_path / "results"
    previous = pa.table({"ID": ["old-1", "old-2"], "source_code": ["66", "8621"]})
    if old == "delta":
        write_deltalake(str(out), previous)
    else:
        out.mkdir()
        pq.write_table(previous, out / "part-0.parquet")
    before = _tree(tmp_path)
    _fail_while_writing(monkeypatch)
    with pytest.raises(RuntimeError, match="disk full"):
        main(["classify", str(tmp_path / "reports.csv"), str(out), "--overwrite", "--output-format", fmt])
    assert _tree(tmp_path) == before  # the old output as it was; no staging folder left behind
    table = DeltaTable(str(out)).to_pyarrow_table() if old == "delta" else pq.read_table(out)
    assert table.column("ID").to_pylist() == ["old-1", "old-2"]


@pytest.mark.usefixtures("no_model_no_ray")
def test_overwrite_of_a_delta_table_is_a_new_version(tmp_path, capsys, osha_rows):
    """0-row input (no model needed): --overwrite on a Delta output commits a new version; history kept."""
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    header, _ = osha_rows
    src = _write_osha_csv(tmp_path / "empty.csv", header, [])
    out = tmp_path / "results"
    write_deltalake(str(out), pa.table({"ID": ["old-1", "old-2"], "source_code": ["66", "8621"]}))
    rc, msg = _cli([str(src), str(out), "--overwrite", "--output-format", "delta", "--keep-probabilities"], capsys)
    assert rc == 0 and "has 0 rows" in msg, msg
    table = DeltaTable(str(out))
    assert table.version() == 1 and table.to_pyarrow_table().num_rows == 0
    assert "division_probs" in table.schema().to_arrow().names  # the new schema replaced the old one
    assert len(table.history()) == 2
    assert DeltaTable(str(out), version=0).to_pyarrow_table().column("ID").to_pylist() == ["old-1", "old-2"]


@pytest.mark.slow
def test_overwrite_end_to_end_keeps_delta_history_and_replaces_parquet(tmp_path, capsys, osha_rows, tiny_bundle,
                                                                      ray_local):
    import pyarrow.dataset as pads
    from deltalake import DeltaTable

    _small_inputs(tmp_path, osha_rows)
    src, model = str(tmp_path / "reports_delta"), ["--model", str(tiny_bundle), "--batch-size", "16"]
    out = tmp_path / "results_delta"
    assert _cli([src, str(out), "--output-format", "delta", *model], capsys)[0] == 0
    rc, msg = _cli([src, str(out), "--output-format", "delta", "--overwrite", "--keep-probabilities", *model], capsys)
    assert rc == 0, msg
    table = DeltaTable(str(out))
    assert table.version() == 1 and table.to_pyarrow_table().num_rows == 40
    assert "division_probs" in table.schema().to_arrow().names
    assert "division_probs" not in DeltaTable(str(out), version=0).schema().to_arrow().names
    assert DeltaTable(str(out), version=0).to_pyarrow_table().num_rows == 40
    pq_out = tmp_path / "results_pq"
    pq_out.mkdir()
    (pq_out / "stale.parquet").write_bytes(b"old")
    rc, msg = _cli([src, str(pq_out), "--overwrite", *model], capsys)
    assert rc == 0, msg
    assert not (pq_out / "stale.parquet").exists()
    assert pads.dataset(str(pq_out), format="parquet").to_table().num_rows == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reports.csv", "reports.parquet", "reports_delta",
                                                          "results_delta", "results_pq"]  # no staging left
