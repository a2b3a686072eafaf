"""Security: safetensors only, no remote code, no eval/exec/pickle/unsafe YAML, model paths checked."""

from __future__ import annotations

import ast
import json
import os
import shutil
from pathlib import Path

import pytest

from soi_batch.bundle import EMBEDDED_DEFAULT, load_bundle
from soi_batch.errors import BundleError

ROOT = Path(__file__).parents[1]
SOURCE_DIRS = ("soi_batch", "jobs", "training")


def _sources() -> list[Path]:
    files = [p for d in SOURCE_DIRS for p in (ROOT / d).rglob("*.py") if "__pycache__" not in p.parts]
    assert len(files) > 20  # the scan really sees the tree
    return files


def _calls(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _name(func: ast.expr) -> str:
    return ast.unparse(func)


def _where(path: Path, node: ast.AST) -> str:
    return f"{path.relative_to(ROOT)}:{node.lineno}"


def test_no_eval_exec_pickle_or_unsafe_yaml():
    bad = []
    for path in _sources():
        for call in _calls(path):
            name = _name(call.func)
            if name in ("eval", "exec", "compile", "builtins.eval", "builtins.exec"):
                bad.append(f"{_where(path, call)} {name}()")
            if name.split(".")[-1] in ("load", "loads") and name.split(".")[0] in ("pickle", "cPickle", "dill",
                                                                                   "joblib", "marshal", "shelve"):
                bad.append(f"{_where(path, call)} {name}()")
            if name in ("torch.load",):
                kw = {k.arg: k.value for k in call.keywords}
                if not (isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True):
                    bad.append(f"{_where(path, call)} torch.load without weights_only=True")
            if name in ("yaml.load", "yaml.load_all", "yaml.unsafe_load", "yaml.full_load"):
                loader = {k.arg: _name(k.value) for k in call.keywords}.get("Loader", "")
                if name == "yaml.unsafe_load" or "Safe" not in loader:
                    bad.append(f"{_where(path, call)} {name} without SafeLoader")
    assert not bad, "unsafe calls:\n" + "\n".join(bad)


def test_no_pickle_import():
    bad = []
    for path in _sources():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, (ast.Import, ast.ImportFrom)) else []
            module = node.module if isinstance(node, ast.ImportFrom) else ""
            if {"pickle", "cPickle", "dill", "marshal"} & {*names, module or ""}:
                bad.append(_where(path, node))
    assert not bad, f"pickle-family imports: {bad}"


def test_every_from_pretrained_refuses_remote_code():
    """Each transformers ``*.from_pretrained(...)`` passes ``trust_remote_code=False``; nothing passes True.

    ``PeftModel.from_pretrained`` loads an adapter onto an already built model and takes no
    ``trust_remote_code``; it is exempt.
    """
    missing, seen = [], 0
    for path in _sources():
        for call in _calls(path):
            for kw in call.keywords:
                if kw.arg == "trust_remote_code" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    missing.append(f"{_where(path, call)} trust_remote_code={ast.unparse(kw.value)}")
            name = _name(call.func)
            if not name.endswith(".from_pretrained") or name.startswith("PeftModel"):
                continue
            seen += 1
            kw = {k.arg: k.value for k in call.keywords}
            value = kw.get("trust_remote_code")
            if not (isinstance(value, ast.Constant) and value.value is False):
                missing.append(f"{_where(path, call)} {name}(...) without trust_remote_code=False")
    assert seen >= 3
    assert not missing, "remote code not refused explicitly:\n" + "\n".join(missing)


def test_hub_downloads_are_restricted_to_safe_files():
    """The one hub download asks only for safetensors/json/tokenizer/doc files, never *.bin or *.py."""
    tree = ast.parse((ROOT / "soi_batch" / "bundle.py").read_text(encoding="utf-8"))
    calls = [c for c in ast.walk(tree) if isinstance(c, ast.Call) and _name(c.func) == "snapshot_download"]
    assert len(calls) == 1
    patterns = ast.literal_eval({k.arg: k.value for k in calls[0].keywords}["allow_patterns"])
    assert "*.safetensors" in patterns
    assert not [p for p in patterns if p.endswith((".bin", ".pt", ".pth", ".pkl", ".py", "*"))]


def _copy(tmp_path: Path) -> Path:
    out = tmp_path / "bundle"
    shutil.copytree(EMBEDDED_DEFAULT, out)
    return out


@pytest.mark.parametrize("name", ["pytorch_model.bin", "model.pt", "model.pth", "weights.ckpt", "x.pkl"])
def test_pickle_weights_are_refused_even_next_to_safetensors(tmp_path, name):
    bundle = _copy(tmp_path)
    marker = tmp_path / "pwned"
    # a real malicious pickle: loading it would create the marker file
    import pickle

    class Boom:
        def __reduce__(self):
            return (Path.touch, (marker,))

    (bundle / name).write_bytes(pickle.dumps(Boom()))
    with pytest.raises(BundleError, match=r"pickle weight files \['" + name.replace(".", r"\.")):
        load_bundle(bundle)
    assert not marker.exists()


def test_remote_code_in_a_bundle_is_never_run(tmp_path):
    """A bundle whose config/tokenizer point at custom code (auto_map) loads the stock classes only."""
    from soi_batch.classifier import Classifier, ClassifierConfig

    bundle = _copy(tmp_path)
    marker = tmp_path / "pwned"
    code = f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nfrom transformers import MistralForCausalLM as Evil\n"
    (bundle / "modeling_evil.py").write_text(code, encoding="utf-8")
    (bundle / "tokenization_evil.py").write_text(code.replace("MistralForCausalLM", "PreTrainedTokenizerFast"),
                                                 encoding="utf-8")
    config = json.loads((bundle / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "modeling_evil.Evil", "AutoModelForCausalLM": "modeling_evil.Evil"}
    (bundle / "config.json").write_text(json.dumps(config))
    tok = json.loads((bundle / "tokenizer_config.json").read_text())
    tok["auto_map"] = {"AutoTokenizer": [None, "tokenization_evil.Evil"]}
    (bundle / "tokenizer_config.json").write_text(json.dumps(tok))
    clf = Classifier.load(bundle, ClassifierConfig(engine="hf"))  # auto_map is ignored, not imported
    assert type(clf.engine.model).__module__.startswith("transformers.")
    assert type(clf.encoder.tokenizer).__module__.startswith("transformers.")
    assert clf.classify_texts(["a worker fell"])[0].code is not None
    assert not marker.exists()


# A relative path that climbs out of the working directory to a real directory, wherever the
# checkout lives (a fixed "../../etc" exists only at some depths).
_CLIMB_TO_ETC = os.path.relpath("/etc")


@pytest.mark.parametrize("model", [_CLIMB_TO_ETC, "/etc", "/dev/null", "~"])
def test_model_paths_are_resolved_and_checked(model):
    assert model != _CLIMB_TO_ETC or model.startswith("..")
    with pytest.raises(BundleError) as info:
        load_bundle(model)
    text = str(info.value)
    assert "not a soi-batch bundle" in text or "not a directory" in text
    if model != "~":
        assert str(Path(model).expanduser().resolve()) in text or model in text


def test_symlinked_pickle_is_refused(tmp_path):
    bundle = _copy(tmp_path)
    (tmp_path / "elsewhere.bin").write_bytes(b"\x80\x04N.")
    (bundle / "pytorch_model.bin").symlink_to(tmp_path / "elsewhere.bin")
    with pytest.raises(BundleError, match="pickle weight files"):
        load_bundle(bundle)
