"""GPU scheduling for Spark tasks: one task per GPU through a stage-level ``ResourceProfile``.

Either set ``spark.task.resource.gpu.amount=1`` for the whole application (with
``spark.executor.resource.gpu.amount`` and a discovery script), or let ``classify_df`` attach a
stage-level profile asking for ``gpus_per_task`` GPUs per task (standalone, YARN or Kubernetes;
local mode has no stage-level scheduling).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from soi_batch.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.resource import ResourceProfile
    from pyspark.sql import SparkSession


def gpu_resource_profile(spark: SparkSession, gpus_per_task: float = 1) -> ResourceProfile:
    """A stage-level profile asking for ``gpus_per_task`` GPUs (and ``spark.task.cpus`` CPUs) per task."""
    from pyspark.resource import ResourceProfileBuilder, TaskResourceRequests

    cpus = int(spark.conf.get("spark.task.cpus", "1") or 1)
    requests = TaskResourceRequests().cpus(cpus).resource("gpu", gpus_per_task)
    return ResourceProfileBuilder().require(requests).build


def wanted_gpus_per_task(spark: SparkSession, gpus_per_task: float | None) -> float:
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
