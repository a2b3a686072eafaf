"""The recipe's QLoRA path on a GPU with peft + bitsandbytes + transformers' Trainer.

Axolotl itself is not installed on the lent GPU machine (only wheels can be carried there), so
this runs the same settings — read from :data:`training.axolotl_args.MISTRAL_7B_QLORA` — through
the libraries Axolotl drives: bitsandbytes 4-bit NF4 (double quant, bf16 compute), peft LoRA on
every linear layer, ``adamw_bnb_8bit``, cosine schedule, gradient checkpointing, prompt tokens
masked (``train_on_inputs: false``), EOS after the code.

    python -m training.qlora_device train --shape 1b --steps 200 --out OUT   # train, merge, bundle, classify
    python -m training.qlora_device bench --shape 7b --steps 12 --out OUT    # step time, memory, tokens/s
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import random
import time
from pathlib import Path

from soi_batch.datasets.osha import OSHA_SIR
from soi_batch.prompt import PromptTemplate
from training.axolotl_args import MISTRAL_7B_QLORA, AxolotlRecipe

log = logging.getLogger(__name__)


def tokenize_alpaca(records: list[dict], tokenizer, recipe: AxolotlRecipe) -> list[dict]:
    """Axolotl's alpaca tokenisation: BOS + prompt (labels masked) + output + EOS, cut at sequence_len."""
    prompt = PromptTemplate()
    out = []
    for rec in records:
        text = prompt.system + prompt.turn.format(instruction=rec["instruction"], input=rec["input"])
        p_ids = tokenizer(text).input_ids
        a_ids = tokenizer(rec["output"], add_special_tokens=False).input_ids + [tokenizer.eos_token_id]
        ids = (p_ids + a_ids)[: recipe.sequence_len]
        labels = ([-100] * len(p_ids) + a_ids)[: recipe.sequence_len]
        out.append({"input_ids": ids, "labels": labels, "attention_mask": [1] * len(ids)})
    return out


def load_jsonl(path: Path, limit: int | None = None) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return rows[:limit] if limit else rows


def qlora_model(base_dir: Path, recipe: AxolotlRecipe):
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    bnb = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.bfloat16,
    )
    model = AutoModelForCausalLM.from_pretrained(str(base_dir), trust_remote_code=False, quantization_config=bnb, dtype=torch.bfloat16,
                                                 device_map={"": 0})
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=recipe.gradient_checkpointing,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    lora = LoraConfig(r=recipe.lora_r, lora_alpha=recipe.lora_alpha, lora_dropout=recipe.lora_dropout,
                      target_modules="all-linear", bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, lora)


def trainer_for(model, tokenizer, train, recipe: AxolotlRecipe, out: Path, steps: int, timings: list[float],
                max_train_s: float = float("inf")):
    import torch
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainerCallback, TrainingArguments

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            torch.cuda.synchronize()
            timings.append(time.perf_counter())
            if timings[-1] - timings[0] > max_train_s:  # device time is rationed: stop early, say so
                log.warning("stopping after %d steps: %.0f s training budget spent", state.global_step, max_train_s)
                control.should_training_stop = True

    args = TrainingArguments(
        output_dir=str(out), max_steps=steps, per_device_train_batch_size=recipe.micro_batch_size,
        per_device_eval_batch_size=recipe.eval_batch_size,
        gradient_accumulation_steps=recipe.gradient_accumulation_steps, learning_rate=recipe.learning_rate,
        lr_scheduler_type=recipe.lr_scheduler, warmup_steps=recipe.warmup_steps, max_grad_norm=recipe.max_grad_norm,
        adam_beta2=recipe.adam_beta2, adam_epsilon=recipe.adam_epsilon, weight_decay=recipe.weight_decay,
        optim=recipe.optimizer, bf16=True, gradient_checkpointing=recipe.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False}, logging_steps=10, save_strategy="no",
        report_to=[], seed=recipe.seed, dataloader_num_workers=2, remove_unused_columns=False,
    )
    collator = DataCollatorForSeq2Seq(tokenizer, pad_to_multiple_of=64, label_pad_token_id=-100)
    return Trainer(model=model, args=args, train_dataset=train, data_collator=collator, callbacks=[Clock()])


def measure(trainer, timings: list[float], train: list[dict], recipe: AxolotlRecipe, warmup: int) -> dict:
    import torch

    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - t0
    steps = len(timings)
    deltas = [b - a for a, b in zip(timings[warmup:], timings[warmup + 1 :])]
    step_s = sum(deltas) / len(deltas) if deltas else float("nan")
    mean_tokens = sum(len(r["input_ids"]) for r in train) / len(train)
    seqs_per_step = recipe.micro_batch_size * recipe.gradient_accumulation_steps
    return {
        "optimizer_steps": steps, "train_wall_s": round(wall, 1), "step_s": round(step_s, 4),
        "sequences_per_step": seqs_per_step, "mean_tokens_per_sequence": round(mean_tokens, 1),
        "tokens_per_s": round(seqs_per_step * mean_tokens / step_s, 1),
        "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "peak_gpu_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 2),
        "final_train_loss": round(result.training_loss, 4),
    }


