"""``soi-batch package --base DIR --adapter DIR --out BUNDLE [--evaluate]``.

Merges a (Q)LoRA adapter (Axolotl's ``output_dir``) into the unquantised bf16 base and writes
a model bundle: safetensors weights, tokenizer, ``soi_model.json`` (label set, prompt template,
data fingerprint, Axolotl config).  Needs the ``train`` extra (peft).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
from pathlib import Path

from soi_batch.bundle import load_bundle, write_manifest
from soi_batch.commands.options import add_progress_option, progress_wanted
from soi_batch.errors import ConfigError

log = logging.getLogger(__name__)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("package", help="merge a LoRA/QLoRA adapter into its base and write a model bundle",
                       description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("--base", required=True, help="base model directory (unquantised weights)")
    p.add_argument("--adapter", required=True, help="adapter directory (Axolotl output_dir)")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--axolotl-config", default=None, help="Axolotl YAML used for training (default: found beside the adapter)")
    p.add_argument("--data", default=None, help="training.prepare_data output dir (default: from the Axolotl config)")
    p.add_argument("--model-id", default="soi-mistral-7b-qlora")
    p.add_argument("--model-version", default="0")
    p.add_argument("--dtype", choices=("bfloat16", "float16", "float32"), default="bfloat16",
                   help="dtype of the base the adapter is merged into (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="where to merge: cpu or cuda (default: %(default)s)")
    p.add_argument("--evaluate", action="store_true",
                   help="evaluate the new bundle (soi_batch.evaluation) and store the headline metrics in its manifest")
    p.add_argument("--eval-data", default="osha-sir", help="labelled data for --evaluate (default: %(default)s, test split)")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate a seeded sample of N reports")
    p.add_argument("--eval-report", default=None, help="report directory (default: BUNDLE-eval)")
    add_progress_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from soi_batch.packaging import PackageConfig, package

    if importlib.util.find_spec("peft") is None:  # checked before the base model loads
        raise ConfigError("soi-batch package merges the adapter with peft, which is not installed: "
                          "pip install 'soi-batch[train]' (or pip install -e '.[train]' in a checkout)")
    cfg = PackageConfig(
        model_id=args.model_id, model_version=args.model_version, dtype=args.dtype, device=args.device,
        axolotl_config=Path(args.axolotl_config) if args.axolotl_config else None,
        data_dir=Path(args.data) if args.data else None,
    )
    bundle = package(args.base, args.adapter, args.out, cfg)
    print(f"wrote bundle {bundle.model_id} to {bundle.path}")
    if args.evaluate:
        from soi_batch.evaluation import EvaluationConfig, evaluate

        report = Path(args.eval_report or f"{Path(args.out).resolve()}-eval")
        evaluate(EvaluationConfig(data=args.eval_data, model=str(bundle.path), limit=args.eval_limit,
                                  baseline=False), report, progress=progress_wanted(args))
        result = json.loads((report / "metrics.json").read_text(encoding="utf-8"))
        manifest = bundle.manifest.model_copy(update={"metrics": {
            "evaluated_on": result.get("data", {}).get("description"), "n": result.get("n"),
            **{k: result[k] for k in ("division", "major_group", "code", "ece", "aurc") if k in result},
        }})
        write_manifest(bundle.path, manifest)
        load_bundle(bundle.path)
        print(f"evaluation report: {report}/report.md")
    return 0
