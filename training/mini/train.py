"""Train soi-mini from scratch: BPE tokenizer, LM pre-training on narratives, prompt -> code.

    python -m training.mini.train --out runs/soi-mini --device cuda
    python -m training.mini.train --out /tmp/tiny --config tiny          # seconds, CPU

``--set key=value`` overrides any field of :class:`TrainConfig` / :class:`ModelShape`.
Writes a model bundle to ``OUT/bundle`` and ``OUT/metrics.json``; prints a summary table.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm
from transformers import MistralConfig, MistralForCausalLM, get_cosine_schedule_with_warmup

from soi_batch.commands.options import add_logging_options, configure_logging
from soi_batch.datasets.osha import TEXT_COL, load_split
from soi_batch.prompt import PromptTemplate
from training.mini.config import TINY, TrainConfig
from training.mini.data import ClsExample, batches, cls_examples, lm_sequences, pad, tokenizer_corpus
from training.mini.quick_metrics import quick_eval
from training.mini.tokenizer import check_label_contract, digit_ids, train_tokenizer
from training.options import add_run_options, parse_overrides

log = logging.getLogger(__name__)


def build_model(cfg: TrainConfig, tok: Any) -> MistralForCausalLM:
    s = cfg.shape
    mcfg = MistralConfig(
        vocab_size=len(tok), hidden_size=s.hidden_size, num_hidden_layers=s.num_hidden_layers,
        num_attention_heads=s.num_attention_heads, num_key_value_heads=s.num_key_value_heads,
        intermediate_size=s.intermediate_size, max_position_embeddings=s.max_position_embeddings,
        rope_theta=s.rope_theta, attention_dropout=s.dropout, tie_word_embeddings=True, sliding_window=None,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    return MistralForCausalLM(mcfg)


def _optimizer(model: torch.nn.Module, lr: float, wd: float) -> torch.optim.Optimizer:
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), fused=torch.cuda.is_available())


def _autocast(device: str) -> torch.autocast:
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.startswith("cuda"))


def train_lm(model: MistralForCausalLM, seqs: list[list[int]], cfg: TrainConfig, device: str, pad_id: int) -> float:
    """Stage 1: next-token loss on narratives and titles. Returns the last epoch's mean loss."""
    if cfg.lm_epochs <= 0:
        return float("nan")
    rng = np.random.default_rng(cfg.seed)
    steps = cfg.lm_epochs * math.ceil(len(seqs) / cfg.lm_batch_size)
    opt = _optimizer(model, cfg.lm_lr, cfg.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, int(cfg.warmup_frac * steps), steps)
    model.train()
    loss_sum = 0.0
    for epoch in range(cfg.lm_epochs):
        loss_sum, n = 0.0, 0
        for idx in tqdm(batches(len(seqs), cfg.lm_batch_size, rng), desc=f"lm {epoch}", leave=False, disable=None):
            ids, mask = pad([seqs[i] for i in idx], pad_id)
            ids, mask = ids.to(device), mask.to(device)
            labels = ids.masked_fill(mask == 0, -100)
            with _autocast(device):
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            loss_sum, n = loss_sum + loss.item(), n + 1
        loss_sum /= max(n, 1)
        log.info("lm epoch %d loss %.4f", epoch, loss_sum)
    return loss_sum


def _cls_batch(
    exs: list[ClsExample], cfg: TrainConfig, tok: Any, rng: np.random.Generator, device: str, train: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """ids, mask, (row, pos) of predicted tokens, their targets and per-token weights."""
    seqs = [list(e.ids) for e in exs]
    rows, pos, tgt, wts = [], [], [], []
    for r, (e, s) in enumerate(zip(exs, seqs)):
        if train and cfg.token_dropout > 0:
            drop = rng.random(e.narr_end - e.narr_start) < cfg.token_dropout
            for j in np.nonzero(drop)[0]:
                s[e.narr_start + j] = tok.unk_token_id
        if cfg.lm_weight > 0:  # predict narrative tokens narr_start+1 .. narr_end-1 (original ids)
            for t in range(e.narr_start + 1, e.narr_end):
                rows.append(r), pos.append(t - 1), tgt.append(e.ids[t]), wts.append(cfg.lm_weight)
        for t in range(e.answer_start, len(e.ids)):
            rows.append(r), pos.append(t - 1), tgt.append(e.ids[t]), wts.append(-1.0)  # -1 marks answer
    ids, mask = pad(seqs, tok.pad_token_id)
    as_t = lambda x, dt: torch.tensor(x, dtype=dt, device=device)
    return ids.to(device), mask.to(device), as_t(rows, torch.long), as_t(pos, torch.long), (
        as_t(tgt, torch.long), as_t(wts, torch.float32))


def cls_loss(model: MistralForCausalLM, batch: tuple, label_ids: torch.Tensor, smoothing: float) -> torch.Tensor:
    ids, mask, rows, pos, (tgt, wts) = batch
    h = model.model(input_ids=ids, attention_mask=mask).last_hidden_state
    logits = model.lm_head(h[rows, pos]).float()
    logp = torch.log_softmax(logits, -1)
    nll = -logp.gather(1, tgt[:, None]).squeeze(1)
    answer = wts < 0
    # label smoothing spread over the 11 label tokens only (digits + EOS) on answer positions
    smooth = -logp[:, label_ids].mean(1)
    ans_loss = ((1 - smoothing) * nll + smoothing * smooth)[answer].sum()
    lm_loss = (nll * wts.clamp(min=0))[~answer].sum()
    n_answers = answer.sum().clamp(min=1)
    return (ans_loss + lm_loss) / n_answers


def train_cls(
    model: MistralForCausalLM, train: list[ClsExample], val: list[ClsExample], cfg: TrainConfig, tok: Any,
    device: str, eval_every: int,
) -> tuple[torch.nn.Module, list[dict[str, float]]]:
    """Stage 2: prompt -> code. Returns the model to ship (EMA if enabled) and the eval history."""
    rng = np.random.default_rng(cfg.seed + 1)
    steps = cfg.cls_epochs * math.ceil(len(train) / cfg.cls_batch_size)
    opt = _optimizer(model, cfg.cls_lr, cfg.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, int(cfg.warmup_frac * steps), steps)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay)) if cfg.ema_decay > 0 else None
    label_ids = torch.tensor(digit_ids(tok) + [tok.eos_token_id], device=device)
    history: list[dict[str, float]] = []
    for epoch in range(cfg.cls_epochs):
        model.train()
        loss_sum, n = 0.0, 0
        for idx in tqdm(batches(len(train), cfg.cls_batch_size, rng), desc=f"cls {epoch}", leave=False, disable=None):
            batch = _cls_batch([train[i] for i in idx], cfg, tok, rng, device, train=True)
            with _autocast(device):
                loss = cls_loss(model, batch, label_ids, cfg.label_smoothing)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update_parameters(model)
            loss_sum, n = loss_sum + loss.item(), n + 1
        last = epoch == cfg.cls_epochs - 1
        if last or (eval_every and (epoch + 1) % eval_every == 0):
            shipped = ema.module if ema is not None else model
            m = {"epoch": epoch + 1, "loss": loss_sum / max(n, 1), **quick_eval(shipped, tok, val, device)}
            if ema is not None:
                m["raw_division_acc"] = quick_eval(model, tok, val, device)["division_acc"]
            history.append(m)
            log.info("cls %s", json.dumps(m))
            print(json.dumps(m), flush=True)
    return (ema.module if ema is not None else model), history


