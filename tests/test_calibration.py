"""Temperature scaling and the review threshold: synthetic scores and a real (tiny) bundle."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from soi_batch.calibration import (
    choose_review_threshold,
    division_confidence,
    fit_temperature,
    path_nll,
)
from soi_batch.errors import ConfigError
from soi_batch.metrics import expected_calibration_error
from soi_batch.scorer import LabelTrie, PathSteps
from soi_batch.taxonomy import EOS_SLOT, load_taxonomy


def _sample_paths(n: int, temperature: float, seed: int, scale: float = 2.5) -> list[PathSteps]:
    """Walk the real OIICS trie: true logits z at each node, the next token drawn from
    softmax(z) over the allowed tokens, and the engine scores ``z * temperature`` — so the
    scores are calibrated exactly at ``temperature``."""
    trie = LabelTrie(load_taxonomy().labels)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        node, scores, allowed, target = 0, [], [], []
        while True:
            ok = trie.allowed[node]
            z = rng.normal(0.0, scale, size=11)
            p = np.where(ok, np.exp(z - z.max()), 0.0)
            tok = int(rng.choice(11, p=p / p.sum()))
            scores.append((z * temperature).astype(np.float32))
            allowed.append(ok.copy())
            target.append(tok)
            if tok == EOS_SLOT:
                break
            node = int(trie.child[node, tok])
        out.append(PathSteps(np.stack(scores), np.stack(allowed), np.array(target)))
    return out


@pytest.mark.parametrize("true_t", [0.5, 2.0, 4.0])
def test_fit_temperature_recovers_a_known_temperature(true_t: float) -> None:
    steps = _sample_paths(1500, true_t, seed=int(true_t * 10))
    fitted = fit_temperature(steps)
    assert fitted == pytest.approx(true_t, rel=0.08)
    assert path_nll(steps, fitted) <= path_nll(steps, 1.0)


def test_temperature_scaling_lowers_ece_of_overconfident_scores() -> None:
    validation = _sample_paths(1200, 3.0, seed=1)   # over-confident: scores are 3x too sharp
    held_out = _sample_paths(1200, 3.0, seed=2)
    t = fit_temperature(validation)
    truth = np.array([s.target[0] for s in held_out])
    pred_raw, conf_raw = division_confidence(held_out, 1.0)
    pred_cal, conf_cal = division_confidence(held_out, t)
    assert (pred_raw == pred_cal).all()              # scaling never changes the answer
    ece_before = expected_calibration_error(conf_raw, pred_raw == truth)
    ece_after = expected_calibration_error(conf_cal, pred_cal == truth)
    assert ece_before > 0.1
    assert ece_after < ece_before / 3


def test_division_confidence_is_the_root_softmax_over_divisions() -> None:
    scores = np.zeros((2, 11), dtype=np.float32)
    scores[0, 3] = np.log(8.0)                       # division 3: 8 / (8 + 8 other divisions)
    allowed = np.zeros((2, 11), dtype=bool)
    allowed[0, 1:10] = True
    allowed[1, [0, EOS_SLOT]] = True
    step = PathSteps(scores, allowed, np.array([3, EOS_SLOT]))
    pred, conf = division_confidence([step], 1.0)
    assert pred.tolist() == [3] and conf[0] == pytest.approx(0.5)
    _, conf_hot = division_confidence([step], 0.5)   # 64 / (64 + 8)
    assert conf_hot[0] == pytest.approx(64 / 72)


def test_choose_review_threshold_by_hand() -> None:
    conf = [0.6, 0.95, 0.7, 0.9, 0.8]
    correct = [True, True, False, True, True]
    # sorted: .95 ok, .9 ok, .8 ok, .7 wrong (acc .75), .6 ok (acc .8)
    assert choose_review_threshold(conf, correct, 0.95) == pytest.approx(0.8)
    assert choose_review_threshold(conf, correct, 1.0) == pytest.approx(0.8)
    assert choose_review_threshold(conf, correct, 0.8) == 0.0      # everything auto-coded


def test_choose_review_threshold_respects_ties() -> None:
    # rows with equal confidence are auto-coded together: {0.9, 0.9} is only 50 % right
    t = choose_review_threshold([0.9, 0.9, 0.5], [True, False, True], 0.9)
    assert t > 0.9 and t <= 1.0
    assert choose_review_threshold([0.9, 0.9, 0.8], [True, True, False], 1.0) == pytest.approx(0.9)


@pytest.mark.slow
def test_calibrate_bundle_on_real_osha_validation_rows(tiny_bundle: Path, osha: pd.DataFrame,
                                                       tmp_path: Path) -> None:
    """The tiny random bundle is sharply over-confident (lm_head x20): calibration must cool it,
    lower its ECE, and write the block into soi_model.json."""
    from soi_batch.bundle import load_bundle
    from soi_batch.calibration import calibrate_bundle
    from soi_batch.datasets.osha import split_osha

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    validation = split_osha(osha)["validation"].iloc[:120]
    record = calibrate_bundle(bundle, validation["Final Narrative"].tolist(),
                              validation["Source"].str.strip().tolist(), 0.95, fitted_on="OSHA validation head")
    assert record["n"] == 120
    assert record["temperature"] > 1.0
    assert record["nll_after"] < record["nll_before"]
    assert record["ece_after"] < record["ece_before"]
    manifest = json.loads((bundle / "soi_model.json").read_text())
    cal = manifest["calibration"]
    assert cal["temperature"] == pytest.approx(record["temperature"])
    assert cal["review_threshold"] == pytest.approx(record["review_threshold"])
    assert cal["review_level"] == "division" and cal["review_target_accuracy"] == 0.95
    assert cal["fitted_on"] == "OSHA validation head (n=120)"
    assert manifest["metrics"]["calibration"]["ece_after"] == pytest.approx(record["ece_after"])
    assert load_bundle(bundle).calibration.temperature == pytest.approx(record["temperature"])


@pytest.mark.slow
def test_root_step_confidence_matches_the_embedded_soi_mini(osha: pd.DataFrame) -> None:
    """calibrate_bundle reads division confidences off the root step; on real validation rows
    with the shipped soi-mini they must equal what the classifier reports, at T=1 and T=2."""
    from soi_batch.bundle import EMBEDDED_DEFAULT
    from soi_batch.classifier import Classifier, ClassifierConfig
    from soi_batch.datasets.osha import split_osha

    if not (EMBEDDED_DEFAULT / "model.safetensors").is_file():
        pytest.fail(f"embedded soi-mini missing at {EMBEDDED_DEFAULT}")
    val = split_osha(osha)["validation"].iloc[:64]
    texts, codes = val["Final Narrative"].tolist(), val["Source"].str.strip().tolist()
    steps = Classifier.load(None, ClassifierConfig(temperature=1.0)).path_steps(texts, codes)
    for t in (1.0, 2.0):
        preds = Classifier.load(None, ClassifierConfig(temperature=t)).classify_texts(texts)
        pred, conf = division_confidence(steps, t)
        assert [str(d) for d in pred] == [p.division_code for p in preds]
        assert conf == pytest.approx([p.division_confidence for p in preds], abs=1e-5)
    fitted = fit_temperature(steps)
    assert path_nll(steps, fitted) <= path_nll(steps, 1.0) + 1e-9


def _no_scoring(*args: object, **kwargs: object) -> None:
    raise AssertionError("a validation row was about to be scored")


def test_calibrate_refuses_the_rows_soi_mini_was_trained_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The shipped soi-mini 0.2.0 was trained on train+validation of the bundled OSHA split: calibrating
    it on that validation part must stop with the bundle, the split and the fix named, before any row
    is scored (loading the classifier raises here) and without touching the manifest."""
    from soi_batch.bundle import EMBEDDED_DEFAULT
    from soi_batch.classifier import Classifier
    from soi_batch.cli import main

    monkeypatch.setattr(Classifier, "load", _no_scoring)
    shutil.copy(EMBEDDED_DEFAULT / "soi_model.json", tmp_path / "soi_model.json")
    before = (tmp_path / "soi_model.json").read_bytes()
    assert main(["calibrate", "--model", "soi-mini", "--write-to", str(tmp_path), "--limit", "20"]) == 2
    err = capsys.readouterr().err
    assert "'soi-mini'" in err and "trained on the train+validation part" in err
    assert "'validation' rows" in err and "--allow-training-rows" in err
    assert (tmp_path / "soi_model.json").read_bytes() == before


