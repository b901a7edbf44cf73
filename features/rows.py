"""An event stream's model-input rows computed offline, in order, as the worker computes them.

    featuriser = Featuriser(spec)
    event, row = featuriser.featurise(raw_bytes)   # row: None when the event is rejected

The worker (streams/worker/scoring.py) validates each event, updates its entity's windows and scores the
spec's model inputs: window features from the update, the other inputs from the event's own fields.
This does the same for one process's ordered stream (no partitions, no changelog, no replays), for
the load tools that need the worker's rows without a broker: the bench's warm-up training set, the
drift calibration's simulated batches, and tests' expected vectors.
"""

from __future__ import annotations

import math
from typing import Any

from driftloop.features.windows import FeatureComputer
from driftloop.spec import PipelineSpec
from driftloop.streams.worker.validation import Event, EventValidator, Rejection


class Featuriser:
    def __init__(self, spec: PipelineSpec, max_future_skew: float = math.inf):
        # No future-skew limit by default: a generated stream's event times need not be near now.
        self.validator = EventValidator(spec, max_future_skew=max_future_skew)
        self._computer = FeatureComputer(spec)
        self._features = set(self._computer.names)
        self._inputs = spec.model_inputs
        self._states: dict[Any, Any] = {}

    def featurise(self, raw: bytes) -> tuple[Event | Rejection, dict[str, Any] | None]:
        """(the validated event, its model-input row), or (the rejection, None) for an event the worker
        would dead-letter."""
        event = self.validator.validate(raw)
        if not isinstance(event, Event):
            return event, None
        self._states[event.entity], features = self._computer.update(self._states.get(event.entity),
                                                                    event.event_time, event.values)
        return event, {name: features[name] if name in self._features else event.values.get(name)
                       for name in self._inputs}
