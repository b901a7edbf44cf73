"""The candidates of a retraining: one model per (flavor, estimator) of `retrain_candidates(spec)` (by
default the spec's own model only; the spec's `retrain.candidates` names others). A warm-up retraining
trains the spec's own model only.

Every candidate learns from the same rows, the oldest part of the training set in event-time order: a batch
flavor fits them, an online flavor learns them one by one in order, as it would have online.

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

from driftloop.models.flavors import Model, retrain_candidates, train, with_model
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
    """Every candidate of `retrain_candidates(spec)`, trained on rows (oldest first)."""
    return [_train(with_model(spec, flavor, estimator), rows, labels) for flavor, estimator in retrain_candidates(spec)]


def train_spec_model(spec: PipelineSpec, rows: Sequence[Mapping[str, Any]], labels: Sequence[int]) -> list[Candidate]:
    """The spec's own model (its flavor, estimator and params) as the only candidate: a warm-up's."""
    return [_train(spec, rows, labels)]


def _train(spec: PipelineSpec, rows: Sequence[Mapping[str, Any]], labels: Sequence[int]) -> Candidate:
    started = time.perf_counter()
    model = train(spec, rows, labels)
    candidate = Candidate(spec, model, time.perf_counter() - started)
    _LOG.info("trained %s on %d rows in %.1fs", candidate.name, len(rows), candidate.seconds)
    return candidate
