"""Trends of a Spark DataFrame of classified rows: select the needed columns, collect, aggregate."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from soi_batch.errors import ConfigError
from soi_batch.trends.aggregate import aggregate_trends
from soi_batch.trends.data import needed_columns

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame as SparkDataFrame


def trends_from_spark(df: SparkDataFrame, **kwargs: Any) -> pd.DataFrame:
    """:func:`aggregate_trends` on a Spark DataFrame of classified rows.

    Selects only the columns the aggregation needs (:func:`needed_columns`), collects them to the
    driver through Arrow and aggregates there.  With PySpark >= 4.0 this uses
    ``df.select(...).toArrow()``, which always goes through Arrow and keeps
    ``map<string, double>`` columns as Arrow maps.  On older PySpark it falls back to
    ``df.select(...).toPandas()``, which is only fast when the session has
    ``spark.sql.execution.arrow.pyspark.enabled=true``: set it yourself, this function does not
    change Spark settings and never starts a session.

    Memory on the driver: about ``rows x (K x 16 bytes)``; 1M rows at division level is ~150 MB.
    Keyword arguments are those of :func:`aggregate_trends` (``date_col`` is required).
    """
    if "date_col" not in kwargs:
        raise ConfigError("trends_from_spark: date_col is required")
    cols = needed_columns(date_col=kwargs["date_col"], level=kwargs.get("level", "division"),
                          group_by=kwargs.get("group_by", ()), naics_sector_from=kwargs.get("naics_sector_from"))
    present = [c for c in cols if c in df.columns]
    selected = df.select(*present)
    table = selected.toArrow() if hasattr(selected, "toArrow") else selected.toPandas()
    return aggregate_trends(table, **kwargs)
