"""The reference baseline every evaluation report shows next to the model.

TF-IDF word (1–2) and char_wb (2–5) n-grams feeding multinomial logistic regressions
(scikit-learn, lbfgs), trained on the *train* part of the bundled time-based OSHA split
(or train + validation, ``BaselineConfig.train_on``):

* one LR over the major groups (~70 classes),
* one LR over the divisions (9 classes),
* per major group, one LR over the codes seen under it (trained on that group's reports), so
  ``P(code) = P(major group) × P(code | major group)``.

A single flat LR over all ~330 codes was measured too slow for an evaluation run (over 10
minutes of lbfgs on 16 cores, 2026-11-24), hence the conditional code models.

The division answer is either ``"per_level"`` (the division LR) or ``"derived"`` (the
major-group LR's probabilities summed per division).  ``level_strategy="best"`` (default) fits
both and keeps the one with the higher validation accuracy, recorded in :attr:`selection`; it
cannot be used when validation is part of the training rows (``train_on="train+validation"``).
Everything is seeded (``random_state``) and nothing is written to disk.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion

from soi_batch.datasets.osha import load_split
from soi_batch.errors import ConfigError, NotFittedError
from soi_batch.prompt import normalize_narrative

log = logging.getLogger(__name__)
LevelStrategy = Literal["derived", "per_level", "best"]
TrainOn = Literal["train", "train+validation"]
BASELINE_TRAIN_ON: tuple[TrainOn, ...] = ("train", "train+validation")


@dataclass(frozen=True)
class BaselineConfig:
    word_ngrams: tuple[int, int] = (1, 2)
    char_ngrams: tuple[int, int] = (2, 5)
    min_df: int = 2
    """Drop n-grams seen in fewer training reports (keeps the char vocabulary tractable)."""
    max_features: int | None = 50_000
    """Per vectoriser, most frequent n-grams kept (on the OSHA train part: 27k word + 50k char)."""
    C: float = 10.0
    """Inverse L2 strength of the logistic regressions."""
    max_iter: int = 200
    n_jobs: int = 2
    """Logistic regressions fitted in parallel processes."""
    level_strategy: LevelStrategy = "best"
    seed: int = 0
    max_train: int | None = None
    """Train on a seeded sample of this many reports (None: the whole train part); for quick runs."""
    train_on: TrainOn = "train"
    """Bundled-split rows :func:`fit_osha_baseline` trains on: ``"train"`` (2015-01..2016-06) or
    ``"train+validation"`` (2015-01..2016-08; then ``level_strategy`` must be fixed, not "best")."""

    def __post_init__(self) -> None:
        if self.train_on not in BASELINE_TRAIN_ON:
            raise ConfigError(f"baseline train_on must be one of {', '.join(BASELINE_TRAIN_ON)}; got {self.train_on!r}")
        if self.level_strategy not in ("derived", "per_level", "best"):
            raise ConfigError(f"baseline level_strategy must be derived, per_level or best; got {self.level_strategy!r}")
        if self.train_on == "train+validation" and self.level_strategy == "best":
            raise ConfigError("baseline level_strategy 'best' chooses on validation, which train_on="
                              "'train+validation' trains on; fix it to 'derived' or 'per_level'")


@dataclass
class BaselinePredictions:
    """Per-row answers, aligned with the input texts."""

    code: list[str]
    code_confidence: np.ndarray
    division: list[str]
    division_confidence: np.ndarray
    major_group: list[str]
    major_group_confidence: np.ndarray


@dataclass
class TfidfBaseline:
    """Fit with :meth:`fit`; predict with :meth:`predict`."""

    config: BaselineConfig = field(default_factory=BaselineConfig)
    selection: dict[str, object] = field(default_factory=dict)
    """Which strategy serves each level, and the validation accuracies it was chosen on."""

    def __post_init__(self) -> None:
        self._vectorizer: FeatureUnion | None = None
        self._models: dict[str, LogisticRegression] = {}
        self._strategy: dict[str, str] = {}

    # ------------------------------------------------------------------ training
    def fit(self, texts: Sequence[str], codes: Sequence[str],
            validation: tuple[Sequence[str], Sequence[str]] | None = None) -> TfidfBaseline:
        """Train on ``texts``/``codes``; ``validation`` is needed for ``level_strategy="best"``."""
        cfg = self.config
        if cfg.level_strategy == "best" and validation is None:
            raise ConfigError("level_strategy='best' chooses the division level on validation data: pass "
                              "validation=(texts, codes) to fit(), or choose level_strategy='derived' or 'per_level'")
        start = time.perf_counter()
        log.info("TF-IDF baseline: fitting word %s + char_wb %s n-gram features (up to %s each, min_df %d) on %d "
                 "reports", cfg.word_ngrams, cfg.char_ngrams, cfg.max_features, cfg.min_df, len(texts))
        self._vectorizer = FeatureUnion([
            ("word", TfidfVectorizer(analyzer="word", ngram_range=cfg.word_ngrams, min_df=cfg.min_df,
                                     max_features=cfg.max_features, sublinear_tf=True, dtype=np.float32)),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=cfg.char_ngrams, min_df=cfg.min_df,
                                     max_features=cfg.max_features, sublinear_tf=True, dtype=np.float32)),
        ])
        x = self._vectorizer.fit_transform(_clean(texts))
        codes = np.array([str(c) for c in codes])
        majors = np.array([c[:2] for c in codes])
        jobs: dict[str, tuple[object, np.ndarray]] = {"major_group": (slice(None), majors)}
        if cfg.level_strategy != "derived":
            jobs["division"] = (slice(None), np.array([c[:1] for c in codes]))
        self._constant: dict[str, str] = {}
        for group in np.unique(majors):
            rows = np.flatnonzero(majors == group)
            kinds = np.unique(codes[rows])
            if kinds.size == 1:
                self._constant[str(group)] = str(kinds[0])
            else:
                jobs[f"code:{group}"] = (rows, codes[rows])
        log.info("TF-IDF baseline: %d reports x %d features in %.1f s; fitting %d logistic regressions "
                 "(%s in parallel)", x.shape[0], x.shape[1], time.perf_counter() - start, len(jobs), cfg.n_jobs)
        fitted = Parallel(n_jobs=cfg.n_jobs)(delayed(_fit_lr)(self._lr(), x[rows], y) for rows, y in jobs.values())
        self._models = dict(zip(jobs, fitted))
        log.info("TF-IDF baseline fitted on %d reports, %d features, %d models in %.1fs", len(codes), x.shape[1],
                 len(jobs), time.perf_counter() - start)
        if cfg.level_strategy == "best" and validation is not None:  # 'best' without validation: refused above
            self._choose(*validation)
        else:
            self._strategy = {"division": cfg.level_strategy}
            self.selection = {"strategy": dict(self._strategy)}
        return self

    def _lr(self) -> LogisticRegression:
        return LogisticRegression(C=self.config.C, max_iter=self.config.max_iter,
                                  random_state=self.config.seed)

    def _choose(self, texts: Sequence[str], codes: Sequence[str]) -> None:
        x = self._features(texts)
        truth = np.array([c[:1] for c in codes])
        derived, _ = self._derive(self._models["major_group"].predict_proba(x))
        direct, _ = self._direct(x, "division")
        accuracies = {"derived_from_major_group": float(np.mean(derived == truth)),
                      "per_level": float(np.mean(direct == truth))}
        self._strategy = {"division": "derived" if accuracies["derived_from_major_group"] > accuracies["per_level"]
                          else "per_level"}
        self.selection = {"strategy": dict(self._strategy), "division_validation_accuracy": accuracies,
                          "validation_n": len(codes)}
        log.info("baseline division strategy chosen on validation: %s", self.selection)

    # ------------------------------------------------------------------ prediction
    def _features(self, texts: Sequence[str]):
        if self._vectorizer is None:
            raise NotFittedError("TfidfBaseline: call fit(texts, codes) before predict")
        return self._vectorizer.transform(_clean(texts))

    def _derive(self, major_p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Division answer and probability from the major-group probabilities."""
        parents = np.array([c[:1] for c in self._models["major_group"].classes_])
        uniq, inverse = np.unique(parents, return_inverse=True)
        summed = np.zeros((major_p.shape[0], uniq.size))
        np.add.at(summed.T, inverse, major_p.T)
        best = summed.argmax(axis=1)
        return uniq[best], summed[np.arange(len(best)), best]

    def _direct(self, x, level: str) -> tuple[np.ndarray, np.ndarray]:
        model = self._models[level]
        p = model.predict_proba(x)
        best = p.argmax(axis=1)
        return model.classes_[best], p[np.arange(len(best)), best]

    def predict(self, texts: Sequence[str]) -> BaselinePredictions:
        x = self._features(texts)
        n = x.shape[0]
        major_p = self._models["major_group"].predict_proba(x)
        best = major_p.argmax(axis=1)
        major = self._models["major_group"].classes_[best]
        major_conf = major_p[np.arange(n), best]
        if self._strategy["division"] == "derived":
            division, division_conf = self._derive(major_p)
        else:
            division, division_conf = self._direct(x, "division")
        code = np.empty(n, dtype=object)
        code_conf = np.empty(n)
        for group in np.unique(major):
            rows = np.flatnonzero(major == group)
            if str(group) in self._constant:
                code[rows], code_conf[rows] = self._constant[str(group)], major_conf[rows]
                continue
            model = self._models[f"code:{group}"]
            p = model.predict_proba(x[rows])
            pick = p.argmax(axis=1)
            code[rows] = model.classes_[pick]
            code_conf[rows] = major_conf[rows] * p[np.arange(rows.size), pick]
        return BaselinePredictions(
            code=[str(c) for c in code], code_confidence=code_conf,
            division=[str(c) for c in division], division_confidence=division_conf,
            major_group=[str(c) for c in major], major_group_confidence=major_conf,
        )

    def describe(self) -> dict[str, object]:
        """Settings and level choice, for reports."""
        return {"config": asdict(self.config), **self.selection}


