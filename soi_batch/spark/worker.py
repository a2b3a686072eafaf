"""Spark worker side: each Python worker's cached classifier and the ``mapInArrow`` function.

The model is loaded once per Python worker and kept in a module-level cache; Spark reuses Python
workers between tasks by default (``spark.python.worker.reuse=true``), so a worker loads it on its
first non-empty batch only.  Each task runs its engine on the GPU Spark assigned it
(``TaskContext.get().resources()["gpu"].addresses``); on CPU each task's torch uses the task's
``spark.task.cpus`` threads.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import pyarrow as pa

from soi_batch.classifier import Classifier, ClassifierConfig
from soi_batch.engines.threads import set_torch_threads
from soi_batch.tables import classify_valid_utf8


@dataclass(frozen=True)
class PartitionJob:
    """Everything a Spark task needs to classify its partition (pickled to the workers)."""

    model: str
    config: ClassifierConfig
    text_col: str
    run_id: str
    keep_probabilities: bool


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


def classify_partition(job: PartitionJob, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    """mapInArrow function: Arrow batches in → the same rows with the result columns appended."""
    classifier: Classifier | None = None
    for batch in batches:
        if classifier is None:  # empty partitions never load a model
            classifier = _worker_classifier(job.model, _task_config(job.config))
        table = classify_valid_utf8(  # a narrative that is not UTF-8 (Spark passes bytes on) is a row error
            pa.Table.from_batches([batch]), job.text_col,
            partial(classifier.classify_table, text_col=job.text_col, run_id=job.run_id,
                    keep_probabilities=job.keep_probabilities))
        yield from table.combine_chunks().to_batches()


def classify_column(job: PartitionJob, texts: pa.Array) -> pa.Array:
    """Arrow UDF function: a column of narratives → a struct column of the result fields (same rows)."""
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if len(texts) == 0:
        return pa.array([], type=pa.struct(list(_result_fields(job.keep_probabilities))))
    classifier = _worker_classifier(job.model, _task_config(job.config))
    table = classify_valid_utf8(pa.table({job.text_col: texts}), job.text_col,
                                partial(classifier.classify_table, text_col=job.text_col, run_id=job.run_id,
                                        keep_probabilities=job.keep_probabilities))
    results = table.drop_columns([job.text_col]).combine_chunks()
    return pa.StructArray.from_arrays([c.chunk(0) if c.num_chunks else pa.array([], c.type) for c in results.columns],
                                      fields=list(results.schema))


def _result_fields(keep_probabilities: bool) -> list[pa.Field]:
    from soi_batch.schema import PROBABILITIES_SCHEMA, RESULT_SCHEMA

    return list(RESULT_SCHEMA) + (list(PROBABILITIES_SCHEMA) if keep_probabilities else [])
