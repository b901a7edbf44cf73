"""The registry of windowed aggregations: what a spec feature's `agg` can name.

Adding one is one new module in this package and one line below (docs/extending-aggregations.md).

>>> sorted(AGGREGATIONS)[:4]
['count', 'max', 'mean', 'min']
>>> AGGREGATIONS["time_since_last"].needs_field, AGGREGATIONS["time_since_last"].windowed
(False, False)
"""

from __future__ import annotations

from importlib import import_module

from driftloop.features.aggregations.base import Aggregation

__all__ = ["AGGREGATIONS", "Aggregation"]

# Every aggregation a spec can name, as "module:Class" (an entry point's syntax), in the spec's error order.
REGISTERED = (
    "driftloop.features.aggregations.builtin:Count",
    "driftloop.features.aggregations.builtin:Sum",
    "driftloop.features.aggregations.builtin:Mean",
    "driftloop.features.aggregations.builtin:Max",
    "driftloop.features.aggregations.builtin:Min",
    "driftloop.features.aggregations.builtin:TimeSinceLast",
    "driftloop.features.aggregations.builtin:RatioToMean",
    "driftloop.features.aggregations.std:Std",
)


def _load(registered: tuple[str, ...]) -> dict[str, type[Aggregation]]:
    by_name: dict[str, type[Aggregation]] = {}
    by_code: dict[str, object] = {}
    for path in registered:
        module, _, qualname = path.partition(":")
        cls = getattr(import_module(module), qualname)
        if not (isinstance(cls, type) and issubclass(cls, Aggregation)):
            raise TypeError(f"{path} is not an Aggregation")
        if cls.name in by_name:
            raise TypeError(f"{path}: the name {cls.name!r} is already {by_name[cls.name].__qualname__}'s")
        by_name[cls.name] = cls
        for stat in cls.statistics:  # the state layout id tells statistics apart by their code letter
            if by_code.setdefault(stat.code, stat) != stat:
                raise TypeError(f"{path}: statistic code {stat.code!r} is already {by_code[stat.code]!r}'s")
    return by_name


AGGREGATIONS: dict[str, type[Aggregation]] = _load(REGISTERED)
