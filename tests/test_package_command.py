"""``soi-batch package`` as a user runs it: a LoRA adapter (peft, on a tiny random Mistral built in
code) merged into a bundle, evaluated on real OSHA test rows with a progress bar, metrics in the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from soi_batch.cli import main
from soi_batch.datasets.osha import load_split
from training.tiny_base import build_base


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    peft = pytest.importorskip("peft", reason="install the train extra: pip install -e '.[train]'")
    import torch
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("package")
    parts, _ = load_split()
    base = build_base(root / "base", parts["train"]["Final Narrative"].iloc[:300].tolist(), "tiny")
    model = AutoModelForCausalLM.from_pretrained(base)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a trained adapter's B is not zero: make the merge change the weights
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)
    lora.save_pretrained(root / "adapter")
    return base, root / "adapter"


def test_package_merges_evaluates_with_a_bar_and_stores_the_metrics(base_and_adapter, tmp_path: Path, capsys) -> None:
    base, adapter = base_and_adapter
    out, report = tmp_path / "bundle", tmp_path / "report"
    code = main(["package", "--base", str(base), "--adapter", str(adapter), "--out", str(out), "--model-id", "tiny-lora",
                 "--evaluate", "--eval-limit", "12", "--eval-report", str(report), "--progress"])
    assert code == 0
    captured = capsys.readouterr()
    assert f"wrote bundle tiny-lora@0 to {out}" in captured.out and f"evaluation report: {report}/report.md" in captured.out
    assert "12/12" in captured.err  # the row bar of the evaluation
    manifest = json.loads((out / "soi_model.json").read_text(encoding="utf-8"))
    assert manifest["training"]["recipe"] == "peft-lora" and manifest["training"]["adapter_config"]["r"] == 4
    assert manifest["metrics"]["n"] == 12 and 0 <= manifest["metrics"]["division"]["accuracy"] <= 1
    assert (report / "metrics.json").is_file()


def test_package_without_peft_says_how_to_install_it_before_loading_anything(monkeypatch, tmp_path: Path,
                                                                             capsys) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    code = main(["package", "--base", str(tmp_path / "no-base"), "--adapter", str(tmp_path / "no-adapter"),
                 "--out", str(tmp_path / "bundle")])
    assert code == 2
    err = capsys.readouterr().err
    assert "peft, which is not installed: pip install 'soi-batch[train]'" in err and "Traceback" not in err
    assert not (tmp_path / "bundle").exists()
