"""Spark notebook API: ``classify_df(df)`` appends the classifier's result columns, lazily.

The DataFrame goes through ``DataFrame.mapInArrow``: each Python worker gets Arrow
``RecordBatch``\\es (``spark.sql.execution.arrow.maxRecordsPerBatch`` rows each, 10,000 by
default) and hands them straight to :meth:`Classifier.classify_table`, which sub-batches them
for the engine (``batch_size``).  The model is loaded once per Python worker and kept in a
module-level cache; Spark reuses Python workers between tasks by default
(``spark.python.worker.reuse=true``), so a worker loads it on its first non-empty batch only.

GPU clusters: one task per GPU.  Either set ``spark.task.resource.gpu.amount=1`` for the
whole application (with ``spark.executor.resource.gpu.amount`` and a discovery script), or
let ``classify_df`` attach a stage-level ``ResourceProfile`` asking for one GPU per task
(``gpus_per_task``; needs a standalone, YARN or Kubernetes cluster — local mode has no
stage-level scheduling).  Each task runs its engine on the GPU Spark assigned it
(``TaskContext.get().resources()["gpu"].addresses``).  On CPU each task's torch uses the
task's ``spark.task.cpus`` threads.

Nothing here changes the session's configuration.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from soi_batch.checks import model_for_workers
from soi_batch.classifier import Classifier, ClassifierConfig, EngineName
from soi_batch.engines.threads import set_torch_threads
from soi_batch.errors import ConfigError, InputSchemaError
from soi_batch.schema import PROBABILITIES_SCHEMA, RESULT_SCHEMA
from soi_batch.tables import kept_columns

if TYPE_CHECKING:
    from pyspark.resource import ResourceProfile
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)

DEFAULT_TEXT_COL = "Final Narrative"
_DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"


@dataclass(frozen=True)
class _PartitionJob:
    """Everything a Spark task needs to classify its partition (pickled to the workers)."""

    model: str
    config: ClassifierConfig
    text_col: str
    run_id: str
    keep_probabilities: bool


# --- worker side ---------------------------------------------------------------------------
_WORKER_CLASSIFIER: dict[str, Classifier] = {}
"""At most one loaded classifier per Python worker, keyed by model + config (device included)."""
_WORKER_LOADS: Counter[str] = Counter()
"""How many times this worker loaded each model + config (see :func:`worker_state`)."""


def _worker_classifier(model: str, config: ClassifierConfig) -> Classifier:
    """This worker's classifier for ``model`` + ``config``, loading it on first use only."""
    key = f"{model}|{config!r}"
    cached = _WORKER_CLASSIFIER.get(key)
    if cached is not None:
        return cached
    if _WORKER_CLASSIFIER:  # another model or GPU: free it first (a 7B model per GPU is all that fits)
        _WORKER_CLASSIFIER.clear()
        _free_gpu_memory()
    classifier = Classifier.load(model, config)
    _WORKER_CLASSIFIER[key] = classifier
    _WORKER_LOADS[key] += 1
    return classifier


def _free_gpu_memory() -> None:
    import gc

    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def worker_state() -> dict[str, Any]:
    """This Python worker's pid, loads per model + config, and the model it holds now."""
    import os

    return {"pid": os.getpid(), "loads": dict(_WORKER_LOADS), "cached": list(_WORKER_CLASSIFIER)}


def _task_config(config: ClassifierConfig) -> ClassifierConfig:
    """``config`` with the device Spark assigned this task, and torch threads set for CPU tasks."""
    from pyspark import TaskContext

    ctx = TaskContext.get()
    resources = ctx.resources() if ctx is not None else {}
    gpu = resources.get("gpu")
    if gpu is not None and gpu.addresses and config.device in ("auto", "cuda"):
        return replace(config, device=f"cuda:{gpu.addresses[0]}")
    if ctx is not None and config.device in ("auto", "cpu"):
        set_torch_threads(max(1, ctx.cpus()))  # this task's spark.task.cpus
    return config


