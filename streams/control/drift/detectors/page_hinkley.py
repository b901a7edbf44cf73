"""Page-Hinkley on the 0/1 error: River's PageHinkley in mode "up", which only watches increases.

The change point (and window start) is the event where its cumulative sum of deviations last had its
minimum, i.e. where it started rising for good; loss_before / loss_after are the mean losses since the
detector (re)started, before and after that event. Calibration in streams/control/drift/concept.py.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, PrivateAttr

from driftloop.streams.control.drift.detectors.base import Change, ConceptDetector


class PageHinkley(ConceptDetector):
    loss: Literal["log_loss", "error"] = "error"  # on the log loss it fired 3-7 times on stationary streams
    delta: float = Field(default=0.02, ge=0)  # deviations below this are tolerated
    # 75 finds drifts sooner (600-2,000 events at 60,000) but fired twice on stationary streams
    threshold: float = Field(default=100.0, gt=0)
    min_instances: int = Field(default=30, ge=1)  # losses before the first test: River's default
    alpha: float = Field(default=1 - 0.0001, gt=0, le=1)  # forgetting factor of the sum: River's default
    _river: Any = PrivateAttr()
    # losses since the detector (re)started, and at the latest minimum of its cumulative sum
    _total: float = PrivateAttr(0.0)
    _count: int = PrivateAttr(0)
    _total_at_min: float = PrivateAttr(0.0)
    _count_at_min: int = PrivateAttr(0)
    _time_at_min: str | None = PrivateAttr(None)

    def start(self, history: int) -> None:
        from river.drift import PageHinkley as RiverPageHinkley  # imported on start: reading a spec need not load River

        self._river = RiverPageHinkley(
            mode="up", delta=self.delta, threshold=self.threshold, min_instances=self.min_instances, alpha=self.alpha
        )

    def update(self, loss: float, event_time: str) -> Change | None:
        if self._river.drift_detected:  # River restarts the detector on this update; so do our sums
            self._total = self._total_at_min = 0.0
            self._count = self._count_at_min = 0
        self._river.update(loss)
        self._total += loss
        self._count += 1
        # a new minimum of the cumulative sum (River keeps it as private state): a rise, if one comes, starts here
        if self._river._sum_increase <= self._river._min_increase:
            self._total_at_min, self._count_at_min, self._time_at_min = self._total, self._count, event_time
        if not self._river.drift_detected:
            return None
        before = self._total_at_min / self._count_at_min if self._count_at_min else 0.0
        after_count = self._count - self._count_at_min
        after = (self._total - self._total_at_min) / after_count if after_count else loss
        start = self._time_at_min or event_time
        return Change(start, start, before, after)
