"""Fine-tune soi-small: LoRA on SmolLM2-135M-Instruct, prompt → code digits + EOS.

The project's own trainer, run with the settings of the Axolotl recipe
(:data:`training.axolotl_args.SMOLLM2_135M_LORA`; ``training/configs/smollm2-135m-lora.yml`` is the
same recipe for Axolotl).  It is used on the lent GPU, where Axolotl cannot be installed; what it
shares with Axolotl's ``type: alpaca`` / ``train_on_inputs: false``: the prompt is masked, the loss is
the next-token cross-entropy over the whole vocabulary on the code's digits and EOS, LoRA on every
linear layer of the decoder, AdamW, cosine schedule with linear warm-up, gradient clipping.
Prompts are encoded by :class:`soi_batch.encoding.PromptEncoder`, the encoder inference uses.

    python -m training.small.train --base BASE_DIR --out runs/soi-small [--set lora_r=16 label_smoothing=0.1]

Writes ``OUT/adapter/`` (``adapter_model.safetensors`` in bf16 + ``adapter_config.json``) and
``OUT/metrics.json`` (validation metrics after each epoch, the settings, times).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from soi_batch.commands.options import add_logging_options, configure_logging
from soi_batch.datasets.osha import LABEL_COL, TEXT_COL, load_split
from soi_batch.encoding import PromptEncoder
from soi_batch.prompt import PromptTemplate
from training.axolotl_args import SMOLLM2_135M_LORA, AxolotlRecipe
from training.mini.data import pad
from training.options import add_run_options, parse_overrides, route_overrides

log = logging.getLogger(__name__)
MAX_PROMPT_TOKENS = 512


@dataclass(frozen=True)
class SmallTrainConfig:
    recipe: AxolotlRecipe = SMOLLM2_135M_LORA
    """LoRA and optimiser settings (the Axolotl recipe's fields)."""
    label_smoothing: float = 0.0
    """Label smoothing of the answer tokens' cross-entropy."""
    lm_weight: float = 0.0
    """Weight of a language-model loss on the narrative tokens (0: answer tokens only, as Axolotl)."""
    train_on: str = "train"
    """"train" (validation held out for tuning and calibration) or "train+validation"."""
    max_rows: int | None = None
    """Use the first N (shuffled) training rows only (smoke runs)."""
    max_validation_rows: int | None = None
    """Evaluate on the first N validation rows only (smoke runs)."""
    max_train_s: float | None = None
    """Wall-clock budget of the training loop (lent GPU time is rationed): the cosine schedule then
    follows whichever is further along, steps or time, so a run cut by the budget still ends annealed."""
    length_buckets: int = 16
    """Batches are drawn from groups of ``length_buckets`` × batch rows sorted by length (less padding)."""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.train_on not in ("train", "train+validation"):
            raise ValueError(f"train_on must be 'train' or 'train+validation', got {self.train_on!r}")
        if not 0 <= self.label_smoothing < 1 or self.lm_weight < 0:
            raise ValueError("label_smoothing must be in [0, 1) and lm_weight ≥ 0")


def with_overrides(cfg: SmallTrainConfig, items: list[str]) -> SmallTrainConfig:
    """``key=value`` overrides of the config's or the recipe's fields (values parsed as JSON)."""
    own = {f.name for f in fields(SmallTrainConfig)} - {"recipe", "extra"}
    recipe_keys = {f.name for f in fields(AxolotlRecipe)}
    routed = route_overrides(parse_overrides(items, parse_value=json.loads), {"own": own, "recipe": recipe_keys},
                             what="--set")
    return replace(cfg, recipe=replace(cfg.recipe, **routed["recipe"]), **routed["own"])


@dataclass
class Example:
    ids: list[int]
    """Prompt ids (exactly what the engine feeds) + code digit ids + EOS."""
    answer_start: int
    narr_start: int
    narr_end: int
    code: str


def encode_examples(encoder: PromptEncoder, frame: pd.DataFrame) -> list[Example]:
    prefix, suffix = len(encoder.shared_prefix_ids), len(encoder.suffix_ids)
    digits, eos = encoder.label_token_ids[:10], encoder.label_token_ids[10]
    out = []
    for enc, code in zip(encoder.encode(frame[TEXT_COL].tolist()), frame[LABEL_COL]):
        if enc.ids is None:
            continue
        answer = [digits[int(d)] for d in code] + [eos]
        out.append(Example(enc.ids + answer, len(enc.ids), prefix, len(enc.ids) - suffix, str(code)))
    return out


def batch_order(lengths: np.ndarray, batch: int, buckets: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Shuffled batches of similar lengths: shuffle, sort groups of ``buckets`` batches, shuffle batches."""
    order = rng.permutation(len(lengths))
    out = []
    group = batch * buckets
    for start in range(0, len(order), group):
        chunk = order[start:start + group]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        out += [chunk[i:i + batch] for i in range(0, len(chunk), batch)]
    return [out[i] for i in rng.permutation(len(out))]


def _targets(rows: list[Example], start_of: str, end_of: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, position, target id) of every token in ``[start, end)``: predicted from position − 1."""
    r, p, t = [], [], []
    for i, e in enumerate(rows):
        start, end = getattr(e, start_of), (len(e.ids) if end_of == "len" else getattr(e, end_of))
        r += [i] * (end - start)
        p += list(range(start - 1, end - 1))
        t += e.ids[start:end]
    return np.array(r), np.array(p), np.array(t)


def batch_loss(model: Any, rows: list[Example], cfg: SmallTrainConfig, pad_id: int, device: str) -> Any:
    import torch
    import torch.nn.functional as F

    ids, mask = pad([e.ids for e in rows], pad_id)
    ids, mask = ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
    decoder, head = model.model, model.lm_head
    with torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16,
                        enabled=device.startswith("cuda")):
        hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
        r, p, t = (torch.from_numpy(a).to(device) for a in _targets(rows, "answer_start", "len"))
        logits = head(hidden[r, p]).float()
        loss = F.cross_entropy(logits, t, label_smoothing=cfg.label_smoothing)
        if cfg.lm_weight > 0:
            r, p, t = (torch.from_numpy(a).to(device) for a in _targets(rows, "narr_start", "narr_end"))
            loss = loss + cfg.lm_weight * F.cross_entropy(head(hidden[r, p]).float(), t)
    return loss


def validation_metrics(model: Any, encoder: PromptEncoder, examples: list[Example], device: str,
                       batch_size: int = 128) -> dict[str, float]:
    """Division and major-group accuracy, division macro-F1 and NLL on ``examples`` (model selection).

    Division: arg-max of the first digit over 1-9.  Major group: arg-max over valid major groups of
    ``P(d1) · P(d2 | d1)``, each step renormalised over the digits the OIICS trie allows.
    """
    import torch
    from sklearn.metrics import f1_score

    from soi_batch.taxonomy import load_taxonomy

    digits = torch.tensor(encoder.label_token_ids[:10], device=device)
    pad_id = encoder.label_token_ids[10]
    prompts = [e.ids[:e.answer_start] for e in examples]

    @torch.no_grad()
    def digit_logp(seqs: list[list[int]]) -> np.ndarray:
        out = []
        for i in range(0, len(seqs), batch_size):
            ids, mask = pad(seqs[i:i + batch_size], pad_id)
            ids, mask = ids.to(device), mask.to(device)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda")):
                h = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
            last = h[torch.arange(len(ids), device=device), mask.sum(1) - 1]
            out.append(torch.log_softmax(model.lm_head(last).float()[:, digits], -1).cpu().numpy())
        return np.concatenate(out)

    was_training = model.training
    model.eval()
    majors = sorted({label[:2] for label in load_taxonomy().labels})
    lp1 = digit_logp(prompts)[:, 1:]
    lp1 = lp1 - np.logaddexp.reduce(lp1, axis=1, keepdims=True)
    score = np.full((len(examples), len(majors)), -np.inf)
    for d1 in range(1, 10):
        allowed = [int(m[1]) for m in majors if m[0] == str(d1)]
        lp2 = digit_logp([p + [encoder.label_token_ids[d1]] for p in prompts])[:, allowed]
        lp2 = lp2 - np.logaddexp.reduce(lp2, axis=1, keepdims=True)
        for j, d2 in enumerate(allowed):
            score[:, majors.index(f"{d1}{d2}")] = lp1[:, d1 - 1] + lp2[:, j]
    if was_training:
        model.train()
    y_div = np.array([e.code[0] for e in examples])
    y_maj = np.array([e.code[:2] for e in examples])
    pred_div = np.array([str(d + 1) for d in lp1.argmax(1)])
    pred_maj = np.array(majors)[score.argmax(1)]
    return {
        "division_acc": round(float(np.mean(pred_div == y_div)), 4),
        "major_group_acc": round(float(np.mean(pred_maj == y_maj)), 4),
        "division_macro_f1": round(float(f1_score(y_div, pred_div, average="macro")), 4),
        "division_nll": round(float(-lp1[np.arange(len(examples)), y_div.astype(int) - 1].mean()), 4),
        "n": len(examples),
    }


def save_adapter(peft_model: Any, out: Path) -> Path:
    """peft's adapter files, with the tensors stored in bf16 (what ships and what is merged)."""
    import torch
    from safetensors.torch import load_file, save_file

    peft_model.save_pretrained(str(out))
    (out / "README.md").unlink(missing_ok=True)  # peft's blank model card; the bundle has its own
    file = out / "adapter_model.safetensors"
    tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(file)).items()}
    save_file(tensors, str(file), metadata={"format": "pt"})
    return out


