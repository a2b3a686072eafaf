from __future__ import annotations

import importlib.util

import pytest

from soi_batch.classifier import Classifier, ClassifierConfig
from soi_batch.errors import ConfigError


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_engine_without_vllm_says_how_to_install(tiny_bundle):
    with pytest.raises(ConfigError, match=r"soi-batch\[gpu\]"):
        Classifier.load(tiny_bundle, ClassifierConfig(engine="vllm"))


def test_auto_engine_on_cpu_is_transformers(tiny_bundle):
    clf = Classifier.load(tiny_bundle, ClassifierConfig(engine="auto"))
    assert clf.engine.name == "HFEngine"


def test_bad_config_is_rejected_before_loading():
    with pytest.raises(ConfigError, match="engine must be one of"):
        ClassifierConfig(engine="onnx")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="top_k"):
        ClassifierConfig(top_k=0)


def test_bad_hf_engine_settings_fail_before_any_weights_load():
    from soi_batch.engines.hf import HFEngineConfig

    with pytest.raises(ConfigError, match="quantization must be None or 'fp8'"):
        HFEngineConfig(quantization="int4")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="dtype must be"):
        HFEngineConfig(dtype="fp64")  # type: ignore[arg-type]


def test_unknown_engine_option_names_the_option_and_the_known_ones(tiny_bundle):
    with pytest.raises(ConfigError, match=r"no option\(s\) quantisation.*quantization|no option\(s\) quantisation.*compile"):
        Classifier.load(tiny_bundle, ClassifierConfig(engine="hf", engine_options={"quantisation": "fp8"}))


@pytest.mark.slow
def test_compiled_hf_engine_gives_the_eager_results(tiny_bundle, osha):
    texts = osha["Final Narrative"].iloc[:40].tolist()
    eager = Classifier.load(tiny_bundle, ClassifierConfig(engine="hf", batch_size=16))
    compiled = Classifier.load(tiny_bundle, ClassifierConfig(engine="hf", batch_size=16,
                                                             engine_options={"compile": True}))
    a, b = eager.classify_texts(texts), compiled.classify_texts(texts)
    assert [p.code for p in a] == [p.code for p in b]
    for x, y in zip(a, b):
        assert y.confidence == pytest.approx(x.confidence, abs=1e-5)
        assert y.division_probs == pytest.approx(x.division_probs, abs=1e-5)


def _fp8_gpu() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 9)


@pytest.mark.skipif(not _fp8_gpu(), reason="needs a GPU with FP8 tensor cores (fp8 on the CPU is refused)")
def test_fp8_hf_engine_keeps_soi_mini_divisions(osha):
    """FP8 rowwise W8A8 (torch's ``_scaled_mm`` on FP8 tensor cores) on the shipped model:
    every decoder linear layer is replaced, and the division agrees with full precision on
    ≥ 95 % of 200 OSHA rows (measured 98 % on 400 validation rows, 2026-11-24)."""
    from soi_batch.engines.fp8 import Float8RowwiseLinear

    texts = osha["Final Narrative"].iloc[:200].tolist()
    full = Classifier.load(None, ClassifierConfig(engine="hf", batch_size=64))
    fp8 = Classifier.load(None, ClassifierConfig(engine="hf", batch_size=64, engine_options={"quantization": "fp8"}))
    layers = fp8.engine.model.base_model.layers
    assert sum(isinstance(m, Float8RowwiseLinear) for m in layers.modules()) == 7 * len(layers)
    a, b = full.classify_texts(texts), fp8.classify_texts(texts)
    agree = sum(x.division_code == y.division_code for x, y in zip(a, b)) / len(texts)
    assert agree >= 0.95
    assert max(abs(x.confidence - y.confidence) for x, y in zip(a, b)) > 1e-4  # FP8 really ran
    assert all(y.code in fp8.bundle.taxonomy.labels for y in b)


def test_concurrent_batches_give_the_same_results(tiny_bundle, osha):
    texts = osha["Final Narrative"].iloc[:80].tolist() + [None, ""]
    one = Classifier.load(tiny_bundle, ClassifierConfig(engine="hf", batch_size=16, concurrent_batches=1))
    two = Classifier.load(tiny_bundle, ClassifierConfig(engine="hf", batch_size=16, concurrent_batches=3))
    assert one.concurrent_batches == 1 and two.concurrent_batches == 3
    assert Classifier.load(tiny_bundle, ClassifierConfig(engine="hf")).concurrent_batches == 1  # CPU default
    a, b = one.classify_texts(texts), two.classify_texts(texts)
    assert [(p.code, p.error) for p in a] == [(p.code, p.error) for p in b]
    assert [p.confidence for p in a] == pytest.approx([p.confidence for p in b], abs=1e-6, nan_ok=True)
    with pytest.raises(ConfigError, match="concurrent_batches"):
        ClassifierConfig(concurrent_batches=0)


def test_fp8_on_the_cpu_is_refused_with_the_fix(tiny_bundle, monkeypatch):
    """fp8 has no CPU hardware (emulated: slower, different scores): refused when the config names the
    CPU, and when "auto" resolves to it, before any weights are read (loading them raises here)."""
    import transformers

    with pytest.raises(ConfigError, match=r"quantization='fp8' needs a GPU.*Leave quantization unset.*'int8'"):
        ClassifierConfig(engine="hf", device="cpu", engine_options={"quantization": "fp8", "compile": True})

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were about to be loaded")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    import torch

    if torch.cuda.is_available():
        pytest.skip("device 'auto' resolves to the GPU here")
    with pytest.raises(ConfigError, match=r"quantization='fp8' needs a GPU.*device 'auto'"):
        Classifier.load(tiny_bundle, ClassifierConfig(engine="hf", engine_options={"quantization": "fp8"}))
