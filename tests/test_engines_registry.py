"""The engine registry: names → engine classes, typed options checked before any weights load,
concurrency and thread settings owned by the engine class and the process owner."""

from __future__ import annotations

import pickle
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import yaml

from soi_batch.bundle import load_bundle
from soi_batch.classifier import Classifier, ClassifierConfig
from soi_batch.encoding import PromptEncoder
from soi_batch.engines import EngineInputs, build_engine, engine_class, engine_names, engine_options
from soi_batch.engines.hf import HFEngine, HFEngineConfig
from soi_batch.engines.threads import set_torch_threads
from soi_batch.engines.vllm_engine import VLLMEngine, VLLMEngineConfig, prefetch_digits
from soi_batch.errors import ConfigError
from soi_batch.nightly import NightlyConfig
from soi_batch.scorer import LabelTrie
from soi_batch.taxonomy import EOS_SLOT, LABEL_DIGITS, N_LABEL_TOKENS, load_taxonomy

HF_OPTIONS = "compile, device, dtype, num_threads, quantization"


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_registry_lists_the_shipped_engines_and_auto_is_hf():
    assert engine_names() == ("hf", "vllm")
    assert engine_class("hf") is HFEngine and engine_class("vllm") is VLLMEngine
    assert engine_class("auto") is HFEngine
    assert HFEngine.options_type is HFEngineConfig and VLLMEngine.options_type is VLLMEngineConfig


def test_auto_engine_on_cpu_builds_the_hf_engine(tiny_bundle):
    assert not torch.cuda.is_available()
    config = ClassifierConfig(engine="auto")
    assert config.engine_config == HFEngineConfig(device="auto")
    clf = Classifier.load(tiny_bundle, config)
    assert isinstance(clf.engine, HFEngine) and clf.engine.device_type == "cpu"


def test_unknown_engine_names_the_valid_ones(no_load):
    with pytest.raises(ConfigError, match=r"engine must be one of auto, hf, vllm; got 'onnx'"):
        ClassifierConfig(engine="onnx")  # type: ignore[arg-type]


def test_unknown_option_names_the_engine_the_option_and_the_valid_ones(no_load):
    with pytest.raises(ConfigError, match=rf"engine 'hf' has no option\(s\) quantisation; its options are: {HF_OPTIONS}$"):
        ClassifierConfig(engine="hf", engine_options={"quantisation": "fp8"})
    # an hf option given to vllm (and "auto" resolves to hf, so the error says which engine it checked)
    with pytest.raises(ConfigError, match=r"engine 'vllm' has no option\(s\) num_threads; its options are: block_size, "):
        ClassifierConfig(engine="vllm", engine_options={"num_threads": 2})
    with pytest.raises(ConfigError, match=r"engine 'hf' has no option\(s\) max_model_len"):
        ClassifierConfig(engine="auto", engine_options={"max_model_len": 512})


@pytest.mark.parametrize(("options", "problem"), [
    ({"num_threads": "two"}, r"num_threads='two': Input should be a valid integer"),
    ({"num_threads": 2.5}, r"num_threads=2.5: Input should be a valid integer"),
    ({"compile": "maybe"}, r"compile='maybe': Input should be a valid boolean"),
    ({"dtype": 16}, r"dtype=16: Input should be 'auto', 'float32', 'bfloat16' or 'float16'"),
    ({"quantization": "int4"}, r"quantization='int4': Input should be 'fp8' or 'int8'"),
])
def test_wrong_option_type_is_refused_when_the_config_is_built(no_load, options, problem):
    with pytest.raises(ConfigError, match=rf"^engine 'hf' option {problem}.*; its options are: {HF_OPTIONS}$"):
        ClassifierConfig(engine="hf", engine_options=options)


def test_the_options_own_checks_run_and_name_the_engine(no_load):
    with pytest.raises(ConfigError, match=r"^engine 'hf': quantization='int8' runs on the CPU only"):
        ClassifierConfig(engine="hf", device="cuda", engine_options={"quantization": "int8"})
    with pytest.raises(ConfigError, match=r"^engine 'vllm': prefetch_slots are digit slots 0..9, got \(1, 10\)"):
        ClassifierConfig(engine="vllm", engine_options={"prefetch_slots": [1, 10]})
    with pytest.raises(ConfigError, match=r"engine 'hf' options must be a mapping.*got list"):
        ClassifierConfig(engine="hf", engine_options=["compile"])  # type: ignore[arg-type]


def test_dict_options_become_the_engines_typed_config():
    vllm = ClassifierConfig(engine="vllm", engine_options={"quantization": "fp8", "prefetch_slots": [2, 6],
                                                           "gpu_memory_utilization": "0.5"})
    assert vllm.engine_config == VLLMEngineConfig(quantization="fp8", prefetch_slots=(2, 6), gpu_memory_utilization=0.5)
    # the classifier's device fills the hf engine's, unless engine_options sets its own
    assert ClassifierConfig(device="cpu").engine_config == HFEngineConfig(device="cpu")
    assert ClassifierConfig(device="cpu", engine_options={"device": "cuda:1"}).engine_config.device == "cuda:1"
    # Ray and Spark replace the device and ship the config to workers: the typed options follow
    base = ClassifierConfig(engine_options={"num_threads": 2})
    moved = replace(base, device="cuda:0")
    assert moved.engine_config == HFEngineConfig(device="cuda:0", num_threads=2)
    assert pickle.loads(pickle.dumps(moved)).engine_config == moved.engine_config
    assert repr(base) == repr(ClassifierConfig(engine_options={"num_threads": 2}))  # Spark's worker cache key


