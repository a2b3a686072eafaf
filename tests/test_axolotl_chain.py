"""End to end, offline, on CPU: prepare → axolotl preprocess → axolotl train (QLoRA, NF4 on bitsandbytes' CPU backend) → merge → bundle → classify.

The base is a tiny random Mistral built in code (training/tiny_base.py); the data are real
OSHA rows prepared by training.prepare_data; Axolotl 0.19 runs as its own CLI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from soi_batch.datasets.osha import OSHA_SIR, load_split
from training.axolotl_args import TINY_LORA_CPU
from training.prepare_data import prepare
from training.tiny_base import build_base

REPO = Path(__file__).parents[1]
pytestmark = pytest.mark.slow


def _axolotl(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, HF_HUB_OFFLINE="1", AXOLOTL_DO_NOT_TRACK="1", TOKENIZERS_PARALLELISM="false",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run([str(Path(sys.executable).parent / "axolotl"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, f"axolotl {args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.timeout(900)
def test_axolotl_qlora_chain_to_bundle_and_classify(tmp_path: Path) -> None:
    pytest.importorskip("axolotl", reason="install the train extra: pip install 'axolotl==0.19.0'")
    import torch
    from safetensors.torch import load_file

    from soi_batch.bundle import load_bundle
    from soi_batch.classifier import Classifier, ClassifierConfig
    from soi_batch.packaging import PackageConfig, package

    parts, fingerprint = load_split()
    data = tmp_path / "prepared"
    prepare(OSHA_SIR, data)
    lines = (data / "train.jsonl").read_text(encoding="utf-8").splitlines()
    small = tmp_path / "small"
    small.mkdir()
    (small / "train.jsonl").write_text("\n".join(lines[:64]) + "\n", encoding="utf-8")
    (small / "fingerprint.json").write_bytes((data / "fingerprint.json").read_bytes())

    base = build_base(tmp_path / "base", parts["train"]["Final Narrative"].iloc[:1000].tolist(), "tiny")
    recipe = TINY_LORA_CPU.with_overrides(base_model=str(base), data_dir=str(small),
                                          output_dir=str(tmp_path / "lora"),
                                          dataset_prepared_path=str(tmp_path / "ax-prepared"))
    config = recipe.write(tmp_path / "tiny.yml")
    _axolotl(["preprocess", str(config)], tmp_path)
    log = _axolotl(["train", str(config)], tmp_path)
    assert "prepare_model_for_kbit_training" in log, "the base was not loaded in 4-bit"
    adapter = tmp_path / "lora"
    assert (adapter / "adapter_model.safetensors").is_file()
    lora = load_file(adapter / "adapter_model.safetensors")
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in lora.items()), "LoRA B never trained"

    bundle = package(base, adapter, tmp_path / "bundle",
                     PackageConfig(model_id="tiny-axolotl", axolotl_config=config))
    manifest = bundle.manifest
    assert manifest.data_fingerprint == fingerprint
    assert manifest.training["axolotl_config"]["adapter"] == "qlora"
    assert manifest.training["axolotl_config"]["lora_r"] == 32
    assert manifest.training["recipe"] == "axolotl-qlora"
    assert manifest.prompt_sha256 == bundle.prompt.sha256
    merged = load_file(tmp_path / "bundle" / "model.safetensors")
    original = load_file(base / "model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert merged[key].dtype == torch.bfloat16
    assert not torch.equal(merged[key].float(), original[key].to(torch.bfloat16).float()), "adapter not merged"
    assert load_bundle(tmp_path / "bundle").model_id == "tiny-axolotl@0"

    texts = parts["test"]["Final Narrative"].iloc[:8].tolist()
    preds = Classifier.load(tmp_path / "bundle", ClassifierConfig(engine="hf", device="cpu")).classify_texts(texts)
    assert len(preds) == 8
    for p in preds:
        assert p.error is None
        assert bundle.taxonomy.is_label(p.code)
        assert 0 < p.confidence <= 1
        assert abs(sum(p.division_probs.values()) - 1) < 1e-4
        # top_k: valid labels, most probable first, none more probable than its division
        probs = [prob for _, _, prob in p.top_k]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(bundle.taxonomy.is_label(c) and prob <= p.division_probs[c[0]] + 1e-6 for c, _, prob in p.top_k)
    # and it round-trips through JSON as [code, title, probability] triples
    assert json.loads(json.dumps([p.top_k for p in preds])) == [[list(t) for t in p.top_k] for p in preds]
