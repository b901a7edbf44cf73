"""The retraining gate and holdout metrics: which candidate wins, and when it beats the champion."""

from __future__ import annotations

import math

import pytest
import yaml

from driftloop.retrain.validate import gate, holdout_metrics, holdout_size
from driftloop.settings import DEMO_SPEC
from driftloop.spec import parse_spec


def _spec(**retrain):
    document = yaml.safe_load(DEMO_SPEC.read_text())
    document["retrain"] = retrain
    return parse_spec(document)


def _m(accuracy=0.9, roc_auc=0.8, log_loss=0.3):
    return {"accuracy": accuracy, "roc_auc": roc_auc, "log_loss": log_loss}


def test_holdout_metrics_match_their_definitions():
    labels, probabilities = [0, 0, 1, 1, 0], [0.1, 0.6, 0.7, 0.4, 0.2]
    metrics = holdout_metrics(probabilities, labels, threshold=0.5)
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["roc_auc"] == pytest.approx(5 / 6)  # 5 of the 6 (positive, negative) pairs ranked right
    expected = -sum(math.log(p if y else 1 - p) for y, p in zip(labels, probabilities)) / 5
    assert metrics["log_loss"] == pytest.approx(expected)
    assert holdout_metrics([0.2, 0.9], [1, 1], threshold=0.5)["roc_auc"] is None  # one class: undefined


def test_holdout_size_keeps_both_sides():
    assert holdout_size(1000, 0.25) == 250
    assert holdout_size(2, 0.01) == 1 and holdout_size(2, 0.99) == 1


def test_the_best_candidate_must_beat_the_champion_by_the_margin():
    candidates = {"onnx_gradient_boosting": _m(roc_auc=0.86), "river_logistic_regression": _m(roc_auc=0.91)}
    passed = gate(_spec(min_improvement=0.05), candidates, _m(roc_auc=0.85), 3)
    assert passed.passed and passed.winner == "river_logistic_regression"
    assert passed.reason == "roc_auc 0.9100 > champion v3 0.8500 + 0.0500"
    rejected = gate(_spec(min_improvement=0.1), candidates, _m(roc_auc=0.85), 3)
    assert not rejected.passed and rejected.reason == "roc_auc 0.9100 <= champion v3 0.8500 + 0.1000"
    assert not gate(_spec(), candidates, _m(roc_auc=0.91), 3).passed  # a tie does not beat it


def test_log_loss_gates_lower_is_better():
    candidates = {"onnx_random_forest": _m(log_loss=0.20), "river_logistic_regression": _m(log_loss=0.25)}
    decision = gate(_spec(gate_metric="log_loss", min_improvement=0.05), candidates, _m(log_loss=0.30), 1)
    assert decision.passed and decision.winner == "onnx_random_forest"
    assert decision.reason == "log_loss 0.2000 < champion v1 0.3000 - 0.0500"
    worse = gate(_spec(gate_metric="log_loss"), candidates, _m(log_loss=0.19), 1)
    assert not worse.passed and worse.reason == "log_loss 0.2000 >= champion v1 0.1900 - 0.0000"


def test_without_a_champion_the_best_candidate_passes_and_an_undefined_metric_rejects():
    candidates = {"a": _m(accuracy=0.7), "b": _m(accuracy=0.8)}
    first = gate(_spec(gate_metric="accuracy"), candidates, None, None)
    assert first.passed and first.winner == "b" and "no champion" in first.reason
    one_class = {"a": _m(roc_auc=None), "b": _m(roc_auc=None)}
    undefined = gate(_spec(), one_class, _m(roc_auc=None), 2)
    assert not undefined.passed and "undefined" in undefined.reason
