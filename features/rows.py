"""An event's model-input row: `RowBuilder` (the one event -> row step), and `Featuriser` (a stream's rows
computed offline, in order, as the worker computes them).

    builder = RowBuilder(spec)
    row = builder.row(features, event.values)    # features: what FeatureComputer.update returned

    featuriser = Featuriser(spec)
    event, row = featuriser.featurise(raw_bytes)   # row: None when the event is rejected

A row holds the spec's model inputs in `spec.model_inputs` order: each window feature from the entity's
window update, each other input from the event's own (validated) fields, None when the event leaves an
optional field out. The worker (streams/worker/scoring.py) builds the row it scores, and writes to
Feast, with `RowBuilder`; `Featuriser` does the same for one process's ordered stream (no partitions, no
changelog, no replays), for the load tools that need the worker's rows without a broker: the bench's
warm-up training set, the drift calibration's simulated batches, and tests' expected vectors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from driftloop.features.windows import FeatureComputer
from driftloop.spec import PipelineSpec
from driftloop.streams.worker.validation import Event, EventValidator, Rejection


class RowBuilder:
    """`row(features, values)` -> the model-input row; `source` holds the Python source of `row`, for reading.

    `row` runs once per scored event, so it is compiled for the spec: one statement per input, no loop. In
    the usual layout (the default model inputs: every feature in spec order, then the event fields) the
    features dict, fresh from `FeatureComputer.update` and already in input order, is extended into the row
    rather than copied.

    >>> from driftloop.settings import DEMO_SPEC
    >>> from driftloop.spec import load_spec
    >>> builder = RowBuilder(load_spec(DEMO_SPEC).model_copy(update={"features": ()}))
    >>> print(builder.source)
    def row(features, values):
        get = values.get
        features['amount'] = get('amount')
        features['merchant_category'] = get('merchant_category')
        features['country'] = get('country')
        features['channel'] = get('channel')
        features['card_present'] = get('card_present')
        features['account_age_days'] = get('account_age_days')
        return features
    >>> builder.row({}, {"amount": 12.5, "channel": "web", "user_id": "u1"})["amount"]
    12.5
    """

    def __init__(self, spec: PipelineSpec):
        features = tuple(f.name for f in spec.features)
        inputs = spec.model_inputs
        if inputs[: len(features)] == features:
            body = [f"    features[{name!r}] = get({name!r})" for name in inputs[len(features) :]]
            body.append("    return features")
        else:
            items = (
                f"{name!r}: features[{name!r}]" if name in features else f"{name!r}: get({name!r})" for name in inputs
            )
            body = [f"    return {{{', '.join(items)}}}"]
        self.source = "\n".join(["def row(features, values):", "    get = values.get", *body])
        namespace: dict[str, Any] = {}
        code = compile(self.source, f"<driftloop.features.rows row for spec {spec.name!r}>", "exec")
        exec(code, namespace)  # noqa: S102 - its only words from outside are the spec's names, as string literals
        self.row: Callable[[dict[str, Any], Mapping[str, Any]], dict[str, Any]] = namespace["row"]


class Featuriser:
    def __init__(self, spec: PipelineSpec, max_future_skew: float = math.inf):
        # No future-skew limit by default: a generated stream's event times need not be near now.
        self.validator = EventValidator(spec, max_future_skew=max_future_skew)
        self._computer = FeatureComputer(spec)
        self._row = RowBuilder(spec).row
        self._states: dict[Any, Any] = {}

    def featurise(self, raw: bytes) -> tuple[Event | Rejection, dict[str, Any] | None]:
        """(the validated event, its model-input row), or (the rejection, None) for an event the worker
        would dead-letter."""
        event = self.validator.validate(raw)
        if not isinstance(event, Event):
            return event, None
        self._states[event.entity], features = self._computer.update(
            self._states.get(event.entity), event.event_time, event.values
        )
        return event, self._row(features, event.values)
