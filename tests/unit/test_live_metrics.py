"""Rolling live metrics agree with scikit-learn on the same window, except where river defines edges."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as sk

from driftloop.models.live_metrics import LiveMetrics
from driftloop.settings import DEMO_SPEC
from driftloop.spec import load_spec


def sklearn_on(labels: list[int], probas: list[float], threshold: float) -> dict[str, float]:
    decisions = [int(p >= threshold) for p in probas]
    return {
        "accuracy": sk.accuracy_score(labels, decisions),
        "precision": sk.precision_score(labels, decisions, zero_division=0),
        "recall": sk.recall_score(labels, decisions, zero_division=0),
        "f1": sk.f1_score(labels, decisions, zero_division=0),
        "log_loss": sk.log_loss(labels, probas, labels=[0, 1]),
        "roc_auc": sk.roc_auc_score(labels, probas),
        "samples": len(labels),
    }


def test_matches_sklearn_on_each_versions_rolling_window():
    threshold = load_spec(DEMO_SPEC).model.threshold
    rng = np.random.default_rng(7)
    live = LiveMetrics(threshold=threshold, window=300)
    seen: dict[int, tuple[list[int], list[float]]] = {3: ([], []), 4: ([], [])}
    for step in range(2000):
        version = 3 if rng.random() < 0.7 else 4
        label = int(rng.random() < 0.3)
        # Informative but imperfect scores, rounded so the window holds ties (as tree models give).
        proba = float(np.clip(np.round(0.35 * label + rng.random() * 0.65, 2), 0.01, 0.99))
        if step % 2:
            live.update(version, label, proba)
        else:
            live.update_many(version, [label], [proba])
        seen[version][0].append(label)
        seen[version][1].append(proba)
        if step in (50, 299, 1000, 1999):
            snapshot = live.snapshot()
            for v, (labels, probas) in seen.items():
                expected = sklearn_on(labels[-300:], probas[-300:], threshold)
                assert snapshot[v] == pytest.approx(expected, abs=1e-9), (step, v)
    assert snapshot[3]["samples"] == snapshot[4]["samples"] == 300


def test_the_decision_is_positive_from_the_threshold_up_as_in_predictions():
    live = LiveMetrics(threshold=0.7)
    live.update_many("2", [1, 0, 0], [0.7, 0.69, 0.9])
    snapshot = live.snapshot()["2"]
    assert snapshot["recall"] == 1.0  # 0.7 is positive
    assert snapshot["precision"] == 0.5  # 0.9 is a false positive, 0.69 a true negative
    assert snapshot["accuracy"] == pytest.approx(2 / 3)


def test_where_the_window_leaves_a_metric_undefined():
    live = LiveMetrics(threshold=0.5)
    live.update_many(1, [0, 0], [0.1, 0.2])  # one class, no positive predicted
    snapshot = live.snapshot()[1]
    assert snapshot["roc_auc"] is None  # scikit-learn warns and returns NaN
    assert snapshot["precision"] == snapshot["recall"] == snapshot["f1"] == 0.0  # as zero_division=0
    assert snapshot["accuracy"] == 1.0


def test_log_loss_clamps_certain_mistakes_to_1e_15_where_sklearn_uses_float_eps():
    live = LiveMetrics(threshold=0.5)
    live.update_many(1, [1, 0], [0.0, 0.5])
    expected = (-math.log(1e-15) - math.log(0.5)) / 2
    assert live.snapshot()[1]["log_loss"] == pytest.approx(expected, rel=1e-12)
    assert sk.log_loss([1, 0], [0.0, 0.5]) == pytest.approx((-math.log(np.finfo(float).eps) - math.log(0.5)) / 2)


def test_forgotten_versions_leave_the_snapshot():
    live = LiveMetrics(threshold=0.5, window=10)
    live.update(3, 1, 0.8)
    live.update(4, 0, 0.3)
    live.forget(3)
    assert list(live.snapshot()) == [4]


@pytest.mark.parametrize("threshold, window", [(0.0, 10), (1.0, 10), (0.5, 0)])
def test_rejects_a_threshold_or_window_that_cannot_work(threshold, window):
    with pytest.raises(ValueError):
        LiveMetrics(threshold=threshold, window=window)
