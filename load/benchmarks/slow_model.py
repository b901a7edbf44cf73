"""A model made slow (or failing) on purpose, to show a circuit breaker open, the fallback serve, and the breaker close.

`stalling_model(spec, rows, labels, slow_from, slow_until, ...)` is an ordinary River model of the
spec (registered, signed and loaded like any other: it pickles as the `river` flavor), whose pipeline
is wrapped in `Stalling`: between the wall-clock times `slow_from` and `slow_until` every event it
scores costs `delay` seconds more (or raises, with `fail`); outside that window it is the model it
wraps. Unpickling the model imports this module, so a worker process needs nothing else to load it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from driftloop.models.flavors import train
from driftloop.models.river_flavor import RiverModel
from driftloop.spec import PipelineSpec


class Stalling:
    """A River pipeline that is slow, or raises, during a window of wall-clock time."""

    def __init__(self, pipeline, slow_from: float, slow_until: float, delay: float, fail: bool):
        self.pipeline = pipeline
        self.slow_from, self.slow_until = slow_from, slow_until
        self.delay, self.fail = delay, fail

    def predict_proba_one(self, x: dict[str, Any]) -> dict:
        if self.slow_from <= time.time() < self.slow_until:
            if self.fail:
                raise RuntimeError("the model is failing on purpose (load/benchmarks/slow_model.py)")
            time.sleep(self.delay)
        return self.pipeline.predict_proba_one(x)

    def learn_one(self, x: dict[str, Any], y: bool) -> None:
        self.pipeline.learn_one(x, y)


def stalling_model(
    spec: PipelineSpec,
    rows: Sequence[Mapping[str, Any]],
    labels: Sequence[int],
    *,
    slow_from: float,
    slow_until: float,
    delay: float = 0.002,
    fail: bool = False,
) -> RiverModel:
    """The spec's River model trained on rows, slow by `delay` per event (or failing) in [slow_from, slow_until)."""
    model = train(spec, rows, labels)
    if not isinstance(model, RiverModel):
        raise ValueError(f"a stalling model wraps a River model; the spec's flavor is {spec.model.flavor}")
    return RiverModel(model.columns, Stalling(model.pipeline, slow_from, slow_until, delay, fail), model.estimator)
