"""``soi-batch evaluate``: score a model (and the TF-IDF baseline) on labelled reports.

Writes into the report directory (:mod:`soi_batch.evaluation.report`)::

    metrics.json            model metrics at top level, the baseline's under "baseline",
                            gaps to the issue-3 targets, data and model provenance
    confusion_division.png  division confusion matrices (model | baseline), row-normalised
    reliability.png         reliability diagrams at division level (15 bins)
    risk_coverage.png       risk–coverage curves at division level
    report.md               the numbers side by side, the split, n, the gaps to the targets

``DATA`` is a CSV/Parquet/Delta path, or the literal ``osha-sir`` for the bundled OSHA split
(``soi_batch/datasets/osha.py``), of which ``split`` picks the part (:mod:`soi_batch.evaluation.data`).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import classification_report

from soi_batch.evaluation.baseline import fit_osha_baseline
from soi_batch.evaluation.config import EvaluationConfig
from soi_batch.evaluation.data import load_eval_data
from soi_batch.evaluation.report import write_evaluation_report
from soi_batch.metrics import evaluate_predictions, target_gaps

log = logging.getLogger(__name__)


def run_model(config: EvaluationConfig, texts: Sequence[object], labels: Sequence[str], *,
              progress: bool = False) -> dict[str, Any]:
    """Classify with the model bundle; returns metrics plus model provenance and speed.  ``progress``:
    a bar in rows on stderr, moved after each ``config.chunk`` reports."""
    from tqdm.auto import tqdm

    from soi_batch.classifier import Classifier, ClassifierConfig

    clf = Classifier.load(config.model, ClassifierConfig(batch_size=config.batch_size), cache_dir=config.cache_dir)
    start = time.perf_counter()
    preds = []
    log.info("scoring %d reports with %s (%d per call)", len(texts), clf.model_id, config.chunk)
    with tqdm(total=len(texts), desc="model", unit="rows", dynamic_ncols=True, file=sys.stderr,
              disable=not progress) as bar:
        for i in range(0, len(texts), config.chunk):
            chunk = clf.classify_texts(texts[i:i + config.chunk])
            preds.extend(chunk)
            bar.update(len(chunk))
    seconds = time.perf_counter() - start
    log.info("model scored %d reports in %.1f s", len(preds), seconds)
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


def run_baseline(config: EvaluationConfig, texts: Sequence[object], labels: Sequence[str]) -> dict[str, Any]:
    """Fit the TF-IDF baseline on the bundled train part (or train + validation) and score it on ``texts``."""
    baseline, provenance = fit_osha_baseline(config.baseline_settings())
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


def evaluate(config: EvaluationConfig, report_dir: str | Path, *, progress: bool = False) -> dict[str, Any]:
    """Run the evaluation and write the report directory; returns ``metrics.json``'s content.
    ``progress``: a bar in rows on stderr while the model scores."""
    out = Path(report_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = load_eval_data(config)
    log.info("evaluating on %s: %d reports", data.description, len(data.labels))
    model = run_model(config, data.texts, data.labels, progress=progress)
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
    write_evaluation_report(result, true_div, curves, out)
    log.info("report written to %s", out)
    return result


def _per_class(y_true: Sequence[str], y_pred: Sequence[str | None]) -> dict[str, dict[str, float]]:
    pred = ["<none>" if p is None else p for p in y_pred]
    labels = sorted(set(y_true))
    rep = classification_report(list(y_true), pred, labels=labels, output_dict=True, zero_division=0)
    return {k: {m: float(v) for m, v in rep[k].items()} for k in labels}
