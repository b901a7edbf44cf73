"""The spec's windowed features by brute force: each recomputed from the entity's events kept so far, by
the windows' definitions in time and each aggregation's plain `define`. It is what `FeatureComputer`
(driftloop.features.windows) is checked against, with the same calling convention:

    reference = ReferenceComputer(spec, allowed_lateness=30)
    state, features = reference.update(state, event_time, event_values)   # state: None for a new entity

It agrees with the FeatureComputer (up to float rounding) on streams whose events are at most
`allowed_lateness` seconds older than their entity's latest event and whose windows stay below its
`max_entries` cap; past those the computer approximates by design (see its module doc). It costs
O(events kept) per event: for tests and for checking a new aggregation, not for a stream.

>>> from driftloop.spec import parse_spec
>>> spec = parse_spec({
...     "name": "doc", "outcomes": {"label": "y"},
...     "events": {"id_field": "id", "entity": "user", "time_field": "ts", "fields": {
...         "id": {"type": "string"}, "user": {"type": "string"}, "ts": {"type": "timestamp"}, "x": {"type": "float"}}},
...     "features": [{"name": "x_max_10s", "agg": "max", "field": "x", "window": {"size": "10s"}}],
...     "model": {"name": "m", "flavor": "river", "estimator": "logistic_regression"}})
>>> reference = ReferenceComputer(spec)
>>> state, features = reference.update(None, 0.0, {"x": 3.0})
>>> state, features = reference.update(state, 5.0, {"x": 1.0})
>>> features
{'x_max_10s': 3.0}
>>> state, features = reference.update(state, 10.0, {"x": 2.0})   # (0, 10]: the event at 0 has left
>>> features
{'x_max_10s': 2.0}
"""

from __future__ import annotations

import math
from typing import Any

from driftloop.features.aggregations import AGGREGATIONS
from driftloop.features.aggregations.base import clamp
from driftloop.spec import PipelineSpec, WindowSpec

__all__ = ["ReferenceComputer", "in_window"]


def in_window(window: WindowSpec, t: float, te: float) -> bool:
    """Whether an event at time te is in the window of an event at time t (the windows of the
    FeatureComputer's module doc, written in time rather than buckets)."""
    if window.kind == "sliding":
        return t - window.size < te <= t
    step = window.size if window.kind == "tumbling" or window.step is None else window.step
    end = (math.floor(t / step) + 1) * step
    return end - window.size <= te < end


class ReferenceComputer:
    def __init__(self, spec: PipelineSpec, *, allowed_lateness: float = 0.0):
        self.spec = spec
        self.allowed_lateness = float(allowed_lateness)
        windows = [f.window for f in spec.features if AGGREGATIONS[f.agg].windowed and f.window is not None]
        # time_since_last of a late event looks among the sliding entries the computer retains
        self._sliding_horizon = max((w.size for w in windows if w.kind == "sliding"), default=None)
        # no window of an event at or after latest - allowed_lateness reaches further back than this
        self._reach = max((w.size for w in windows), default=0.0)

    def update(self, state: dict | None, event_time: float, values: dict[str, Any]) -> tuple[dict, dict[str, float]]:
        """Add one event of an entity; return (new state, this event's features in spec order)."""
        state = state if state is not None else {"events": [], "latest": None}
        t = float(event_time)
        event = {f.field: _number(values.get(f.field)) for f in self.spec.features if f.field is not None}
        seen, latest = state["events"], state["latest"]
        since = self._since(seen, t, latest)
        features = {}
        for f in self.spec.features:
            aggregation = AGGREGATIONS[f.agg]
            inputs = {
                "since": since,
                "value": None if f.field is None else event.get(f.field),
                "window": [ve.get(f.field) for te, ve in seen if f.window and in_window(f.window, t, te)],
            }
            features[f.name] = clamp(
                float(aggregation.define(**{name: inputs[name] for name in aggregation.define_inputs}))
            )
        seen.append((t, event))
        state["latest"] = latest = t if latest is None else max(latest, t)
        seen[:] = [(te, ve) for te, ve in seen if te > latest - self.allowed_lateness - self._reach]
        return state, features

    def _since(self, seen: list, t: float, latest: float | None) -> float:
        """Seconds since the entity's previous event: for a late event, the latest earlier one among the
        sliding entries the computer retains (feature_ttl if none, or if no feature has a sliding window)."""
        ttl = self.spec.feature_ttl
        if latest is None:
            return ttl
        if t >= latest:
            return min(t - latest, ttl)
        if self._sliding_horizon is None:
            return ttl
        oldest = latest - self.allowed_lateness - self._sliding_horizon
        earlier = [te for te, _ in seen if oldest < te <= t]
        return min(t - max(earlier), ttl) if earlier else ttl


def _number(value: Any) -> float | None:
    """A field value as the computer reads it: a finite float, or None."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None
