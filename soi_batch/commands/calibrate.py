"""``soi-batch calibrate --model DIR``: fit temperature and review threshold on the validation split."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate", help="fit a bundle's temperature and needs_review threshold on validation reports",
        description="Fit one temperature (NLL of the true code paths) and the lowest division-confidence "
                    "threshold whose auto-coded part reaches --target-accuracy, on the validation part of "
                    "the bundled OSHA split, and write both into the bundle's soi_model.json.")
    p.add_argument("--model", required=True, metavar="DIR", help="model bundle directory (rewritten in place)")
    p.add_argument("--target-accuracy", type=float, default=0.95,
                   help="division accuracy the auto-coded part must reach (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="use a seeded random sample of N validation rows")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from soi_batch.calibration import calibrate_bundle
    from soi_batch.evaluate import EvaluationConfig, load_eval_data

    data = load_eval_data(EvaluationConfig(data="osha-sir", split="validation", limit=args.limit, seed=args.seed))
    record = calibrate_bundle(args.model, data.texts, data.labels, args.target_accuracy,
                              fitted_on=data.description)
    print(f"temperature {record['temperature']:.4f}; review threshold {record['review_threshold']:.4f} "
          f"(division, target {record['target_accuracy']}); auto-coded {record['auto_coded_fraction']:.1%} at "
          f"accuracy {record['auto_coded_accuracy']:.4f}")
    print(f"ECE {record['ece_before']:.4f} -> {record['ece_after']:.4f}; NLL/report {record['nll_before']:.4f} -> "
          f"{record['nll_after']:.4f} (n={record['n']})")
    return 0
