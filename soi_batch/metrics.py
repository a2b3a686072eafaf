"""Evaluation metrics for hierarchical OIICS source codes.

Codes are digit strings; a code's division is its first digit, its major group the first two,
its group the first three.  OSHA labels come at depth 2, 3 or 4, so every level is scored only
on the rows whose *label* reaches that level: a 2-digit label counts for division and major
group, not for group.  A prediction shorter than the level counts as wrong there.

Confidence metrics (ECE, accuracy at coverage, AURC) are computed at division level from the
predicted division's probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import f1_score

from soi_batch.errors import ConfigError, InputSchemaError

LEVEL_DEPTH: dict[str, int] = {"division": 1, "major_group": 2, "group": 3}
"""Prefix length of each hierarchy level scored by :func:`level_scores`."""
COVERAGES: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9)
ECE_BINS = 15

TARGETS: dict[str, float] = {
    "division.accuracy": 0.85,
    "major_group.accuracy": 0.76,
    "division.macro_f1": 0.78,
    "ece": 0.03,
    "accuracy_at_coverage.0.7": 0.95,
}
"""Quality targets of issue 3 (ECE is a ceiling, the others are floors)."""
LOWER_IS_BETTER = frozenset({"ece", "aurc"})


def prefix(code: str | None, depth: int) -> str | None:
    """``code``'s ancestor at ``depth`` digits, or None when the code is shorter (or missing)."""
    if not code or len(code) < depth:
        return None
    return code[:depth]


def accuracy(y_true: Sequence[object], y_pred: Sequence[object]) -> float:
    """Fraction of positions where prediction equals label (nan for no rows)."""
    if len(y_true) != len(y_pred):
        raise InputSchemaError(f"{len(y_true)} labels but {len(y_pred)} predictions; pass one prediction per label")
    if not len(y_true):
        return float("nan")
    return float(np.mean([t == p for t, p in zip(y_true, y_pred)]))


def macro_f1(y_true: Sequence[str], y_pred: Sequence[str | None]) -> float:
    """Unweighted mean F1 over every class that occurs in the labels or the predictions.

    A missing prediction (None) is its own class ``"<none>"``, so it costs recall of the true
    class; classes with no support and no predictions do not enter the mean.
    """
    if not len(y_true):
        return float("nan")
    pred = ["<none>" if p is None else p for p in y_pred]
    return float(f1_score(list(y_true), pred, average="macro", zero_division=0))


@dataclass(frozen=True)
class LevelScore:
    n: int
    accuracy: float
    macro_f1: float

    def to_dict(self) -> dict[str, float | int]:
        return {"n": self.n, "accuracy": self.accuracy, "macro_f1": self.macro_f1}


