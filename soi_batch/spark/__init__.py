"""Spark notebook API: ``classify_df(df)`` appends the classifier's result columns, lazily;
``classify_udf(...)`` is the same as a column expression returning one struct.

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

Modules: ``classify`` (``classify_df``, on the driver), ``worker`` (the cached classifier and the
``mapInArrow`` and UDF functions, on the executors), ``udf`` (``classify_udf``), ``columns`` (result types, DataFrame checks), ``gpus``
(resource profiles), ``write`` (Parquet / Delta).
"""

from soi_batch.spark.classify import DEFAULT_TEXT_COL, classify_df
from soi_batch.spark.columns import result_struct
from soi_batch.spark.gpus import gpu_resource_profile
from soi_batch.spark.udf import classify_udf
from soi_batch.spark.worker import worker_state
from soi_batch.spark.write import write_results

__all__ = ["DEFAULT_TEXT_COL", "classify_df", "classify_udf", "gpu_resource_profile", "result_struct", "worker_state", "write_results"]
