"""Trend aggregation: bias of arg-max vs expected counts, interval coverage, real OSHA rows,
the CLI on Parquet and Delta, Spark, and classifier output."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from soi_batch.errors import ConfigError, InputSchemaError
from soi_batch.trends import (
    aggregate_trends,
    naics_sector,
    poisson1_weights,
    read_classified,
    trend_tests,
    trends_from_spark,
)
from soi_batch.trends.data import NAICS_SECTOR_TITLES
from soi_batch.trends.report import group_label, trend_figure

DIVISIONS = [str(i) for i in range(1, 10)]
PREVALENCE = np.array([0.05, 0.05, 0.15, 0.10, 0.05, 0.30, 0.10, 0.15, 0.05])
MAP = pa.map_(pa.string(), pa.float64())


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def simulate_calibrated(prevalence: np.ndarray, n: int, concentration: float,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """True classes and calibrated probability vectors with known prevalence.

    Draw the true class y ~ Categorical(pi), then p | y ~ Dirichlet(c * pi + e_y).  By
    Dirichlet-categorical conjugacy this is the posterior of y given p when p ~ Dirichlet(c * pi),
    so P(y = k | p) = p_k exactly: the probabilities are calibrated.  The classifier's prediction
    is argmax(p).  Small ``concentration`` means an unsure model.
    """
    k = len(prevalence)
    y = rng.choice(k, size=n, p=prevalence)
    g = rng.standard_gamma(concentration * prevalence[None, :] + np.eye(k)[y])
    return y, g / g.sum(axis=1, keepdims=True)


def classified_table(probs: np.ndarray, dates: np.ndarray, codes: list[str] = DIVISIONS,
                     **extra: pa.Array) -> pa.Table:
    n, k = probs.shape
    maps = pa.MapArray.from_arrays(pa.array(np.arange(0, n * k + 1, k, dtype=np.int32)),
                                   pa.array(np.tile(np.array(codes), n)), pa.array(probs.ravel()))
    return pa.table({"EventDate": pa.array(dates), "division_code": pa.array(np.array(codes)[probs.argmax(1)]),
                     "division_probs": maps, "error": pa.nulls(n, pa.string()), **extra})


def onehot_osha(osha: pd.DataFrame) -> pa.Table:
    """Real OSHA rows with one-hot probabilities from their true Source codes."""
    src = osha["Source"]
    return pa.table({
        "row_key": osha["row_key"], "EventDate": osha["EventDate"], "State": osha["State"],
        "Primary NAICS": osha["Primary NAICS"],
        "division_code": src.str[0], "division_probs": pa.array([[(s[0], 1.0)] for s in src], type=MAP),
        "major_group_code": src.str[:2], "major_group_probs": pa.array([[(s[:2], 1.0)] for s in src], type=MAP),
        "error": pa.nulls(len(osha), pa.string()),
    })


# ---------------------------------------------------------------------------------------------
# statistics on simulated data
# ---------------------------------------------------------------------------------------------


def test_expected_count_is_closer_to_truth_than_argmax() -> None:
    rng = np.random.default_rng(0)
    y, p = simulate_calibrated(PREVALENCE, 20_000, 3.0, rng)
    dates = np.full(len(y), np.datetime64("2016-03-15"))
    df = aggregate_trends(classified_table(p, dates), date_col="EventDate", by="year", n_boot=50)
    truth = np.bincount(y, minlength=9)
    err_expected = np.abs(df["expected_count"].to_numpy() - truth)
    err_argmax = np.abs(df["argmax_count"].to_numpy() - truth)
    assert err_expected.sum() * 5 < err_argmax.sum()
    assert (err_expected / truth).max() < 0.05
    # arg-max counting inflates the most frequent code and shrinks the rare ones
    assert df.loc[df.code == "6", "argmax_count"].item() > 1.1 * truth[5]
    assert df.loc[df.code == "1", "argmax_count"].item() < 0.9 * truth[0]


def test_bootstrap_intervals_cover_at_stated_rate() -> None:
    """200 monthly periods of Poisson(300) reports each = 200 independent replications."""
    rng = np.random.default_rng(7)
    months = pd.period_range("2000-01", periods=200, freq="M").to_timestamp().to_numpy()
    dates = np.repeat(months, rng.poisson(300, size=200))
    _, p = simulate_calibrated(PREVALENCE, len(dates), 3.0, rng)
    df = aggregate_trends(classified_table(p, dates), date_col="EventDate", by="month", n_boot=200, seed=1)
    assert df["period"].nunique() == 200
    pi = df["code"].astype(int).map(lambda c: PREVALENCE[c - 1])
    share_cover = (df["share_lo"] <= pi) & (pi <= df["share_hi"])
    count_cover = (df["expected_lo"] <= 300 * pi) & (300 * pi <= df["expected_hi"])
    for cover in (share_cover, count_cover):
        assert 0.92 <= cover.mean() <= 0.98
        per_code = cover.groupby(df["code"]).mean()
        assert per_code.between(0.88, 0.99).all(), per_code
    # the arg-max share of the frequent code is off in most periods: counting is biased
    argmax_cover = (df["share_lo"] <= df["argmax_share"]) & (df["argmax_share"] <= df["share_hi"])
    assert argmax_cover[df["code"] == "6"].mean() < 0.05


def test_trend_test_finds_a_real_trend_and_not_a_flat_one() -> None:
    rng = np.random.default_rng(3)
    months = pd.period_range("2015-01", periods=24, freq="M").to_timestamp().to_numpy()
    rows_y, rows_p, rows_d = [], [], []
    for t, month in enumerate(months):
        pi = PREVALENCE.copy()
        pi[7] = 0.10 + 0.10 * t / 23  # vehicles rise from 10 % to 20 % of reports
        pi[5] = 0.35 - 0.10 * t / 23  # structures fall correspondingly
        y, p = simulate_calibrated(pi, 800, 3.0, rng)
        rows_y.append(y), rows_p.append(p), rows_d.append(np.full(len(y), month))
    df = aggregate_trends(classified_table(np.vstack(rows_p), np.concatenate(rows_d)),
                          date_col="EventDate", by="month", n_boot=50)
    tests = trend_tests(df).set_index("code")
    assert tests.loc["8", "direction"] == "increasing"
    assert 1.3 < tests.loc["8", "rate_ratio_per_year"] < 1.6  # true: (0.2/0.1) ** (12/23) = 1.44
    assert tests.loc["6", "direction"] == "decreasing"
    assert tests.loc["3", "direction"] == "no significant trend"
    assert tests.loc["3", "rr_lo"] < 1 < tests.loc["3", "rr_hi"]


def test_poisson1_weights_follow_poisson_1() -> None:
    from scipy.stats import chisquare, poisson

    x = poisson1_weights(np.random.default_rng(0), (200, 10_000)).ravel().astype(int)
    obs = np.append(np.bincount(x, minlength=7)[:6], (x >= 6).sum())
    exp = np.append(poisson.pmf(np.arange(6), 1.0), poisson.sf(5, 1.0)) * x.size
    assert chisquare(obs, exp).pvalue > 0.001
    assert abs(x.mean() - 1) < 0.005 and abs(x.var() - 1) < 0.01


# ---------------------------------------------------------------------------------------------
# real OSHA rows
# ---------------------------------------------------------------------------------------------


def test_osha_period_totals_equal_row_counts(osha: pd.DataFrame) -> None:
    table = onehot_osha(osha)
    df = aggregate_trends(table, date_col="EventDate", date_format="%m/%d/%Y", by="month", n_boot=20)
    months = pd.to_datetime(osha["EventDate"], format="%m/%d/%Y").dt.to_period("M").astype(str)
    rows = months.value_counts().sort_index()
    per_period = df.groupby("period").agg(reports=("reports", "first"), expected=("expected_count", "sum"),
                                          argmax=("argmax_count", "sum"))
    assert len(per_period) == 24
    assert (per_period["reports"] == rows).all()
    assert np.allclose(per_period["expected"], rows)
    assert (per_period["argmax"] == rows).all()
    assert np.allclose(df["expected_count"], df["argmax_count"])  # one-hot: both estimates agree
    by_code = df.groupby("code")["argmax_count"].sum()
    assert (by_code[by_code > 0] == osha["Source"].str[0].value_counts().sort_index()).all()
    assert df.attrs["input_summary"]["rows_used"] == len(osha) == 19_947


def test_osha_groups_errors_and_bad_dates(osha: pd.DataFrame) -> None:
    part = osha.iloc[:3000].copy()
    part.loc[part.index[:5], "EventDate"] = "not a date"
    table = onehot_osha(part)
    errors = [("scoring failed: boom" if i % 100 == 7 else None) for i in range(len(part))]
    table = table.set_column(table.column_names.index("error"), "error", pa.array(errors, pa.string()))
    df = aggregate_trends(table, date_col="EventDate", date_format="%m/%d/%Y", by="quarter",
                          level="major_group", group_by=["State"], naics_sector_from="Primary NAICS", n_boot=20)
    s = df.attrs["input_summary"]
    assert s["rows_error"] == 30 and s["rows_bad_date"] == 5 and s["rows_used"] == 3000 - 35
    used = part.iloc[5:][[e is None for e in errors[5:]]]
    cells = df.drop_duplicates(["State", "naics_sector", "period"])
    assert cells["reports"].sum() == len(used)
    ca = cells[cells["State"] == "CALIFORNIA"] if "CALIFORNIA" in set(cells["State"]) else None
    if ca is not None:
        assert ca["reports"].sum() == (used["State"] == "CALIFORNIA").sum()
    assert set(df["code"]) >= set(used["Source"].str[:2])
    assert df["code"].nunique() == 78
    sectors = naics_sector(used["Primary NAICS"]).value_counts()
    assert (cells.groupby("naics_sector")["reports"].sum().sort_index() == sectors.sort_index()).all()


def test_naics_sector_combines_official_ranges() -> None:
    got = naics_sector(pd.Series(["493110", "311612", "452112", "238220", "", None, "ab12", "48"]))
    assert got.tolist() == ["48-49", "31-33", "44-45", "23", "unknown", "unknown", "unknown", "48-49"]


def test_missing_probabilities_says_how_to_fix(osha: pd.DataFrame) -> None:
    table = onehot_osha(osha.iloc[:50]).drop_columns(["division_probs"])
    with pytest.raises(InputSchemaError, match="--keep-probabilities"):
        aggregate_trends(table, date_col="EventDate", n_boot=20)
    with pytest.raises(ConfigError, match="by="):
        aggregate_trends(onehot_osha(osha.iloc[:50]), date_col="EventDate", by="week", n_boot=20)  # type: ignore[arg-type]


def test_pandas_input_and_seeded_intervals(osha: pd.DataFrame) -> None:
    rng = np.random.default_rng(5)
    _, p = simulate_calibrated(PREVALENCE, 500, 2.0, rng)
    table = classified_table(p, osha["EventDate"].iloc[:500].to_numpy())
    frame = table.to_pandas()  # map columns become lists of (key, value) tuples
    a = aggregate_trends(frame, date_col="EventDate", by="quarter", n_boot=100, seed=11)
    b = aggregate_trends(table, date_col="EventDate", by="quarter", n_boot=100, seed=11)
    c = aggregate_trends(table, date_col="EventDate", by="quarter", n_boot=100, seed=12)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(b["expected_lo"], c["expected_lo"])
    assert (b["expected_lo"] <= b["expected_count"]).all() and (b["expected_count"] <= b["expected_hi"]).all()


# ---------------------------------------------------------------------------------------------
# CLI, files, HTML
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["parquet", "delta", "csv"])
def test_cli_writes_report(osha: pd.DataFrame, tmp_path: Path, fmt: str) -> None:
    from soi_batch.cli import main

    table = onehot_osha(osha.iloc[::10])
    src = tmp_path / f"classified.{fmt}"
    if fmt == "parquet":
        pq.write_table(table, src)
    elif fmt == "delta":
        from deltalake import write_deltalake

        write_deltalake(str(src), table)
    else:
        df = table.to_pandas()
        for col in ("division_probs", "major_group_probs"):
            df[col] = [pd.io.json.ujson_dumps(dict(m)) for m in df[col]]
        df.to_csv(src, index=False)
    out = tmp_path / "report"
    rc = main(["trends", str(src), "--date-col", "EventDate", "--date-format", "%m/%d/%Y", "--by", "quarter",
               "--naics-sector", "--n-boot", "50", "--top-codes", "3", "--max-groups", "2", "--report", str(out)])
    assert rc == 0
    for name in ("trends.csv", "trends.parquet", "trend_tests.csv", "summary.json", "report.html"):
        assert (out / name).stat().st_size > 0, name
    pngs = sorted((out / "charts").glob("*.png"))
    assert len(pngs) == 2 and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    trends = pd.read_parquet(out / "trends.parquet")
    assert trends.drop_duplicates(["naics_sector", "period"])["reports"].sum() == table.num_rows
    tests = pd.read_csv(out / "trend_tests.csv", dtype={"code": str})
    assert {"p_value", "q_value", "direction", "rate_ratio_per_year"} <= set(tests.columns)
    assert all(min(Image.open(p).info["dpi"]) >= 120 for p in pngs)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count('src="data:image/png;base64,') == 2
    # the charted sectors are named, not only coded
    named = re.findall(r"<h3>naics_sector=([0-9-]+) \(([^)<]+)\)</h3>", page)
    assert len(named) == 2 and all(NAICS_SECTOR_TITLES[code] == title for code, title in named)
    assert not re.search(r"<script|<link|(src|href)=\"(?!data:)", page)  # self-contained


def test_trend_chart_names_sectors_counts_from_zero_and_keeps_the_legend_off_the_data(osha: pd.DataFrame) -> None:
    df = aggregate_trends(onehot_osha(osha.iloc[::4]), date_col="EventDate", date_format="%m/%d/%Y", by="quarter",
                          naics_sector_from="Primary NAICS", n_boot=20)
    assert group_label("State=TEXAS, naics_sector=48-49") == (
        "State=TEXAS, naics_sector=48-49 (Transportation and Warehousing)")
    assert group_label("naics_sector=unknown") == "naics_sector=unknown"
    part = df[df["naics_sector"] == "23"]
    fig = trend_figure(part, 3, df.attrs["params"], group_label("naics_sector=23"))
    assert fig.get_suptitle().startswith("naics_sector=23 (Construction): top 3 division codes")
    axes = fig.get_axes()
    assert len(axes) == 6 and all(ax.get_ylim()[0] == 0 for ax in axes)
    top = part.groupby("code")["expected_count"].sum().sort_values(ascending=False, kind="stable").index[:3]
    assert [ax.get_title() for ax in axes[::2]] == [
        f"{c} {part.loc[part.code == c, 'title'].iloc[0].capitalize()}: count" for c in top]
    assert all(ax.get_legend() is None for ax in axes) and len(fig.legends) == 1  # below the charts, not on them
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "95% interval", "expected (sum of probabilities)", "arg-max count"]


def test_read_classified_reads_only_needed_columns(osha: pd.DataFrame, tmp_path: Path) -> None:
    pq.write_table(onehot_osha(osha.iloc[:100]), tmp_path / "c.parquet")
    t = read_classified(tmp_path / "c.parquet", columns=["EventDate", "division_probs", "nope"])
    assert t.column_names == ["EventDate", "division_probs"]



def test_read_classified_csv_parses_probability_maps_and_empty_fields(osha: pd.DataFrame, tmp_path: Path) -> None:
    frame = onehot_osha(osha.iloc[:3]).to_pandas()
    frame["division_probs"] = [pd.io.json.ujson_dumps(dict(m)) for m in frame["division_probs"]]
    frame.loc[1, "State"] = ""
    frame.loc[2, "division_probs"] = ""
    frame["error"] = ["", "scoring failed", ""]
    frame.to_csv(tmp_path / "c.csv", index=False, encoding="cp1252")
    t = read_classified(tmp_path / "c.csv", columns=["State", "division_code", "division_probs", "error"])
    assert t.schema.field("division_probs").type == pa.map_(pa.string(), pa.float64())
    assert t.column("division_probs").to_pylist()[:2] == [[(c[0], 1.0)] for c in osha["Source"].iloc[:2]]
    assert t.column("division_probs")[2].as_py() is None
    assert t.column("State").to_pylist() == [osha["State"].iloc[0], None, osha["State"].iloc[2]]
    assert t.column("error").to_pylist() == [None, "scoring failed", None]
    assert t.column("division_code").to_pylist() == osha["Source"].iloc[:3].str[0].tolist()


@pytest.mark.slow
def test_100k_rows_runtime() -> None:
    rng = np.random.default_rng(1)
    _, p = simulate_calibrated(PREVALENCE, 100_000, 3.0, rng)
    dates = np.datetime64("2015-01-01") + rng.integers(0, 730, 100_000).astype("timedelta64[D]")
    table = classified_table(p, dates, State=pa.array(rng.choice(["CA", "TX", "NY", "FL"], 100_000)))
    t0 = time.perf_counter()
    df = aggregate_trends(table, date_col="EventDate", by="month", group_by=["State"], n_boot=1000)
    tests = trend_tests(df)
    elapsed = time.perf_counter() - t0
    print(f"100k rows, 96 cells, 1000 replicates: {elapsed:.1f} s")
    assert len(df) == 24 * 4 * 9 and len(tests) == 4 * 9
    assert elapsed < 60


# ---------------------------------------------------------------------------------------------
# Spark and the classifier
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_trends_from_spark(osha: pd.DataFrame) -> None:
    from pyspark.sql import SparkSession

    spark = (SparkSession.builder.master("local[1]").appName("test-trends")
             .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2").getOrCreate())
    try:
        table = onehot_osha(osha.iloc[:2000])
        ddl = ("row_key string, EventDate string, State string, `Primary NAICS` string, division_code string, "
               "division_probs map<string,double>, major_group_code string, "
               "major_group_probs map<string,double>, error string")
        sdf = spark.createDataFrame(table.to_pandas().assign(
            division_probs=lambda d: d["division_probs"].map(dict),
            major_group_probs=lambda d: d["major_group_probs"].map(dict)), schema=ddl)
        got = trends_from_spark(sdf, date_col="EventDate", date_format="%m/%d/%Y", by="quarter", n_boot=50)
        want = aggregate_trends(table, date_col="EventDate", date_format="%m/%d/%Y", by="quarter", n_boot=50)
        pd.testing.assert_frame_equal(got, want)
    finally:
        spark.stop()


def _classify_and_aggregate(model: Path | None, osha: pd.DataFrame) -> tuple[pa.Table, pd.DataFrame]:
    from soi_batch.classifier import Classifier, ClassifierConfig

    rows = osha.iloc[::100].head(200)  # spread over both years
    clf = Classifier.load(model, ClassifierConfig(engine="hf", batch_size=32))
    out = clf.classify_table(pa.Table.from_pandas(rows, preserve_index=False), text_col="Final Narrative",
                             keep_probabilities=True)
    return out, aggregate_trends(out, date_col="EventDate", date_format="%m/%d/%Y", by="quarter", n_boot=50)


def _check_classified_aggregate(out: pa.Table, df: pd.DataFrame) -> None:
    ok = out.filter(pa.compute.is_null(out.column("error")))
    cells = df.drop_duplicates("period")
    assert cells["reports"].sum() == ok.num_rows == df.attrs["input_summary"]["rows_used"]
    per_period = df.groupby("period")[["expected_count", "argmax_count", "reports"]].sum()
    assert np.allclose(per_period["expected_count"], cells.set_index("period")["reports"], atol=1e-6)
    codes = pd.Series(ok.column("division_code").to_pylist()).value_counts()
    assert (df.groupby("code")["argmax_count"].sum().reindex(codes.index) == codes).all()


@pytest.mark.slow
def test_tiny_classifier_output_aggregates(tiny_bundle: Path, osha: pd.DataFrame) -> None:
    out, df = _classify_and_aggregate(tiny_bundle, osha)
    _check_classified_aggregate(out, df)
    # a random model is unsure: the estimates differ, which is the point of the sum
    assert not np.allclose(df["expected_count"], df["argmax_count"])


def test_embedded_model_output_aggregates(osha: pd.DataFrame) -> None:
    from soi_batch.bundle import EMBEDDED_DEFAULT

    if not (EMBEDDED_DEFAULT / "soi_model.json").exists():
        pytest.skip(f"embedded soi-mini bundle not built yet ({EMBEDDED_DEFAULT})")
    out, df = _classify_and_aggregate(None, osha)
    _check_classified_aggregate(out, df)
