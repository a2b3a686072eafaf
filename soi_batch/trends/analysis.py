"""Injury-source trends over time from classified reports, with honest uncertainty.

Two estimates per period x code (x group):

* ``argmax_count``: classify and count, the number of reports whose arg-max code is the code.
  It is biased when the model is unsure: probability mass of uncertain reports is handed to
  whichever code wins, usually the frequent ones, so rare codes are under-counted.
* ``expected_count``: probabilistic classify and count, the sum over reports of the calibrated
  probability of the code.  When the probabilities are calibrated, its expectation is the true
  number of reports of that code.  It needs the probability columns ``division_probs`` /
  ``major_group_probs`` that ``soi-batch classify --keep-probabilities`` writes.

Intervals come from a Poisson bootstrap over reports (every report gets an independent
Poisson(1) weight in every replicate; Hanley & MacGibbon 2006; Chamandy et al. 2012).  It treats
the reports of a period as a draw from a reporting process, so

* the ``expected_lo/hi`` interval is for the *rate* of reports of the code in that period
  (reporting volume varies too), and
* the ``share_lo/hi`` interval (ratio of weighted sums) is for the code's *prevalence* among
  reports of that period.

Neither interval includes model error beyond what calibration accounts for: if the
probabilities are miscalibrated, both estimates are biased and the intervals do not cover.

The trend test per code (and group) is a quasi-Poisson GLM (statsmodels; Poisson family, scale
estimated by Pearson chi2 / df, so over-dispersion widens the interval) of the per-period
expected counts on time in years with ``log(reports)`` as offset: ``rate_ratio_per_year`` is the
yearly multiplicative change of the code's share of reports.  Because many codes are tested at
once, ``q_value`` (Benjamini-Hochberg over all tests of one call) decides ``direction``.  The
test assumes independent periods; monthly data with strong seasonality or autocorrelation makes
its p-values optimistic; prefer ``by="quarter"`` or ``"year"`` then.

Inputs: a pandas DataFrame or pyarrow Table holding ``<level>_code``, ``<level>_probs``, the date
column, ``error`` (optional) and any group columns, or a path read by :func:`read_classified`.
Spark DataFrames go through :func:`trends_from_spark`.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from tqdm.auto import tqdm

from soi_batch.errors import ConfigError, InputReadError, InputSchemaError
from soi_batch.taxonomy import load_taxonomy

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame as SparkDataFrame

log = logging.getLogger(__name__)

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


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------


def needed_columns(
    *, date_col: str, level: TrendLevel, group_by: Sequence[str] = (), naics_sector_from: str | None = None
) -> list[str]:
    """The input columns :func:`aggregate_trends` reads (``error`` is optional)."""
    cols = [date_col, f"{level}_code", f"{level}_probs", "error", *group_by]
    if naics_sector_from:
        cols.append(naics_sector_from)
    return list(dict.fromkeys(cols))


def read_classified(path: str | Path, columns: Sequence[str] | None = None) -> pa.Table:
    """Read classified output: a Delta table directory, Parquet file/directory, or CSV.

    Only ``columns`` that exist are read (missing ones are left for the caller to report).
    In CSV the probability maps are JSON objects (``{"6": 0.91, "8": 0.05, ...}``); every CSV
    column is read as a string so codes keep their digits.
    """
    p = Path(path)
    if not p.exists():
        raise InputReadError(f"{p}: no such file or directory; pass the output of `soi-batch classify`")
    try:
        if p.is_dir() and (p / "_delta_log").is_dir():
            from deltalake import DeltaTable

            dt = DeltaTable(str(p))
            names = [f.name for f in dt.schema().fields]
            cols = [c for c in columns if c in names] if columns is not None else None
            return dt.to_pyarrow_table(columns=cols)
        if p.suffix.lower() in (".csv", ".txt") or p.name.lower().endswith(".csv.gz"):
            return _read_csv(p, columns)
        import pyarrow.dataset as ds

        dataset = ds.dataset(str(p), format="parquet")
        cols = [c for c in columns if c in dataset.schema.names] if columns is not None else None
        return dataset.to_table(columns=cols)
    except (InputReadError, InputSchemaError):
        raise
    except Exception as exc:  # any reader failure becomes one clear error
        raise InputReadError(
            f"{p}: cannot read as Delta, Parquet or CSV ({type(exc).__name__}: {exc})"
        ) from exc


def _read_csv(p: Path, columns: Sequence[str] | None) -> pa.Table:
    header = pd.read_csv(p, nrows=0, dtype=str, encoding="utf-8")
    cols = [c for c in columns if c in header.columns] if columns is not None else None
    df = pd.read_csv(p, usecols=cols, dtype=str, keep_default_na=False, encoding="utf-8")
    out: dict[str, pa.Array] = {}
    for name in df.columns:
        if name.endswith("_probs"):
            out[name] = _json_maps(df[name], p, name)
        else:
            out[name] = pa.array(df[name].replace("", None), type=pa.string())
    return pa.table(out)


def _json_maps(col: pd.Series, p: Path, name: str) -> pa.Array:
    values = []
    for i, s in enumerate(col):
        if not s:
            values.append(None)
            continue
        try:
            values.append({str(k): float(v) for k, v in json.loads(s).items()})
        except (ValueError, AttributeError) as exc:
            raise InputSchemaError(
                f"{p}: column {name!r} row {i}: not a JSON object of code -> probability ({exc}); "
                "write probability maps to CSV as JSON, or use Parquet/Delta"
            ) from exc
    return pa.array(values, type=pa.map_(pa.string(), pa.float64()))


def _to_arrow(table: Any, columns: Sequence[str]) -> pa.Table:
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
        return _to_arrow(pa.table(table), columns)
    raise InputSchemaError(
        f"aggregate_trends: expected a pandas DataFrame or pyarrow Table, got {type(table).__name__}; "
        "for Spark use soi_batch.trends.trends_from_spark, for files read_classified(path)"
    )


def _pandas_maps(s: pd.Series, name: str) -> pa.Array:
    try:
        return pa.array(
            [None if v is None or (isinstance(v, float) and np.isnan(v)) else v for v in s],
            type=pa.map_(pa.string(), pa.float64()),
        )
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
        raise InputSchemaError(
            f"column {name!r}: expected dicts or lists of (code, probability) pairs ({exc})"
        ) from exc


# --------------------------------------------------------------------------------------------
# probabilities
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# bootstrap
# --------------------------------------------------------------------------------------------


_TABLE_BITS = 16


def _poisson1_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(CDF of Poisson(1), value of each slice, whether the slice straddles a CDF step)."""
    from scipy.stats import poisson

    cdf = poisson.cdf(np.arange(40), 1.0)
    cdf = cdf[: int(np.searchsorted(cdf, 1.0)) + 1]  # up to the first value that rounds to 1
    edges = np.arange(2**_TABLE_BITS + 1) / 2**_TABLE_BITS
    lo = np.searchsorted(cdf, edges[:-1], side="right")
    hi = np.searchsorted(cdf, edges[1:], side="left")
    return cdf, lo.astype(np.float32), lo != hi


