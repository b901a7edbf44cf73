"""The candidates of a retraining: one batch-trained ONNX model and one warm-started River model (a warm-up
retraining trains the spec's own model only).

Both learn from the same rows, the oldest part of the training set in event-time order:
- ONNX: the spec's scikit-learn pipeline around `spec.retrain.onnx_estimator`, fitted and exported;
- River: `spec.retrain.river_estimator`, learning the rows one by one in order, as it would have online.

A candidate's estimator may differ from `spec.model.estimator`; it is built from a copy of the spec whose
`model` section names it (`with_model`: the spec's `model.params` carry over only to the candidate of the
same flavor and estimator; the others use their defaults).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from driftloop.models.flavors import Model, new_model, train_onnx, with_model
from driftloop.spec import PipelineSpec

_LOG = logging.getLogger("driftloop.retrain.train")


@dataclass(frozen=True)
class Candidate:
    spec: PipelineSpec  # the spec whose model section built it: flavor, estimator, params
    model: Model
    seconds: float  # training (and export) time

    @property
    def name(self) -> str:
        return f"{self.spec.model.flavor}_{self.spec.model.estimator}"


def train_candidates(spec: PipelineSpec, rows: Sequence[Mapping[str, Any]], labels: Sequence[int]) -> list[Candidate]:
    """The ONNX and the River candidate, trained on rows (oldest first)."""
    return [_train(with_model(spec, "onnx", spec.retrain.onnx_estimator), rows, labels),
            _train(with_model(spec, "river", spec.retrain.river_estimator), rows, labels)]


def train_spec_model(spec: PipelineSpec, rows: Sequence[Mapping[str, Any]], labels: Sequence[int]) -> list[Candidate]:
    """The spec's own model (its flavor, estimator and params) as the only candidate: a warm-up's."""
    return [_train(spec, rows, labels)]


def _train(spec: PipelineSpec, rows: Sequence[Mapping[str, Any]], labels: Sequence[int]) -> Candidate:
    started = time.perf_counter()
    if spec.model.flavor == "onnx":
        model = train_onnx(spec, rows, labels)
    else:
        model = new_model(spec)
        model.learn(rows, labels)
    candidate = Candidate(spec, model, time.perf_counter() - started)
    _LOG.info("trained %s on %d rows in %.1fs", candidate.name, len(rows), candidate.seconds)
    return candidate
