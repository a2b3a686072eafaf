"""Per period x code (x group) counts of classified reports, with bootstrap intervals.

Two estimates per cell:

* ``argmax_count``: classify and count, the number of reports whose arg-max code is the code.
  It is biased when the model is unsure: probability mass of uncertain reports is handed to
  whichever code wins, usually the frequent ones, so rare codes are under-counted.
* ``expected_count``: probabilistic classify and count, the sum over reports of the calibrated
  probability of the code.  When the probabilities are calibrated, its expectation is the true
  number of reports of that code.  It needs the probability columns ``division_probs`` /
  ``major_group_probs`` that ``soi-batch classify --keep-probabilities`` writes.

Intervals: :func:`soi_batch.trends.bootstrap.poisson_bootstrap`.  If the probabilities are
miscalibrated, both estimates are biased and the intervals do not cover.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from soi_batch.errors import ConfigError, InputSchemaError
from soi_batch.taxonomy import load_taxonomy
from soi_batch.trends.bootstrap import poisson_bootstrap
from soi_batch.trends.data import (
    LEVELS,
    NAICS_SECTOR_COL,
    PERIODS,
    Period,
    TrendLevel,
    check_columns,
    naics_sector,
    needed_columns,
    parse_dates,
    probability_matrix,
    to_arrow,
)

log = logging.getLogger(__name__)
_PROB_SUM_TOL = 1e-3


@dataclass
class TrendInputSummary:
    """What happened to the input rows (kept in ``DataFrame.attrs["input_summary"]``)."""

    rows_in: int = 0
    rows_used: int = 0
    rows_error: int = 0
    """Rows with ``error`` set: excluded."""
    rows_missing_probabilities: int = 0
    """Rows without an error but with a null probability map: excluded."""
    rows_bad_date: int = 0
    """Rows whose date is empty or cannot be parsed: excluded."""
    rows_prob_sum_off: int = 0
    """Used rows whose probabilities do not sum to 1 within 1e-3 (kept; their missing mass is
    in no code, so expected counts are low by that mass)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        d.update(self.extra)
        return d


