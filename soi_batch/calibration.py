"""Temperature scaling and the ``needs_review`` threshold, fitted on a validation split.

* :func:`fit_temperature` finds the one scalar T that minimises the negative log-likelihood of
  the true code's path, where every step's engine scores are divided by T and softmaxed over
  the tokens the trie allows there (exactly what :mod:`soi_batch.scorer` does at inference).
* :func:`choose_review_threshold` picks the lowest confidence threshold whose auto-coded part
  (confidence ≥ threshold) reaches a target accuracy.
* :func:`calibrate_bundle` does both for a model bundle and rewrites its ``soi_model.json``.

The division probabilities are the root step's renormalised softmax, so the division answer
and its temperature-scaled confidence come straight from the root row of each
:class:`~soi_batch.scorer.PathSteps` without classifying the texts again.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import minimize_scalar

from soi_batch.errors import CalibrationError, ConfigError, LabelSetError

if TYPE_CHECKING:  # the scorer imports nothing heavy, but keep this module import-light
    from soi_batch.bundle import Manifest
    from soi_batch.scorer import PathSteps

log = logging.getLogger(__name__)

T_BOUNDS = (0.05, 20.0)
"""Search interval for the temperature."""


def _stack(steps: Sequence[PathSteps]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All steps of all paths as ``scores [m, 11]``, ``allowed [m, 11]``, ``target [m]``."""
    if not steps:
        raise ConfigError("no validation paths to fit a temperature on; pass at least one labelled report")
    scores = np.concatenate([np.asarray(s.scores, dtype=np.float64) for s in steps])
    allowed = np.concatenate([np.asarray(s.allowed, dtype=bool) for s in steps])
    target = np.concatenate([np.asarray(s.target, dtype=np.int64) for s in steps])
    rows = np.arange(len(target))
    if not allowed[rows, target].all():
        raise LabelSetError("a path's target token is not allowed at its step, so the steps do not follow the label "
                            "trie; build them with Classifier.path_steps on codes from the bundle's label set")
    # Steps with one allowed token have probability 1 whatever T is: drop them.
    informative = allowed.sum(axis=1) > 1
    return scores[informative], allowed[informative], target[informative]


def _log_softmax_allowed(scores: np.ndarray, allowed: np.ndarray, temperature: float) -> np.ndarray:
    z = np.where(allowed, scores / temperature, -np.inf)
    z = z - z.max(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def path_nll(steps: Sequence[PathSteps], temperature: float) -> float:
    """Mean (per report) negative log-likelihood of the true codes at ``temperature``."""
    scores, allowed, target = _stack(steps)
    logp = _log_softmax_allowed(scores, allowed, temperature)
    return float(-logp[np.arange(len(target)), target].sum() / len(steps))


def fit_temperature(steps: list[PathSteps], bounds: tuple[float, float] = T_BOUNDS) -> float:
    """The scalar T > 0 minimising the NLL of the true codes' paths (bounded search on log T)."""
    scores, allowed, target = _stack(steps)
    rows = np.arange(len(target))
    if not len(target):
        log.warning("every validation path is forced (one allowed token per step); temperature 1.0")
        return 1.0

    def nll(log_t: float) -> float:
        return float(-_log_softmax_allowed(scores, allowed, math.exp(log_t))[rows, target].sum())

    res = minimize_scalar(nll, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-5})
    if not res.success:
        raise CalibrationError(f"temperature fit on {len(steps)} validation paths did not converge ({res.message}); "
                               "check the engine's scores for NaN or inf (a broken model) and calibrate again")
    temperature = float(math.exp(res.x))
    if min(abs(temperature - b) / b for b in bounds) < 1e-3:
        log.warning("fitted temperature %.4g sits at the search bound %s", temperature, bounds)
    log.info("temperature %.4f: NLL/report %.4f -> %.4f", temperature,
             nll(0.0) / len(steps), res.fun / len(steps))
    return temperature


