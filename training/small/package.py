"""Package a trained soi-small adapter as the shipped model (``soi_batch/models/soi-small``).

    python -m training.small.package --run runs/soi-small --out soi_batch/models/soi-small

``--run`` is a ``training.small.train`` output directory (``adapter/`` and ``metrics.json``).  Writes
the adapter files and ``soi_model.json`` (label set, prompt, data fingerprint, the recipe, the base's
provenance and license, the adapter's sha256), then merges it once into the base to record the
merged weights' sha256, which every later build is checked against.  Calibration comes after:
``soi-batch calibrate --model soi-small --write-to soi_batch/models/soi-small``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

from soi_batch.bundle import new_manifest, write_manifest
from soi_batch.commands.options import add_cache_dir_option, add_logging_options, configure_logging
from soi_batch.named_models import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    MANIFEST,
    AdapterModel,
    build_adapter_model,
)
from soi_batch.pretrained import SMOLLM2_135M, sha256_file
from soi_batch.prompt import PromptTemplate

log = logging.getLogger(__name__)
_KEEP = ("train_rows", "validation_rows", "trainable_parameters", "steps", "train_s", "history", "device", "torch",
         "date")


def package(run: Path, out: Path, version: str, cache_dir: Path, command: str = "") -> Path:
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    out.mkdir(parents=True, exist_ok=True)
    for name in (ADAPTER_WEIGHTS, ADAPTER_CONFIG):
        shutil.copy2(run / "adapter" / name, out / name)
    adapter_cfg = json.loads((out / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    adapter_cfg["base_model_name_or_path"] = SMOLLM2_135M.name
    (out / ADAPTER_CONFIG).write_text(json.dumps(adapter_cfg, indent=2) + "\n", encoding="utf-8")
    training = {
        "recipe": "lora (training/small/train.py with training.axolotl_args.SMOLLM2_135M_LORA)",
        "config": metrics["config"],
        "base": asdict(SMOLLM2_135M),
        "adapter_sha256": sha256_file(out / ADAPTER_WEIGHTS),
        "adapter_dtype": "bfloat16",
        "merged_dtype": "float32",
        "command": command,
        **{k: metrics.get(k) for k in _KEEP},
    }
    manifest = new_manifest(model_id="soi-small", model_version=version, prompt=PromptTemplate(),
                            data_fingerprint=metrics.get("data_fingerprint"), training=training,
                            metrics={"validation_quick": metrics.get("validation")})
    write_manifest(out, manifest)
    bundle = build_adapter_model(AdapterModel("soi-small", out, SMOLLM2_135M), cache_dir)
    data = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    data["training"]["merged_weights_sha256"] = sha256_file(bundle / "model.safetensors")
    (out / MANIFEST).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    log.info("soi-small %s packaged in %s (merged bundle %s)", version, out, bundle)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="training.small.train output directory")
    ap.add_argument("--out", default="soi_batch/models/soi-small")
    ap.add_argument("--version", default="0.1.0")
    add_cache_dir_option(ap)
    ap.add_argument("--command", default="", help="the training command, recorded in the manifest")
    add_logging_options(ap)
    args = ap.parse_args(argv)
    configure_logging(args.verbose)
    package(Path(args.run), Path(args.out), args.version, args.cache_dir, args.command)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
