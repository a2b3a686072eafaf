"""quantization="int8" in the HF engine (CPU, dynamic W8A8): it really quantises, it stays close
to fp32, and it refuses a GPU before any weights load.  Tiny random Mistral built in code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from soi_batch.bundle import load_bundle
from soi_batch.classifier import Classifier, ClassifierConfig
from soi_batch.encoding import PromptEncoder
from soi_batch.engines.hf import HFEngine, HFEngineConfig
from soi_batch.engines.int8 import Int8DynamicLinear
from soi_batch.errors import ConfigError


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def engines(tiny_bundle, osha):
    bundle = load_bundle(tiny_bundle)
    encoder = PromptEncoder.from_bundle(bundle, max_prompt_tokens=500)
    fp32 = HFEngine(bundle, encoder.shared_prefix_ids, encoder.label_token_ids, HFEngineConfig(device="cpu"))
    int8 = HFEngine(bundle, encoder.shared_prefix_ids, encoder.label_token_ids,
                    HFEngineConfig(device="cpu", quantization="int8"))
    prompts = [e.ids for e in encoder.encode(osha["Final Narrative"].iloc[:12].tolist())]
    return fp32, int8, prompts


def test_int8_replaces_every_decoder_linear_and_keeps_the_rest(engines):
    fp32, int8, _ = engines
    layers = int8.model.base_model.layers
    quantised = [m for m in layers.modules() if isinstance(m, Int8DynamicLinear)]
    assert len(quantised) == 7 * len(layers)
    assert not any(isinstance(m, torch.nn.Linear) for m in layers.modules())
    assert all(m.weight_int8_t.dtype == torch.int8 for m in quantised)
    # the embeddings and the label head are not quantised
    assert int8.model.get_input_embeddings().weight.dtype == torch.float32
    assert int8._label_head.dtype == torch.float32
    assert torch.equal(int8._label_head, fp32._label_head)


def test_int8_linear_matches_float_product():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48, bias=True)
    q = Int8DynamicLinear(lin)
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        ref, out = lin(x), q(x)
        out_bf16 = q(x.bfloat16())
    assert out.shape == ref.shape and out.dtype == torch.float32 and out_bf16.dtype == torch.bfloat16
    rel = (out - ref).abs().max() / ref.abs().max()
    assert 0 < rel < 0.02  # quantised, and within int8 rounding
    assert ((out_bf16.float() - ref).abs().max() / ref.abs().max()) < 0.03
    with torch.no_grad():  # one token at a time gives the same rows as the whole batch (per-token scales)
        rows = torch.cat([q(x[0, i : i + 1]) for i in range(5)])
    torch.testing.assert_close(rows, out[0])


def test_int8_label_probabilities_stay_close_to_fp32(engines):
    fp32, int8, prompts = engines
    h32, root32 = fp32.prefill(prompts)
    h8, root8 = int8.prefill(prompts)
    p32, p8 = _softmax(root32), _softmax(root8)
    diff = np.abs(p32 - p8).max()
    assert 0 < diff < 0.05
    rows = np.repeat(np.arange(len(prompts)), 2)
    prefixes = [[fp32.label_token_ids[d], fp32.label_token_ids[e]] for d, e in [(1, 2), (6, 6)] * len(prompts)]
    deep32, deep8 = fp32.extend(h32, rows, prefixes), int8.extend(h8, rows, prefixes)
    assert np.abs(_softmax(deep32) - _softmax(deep8)).max() < 0.05


def test_int8_classifier_agrees_with_fp32(tiny_bundle, osha):
    texts = osha["Final Narrative"].iloc[:32].tolist()
    a = Classifier.load(tiny_bundle, ClassifierConfig(engine="hf", batch_size=16)).classify_texts(texts)
    b = Classifier.load(tiny_bundle, ClassifierConfig(engine="hf", batch_size=16,
                                                      engine_options={"quantization": "int8"})).classify_texts(texts)
    assert sum(x.division_code == y.division_code for x, y in zip(a, b)) >= 0.9 * len(texts)
    for x, y in zip(a, b):
        assert y.division_probs.keys() == x.division_probs.keys()
        assert max(abs(x.division_probs[k] - y.division_probs[k]) for k in x.division_probs) < 0.05


def test_int8_on_a_gpu_is_refused_before_weights_load(tiny_bundle, monkeypatch):
    with pytest.raises(ConfigError, match=r"CPU only.*quantization='fp8'"):
        HFEngineConfig(device="cuda", quantization="int8")
    with pytest.raises(ConfigError, match=r"CPU only.*quantization='fp8'"):
        Classifier.load(tiny_bundle, ClassifierConfig(engine="hf", device="cuda:0",
                                                      engine_options={"quantization": "int8"}))

    # device="auto" on a machine with a GPU: refused after the device is resolved, before any load
    import transformers

    def no_load(*args, **kwargs):
        raise AssertionError("weights loaded")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_load)
    bundle = load_bundle(tiny_bundle)
    encoder = PromptEncoder.from_bundle(bundle, max_prompt_tokens=500)
    with pytest.raises(ConfigError, match=r"CPU only.*'auto' to 'cuda'.*device='cpu'"):
        HFEngine(bundle, encoder.shared_prefix_ids, encoder.label_token_ids, HFEngineConfig(quantization="int8"))


def test_bad_quantization_and_threads_are_rejected():
    with pytest.raises(ConfigError, match="'fp8' \\(GPU\\) or 'int8' \\(CPU\\)"):
        HFEngineConfig(quantization="int4")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="num_threads"):
        HFEngineConfig(num_threads=0)
