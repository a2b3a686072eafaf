"""The Axolotl QLoRA recipe: generated YAML, prepared alpaca data, and Axolotl's own prompt format."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from soi_batch.datasets.osha import OSHA_SIR, load_split
from soi_batch.errors import InputSchemaError
from soi_batch.prompt import PromptTemplate, normalize_narrative
from training.axolotl_args import CONFIG_DIR, MISTRAL_7B_QLORA, TINY_LORA_CPU
from training.axolotl_args import main as axolotl_args_main
from training.prepare_data import PrepareConfig, prepare

SEED_SETTINGS = {
    "base_model": "mistralai/Mistral-7B-v0.1",
    "adapter": "qlora",
    "load_in_4bit": True,
    "lora_r": 32,
    "lora_alpha": 16,
    "lora_dropout": 0.05,
    "lora_target_linear": True,
    "sequence_len": 896,
    "micro_batch_size": 16,
    "eval_batch_size": 16,
    "num_epochs": 3,
    "optimizer": "adamw_bnb_8bit",
    "lr_scheduler": "cosine",
    "learning_rate": 0.0002,
    "max_grad_norm": 1.0,
    "adam_beta2": 0.95,
    "adam_epsilon": 0.00001,
    "gradient_accumulation_steps": 4,
    "warmup_steps": 20,
    "gradient_checkpointing": True,
    "bf16": True,
    "loss_watchdog_threshold": 5.0,
    "loss_watchdog_patience": 3,
    "evals_per_epoch": 4,
    "saves_per_epoch": 6,
    "weight_decay": 0.0,
    "save_safetensors": True,
    "train_on_inputs": False,
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    prepare(OSHA_SIR, out)
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_committed_yaml_has_every_seed_setting() -> None:
    cfg = yaml.safe_load((CONFIG_DIR / "mistral-7b-qlora.yml").read_text())
    for key, value in SEED_SETTINGS.items():
        assert cfg[key] == value, key
        assert type(cfg[key]) is type(value), key
    assert cfg["special_tokens"] == {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    assert cfg["datasets"] == [{"path": "runs/prepared/train.jsonl", "ds_type": "json", "type": "alpaca",
                                "split": "train"}]
    assert cfg["test_datasets"][0]["path"] == "runs/prepared/validation.jsonl"
    assert cfg["test_datasets"][0]["type"] == "alpaca"


def test_committed_yamls_are_the_generated_ones() -> None:
    """Nobody hand-edited the YAML: regenerating from the dataclass gives the same bytes."""
    assert (CONFIG_DIR / "mistral-7b-qlora.yml").read_text() == MISTRAL_7B_QLORA.to_yaml()
    assert (CONFIG_DIR / "tiny-qlora-cpu.yml").read_text() == TINY_LORA_CPU.to_yaml()


def test_generator_cli_overrides_base_model_and_paths(tmp_path: Path) -> None:
    out = tmp_path / "local.yml"
    axolotl_args_main(["mistral-7b-qlora", "--base-model", "/models/Mistral-7B-v0.1", "--data", "/data/prep",
                       "--output-dir", "/runs/x", "--out", str(out)])
    cfg = yaml.safe_load(out.read_text())
    assert cfg["base_model"] == "/models/Mistral-7B-v0.1"
    assert cfg["datasets"][0]["path"] == "/data/prep/train.jsonl"
    assert cfg["output_dir"] == "/runs/x"
    assert {k: cfg[k] for k in SEED_SETTINGS if k != "base_model"} == {
        k: v for k, v in SEED_SETTINGS.items() if k != "base_model"}


def test_prepared_data_uses_the_project_split_and_inference_format(prepared: Path, osha: pd.DataFrame) -> None:
    parts, fingerprint = load_split()
    info = json.loads((prepared / "fingerprint.json").read_text())
    assert info["data_fingerprint"] == fingerprint
    assert info["rows"] == {name: len(part) for name, part in parts.items()}
    assert info["prompt_sha256"] == PromptTemplate().sha256
    template = PromptTemplate()
    for name, part in parts.items():
        rows = read_jsonl(prepared / f"{name}.jsonl")
        assert len(rows) == len(part)
        for rec, (text, label) in zip(rows[:200], part[["Final Narrative", "Source"]].itertuples(index=False)):
            assert set(rec) == {"instruction", "input", "output"}
            assert rec["instruction"] == template.instruction
            assert rec["input"] == normalize_narrative(text, template.max_input_chars)[0]
            assert rec["output"] == label and label.isdigit()
    # no narrative of validation/test was seen in training
    train_inputs = {r["input"].lower() for r in read_jsonl(prepared / "train.jsonl")}
    assert not train_inputs & {r["input"].lower() for r in read_jsonl(prepared / "test.jsonl")}


def test_prepare_generic_parquet_input(tmp_path: Path, osha: pd.DataFrame) -> None:
    """Any table with a narrative, a label and a (datetime) date column goes through the same split."""
    df = osha.iloc[::10][["Final Narrative", "Source", "EventDate"]].rename(
        columns={"Final Narrative": "text", "Source": "code", "EventDate": "day"})
    df["day"] = pd.to_datetime(df["day"], format="%m/%d/%Y")
    df.loc[df.index[0], "code"] = "not-a-code"
    df.to_parquet(tmp_path / "reports.parquet")
    cfg = PrepareConfig(text_col="text", label_col="code", date_col="day")
    info = prepare(tmp_path / "reports.parquet", tmp_path / "out", cfg)
    dates = df["day"]
    assert info["rows"]["train"] + info["rows"]["validation"] + info["rows"]["test"] <= len(df) - 1
    assert info["rows"]["test"] > 0 and info["rows"]["train"] > (dates < "2016-07-01").sum() * 0.95
    rows = read_jsonl(tmp_path / "out" / "train.jsonl")
    assert all(r["output"] != "not-a-code" for r in rows)
    with pytest.raises(InputSchemaError, match="'Final Narrative' not found"):
        prepare(tmp_path / "reports.parquet", tmp_path / "bad", PrepareConfig(label_col="code", date_col="day"))


def test_axolotl_alpaca_prompt_matches_inference_byte_for_byte(prepared: Path) -> None:
    """Axolotl 0.19's own alpaca strategy renders PromptTemplate().render(narrative) + code + EOS."""
    pytest.importorskip("axolotl", reason="install the train extra: pip install 'axolotl==0.19.0'")
    from axolotl.prompt_tokenizers import AlpacaPromptTokenizingStrategy
    from axolotl.prompters import AlpacaPrompter

    from training.tiny_base import build_tokenizer

    rows = read_jsonl(prepared / "test.jsonl")[:40]
    template = PromptTemplate()
    prompter = AlpacaPrompter("instruct")
    tokenizer = build_tokenizer([template.render(r["input"]) + "0123456789" for r in rows], vocab_size=600)
    strategy = AlpacaPromptTokenizingStrategy(prompter, tokenizer, False, 896)
    parts, _ = load_split()
    narratives = parts["test"]["Final Narrative"].tolist()[:40]
    for rec, narrative in zip(rows, narratives):
        text = next(iter(prompter.build_prompt(rec["instruction"], rec["input"], rec["output"])))
        assert text == template.render(narrative) + rec["output"]
        tokens = strategy.tokenize_prompt(rec)
        want = tokenizer(template.render(narrative) + rec["output"]).input_ids + [tokenizer.eos_token_id]
        assert tokens["input_ids"] == want
        n_answer = len(rec["output"]) + 1  # one token per digit, then EOS
        assert tokens["labels"][-n_answer:] == want[-n_answer:]
        assert set(tokens["labels"][:-n_answer]) == {-100}  # train_on_inputs: false
