"""``classify_udf(...)``: the classifier as a Spark column expression returning one struct.

``df.select("ID", classify_udf(model="soi-mini")("Final Narrative").alias("soi"))`` gives a
``soi`` struct column with the result fields (``soi.source_code``, ``soi.top_k``, …), so a query
keeps only what it needs (``soi.source_code``, ``soi.confidence``).  It runs as an Arrow UDF
(``pyspark.sql.functions.arrow_udf``): each Python worker gets Arrow arrays of the narrative
column and hands them to :meth:`Classifier.classify_table`; the model is loaded once per Python
worker and cached (:mod:`soi_batch.spark.worker`), as for :func:`~soi_batch.spark.classify_df`.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa

from soi_batch.checks import model_for_workers
from soi_batch.classifier import ClassifierConfig
from soi_batch.errors import ConfigError
from soi_batch.spark.columns import result_struct
from soi_batch.spark.worker import PartitionJob, classify_column


def classify_udf(
    model: str | Path | None = None,
    *,
    config: ClassifierConfig | None = None,
    keep_probabilities: bool = False,
    run_id: str | None = None,
    cache_dir: Path | None = None,
) -> Any:
    """A Spark UDF: ``udf(narrative_column)`` → a struct of the result columns.

    Args:
        model: as :func:`~soi_batch.spark.classify_df`'s (a named model, a bundle directory readable
            at the same path on every executor, or a hub id); the bundle is checked here, on the driver.
        config: the :class:`ClassifierConfig` (default: its defaults).
        keep_probabilities: also the ``division_probs`` and ``major_group_probs`` map fields.
        run_id: the struct's ``run_id`` for every row (None: a new uuid4 hex for this UDF).
        cache_dir: where a named model is built on first use.

    Returns:
        A UDF taking one string column; its struct has :func:`~soi_batch.spark.result_struct`'s
        fields.  Null, empty or non-string texts give a struct with ``error`` set and null codes.
        It is marked non-deterministic (``classified_at`` is each batch's time), which also keeps
        Spark from running the model once per selected field of the struct.
    """
    from pyspark.sql.functions import arrow_udf

    if run_id is not None and (not isinstance(run_id, str) or not run_id):
        raise ConfigError(f"run_id must be a non-empty string, or None to generate one; got {run_id!r}")
    job = PartitionJob(
        model=model_for_workers(model, cache_dir),
        config=ClassifierConfig() if config is None else config,
        text_col="text",
        run_id=run_id or uuid.uuid4().hex,
        keep_probabilities=keep_probabilities,
    )
    def classify(texts: pa.Array) -> pa.Array:  # type hints: Spark infers a scalar Arrow UDF from them
        return classify_column(job, texts)

    udf = arrow_udf(classify, returnType=result_struct(keep_probabilities))
    return udf.asNondeterministic()  # classified_at and run_id: never merged or re-evaluated by the optimizer
