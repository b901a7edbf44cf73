"""Shared test helpers: windows."""

from __future__ import annotations

from driftloop.features.aggregations import AGGREGATIONS
from driftloop.spec import parse_spec

AGGS = ("count", "sum", "mean", "max", "min", "ratio_to_mean")


def window_spec(features: list[dict], ttl: str = "1d"):
    return parse_spec(
        {
            "name": "t",
            "events": {
                "id_field": "id",
                "entity": "user",
                "time_field": "ts",
                "fields": {
                    "id": {"type": "string"},
                    "user": {"type": "string"},
                    "ts": {"type": "timestamp"},
                    "x": {"type": "float", "required": False},
                },
            },
            "outcomes": {"label": "label"},
            "features": features,
            "feature_ttl": ttl,
            "model": {"name": "m", "flavor": "river", "estimator": "logistic_regression"},
        }
    )


def feature(agg: str, label: str | None = None) -> dict:
    """A feature of the registered aggregation `agg` over the field x, in the window WINDOWS[label] if it takes one."""
    aggregation = AGGREGATIONS[agg]
    return {
        "name": f"{agg}_{label}" if aggregation.windowed else agg,
        "agg": agg,
        **({"field": "x"} if aggregation.needs_field else {}),
        **({"window": WINDOWS[label]} if aggregation.windowed else {}),
    }


WINDOWS = {
    "sl10": {"size": "10s"},
    "sl60": {"size": "60s"},
    "tu20": {"size": "20s", "kind": "tumbling"},
    "ho60": {"size": "60s", "kind": "hopping", "step": "15s"},
    "ho25": {"size": "25s", "kind": "hopping", "step": "10s"},
}
