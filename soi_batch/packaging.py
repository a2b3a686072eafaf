"""Merge a (Q)LoRA adapter into its base model and write a soi-batch model bundle.

QLoRA trains against 4-bit NF4 weights, but the adapter is merged into the **bf16 base**
(loaded unquantised), never into the 4-bit weights: merging into quantised weights would
round the merged result to NF4 again.  The bundle gets safetensors weights, the tokenizer,
and ``soi_model.json`` with the label set, prompt template, data fingerprint and the Axolotl
config the adapter was trained with.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from soi_batch.bundle import ModelBundle, load_bundle, new_manifest, write_manifest
from soi_batch.errors import BundleError
from soi_batch.prompt import PromptTemplate

log = logging.getLogger(__name__)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                    "chat_template.jinja")


@dataclass(frozen=True)
class PackageConfig:
    model_id: str = "soi-mistral-7b-qlora"
    model_version: str = "0"
    dtype: str = "bfloat16"
    """dtype of the base the adapter is merged into and of the saved weights."""
    device: str = "cpu"
    axolotl_config: Path | None = None
    """The Axolotl YAML the adapter was trained with (default: ``ADAPTER/../*.yml`` if one)."""
    data_dir: Path | None = None
    """training.prepare_data output (for fingerprint.json); default: from the Axolotl config."""
    max_shard_size: str = "5GB"


def merge_adapter(base: str | Path, adapter: str | Path, out: str | Path, *, dtype: str = "bfloat16",
                  device: str = "cpu", max_shard_size: str = "5GB") -> Path:
    """``PeftModel.from_pretrained(base, adapter).merge_and_unload()`` saved as safetensors in ``out``."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, adapter, out = Path(base), Path(adapter), Path(out)
    if not (adapter / "adapter_config.json").is_file():
        raise BundleError(f"{adapter}: no adapter_config.json; pass the Axolotl output_dir holding the adapter")
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    log.info("merging %s adapter (r=%s) into %s base %s", cfg.get("peft_type"), cfg.get("r"), dtype, base)
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=getattr(torch, dtype), device_map=device,
                                                 trust_remote_code=False, use_safetensors=True)
    if getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False):
        raise BundleError(f"{base}: base loaded quantised; merge needs the unquantised {dtype} weights")
    merged = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(str(out), safe_serialization=True, max_shard_size=max_shard_size)
    tok_src = adapter if any((adapter / f).is_file() for f in ("tokenizer.json", "tokenizer.model")) else base
    for name in _TOKENIZER_FILES:
        if (tok_src / name).is_file():
            shutil.copy2(tok_src / name, out / name)
    del merged, model
    return out


def _find_axolotl_config(adapter: Path) -> Path | None:
    for folder in (adapter, adapter.parent):
        ymls = sorted(folder.glob("*.yml")) + sorted(folder.glob("*.yaml"))
        if len(ymls) == 1:
            return ymls[0]
    return None


def _data_fingerprint(axolotl: dict[str, Any] | None, data_dir: Path | None) -> dict[str, Any] | None:
    candidates = [data_dir] if data_dir else []
    if axolotl and axolotl.get("datasets"):
        candidates.append(Path(axolotl["datasets"][0]["path"]).parent)
    for folder in candidates:
        if folder and (folder / "fingerprint.json").is_file():
            return json.loads((folder / "fingerprint.json").read_text())
    return None


def package(base: str | Path, adapter: str | Path, out: str | Path, cfg: PackageConfig = PackageConfig()) -> ModelBundle:
    """Merge, write the manifest, and validate the result with :func:`soi_batch.bundle.load_bundle`."""
    base, adapter, out = Path(base), Path(adapter), Path(out)
    prompt = PromptTemplate()
    config_path = cfg.axolotl_config or _find_axolotl_config(adapter)
    axolotl = yaml.safe_load(config_path.read_text()) if config_path else None
    data = _data_fingerprint(axolotl, cfg.data_dir)
    if data and data.get("prompt_sha256") not in (None, prompt.sha256):
        raise BundleError(
            f"the training data was prepared with prompt {data.get('prompt_sha256')}, this soi-batch's template is "
            f"{prompt.sha256}; re-run training.prepare_data and retrain"
        )
    merge_adapter(base, adapter, out, dtype=cfg.dtype, device=cfg.device, max_shard_size=cfg.max_shard_size)
    adapter_cfg = json.loads((adapter / "adapter_config.json").read_text())
    training = {
        "recipe": "axolotl-qlora" if axolotl and axolotl.get("adapter") == "qlora" else "peft-lora",
        "base_model": str(axolotl.get("base_model")) if axolotl else str(base),
        "base_path": str(base),
        "adapter_path": str(adapter),
        "merged_dtype": cfg.dtype,
        "merged_into": "unquantised base weights (bf16 unless --dtype says otherwise)",
        "adapter_config": {k: adapter_cfg.get(k) for k in ("peft_type", "r", "lora_alpha", "lora_dropout",
                                                            "target_modules", "bias")},
        "axolotl_config": axolotl,
        "data": data,
    }
    manifest = new_manifest(model_id=cfg.model_id, model_version=cfg.model_version, prompt=prompt,
                            data_fingerprint=data.get("data_fingerprint") if data else None, training=training)
    write_manifest(out, manifest)
    if config_path:
        shutil.copy2(config_path, out / "axolotl_config.yml")
    bundle = load_bundle(out)
    log.info("bundle %s written to %s", bundle.model_id, out)
    return bundle