def test_nightly_yaml_engine_options_are_checked_when_the_settings_are_read(tmp_path, no_load):
    settings = tmp_path / "nightly.yml"
    settings.write_text(yaml.safe_dump({"input": "in", "output": "out",
                                        "classifier": {"engine": "hf", "engine_options": {"num_thread": 2}}}))
    with pytest.raises(ConfigError, match=r"engine 'hf' has no option\(s\) num_thread; its options are: .*num_threads"):
        NightlyConfig.build(settings)
    settings.write_text(yaml.safe_dump({"input": "in", "output": "out",
                                        "classifier": {"engine": "vllm", "engine_options": {"prefetch_slots": [1, 2]}}}))
    assert NightlyConfig.build(settings).classifier_config().engine_config.prefetch_slots == (1, 2)


def test_concurrency_comes_from_the_engine_class(no_load):
    assert HFEngine.supports_concurrent_batches and not VLLMEngine.supports_concurrent_batches
    assert HFEngine.default_concurrent_batches("cuda") == 2
    assert HFEngine.default_concurrent_batches("cpu") == 1
    assert VLLMEngine.default_concurrent_batches("cuda") == 1
    with pytest.raises(ConfigError, match=r"concurrent_batches > 1 needs the hf engine; vllm schedules its own"):
        ClassifierConfig(engine="vllm", concurrent_batches=2)
    assert ClassifierConfig(engine="vllm", concurrent_batches=1).concurrent_batches == 1


def test_vllm_prefetches_the_label_tries_divisions():
    taxonomy = load_taxonomy()
    divisions = tuple(LABEL_DIGITS.index(c) for c, level in taxonomy.levels.items() if level == "division")
    trie = LabelTrie(taxonomy.labels)
    assert trie.first_digits == divisions == tuple(range(1, 10))
    assert prefetch_digits(VLLMEngineConfig(), trie.first_digits) == divisions
    # a bundle whose label set covers two divisions: only their branches are prefetched
    two = LabelTrie([c for c in taxonomy.labels if c[0] in "26"])
    assert two.first_digits == (2, 6)
    assert prefetch_digits(VLLMEngineConfig(), two.first_digits) == (2, 6)
    assert prefetch_digits(VLLMEngineConfig(prefetch_slots=()), two.first_digits) == ()
    assert prefetch_digits(VLLMEngineConfig(prefetch_slots=(3,)), two.first_digits) == (3,)


def test_importing_the_engines_loads_neither_vllm_nor_torch():
    code = (
        "import sys\n"
        "import soi_batch.engines\n"
        "from soi_batch.engines.vllm_engine import VLLMEngineConfig, prefetch_digits\n"
        "from soi_batch.scorer import LabelTrie\n"
        "from soi_batch.taxonomy import load_taxonomy\n"
        "assert prefetch_digits(VLLMEngineConfig(), LabelTrie(load_taxonomy().labels).first_digits) == tuple(range(1, 10))\n"
        "print(sorted(m for m in ('vllm', 'torch', 'transformers') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_label_alphabet_is_the_digits_then_eos(tiny_bundle):
    assert (LABEL_DIGITS, EOS_SLOT, N_LABEL_TOKENS) == ("0123456789", 10, 11)
    encoder = PromptEncoder.from_bundle(load_bundle(tiny_bundle), max_prompt_tokens=500)
    ids = encoder.label_token_ids
    assert len(ids) == N_LABEL_TOKENS and ids[EOS_SLOT] == encoder.tokenizer.eos_token_id
    assert [encoder.tokenizer.decode([t]).strip() for t in ids[:EOS_SLOT]] == list(LABEL_DIGITS)


def test_build_engine_wants_typed_options(tiny_bundle, no_load):
    bundle = load_bundle(tiny_bundle)
    inputs = EngineInputs(bundle, (1, 2), tuple(range(N_LABEL_TOKENS)), (1, 2))
    with pytest.raises(ConfigError, match=r"engine 'hf' takes HFEngineConfig, got dict; convert a dict with engine_options"):
        build_engine("hf", inputs, {"device": "cpu"})
    with pytest.raises(ConfigError, match=r"engine 'vllm' takes VLLMEngineConfig, got HFEngineConfig"):
        build_engine("vllm", inputs, engine_options("hf", {}))


def test_torch_threads_are_set_by_the_builder_not_the_engine_constructor(tiny_bundle, restore_threads):
    bundle = load_bundle(tiny_bundle)
    encoder = PromptEncoder.from_bundle(bundle, max_prompt_tokens=500)
    torch.set_num_threads(2)
    options = HFEngineConfig(device="cpu", num_threads=1)
    HFEngine(bundle, encoder.shared_prefix_ids, encoder.label_token_ids, options)
    assert torch.get_num_threads() == 2  # constructing an engine leaves the process alone
    inputs = EngineInputs(bundle, tuple(encoder.shared_prefix_ids), encoder.label_token_ids, (1, 2, 3))
    engine = build_engine("hf", inputs, options)
    assert torch.get_num_threads() == 1  # the documented, process-wide num_threads option
    assert engine.device_type == "cpu" and engine.default_concurrent_batches(engine.device_type) == 1


def test_set_torch_threads_checks_its_argument(restore_threads):
    for bad in (0, -1, True, 1.5, "2"):
        with pytest.raises(ConfigError, match="torch threads must be an integer ≥ 1"):
            set_torch_threads(bad)  # type: ignore[arg-type]
    set_torch_threads(1)
    assert torch.get_num_threads() == 1
