"""``soi-batch evaluate DATA``: model vs TF-IDF baseline on labelled reports, with a report directory."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from soi_batch.commands.options import (
    add_batch_size_option,
    add_input_options,
    add_model_options,
    add_progress_option,
    progress_wanted,
    quiet_library_progress_bars,
)

if TYPE_CHECKING:
    from soi_batch.evaluation import EvaluationConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate", help="score a model (and the TF-IDF baseline) on labelled reports",
        description="Accuracy and macro-F1 by hierarchy level, ECE, accuracy at coverage and AURC for the "
                    "model and the TF-IDF + logistic regression baseline, written to --report DIR "
                    "(metrics.json, PNG plots, report.md).")
    p.add_argument("data", help="labelled CSV/Parquet/Delta, or 'osha-sir' for the bundled time-based split")
    p.add_argument("--label-col", default="Source", help="column with the OIICS source code (default: %(default)s)")
    add_model_options(p)
    add_input_options(p)
    p.add_argument("--report", required=True, metavar="DIR", help="directory for metrics.json, plots, report.md")
    p.add_argument("--split", choices=("train", "validation", "test", "all"), default="test",
                   help="part of the bundled split when DATA is osha-sir (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="evaluate a seeded random sample of N rows")
    p.add_argument("--seed", type=int, default=0, help="seed for --limit sampling and the baseline (default: 0)")
    add_batch_size_option(p)
    p.add_argument("--no-baseline", action="store_true", help="skip the TF-IDF baseline")
    p.add_argument("--baseline-train", choices=("train", "train+validation"), default="train",
                   help="bundled-split rows the baseline is fitted on: train (2015-01..2016-06) or "
                        "train+validation (2015-01..2016-08; then evaluate on test only) (default: %(default)s)")
    p.add_argument("--baseline-division", choices=("best", "derived", "per_level"), default=None,
                   help="baseline division answer: the division LR (per_level), the major-group LR summed "
                        "per division (derived), or whichever is better on validation (best; only with "
                        "--baseline-train train) (default: best, or derived with train+validation)")
    add_progress_option(p)
    p.set_defaults(func=run)


def evaluation_config(args: argparse.Namespace) -> EvaluationConfig:
    """The :class:`EvaluationConfig` the flags ask for (checked when it is built)."""
    from soi_batch.evaluation import BaselineConfig, EvaluationConfig

    level = args.baseline_division or ("best" if args.baseline_train == "train" else "derived")
    return EvaluationConfig(
        data=args.data, label_col=args.label_col, text_col=args.text_col, model=args.model, cache_dir=args.cache_dir,
        input_format=args.input_format, encoding=args.encoding, split=args.split, limit=args.limit,
        seed=args.seed, baseline=not args.no_baseline, batch_size=args.batch_size,
        baseline_config=BaselineConfig(seed=args.seed, train_on=args.baseline_train, level_strategy=level),
    )


def run(args: argparse.Namespace) -> int:
    from soi_batch.evaluation import evaluate
    from soi_batch.metrics import lookup

    quiet_library_progress_bars(bool(getattr(args, "verbose", False)))
    result = evaluate(evaluation_config(args), args.report, progress=progress_wanted(args))
    base = result.get("baseline")
    print(f"n={result['n']}  ({result['data']['description']})")
    for key in ("division.accuracy", "division.macro_f1", "major_group.accuracy", "major_group.macro_f1",
                "code.accuracy", "ece", "accuracy_at_coverage.0.7", "aurc"):
        line = f"{key:>26}  model {lookup(result, key):.4f}"
        if base is not None:
            line += f"  baseline {lookup(base, key):.4f}"
        print(line)
    print(f"report: {args.report}/report.md")
    return 0
