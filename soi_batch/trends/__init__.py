"""Injury-source trends over time from classified reports, with honest uncertainty.

One module per job:

* :mod:`~soi_batch.trends.data`: reading classified output (Delta, Parquet, CSV) and turning its
  columns into arrays (probability matrix, dates, NAICS sectors);
* :mod:`~soi_batch.trends.aggregate`: per period x code (x group) arg-max and expected counts;
* :mod:`~soi_batch.trends.bootstrap`: their Poisson-bootstrap intervals;
* :mod:`~soi_batch.trends.glm`: the quasi-Poisson trend test per code, Benjamini-Hochberg q-values;
* :mod:`~soi_batch.trends.spark`: the same aggregation on a Spark DataFrame;
* :mod:`~soi_batch.trends.report`: tables, charts and one self-contained HTML report.

Inputs: a pandas DataFrame or pyarrow Table holding ``<level>_code``, ``<level>_probs``, the date
column, ``error`` (optional) and any group columns, or a path read by :func:`read_classified`.
Spark DataFrames go through :func:`trends_from_spark`.
"""

from soi_batch.trends.aggregate import TrendInputSummary, aggregate_trends
from soi_batch.trends.bootstrap import poisson1_weights, poisson_bootstrap
from soi_batch.trends.data import (
    DEFAULT_NAICS_COL,
    LEVELS,
    NAICS_SECTOR_COL,
    PERIODS,
    Period,
    TrendLevel,
    naics_sector,
    needed_columns,
    probability_matrix,
    read_classified,
)
from soi_batch.trends.glm import trend_tests
from soi_batch.trends.report import write_trend_report
from soi_batch.trends.spark import trends_from_spark

__all__ = [
    "DEFAULT_NAICS_COL",
    "LEVELS",
    "NAICS_SECTOR_COL",
    "PERIODS",
    "Period",
    "TrendInputSummary",
    "TrendLevel",
    "aggregate_trends",
    "naics_sector",
    "needed_columns",
    "poisson1_weights",
    "poisson_bootstrap",
    "probability_matrix",
    "read_classified",
    "trend_tests",
    "trends_from_spark",
    "write_trend_report",
]
