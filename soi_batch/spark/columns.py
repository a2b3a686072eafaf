"""The Spark types of the result columns, and the DataFrame checks made before any job runs."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import pyarrow as pa

from soi_batch.errors import InputSchemaError
from soi_batch.schema import PROBABILITIES_SCHEMA, RESULT_SCHEMA
from soi_batch.tables import kept_columns

if TYPE_CHECKING:
    from pyspark.sql import DataFrame
    from pyspark.sql.types import StructType

log = logging.getLogger(__name__)


def result_struct(keep_probabilities: bool = False) -> StructType:
    """The Spark types of the appended result columns (derived from the Arrow result schema)."""
    from pyspark.sql.pandas.types import from_arrow_schema

    fields = list(RESULT_SCHEMA) + (list(PROBABILITIES_SCHEMA) if keep_probabilities else [])
    return from_arrow_schema(pa.schema(fields))


def output_schema(df: DataFrame, keep_probabilities: bool) -> StructType:
    from pyspark.sql.types import StructType

    results = result_struct(keep_probabilities)
    fields = df.schema.fields
    kept = kept_columns(df.columns, results.names)  # the columns append_results keeps in each task
    if len(kept) < len(fields):
        log.warning("input columns %s are replaced by the classifier's result columns",
                    [f.name for i, f in enumerate(fields) if i not in kept])
    return StructType([fields[i] for i in kept] + results.fields)


def check_columns(df: DataFrame, text_col: str, id_col: str | None) -> None:
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
