"""Bad bundles are refused by ``load_bundle`` on the driver, before any weight or tokenizer loads.

Each case edits a copy of the shipped soi-mini in tmp_path: files the bundle names outside
itself, pickle shards, symlinks, FIFOs, oversized or malformed tokenizers, weights that do not
match config.json, non-causal architectures, broken prompt templates and calibration.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.numpy import load_file, save_file

from soi_batch.bundle import EMBEDDED_DEFAULT, MANIFEST, load_bundle
from soi_batch.checks import model_for_workers
from soi_batch.errors import BundleError, TokenizerError
from soi_batch.prompt import PromptTemplate

WEIGHTS = "model.safetensors"
ROOT = Path(__file__).resolve().parents[1]


class WeightsLoaded(AssertionError):
    pass


@pytest.fixture
def no_load(monkeypatch):
    """Fail loudly if anything loads model weights or a tokenizer."""
    import transformers

    def refuse(*args, **kwargs):
        raise WeightsLoaded("weights or tokenizer loaded before the bundle check finished")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(EMBEDDED_DEFAULT, out)
    return out


def _refused(bundle: Path, match: str) -> str:
    with pytest.raises(BundleError, match=match) as info:
        load_bundle(bundle)
    return str(info.value)


def _shard_index(bundle: Path, target: str) -> None:
    """Replace model.safetensors by an index that maps every tensor to ``target``, and leave a
    decoy shard in the bundle (so a glob for ``*.safetensors`` finds something)."""
    tensors = load_file(bundle / WEIGHTS)
    (bundle / WEIGHTS).unlink()
    save_file({"decoy": next(iter(tensors.values()))[:1]}, bundle / "decoy.safetensors")
    index = {"metadata": {}, "weight_map": {name: target for name in tensors}}
    (bundle / "model.safetensors.index.json").write_text(json.dumps(index))


# --- files the bundle names must be inside it (#20.6) ---------------------------------------------


@pytest.mark.parametrize("where", ["absolute", "climb"])
def test_weight_index_pointing_outside_is_refused(bundle, tmp_path, no_load, where):
    outside = tmp_path / "outside" / WEIGHTS
    outside.parent.mkdir()
    shutil.copy(bundle / WEIGHTS, outside)
    _shard_index(bundle, str(outside) if where == "absolute" else f"../outside/{WEIGHTS}")
    text = _refused(bundle, "not a path inside the bundle")
    assert "model.safetensors" in text


def test_pickle_shard_named_by_the_index_is_refused(bundle, tmp_path, no_load):
    marker = tmp_path / "pwned"

    class Boom:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (bundle / "sub").mkdir()
    (bundle / "sub" / "weights.bin").write_bytes(pickle.dumps(Boom()))
    _shard_index(bundle, "sub/weights.bin")
    _refused(bundle, r"names the weight file 'sub/weights\.bin', not a \.safetensors file")
    assert not marker.exists()


@pytest.mark.parametrize("name", [WEIGHTS, "tokenizer.json", "tokenizer_config.json"])
def test_symlink_leaving_the_bundle_is_refused(bundle, tmp_path, no_load, name):
    outside = tmp_path / f"outside-{name}"
    (bundle / name).rename(outside)
    (bundle / name).symlink_to(outside)
    text = _refused(bundle, "outside the bundle")
    assert f"{bundle / name}: a symlink to {outside}" in text


def test_symlink_inside_the_bundle_is_accepted(bundle):
    (bundle / "weights").mkdir()
    (bundle / WEIGHTS).rename(bundle / "weights" / WEIGHTS)
    (bundle / WEIGHTS).symlink_to(Path("weights") / WEIGHTS)
    assert load_bundle(bundle).manifest.model_id == "soi-mini"


def test_sharded_weights_inside_the_bundle_are_accepted(bundle):
    tensors = load_file(bundle / WEIGHTS)
    names = sorted(tensors)
    half = len(names) // 2
    (bundle / WEIGHTS).unlink()
    parts = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for file, keys in parts.items():
        save_file({k: tensors[k] for k in keys}, bundle / file)
    index = {"weight_map": {k: file for file, keys in parts.items() for k in keys}}
    (bundle / "model.safetensors.index.json").write_text(json.dumps(index))
    assert load_bundle(bundle).manifest.model_id == "soi-mini"


# --- weights must match config.json, which must be a supported causal LM (#20.7) ------------------


def _rewrite_weights(bundle: Path, edit) -> None:
    tensors = load_file(bundle / WEIGHTS)
    save_file(edit(tensors), bundle / WEIGHTS)


def test_empty_weights_file_is_refused(bundle, no_load):
    _rewrite_weights(bundle, lambda t: {})
    _refused(bundle, r"the weights do not match config\.json \(38 missing tensors \['model\.embed_tokens\.weight'")


def test_missing_layer_is_refused(bundle, no_load):
    _rewrite_weights(bundle, lambda t: {k: v for k, v in t.items() if not k.startswith("model.layers.3.")})
    _refused(bundle, r"9 missing tensors \['model\.layers\.3\.")


def test_unexpected_tensor_is_refused(bundle, no_load):
    _rewrite_weights(bundle, lambda t: {**t, "model.layers.4.mlp.up_proj.weight": t["model.layers.3.mlp.up_proj.weight"]})
    _refused(bundle, r"1 unexpected tensors \['model\.layers\.4\.mlp\.up_proj\.weight'\]")


def test_wrong_tensor_shape_is_refused(bundle, no_load):
    _rewrite_weights(bundle, lambda t: {**t, "model.norm.weight": t["model.norm.weight"][:128]})
    _refused(bundle, r"wrong shapes: \['model\.norm\.weight \[128\] \(config\.json needs \[256\]\)'\]")


@pytest.mark.parametrize("model_type, architectures", [("bert", ["BertForMaskedLM"]), ("bert", ["BertLMHeadModel"]),
                                                        ("mistral", ["MistralForSequenceClassification"])])
def test_architecture_that_is_not_a_supported_causal_lm_is_refused(bundle, no_load, model_type, architectures):
    config = json.loads((bundle / "config.json").read_text())
    (bundle / "config.json").write_text(json.dumps({**config, "model_type": model_type,
                                                    "architectures": architectures}))
    text = _refused(bundle, f"model_type '{model_type}' .* is not a causal LM the engines support")
    assert str(bundle / "config.json") in text


# --- manifest, prompt, tokenizer and file types, on the driver (#20.8) -----------------------------


def _edit_prompt(bundle: Path, **changes) -> None:
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["prompt"].update(changes)
    manifest["prompt_sha256"] = PromptTemplate(**manifest["prompt"]).sha256  # consistent, as a packager writes it
    (bundle / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("turn, count", [("### Input:\n\n### Response:\n", 0),
                                         ("### Input:\n{input}\n{input}\n### Response:\n", 2)])
def test_prompt_without_exactly_one_input_is_refused(bundle, no_load, turn, count):
    _edit_prompt(bundle, turn=turn)
    for check in (load_bundle, model_for_workers):
        with pytest.raises(BundleError, match=rf"{MANIFEST}: the prompt template has {count} '\{{input\}}' placeholders"):
            check(bundle)


def test_prompt_with_an_unknown_placeholder_is_refused(bundle, no_load):
    _edit_prompt(bundle, turn="{system_note}\n### Input:\n{input}\n### Response:\n")
    _refused(bundle, r"cannot be filled \(KeyError\('system_note'\)\)")


@pytest.mark.parametrize("temperature", [float("inf"), 1e-30, float("nan"), 0.0, 21.0])
def test_calibration_temperature_out_of_bounds_is_refused(bundle, no_load, temperature):
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["calibration"]["temperature"] = temperature
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    text = _refused(bundle, "invalid manifest")
    assert str(bundle / MANIFEST) in text and "calibration.temperature" in text


def test_malformed_tokenizer_is_refused(bundle, no_load):
    text = (bundle / "tokenizer.json").read_text()
    (bundle / "tokenizer.json").write_text(text.replace('"model"', '"modell"', 1))
    _refused(bundle, r"tokenizer\.json: not a tokenizer")


def test_oversized_tokenizer_is_refused_unread(bundle, no_load):
    os.truncate(bundle / "tokenizer.json", 60 * 1024 * 1024)  # sparse: 60 MB of zeros
    _refused(bundle, r"tokenizer\.json: 60\.0 MB, over the 50 MB limit for tokenizer\.json")


@pytest.mark.parametrize("name", [WEIGHTS, "tokenizer.json", MANIFEST])
def test_fifo_in_place_of_a_file_is_refused_without_hanging(bundle, name):
    """In a child process: opening a FIFO blocks without releasing the GIL, so a thread could not time out."""
    (bundle / name).unlink()
    os.mkfifo(bundle / name)
    code = ("import sys\nfrom soi_batch.bundle import load_bundle\nfrom soi_batch.errors import BundleError\n"
            "try:\n    load_bundle(sys.argv[1])\nexcept BundleError as exc:\n    print(exc)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        done = subprocess.run([sys.executable, "-c", code, str(bundle)], capture_output=True, text=True, env=env,
                              timeout=120, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail(f"load_bundle hung on a FIFO named {name}")
    assert f"{bundle / name}: not a regular file" in done.stdout


def test_the_shipped_bundle_passes(no_load):
    bundle = load_bundle(EMBEDDED_DEFAULT)
    assert bundle.calibration.temperature > 0 and len(bundle.manifest.labels) > 100


def test_tokenizer_without_eos_is_refused_on_the_driver(bundle):
    """The label contract of the tokenizer is checked by ``model_for_workers`` (Ray Data, Spark), not in a worker."""
    config = json.loads((bundle / "tokenizer_config.json").read_text())
    del config["eos_token"]
    (bundle / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(TokenizerError, match=rf"{bundle}: the tokenizer has no EOS token"):
        model_for_workers(bundle)


def test_a_checked_bundle_is_not_checked_again_but_its_tokenizer_is(bundle, monkeypatch):
    """The CLI and the nightly job pass the ModelBundle their ``load_bundle`` made: ``model_for_workers``
    does not run ``load_bundle`` a second time, and still checks the tokenizer's label contract."""
    from soi_batch import checks

    checked = load_bundle(bundle)
    calls = []
    monkeypatch.setattr(checks, "load_bundle", lambda *a, **k: calls.append(a))
    assert model_for_workers(checked) == str(checked.path) and calls == []
    config = json.loads((bundle / "tokenizer_config.json").read_text())
    del config["eos_token"]
    (bundle / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(TokenizerError, match="the tokenizer has no EOS token"):
        model_for_workers(checked)


def test_hub_cache_snapshot_links_into_its_blobs_are_accepted(tmp_path):
    """huggingface_hub's cache layout: snapshots/REV/FILE → ../../blobs/HASH, outside the snapshot folder."""
    repo = tmp_path / "hub" / "models--org--soi-mini"
    snapshot = repo / "snapshots" / "0123abcd"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, file in enumerate(sorted(EMBEDDED_DEFAULT.iterdir())):
        shutil.copy(file, repo / "blobs" / f"blob{i}")
        (snapshot / file.name).symlink_to(Path("..", "..", "blobs", f"blob{i}"))
    assert load_bundle(snapshot).manifest.model_id == "soi-mini"
    (snapshot / "tokenizer.json").unlink()
    (snapshot / "tokenizer.json").symlink_to(tmp_path / "elsewhere.json")
    (tmp_path / "elsewhere.json").write_text("{}")
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(snapshot)


@pytest.mark.parametrize("load_format", ["pt", "npcache", "bitsandbytes"])
def test_vllm_load_formats_other_than_safetensors_are_refused(load_format):
    from soi_batch.engines.vllm_engine import VLLMEngineConfig
    from soi_batch.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"load_format must be one of \['auto', 'safetensors', 'dummy'\], got '{load_format}'"):
        VLLMEngineConfig(load_format=load_format)
    assert VLLMEngineConfig().load_format == "auto"  # passed to vLLM as "safetensors": no pickle fallback


