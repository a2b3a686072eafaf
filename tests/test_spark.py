"""``classify_df`` on a real local SparkSession (local[2]) with real OSHA rows."""

from __future__ import annotations

import os
import sys

import pyarrow as pa
import pyarrow.dataset as pads
import pytest
from pyspark.sql import SparkSession
from pyspark.sql.types import (
    ArrayType,
    BooleanType,
    DoubleType,
    MapType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

from soi_batch.bundle import EMBEDDED_DEFAULT
from soi_batch.classifier import Classifier, ClassifierConfig
from soi_batch.errors import ConfigError, InputSchemaError
from soi_batch.schema import PROBABILITIES_SCHEMA, RESULT_SCHEMA
from soi_batch.spark import classify_df, gpu_resource_profile, result_struct, worker_state, write_results
from soi_batch.taxonomy import load_taxonomy

LABELS = set(load_taxonomy().labels)
TEXT = "Final Narrative"
BAD_TEXTS = [None, "", "   "]


@pytest.fixture(scope="session")
def spark():
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # workers use this venv, whatever PATH says
    session = (
        SparkSession.builder.master("local[2]")
        .appName("soi-batch-tests")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "16")  # several batches per task
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def reports(osha) -> pa.Table:
    """60 real narratives plus null / empty / blank ones, with a row key and a report id."""
    rows = osha.iloc[:60]
    texts = rows[TEXT].tolist() + BAD_TEXTS
    n = len(texts)
    return pa.table({
        "row_key": pa.array(range(n), pa.int64()),
        "ID": pa.array(rows["ID"].astype(str).tolist() + ["bad"] * len(BAD_TEXTS)),
        TEXT: pa.array(texts, pa.string()),
    })


@pytest.fixture(scope="module")
def reports_df(spark, reports):
    return spark.createDataFrame(reports).repartition(3)


def _jobs(spark) -> set[int]:
    return set(spark.sparkContext.statusTracker().getJobIdsForGroup())


EXPECTED_RESULT_FIELDS = [
    ("source_code", StringType()), ("source_title", StringType()), ("confidence", DoubleType()),
    ("division_code", StringType()), ("division_title", StringType()), ("division_confidence", DoubleType()),
    ("major_group_code", StringType()), ("major_group_title", StringType()),
    ("major_group_confidence", DoubleType()),
    ("top_k", ArrayType(StructType([StructField("code", StringType()), StructField("title", StringType()),
                                    StructField("prob", DoubleType())]))),
    ("needs_review", BooleanType()), ("truncated", BooleanType()), ("error", StringType()),
    ("model_id", StringType()), ("run_id", StringType()), ("classified_at", TimestampType()),
]
PROB_FIELDS = [("division_probs", MapType(StringType(), DoubleType())),
               ("major_group_probs", MapType(StringType(), DoubleType()))]


def test_result_struct_matches_the_arrow_schema():
    assert result_struct().names == RESULT_SCHEMA.names
    assert result_struct(True).names == RESULT_SCHEMA.names + PROBABILITIES_SCHEMA.names


def test_classify_df_is_lazy_and_matches_the_bare_classifier(spark, reports, reports_df, tiny_bundle, tmp_path):
    before = _jobs(spark)
    out = classify_df(reports_df, TEXT, model=tiny_bundle, id_col="ID", top_k=4, batch_size=8,
                      engine="hf", keep_probabilities=True)
    assert _jobs(spark) == before, "classify_df started a Spark job before any action"

    expected = [(n, t) for n, t in [("row_key", "bigint"), ("ID", "string"), (TEXT, "string")]]
    assert [(f.name, f.dataType.simpleString()) for f in out.schema.fields[:3]] == expected
    assert [(f.name, f.dataType) for f in out.schema.fields[3:]] == EXPECTED_RESULT_FIELDS + PROB_FIELDS

    write_results(out, tmp_path / "out", fmt="parquet")
    assert len(_jobs(spark)) > len(before)
    back = pads.dataset(str(tmp_path / "out"), format="parquet").to_table().sort_by("row_key")
    assert back.num_rows == reports.num_rows
    assert spark.read.parquet(str(tmp_path / "out")).schema.simpleString() == out.schema.simpleString()

    rows = back.to_pylist()
    assert len({r["run_id"] for r in rows}) == 1
    assert {r["model_id"] for r in rows} == {"tiny-random@0"}
    good, bad = rows[: -len(BAD_TEXTS)], rows[-len(BAD_TEXTS):]
    assert [r["error"] for r in bad] == ["text is null", "text is empty", "text is empty"]
    assert all(r["source_code"] is None and r["top_k"] is None for r in bad)
    assert all(r["error"] is None and r["source_code"] in LABELS for r in good)
    assert all(len(r["top_k"]) <= 4 and r["source_code"] == r["top_k"][0]["code"] for r in good)
    assert all(len(r["division_probs"]) == 9 for r in good)

    bare = Classifier.load(tiny_bundle, ClassifierConfig(engine="hf", top_k=4)).classify_table(
        reports, text_col=TEXT).to_pylist()
    assert [r["source_code"] for r in rows] == [r["source_code"] for r in bare]
    assert [r["confidence"] for r in good] == pytest.approx([r["confidence"] for r in bare[:len(good)]], rel=1e-4)


def test_model_is_loaded_once_per_python_worker(spark, reports_df, tiny_bundle):
    out = classify_df(reports_df, TEXT, model=tiny_bundle, engine="hf")
    rows, coded = out.selectExpr("count(*)", "count(source_code)").first()  # 3 tasks × several batches
    assert (rows, coded) == (63, 60)

    def probe(batches):
        for _ in batches:
            state = worker_state()
            yield pa.RecordBatch.from_pylist([{"pid": state["pid"], "loads": list(state["loads"].values())}])

    states = spark.range(0, 8, numPartitions=2).mapInArrow(probe, "pid long, loads array<long>").collect()
    loads = {row.pid: row.loads for row in states}
    assert any(loads.values()), f"the probe found no worker that had classified (workers not reused?): {loads}"
    assert all(n == 1 for counts in loads.values() for n in counts), f"a model was loaded more than once: {loads}"


def test_missing_text_column_fails_before_any_job(spark, reports_df, tiny_bundle):
    before = _jobs(spark)
    with pytest.raises(InputSchemaError, match=r"'narrative' not found.*\['row_key', 'ID', 'Final Narrative'\]"):
        classify_df(reports_df, "narrative", model=tiny_bundle)
    with pytest.raises(InputSchemaError, match="id column 'report_id' not found"):
        classify_df(reports_df, TEXT, model=tiny_bundle, id_col="report_id")
    with pytest.raises(InputSchemaError, match="'row_key' has type bigint, not string"):
        classify_df(reports_df, "row_key", model=tiny_bundle)
    with pytest.raises(ConfigError, match="top_k"):
        classify_df(reports_df, TEXT, model=tiny_bundle, top_k=0)
    with pytest.raises(ConfigError, match="stage-level scheduling.*'local\\[2\\]'"):
        classify_df(reports_df, TEXT, model=tiny_bundle, gpus_per_task=1)
    with pytest.raises(ConfigError, match=r"\['batch_size'\].*config="):
        classify_df(reports_df, TEXT, model=tiny_bundle, batch_size=4, config=ClassifierConfig())
    assert _jobs(spark) == before


def test_delta_output_through_delta_rs(spark, reports_df, tiny_bundle, tmp_path):
    from deltalake import DeltaTable

    small = reports_df.filter("row_key < 10 OR row_key >= 60")
    write_results(classify_df(small, TEXT, model=tiny_bundle), tmp_path / "delta", fmt="delta")
    table = DeltaTable(str(tmp_path / "delta")).to_pyarrow_table()
    assert table.num_rows == 13
    assert table.column_names == ["row_key", "ID", TEXT] + RESULT_SCHEMA.names
    assert table.column("error").null_count == 10
    assert str(table.schema.field("classified_at").type).startswith("timestamp[us, tz=")


def test_gpu_resource_profile_asks_for_one_gpu_per_task(spark):
    profile = gpu_resource_profile(spark, 1)
    gpu = profile.taskResources["gpu"]
    assert (gpu.resourceName, gpu.amount) == ("gpu", 1.0)
    assert profile.taskResources["cpus"].amount == 1.0


@pytest.mark.skipif(not EMBEDDED_DEFAULT.is_dir(), reason="embedded soi-mini bundle not installed")
def test_embedded_soi_mini_by_default(spark, reports_df):
    out = classify_df(reports_df.filter("row_key >= 50"), TEXT)  # model=None: the embedded soi-mini
    rows = out.select("row_key", "source_code", "error", "model_id").orderBy("row_key").collect()
    assert len(rows) == 13
    assert {r.model_id.split("@")[0] for r in rows} == {"soi-mini"}
    assert all(r.source_code in LABELS for r in rows[:10]) and all(r.error is None for r in rows[:10])
    assert [r.error for r in rows[10:]] == ["text is null", "text is empty", "text is empty"]


def test_classify_udf_is_a_column_expression_returning_the_result_struct(spark, reports, reports_df, tiny_bundle):
    """``df.select(udf(col).alias("soi"))`` on a real local SparkSession: a struct with the result
    fields, the bare classifier's codes, per-row errors for null/blank texts, one run id, and only
    the fields a query picks."""
    import warnings

    from soi_batch.spark import classify_udf

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning a user cannot act on (Spark's about UDF type hints)
        soi = classify_udf(model=tiny_bundle, config=ClassifierConfig(engine="hf", top_k=4, batch_size=8),
                           keep_probabilities=True, run_id="run-udf")
    out = reports_df.select("row_key", soi(TEXT).alias("soi"))
    assert [(f.name, f.dataType) for f in out.schema["soi"].dataType.fields] == EXPECTED_RESULT_FIELDS + PROB_FIELDS
    rows = [r.asDict(recursive=True) for r in out.orderBy("row_key").collect()]
    assert len(rows) == reports.num_rows
    bare = Classifier.load(tiny_bundle, ClassifierConfig(engine="hf", top_k=4)).classify_table(
        reports, text_col=TEXT).to_pylist()
    assert [r["soi"]["source_code"] for r in rows] == [r["source_code"] for r in bare]
    good, bad = rows[: -len(BAD_TEXTS)], rows[-len(BAD_TEXTS):]
    assert [r["soi"]["confidence"] for r in good] == pytest.approx([r["confidence"] for r in bare[:len(good)]],
                                                                    rel=1e-4)
    assert [r["soi"]["error"] for r in bad] == ["text is null", "text is empty", "text is empty"]
    assert all(len(r["soi"]["top_k"]) <= 4 and len(r["soi"]["division_probs"]) == 9 for r in good)
    assert {r["soi"]["run_id"] for r in rows} == {"run-udf"}

    picked = reports_df.select("ID", soi(TEXT).alias("soi")).select("ID", "soi.source_code", "soi.confidence")
    assert picked.columns == ["ID", "source_code", "confidence"]
    assert sorted(r.source_code for r in picked.collect() if r.source_code) == sorted(
        r["source_code"] for r in bare if r["source_code"])


def test_a_narrative_that_is_not_utf8_is_a_row_error_in_spark(spark, tiny_bundle, tmp_path):
    """Parquet does not check string encodings and Spark passes the bytes on: one such narrative used to
    fail the whole task (UnicodeDecodeError inside the worker)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from soi_batch.spark import classify_udf
    from soi_batch.tables import INVALID_UTF8_ERROR

    values = [b"Employee slipped on a wet floor and fractured a wrist.",
              b"Employee cut \xff\xfe hand on a box cutter",
              b"A forklift struck the employee's foot."]
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"ID": ["a", "b", "c"], TEXT: pa.array(values, pa.binary()).view(pa.string())}), src)
    df = spark.read.parquet(str(src))
    rows = {r["ID"]: r for r in classify_df(df, TEXT, model=tiny_bundle).collect()}
    assert rows["b"]["error"] == INVALID_UTF8_ERROR and rows["b"]["source_code"] is None
    assert rows["a"]["source_code"] in LABELS and rows["c"]["source_code"] in LABELS
    struct = df.select(classify_udf(model=tiny_bundle)(TEXT).alias("soi")).collect()
    assert [r["soi"]["error"] for r in struct] == [None, INVALID_UTF8_ERROR, None]
