"""Writing a classified Spark DataFrame as Parquet or Delta."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from soi_batch.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

log = logging.getLogger(__name__)

_DELTA_EXTENSION = "io.delta.sql.DeltaSparkSessionExtension"


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
