from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("AXOLOTL_DO_NOT_TRACK", "1")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from soi_batch.datasets.osha import read_osha_sir
from tests.tiny import build_tiny_bundle


class ModelLoaded(AssertionError):
    """Raised when a test that must finish before any load touched weights, a tokenizer or Ray."""


@pytest.fixture
def no_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any tokenizer or weights load fails the test: what is checked must come before it."""
    import transformers

    def refuse(*args, **kwargs):
        raise ModelLoaded("model weights / tokenizer were loaded before the checks finished")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)


@pytest.fixture
def no_model_no_ray(monkeypatch: pytest.MonkeyPatch, no_load: None) -> None:
    """As ``no_load``, and starting Ray fails the test too."""
    import soi_batch.ray_data

    def refuse(*args, **kwargs):
        raise ModelLoaded("Ray was started before input validation finished")

    monkeypatch.setattr(soi_batch.ray_data, "init_ray", refuse)


@pytest.fixture(scope="session")
def osha() -> pd.DataFrame:
    """The bundled OSHA SIR 2015-2016 rows (cp1252 source, codes as strings)."""
    return read_osha_sir()


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, osha: pd.DataFrame) -> Path:
    texts = osha["Final Narrative"].iloc[:300].tolist()
    return build_tiny_bundle(tmp_path_factory.mktemp("tiny") / "bundle", texts)


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray for the whole session (2 CPUs, no dashboard)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()
