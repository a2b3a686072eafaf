"""The result columns every path (CLI, Ray, Spark, nightly) appends to the input rows."""

from __future__ import annotations

import pyarrow as pa

TOP_K_TYPE = pa.list_(
    pa.struct([("code", pa.string()), ("title", pa.string()), ("prob", pa.float64())])
)

RESULT_SCHEMA = pa.schema(
    [
        ("source_code", pa.string()),
        ("source_title", pa.string()),
        ("confidence", pa.float64()),
        ("division_code", pa.string()),
        ("division_title", pa.string()),
        ("division_confidence", pa.float64()),
        ("major_group_code", pa.string()),
        ("major_group_title", pa.string()),
        ("major_group_confidence", pa.float64()),
        ("top_k", TOP_K_TYPE),
        ("needs_review", pa.bool_()),
        ("truncated", pa.bool_()),
        ("error", pa.string()),
        ("model_id", pa.string()),
        ("run_id", pa.string()),
        ("classified_at", pa.timestamp("us", tz="UTC")),
    ]
)

PROBABILITIES_SCHEMA = pa.schema(
    [
        ("division_probs", pa.map_(pa.string(), pa.float64())),
        ("major_group_probs", pa.map_(pa.string(), pa.float64())),
    ]
)
"""Optional columns (``keep_probabilities``): the probability of every division and of every
major group above 1e-6, for probabilistic classify-and-count trend estimates."""
