"""Schema and data-quality drift: unseen categories, missing values and dead letters over a sliding window.

    quality = QualityMonitor(spec)
    quality.add(observation)          # one scoring batch's counts (see streams/control/drift/report.py)
    section = quality.evaluate()      # the "quality" section of a drift report

The window is the newest observation batches holding about `drift.window_events` input events (valid
plus dead-lettered). Rates, each in [0, 1]:

- unseen_rate: per category field, values outside the spec's `values` / valid events; the headline is
  the worst field, so `drift.max_unseen_rate` means the same whatever the number of category fields.
- missing_rate: per optional field, absent values / valid events; the headline is the worst field.
- out_of_range_rate: events dead-lettered as `out_of_range` / all input events.
- dlq_rate: all dead-lettered events / all input events.

`events_total` counts every input event observed since the monitor started (the trigger policy's
`schedule_every` and `cooldown` counts of events).

`flagged` lists the rates above their spec limit (`max_unseen_rate`, `max_missing_rate`,
`max_dlq_rate`; out-of-range records are dead letters, so `max_dlq_rate` bounds them too).
Quality drift is reported and audited but never retrains a model: a broken producer or an outdated
spec is fixed at the source, not by learning from bad rows.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any

from driftloop.spec import PipelineSpec


class QualityMonitor:
    def __init__(self, spec: PipelineSpec):
        self.spec = spec
        self._batches: deque[tuple[int, Counter, Counter, Counter]] = deque()  # valid, dlq, unseen, missing
        self._events = 0  # input events (valid + dead-lettered) in the window
        self.events_total = 0  # input events ever observed: the clock of the trigger's event schedule

    def add(self, observation: dict[str, Any]) -> None:
        valid = int(observation.get("valid", 0))
        dlq, unseen, missing = (Counter(observation.get(k) or {}) for k in ("dlq", "unseen", "missing"))
        events = valid + sum(dlq.values())
        if not events:
            return
        self._batches.append((valid, dlq, unseen, missing))
        self._events += events
        self.events_total += events
        window = self.spec.drift.window_events
        while len(self._batches) > 1 and self._events - _events(self._batches[0]) >= window:
            self._events -= _events(self._batches.popleft())

    def evaluate(self) -> dict[str, Any]:
        valid = sum(b[0] for b in self._batches)
        dlq: Counter[str] = Counter()
        unseen: Counter[str] = Counter()
        missing: Counter[str] = Counter()
        for _, batch_dlq, batch_unseen, batch_missing in self._batches:
            dlq.update(batch_dlq)
            unseen.update(batch_unseen)
            missing.update(batch_missing)
        unseen_by_field = {f: _rate(n, valid) for f, n in sorted(unseen.items())}
        missing_by_field = {f: _rate(n, valid) for f, n in sorted(missing.items())}
        rates = {
            "unseen_rate": max(unseen_by_field.values(), default=0.0),
            "missing_rate": max(missing_by_field.values(), default=0.0),
            "out_of_range_rate": _rate(dlq.get("out_of_range", 0), self._events),
            "dlq_rate": _rate(sum(dlq.values()), self._events),
        }
        drift = self.spec.drift
        limits = {
            "unseen_rate": drift.max_unseen_rate,
            "missing_rate": drift.max_missing_rate,
            "dlq_rate": drift.max_dlq_rate,
        }
        return {
            "events": self._events,
            "valid": valid,
            "events_total": self.events_total,
            **rates,
            "unseen": unseen_by_field,
            "missing": missing_by_field,
            "dlq": dict(sorted(dlq.items())),
            "limits": limits,
            "flagged": [name for name, limit in limits.items() if rates[name] > limit],
        }


def _events(batch: tuple[int, Counter, Counter, Counter]) -> int:
    return batch[0] + sum(batch[1].values())


def _rate(count: int, total: int) -> float:
    return round(count / total, 5) if total else 0.0