def _classify_partition(job: _PartitionJob, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow function: Arrow batches in → the same rows with the result columns appended."""
    classifier: Classifier | None = None
    for batch in batches:
        if classifier is None:  # empty partitions never load a model
            classifier = _worker_classifier(job.model, _task_config(job.config))
        table = classifier.classify_table(pa.Table.from_batches([batch]), text_col=job.text_col,
                                          run_id=job.run_id, keep_probabilities=job.keep_probabilities)
        yield from table.combine_chunks().to_batches()


# --- driver side ---------------------------------------------------------------------------
def result_struct(keep_probabilities: bool = False) -> StructType:
    """The Spark types of the appended result columns (derived from the Arrow result schema)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    fields = list(RESULT_SCHEMA) + (list(PROBABILITIES_SCHEMA) if keep_probabilities else [])
    return from_arrow_schema(pa.schema(fields))


def _output_schema(df: DataFrame, keep_probabilities: bool) -> StructType:
    from pyspark.sql.types import StructType

    results = result_struct(keep_probabilities)
    fields = df.schema.fields
    kept = kept_columns(df.columns, results.names)  # the columns append_results keeps in each task
    if len(kept) < len(fields):
        log.warning("input columns %s are replaced by the classifier's result columns",
                    [f.name for i, f in enumerate(fields) if i not in kept])
    return StructType([fields[i] for i in kept] + results.fields)


def _check_columns(df: DataFrame, text_col: str, id_col: str | None) -> None:
    from pyspark.sql.types import StringType

    columns = df.columns
    if text_col not in columns:
        raise InputSchemaError(
            f"text column {text_col!r} not found in the DataFrame; available columns: {columns}. "
            "Pass the right name with text_col=..."
        )
    if id_col is not None and id_col not in columns:
        raise InputSchemaError(
            f"id column {id_col!r} not found in the DataFrame; available columns: {columns}. "
            "Pass the right name with id_col=... (or None)"
        )
    text_type = df.schema[text_col].dataType
    if not isinstance(text_type, StringType):
        raise InputSchemaError(
            f"text column {text_col!r} has type {text_type.simpleString()}, not string; "
            f"cast it first, e.g. df.withColumn({text_col!r}, df[{text_col!r}].cast('string'))"
        )


def gpu_resource_profile(spark: SparkSession, gpus_per_task: float = 1) -> ResourceProfile:
    """A stage-level profile asking for ``gpus_per_task`` GPUs (and ``spark.task.cpus`` CPUs) per task."""
    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

    cpus = int(spark.conf.get("spark.task.cpus", "1") or 1)
    requests = TaskResourceRequests().cpus(cpus).resource("gpu", gpus_per_task)
    return ResourceProfileBuilder().require(requests).build


def _wanted_gpus_per_task(spark: SparkSession, gpus_per_task: float | None) -> float:
    """0 when no profile is needed; else the GPUs per task the profile asks for."""
    if gpus_per_task is not None:
        if gpus_per_task < 0:
            raise ConfigError(f"gpus_per_task must be ≥ 0, got {gpus_per_task}")
        master = spark.conf.get("spark.master", "") or ""
        if gpus_per_task > 0 and (master == "local" or master.startswith("local[")):
            raise ConfigError(
                f"gpus_per_task={gpus_per_task:g} needs stage-level scheduling, which Spark offers on standalone, "
                f"YARN and Kubernetes clusters, not in {master!r}; leave gpus_per_task=None (in local mode "
                "every task's engine uses device='auto', the first visible GPU: run local[1] on a GPU machine)"
            )
        return gpus_per_task
    executor_gpus = float(spark.conf.get("spark.executor.resource.gpu.amount", "0") or 0)
    task_gpus = float(spark.conf.get("spark.task.resource.gpu.amount", "0") or 0)
    return 1.0 if executor_gpus > 0 and task_gpus == 0 else 0.0


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
        ``df``'s columns (those named like a result column are replaced) followed by
        :data:`soi_batch.schema.RESULT_SCHEMA`'s columns in Spark types: ``top_k`` is
        ``array<struct<code,title,prob>>``, ``classified_at`` a ``timestamp``.  Rows with null
        or blank text get ``error`` set and null codes.  All rows share one ``run_id``.

    Raises:
        InputSchemaError: ``text_col`` or ``id_col`` is missing, or ``text_col`` is not a string.
        ConfigError: an invalid setting, or ``config`` together with ``top_k``/``batch_size``/``engine``.
        BundleError: the model bundle is invalid.
    """
    _check_columns(df, text_col, id_col)
    classifier_config = _classifier_config(config, top_k=top_k, batch_size=batch_size, engine=engine)
    job = _PartitionJob(
        model=model_for_workers(model, cache_dir),
        config=classifier_config,
        text_col=text_col,
        run_id=uuid.uuid4().hex,
        keep_probabilities=keep_probabilities,
    )
    schema = _output_schema(df, keep_probabilities)
    gpus = _wanted_gpus_per_task(df.sparkSession, gpus_per_task)
    profile = gpu_resource_profile(df.sparkSession, gpus) if gpus > 0 else None
    log.info("classify_df: run %s, model %s, text column %r, %s", job.run_id, job.model,
             text_col, f"{gpus:g} GPU(s) per task" if profile else "no resource profile")
    return df.mapInArrow(partial(_classify_partition, job), schema, profile=profile)


def write_results(df: DataFrame, path: str | Path, *, fmt: Literal["parquet", "delta"] = "parquet",
                  mode: Literal["error", "append", "overwrite", "ignore"] = "error") -> None:
    """Write a classified DataFrame as Parquet (Spark's writer) or Delta.

    Delta goes through delta-spark when the session has its extension
    (``spark.sql.extensions`` includes ``io.delta.sql.DeltaSparkSessionExtension``); otherwise
    through delta-rs (``deltalake.write_deltalake``) on ``df.toArrow()``, which **collects the
    whole result to the driver** — fine for notebook-sized results, not for large tables.
    """
    if fmt == "parquet":
        df.write.mode("errorifexists" if mode == "error" else mode).parquet(str(path))
    elif fmt == "delta":
        extensions = df.sparkSession.conf.get("spark.sql.extensions", "") or ""
        if _DELTA_EXTENSION in extensions:
            df.write.format("delta").mode("errorifexists" if mode == "error" else mode).save(str(path))
        else:
            from deltalake import write_deltalake

            log.info("no delta-spark in this session: collecting to the driver and writing with delta-rs")
            write_deltalake(str(path), df.toArrow(), mode=mode)
    else:
        raise ConfigError(f"output format {fmt!r} is not one of ['parquet', 'delta']")
