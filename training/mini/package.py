"""Write a soi-mini model bundle: fp16 safetensors, tokenizer, ``soi_model.json``, model card."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from soi_batch.bundle import load_bundle, new_manifest, write_manifest
from soi_batch.prompt import PromptTemplate
from training.mini.config import TrainConfig
from training.mini.tokenizer import check_label_contract

log = logging.getLogger(__name__)

MODEL_ID = "soi-mini"
MODEL_VERSION = "0.2.0"


def package_bundle(
    model: PreTrainedModel, tok: PreTrainedTokenizerFast, out: Path, *, cfg: TrainConfig, data_fingerprint: str,
    metrics: dict[str, Any], command: str, n_params: int,
) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    prompt = PromptTemplate()
    check_label_contract(tok, prompt.render("Employee was struck by a forklift."), ["8621", "66", "9999"])
    model = model.to(torch.float16)
    model.config.use_cache = True
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    training = {"command": command, "seed": cfg.seed, **cfg.to_dict(), "parameters": n_params}
    manifest = new_manifest(
        model_id=MODEL_ID, model_version=MODEL_VERSION, prompt=prompt, data_fingerprint=data_fingerprint,
        metrics=metrics, training=training,
    )
    write_manifest(out, manifest)
    (out / "README.md").write_text(model_card(cfg, metrics, command, n_params), encoding="utf-8")
    load_bundle(out)  # validate what was written
    log.info("bundle written to %s", out)
    return out


def model_card(cfg: TrainConfig, metrics: dict[str, Any], command: str, n_params: int) -> str:
    s = cfg.shape
    v = metrics.get("validation_quick", {})
    if cfg.train_on == "train+validation":
        trained_on = ("Trained on train + validation (2015-01..2016-08, "
                      f"{metrics.get('train_rows', '?')} reports); validation is therefore not held out.")
        val_note = "\n\n**Not held out**: the model was trained on these validation rows.\n"
    else:
        trained_on = ("Trained on train only; validation was held out for model selection and "
                      "calibration.")
        val_note = ""
    return f"""# soi-mini {MODEL_VERSION}

Small causal LM (Mistral architecture, trained from scratch) that scores OIICS v2.01 *source of
injury* codes for workplace accident narratives; soi-batch's embedded CPU default.

## Architecture
`MistralForCausalLM`: hidden {s.hidden_size}, {s.num_hidden_layers} layers, {s.num_attention_heads} attention heads /
{s.num_key_value_heads} KV heads (GQA), MLP {s.intermediate_size}, tied embeddings, vocabulary {s.vocab_size}
(own byte-level BPE, lower-cased, digits one per token), {n_params / 1e6:.2f}M parameters, stored fp16
(load as float32).

## Data and split
OSHA Severe Injury Reports 2015-2016 bundled with soi-batch (`soi_batch/datasets/osha.py`): train
2015-01..2016-06, validation 2016-07..08, test 2016-09..12 (never used in training or tuning).
{trained_on} Stage 1: language modelling on those narratives and the OIICS source titles
({cfg.lm_epochs} epochs). Stage 2: `PromptTemplate().render(narrative)` -> code digits + `</s>`
({cfg.cls_epochs} epochs, label smoothing {cfg.label_smoothing} over the label tokens, LM loss on the
narrative at weight {cfg.lm_weight}, token dropout {cfg.token_dropout}, EMA {cfg.ema_decay}).

## Validation (quick metrics from `training/mini/quick_metrics.py`){val_note}
| division acc | major-group acc | division macro-F1 |
| --- | --- | --- |
| {v.get('division_acc', float('nan')):.4f} | {v.get('major_group_acc', float('nan')):.4f} | {v.get('division_macro_f1', float('nan')):.4f} |

Test metrics are added by the official evaluation.

## Rebuild
```
{command}
```
Calibration temperature 1.0 (not fitted yet). Full hyper-parameters in `soi_model.json` (`training`).

```json
{json.dumps(cfg.to_dict(), indent=1)}
```
"""
