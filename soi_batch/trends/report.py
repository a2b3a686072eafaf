"""Write the outputs of a trend run: tables, PNG charts and one self-contained HTML report.

``write_trend_report(trends, tests, out_dir)`` writes

* ``trends.csv`` and ``trends.parquet``: the frame of :func:`soi_batch.trends.aggregate_trends`;
* ``trend_tests.csv``: the frame of :func:`soi_batch.trends.trend_tests`;
* ``charts/*.png``: per group, the top codes over time: expected count with its interval band
  against the arg-max count, and the same as shares of reports;
* ``summary.json``: parameters and what happened to the input rows;
* ``report.html``: all of the above in one file (charts embedded as base64 PNG, inline CSS, no
  scripts and no external assets), so it can be mailed or archived alone.

Charts are drawn with ``matplotlib.figure.Figure`` (no pyplot, no global backend switch).
"""

from __future__ import annotations

import base64
import html
import json
import logging
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from soi_batch.trends.data import NAICS_SECTOR_COL, NAICS_SECTOR_TITLES

log = logging.getLogger(__name__)
PNG_DPI = 150

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1150px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}th{background:#f0f0f0}
td:nth-child(-n+2),th:nth-child(-n+2){text-align:left}
.note{font-size:13px;color:#444;background:#f8f8f0;padding:8px 12px;border-left:3px solid #cc9}
img{max-width:100%;border:1px solid #ddd;margin:6px 0}
"""


def write_trend_report(
    trends: pd.DataFrame,
    tests: pd.DataFrame,
    out_dir: str | Path,
    *,
    top_codes: int = 6,
    max_groups: int = 4,
    source: str | None = None,
) -> dict[str, Path]:
    """Write tables, charts and ``report.html`` into ``out_dir``; return their paths by name.

    ``top_codes`` codes (largest expected total) are charted for each of the ``max_groups``
    groups with the most reports (all rows form one group when the run had no ``group_by``).
    """
    out = Path(out_dir)
    (out / "charts").mkdir(parents=True, exist_ok=True)
    params = dict(trends.attrs.get("params", {}))
    summary = dict(trends.attrs.get("input_summary", {}))
    groups = list(params.get("group_by", []))
    paths: dict[str, Path] = {}

    paths["trends_csv"] = out / "trends.csv"
    trends.to_csv(paths["trends_csv"], index=False)
    paths["trends_parquet"] = out / "trends.parquet"
    trends.to_parquet(paths["trends_parquet"], index=False)
    paths["trend_tests_csv"] = out / "trend_tests.csv"
    tests.to_csv(paths["trend_tests_csv"], index=False)

    charts: list[tuple[str, Path]] = []
    for key, part in _top_groups(trends, groups, max_groups):
        name = "charts/trend_" + (_slug(key) if groups else "all") + ".png"
        label = group_label(key)
        trend_figure(part, top_codes, params, label).savefig(out / name, dpi=PNG_DPI)
        charts.append((label, out / name))
    for i, (_, p) in enumerate(charts):
        paths[f"chart_{i}"] = p

    meta = {"generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": source, "params": params, "input_summary": summary,
            "test_method": tests.attrs.get("method", "")}
    paths["summary_json"] = out / "summary.json"
    paths["summary_json"].write_text(json.dumps(meta, indent=2, default=str))
    paths["report_html"] = out / "report.html"
    paths["report_html"].write_text(_html(trends, tests, charts, meta, groups), encoding="utf-8")
    log.info("trend report written to %s", paths["report_html"])
    return paths


def _top_groups(trends: pd.DataFrame, groups: list[str], max_groups: int) -> list[tuple[str, pd.DataFrame]]:
    if not groups:
        return [("all reports", trends)]
    size = trends.drop_duplicates([*groups, "period"]).groupby(groups)["reports"].sum()
    top = size.sort_values(ascending=False, kind="stable").head(max_groups).index
    out = []
    for key in top:
        key = key if isinstance(key, tuple) else (key,)
        mask = np.logical_and.reduce([trends[g] == k for g, k in zip(groups, key)])
        out.append((", ".join(f"{g}={k}" for g, k in zip(groups, key)), trends[mask]))
    return out


def group_label(key: str) -> str:
    """A group's label with NAICS sectors named: ``naics_sector=23`` -> ``naics_sector=23 (Construction)``."""
    return re.sub(rf"\b{NAICS_SECTOR_COL}=([0-9-]+)",
                  lambda m: f"{m.group(0)} ({NAICS_SECTOR_TITLES[m.group(1)]})" if m.group(1) in NAICS_SECTOR_TITLES
                  else m.group(0), key)


def trend_figure(part: pd.DataFrame, top_codes: int, params: dict[str, Any], label: str) -> Figure:
    """The ``top_codes`` codes of one group over time: counts (left) and shares (right), both from zero."""
    totals = part.groupby("code")["expected_count"].sum().sort_values(ascending=False, kind="stable")
    codes = list(totals.index[:top_codes])
    periods = sorted(part[["ordinal", "period"]].drop_duplicates().itertuples(index=False))
    pos = {o: i for i, (o, _) in enumerate(periods)}
    step = max(1, len(periods) // 8)
    level = params.get("level", "")
    nrows = max(1, len(codes))
    fig = Figure(figsize=(11, 2.1 * nrows + 1.4), layout="constrained")
    axes = fig.subplots(nrows, 2, squeeze=False, sharex=True)
    pct = round(100 * (1 - params.get("alpha", 0.05)))
    for row, code in enumerate(codes):
        d = part[part["code"] == code].sort_values("ordinal")
        x = d["ordinal"].map(pos).to_numpy()
        title = f"{code} {d['title'].iloc[0].capitalize()}"[:60]
        for col, (mid, lo, hi, arg, ylab) in enumerate([
            ("expected_count", "expected_lo", "expected_hi", "argmax_count", "reports"),
            ("share", "share_lo", "share_hi", "argmax_share", "share of reports"),
        ]):
            ax = axes[row][col]
            ax.fill_between(x, d[lo].to_numpy(), d[hi].to_numpy(), color="tab:blue", alpha=0.25, linewidth=0,
                            label=f"{pct}% interval")
            ax.plot(x, d[mid].to_numpy(), color="tab:blue", marker="o", ms=3, label="expected (sum of probabilities)")
            ax.plot(x, d[arg].to_numpy(), color="tab:orange", ls="--", marker="x", ms=3, label="arg-max count")
            ax.set_title(f"{title}: {'count' if col == 0 else 'share'}", fontsize=9)
            ax.set_ylabel(ylab, fontsize=8)
            ax.set_ylim(bottom=0)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            ax.set_xticks(range(0, len(periods), step), [p for _, p in periods][::step])
    fig.suptitle(f"{label}: top {len(codes)} {level.replace('_', ' ')} codes by {params.get('by', '')}",
                 fontsize=11)
    fig.legend(*axes[0][0].get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize=8)
    return fig


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", s).strip("_")[:80] or "group"


def _table(df: pd.DataFrame, floats: str = "{:.4g}") -> str:
    fmt = {c: (lambda v, f=floats: "" if pd.isna(v) else f.format(v))
           for c in df.columns if pd.api.types.is_float_dtype(df[c])}
    return df.to_html(index=False, escape=True, formatters=fmt, border=0, na_rep="")


def _html(trends: pd.DataFrame, tests: pd.DataFrame, charts: list[tuple[str, Path]],
          meta: dict[str, Any], groups: list[str]) -> str:
    e = html.escape
    p, s = meta["params"], meta["input_summary"]
    pct = round(100 * (1 - p.get("alpha", 0.05)))
    shown = tests.copy()
    if not shown.empty:
        shown = shown.sort_values(["q_value", "expected_total"], ascending=[True, False], na_position="last")
    if not shown.empty:
        shown["title"] = shown["title"].str.capitalize()
        shown["rate ratio / year (CI)"] = [
            "" if pd.isna(r) else f"{r:.3g} ({lo:.3g}-{hi:.3g})"
            for r, lo, hi in zip(shown["rate_ratio_per_year"], shown["rr_lo"], shown["rr_hi"])]
    cols = [*groups, "code", "title", "n_periods", "expected_total", "argmax_total", "rate ratio / year (CI)",
            "p_value", "q_value", "direction", "direction_argmax", "note"]
    shown = shown[[c for c in cols if c in shown.columns]].head(60)
    if NAICS_SECTOR_COL in shown.columns:
        shown[NAICS_SECTOR_COL] = [f"{v} {NAICS_SECTOR_TITLES[v]}" if v in NAICS_SECTOR_TITLES else v
                                   for v in shown[NAICS_SECTOR_COL]]
    totals = (trends.groupby(["code", "title"], as_index=False)[["argmax_count", "expected_count"]].sum()
              .sort_values("expected_count", ascending=False))
    totals["title"] = totals["title"].str.capitalize()
    totals["argmax - expected"] = totals["argmax_count"] - totals["expected_count"]
    imgs = "".join(
        f"<h3>{e(label)}</h3><img alt=\"{e(label)}\" src=\"data:image/png;base64,"
        f"{base64.b64encode(path.read_bytes()).decode('ascii')}\">" for label, path in charts)
    params_rows = "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in p.items())
    summary_rows = "".join(f"<tr><th>{e(str(k))}</th><td>{e(str(v))}</td></tr>" for k, v in s.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Injury-source trends</title>
<style>{_CSS}</style></head><body>
<h1>Injury-source trends ({e(str(p.get('level', '')).replace('_', ' '))}, by {e(str(p.get('by', '')))})</h1>
<p>Source: {e(str(meta.get('source') or 'in-memory table'))}. Generated {e(meta['generated_at'])}.</p>
<div class="note"><b>How to read this.</b> <i>Arg-max count</i> counts reports whose most likely
code is the code (classify and count); it is biased towards frequent codes when the model is unsure.
<i>Expected count</i> sums each report's calibrated probability of the code (probabilistic classify and
count); it is unbiased <i>only if</i> the probabilities are calibrated. Bands are {pct}% percentile
intervals of a Poisson bootstrap over reports ({e(str(p.get('n_boot', '')))} replicates, seed
{e(str(p.get('seed', '')))}): the count band is for the period's rate of such reports, the share band for
their prevalence among reports. They do not include error from miscalibration.
Trend test: {e(meta.get('test_method', ''))}. It treats periods as independent; seasonality or
autocorrelation in monthly data makes p-values optimistic.</div>
<h2>Input</h2><table>{summary_rows}</table>
<h2>Parameters</h2><table>{params_rows}</table>
<h2>Trend tests</h2><p>Sorted by q-value; at most 60 rows here, all in <code>trend_tests.csv</code>.</p>
{_table(shown)}
<h2>Totals over all periods{' and groups' if groups else ''}</h2>{_table(totals)}
<h2>Charts</h2>{imgs}
</body></html>
"""
