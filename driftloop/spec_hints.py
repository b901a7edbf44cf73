"""How to fix a spec error: the sentence the CLI (`driftloop check-spec`, `up`, ...) prints after what is wrong.

Each rule matches the error's path and problem (and, for a refused value, the value); the first that
matches gives the fix. An error no rule knows is shown without one.

    >>> how_to_fix("events.id_field", "required key is missing", None)[:62]
    'name the field that identifies each event (id_field: event_id)'
    >>> how_to_fix("features[0].window.size", "window is longer than feature_ttl; Feast would expire it first", None)
    'raise feature_ttl above the longest window (e.g. feature_ttl: 8d for a 7d window), or shorten the window'
"""

from __future__ import annotations

import re
from typing import Any

_KEY_FIELDS = {
    "id_field": ("identifies each event", "event_id", "{type: string, max_length: 64}"),
    "entity": (
        "keys the windows (a user, a card, a market; one value for all events will do)",
        "entity",
        "{type: string, max_length: 64}",
    ),
    "time_field": ("holds each event's time", "event_time", "{type: timestamp}"),
}
_GENERATED = (
    "`driftloop replay` generates it when the table has no such column (see the spec's `replay` "
    "section); `driftloop init-spec TABLE` writes all three"
)


def _key_field(where: str, problem: str, value: Any) -> str | None:
    match = re.fullmatch(r"events\.(id_field|entity|time_field)", where)
    if match is None:
        return None
    what, name, declaration = _KEY_FIELDS[match.group(1)]
    if problem == "required key is missing":
        return (
            f"name the field that {what} ({match.group(1)}: {name}) and declare it under events.fields "
            f"({name}: {declaration}); {_GENERATED}"
        )
    if "is not one of events.fields" in problem:
        return f"declare it under events.fields, e.g. {declaration}; {_GENERATED}"
    if "must have type" in problem:
        return f"change that field's type: {declaration}"
    return None


_RULES: list[tuple[str, str, str]] = [  # (path pattern, problem pattern, fix)
    (
        r".*\.window\.size",
        r"longer than feature_ttl",
        "raise feature_ttl above the longest window (e.g. feature_ttl: 8d for a 7d window), or shorten the window",
    ),
    (r"model\.estimator", r"estimators are", "set model.estimator to one of them"),
    (
        r"events\.fields\.\w+\.values",
        r"needs its known values",
        "list them (values: [a, b, c]); a value not listed counts as unseen",
    ),
    (r"events\.fields\.\w+", r"min/max apply only", "drop min and max, or make the field an int or a float"),
    (r"events\.fields\.\w+", r"min is larger than max", "swap them"),
    (r"events\.fields\.\w+\.values", r"apply only to category", "drop values, or make the field a category"),
    (
        r"outcomes\.label",
        r"must not be an event field",
        "remove it from events.fields: the label arrives later, on the outcomes topic",
    ),
    (
        r"model\.inputs",
        r"has no inputs",
        "declare an int, float, bool or category field, or a windowed feature (model.inputs lists them)",
    ),
    (r"features\[\d+\]\.field", r"needs a numeric event field", "add field: <an int or float event field>"),
    (r"features\[\d+\]\.field", r"is not a numeric field", "point field at an int or float event field"),
    (r"features\[\d+\]\.window", r"needs a window", "add a window, e.g. window: {size: 1h}"),
    (r"features\[\d+\]\.window", r"takes no window", "remove the window"),
    (
        r"features\[\d+\]\.window\.step",
        r"hopping window needs a step",
        "add a step smaller than the size, e.g. window: {size: 24h, kind: hopping, step: 1h}",
    ),
    (r"features\[\d+\]\.window\.step", r"takes no step", "remove step, or make the window kind: hopping"),
    (r"features\[\d+\]\.name", r"already used", "give the feature a name of its own"),
    (r"model\.inputs\[\d+\]", r"listed twice", "list it once"),
    (
        r"model\.inputs\[\d+\]",
        r"neither a feature nor an event field",
        "name a feature or an event field, or drop the entry (without model.inputs, every feature and number, bool "
        "and category field is an input)",
    ),
    (
        r"model\.inputs\[\d+\]",
        r"models take numbers and categories",
        "drop it from model.inputs, or declare it as a category with its values",
    ),
    (r"canary\.max_samples", r"at least canary\.min_samples", "raise canary.max_samples or lower canary.min_samples"),
    (r"retrain\.min_rows", r"at most retrain\.window_events", "lower retrain.min_rows or raise retrain.window_events"),
    (r".*", r"not a positive duration", "write a whole number and a unit: 500ms, 30s, 10m, 1h or 7d"),
    (
        r".*",
        r"(neither a count of events|has no unit)",
        "write a count of events (2000 events) or a duration of event time, a whole number and a unit: 30m, 6h, 3d "
        "(docs/spec.md, Spans)",
    ),
    (r".*", r"^unknown key$", "remove it, or correct its spelling (docs/spec.md lists every key)"),
    (r".*", r"^required key is missing$", "add it (docs/spec.md says what it means)"),
]


def how_to_fix(where: str, problem: str, value: Any) -> str:
    """What to do about an error at `where` (a dotted spec path); '' when no rule knows it."""
    fix = _key_field(where, problem, value)
    if fix is None:
        fix = next(
            (text for path, pattern, text in _RULES if re.fullmatch(path, where) and re.search(pattern, problem)), None
        )
    return fix or ""
