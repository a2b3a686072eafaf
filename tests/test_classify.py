"""Classifier, readers/writers and the `soi-batch classify` CLI on real OSHA rows."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads
import pytest
from deltalake import DeltaTable, write_deltalake

from soi_batch.classifier import Classifier, ClassifierConfig
from soi_batch.cli import main
from soi_batch.errors import InputReadError, InputSchemaError
from soi_batch.schema import PROBABILITIES_SCHEMA, RESULT_SCHEMA
from soi_batch.tables import inspect_input, read_table, sniff_encoding
from soi_batch.taxonomy import load_taxonomy

SAMPLE = Path(__file__).parents[1] / "soi_batch" / "data" / "osha_sir_sample.csv"
LABELS = set(load_taxonomy().labels)


@pytest.fixture(scope="module")
def classifier(tiny_bundle) -> Classifier:
    return Classifier.load(tiny_bundle, ClassifierConfig(batch_size=16, top_k=5))


def _check_results(table: pa.Table, n: int) -> None:
    assert table.num_rows == n
    for field in RESULT_SCHEMA:
        assert table.schema.field(field.name).type == field.type, field.name
    for row in table.select(RESULT_SCHEMA.names).to_pylist():
        if row["error"] is not None:
            assert row["source_code"] is None
            continue
        assert row["source_code"] in LABELS
        assert row["source_code"].startswith(row["major_group_code"])
        assert row["major_group_code"].startswith(row["division_code"])
        for key in ("confidence", "division_confidence", "major_group_confidence"):
            assert 0.0 <= row[key] <= 1.0
        assert row["confidence"] <= row["major_group_confidence"] + 1e-12 <= row["division_confidence"] + 2e-12
        probs = [t["prob"] for t in row["top_k"]]
        assert probs == sorted(probs, reverse=True) and all(t["code"] in LABELS for t in row["top_k"])


def test_classify_table_real_rows_with_bad_rows(classifier, osha):
    texts = osha["Final Narrative"].iloc[:40].tolist() + [None, "", "   \t", "x"]
    table = pa.table({"row_key": [str(i) for i in range(len(texts))], "Final Narrative": texts})
    out = classifier.classify_table(table, text_col="Final Narrative", run_id="r1", keep_probabilities=True)
    _check_results(out, len(texts))
    assert out.column_names[:2] == ["row_key", "Final Narrative"]
    errors = out.column("error").to_pylist()
    assert errors[40:43] == ["text is null", "text is empty", "text is empty"]
    assert errors[43] is None and all(e is None for e in errors[:40])
    assert set(out.column("run_id").to_pylist()) == {"r1"}
    for name in PROBABILITIES_SCHEMA.names:
        assert name in out.column_names
    divs = out.column("division_probs").to_pylist()[0]
    assert len(divs) == 9 and abs(sum(p for _, p in divs) - 1) < 1e-9


def test_results_do_not_depend_on_batch_neighbours(classifier, tiny_bundle, osha):
    texts = osha["Final Narrative"].iloc[100:130].tolist()
    alone = [classifier.classify_texts([t])[0] for t in texts[:5]]
    batched = classifier.classify_texts(texts)[:5]
    for a, b in zip(alone, batched):
        assert a.code == b.code
        assert a.confidence == pytest.approx(b.confidence, rel=1e-4)


def test_missing_text_column_is_reported(classifier):
    with pytest.raises(InputSchemaError, match="'narrative' not found"):
        classifier.classify_table(pa.table({"text": ["a"]}), text_col="narrative")


def test_osha_csv_is_read_as_cp1252_strings():
    assert sniff_encoding(SAMPLE) == "cp1252"
    spec = inspect_input(SAMPLE)
    assert spec.format == "csv" and "Final Narrative" in spec.columns
    table = read_table(spec)
    assert table.num_rows == 1000
    assert all(t == pa.string() for t in table.schema.types)
    assert all(code.isdigit() for code in table.column("Source").to_pylist())
    with pytest.raises(InputSchemaError, match="available columns"):
        spec.require("Narrative", role="text column")
    with pytest.raises(InputReadError, match="no such file"):
        inspect_input(SAMPLE.with_name("missing.csv"))


@pytest.mark.slow
def test_cli_csv_to_parquet_keeps_every_column(tiny_bundle, ray_local, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["classify", str(SAMPLE), str(out), "--model", str(tiny_bundle), "--id-col", "ID",
                 "--batch-size", "32"]) == 0
    table = pads.dataset(str(out), format="parquet").to_table()
    source = read_table(inspect_input(SAMPLE))
    _check_results(table, source.num_rows)
    assert table.column_names[: source.num_columns] == source.column_names
    assert sorted(table.column("Final Narrative").to_pylist()) == sorted(source.column("Final Narrative").to_pylist())
    assert "top sources:" in capsys.readouterr().out


@pytest.mark.slow
def test_cli_delta_to_delta(tiny_bundle, ray_local, tmp_path, osha):
    src = tmp_path / "in"
    rows = osha.iloc[:200][["row_key", "ID", "EventDate", "Final Narrative", "Source"]]
    write_deltalake(str(src), pa.Table.from_pandas(rows, preserve_index=False))
    out = tmp_path / "out"
    assert main(["classify", str(src), str(out), "--model", str(tiny_bundle), "--id-col", "row_key",
                 "--output-format", "delta", "--keep-probabilities"]) == 0
    table = DeltaTable(str(out)).to_pyarrow_table()
    _check_results(table, 200)
    assert sorted(table.column("row_key").to_pylist()) == sorted(rows["row_key"])
    assert "division_probs" in table.column_names


def test_cli_fails_before_work_on_bad_column(tiny_bundle, tmp_path, capsys):
    assert main(["classify", str(SAMPLE), str(tmp_path / "o"), "--model", str(tiny_bundle),
                 "--text-col", "Narrative"]) == 2
    err = capsys.readouterr().err
    assert "text column 'Narrative' not found" in err and "Final Narrative" in err
    assert not (tmp_path / "o").exists()