@pytest.mark.slow
def test_calibrate_on_training_rows_when_allowed_warns_and_records_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """--allow-training-rows calibrates soi-mini on 20 real validation rows anyway, with a WARNING, and the
    manifest says so (fitted_on and metrics.calibration.on_training_rows)."""
    import logging

    from soi_batch.bundle import EMBEDDED_DEFAULT
    from soi_batch.cli import main

    shutil.copy(EMBEDDED_DEFAULT / "soi_model.json", tmp_path / "soi_model.json")
    with caplog.at_level(logging.WARNING, logger="soi_batch.calibration"):
        assert main(["calibrate", "--model", "soi-mini", "--write-to", str(tmp_path), "--limit", "20",
                     "--allow-training-rows"]) == 0
    assert any(r.levelno == logging.WARNING and "calibrating anyway" in r.getMessage() for r in caplog.records)
    manifest = json.loads((tmp_path / "soi_model.json").read_text())
    assert manifest["metrics"]["calibration"]["on_training_rows"] is True
    assert manifest["metrics"]["calibration"]["n"] == 20
    assert "rows the model was trained on" in manifest["calibration"]["fitted_on"]
    assert json.loads((EMBEDDED_DEFAULT / "soi_model.json").read_text())["calibration"]["temperature"] != \
        manifest["calibration"]["temperature"]


def test_calibrate_bundle_accepts_rows_of_another_split_or_an_untrained_part() -> None:
    """soi-small was trained on 'train' only: its validation part is held out; and a fingerprint of
    another split is not the rows the bundle was trained on."""
    from soi_batch.bundle import EMBEDDED_DEFAULT, Manifest
    from soi_batch.calibration import check_not_training_rows, trained_splits

    small = Manifest.model_validate_json(
        (EMBEDDED_DEFAULT.parent / "soi-small" / "soi_model.json").read_text(encoding="utf-8"))
    mini = Manifest.model_validate_json((EMBEDDED_DEFAULT / "soi_model.json").read_text(encoding="utf-8"))
    assert trained_splits(small) == {"train"} and trained_splits(mini) == {"train", "validation"}
    assert not check_not_training_rows(small, "soi-small", "validation", small.data_fingerprint)
    assert not check_not_training_rows(mini, "soi-mini", "validation", "0" * 64)
    assert not check_not_training_rows(mini, "soi-mini", "test", mini.data_fingerprint)
    with pytest.raises(ConfigError, match="soi-mini"):
        check_not_training_rows(mini, "soi-mini", "train", mini.data_fingerprint)