def division_confidence(steps: Sequence[PathSteps], temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Predicted division digit and its probability at ``temperature``, from each root step.

    Returns ``(predicted [n] int, confidence [n] float)``; ``steps[i].target[0]`` is the true
    division digit.
    """
    scores = np.stack([np.asarray(s.scores[0], dtype=np.float64) for s in steps])
    allowed = np.stack([np.asarray(s.allowed[0], dtype=bool) for s in steps])
    logp = _log_softmax_allowed(scores, allowed, temperature)
    pred = logp.argmax(axis=1)
    return pred, np.exp(logp[np.arange(len(pred)), pred])


def choose_review_threshold(
    confidences: Sequence[float] | np.ndarray,
    correct: Sequence[bool] | np.ndarray,
    target_accuracy: float = 0.95,
) -> float:
    """The lowest threshold t whose auto-coded rows (confidence ≥ t) reach ``target_accuracy``.

    0.0 when every row together already reaches it.  When no non-empty auto-coded part does,
    the threshold is set just above the highest confidence (capped at 1.0), so every row goes
    to review, and a warning is logged.
    """
    _check_target_accuracy(target_accuracy)
    conf = np.asarray(confidences, dtype=float).ravel()
    ok = np.asarray(correct, dtype=bool).ravel()
    if conf.shape != ok.shape or not conf.size:
        raise ConfigError(f"need matching, non-empty confidences and correctness ({conf.size} vs {ok.size})")
    order = np.argsort(-conf, kind="stable")
    c_sorted, ok_sorted = conf[order], ok[order]
    cum_acc = np.cumsum(ok_sorted) / np.arange(1, conf.size + 1)
    # Threshold t = c_sorted[k] auto-codes every row with confidence ≥ t: the last index of
    # each run of equal confidences is where that part ends.
    ends = np.flatnonzero(np.r_[c_sorted[1:] != c_sorted[:-1], True])
    reaching = ends[cum_acc[ends] >= target_accuracy - 1e-12]
    if not reaching.size:
        top = float(np.nextafter(c_sorted[0], np.inf))
        log.warning("no confidence threshold reaches accuracy %.3f (best %.3f); every row needs review",
                    target_accuracy, float(cum_acc[ends].max()))
        return min(top, 1.0)
    k = int(reaching.max())
    if k == conf.size - 1:
        return 0.0
    return float(c_sorted[k])


def calibrate_bundle(
    bundle_dir: str | Path,
    validation_texts: Sequence[str],
    validation_codes: Sequence[str],
    target_accuracy: float = 0.95,
    *,
    fitted_on: str = "validation",
    batch_size: int = 256,
    cache_dir: Path | None = None,
    write_to: Path | None = None,
    split: str | None = None,
    split_fingerprint: str | None = None,
    allow_training_rows: bool = False,
) -> dict[str, float]:
    """Fit T and the review threshold on validation reports; rewrite the bundle's manifest.

    ``bundle_dir`` may be any model :func:`soi_batch.bundle.load_bundle` accepts; ``write_to``: a
    directory whose ``soi_model.json`` gets the calibration instead of the bundle's own.

    The calibration block gets the temperature, the division-level threshold for
    ``target_accuracy`` and ``fitted_on`` (description and n); ``metrics["calibration"]``
    records NLL and ECE before (T = 1) and after, and the auto-coded share at the threshold.
    Returns that metrics record.

    ``split`` and ``split_fingerprint`` name the part of a fingerprinted split the rows come from
    (e.g. ``"validation"`` of the bundled OSHA split).  When the bundle's manifest says its model
    was trained on that part of that split, a :class:`ConfigError` is raised before any row is
    scored: a model fitted to its rows is overconfident-looking-right on them, so T and the
    threshold come out wrong for new reports.  ``allow_training_rows=True`` calibrates anyway,
    with a warning, and records ``on_training_rows`` in the manifest.
    """
    from soi_batch.bundle import MANIFEST, Calibration, Manifest, load_bundle, write_manifest
    from soi_batch.classifier import Classifier, ClassifierConfig
    from soi_batch.metrics import expected_calibration_error

    _check_target_accuracy(target_accuracy)  # before any report is scored
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be a whole number ≥ 1, got {batch_size!r}")
    if len(validation_texts) != len(validation_codes):
        raise ConfigError(f"{len(validation_texts)} validation texts but {len(validation_codes)} codes")
    bundle = load_bundle(bundle_dir, cache_dir)
    on_training_rows = check_not_training_rows(bundle.manifest, str(bundle_dir), split, split_fingerprint,
                                               allow_training_rows=allow_training_rows)
    labels = set(bundle.manifest.labels)
    keep = [i for i, c in enumerate(validation_codes) if c in labels and isinstance(validation_texts[i], str)
            and validation_texts[i].strip()]
    if len(keep) < len(validation_codes):
        log.warning("%d of %d validation rows skipped (code outside the bundle's label set or empty text)",
                    len(validation_codes) - len(keep), len(validation_codes))
    texts = [validation_texts[i] for i in keep]
    codes = [validation_codes[i] for i in keep]
    clf = Classifier.load(model=bundle.path, config=ClassifierConfig(temperature=1.0))
    steps: list[PathSteps] = []
    for start in _progress(range(0, len(texts), batch_size), len(texts), batch_size):
        steps.extend(clf.path_steps(texts[start:start + batch_size], codes[start:start + batch_size]))

    temperature = fit_temperature(steps)
    true_div = np.array([s.target[0] for s in steps])
    pred_raw, conf_raw = division_confidence(steps, 1.0)
    pred_cal, conf_cal = division_confidence(steps, temperature)
    correct = pred_cal == true_div
    threshold = choose_review_threshold(conf_cal, correct, target_accuracy)
    auto = conf_cal >= threshold
    record = {
        "n": len(steps),
        "temperature": temperature,
        "nll_before": path_nll(steps, 1.0),
        "nll_after": path_nll(steps, temperature),
        "ece_before": expected_calibration_error(conf_raw, pred_raw == true_div),
        "ece_after": expected_calibration_error(conf_cal, correct),
        "division_accuracy": float(correct.mean()),
        "review_threshold": threshold,
        "target_accuracy": target_accuracy,
        "auto_coded_fraction": float(auto.mean()),
        "auto_coded_accuracy": float(correct[auto].mean()) if auto.any() else float("nan"),
    }
    if on_training_rows:
        record["on_training_rows"] = True
    target = Path(write_to) if write_to is not None else bundle.path
    manifest = Manifest.model_validate_json((target / MANIFEST).read_text(encoding="utf-8"))
    manifest.calibration = Calibration(
        temperature=temperature,
        review_threshold=threshold,
        review_level="division",
        review_target_accuracy=target_accuracy,
        fitted_on=f"{fitted_on} (n={len(steps)})"
        + (", rows the model was trained on (--allow-training-rows)" if on_training_rows else ""),
    )
    manifest.metrics = {**manifest.metrics, "calibration": record}
    write_manifest(target, manifest)
    log.info("calibrated %s: T=%.4f, threshold %.4f, ECE %.4f -> %.4f", bundle.path, temperature, threshold,
             record["ece_before"], record["ece_after"])
    return record


def trained_splits(manifest: Manifest) -> frozenset[str] | None:
    """The parts of its data split a bundle's model was trained on, as its manifest records them.

    Read from ``train_on`` (``"train"`` or ``"train+validation"``) in the manifest's ``training``
    block, its ``training.config`` or its ``metrics``; None when the manifest does not say.
    """
    config = manifest.training.get("config")
    for source in (manifest.training, config if isinstance(config, dict) else {}, manifest.metrics):
        train_on = source.get("train_on")
        if isinstance(train_on, str) and train_on:
            return frozenset(part.strip() for part in train_on.split("+"))
    return None


def check_not_training_rows(
    manifest: Manifest,
    bundle_name: str,
    split: str | None,
    split_fingerprint: str | None,
    *,
    allow_training_rows: bool = False,
) -> bool:
    """Refuse to calibrate on a split part the bundle's model was trained on.

    The rows are training rows when ``split_fingerprint`` is the manifest's ``data_fingerprint``
    (the same split of the same data) and ``split`` is one of :func:`trained_splits`.  Raises
    :class:`ConfigError` then, unless ``allow_training_rows``: that logs a warning and returns
    True (the caller records it).  Returns False when the rows are not (known to be) training rows.
    """
    if split is None or split_fingerprint is None or manifest.data_fingerprint != split_fingerprint:
        return False
    trained = trained_splits(manifest)
    if trained is None or split not in trained:
        return False
    what = (f"model bundle {bundle_name!r} ({manifest.model_id} {manifest.model_version}) was trained on the "
            f"{'+'.join(sorted(trained))} part of this split (data fingerprint "
            f"{split_fingerprint[:12]}…), which includes the {split!r} rows to calibrate on")
    if not allow_training_rows:
        raise ConfigError(f"{what}: a model scores its own training rows too well, so the temperature and review "
                          f"threshold fitted on them would be wrong for new reports. Calibrate on rows the model "
                          f"never saw (a bundle trained on 'train' only, or your own labelled held-out reports), or "
                          f"keep the bundle's calibration; --allow-training-rows (allow_training_rows=True) "
                          f"overrides this.")
    log.warning("%s; calibrating anyway (allow_training_rows): the fitted temperature and threshold will be "
                "overconfident for new reports, and the manifest records on_training_rows", what)
    return True


def _check_target_accuracy(target_accuracy: float) -> None:
    if not 0 < target_accuracy <= 1:
        raise ConfigError(f"target_accuracy must be in (0, 1] (the accuracy the auto-coded part must reach), "
                          f"got {target_accuracy}")


def _progress(it: range, n: int, batch_size: int):
    from tqdm.auto import tqdm

    return tqdm(it, desc="validation paths", unit="batch", total=math.ceil(n / batch_size) if n else 0)
