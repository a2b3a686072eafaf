"""``soi-batch evaluate``: score a model (and the TF-IDF baseline) on labelled reports.

Writes into the report directory::

    metrics.json            model metrics at top level, the baseline's under "baseline",
                            gaps to the issue-3 targets, data and model provenance
    confusion_division.png  division confusion matrices (model | baseline), row-normalised
    reliability.png         reliability diagrams at division level (15 bins)
    risk_coverage.png       risk–coverage curves at division level
    report.md               the numbers side by side, the split, n, the gaps to the targets

``DATA`` is a CSV/Parquet/Delta path, or the literal ``osha-sir`` for the bundled OSHA split
(``soi_batch/datasets/osha.py``), of which ``split`` picks the part.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
from sklearn.metrics import classification_report, confusion_matrix

from soi_batch.datasets.osha import load_split
from soi_batch.errors import ConfigError, InputSchemaError
from soi_batch.evaluation.baseline import BaselineConfig, fit_osha_baseline
from soi_batch.metrics import (
    COVERAGES,
    TARGETS,
    evaluate_predictions,
    reliability_bins,
    risk_coverage,
    target_gaps,
)

log = logging.getLogger(__name__)
OSHA_SIR = "osha-sir"
SplitName = Literal["train", "validation", "test", "all"]
DIVISIONS = tuple("123456789")


@dataclass(frozen=True)
class EvaluationConfig:
    data: str
    """A CSV/Parquet/Delta path, or ``"osha-sir"`` for the bundled split."""
    label_col: str = "Source"
    text_col: str = "Final Narrative"
    model: str | None = None
    """Named model, bundle directory or hub id; None is the default model."""
    cache_dir: Path | None = None
    """Where a named model is built on first use (None: ``~/.cache/soi-batch``)."""
    input_format: Literal["csv", "parquet", "delta"] | None = None
    encoding: str | None = None
    """CSV encoding; None tries UTF-8 and falls back to cp1252."""
    split: SplitName = "test"
    """Part of the bundled split (``osha-sir`` only)."""
    limit: int | None = None
    """Evaluate a seeded random sample of this many rows (None: all rows)."""
    seed: int = 0
    baseline: bool = True
    baseline_config: BaselineConfig | None = None
    """Baseline settings; None: the defaults with ``seed``."""
    batch_size: int = 64
    chunk: int = 512
    """Reports per classifier call (progress granularity)."""

    def __post_init__(self) -> None:
        if self.split not in ("train", "validation", "test", "all"):
            raise ConfigError(f"split must be one of train, validation, test, all; got {self.split!r}")
        if (self.baseline and self.data == OSHA_SIR and self.split in ("validation", "all")
                and _baseline_config(self).train_on == "train+validation"):
            raise ConfigError(f"the baseline trained on train+validation cannot be evaluated on the "
                              f"{self.split!r} part it was trained on; use --split test")
        if self.limit is not None and self.limit < 1:
            raise ConfigError(f"limit must be ≥ 1, got {self.limit}")


@dataclass
class EvalData:
    texts: list[object]
    labels: list[str]
    description: str
    details: dict[str, Any]


# --------------------------------------------------------------------------- data
def load_osha_split() -> tuple[dict[str, Any], str]:
    """The bundled time-based OSHA split (:func:`soi_batch.datasets.osha.load_split`) and its fingerprint."""
    return load_split()


def clean_label(value: object) -> str | None:
    """A label as a 1–4 digit string, or None when it is missing or not an OIICS code."""
    if not isinstance(value, str):
        return None
    code = value.strip()
    return code if code.isdigit() and 1 <= len(code) <= 4 else None


def load_eval_data(config: EvaluationConfig) -> EvalData:
    """The texts and labels to evaluate, with rows lacking a valid label dropped (and counted)."""
    details: dict[str, Any] = {"source": config.data, "text_col": config.text_col, "label_col": config.label_col}
    if config.data == OSHA_SIR:
        parts, fingerprint = load_osha_split()
        names = ["train", "validation", "test"] if config.split == "all" else [config.split]
        import pandas as pd

        frame = pd.concat([parts[n] for n in names], ignore_index=True)
        texts, raw = frame[config.text_col].tolist(), frame[config.label_col].tolist()
        details.update(split=config.split, split_fingerprint=fingerprint)
        description = f"bundled OSHA SIR 2015-2016, {config.split} part"
    else:
        from soi_batch.tables import inspect_input, read_table

        spec = inspect_input(config.data, fmt=config.input_format, encoding=config.encoding)
        spec.require(config.text_col, role="text column")
        if config.label_col not in spec.columns:
            raise InputSchemaError(
                f"{config.data}: label column {config.label_col!r} not found; available columns: "
                f"{spec.columns}. Pass the right name with --label-col."
            )
        table = read_table(spec).select([config.text_col, config.label_col])
        texts, raw = table.column(config.text_col).to_pylist(), table.column(config.label_col).to_pylist()
        raw = [None if v is None else str(v) for v in raw]
        details.update(split="all rows", format=spec.format, encoding=spec.encoding)
        description = f"{config.data} ({spec.format}), all rows"
    labels = [clean_label(v) for v in raw]
    keep = [i for i, code in enumerate(labels) if code is not None]
    details["rows_read"] = len(labels)
    details["rows_without_valid_label"] = len(labels) - len(keep)
    if len(keep) < len(labels):
        log.warning("%d of %d rows have no 1-4 digit label in %r and are not evaluated",
                    len(labels) - len(keep), len(labels), config.label_col)
    if config.limit is not None and config.limit < len(keep):
        rng = np.random.default_rng(config.seed)
        keep = sorted(rng.choice(keep, size=config.limit, replace=False).tolist())
        description += f", seeded sample of {config.limit} (seed {config.seed})"
    details.update(limit=config.limit, seed=config.seed)
    if not keep:
        raise InputSchemaError(f"{config.data}: no rows with a valid label in column {config.label_col!r}")
    return EvalData([texts[i] for i in keep], [labels[i] for i in keep], description,  # type: ignore[misc]
                    details)


# --------------------------------------------------------------------------- predictors
def run_model(config: EvaluationConfig, texts: Sequence[object], labels: Sequence[str]) -> dict[str, Any]:
    """Classify with the model bundle; returns metrics plus model provenance and speed."""
    from tqdm.auto import tqdm

    from soi_batch.classifier import Classifier, ClassifierConfig

    clf = Classifier.load(config.model, ClassifierConfig(batch_size=config.batch_size), cache_dir=config.cache_dir)
    start = time.perf_counter()
    preds = []
    for i in tqdm(range(0, len(texts), config.chunk), desc="model", unit="chunk"):
        preds.extend(clf.classify_texts(texts[i:i + config.chunk]))
    seconds = time.perf_counter() - start
    codes = [p.code if p.error is None else None for p in preds]
    divisions = [p.division_code if p.error is None else None for p in preds]
    majors = [p.major_group_code if p.error is None else None for p in preds]
    conf = [p.division_confidence if p.error is None and p.division_confidence is not None else 0.0 for p in preds]
    metrics = evaluate_predictions(labels, codes, divisions, conf, majors)
    correct = np.array([d == t[:1] for d, t in zip(divisions, labels)])
    review = np.array([bool(p.needs_review) for p in preds])
    cal = clf.bundle.calibration
    metrics["review"] = {
        "level": cal.review_level,
        "threshold": cal.review_threshold,
        "target_accuracy": cal.review_target_accuracy,
        "auto_coded_fraction": float((~review).mean()),
        "auto_coded_division_accuracy": float(correct[~review].mean()) if (~review).any() else float("nan"),
    }
    metrics["info"] = {
        "model_id": clf.model_id,
        "path": str(clf.bundle.path),
        "engine": clf.engine.name,
        "temperature": clf.scorer.config.temperature,
        "errors": sum(p.error is not None for p in preds),
        "truncated": sum(p.truncated for p in preds),
        "seconds": seconds,
        "reports_per_second": len(texts) / seconds if seconds else float("nan"),
    }
    metrics["_curves"] = {"divisions": divisions, "confidence": np.asarray(conf, dtype=float), "correct": correct}
    return metrics


def _baseline_config(config: EvaluationConfig) -> BaselineConfig:
    return config.baseline_config or BaselineConfig(seed=config.seed)


def run_baseline(config: EvaluationConfig, texts: Sequence[object], labels: Sequence[str]) -> dict[str, Any]:
    """Fit the TF-IDF baseline on the bundled train part (or train + validation) and score it on ``texts``."""
    baseline, provenance = fit_osha_baseline(_baseline_config(config))
    start = time.perf_counter()
    pred = baseline.predict([t if isinstance(t, str) else "" for t in texts])
    seconds = time.perf_counter() - start
    metrics = evaluate_predictions(labels, pred.code, pred.division, pred.division_confidence, pred.major_group)
    correct = np.array([d == t[:1] for d, t in zip(pred.division, labels)])
    metrics["info"] = {
        "method": "TF-IDF word(1-2)+char_wb(2-5) n-grams + logistic regression",
        "trained_on": f"bundled OSHA split, {provenance['train_on']} (n={provenance['n_train']})",
        **provenance,
        **baseline.describe(),
        "reports_per_second": len(texts) / seconds if seconds else float("nan"),
    }
    metrics["_curves"] = {"divisions": pred.division, "confidence": pred.division_confidence, "correct": correct}
    return metrics


# --------------------------------------------------------------------------- report
def evaluate(config: EvaluationConfig, report_dir: str | Path) -> dict[str, Any]:
    """Run the evaluation and write the report directory; returns ``metrics.json``'s content."""
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_eval_data(config)
    log.info("evaluating on %s: %d reports", data.description, len(data.labels))
    model = run_model(config, data.texts, data.labels)
    baseline = run_baseline(config, data.texts, data.labels) if config.baseline else None
    curves = {"model": model.pop("_curves")}
    if baseline is not None:
        curves["baseline"] = baseline.pop("_curves")
    true_div = [c[:1] for c in data.labels]
    result: dict[str, Any] = dict(model)
    result["per_class_division"] = _per_class(true_div, curves["model"]["divisions"])
    result["targets"] = target_gaps(model)
    if baseline is not None:
        baseline["per_class_division"] = _per_class(true_div, curves["baseline"]["divisions"])
        baseline["targets"] = target_gaps(baseline)
        result["baseline"] = baseline
    result["data"] = {"description": data.description, "n": len(data.labels), **data.details}
    result["config"] = {k: v for k, v in asdict(config).items() if k not in ("chunk",)}
    result["created_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    (out / "metrics.json").write_text(json.dumps(_jsonable(result), indent=2) + "\n", encoding="utf-8")
    plot_confusion(true_div, {k: v["divisions"] for k, v in curves.items()}, out / "confusion_division.png")
    plot_reliability(curves, out / "reliability.png")
    plot_risk_coverage(curves, out / "risk_coverage.png")
    (out / "report.md").write_text(render_report(result), encoding="utf-8")
    log.info("report written to %s", out)
    return result


def _per_class(y_true: Sequence[str], y_pred: Sequence[str | None]) -> dict[str, dict[str, float]]:
    pred = ["<none>" if p is None else p for p in y_pred]
    labels = sorted(set(y_true))
    rep = classification_report(list(y_true), pred, labels=labels, output_dict=True, zero_division=0)
    return {k: {m: float(v) for m, v in rep[k].items()} for k in labels}


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


def _figure(ncols: int = 1, width: float = 5.5, height: float = 4.5):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def plot_confusion(y_true: Sequence[str], predictions: dict[str, Sequence[str | None]], path: Path) -> None:
    """Row-normalised division confusion matrix per predictor; a ``-`` column for no answer."""
    cols = list(DIVISIONS) + ["-"]
    fig, axes = _figure(len(predictions), 5.5, 5.0)
    for ax, (name, pred) in zip(axes, predictions.items()):
        p = [d if d in DIVISIONS else "-" for d in pred]
        cm = confusion_matrix(list(y_true), p, labels=cols)[: len(DIVISIONS)]
        with np.errstate(invalid="ignore"):
            norm = cm / cm.sum(axis=1, keepdims=True)
        ax.imshow(np.nan_to_num(norm), cmap="Blues", vmin=0, vmax=1)
        for i in range(norm.shape[0]):
            for j in range(norm.shape[1]):
                if cm[i, j]:
                    ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if norm[i, j] > 0.5 else "black")
        ax.set_xticks(range(len(cols)), cols)
        ax.set_yticks(range(len(DIVISIONS)), DIVISIONS)
        ax.set_xlabel("predicted division")
        ax.set_ylabel("true division")
        ax.set_title(f"{name}: division confusion (counts; colour = row share)", fontsize=9)
    fig.savefig(path, dpi=110)


def plot_reliability(curves: dict[str, dict[str, Any]], path: Path) -> None:
    fig, axes = _figure(1)
    ax = axes[0]
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for name, c in curves.items():
        bins = reliability_bins(c["confidence"], c["correct"])
        filled = bins["count"] > 0
        ax.plot(bins["confidence"][filled], bins["accuracy"][filled], marker="o", label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("division confidence (bin mean, 15 equal-width bins)")
    ax.set_ylabel("division accuracy in bin")
    ax.set_title("Reliability diagram (division level)")
    ax.legend(loc="upper left")
    fig.savefig(path, dpi=110)


def plot_risk_coverage(curves: dict[str, dict[str, Any]], path: Path) -> None:
    fig, axes = _figure(1)
    ax = axes[0]
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
    ax.legend(loc="upper left")
    fig.savefig(path, dpi=110)


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
    from soi_batch.metrics import lookup

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


__all__ = ["TARGETS", "EvaluationConfig", "evaluate", "load_eval_data", "load_osha_split", "render_report"]