def _fit_lr(model: LogisticRegression, x, y: list[str]) -> LogisticRegression:
    return model.fit(x, y)


def _clean(texts: Sequence[object]) -> list[str]:
    """The same narrative normalisation the model's prompt uses (None → empty)."""
    return [normalize_narrative(t, 10**6)[0] if isinstance(t, str) else "" for t in texts]


def osha_baseline_rows(config: BaselineConfig, parts: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The bundled-split rows the baseline is trained on (``config.train_on``, ``config.max_train``)."""
    train = parts["train"]
    if config.train_on == "train+validation":
        train = pd.concat([train, parts["validation"]], ignore_index=True)
    if config.max_train is not None and config.max_train < len(train):
        train = train.sample(n=config.max_train, random_state=config.seed).sort_index()
    return train


def fit_osha_baseline(config: BaselineConfig = BaselineConfig()) -> tuple[TfidfBaseline, dict[str, object]]:
    """The baseline trained on the bundled split's train part (or train + validation, ``config.train_on``);
    with ``level_strategy="best"`` the division strategy is chosen on validation.

    Returns the fitted baseline and a provenance record (rows, train size, split fingerprint, seconds).
    """
    parts, fingerprint = load_split()
    train, validation = osha_baseline_rows(config, parts), parts["validation"]
    text, label = "Final Narrative", "Source"
    start = time.perf_counter()
    baseline = TfidfBaseline(config).fit(
        train[text].tolist(), train[label].str.strip().tolist(),
        validation=(validation[text].tolist(), validation[label].str.strip().tolist())
        if config.level_strategy == "best" else None,
    )
    return baseline, {"train_on": config.train_on, "n_train": len(train), "split_fingerprint": fingerprint,
                      "fit_seconds": time.perf_counter() - start}