def run(cfg: TrainConfig, out: Path, device: str, eval_every: int = 0, command: str = "") -> dict[str, Any]:
    from training.mini.package import package_bundle

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    t0 = time.time()
    prompt = PromptTemplate()
    parts, data_fp = load_split()
    train_df, val_df = parts["train"], parts["validation"]
    if cfg.max_rows:
        train_df, val_df = train_df.head(cfg.max_rows), val_df.head(cfg.max_rows)
    validation_in_training = cfg.train_on == "train+validation"
    if validation_in_training:  # the quick eval below then runs on rows the model was trained on
        train_df = pd.concat([train_df, val_df], ignore_index=True)
    log.info("training on %s: %d rows", cfg.train_on, len(train_df))
    tok = train_tokenizer(tokenizer_corpus(train_df, prompt), cfg.shape.vocab_size, lowercase=cfg.lowercase)
    check_label_contract(tok, prompt.render(val_df[TEXT_COL].iloc[0]), sorted({*train_df["Source"], "8621"}))
    model = build_model(cfg, tok).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model %.2fM parameters", n_params / 1e6)
    lm_seqs = lm_sequences(tok, train_df[TEXT_COL], cfg.max_narrative_tokens, cfg.max_rows)
    lm_loss = train_lm(model, lm_seqs, cfg, device, tok.pad_token_id)
    t_lm = time.time() - t0
    train_ex = cls_examples(tok, train_df, prompt, cfg.max_narrative_tokens)
    val_ex = cls_examples(tok, val_df, prompt, 10**6)
    shipped, history = train_cls(model, train_ex, val_ex, cfg, tok, device, eval_every)
    metrics = {k: v for k, v in history[-1].items() if k not in ("epoch", "loss")}
    summary = {
        "params": n_params, "lm_final_loss": lm_loss, "seconds_lm": round(t_lm, 1),
        "seconds_total": round(time.time() - t0, 1), "train_on": cfg.train_on, "train_rows": len(train_df),
        "validation_in_training": validation_in_training, "validation": metrics, "history": history,
        "config": cfg.to_dict(),
    }
    out.mkdir(parents=True, exist_ok=True)
    bundle_dir = package_bundle(
        shipped.cpu(), tok, out / "bundle", cfg=cfg, data_fingerprint=data_fp,
        metrics={"validation_quick": metrics, "validation_rows": len(val_df), "train_on": cfg.train_on,
                 "train_rows": len(train_df), "validation_in_training": validation_in_training},
        command=command,
        n_params=n_params,
    )
    summary["bundle"] = str(bundle_dir)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_options(ap, device="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--config", choices=["default", "tiny"], default="default")
    ap.add_argument("--eval-every", type=int, default=0, help="validation every N classification epochs")
    add_logging_options(ap)
    args = ap.parse_args(argv)
    configure_logging(args.verbose)
    base = TINY if args.config == "tiny" else TrainConfig()
    cfg = base.with_overrides(**parse_overrides(args.set))
    command = "python -m training.mini.train " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    s = run(cfg, args.out, args.device, args.eval_every, command)
    v = s["validation"]
    print(f"\n{'params':>10} {'div_acc':>8} {'maj_acc':>8} {'div_F1':>8} {'div_nll':>8} {'secs':>6}")
    print(f"{s['params']/1e6:>9.2f}M {v['division_acc']:>8.4f} {v['major_group_acc']:>8.4f} "
          f"{v['division_macro_f1']:>8.4f} {v['division_nll']:>8.4f} {s['seconds_total']:>6.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
