"""soi-mini training on CPU: a tiny config on ~200 real OSHA rows produces a valid bundle."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer, MistralForCausalLM

from soi_batch.bundle import load_bundle
from soi_batch.classifier import Classifier, ClassifierConfig
from soi_batch.datasets.osha import LABEL_COL, TEXT_COL, load_split
from soi_batch.prompt import PromptTemplate
from soi_batch.taxonomy import load_taxonomy
from training.mini.config import TINY
from training.mini.data import cls_examples
from training.mini.tokenizer import check_label_contract, digit_ids, train_tokenizer


@pytest.fixture(scope="module")
def rows():
    parts, _ = load_split()
    return parts["train"].head(200)


def test_tokenizer_label_contract(rows) -> None:
    tok = train_tokenizer([PromptTemplate().render(t) for t in rows[TEXT_COL]], 600)
    prompt = PromptTemplate().render(rows[TEXT_COL].iloc[3])
    ids = digit_ids(tok)
    assert tok(prompt + "8621").input_ids == tok(prompt).input_ids + [ids[8], ids[6], ids[2], ids[1]]
    assert tok(prompt).input_ids[0] == tok.bos_token_id
    assert len(set(ids)) == 10 and tok.unk_token_id not in ids
    check_label_contract(tok, prompt, rows[LABEL_COL].unique())


def test_cls_examples_target_layout(rows) -> None:
    tok = train_tokenizer([PromptTemplate().render(t) for t in rows[TEXT_COL]], 600)
    ex = cls_examples(tok, rows.head(5), PromptTemplate(), 10**6)
    for e, (text, code) in zip(ex, rows.head(5)[[TEXT_COL, LABEL_COL]].itertuples(index=False)):
        prompt_ids = tok(PromptTemplate().render(text)).input_ids
        assert e.ids == prompt_ids + [digit_ids(tok)[int(d)] for d in code] + [tok.eos_token_id]
        assert e.answer_start == len(prompt_ids) and e.code == code


def test_tiny_training_produces_loadable_bundle(tmp_path) -> None:
    from training.mini.train import run

    summary = run(TINY, tmp_path, "cpu", command="python -m training.mini.train --config tiny")
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.manifest.model_id == "soi-mini"
    assert bundle.manifest.labels == list(load_taxonomy().labels)
    assert bundle.manifest.training["command"].startswith("python -m training.mini.train")
    assert bundle.manifest.data_fingerprint == load_split()[1]
    # the quick metric is the official scorer's division accuracy: the bundle classifies the same rows
    val = load_split()[0]["validation"].head(TINY.max_rows)
    preds = Classifier.load(bundle.path, ClassifierConfig(engine="hf", device="cpu")).classify_texts(
        val[TEXT_COL].tolist())
    agree = [p.division_code == code[0] for p, code in zip(preds, val[LABEL_COL])]
    assert summary["validation"]["division_acc"] == pytest.approx(sum(agree) / len(agree))
    tok = AutoTokenizer.from_pretrained(bundle.path)
    prompt = bundle.prompt.render("Employee fell from a ladder and broke his arm.")
    check_label_contract(tok, prompt, ["8621", "66", "9999"])
    model = MistralForCausalLM.from_pretrained(bundle.path)
    assert model.config.vocab_size == len(tok)
    out = model(**tok(prompt, return_tensors="pt"))
    assert out.logits.shape[-1] == len(tok)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["params"] == sum(p.numel() for p in model.parameters())
    assert metrics["train_rows"] == 200 and metrics["validation_in_training"] is False


def test_train_on_train_plus_validation_trains_on_more_rows(tmp_path) -> None:
    from training.mini.train import parse_overrides, run

    overrides = parse_overrides(["lm_epochs=0", "train_on=train+validation"])
    assert overrides["train_on"] == "train+validation"
    summary = run(TINY.with_overrides(**overrides), tmp_path, "cpu")
    assert summary["train_rows"] == 400  # 200 train + 200 validation rows (TINY.max_rows=200 each)
    assert summary["validation_in_training"] is True
    bundle = load_bundle(tmp_path / "bundle")
    assert bundle.manifest.metrics["validation_in_training"] is True
    assert "Not held out" in (tmp_path / "bundle" / "README.md").read_text()
    with pytest.raises(ValueError, match="train_on"):
        TINY.with_overrides(train_on="test")
