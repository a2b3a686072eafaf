"""The input of a trend run: reading classified output, and turning it into arrays.

Classified output is read through the package's one format switch
(:func:`soi_batch.tables.inspect_input` and :func:`soi_batch.tables.read_table`); in CSV the
probability maps are JSON objects (``{"6": 0.91, "8": 0.05, ...}``) and are parsed here.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from soi_batch.errors import ConfigError, InputSchemaError
from soi_batch.tables import inspect_input, read_table

Period = Literal["month", "quarter", "year"]
TrendLevel = Literal["division", "major_group"]
PERIODS: dict[str, tuple[str, int]] = {"month": ("M", 12), "quarter": ("Q", 4), "year": ("Y", 1)}
"""``by`` -> (pandas period frequency, periods per year)."""
LEVELS: tuple[str, ...] = ("division", "major_group")
NAICS_SECTOR_COL = "naics_sector"
"""Name of the group column derived by ``naics_sector_from=...``."""
DEFAULT_NAICS_COL = "Primary NAICS"
_NAICS_SECTORS = {"31": "31-33", "32": "31-33", "33": "31-33", "44": "44-45", "45": "44-45",
                  "48": "48-49", "49": "48-49"}
NAICS_SECTOR_TITLES: dict[str, str] = {
    "11": "Agriculture, Forestry, Fishing and Hunting",
    "21": "Mining, Quarrying, and Oil and Gas Extraction",
    "22": "Utilities",
    "23": "Construction",
    "31-33": "Manufacturing",
    "42": "Wholesale Trade",
    "44-45": "Retail Trade",
    "48-49": "Transportation and Warehousing",
    "51": "Information",
    "52": "Finance and Insurance",
    "53": "Real Estate and Rental and Leasing",
    "54": "Professional, Scientific, and Technical Services",
    "55": "Management of Companies and Enterprises",
    "56": "Administrative and Support and Waste Management and Remediation Services",
    "61": "Educational Services",
    "62": "Health Care and Social Assistance",
    "71": "Arts, Entertainment, and Recreation",
    "72": "Accommodation and Food Services",
    "81": "Other Services (except Public Administration)",
    "92": "Public Administration",
}
"""The 20 sectors of NAICS 2022 (U.S. Census Bureau), by the codes :func:`naics_sector` gives."""
_MAP = pa.map_(pa.string(), pa.float64())


def needed_columns(
    *, date_col: str, level: TrendLevel, group_by: Sequence[str] = (), naics_sector_from: str | None = None
) -> list[str]:
    """The input columns :func:`soi_batch.trends.aggregate_trends` reads (``error`` is optional)."""
    cols = [date_col, f"{level}_code", f"{level}_probs", "error", *group_by]
    if naics_sector_from:
        cols.append(naics_sector_from)
    return list(dict.fromkeys(cols))


def read_classified(path: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """Read classified output: a Delta table directory, Parquet file/directory, or CSV.

    Only ``columns`` that exist are kept (missing ones are left for the caller to report).
    CSV columns are strings (codes keep their digits; empty fields become null) and the
    ``*_probs`` columns are parsed from JSON into ``map<string, double>``.
    """
    spec = inspect_input(path)
    table = read_table(spec)
    if columns is not None:
        table = table.select([c for c in columns if c in table.column_names])
    if spec.format != "csv":
        return table
    arrays = {}
    for name in table.column_names:
        values = table.column(name).to_pylist()
        if name.endswith("_probs"):
            arrays[name] = _json_maps(values, spec.path, name)
        else:
            arrays[name] = pa.array([v or None for v in values], type=pa.string())
    return pa.table(arrays)


def _json_maps(values: Sequence[str | None], path: str, name: str) -> pa.Array:
    maps = []
    for i, s in enumerate(values):
        if not s:
            maps.append(None)
            continue
        try:
            maps.append({str(k): float(v) for k, v in json.loads(s).items()})
        except (ValueError, AttributeError) as exc:
            raise InputSchemaError(
                f"{path}: column {name!r} row {i}: not a JSON object of code -> probability ({exc}); "
                "write probability maps to CSV as JSON, or use Parquet/Delta"
            ) from exc
    return pa.array(maps, type=_MAP)


def to_arrow(table: Any, columns: Sequence[str]) -> pa.Table:
    """A pyarrow Table with the ``columns`` that exist (pandas frames are converted)."""
    if isinstance(table, pa.Table):
        return table.select([c for c in columns if c in table.column_names])
    if isinstance(table, pd.DataFrame):
        cols = [c for c in columns if c in table.columns]
        arrays = {}
        for c in cols:
            s = table[c]
            if c.endswith("_probs") and s.dtype == object:
                arrays[c] = _pandas_maps(s, c)
            else:
                arrays[c] = pa.array(s, from_pandas=True)
        return pa.table(arrays)
    if hasattr(table, "__arrow_c_stream__"):
        return to_arrow(pa.table(table), columns)
    raise InputSchemaError(
        f"aggregate_trends: expected a pandas DataFrame or pyarrow Table, got {type(table).__name__}; "
        "for Spark use soi_batch.trends.trends_from_spark, for files read_classified(path)"
    )


def _pandas_maps(s: pd.Series, name: str) -> pa.Array:
    try:
        return pa.array(
            [None if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in s],
            type=_MAP,
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
        raise InputSchemaError(
            f"column {name!r}: expected dicts or lists of (code, probability) pairs ({exc})"
        ) from exc


def check_columns(tbl: pa.Table, cols: Sequence[str], *, code_col: str, prob_col: str) -> None:
    """Raise :class:`InputSchemaError` when the probabilities or another needed column are missing."""
    have = set(tbl.column_names)
    if prob_col not in have:
        raise InputSchemaError(
            f"column {prob_col!r} is missing: expected counts need every code's probability. "
            f"Classify with `soi-batch classify --keep-probabilities` (or keep_probabilities=True) "
            f"and aggregate that output. Arg-max counts alone are biased when the model is unsure."
        )
    missing = [c for c in cols if c not in have and c != "error"]
    if missing:
        raise InputSchemaError(f"missing column(s) {missing}; the table has {sorted(have)}")
    t = tbl.schema.field(prob_col).type
    if not pa.types.is_map(t):
        raise InputSchemaError(f"column {prob_col!r} has type {t}; expected map<string, double>")


def probability_matrix(probs: pa.ChunkedArray | pa.Array, codes: Sequence[str]) -> np.ndarray:
    """Dense ``[n_rows, len(codes)]`` float64 matrix from a ``map<string, double>`` column.

    Null maps give rows of NaN; keys that are not in ``codes`` raise :class:`InputSchemaError`.
    """
    chunks = probs.chunks if isinstance(probs, pa.ChunkedArray) else [probs]
    n = sum(len(c) for c in chunks)
    out = np.zeros((n, len(codes)), dtype=np.float64)
    index = {c: i for i, c in enumerate(codes)}
    as_list = pa.list_(pa.struct([("key", pa.string()), ("value", pa.float64())]))
    start = 0
    for chunk in chunks:
        lst = chunk.cast(as_list)  # MapArray lacks list kernels; the cast keeps slicing right
        parents = pc.list_parent_indices(lst).to_numpy(zero_copy_only=False) + start
        flat = lst.flatten()
        keys = flat.field("key").to_numpy(zero_copy_only=False)
        vals = flat.field("value").fill_null(0.0).to_numpy(zero_copy_only=False)
        if len(keys):
            uniq, inv = np.unique(keys.astype(str), return_inverse=True)
            unknown = [u for u in uniq if u not in index]
            if unknown:
                raise InputSchemaError(
                    f"probability column has codes that are not OIICS codes of this level: {unknown[:5]}"
                )
            cols = np.array([index[u] for u in uniq], dtype=np.int64)[inv]
            np.add.at(out, (parents, cols), vals)
        nulls = chunk.is_null().to_numpy(zero_copy_only=False)
        out[start + np.flatnonzero(nulls)] = np.nan
        start += len(chunk)
    return out


def parse_dates(col: pa.ChunkedArray, name: str, fmt: str | None) -> pd.Series:
    """Dates of column ``name`` as datetime64 (timezone dropped); empty or unparseable ones are NaT."""
    s = col.to_pandas()
    if pd.api.types.is_datetime64_any_dtype(s):
        return s.dt.tz_localize(None) if getattr(s.dt, "tz", None) is not None else s
    if s.dtype == object and len(s) and not isinstance(s.dropna().iloc[0] if s.notna().any() else "", str):
        return pd.to_datetime(s, errors="coerce")  # datetime.date objects from date32 columns
    s = s.astype("string").str.strip().replace("", pd.NA)
    try:
        if fmt is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "could not infer format" is expected
                return pd.to_datetime(s, errors="coerce", format="mixed")
        return pd.to_datetime(s, errors="coerce", format=fmt)
    except ValueError as exc:
        raise ConfigError(f"date_format={fmt!r} for column {name!r}: {exc}") from exc


def naics_sector(naics: pd.Series) -> pd.Series:
    """NAICS sector of 2-6 digit NAICS codes: the first two digits, with the official combined
    sectors ``31-33`` (manufacturing), ``44-45`` (retail) and ``48-49`` (transportation and
    warehousing).  Empty or non-numeric codes give ``"unknown"``."""
    s = naics.astype("string").str.strip().str.replace(r"\.0+$", "", regex=True)
    two = s.str.slice(0, 2)
    ok = two.str.fullmatch(r"\d\d").fillna(False).astype(bool)
    return two.where(ok, "unknown").map(lambda v: _NAICS_SECTORS.get(v, v)).astype(str)