def main(argv: list[str] | None = None) -> int:
    import torch
    from transformers import AutoTokenizer

    from soi_batch.commands.options import add_logging_options, configure_logging
    from soi_batch.datasets.osha import load_split
    from training.prepare_data import prepare
    from training.tiny_base import SHAPES, build_base

    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("train", "bench"))
    ap.add_argument("--shape", choices=sorted(SHAPES), default="1b")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=2, help="optimizer steps left out of the step time")
    ap.add_argument("--work", default="/tmp/qlora")
    ap.add_argument("--tokenizer-from", default=None, help="reuse this base's tokenizer (skip training one)")
    ap.add_argument("--classify", type=int, default=500, help="test reports classified after merging")
    ap.add_argument("--max-train-s", type=float, default=float("inf"), help="stop training after this long")
    ap.add_argument("--out", required=True, help="where the JSON results go")
    add_logging_options(ap)
    args = ap.parse_args(argv)
    configure_logging(args.verbose)
    work, out = Path(args.work), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recipe = MISTRAL_7B_QLORA
    data = work / "prepared"
    if not (data / "train.jsonl").is_file():
        prepare(OSHA_SIR, data)
    base = work / f"base-{args.shape}"
    t0 = time.perf_counter()
    if not (base / "config.json").is_file():
        parts, _ = load_split()
        build_base(base, parts["train"]["Final Narrative"].iloc[:4000].tolist(), args.shape, dtype="bfloat16",
                   device="cuda")
        torch.cuda.empty_cache()
    build_s = time.perf_counter() - t0
    tokenizer = AutoTokenizer.from_pretrained(str(base), trust_remote_code=False)
    records = load_jsonl(data / "train.jsonl")
    random.Random(0).shuffle(records)
    train = tokenize_alpaca(records, tokenizer, recipe)
    t0 = time.perf_counter()
    model = qlora_model(base, recipe)
    load_s = time.perf_counter() - t0
    trainable, total = model.get_nb_trainable_parameters()
    timings: list[float] = []
    trainer = trainer_for(model, tokenizer, train, recipe, work / f"run-{args.shape}", args.steps, timings,
                          args.max_train_s)
    res = measure(trainer, timings, train, recipe, args.warmup)
    res.update({
        "mode": args.mode, "shape": args.shape, "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__, "params_total": total, "params_trainable": trainable,
        "build_base_s": round(build_s, 1), "load_4bit_s": round(load_s, 1),
        "date": time.strftime("%Y-%m-%d"),
    })
    reports, epochs = 16000, recipe.num_epochs
    steps_3ep = math.ceil(reports / res["sequences_per_step"]) * epochs
    res["projected_steps_3_epochs_16k"] = steps_3ep
    res["projected_train_hours_3_epochs_16k"] = round(steps_3ep * res["step_s"] / 3600, 2)
    log.info("results: %s", res)
    if args.mode == "train":
        adapter = work / f"adapter-{args.shape}"
        trainer.model.save_pretrained(str(adapter))
        tokenizer.save_pretrained(str(adapter))
        recipe.with_overrides(base_model=str(base), data_dir=str(data), max_steps=args.steps).write(
            adapter / "axolotl_config.yml")
        del trainer, model
        torch.cuda.empty_cache()
        from soi_batch.classifier import Classifier, ClassifierConfig
        from soi_batch.packaging import PackageConfig, package

        t0 = time.perf_counter()
        bundle = package(base, adapter, work / f"bundle-{args.shape}",
                         PackageConfig(model_id=f"soi-random-{args.shape}-qlora", device="cuda"))
        res["merge_package_s"] = round(time.perf_counter() - t0, 1)
        parts, _ = load_split()
        test = parts["test"].iloc[: args.classify]
        clf = Classifier.load(bundle.path, ClassifierConfig(engine="hf", device="cuda", batch_size=64))
        t0 = time.perf_counter()
        preds = clf.classify_texts(test["Final Narrative"].tolist())
        res["classify_s"] = round(time.perf_counter() - t0, 2)
        codes = [p.code for p in preds]
        res["classified"] = len(codes)
        res["classify_errors"] = sum(p.error is not None for p in preds)
        res["test_accuracy_code"] = round(sum(c == g for c, g in zip(codes, test["Source"])) / len(codes), 4)
        res["test_accuracy_division"] = round(
            sum((c or "")[:1] == g[:1] for c, g in zip(codes, test["Source"])) / len(codes), 4)
        from collections import Counter

        res["top_predicted_codes"] = Counter(codes).most_common(5)
        res["bundle_files"] = sorted(p.name for p in bundle.path.iterdir())
    (out / f"{args.mode}-{args.shape}.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(json.dumps(res, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
