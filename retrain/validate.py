"""Validation on a time-ordered holdout and the gate a candidate must pass to become the challenger.

The training set is split by event time: the oldest `1 - spec.retrain.holdout_share` trains the candidates,
the newest share is the holdout every model is scored on: each candidate and the current champion.

The champion's figures are, when it served at least half of the holdout, the scores it gave those events
live (the labeled records keep them): that is the champion with all the online learning it did, which a
replay of this window into its registered snapshot would miss. The candidates are then scored on the same
events. Otherwise (a champion promoted during the window) its registered snapshot scores the holdout after
`catch_up`: a River snapshot first learns, in order, the training rows joined since it was registered (the
rule of `ModelRouter.learn`).

Metrics: accuracy (decision = probability >= spec.model.threshold), ROC AUC (None when the holdout holds one
class only) and log loss. The gate: the best candidate by `spec.retrain.gate_metric` must beat the champion
by more than `spec.retrain.min_improvement` (log loss: lower is better); with no champion it passes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.metrics import log_loss

from driftloop.models.flavors import Model
from driftloop.models.live_metrics import roc_auc
from driftloop.spec import PipelineSpec

METRICS = ("accuracy", "roc_auc", "log_loss")
LOWER_IS_BETTER = frozenset({"log_loss"})
Metrics = dict[str, float | None]


def holdout_size(rows: int, share: float) -> int:
    """Rows in the holdout: the share, rounded, leaving at least one row on each side."""
    return min(rows - 1, max(1, round(rows * share)))


def holdout_metrics(probabilities: Sequence[float] | np.ndarray, labels: Sequence[int], threshold: float) -> Metrics:
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=int)
    return {
        "accuracy": float(np.mean((p >= threshold) == y)),
        "roc_auc": roc_auc(zip(y.astype(bool).tolist(), p.tolist())),
        "log_loss": float(log_loss(y, p, labels=[0, 1])),
    }


def score(model: Model, rows: Sequence[Mapping[str, Any]], labels: Sequence[int], spec: PipelineSpec) -> Metrics:
    return holdout_metrics(model.predict_proba(rows), labels, spec.model.threshold)


def catch_up(
    model: Model, registered_ms: int, rows: Sequence[Mapping[str, Any]], labels: Sequence[int], joined_ms: Sequence[int]
) -> int:
    """Let an online champion learn the rows joined since it was registered, in order; returns rows learned."""
    if not model.online:
        return 0
    fresh = [i for i, joined in enumerate(joined_ms) if joined >= registered_ms]
    if fresh:
        model.learn([rows[i] for i in fresh], [labels[i] for i in fresh])
    return len(fresh)


@dataclass(frozen=True)
class GateResult:
    passed: bool
    winner: str  # the best candidate's name (the one registered)
    reason: str  # one sentence, e.g. "roc_auc 0.8100 <= champion v3 0.8400 + 0.0000"


def gate(
    spec: PipelineSpec, candidates: Mapping[str, Metrics], champion: Metrics | None, champion_version: int | None
) -> GateResult:
    metric, margin = spec.retrain.gate_metric, spec.retrain.min_improvement
    lower = metric in LOWER_IS_BETTER
    defined = {name: v for name, m in candidates.items() if (v := m[metric]) is not None}
    if not defined:
        return GateResult(
            False, next(iter(candidates)), f"{metric} is undefined on this holdout (it holds only one class)"
        )
    winner = (min if lower else max)(defined, key=defined.__getitem__)
    value = defined[winner]
    if champion is None:
        nothing = (
            "there is no champion to compare with"
            if champion_version is None
            else f"champion v{champion_version} is the warm-up placeholder, not compared"
        )
        return GateResult(True, winner, f"{metric} {value:.4f}; {nothing}")
    theirs = champion[metric]
    if theirs is None:
        return GateResult(False, winner, f"the champion's {metric} is undefined on this holdout")
    who = f"champion v{champion_version}"
    if lower:
        passed = value < theirs - margin
        sign = "<" if passed else ">="
        return GateResult(passed, winner, f"{metric} {value:.4f} {sign} {who} {theirs:.4f} - {margin:.4f}")
    passed = value > theirs + margin
    sign = ">" if passed else "<="
    return GateResult(passed, winner, f"{metric} {value:.4f} {sign} {who} {theirs:.4f} + {margin:.4f}")
