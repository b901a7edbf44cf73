"""A model made slow (or failing) on purpose, to show a circuit breaker open, the fallback serve, and the breaker close.

`stalling_model(spec, rows, labels, switch, ...)` is an ordinary River model over the spec's inputs
(registered, signed and loaded like any other: it pickles as the `river` flavor), whose pipeline is wrapped in
`Stalling`: while the file `switch` exists, every event it scores costs `delay` seconds more (or
raises, with `fail`); once the file is gone it is the model it wraps. Whoever runs the experiment
decides when the model recovers by deleting the file. Unpickling the model imports this module, so a
worker process needs nothing else to load it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

from driftloop.models.flavors import train, with_model
from driftloop.models.river_flavor import RiverModel
from driftloop.spec import PipelineSpec


class Stalling:
    """A River pipeline that is slow, or raises, while a file exists."""

    def __init__(self, pipeline, switch: str, delay: float, fail: bool):
        self.pipeline = pipeline
        self.switch, self.delay, self.fail = switch, delay, fail

    def predict_proba_one(self, x: dict[str, Any]) -> dict:
        if os.path.exists(self.switch):
            if self.fail:
                raise RuntimeError("the model is failing on purpose (load/benchmarks/slow_model.py)")
            time.sleep(self.delay)
        return self.pipeline.predict_proba_one(x)

    def learn_one(self, x: dict[str, Any], y: bool) -> None:
        self.pipeline.learn_one(x, y)


def river_spec(spec: PipelineSpec) -> PipelineSpec:
    """The spec a stalling model is built (and registered) by: its own River model, or a River logistic
    regression over the same inputs."""
    return spec if spec.model.flavor == "river" else with_model(spec, "river", "logistic_regression")


def stalling_model(
    spec: PipelineSpec,
    rows: Sequence[Mapping[str, Any]],
    labels: Sequence[int],
    switch: Path,
    *,
    delay: float = 0.005,
    fail: bool = False,
) -> RiverModel:
    """A River model of `river_spec(spec)` trained on rows, slow by `delay` per event (or failing) while
    `switch` exists."""
    model = cast(RiverModel, train(river_spec(spec), rows, labels))  # river_spec's flavor is river
    stalling = cast(Any, Stalling(model.pipeline, str(switch), delay, fail))  # it quacks like a River pipeline
    return RiverModel(model.columns, stalling, model.estimator)
