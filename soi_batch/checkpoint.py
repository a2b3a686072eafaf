"""A bundle's ``config.json`` and weights checked against each other before any weight loads.

The model is built from ``config.json`` on torch's meta device (no memory, no weights); its state
dict must match the tensors of the safetensors headers exactly: no tensor missing (an empty file,
a dropped layer), none unexpected, every shape equal.  Otherwise loading would fill the gaps with
random weights and classify with confident garbage.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from soi_batch.errors import BundleError

SUPPORTED_MODEL_TYPES = ("llama", "mistral")
"""``model_type`` values the engines run (tested: soi-mini is Mistral, soi-small Llama)."""


def check_architecture(config_path: Path, config: Any) -> None:
    """Raise :class:`BundleError` unless ``config`` (config.json's value) is a causal LM the engines support."""
    if not isinstance(config, dict):
        raise BundleError(f"{config_path}: not a JSON object; copy the bundle again")
    model_type = config.get("model_type")
    architectures = config.get("architectures") or []
    if model_type not in SUPPORTED_MODEL_TYPES or not isinstance(architectures, list) or not all(
            isinstance(a, str) and a.endswith("ForCausalLM") for a in architectures):
        raise BundleError(
            f"{config_path}: model_type {model_type!r} (architectures {architectures}) is not a causal LM the "
            f"engines support ({', '.join(SUPPORTED_MODEL_TYPES)}); a soi-batch bundle holds a decoder-only "
            "model trained with `soi-batch package` or training/"
        )


def check_tensors(bundle: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """Raise :class:`BundleError` unless ``shapes`` (name → shape from the weight headers) are exactly
    the tensors of the model ``bundle/config.json`` describes (tied weights may be left out)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(str(bundle), trust_remote_code=False)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise BundleError(f"{bundle / 'config.json'}: cannot build the model it describes ({exc}); "
                          "copy the bundle again") from exc
    expected = {name: tuple(t.shape) for name, t in model.state_dict().items()}
    tied: dict[str, str] = model.get_expanded_tied_weights_keys(all_submodels=True)
    missing = [n for n in expected if n not in shapes and n not in tied]  # a tied copy: its source counts
    unexpected = [n for n in shapes if n not in expected]
    wrong = [f"{n} {list(shapes[n])} (config.json needs {list(expected[n])})"
             for n in expected if n in shapes and shapes[n] != expected[n]]
    problems = [f"{len(missing)} missing tensors {_few(missing)}" if missing else "",
                f"{len(unexpected)} unexpected tensors {_few(unexpected)}" if unexpected else "",
                f"wrong shapes: {_few(wrong)}" if wrong else ""]
    problems = [p for p in problems if p]
    if problems:
        raise BundleError(f"{bundle}: the weights do not match config.json ({'; '.join(problems)}); the model would "
                          "run with random weights in their place. Copy the bundle again or re-package it")


def _few(items: list[str]) -> str:
    return f"{items[:3]}{' …' if len(items) > 3 else ''}"
