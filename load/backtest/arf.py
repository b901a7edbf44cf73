"""A reference the issue measures the loop against: River's adaptive random forest alone, on the raw event fields,
learning each label right after its prediction (immediate labels), with no windows, drift monitors or retraining."""

from __future__ import annotations

import math
from typing import Any

from driftloop.load.backtest.source import Source
from driftloop.spec import PipelineSpec


def arf_standalone(spec: PipelineSpec, source: Source, seed: int = 0) -> dict[str, Any]:
    """Prequential accuracy and log loss of `river.forest.ARFClassifier(seed=seed)` over the source's rows."""
    from river import forest

    ev = spec.events
    names = [n for n, f in ev.fields.items() if n not in (ev.id_field, ev.entity, ev.time_field) and f.type != "string"]
    model = forest.ARFClassifier(seed=seed)
    correct, loss = 0, 0.0
    for row in source.rows:
        x = {n: _value(row.event.get(n)) for n in names if row.event.get(n) is not None}
        p = model.predict_proba_one(x).get(1, 0.0) if x else 0.0
        p = min(max(p, 1e-15), 1 - 1e-15)
        correct += (p >= spec.model.threshold) == row.label
        loss -= math.log(p if row.label else 1 - p)
        model.learn_one(x, row.label)
    return {"accuracy": correct / len(source.rows), "log_loss": loss / len(source.rows), "events": len(source.rows)}


def _value(value: Any) -> Any:
    return int(value) if isinstance(value, bool) else value
