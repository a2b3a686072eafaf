"""Evaluation of a model bundle on labelled reports, next to a TF-IDF baseline.

* :mod:`~soi_batch.evaluation.config`: :class:`EvaluationConfig`, what one run does;
* :mod:`~soi_batch.evaluation.data`: the labelled reports (a file, or the bundled OSHA split);
* :mod:`~soi_batch.evaluation.baseline`: the TF-IDF + logistic regression baseline;
* :mod:`~soi_batch.evaluation.runner`: running the model and the baseline, :func:`evaluate`;
* :mod:`~soi_batch.evaluation.report`: ``metrics.json``, the plots and ``report.md``.

Imports go one way: config -> baseline; data -> config; runner -> data, baseline, report.
"""

from soi_batch.evaluation.baseline import (
    BaselineConfig,
    BaselinePredictions,
    TfidfBaseline,
    fit_osha_baseline,
    osha_baseline_rows,
)
from soi_batch.evaluation.config import OSHA_SIR, EvaluationConfig, SplitName
from soi_batch.evaluation.data import EvalData, clean_label, load_eval_data, load_osha_split
from soi_batch.evaluation.report import (
    plot_confusion,
    plot_reliability,
    plot_risk_coverage,
    render_report,
    write_evaluation_report,
)
from soi_batch.evaluation.runner import evaluate, run_baseline, run_model

__all__ = [
    "OSHA_SIR",
    "BaselineConfig",
    "BaselinePredictions",
    "EvalData",
    "EvaluationConfig",
    "SplitName",
    "TfidfBaseline",
    "clean_label",
    "evaluate",
    "fit_osha_baseline",
    "load_eval_data",
    "load_osha_split",
    "osha_baseline_rows",
    "plot_confusion",
    "plot_reliability",
    "plot_risk_coverage",
    "render_report",
    "run_baseline",
    "run_model",
    "write_evaluation_report",
]
