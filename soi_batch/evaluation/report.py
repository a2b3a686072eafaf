"""The report directory of an evaluation: ``metrics.json``, PNG plots and ``report.md``.

Plots are drawn with ``matplotlib.figure.Figure`` (no pyplot, no global backend switch).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import confusion_matrix

from soi_batch.metrics import COVERAGES, ECE_BINS, lookup, reliability_bins, risk_coverage
from soi_batch.taxonomy import load_taxonomy

DIVISIONS = tuple("123456789")
PNG_DPI = 150


def write_evaluation_report(result: dict[str, Any], true_divisions: Sequence[str],
                            curves: dict[str, dict[str, Any]], out: Path) -> None:
    """Write ``metrics.json`` (``result``), the three plots and ``report.md`` into ``out``.

    ``curves`` maps a predictor name to its per-report ``divisions``, ``confidence`` and ``correct``.
    """
    (out / "metrics.json").write_text(json.dumps(_jsonable(result), indent=2) + "\n", encoding="utf-8")
    plot_confusion(true_divisions, {k: v["divisions"] for k, v in curves.items()}, out / "confusion_division.png")
    plot_reliability(curves, out / "reliability.png")
    plot_risk_coverage(curves, out / "risk_coverage.png")
    (out / "report.md").write_text(render_report(result), encoding="utf-8")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def division_names() -> dict[str, str]:
    """``"6"`` -> ``"6 Structures and surfaces"`` for the nine OIICS source divisions."""
    taxonomy = load_taxonomy()
    return {d: f"{d} {taxonomy.titles[d].capitalize()}" for d in DIVISIONS}


def confusion_figure(y_true: Sequence[str], predictions: dict[str, Sequence[str | None]]) -> Figure:
    """Row-normalised division confusion matrix per predictor; a ``-`` column for no answer.

    Cells show counts, colour the share of the true division's reports (one colour bar for all).
    """
    cols = list(DIVISIONS) + ["-"]
    names = division_names()
    fig = Figure(figsize=(4.6 * len(predictions) + 3.4, 5.8), layout="constrained")
    axes = fig.subplots(1, len(predictions), squeeze=False, sharey=True)[0]
    image = None
    for ax, (name, pred) in zip(axes, predictions.items()):
        p = [d if d in DIVISIONS else "-" for d in pred]
        cm = confusion_matrix(list(y_true), p, labels=cols)[: len(DIVISIONS)]
        with np.errstate(invalid="ignore"):
            norm = cm / cm.sum(axis=1, keepdims=True)
        image = ax.imshow(np.nan_to_num(norm), cmap="Blues", vmin=0, vmax=1)
        for i in range(norm.shape[0]):
            for j in range(norm.shape[1]):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(cols)), cols)
        ax.set_yticks(range(len(DIVISIONS)), [names[d] for d in DIVISIONS])
        ax.set_xlabel("predicted division (code; - = no answer)")
        ax.set_title(f"{name} (n = {len(p)})", fontsize=10)
    axes[0].set_ylabel("true division")
    fig.colorbar(image, ax=list(axes), shrink=0.85, label="share of the true division's reports")
    fig.suptitle("Division confusion matrix: counts in the cells, colour = row share", fontsize=11)
    return fig


def reliability_figure(curves: dict[str, dict[str, Any]]) -> Figure:
    """Reliability diagram (15 equal-width bins) over a bar chart of the reports in each bin."""
    fig = Figure(figsize=(6.5, 6.8), layout="constrained")
    ax, counts = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    width = 1 / ECE_BINS / (len(curves) + 1)
    for i, (name, c) in enumerate(curves.items()):
        bins = reliability_bins(c["confidence"], c["correct"])
        filled = bins["count"] > 0
        line, = ax.plot(bins["confidence"][filled], bins["accuracy"][filled], marker="o", label=name)
        left = bins["edges"][:-1] + width * (i + 0.5)
        bars = counts.bar(left, bins["count"], width=width, align="edge", color=line.get_color(), label=name)
        counts.bar_label(bars, labels=[str(n) if n else "" for n in bins["count"]], fontsize=6)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("division accuracy in bin")
    ax.set_title("Reliability diagram (division level)")
    counts.set_ylim(0, max(1, counts.get_ylim()[1]) * 1.15)
    counts.set_ylabel("reports in bin")
    counts.set_xlabel(f"division confidence (bin mean, {ECE_BINS} equal-width bins)")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=len(curves) + 1)
    return fig


def risk_coverage_figure(curves: dict[str, dict[str, Any]]) -> Figure:
    """Risk (division error rate) of the most confident share of reports, per predictor."""
    fig = Figure(figsize=(6.5, 5.2), layout="constrained")
    ax = fig.subplots()
    for name, c in curves.items():
        coverage, risk = risk_coverage(c["confidence"], c["correct"])
        ax.plot(coverage, risk, label=f"{name} (AURC {risk.mean():.3f})")
    for cov in COVERAGES:
        ax.axvline(cov, color="grey", linewidth=0.5, linestyle=":")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("coverage (most confident share auto-coded)")
    ax.set_ylabel("risk (division error rate)")
    ax.set_title("Risk-coverage (division level)")
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=len(curves))
    return fig


def plot_confusion(y_true: Sequence[str], predictions: dict[str, Sequence[str | None]], path: Path) -> None:
    """Write :func:`confusion_figure` as a PNG."""
    confusion_figure(y_true, predictions).savefig(path, dpi=PNG_DPI)


def plot_reliability(curves: dict[str, dict[str, Any]], path: Path) -> None:
    """Write :func:`reliability_figure` as a PNG."""
    reliability_figure(curves).savefig(path, dpi=PNG_DPI)


def plot_risk_coverage(curves: dict[str, dict[str, Any]], path: Path) -> None:
    """Write :func:`risk_coverage_figure` as a PNG."""
    risk_coverage_figure(curves).savefig(path, dpi=PNG_DPI)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def render_report(result: dict[str, Any]) -> str:
    """``report.md``: model next to baseline, the data, n and the gaps to the targets."""
    base = result.get("baseline")
    info = result["info"]
    rows = [
        ("n", "n"),
        ("division accuracy", "division.accuracy"), ("division macro-F1", "division.macro_f1"),
        ("major group accuracy", "major_group.accuracy"), ("major group macro-F1", "major_group.macro_f1"),
        ("group accuracy (3–4 digit labels)", "group.accuracy"),
        ("code accuracy (exact)", "code.accuracy"),
        ("ECE (division, 15 bins)", "ece"),
        *[(f"division accuracy at {c:.0%} coverage", f"accuracy_at_coverage.{c:g}") for c in COVERAGES],
        ("AURC (division)", "aurc"),
    ]

    def get(m: dict[str, Any] | None, key: str) -> str:
        if m is None:
            return "–"
        try:
            return _fmt(lookup(m, key)) if key != "n" else str(m["n"])
        except (KeyError, TypeError, ValueError):
            return "–"

    lines = [
        f"# Evaluation: {info['model_id']}",
        "",
        (f"- Data: {result['data']['description']}; n = {result['n']} "
        f"({result['data']['rows_without_valid_label']} rows without a valid label skipped)"),
        (f"- Model: `{info['model_id']}` from `{info['path']}`, engine {info['engine']}, "
        f"temperature {info['temperature']:.4g}, {info['reports_per_second']:.1f} reports/s, "
        f"{info['errors']} errors, {info['truncated']} truncated"),
    ]
    if base is not None:
        lines.append(f"- Baseline: {base['info']['method']}, {base['info']['trained_on']}; division/major group "
                     f"from {base['info']['strategy']}")
    lines.append(f"- Created {result['created_at']}, seed {result['config']['seed']}")
    lines += ["", "| metric | model | baseline |", "|---|---:|---:|"]
    lines += [f"| {label} | {get(result, key)} | {get(base, key)} |" for label, key in rows]
    review = result.get("review", {})
    lines += ["", "## Review routing (model)", "",
              (f"Bundle threshold {_fmt(review.get('threshold'))} on {review.get('level')} confidence "
              f"(chosen for accuracy {_fmt(review.get('target_accuracy'))}): "
              f"{_fmt(review.get('auto_coded_fraction'))} of reports auto-coded, their division accuracy "
              f"{_fmt(review.get('auto_coded_division_accuracy'))}.")]
    lines += ["", "## Gaps to the targets", "", "| target | model | gap | baseline | gap |", "|---|---:|---:|---:|---:|"]
    for key, t in result["targets"].items():
        op = "≤" if key in ("ece",) else "≥"
        b = base["targets"][key] if base is not None else None
        lines.append(f"| {key} {op} {t['target']} | {_fmt(t['value'])} | {t['gap']:+.4f}{' ✓' if t['met'] else ''} | "
                     f"{_fmt(b['value']) if b else '–'} | "
                     f"{(format(b['gap'], '+.4f') + (' ✓' if b['met'] else '')) if b else '–'} |")
    lines += ["", "Gap: positive means the target is met by that much.", "",
              "![division confusion](confusion_division.png)", "",
              "![reliability](reliability.png) ![risk-coverage](risk_coverage.png)", ""]
    return "\n".join(lines)

