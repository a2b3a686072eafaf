"""Metric code against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from soi_batch.metrics import (
    accuracy,
    accuracy_at_coverage,
    aurc,
    evaluate_predictions,
    expected_calibration_error,
    level_scores,
    macro_f1,
    risk_coverage,
    target_gaps,
)


def test_accuracy_by_hand() -> None:
    assert accuracy(["a", "b", "c", "a"], ["a", "b", "a", "a"]) == pytest.approx(0.75)


def test_macro_f1_on_a_tiny_confusion() -> None:
    # class 1: TP 2, FP 0, FN 1 -> P 1, R 2/3, F1 0.8
    # class 2: TP 1, FP 1, FN 1 -> F1 0.5
    # class 3: TP 1, FP 1, FN 0 -> P 1/2, R 1, F1 2/3
    y_true = ["1", "1", "1", "2", "2", "3"]
    y_pred = ["1", "1", "2", "2", "3", "3"]
    assert macro_f1(y_true, y_pred) == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)


def test_macro_f1_counts_a_missing_prediction_as_a_miss() -> None:
    # "1": TP 1, FN 1 -> P 1, R 1/2, F1 2/3; "2": TP 1 -> F1 1; "<none>": no support, FP 1 -> F1 0
    assert macro_f1(["1", "1", "2"], ["1", None, "2"]) == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_ece_on_four_rows() -> None:
    # 15 bins of width 1/15: 0.9 -> bin 13, 0.75 -> bin 11, 0.3 and 0.32 -> bin 4
    # bin 13: |1 - 0.9| = 0.1 (w 1/4); bin 11: |0 - 0.75| (w 1/4); bin 4: |0.5 - 0.31| (w 1/2)
    conf = np.array([0.9, 0.75, 0.3, 0.32])
    correct = np.array([True, False, False, True])
    expected = 0.25 * 0.1 + 0.25 * 0.75 + 0.5 * 0.19
    assert expected_calibration_error(conf, correct) == pytest.approx(expected)


def test_ece_puts_zero_and_one_in_the_end_bins() -> None:
    # a perfectly calibrated pair: confidence 1 right, confidence 0 wrong
    assert expected_calibration_error(np.array([1.0, 0.0]), np.array([True, False])) == pytest.approx(0.0)
    # 1/15 exactly belongs to the first bin (right-closed), together with 0.02
    conf = np.array([1 / 15, 0.02])
    assert expected_calibration_error(conf, np.array([True, True])) == pytest.approx(1 - conf.mean())


def test_ece_rejects_non_probabilities() -> None:
    with pytest.raises(ValueError):
        expected_calibration_error(np.array([1.2]), np.array([True]))


def test_accuracy_at_coverage_by_hand() -> None:
    conf = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    correct = np.array([1, 1, 0, 1, 1, 0, 1, 0, 0, 0], dtype=bool)
    perm = np.random.default_rng(3).permutation(10)  # input order must not matter
    got = accuracy_at_coverage(conf[perm], correct[perm])
    assert got == pytest.approx({"0.5": 4 / 5, "0.7": 5 / 7, "0.8": 5 / 8, "0.9": 5 / 9})


def test_accuracy_at_coverage_rounds_the_count_up() -> None:
    # 3 rows at coverage 0.5 -> the 2 most confident
    got = accuracy_at_coverage(np.array([0.9, 0.8, 0.1]), np.array([True, False, True]), coverages=(0.5,))
    assert got == {"0.5": 0.5}


def test_risk_coverage_and_aurc_by_hand() -> None:
    conf = np.array([0.3, 0.9, 0.6])
    correct = np.array([True, True, False])
    coverage, risk = risk_coverage(conf, correct)
    assert coverage == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert risk == pytest.approx([0.0, 0.5, 1 / 3])
    assert aurc(conf, correct) == pytest.approx((0 + 0.5 + 1 / 3) / 3)


def test_aurc_of_a_perfect_ranking_is_lower_than_a_reversed_one() -> None:
    correct = np.array([True] * 6 + [False] * 4)
    good = np.linspace(1.0, 0.1, 10)
    assert aurc(good, correct) < aurc(good[::-1], correct)


def test_levels_are_scored_only_where_the_label_has_them() -> None:
    labels = ["66", "662", "6624", "9999", "3", "8621"]
    preds = ["66", "661", "6624", "9999", "31", "8421"]
    s = level_scores(labels, preds)
    assert (s["division"].n, s["division"].accuracy) == (6, 1.0)
    # "3" has no major group: 5 rows, 86 vs 84 wrong
    assert (s["major_group"].n, s["major_group"].accuracy) == (5, pytest.approx(0.8))
    # only 3- and 4-digit labels: 662/661 wrong, 662/662 right, 999/999 right, 862/842 wrong
    assert (s["group"].n, s["group"].accuracy) == (4, pytest.approx(0.5))
    # exact code match over every row
    assert (s["code"].n, s["code"].accuracy) == (6, pytest.approx(0.5))


def test_a_prediction_shorter_than_the_label_is_wrong_at_the_deeper_level() -> None:
    s = level_scores(["662", "662"], ["66", "662"])
    assert s["major_group"].accuracy == 1.0
    assert s["group"].accuracy == pytest.approx(0.5)
    assert s["code"].accuracy == pytest.approx(0.5)


def test_evaluate_predictions_uses_the_predictors_own_levels_and_failed_rows() -> None:
    labels = ["66", "662", "8621", "9999"]
    codes = ["66", "8421", "8621", None]             # last row failed
    divisions = ["6", "6", "8", None]                  # a per-level predictor may disagree with the code
    majors = ["66", "66", "84", None]
    conf = [0.9, 0.6, 0.8, float("nan")]
    m = evaluate_predictions(labels, codes, divisions, conf, majors)
    assert m["n"] == 4
    assert m["division"]["accuracy"] == pytest.approx(0.75)
    assert m["major_group"]["accuracy"] == pytest.approx(0.5)
    assert m["code"]["accuracy"] == pytest.approx(0.5)
    # 3+ digit labels: 662 vs 842 wrong, 862 right, 999 vs nothing wrong
    assert m["group"]["n"] == 3 and m["group"]["accuracy"] == pytest.approx(1 / 3)
    # confidence order 0.9 (ok), 0.8 (ok), 0.6 (ok), 0 (failed row: wrong)
    assert m["accuracy_at_coverage"]["0.5"] == 1.0
    assert m["aurc"] == pytest.approx((0 + 0 + 0 + 0.25) / 4)


def test_target_gaps_sign_convention() -> None:
    m = {"division": {"accuracy": 0.80, "macro_f1": 0.80}, "major_group": {"accuracy": 0.70},
         "ece": 0.05, "accuracy_at_coverage": {"0.7": 0.96}}
    gaps = target_gaps(m)
    assert gaps["division.accuracy"]["gap"] == pytest.approx(-0.05) and not gaps["division.accuracy"]["met"]
    assert gaps["ece"]["gap"] == pytest.approx(-0.02) and not gaps["ece"]["met"]
    assert gaps["accuracy_at_coverage.0.7"]["met"]
    assert gaps["division.macro_f1"]["gap"] == pytest.approx(0.02)
