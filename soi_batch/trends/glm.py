"""Trend tests: a quasi-Poisson GLM per code (x group) of per-period counts on time.

The model (statsmodels; Poisson family, scale estimated by Pearson chi2 / df, so
over-dispersion widens the interval) regresses the per-period expected counts on time in years
with ``log(reports)`` as offset: ``rate_ratio_per_year`` is the yearly multiplicative change of
the code's share of reports.  Because many codes are tested at once, ``q_value``
(Benjamini-Hochberg over all tests of one call) decides ``direction``.  The test assumes
independent periods; monthly data with strong seasonality or autocorrelation makes its p-values
optimistic; prefer ``by="quarter"`` or ``"year"`` then.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd


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
