from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from soi_batch.bundle import MANIFEST, load_bundle
from soi_batch.errors import BundleError, LabelSetError
from soi_batch.prompt import PromptTemplate, normalize_narrative
from soi_batch.taxonomy import load_taxonomy


def test_taxonomy_levels_and_titles():
    tax = load_taxonomy()
    levels = [tax.levels[c] for c in tax.titles]
    assert levels.count("division") == 9
    assert levels.count("major_group") == 78
    assert levels.count("group") == 439
    assert levels.count("detail") == 1139
    assert tax.titles["8621"].startswith("Forklift")
    assert tax.titles["66"].startswith("Floors")
    assert tax.is_label("9999") and tax.is_label("66") and not tax.is_label("6")
    assert {"6", "66", "662", "9", "99", "9999"} <= set(tax.titles)
    assert "999" not in tax.titles  # 9999 stands alone under major group 99


def test_every_osha_source_code_is_a_label(osha):
    tax = load_taxonomy()
    assert set(osha["Source"]) <= set(tax.labels)


def test_label_set_rejects_unknown_codes():
    with pytest.raises(LabelSetError, match="not OIICS"):
        load_taxonomy().with_labels(["66", "12345"])


def test_prompt_hash_is_stable_and_sensitive():
    a, b = PromptTemplate(), PromptTemplate(instruction="other")
    assert a.sha256 == PromptTemplate.from_dict(a.to_dict()).sha256
    assert a.sha256 != b.sha256
    rendered = a.render("  Worker  fell\r\nfrom a ladder. ")
    assert rendered.startswith(a.shared_prefix) and rendered.endswith("### Response:\n")
    assert "Worker fell from a ladder." in rendered


def test_normalize_narrative_truncates_at_word_boundary():
    text, cut = normalize_narrative("word " * 1000, 100)
    assert cut and len(text) <= 100 and not text.endswith(" ")
    assert normalize_narrative("a\x00b\tc", 100) == ("a b c", False)


def test_bundle_round_trip_and_validation(tiny_bundle, tmp_path):
    bundle = load_bundle(tiny_bundle)
    assert bundle.model_id == "tiny-random@0"
    assert bundle.prompt == PromptTemplate()
    assert len(bundle.taxonomy.labels) == len(load_taxonomy().labels)

    copy = tmp_path / "b"
    shutil.copytree(tiny_bundle, copy)
    (copy / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(BundleError, match="pickle"):
        load_bundle(copy)
    (copy / "pytorch_model.bin").unlink()

    manifest = json.loads((copy / MANIFEST).read_text())
    manifest["prompt"]["instruction"] = "edited after training"
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="prompt_sha256"):
        load_bundle(copy)

    (copy / MANIFEST).unlink()
    with pytest.raises(BundleError, match="not a soi-batch bundle"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="not a named model .* a directory, or a hub id"):
        load_bundle(tmp_path / "missing" / "dir" / "x")


def test_bundle_without_safetensors_is_refused(tiny_bundle, tmp_path):
    copy = Path(shutil.copytree(tiny_bundle, tmp_path / "c"))
    for f in copy.glob("*.safetensors"):
        f.unlink()
    with pytest.raises(BundleError, match="safetensors"):
        load_bundle(copy)