def aggregate_trends(
    table: Any,
    *,
    date_col: str,
    by: Period = "month",
    level: TrendLevel = "division",
    group_by: Sequence[str] = (),
    naics_sector_from: str | None = None,
    date_format: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    progress: bool = False,
) -> pd.DataFrame:
    """Per period x code (x group) counts of classified reports with bootstrap intervals.

    Parameters
    ----------
    table:
        Classified rows (pandas DataFrame or pyarrow Table) with ``<level>_code``,
        ``<level>_probs`` (``map<string, double>``), ``date_col``, optional ``error`` and the
        ``group_by`` columns.
    by:
        Period length: ``"month"``, ``"quarter"`` or ``"year"``.
    level:
        ``"division"`` (9 codes) or ``"major_group"`` (78 codes).
    group_by:
        Extra columns to split by, e.g. ``("State",)``.
    naics_sector_from:
        Name of a NAICS column (e.g. ``"Primary NAICS"``); adds the group column
        ``naics_sector`` (see :func:`naics_sector`).
    date_format:
        ``strftime`` format of a string date column (e.g. ``"%m/%d/%Y"``); ``None`` lets pandas
        infer it.  Rows whose date is empty or unparseable are excluded and counted.

    Returns one row per group x period x code with ``reports`` (used rows in the period and
    group), ``argmax_count``, ``expected_count``, ``expected_lo/hi``, ``share``
    (``expected_count / reports``), ``share_lo/hi``, ``argmax_share``, plus ``period``
    (string), ``period_start`` (timestamp) and ``title``.  Every code of the level appears for
    every observed period x group.  ``df.attrs["input_summary"]`` counts excluded rows (error,
    no probabilities, bad date) and ``df.attrs["params"]`` records the call.
    """
    if by not in PERIODS:
        raise ConfigError(f"by={by!r}: expected one of {sorted(PERIODS)}")
    if level not in LEVELS:
        raise ConfigError(f"level={level!r}: expected one of {list(LEVELS)} (trends use these levels)")
    if not 0 < alpha < 1:
        raise ConfigError(f"alpha={alpha}: expected 0 < alpha < 1")
    if n_boot < 10:
        raise ConfigError(f"n_boot={n_boot}: use at least 10 bootstrap replicates (1000 for reports)")
    group_by = list(group_by)
    code_col, prob_col = f"{level}_code", f"{level}_probs"
    cols = needed_columns(date_col=date_col, level=level, group_by=group_by, naics_sector_from=naics_sector_from)
    tbl = to_arrow(table, cols)
    check_columns(tbl, cols, code_col=code_col, prob_col=prob_col)

    summary = TrendInputSummary(rows_in=tbl.num_rows)
    taxonomy = load_taxonomy()
    codes = sorted(c for c, lv in taxonomy.levels.items() if lv == level)
    titles = {c: taxonomy.titles[c] for c in codes}

    keep = np.ones(tbl.num_rows, dtype=bool)
    if "error" in tbl.column_names:
        err = tbl.column("error")
        if pa.types.is_string(err.type) or pa.types.is_large_string(err.type):
            has_err = pc.fill_null(pc.not_equal(err, ""), False)
        else:
            has_err = pc.is_valid(err)
        has_err = has_err.to_numpy(zero_copy_only=False).astype(bool)
        summary.rows_error = int(has_err.sum())
        keep &= ~has_err

    probs = probability_matrix(tbl.column(prob_col), codes)
    no_prob = np.isnan(probs).any(axis=1) & keep
    summary.rows_missing_probabilities = int(no_prob.sum())
    keep &= ~no_prob

    dates = parse_dates(tbl.column(date_col), date_col, date_format)
    bad_date = dates.isna().to_numpy() & keep
    summary.rows_bad_date = int(bad_date.sum())
    keep &= ~bad_date

    for name, n_bad in (("with error set", summary.rows_error),
                        ("without probabilities", summary.rows_missing_probabilities),
                        (f"with empty or unparseable {date_col!r}", summary.rows_bad_date)):
        if n_bad:
            log.warning("trends: excluded %d of %d rows %s", n_bad, tbl.num_rows, name)
    if not keep.any():
        raise InputSchemaError(
            f"no usable rows: {summary.as_dict()}; check the error column, {prob_col!r} "
            f"and the date column {date_col!r} (date_format={date_format!r})"
        )

    idx = np.flatnonzero(keep)
    probs = probs[idx]
    row_sum = probs.sum(axis=1)
    summary.rows_prob_sum_off = int((np.abs(row_sum - 1) > _PROB_SUM_TOL).sum())
    if summary.rows_prob_sum_off:
        log.warning("trends: %d rows have %s summing to other than 1 (+-%g); their missing mass is "
                    "in no code", summary.rows_prob_sum_off, prob_col, _PROB_SUM_TOL)
    summary.rows_used = len(idx)

    freq, per_year = PERIODS[by]
    frame = pd.DataFrame({"__period": dates.iloc[idx].dt.to_period(freq).to_numpy()})
    for g in group_by:
        frame[g] = tbl.column(g).to_pandas().iloc[idx].astype("string").fillna("unknown").to_numpy()
    if naics_sector_from:
        frame[NAICS_SECTOR_COL] = naics_sector(tbl.column(naics_sector_from).to_pandas().iloc[idx]).to_numpy()
    keys = [*group_by, *([NAICS_SECTOR_COL] if naics_sector_from else []), "__period"]
    cell = frame.groupby(keys, sort=True, observed=True).ngroup().to_numpy()
    cells = frame.groupby(keys, sort=True, observed=True).size().reset_index(name="reports")
    n_cells = len(cells)

    arg = tbl.column(code_col).to_numpy(zero_copy_only=False)[idx].astype(object)
    code_index = {c: i for i, c in enumerate(codes)}
    arg_i = np.array([code_index.get(a, -1) if a is not None else -1 for a in arg], dtype=np.int64)
    bad_arg = arg_i < 0
    if bad_arg.any():
        raise InputSchemaError(
            f"column {code_col!r} has {int(bad_arg.sum())} used rows whose code is not a "
            f"{level} code, e.g. {sorted({str(a) for a in arg[bad_arg]})[:5]}"
        )
    k = len(codes)
    expected = np.zeros((n_cells, k))
    np.add.at(expected, cell, probs)
    argmax = np.zeros((n_cells, k), dtype=np.int64)
    np.add.at(argmax, (cell, arg_i), 1)

    boot = poisson_bootstrap(probs, cell, n_cells, n_boot=n_boot, alpha=alpha,
                             rng=np.random.default_rng(seed), progress=progress)

    reports = cells["reports"].to_numpy()
    out = cells.loc[np.repeat(np.arange(n_cells), k)].reset_index(drop=True)
    cell_periods = pd.PeriodIndex(cells["__period"])
    out.insert(len(keys) - 1, "period", np.repeat(cell_periods.astype(str).to_numpy(), k))
    out["period_start"] = np.repeat(cell_periods.start_time.to_numpy(), k)
    out["ordinal"] = np.repeat(cell_periods.asi8, k).astype(np.int64)
    out = out.drop(columns="__period")
    out["code"] = np.tile(np.array(codes, dtype=object), n_cells)
    out["title"] = out["code"].map(titles)
    out["argmax_count"] = argmax.ravel()
    out["expected_count"] = expected.ravel()
    out["expected_lo"] = boot["count_lo"].ravel()
    out["expected_hi"] = boot["count_hi"].ravel()
    rep = np.repeat(reports, k)
    out["share"] = out["expected_count"] / rep
    out["share_lo"] = boot["share_lo"].ravel()
    out["share_hi"] = boot["share_hi"].ravel()
    out["argmax_share"] = out["argmax_count"] / rep
    out = out[[*keys[:-1], "period", "period_start", "ordinal", "code", "title", "reports", "argmax_count",
               "expected_count", "expected_lo", "expected_hi", "share", "share_lo", "share_hi",
               "argmax_share"]]
    out.attrs["input_summary"] = summary.as_dict()
    out.attrs["params"] = {"date_col": date_col, "by": by, "level": level,
                           "group_by": keys[:-1], "n_boot": n_boot, "seed": seed,
                           "alpha": alpha, "periods_per_year": per_year,
                           "interval": "Poisson bootstrap over reports, percentile"}
    return out