def level_scores(labels: Sequence[str], predictions: Sequence[str | None]) -> dict[str, LevelScore]:
    """Accuracy and macro-F1 at division, major group and group level, plus exact ``code``.

    Each level uses only rows whose label has at least that many digits; ``code`` compares the
    full predicted code with the full label (``"66"`` predicted for label ``"662"`` is wrong).
    """
    if len(labels) != len(predictions):
        raise InputSchemaError(f"{len(labels)} labels but {len(predictions)} predictions; pass one prediction per label")
    out: dict[str, LevelScore] = {}
    for level, depth in LEVEL_DEPTH.items():
        rows = [i for i, code in enumerate(labels) if len(code) >= depth]
        t = [labels[i][:depth] for i in rows]
        p = [prefix(predictions[i], depth) for i in rows]
        out[level] = LevelScore(len(rows), accuracy(t, p), macro_f1(t, p))
    out["code"] = LevelScore(len(labels), accuracy(labels, predictions), macro_f1(labels, predictions))
    return out


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE with ``n_bins`` equal-width bins over [0, 1]: Σ_b |B_b|/n · |acc(B_b) − conf(B_b)|.

    Bin b holds confidences in (b/n_bins, (b+1)/n_bins]; a confidence of exactly 0 goes to the
    first bin.
    """
    conf, ok = _check(confidence, correct)
    if not conf.size:
        return float("nan")
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in np.unique(bins):
        members = bins == b
        ece += members.mean() * abs(ok[members].mean() - conf[members].mean())
    return float(ece)


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Per-bin count, mean confidence and accuracy (nan for empty bins), for the diagram."""
    conf, ok = _check(confidence, correct)
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(bins, weights=conf, minlength=n_bins) / count
        acc = np.bincount(bins, weights=ok.astype(float), minlength=n_bins) / count
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": acc}


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage k/n and risk (error rate) of the k most confident rows, for k = 1..n.

    Rows are ranked by confidence, highest first; ties keep input order (a stable sort), so the
    curve is reproducible.
    """
    conf, ok = _check(confidence, correct)
    order = np.argsort(-conf, kind="stable")
    errors = np.cumsum(~ok[order])
    k = np.arange(1, conf.size + 1)
    return k / conf.size, errors / k


def accuracy_at_coverage(
    confidence: np.ndarray, correct: np.ndarray, coverages: Sequence[float] = COVERAGES
) -> dict[str, float]:
    """Accuracy of the ⌈c·n⌉ most confident rows for each coverage c (keys like ``"0.7"``)."""
    conf, ok = _check(confidence, correct)
    order = np.argsort(-conf, kind="stable")
    out = {}
    for c in coverages:
        if not 0 < c <= 1:
            raise ConfigError(f"coverage must be in (0, 1] (the share of rows auto-coded), got {c}")
        k = int(np.ceil(round(c * conf.size, 9)))
        out[f"{c:g}"] = float(ok[order[:k]].mean()) if k else float("nan")
    return out


def aurc(confidence: np.ndarray, correct: np.ndarray) -> float:
    """Area under the risk–coverage curve: the mean of the risk over k = 1..n (lower is better)."""
    _, risk = risk_coverage(confidence, correct)
    return float(risk.mean()) if risk.size else float("nan")


def confidence_metrics(confidence: np.ndarray, correct: np.ndarray) -> dict[str, object]:
    """ECE (15 bins), accuracy at coverage 0.5/0.7/0.8/0.9 and AURC in one dict."""
    return {
        "ece": expected_calibration_error(confidence, correct),
        "accuracy_at_coverage": accuracy_at_coverage(confidence, correct),
        "aurc": aurc(confidence, correct),
    }


def evaluate_predictions(
    labels: Sequence[str],
    codes: Sequence[str | None],
    divisions: Sequence[str | None],
    division_confidence: Sequence[float],
    major_groups: Sequence[str | None] | None = None,
) -> dict[str, object]:
    """The ``metrics.json`` block for one predictor.

    ``divisions``/``major_groups`` are the predictor's own division and major-group answers
    (they may differ from the code's prefixes, e.g. a per-level baseline); when
    ``major_groups`` is None the code's prefix is used.  A None answer (a row that failed) is
    wrong at every level and has confidence 0.
    """
    n = len(labels)
    if not (len(codes) == len(divisions) == len(division_confidence) == n):
        raise InputSchemaError(f"labels, codes, divisions and division_confidence must have the same length; got "
                               f"{n}, {len(codes)}, {len(divisions)} and {len(division_confidence)}")
    majors = list(major_groups) if major_groups is not None else [prefix(c, 2) for c in codes]
    by_code = level_scores(labels, codes)
    by_div = level_scores(labels, divisions)
    by_major = level_scores(labels, majors)
    true_div = [code[:1] for code in labels]
    correct = np.array([t == p for t, p in zip(true_div, divisions)], dtype=bool)
    conf = np.nan_to_num(np.asarray(division_confidence, dtype=float), nan=0.0)
    out: dict[str, object] = {
        "n": n,
        "division": by_div["division"].to_dict(),
        "major_group": by_major["major_group"].to_dict(),
        "group": by_code["group"].to_dict(),
        "code": by_code["code"].to_dict(),
    }
    out.update(confidence_metrics(conf, correct))
    return out


def target_gaps(metrics: dict[str, object], targets: dict[str, float] = TARGETS) -> dict[str, dict[str, float]]:
    """For each target: the value, the target, and the gap (positive = target met by that much)."""
    out = {}
    for key, target in targets.items():
        value = lookup(metrics, key)
        gap = target - value if key in LOWER_IS_BETTER else value - target
        out[key] = {"value": value, "target": target, "gap": gap, "met": bool(gap >= 0)}
    return out


def lookup(metrics: dict[str, object], key: str) -> float:
    """``metrics["division"]["accuracy"]`` for ``"division.accuracy"``; coverage keys keep their dot."""
    if key.startswith("accuracy_at_coverage."):
        return float(metrics["accuracy_at_coverage"][key.split(".", 1)[1]])  # type: ignore[index]
    node: object = metrics
    for part in key.split("."):
        node = node[part]  # type: ignore[index]
    return float(node)  # type: ignore[arg-type]


def _check(confidence: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    conf = np.asarray(confidence, dtype=float).ravel()
    ok = np.asarray(correct, dtype=bool).ravel()
    if conf.shape != ok.shape:
        raise InputSchemaError(f"{conf.size} confidences but {ok.size} correctness flags; pass one flag per confidence")
    if conf.size and (np.isnan(conf).any() or conf.min() < 0 or conf.max() > 1 + 1e-9):
        raise InputSchemaError(f"confidences must be probabilities in [0, 1]; got values from {np.nanmin(conf):g} to "
                               f"{np.nanmax(conf):g}{' and NaN' if np.isnan(conf).any() else ''}")
    return conf, ok