def train(base: Path, out: Path, cfg: SmallTrainConfig, device: str) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    recipe = cfg.recipe
    torch.manual_seed(recipe.seed)
    rng = np.random.default_rng(recipe.seed)
    started = time.perf_counter()
    parts, fingerprint = load_split()
    frame = parts["train"] if cfg.train_on == "train" else pd.concat([parts["train"], parts["validation"]])
    tok = AutoTokenizer.from_pretrained(str(base), trust_remote_code=False)
    encoder = PromptEncoder(tok, PromptTemplate(), max_prompt_tokens=MAX_PROMPT_TOKENS, source=str(base))
    train_rows = encode_examples(encoder, frame)
    if cfg.max_rows:
        train_rows = [train_rows[i] for i in rng.permutation(len(train_rows))[:cfg.max_rows]]
    val_rows = encode_examples(encoder, parts["validation"])[:cfg.max_validation_rows]
    pad_id = encoder.label_token_ids[10]

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=dtype, trust_remote_code=False).to(device)
    lora = LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
                      target_modules="all-linear", bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, lora)
    inner = peft_model.base_model.model  # the LlamaForCausalLM with LoRA layers injected
    params = [p for p in peft_model.parameters() if p.requires_grad]
    trainable = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=recipe.learning_rate, betas=(0.9, recipe.adam_beta2), eps=recipe.adam_epsilon,
                            weight_decay=recipe.weight_decay, fused=device.startswith("cuda"))
    lengths = np.array([len(e.ids) for e in train_rows])
    batch = recipe.micro_batch_size * recipe.gradient_accumulation_steps  # one forward: memory is no limit here
    steps_per_epoch = math.ceil(len(train_rows) / batch)
    total = recipe.max_steps or steps_per_epoch * recipe.num_epochs

    def progress() -> float:
        by_time = (time.perf_counter() - t_train) / cfg.max_train_s if cfg.max_train_s else 0.0
        return min(1.0, max(step / total, by_time))

    def set_lr() -> None:
        warm = min(1.0, (step + 1) / recipe.warmup_steps) if recipe.warmup_steps else 1.0
        lr = recipe.learning_rate * min(warm, 0.5 * (1 + math.cos(math.pi * progress())))
        for group in opt.param_groups:
            group["lr"] = lr
    log.info("soi-small: %d train rows, %d validation rows, %d trainable parameters, %d steps", len(train_rows),
             len(val_rows), trainable, total)
    history: list[dict[str, Any]] = []
    step, t_train = 0, time.perf_counter()
    peft_model.train()
    for epoch in range(recipe.num_epochs):
        losses = []
        for idx in batch_order(lengths, batch, cfg.length_buckets, rng):
            set_lr()
            loss = batch_loss(inner, [train_rows[i] for i in idx], cfg, pad_id, device)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, recipe.max_grad_norm)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            step += 1
            if progress() >= 1.0:
                break
        mean_loss = float(torch.stack(losses).mean())
        metrics = validation_metrics(inner, encoder, val_rows, device) if val_rows else {}
        history.append({"epoch": epoch + 1, "step": step, "train_loss": round(mean_loss, 4),
                        "elapsed_s": round(time.perf_counter() - t_train, 1), **metrics})
        log.info("epoch %d: %s", epoch + 1, history[-1])
        (out / "history.json").write_text(json.dumps(history, indent=2) + "\n", encoding="utf-8")
        if progress() >= 1.0:
            break
    train_s = time.perf_counter() - t_train
    save_adapter(peft_model, out / "adapter")
    result = {
        "config": {**asdict(cfg), "recipe": asdict(recipe)},
        "base": str(base),
        "data_fingerprint": fingerprint,
        "train_rows": len(train_rows),
        "validation_rows": len(val_rows),
        "trainable_parameters": trainable,
        "steps": step,
        "train_s": round(train_s, 1),
        "total_s": round(time.perf_counter() - started, 1),
        "history": history,
        "validation": history[-1] if history else None,
        "device": torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True, help="the converted base directory (soi_batch.pretrained.prepare_base)")
    add_run_options(ap, device="cuda")
    add_logging_options(ap)
    args = ap.parse_args(argv)
    configure_logging(args.verbose)
    cfg = with_overrides(SmallTrainConfig(), args.set)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = train(Path(args.base), out, cfg, args.device)
    print(json.dumps({"out": str(out), "validation": result["validation"], "train_s": result["train_s"]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
