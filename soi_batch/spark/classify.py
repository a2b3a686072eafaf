"""``classify_df(df)``: the result columns appended to a Spark DataFrame, lazily.

The DataFrame goes through ``DataFrame.mapInArrow``: each Python worker gets Arrow
``RecordBatch``\\es (``spark.sql.execution.arrow.maxRecordsPerBatch`` rows each, 10,000 by
default) and hands them to :meth:`Classifier.classify_table` (:mod:`soi_batch.spark.worker`).
Nothing here changes the session's configuration.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from soi_batch.checks import model_for_workers
from soi_batch.classifier import ClassifierConfig, EngineName
from soi_batch.errors import ConfigError
from soi_batch.spark.columns import check_columns, output_schema, result_struct
from soi_batch.spark.gpus import gpu_resource_profile, wanted_gpus_per_task
from soi_batch.spark.worker import PartitionJob, classify_partition
from soi_batch.tables import check_result_names

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)

DEFAULT_TEXT_COL = "Final Narrative"


def _classifier_config(config: ClassifierConfig | None, *, top_k: int, batch_size: int | None,
                       engine: EngineName) -> ClassifierConfig:
    if config is None:
        base = ClassifierConfig(top_k=top_k, engine=engine)
        return base if batch_size is None else replace(base, batch_size=batch_size)
    clashes = [name for name, value, default in (("top_k", top_k, 3), ("batch_size", batch_size, None),
                                                 ("engine", engine, "auto")) if value != default]
    if clashes:
        raise ConfigError(f"pass {clashes} inside config=ClassifierConfig(...), not next to it")
    return config


def classify_df(
    df: DataFrame,
    text_col: str = DEFAULT_TEXT_COL,
    *,
    model: str | Path | None = None,
    id_col: str | None = None,
    top_k: int = 3,
    batch_size: int | None = None,
    engine: EngineName = "auto",
    keep_probabilities: bool = False,
    gpus_per_task: float | None = None,
    config: ClassifierConfig | None = None,
    cache_dir: Path | None = None,
) -> DataFrame:
    """``df`` with the source-of-injury result columns appended, as a lazy DataFrame.

    No Spark job runs here: the columns are checked against ``df.schema`` and the model bundle's
    manifest is validated on the driver; the model itself is loaded by each Python worker on its
    first batch and kept for later tasks (Python worker reuse).

    Args:
        df: any DataFrame with a string column of narratives.
        text_col: the narrative column (default ``"Final Narrative"``, as OSHA's SIR files).
        model: a named model ("soi-small", "soi-mini"; None: the default), a bundle directory
            (readable at the same path on every executor), or a hub id.
        id_col: report id column; checked to exist and kept, as every other input column.
        top_k: codes kept in ``top_k`` per row.
        batch_size: reports per engine forward pass inside each Arrow batch (default
            :class:`ClassifierConfig`'s).  Independent of Spark's Arrow batch size,
            ``spark.sql.execution.arrow.maxRecordsPerBatch``, which this function leaves as is.
        engine: ``"hf"``, ``"vllm"`` (GPU) or ``"auto"``.
        keep_probabilities: also append ``division_probs`` and ``major_group_probs``
            (``map<string,double>``), needed for probabilistic trend estimates.
        gpus_per_task: GPUs per Spark task through a stage-level ``ResourceProfile`` (Spark ≥ 3.4
            on standalone/YARN/Kubernetes).  None: one GPU per task when the session sets
            ``spark.executor.resource.gpu.amount`` but not ``spark.task.resource.gpu.amount``,
            else no profile.  0: never attach a profile.
        config: a full :class:`ClassifierConfig` (beam, temperature, engine options...) for
            settings beyond these; when given, leave ``top_k``, ``batch_size`` and ``engine`` at
            their defaults and set them in ``config``.
        cache_dir: where a named model is built on first use (default ``~/.cache/soi-batch``).

    Returns:
        ``df``'s columns followed by
        :data:`soi_batch.schema.RESULT_SCHEMA`'s columns in Spark types: ``top_k`` is
        ``array<struct<code,title,prob>>``, ``classified_at`` a ``timestamp``.  Rows with null
        or blank text get ``error`` set and null codes.  All rows share one ``run_id``.

    Raises:
        InputSchemaError: ``text_col`` or ``id_col`` is missing, ``text_col`` is not a string, or a column
            is named like a result column (case-insensitively).
        ConfigError: an invalid setting, or ``config`` together with ``top_k``/``batch_size``/``engine``.
        BundleError: the model bundle is invalid.
    """
    check_columns(df, text_col, id_col)
    check_result_names(df.columns, result_struct(keep_probabilities).names, source="DataFrame")
    classifier_config = _classifier_config(config, top_k=top_k, batch_size=batch_size, engine=engine)
    job = PartitionJob(
        model=model_for_workers(model, cache_dir),
        config=classifier_config,
        text_col=text_col,
        run_id=uuid.uuid4().hex,
        keep_probabilities=keep_probabilities,
    )
    schema = output_schema(df, keep_probabilities)
    gpus = wanted_gpus_per_task(df.sparkSession, gpus_per_task)
    profile = gpu_resource_profile(df.sparkSession, gpus) if gpus > 0 else None
    log.info("classify_df: run %s, model %s, text column %r, %s", job.run_id, job.model,
             text_col, f"{gpus:g} GPU(s) per task" if profile else "no resource profile")
    return df.mapInArrow(partial(classify_partition, job), schema, profile=profile)
