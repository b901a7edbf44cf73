"""Concept drift: a River change detector per model version over the per-event loss of its labeled outcomes.

    monitor = ConceptDriftMonitor(spec)
    detection = monitor.update(labeled_record)      # None, or a dict (below)

The loss of an outcome is computed from the score the event was served with (recorded at prediction
time), so it is prequential: each outcome is judged before the model learns from it. Two losses:
"log_loss" (-log of the probability given to the true label, capped at `LOG_LOSS_CAP`) and "error"
(the 0/1 error of the served decision); `DEFAULT_LOSS` picks one per detector. Measured on the demo
stream with a River logistic regression learning online, outcomes 50 events late
(load/benchmarks/drift_calibration.py; 6 stationary streams of 200,000 events, abrupt concept drift at events
15,000, 30,000 and 60,000 on 5 streams each):

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
that must not trigger a retraining. The detector is the spec's `drift.concept_detector`:

- "adwin": River's ADWIN (`ADWIN_DELTA`). ADWIN flags a change in either direction and then drops
  the older part of its window; the detection counts when the kept (recent) part's mean loss is above
  the dropped part's. ADWIN cuts at a boundary of its compressed buckets, which on the demo stream lay
  800-7,700 events before the real onset (window_start_event_time: the first event of the kept
  window). Within the kept window, the onset is then estimated where the cumulative sum of the losses'
  deviations from the window's mean is lowest (the least-squares split for one rise of the mean):
  change_point_event_time, 0-300 events after the onset on 9 of 10 demo streams (1,150 on the tenth).
  loss_before / loss_after are the mean losses on either side of that split.
- "page_hinkley": River's PageHinkley in mode "up" (`PAGE_HINKLEY`), which only watches increases.
  change_point_event_time (and window_start_event_time) is the event time where its cumulative sum of
  deviations last had its minimum, i.e. where it started rising for good.

A detection: {"version", "variant", "detector", "loss", "at_event" (that version's labeled events so
far), "change_point_event_time" (ISO), "window_start_event_time" (ISO), "loss_before", "loss_after"}.
After a detection River restarts the detector, so a lasting increase is reported once.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import numpy as np
from river import drift

from driftloop.spec import PipelineSpec

DEFAULT_LOSS = {"adwin": "log_loss", "page_hinkley": "error"}
LOG_LOSS_CAP = 2.0  # proposed spec knob: drift.concept_loss_cap (with drift.concept_loss)
ADWIN_DELTA = 0.002  # River's default
# threshold 75 finds drifts sooner (600-2,000 events at 60,000) but fired twice on stationary streams
PAGE_HINKLEY = {"delta": 0.02, "threshold": 100.0}


def default_loss(spec: PipelineSpec) -> str:
    return DEFAULT_LOSS[spec.drift.concept_detector]


def outcome_loss(record: dict[str, Any], loss: str) -> float:
    """The per-event loss of a labeled record."""
    label = int(record["label"])
    if loss == "error":
        return float(int(record["decision"]) != label)
    p = float(record["score"]) if label else 1.0 - float(record["score"])
    return min(LOG_LOSS_CAP, -math.log(p)) if p > 0 else LOG_LOSS_CAP


class _VersionTracker:
    """One model version's detector, with what is needed to describe a detection."""

    def __init__(self, detector: str, history: int):
        self.detector = detector
        self.labeled = 0
        if detector == "adwin":
            self.river = drift.ADWIN(delta=ADWIN_DELTA)
        else:
            self.river = drift.PageHinkley(mode="up", **PAGE_HINKLEY)
        self.history: deque[tuple[str, float]] = deque(maxlen=history)  # (event time, loss), newest last
        # Page-Hinkley: losses since the detector (re)started, and at its latest minimum
        self.total = self.count = 0.0
        self.total_at_min = self.count_at_min = 0.0
        self.time_at_min: str | None = None

    def update(self, loss: float, event_time: str) -> tuple[str, str, float, float] | None:
        """(change point, window start, loss before, loss after) on an increase, else None."""
        self.labeled += 1
        if self.detector == "adwin":
            return self._adwin(loss, event_time)
        return self._page_hinkley(loss, event_time)

    def _adwin(self, loss: float, event_time: str) -> tuple[str, str, float, float] | None:
        self.history.append((event_time, loss))
        width, total = self.river.width, self.river.total
        self.river.update(loss)
        if not self.river.drift_detected:
            return None
        kept, kept_total = int(self.river.width), self.river.total
        dropped = width + 1 - kept
        if not dropped or kept_total / kept <= (total + loss - kept_total) / dropped:
            return None  # the loss fell (or nothing was dropped): not concept drift
        window = list(self.history)[-kept:]
        losses = np.array([x for _, x in window])
        deviations = np.cumsum(losses - losses.mean())
        split = int(np.argmin(deviations)) + 1  # the rise starts after the lowest point
        if split >= len(window):  # no rise inside the kept window: take its start
            split = 0
        before = float(losses[:split].mean()) if split else float(losses.mean())
        return window[split][0], window[0][0], before, float(losses[split:].mean())

    def _page_hinkley(self, loss: float, event_time: str) -> tuple[str, str, float, float] | None:
        if self.river.drift_detected:  # River restarts the detector on this update; so do our sums
            self.total = self.count = self.total_at_min = self.count_at_min = 0.0
        self.river.update(loss)
        self.total += loss
        self.count += 1
        # a new minimum of the cumulative sum (River keeps it as private state): a rise, if one comes, starts here
        if self.river._sum_increase <= self.river._min_increase:
            self.total_at_min, self.count_at_min, self.time_at_min = self.total, self.count, event_time
        if not self.river.drift_detected:
            return None
        before = self.total_at_min / self.count_at_min if self.count_at_min else 0.0
        after_count = self.count - self.count_at_min
        after = (self.total - self.total_at_min) / after_count if after_count else loss
        start = self.time_at_min or event_time
        return start, start, before, after


class ConceptDriftMonitor:
    def __init__(self, spec: PipelineSpec, *, loss: str | None = None):
        loss = loss or default_loss(spec)
        if loss not in ("log_loss", "error"):
            raise ValueError(f"loss must be log_loss or error, not {loss!r}")
        self.spec = spec
        self.loss = loss
        self.detector = spec.drift.concept_detector
        self._versions: dict[int, _VersionTracker] = {}

    def update(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """Feed one labeled record; returns a detection when that version's loss rose significantly."""
        version = int(record["model_version"])
        tracker = self._versions.get(version)
        if tracker is None:
            # ADWIN's kept window can outgrow any bound; the onset estimate needs no more history than a
            # retraining would read anyway
            tracker = self._versions[version] = _VersionTracker(self.detector, self.spec.retrain.window_events)
        change = tracker.update(outcome_loss(record, self.loss), record["event_time"])
        if change is None:
            return None
        change_point, window_start, before, after = change
        return {"version": version, "variant": record.get("variant", "champion"), "detector": self.detector,
                "loss": self.loss, "at_event": tracker.labeled, "change_point_event_time": change_point,
                "window_start_event_time": window_start, "loss_before": round(before, 5),
                "loss_after": round(after, 5)}

    def forget(self, version: int) -> None:
        """Stop watching a version (archived, rolled back, replaced)."""
        self._versions.pop(version, None)