def test_hf_engine_refuses_missing_tensors_without_load_bundle(bundle):
    """A ModelBundle built in code skips load_bundle; the engine's own load is strict too."""
    from soi_batch.bundle import Manifest, ModelBundle
    from soi_batch.classifier import Classifier, ClassifierConfig

    manifest = Manifest.model_validate_json((bundle / MANIFEST).read_text())
    _rewrite_weights(bundle, lambda t: {k: v for k, v in t.items() if not k.startswith("model.layers.3.")})
    with pytest.raises(BundleError, match=r"the weights do not match config\.json \(\{'missing_keys': \['model\.layers\.3\."):
        Classifier(ModelBundle(bundle, manifest), ClassifierConfig(engine="hf"))


def test_weight_files_the_engines_would_pick_differently_are_refused(bundle, no_load):
    """transformers reads model.safetensors; vLLM reads every *.safetensors (or the index's shards)."""
    tensors = load_file(bundle / WEIGHTS)
    save_file({"lm_head.weight": tensors["model.embed_tokens.weight"]}, bundle / "extra.safetensors")
    _refused(bundle, r"weight files \['extra\.safetensors'\] are not part of the checkpoint \(\['model\.safetensors'\]\)")
    (bundle / "extra.safetensors").unlink()
    (bundle / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": WEIGHTS}}))
    _refused(bundle, r"both model\.safetensors and model\.safetensors\.index\.json")