_POISSON1 = _poisson1_tables()


def poisson1_weights(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Exact Poisson(1) draws as float32, ~5x faster than ``rng.poisson(1.0, shape)``.

    Inverse-CDF sampling in two steps: 16 random bits pick one of 65,536 equal slices of
    [0, 1); a slice that lies inside one step of the Poisson(1) CDF gives its value from a
    table, and the few slices that straddle a step (8 of 65,536) draw a uniform within the
    slice and invert the CDF exactly.  (``rng.poisson`` costs ~65 ns a draw, which made the
    1e8 draws of a 100k-row, 1000-replicate bootstrap take ~7 s.)
    """
    cdf, value, straddles = _POISSON1
    bits = rng.integers(0, 2**_TABLE_BITS, size=shape, dtype=np.uint16).ravel()
    w = value[bits]
    mixed = np.flatnonzero(straddles[bits])
    if len(mixed):
        u = (bits[mixed] + rng.random(len(mixed))) / 2**_TABLE_BITS
        w[mixed] = np.searchsorted(cdf, u, side="right")
    return w.reshape(shape)


def poisson_bootstrap(
    probs: np.ndarray,
    cell: np.ndarray,
    n_cells: int,
    *,
    n_boot: int,
    alpha: float,
    rng: np.random.Generator,
    block_rows: int = 4096,
    max_batch_values: int = 20_000_000,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Percentile intervals of per-cell sums of ``probs`` and of shares, by Poisson bootstrap.

    ``probs`` is ``[n, K]``, ``cell[i]`` the cell of row ``i`` (``0 <= cell < n_cells``).  In each
    of ``n_boot`` replicates every row gets an independent Poisson(1) weight; the replicate's
    count of code k in cell c is the weighted sum of ``probs[:, k]`` over the cell's rows and its
    share that sum over the cell's total weight.  Returns ``count_lo``, ``count_hi``,
    ``share_lo``, ``share_hi``, each ``[n_cells, K]``.

    Work: cells are taken in batches of consecutive cells (at most ``block_rows`` rows, or one
    larger cell cut into blocks of ``block_rows``); per block one ``[n_boot, rows]`` weight matrix
    times the block's probabilities laid out per cell (a sparse ``[rows, cells x K]`` matrix), so
    many small cells (state x sector x month) cost no Python loop each.  At most
    ``max_batch_values`` replicate values (``n_boot x cells x K``) are held at once.
    """
    from scipy import sparse

    _, k = probs.shape
    q = np.array([alpha / 2, 1 - alpha / 2])
    out = {name: np.full((n_cells, k), np.nan) for name in ("count_lo", "count_hi", "share_lo", "share_hi")}
    order = np.argsort(cell, kind="stable")
    bounds = np.searchsorted(cell[order], np.arange(n_cells + 1))
    sizes = np.diff(bounds)
    p32 = probs.astype(np.float32)
    max_cells = max(1, max_batch_values // (n_boot * k))
    bar = tqdm(total=n_cells, desc="bootstrap", unit="cell", disable=not progress)
    c0 = 0
    while c0 < n_cells:
        c1 = c0 + 1  # grow the batch while it stays small
        while c1 < n_cells and c1 - c0 < max_cells and bounds[c1 + 1] - bounds[c0] <= block_rows:
            c1 += 1
        m = c1 - c0
        rows = order[bounds[c0] : bounds[c1]]
        local = np.repeat(np.arange(m), sizes[c0:c1])
        sums = np.zeros((n_boot, m * k), dtype=np.float64)
        weight = np.zeros((n_boot, m), dtype=np.float64)
        for b0 in range(0, len(rows), block_rows):
            blk, loc = rows[b0 : b0 + block_rows], local[b0 : b0 + block_rows]
            w = poisson1_weights(rng, (n_boot, len(blk)))
            if m == 1:
                sums += w @ p32[blk]
                weight[:, 0] += w.sum(axis=1)
                continue
            nb = len(blk)
            spread = sparse.csr_matrix(
                (p32[blk].ravel(), (np.repeat(np.arange(nb), k), (loc[:, None] * k + np.arange(k)).ravel())),
                shape=(nb, m * k))
            member = sparse.csr_matrix((np.ones(nb, np.float32), (np.arange(nb), loc)), shape=(nb, m))
            sums += (spread.T @ w.T).T
            weight += (member.T @ w.T).T
        sums3 = sums.reshape(n_boot, m, k)
        cnt = np.quantile(sums3, q, axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            shares = sums3 / weight[:, :, None]
        shr = np.quantile(shares, q, axis=0)
        # replicates that drew no report of a tiny cell have no share: leave them out there
        for j in np.flatnonzero((weight == 0).any(axis=0)):
            ok = weight[:, j] > 0
            shr[:, j] = np.quantile(shares[ok, j], q, axis=0) if ok.any() else np.nan
        out["count_lo"][c0:c1], out["count_hi"][c0:c1] = cnt
        out["share_lo"][c0:c1], out["share_hi"][c0:c1] = shr
        bar.update(m)
        c0 = c1
    bar.close()
    return out


# --------------------------------------------------------------------------------------------
# aggregation
# --------------------------------------------------------------------------------------------


def naics_sector(naics: pd.Series) -> pd.Series:
    """NAICS sector of 2-6 digit NAICS codes: the first two digits, with the official combined
    sectors ``31-33`` (manufacturing), ``44-45`` (retail) and ``48-49`` (transportation and
    warehousing).  Empty or non-numeric codes give ``"unknown"``."""
    s = naics.astype("string").str.strip().str.replace(r"\.0+$", "", regex=True)
    two = s.str.slice(0, 2)
    ok = two.str.fullmatch(r"\d\d").fillna(False).astype(bool)
    return two.where(ok, "unknown").map(lambda v: _NAICS_SECTORS.get(v, v)).astype(str)


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
    tbl = _to_arrow(table, cols)
    _check_columns(tbl, cols, code_col=code_col, prob_col=prob_col)

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

    dates = _parse_dates(tbl.column(date_col), date_col, date_format)
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


def _check_columns(tbl: pa.Table, cols: Sequence[str], *, code_col: str, prob_col: str) -> None:
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


def _parse_dates(col: pa.ChunkedArray, name: str, fmt: str | None) -> pd.Series:
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


# --------------------------------------------------------------------------------------------
# trend tests
# --------------------------------------------------------------------------------------------


def trend_tests(trends: pd.DataFrame, *, alpha: float | None = None, min_total: float = 10.0) -> pd.DataFrame:
    """Quasi-Poisson GLM trend test per code (x group) of a frame from :func:`aggregate_trends`.

    Model: ``count_t ~ Poisson-family(exp(b0 + b1 * years_t + log(reports_t)))`` with the scale
    estimated from Pearson chi2 (statsmodels ``GLM(...).fit(scale="X2")``).  Fitted on the
    expected counts (``rate_ratio_per_year``, ``rr_lo/hi``, ``p_value``, ``q_value``,
    ``direction``) and, for comparison, on the arg-max counts (``*_argmax``).  ``q_value`` is
    Benjamini-Hochberg over all tests of the frame; ``direction`` is ``"increasing"`` or
    ``"decreasing"`` when ``q_value < alpha``, else ``"no significant trend"``.  Tests with fewer
    than 3 periods with reports, or less than ``min_total`` expected reports in all (the GLM's
    dispersion estimate degenerates on a handful of reports), get NaN and ``note``.
    """
    import statsmodels.api as sm
    from statsmodels.stats.multitest import multipletests

    params = trends.attrs.get("params", {})
    alpha = params.get("alpha", 0.05) if alpha is None else alpha
    per_year = params.get("periods_per_year", 12)
    groups = list(params.get("group_by", []))
    rows = []
    for key, part in trends.groupby([*groups, "code"], sort=True):
        part = part[part["reports"] > 0].sort_values("ordinal")
        rec: dict[str, Any] = dict(zip([*groups, "code"], key if isinstance(key, tuple) else (key,)))
        rec.update(title=part["title"].iloc[0] if len(part) else "", n_periods=len(part),
                   reports=int(part["reports"].sum()), expected_total=float(part["expected_count"].sum()),
                   argmax_total=int(part["argmax_count"].sum()))
        years = (part["ordinal"].to_numpy() - part["ordinal"].min()) / per_year
        for col, suffix in (("expected_count", ""), ("argmax_count", "_argmax")):
            rec.update(_glm(sm, part[col].to_numpy(float), part["reports"].to_numpy(float), years, alpha, suffix,
                            min_total))
        rows.append(rec)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    for suffix in ("", "_argmax"):
        p = out[f"p_value{suffix}"]
        q = np.full(len(out), np.nan)
        ok = p.notna().to_numpy()
        if ok.any():
            q[ok] = multipletests(p[ok].to_numpy(), alpha=alpha, method="fdr_bh")[1]
        out[f"q_value{suffix}"] = q
        sig = out[f"q_value{suffix}"] < alpha
        up = out[f"rate_ratio_per_year{suffix}"] > 1
        out[f"direction{suffix}"] = np.where(sig & up, "increasing",
                                             np.where(sig & ~up, "decreasing", "no significant trend"))
    order = [*groups, "code", "title", "n_periods", "reports", "expected_total", "argmax_total",
             "rate_ratio_per_year", "rr_lo", "rr_hi", "p_value", "q_value", "direction", "dispersion",
             "rate_ratio_per_year_argmax", "p_value_argmax", "q_value_argmax", "direction_argmax", "note"]
    out["note"] = out["note"].fillna("") if "note" in out else ""
    out.attrs["method"] = ("quasi-Poisson GLM of per-period counts on time (years), offset log(reports); "
                           f"Benjamini-Hochberg q < {alpha}")
    return out[order]


def _glm(sm: Any, y: np.ndarray, reports: np.ndarray, years: np.ndarray, alpha: float, suffix: str,
         min_total: float) -> dict:
    nan = float("nan")
    res = {f"rate_ratio_per_year{suffix}": nan, f"p_value{suffix}": nan}
    if suffix == "":
        res.update(rr_lo=nan, rr_hi=nan, dispersion=nan)
    if len(y) < 3:
        return res | ({"note": "fewer than 3 periods"} if suffix == "" else {})
    if y.sum() < min_total:
        return res | ({"note": f"fewer than {min_total:g} reports in all"} if suffix == "" else {})
    x = sm.add_constant(years, has_constant="add")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit = sm.GLM(y, x, family=sm.families.Poisson(), offset=np.log(reports)).fit(scale="X2")
    except Exception as exc:  # noqa: BLE001 - a failed fit is reported, not fatal
        return res | ({"note": f"fit failed: {type(exc).__name__}"} if suffix == "" else {})
    b, p = float(fit.params[1]), float(fit.pvalues[1])
    res[f"rate_ratio_per_year{suffix}"] = float(np.exp(b))
    res[f"p_value{suffix}"] = p
    if suffix == "":
        lo, hi = fit.conf_int(alpha=alpha)[1]
        res.update(rr_lo=float(np.exp(lo)), rr_hi=float(np.exp(hi)), dispersion=float(fit.scale))
    return res


# --------------------------------------------------------------------------------------------
# Spark
# --------------------------------------------------------------------------------------------


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
