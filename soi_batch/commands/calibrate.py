"""``soi-batch calibrate --model MODEL``: fit temperature and review threshold on the validation split."""

from __future__ import annotations

import argparse
from pathlib import Path

from soi_batch.commands.options import add_model_options
from soi_batch.errors import ConfigError
from soi_batch.named_models import NAMED_MODELS, AdapterModel


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "calibrate", help="fit a bundle's temperature and needs_review threshold on validation reports",
        description="Fit one temperature (NLL of the true code paths) and the lowest division-confidence "
                    "threshold whose auto-coded part reaches --target-accuracy, on the validation part of "
                    "the bundled OSHA split, and write both into the bundle's soi_model.json.")
    add_model_options(p, required=True)
    p.add_argument("--write-to", type=Path, default=None, metavar="DIR",
                   help="directory whose soi_model.json gets the calibration (default: the bundle's own); "
                        "needed for soi-small, whose built bundle takes its manifest from the shipped adapter "
                        "(in a checkout: soi_batch/models/soi-small)")
    p.add_argument("--target-accuracy", type=float, default=0.95,
                   help="division accuracy the auto-coded part must reach (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="use a seeded random sample of N validation rows")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--allow-training-rows", action="store_true",
                   help="calibrate even when the bundle's manifest says its model was trained on the validation "
                        "rows (soi-mini 0.2.0 is): refused by default, because T and the threshold fitted on "
                        "training rows are wrong for new reports; with it a warning is logged and the manifest "
                        "records on_training_rows")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from soi_batch.calibration import calibrate_bundle
    from soi_batch.evaluation import EvaluationConfig, load_eval_data

    data = load_eval_data(EvaluationConfig(data="osha-sir", split="validation", limit=args.limit, seed=args.seed))
    if args.write_to is None and isinstance(NAMED_MODELS.get(args.model), AdapterModel):
        raise ConfigError(f"{args.model} is built from its shipped adapter, whose manifest replaces the built one on "
                          "every load: pass --write-to DIR (the folder holding that adapter's soi_model.json)")
    record = calibrate_bundle(args.model, data.texts, data.labels, args.target_accuracy,
                              fitted_on=data.description, cache_dir=args.cache_dir, write_to=args.write_to,
                              split=data.details["split"], split_fingerprint=data.details["split_fingerprint"],
                              allow_training_rows=args.allow_training_rows)
    print(f"temperature {record['temperature']:.4f}; review threshold {record['review_threshold']:.4f} "
          f"(division, target {record['target_accuracy']}); auto-coded {record['auto_coded_fraction']:.1%} at "
          f"accuracy {record['auto_coded_accuracy']:.4f}")
    print(f"ECE {record['ece_before']:.4f} -> {record['ece_after']:.4f}; NLL/report {record['nll_before']:.4f} -> "
          f"{record['nll_after']:.4f} (n={record['n']})")
    return 0
