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
