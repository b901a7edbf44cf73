"""Concept drift: the spec's detector, one per model version, over the per-event loss of its labeled outcomes.

    monitor = ConceptDriftMonitor(spec)
    detection = monitor.update(labeled_record)      # None, or a dict (below)

The detector and its knobs are the spec's `drift.concept` (the detectors: streams/control/drift/detectors/,
one module each; adding one: docs/extending-detectors.md). The loss of an outcome is computed from the
score the event was served with (recorded at prediction time), so it is prequential: each outcome is
judged before the model learns from it. Two losses (`drift.concept.loss`, each detector has its default):
"log_loss" (-log of the probability given to the true label, capped at `drift.concept.loss_cap`) and
"error" (the 0/1 error of the served decision). Measured on the demo stream with a River logistic
regression learning online, outcomes 50 events late (load/benchmarks/drift_calibration.py; 6 stationary
streams of 200,000 events, abrupt concept drift at events 15,000, 30,000 and 60,000 on 5 streams each):

- ADWIN (River's default delta) on the log loss capped at 2: no detection on the stationary streams,
  and every abrupt drift found 400-1,800 events after its onset. The cap matters: one confidently
  wrong outcome must not weigh like a hundred (capped at 2.5 or 3, ADWIN fired once on the stationary
  streams; at 5, seven times). On the 0/1 error: no false detection either, but 2 of the 15 drifts
  went unseen for more than 2,000 events: the online model re-learns within ~2,000 events, and its
  error rises less than its log loss meanwhile.
- Page-Hinkley on the 0/1 error (delta 0.02, threshold 100): no false detection, but it found the
  drifts at 60,000 only 1,000-3,000 events late and most earlier ones not within 3,000; on the log
  loss it fired 3-7 times on the stationary streams at every setting tried. ADWIN is the default.

Only an INCREASE of the loss is concept drift: a River model learning online lowers its loss, and
that must not trigger a retraining. Each detector says how it estimates the onset
(change_point_event_time, where a retraining starts) in its module.

A detection: {"version", "variant", "detector", "loss", "at_event" (that version's labeled events so
far), "change_point_event_time" (ISO), "window_start_event_time" (ISO), "loss_before", "loss_after"}.
After a detection River restarts the detector, so a lasting increase is reported once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from driftloop.spec import PipelineSpec
from driftloop.streams.control.drift.detectors.base import ConceptDetector


def outcome_loss(record: dict[str, Any], detector: ConceptDetector) -> float:
    """The per-event loss of a labeled record, as the detector's knobs define it."""
    label = int(record["label"])
    if detector.loss == "error":
        return float(int(record["decision"]) != label)
    p = float(record["score"]) if label else 1.0 - float(record["score"])
    return min(detector.loss_cap, -math.log(p)) if p > 0 else detector.loss_cap


@dataclass
class _Watched:
    """One model version's own detector, and how many of its labeled events it has seen."""

    detector: ConceptDetector
    labeled: int = 0


class ConceptDriftMonitor:
    def __init__(self, spec: PipelineSpec):
        self.spec = spec
        self.detector = spec.drift.concept
        self._versions: dict[int, _Watched] = {}

    def update(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """Feed one labeled record; returns a detection when that version's loss rose significantly."""
        version = int(record["model_version"])
        watched = self._versions.get(version)
        if watched is None:
            # the onset estimate needs no more history than a retraining would read anyway
            watched = self._versions[version] = _Watched(self.detector.started(self.spec.retrain.window_events))
        watched.labeled += 1
        change = watched.detector.update(outcome_loss(record, self.detector), record["event_time"])
        if change is None:
            return None
        return {
            "version": version,
            "variant": record.get("variant", "champion"),
            "detector": self.detector.detector,
            "loss": self.detector.loss,
            "at_event": watched.labeled,
            "change_point_event_time": change.change_point,
            "window_start_event_time": change.window_start,
            "loss_before": round(change.loss_before, 5),
            "loss_after": round(change.loss_after, 5),
        }

    def forget(self, version: int) -> None:
        """Stop watching a version (archived, rolled back, replaced)."""
        self._versions.pop(version, None)
