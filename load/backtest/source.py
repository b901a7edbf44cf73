"""What the backtest replays: a table (CSV/Parquet, rows to events by the rules of `driftloop replay`) or one of
River's synthetic generators, checked up front so that bad input stops the run before anything is scored.

A table is refused, with one line naming the row and column, when: a label is missing or the label column has
more than two classes, a numeric field holds a cell that is not a number, event times are unsorted or an entity
has two events at the same time, or a required field of the spec has no column. (`driftloop replay` lets the
live validator dead-letter bad cells instead; a backtest's figures would silently cover fewer rows.)

Generators (`river:sea`, `river:agrawal`): `events` draws of River's SEA or Agrawal stream; with `drift_at`, the
concept switches to another variant at that event, abruptly (`width` 1) or gradually over about `width` events
(each draw comes from the new concept with probability 1 / (1 + exp(-4 (i - drift_at) / width)), River's
`ConceptDriftStream` rule). The drift point is then known, for the detection delay.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from driftloop.errors import DriftloopError
from driftloop.load.replay import ReplayRow, read_table, table_rows
from driftloop.spec import PipelineSpec, load_spec
from driftloop.streams.contracts import iso_time

SPECS = Path(__file__).resolve().parents[2] / "driftloop" / "specs"
# Tables without a time column start here, so event times (and the JSON report) do not depend on when it ran.
FIXED_START = datetime(2000, 1, 1, tzinfo=UTC)


def event_time(row: ReplayRow) -> float:
    """A checked row's event time: every row a Source holds has one (`_check` refuses a table otherwise)."""
    assert row.event_time is not None
    return row.event_time


@dataclass(frozen=True)
class Source:
    name: str
    rows: list[ReplayRow]
    drift_points: list[int]  # event indices where a known concept switch starts


def table_source(spec: PipelineSpec, path: str, limit: int | None = None) -> Source:
    frame = read_table(path, limit)
    origin = Path(path).name
    label = spec.outcomes.label
    if label in frame.columns:
        classes = sorted({str(v) for v in frame[label].dropna().tolist()})
        if len(classes) > 2:
            shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
            raise DriftloopError(
                f"{origin}: the label column {label!r} has {len(classes)} classes ({shown}); the backtest "
                f"scores binary 0/1 labels"
            )
    int_ids = spec.events.fields[spec.events.id_field].type == "int"
    rows = table_rows(spec, frame, origin=origin, run_id="0" if int_ids else "row", start=FIXED_START)
    _check_numbers(spec, rows, origin)
    _check_times(rows, origin, spec.events.time_field)
    return Source(origin, rows, [])


def _check_numbers(spec: PipelineSpec, rows: list[ReplayRow], origin: str) -> None:
    numeric = [name for name, f in spec.events.fields.items() if f.numeric]
    for index, row in enumerate(rows):
        for name in numeric:
            value = row.event.get(name)
            if value is not None and (isinstance(value, (str, bool)) or not math.isfinite(value)):
                raise DriftloopError(f"{origin}: row {index}, column {name!r}: {value!r} is not a number")


def _check_times(rows: list[ReplayRow], origin: str, column: str) -> None:
    last: dict[str | None, float] = {}
    previous = None
    for index, row in enumerate(rows):
        if row.event_time is None:
            raise DriftloopError(
                f"{origin}: row {index}, column {column!r}: {row.event[column]!r} is not a time (ISO-8601 or epoch s)"
            )
        if previous is not None and row.event_time < previous:
            raise DriftloopError(
                f"{origin}: row {index}, column {column!r}: {iso_time(row.event_time)} is before the previous "
                f"row's {iso_time(previous)}; sort the table by event time"
            )
        if last.get(row.key) == row.event_time:
            raise DriftloopError(
                f"{origin}: row {index}, column {column!r}: entity {row.key!r} has two events at "
                f"{iso_time(row.event_time)}; the backtest needs one event per entity and time"
            )
        last[row.key] = previous = row.event_time


# --- River's generators -----------------------------------------------------------------------------------

GENERATORS = ("sea", "agrawal")


def generator_spec(name: str) -> PipelineSpec:
    """The shipped spec of a generator (driftloop/specs/river_<name>.yaml)."""
    return load_spec(SPECS / f"river_{name}.yaml")


def generator_source(
    name: str, spec: PipelineSpec, *, events: int, drift_at: int | None, width: int, seed: int
) -> Source:
    if name not in GENERATORS:
        raise DriftloopError(
            f"unknown generator river:{name}; choose one of {', '.join('river:' + g for g in GENERATORS)}"
        )
    if drift_at is not None and not 0 < drift_at < events:
        raise DriftloopError(f"--drift-at {drift_at} must lie inside the stream's {events} events")
    if width < 1:
        raise DriftloopError(f"--drift-width must be at least 1, not {width}")
    step = spec.replay.time_step or 1.0
    start = FIXED_START.timestamp()
    ev = spec.events
    rows = []
    for index, (x, y) in enumerate(_draws(name, events, drift_at, width, seed)):
        event_time = start + index * step
        event = {ev.id_field: f"{name}-{index}", ev.entity: spec.replay.entity_value, ev.time_field: event_time}
        event.update(_fields(name, x))
        rows.append(ReplayRow(f"{name}-{index}", spec.replay.entity_value, event, int(y), event_time))
    return Source(f"river:{name}", rows, [] if drift_at is None else [drift_at])


def _draws(name: str, events: int, drift_at: int | None, width: int, seed: int) -> Iterator[tuple[dict, Any]]:
    from river.datasets import synth

    before: Iterable[tuple[dict, Any]]
    after: Iterable[tuple[dict, Any]]
    if name == "sea":
        before, after = synth.SEA(variant=0, seed=seed), synth.SEA(variant=3, seed=seed + 1)
    else:
        before = synth.Agrawal(classification_function=0, seed=seed)
        after = synth.Agrawal(classification_function=2, seed=seed + 1)
    first, second = iter(before), iter(after)
    choose = random.Random(seed)
    for index in range(events):
        if drift_at is None:
            yield next(first)
            continue
        # River's ConceptDriftStream rule, written out: its own overflows math.exp far from a narrow switch
        exponent = max(min(-4.0 * (index - drift_at) / width, 700.0), -700.0)
        drifted = choose.random() < 1.0 / (1.0 + math.exp(exponent)) if width > 1 else index >= drift_at
        yield next(second) if drifted else next(first)


def _fields(name: str, x: dict) -> dict[str, Any]:
    if name == "sea":
        return {f"x{k}": float(v) for k, v in x.items()}
    return {k: (str(v) if k in ("elevel", "car", "zipcode") else float(v)) for k, v in x.items()}
