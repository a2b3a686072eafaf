"""Evaluation on real OSHA rows: data loading, the TF-IDF baseline, and the report directory."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from soi_batch.classifier import Classifier, ClassifierConfig
from soi_batch.datasets.osha import split_osha
from soi_batch.evaluation import (
    BaselineConfig,
    EvaluationConfig,
    TfidfBaseline,
    clean_label,
    evaluate,
    fit_osha_baseline,
    load_eval_data,
    plot_confusion,
    plot_reliability,
    plot_risk_coverage,
)
from soi_batch.evaluation.report import confusion_figure, reliability_figure, risk_coverage_figure
from soi_batch.metrics import expected_calibration_error, reliability_bins

QUICK = BaselineConfig(max_features=5000, max_iter=100, max_train=1500, seed=0)


@pytest.fixture(scope="module")
def parts(osha: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return split_osha(osha)


def _write_cp1252_csv(frame: pd.DataFrame, path: Path) -> Path:
    frame.to_csv(path, index=False, encoding="cp1252")
    return path


def test_clean_label() -> None:
    assert [clean_label(v) for v in [" 662 ", "66", "9999", "", None, "66a", "12345"]] == [
        "662", "66", "9999", None, None, None, None]


def test_load_eval_data_reads_cp1252_csv_and_skips_unlabelled_rows(osha: pd.DataFrame, tmp_path: Path) -> None:
    # rows whose narrative has cp1252-only characters (smart quotes, degree sign, e-acute)
    special = osha[osha["Final Narrative"].str.contains("[\u2019\u201c\u00b0\u00e9]", regex=True)].head(3)
    frame = pd.concat([special, osha.head(20)], ignore_index=True)
    frame.loc[5, "Source"] = ""          # missing label
    frame.loc[6, "Source"] = "n/a"       # not a code
    path = _write_cp1252_csv(frame, tmp_path / "sir.csv")
    data = load_eval_data(EvaluationConfig(data=str(path)))
    assert data.details["encoding"] == "cp1252"
    assert len(data.labels) == 21 and data.details["rows_without_valid_label"] == 2
    assert data.texts[0] == special["Final Narrative"].iloc[0]
    assert all(label.isdigit() for label in data.labels)


def test_load_eval_data_limit_is_a_seeded_sample(parts: dict[str, pd.DataFrame]) -> None:
    a = load_eval_data(EvaluationConfig(data="osha-sir", split="validation", limit=50, seed=7))
    b = load_eval_data(EvaluationConfig(data="osha-sir", split="validation", limit=50, seed=7))
    c = load_eval_data(EvaluationConfig(data="osha-sir", split="validation", limit=50, seed=8))
    assert a.texts == b.texts and a.labels == b.labels and a.texts != c.texts
    assert set(a.texts) <= set(parts["validation"]["Final Narrative"])
    full = load_eval_data(EvaluationConfig(data="osha-sir", split="test"))
    assert len(full.labels) == len(parts["test"])


def test_missing_label_column_names_the_columns(osha: pd.DataFrame, tmp_path: Path) -> None:
    from soi_batch.errors import InputSchemaError

    path = _write_cp1252_csv(osha.head(5), tmp_path / "sir.csv")
    with pytest.raises(InputSchemaError, match="label column 'Code'.*--label-col"):
        load_eval_data(EvaluationConfig(data=str(path), label_col="Code"))


def test_baseline_learns_and_is_reproducible(parts: dict[str, pd.DataFrame]) -> None:
    train = parts["train"].sample(n=1500, random_state=0)
    val = parts["validation"].head(300)
    texts, codes = train["Final Narrative"].tolist(), train["Source"].tolist()
    vt, vc = val["Final Narrative"].tolist(), val["Source"].tolist()
    cfg = BaselineConfig(max_features=5000, max_iter=100, level_strategy="derived")
    first = TfidfBaseline(cfg).fit(texts, codes).predict(vt)
    second = TfidfBaseline(cfg).fit(texts, codes).predict(vt)
    assert first.code == second.code and np.allclose(first.division_confidence, second.division_confidence)
    truth = np.array([c[:1] for c in vc])
    majority = pd.Series([c[:1] for c in codes]).value_counts().index[0]
    acc = np.mean(np.array(first.division) == truth)
    assert acc > np.mean(truth == majority) + 0.1          # well above always answering the top division
    # derived division = summed major-group mass >= the major group's >= the code's (P(mg) * P(code|mg))
    assert (first.division_confidence >= first.major_group_confidence - 1e-9).all()
    assert (first.major_group_confidence >= first.code_confidence - 1e-9).all()
    assert all(c.startswith(m) for c, m in zip(first.code, first.major_group))
    assert ((first.division_confidence > 0) & (first.division_confidence <= 1 + 1e-9)).all()


def test_baseline_used_out_of_order_says_what_to_call() -> None:
    from soi_batch.errors import ConfigError, NotFittedError
    from soi_batch.evaluation.baseline import BaselineConfig, TfidfBaseline

    with pytest.raises(NotFittedError, match=r"TfidfBaseline: call fit\(texts, codes\) before predict"):
        TfidfBaseline(BaselineConfig()).predict(["An employee fell from a ladder."])
    with pytest.raises(ConfigError, match=r"level_strategy='best' .*pass validation=\(texts, codes\) to fit\(\)"):
        TfidfBaseline(BaselineConfig(level_strategy="best")).fit(["a fall"], ["66"])


def test_baseline_best_strategy_records_its_choice(parts: dict[str, pd.DataFrame]) -> None:
    train = parts["train"].sample(n=1500, random_state=0)
    val = parts["validation"].head(200)
    base = TfidfBaseline(BaselineConfig(max_features=5000, max_iter=100)).fit(
        train["Final Narrative"].tolist(), train["Source"].tolist(),
        validation=(val["Final Narrative"].tolist(), val["Source"].tolist()))
    sel = base.selection
    accs = sel["division_validation_accuracy"]
    winner = "derived" if accs["derived_from_major_group"] > accs["per_level"] else "per_level"
    assert sel["strategy"]["division"] == winner
    assert sel["validation_n"] == 200
    # the recorded accuracy is what predict() gives on the same rows
    pred = base.predict(val["Final Narrative"].tolist())
    truth = np.array([c[:1] for c in val["Source"]])
    assert np.mean(np.array(pred.division) == truth) == pytest.approx(max(accs.values()))


@pytest.mark.slow
def test_evaluate_writes_the_report(tiny_bundle: Path, osha: pd.DataFrame, tmp_path: Path) -> None:
    frame = osha.iloc[1000:1060].copy()
    frame.loc[frame.index[0], "Source"] = ""
    path = _write_cp1252_csv(frame, tmp_path / "sir.csv")
    out = tmp_path / "report"
    config = EvaluationConfig(data=str(path), model=str(tiny_bundle), baseline_config=QUICK)
    result = evaluate(config, out)
    for name in ("metrics.json", "confusion_division.png", "reliability.png", "risk_coverage.png", "report.md"):
        assert (out / name).stat().st_size > 0, name
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 59 and m["data"]["rows_without_valid_label"] == 1
    # the numbers are those of the model's and the baseline's own answers on the 59 labelled rows
    data = load_eval_data(config)
    truth, texts = data.labels, data.texts
    preds = Classifier.load(str(tiny_bundle), ClassifierConfig(batch_size=64)).classify_texts(texts)
    base = fit_osha_baseline(QUICK)[0].predict(texts)
    answers = {"model": ([p.division_code for p in preds], [p.major_group_code for p in preds],
                         [p.code for p in preds], [p.division_confidence for p in preds]),
               "baseline": (base.division, base.major_group, base.code, base.division_confidence)}
    for block, (division, major, code, confidence) in ((m, answers["model"]), (m["baseline"], answers["baseline"])):
        correct = np.array([d == t[0] for d, t in zip(division, truth)])
        assert block["division"]["accuracy"] == pytest.approx(correct.mean())
        assert block["major_group"]["accuracy"] == pytest.approx(np.mean([g == t[:2] for g, t in zip(major, truth)]))
        assert block["code"]["accuracy"] == pytest.approx(np.mean([c == t for c, t in zip(code, truth)]))
        ranked = correct[np.argsort(-np.asarray(confidence), kind="stable")]
        assert block["accuracy_at_coverage"] == pytest.approx(
            {f"{c:g}": ranked[: math.ceil(c * 59)].mean() for c in (0.5, 0.7, 0.8, 0.9)})
        assert block["aurc"] == pytest.approx(np.mean(np.cumsum(~ranked) / np.arange(1, 60)))
        assert block["ece"] == pytest.approx(expected_calibration_error(np.asarray(confidence), correct))
    assert m["info"]["model_id"] == "tiny-random@0"
    # division accuracy recomputed from the per-class recall and support
    per_class = m["per_class_division"]
    hits = sum(v["recall"] * v["support"] for v in per_class.values())
    assert hits / m["n"] == pytest.approx(m["division"]["accuracy"])
    report = (out / "report.md").read_text()
    assert "| division accuracy |" in report and "baseline" in report and "n = 59" in report
    assert result["targets"]["division.accuracy"]["target"] == 0.85
    # same seed, same numbers
    again = evaluate(config, tmp_path / "again")
    assert again["baseline"]["division"] == result["baseline"]["division"]
    assert again["division"] == result["division"]


def test_report_plots_name_divisions_show_bin_counts_and_fit_the_figure(osha: pd.DataFrame, tmp_path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    truth = [c[0] for c in osha["Source"].iloc[:400]]
    following = truth[1:] + truth[:1]  # a predictor that answers the next report's division
    confidence = np.linspace(0.05, 1.0, 400)
    curves = {name: {"divisions": pred, "confidence": confidence,
                     "correct": np.array([p == t for p, t in zip(pred, truth)])}
              for name, pred in (("model", truth[:300] + following[300:]), ("baseline", following))}

    fig = confusion_figure(truth, {k: v["divisions"] for k, v in curves.items()})
    model_ax, baseline_ax, colorbar_ax = fig.get_axes()
    FigureCanvasAgg(fig).draw()
    names = [t.get_text() for t in model_ax.get_yticklabels()]
    assert names[0] == "1 Chemicals and chemical products" and names[5] == "6 Structures and surfaces"
    assert len(names) == 9 and [n.split()[0] for n in names] == list("123456789")
    assert (model_ax.get_title(), baseline_ax.get_title()) == ("model (n = 400)", "baseline (n = 400)")
    assert colorbar_ax.get_ylabel() == "share of the true division's reports"
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): int(t.get_text()) for t in model_ax.texts}
    assert cells[(5, 5)] == sum(p == t == "6" for p, t in zip(curves["model"]["divisions"], truth))
    assert fig.get_suptitle().startswith("Division confusion matrix")
    drawn, page = fig.get_tightbbox(), fig.bbox_inches  # every title, label and the colour bar fit the page
    assert page.x0 <= drawn.x0 and drawn.x1 <= page.x1 and page.y0 <= drawn.y0 and drawn.y1 <= page.y1

    fig = reliability_figure(curves)
    accuracy_ax, count_ax = fig.get_axes()
    bins = reliability_bins(confidence, curves["model"]["correct"])
    assert [bar.get_height() for bar in count_ax.patches[:15]] == bins["count"].tolist()
    assert sum(bar.get_height() for bar in count_ax.patches) == 2 * 400
    assert count_ax.get_ylim()[0] == 0 and count_ax.get_ylabel() == "reports in bin"
    assert accuracy_ax.get_legend() is None and len(fig.legends) == 1  # below the plot, not on the data
    assert risk_coverage_figure(curves).get_axes()[0].get_ylim()[0] == 0

    plot_confusion(truth, {k: v["divisions"] for k, v in curves.items()}, tmp_path / "c.png")
    plot_reliability(curves, tmp_path / "r.png")
    plot_risk_coverage(curves, tmp_path / "rc.png")
    assert all(min(Image.open(tmp_path / n).info["dpi"]) >= 120 for n in ("c.png", "r.png", "rc.png"))


def test_baseline_on_train_plus_validation(parts: dict[str, pd.DataFrame]) -> None:
    from soi_batch.errors import ConfigError
    from soi_batch.evaluation import osha_baseline_rows

    both = osha_baseline_rows(BaselineConfig(train_on="train+validation", level_strategy="derived"), parts)
    assert len(both) == len(parts["train"]) + len(parts["validation"])
    assert set(parts["validation"]["row_key"]) <= set(both["row_key"])
    assert len(osha_baseline_rows(BaselineConfig(), parts)) == len(parts["train"])
    # validation cannot choose the division strategy, nor be evaluated on, once it is trained on
    with pytest.raises(ConfigError, match="level_strategy"):
        BaselineConfig(train_on="train+validation")
    with pytest.raises(ConfigError, match="train\\+validation"):
        EvaluationConfig(data="osha-sir", split="validation",
                         baseline_config=BaselineConfig(train_on="train+validation", level_strategy="derived"))


def test_evaluate_flags_build_the_baseline_they_name() -> None:
    import argparse

    from soi_batch.commands import evaluate as cmd
    from soi_batch.errors import ConfigError

    parser = argparse.ArgumentParser()
    cmd.add_parser(parser.add_subparsers())

    def config(*flags: str):
        return cmd.evaluation_config(parser.parse_args(["evaluate", "osha-sir", "--report", "r", *flags]))

    default = config().baseline_settings()
    assert (default.train_on, default.level_strategy, default.seed) == ("train", "best", 0)
    wide = config("--baseline-train", "train+validation", "--seed", "7").baseline_settings()
    assert (wide.train_on, wide.level_strategy, wide.seed) == ("train+validation", "derived", 7)
    assert config("--baseline-division", "per_level").baseline_settings().level_strategy == "per_level"
    with pytest.raises(ConfigError, match="cannot be evaluated on the 'validation' part it was trained on"):
        config("--baseline-train", "train+validation", "--split", "validation")
    assert not config("--no-baseline", "--split", "validation").baseline