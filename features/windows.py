"""Per-entity windowed aggregates declared in the pipeline spec, computed incrementally.

    computer = FeatureComputer(spec)
    state, features = computer.update(state, event_time, event_values)   # state: None for a new entity

`update` takes the entity's state (None for an entity never seen), the event's time in epoch seconds
and its field values, and returns the new state and this event's features: a dict with one finite
float per `spec.features` entry, in spec order. The state is a small JSON value (dicts, lists, str,
int, float, None) meant for a changelog-backed Faust table keyed by entity: `json.loads(json.dumps(s))`
behaves exactly like `s`, so a restarted worker resumes with the same features. `update` mutates the
state it is given and returns it (copy it first if you need the old one). Entities are isolated by
construction: the computer holds no per-entity data, only the per-spec plan built in `__init__`.

Windows (WindowSpec.size/step in seconds; `t` is the event's time)
    sliding    exact: the events with time in (t - size, t].
    tumbling   the aligned bucket [floor(t/size)*size, +size) that contains t.
    hopping    the window of length `size` that ends where t's step-aligned bucket ends:
               [end - size, end) with end = (floor(t/step) + 1) * step, i.e. the size/step step-buckets
               up to and including t's. When size is not a multiple of step the window is still exact:
               buckets are gcd(size, step) wide (at millisecond resolution). If that would need more
               than `max_entries` buckets, step-wide buckets are used and the window is the
               ceil(size/step) step-buckets up to t's (up to one step longer than `size`).

Aggregates
    A feature's `agg` names a registered aggregation (driftloop.features.aggregations lists them, and
    each class's docstring says what it computes; docs/extending-aggregations.md adds one). The event
    itself is in its windows; an aggregation's `finish` gets the statistics of the window's other
    events (those already seen) and the event's own value, so it can also leave the event out
    (ratio_to_mean's mean does).
A field value that is None, missing, not a number, NaN or infinite counts as None. A result that is not
finite (a sum that overflows a float) is clamped to +-1.797e308 (NaN to 0.0), so every output is finite.

Out-of-order events (time < the entity's latest event time)
    The event is added to the sliding entries / buckets it belongs to and its features are computed as
    of its own time: sliding windows see exactly the events already seen with time in (t - size, t]
    (not later ones); tumbling and hopping windows see their buckets' aggregates, which include every
    event already seen in those buckets, also ones later than t. time_since_last is measured to the
    latest earlier event among the retained sliding entries (feature_ttl if there is none, or if the
    spec has no sliding window).
    This is exact for events at most `allowed_lateness` seconds (default 0) older than the entity's
    latest event. State keeps only what windows of later events can need: sliding entries newer than
    latest - allowed_lateness - (largest sliding size), and buckets of the windows of times
    >= latest - allowed_lateness. An event later than that sees only the retained part of its windows
    (plus itself), and an event older than every retained window is not stored at all: it affects no
    aggregate but its own features.

State size
    Sliding windows keep one entry per distinct event time (count, and per field the statistics its
    features' aggregations read: sum, non-None count, max, min, ...) within the horizon above, shared by
    all sliding features; hopping and tumbling windows keep one aggregate per bucket. Each entry list is
    capped at `max_entries` (default 10,000). Past the cap the entries are merged onto a grid of
    max_entries/2 steps over the retained range (for the demo's 1 h sliding horizon: 0.72 s), each
    merged entry taking the latest time (bucket) of what it merged: totals are kept, and a window can
    over-count, never under-count, by at most the events of the one grid step straddling its trailing
    edge. Below the cap everything is exact. The JSON of a state is a few hundred bytes for a typical
    entity and bounded by max_entries entries per window group for the busiest.

Persisting
    Write the returned state back to the table (`table[entity] = state`) after every update: Faust
    sends a changelog record on assignment, not on in-place mutation. State whose window layout does
    not match the spec (its windows changed between deployments) is discarded and starts afresh.

Cost
    `__init__` plans the spec (features sharing a window geometry share its entries and running
    aggregates, and features reading the same statistic of a field share it) and compiles an `update`
    specialised to that plan: straight-line code, no per-feature dispatch, each aggregation's `finish`
    inlined when it is one expression. Aggregates over each window are maintained incrementally as of
    the entity's latest event (the window is advanced and the leaving entries subtracted), so an
    in-order event costs O(1) amortised whatever the window holds. Running float sums are re-summed from
    the entries (in time order, as a fresh sum would add them) when the window holds at most 16 entries,
    after as many removals as it holds entries, and when a removal cancels the sum to rounding noise (so
    a window left with only zeros sums to exactly 0.0); this bounds rounding drift. max/min are
    recomputed from the entries only when the entry holding them leaves the window (see Statistic in
    aggregations/base.py). Out-of-order events take a generic path that reads their windows from the
    entries (O(entries in the window)). `python -m driftloop.features.windows` measures update
    throughput on the demo spec.
"""

from __future__ import annotations

import hashlib
import math
import operator
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from typing import Any

from driftloop.features.aggregations import AGGREGATIONS
from driftloop.features.aggregations.base import Statistic, clamp, inline
from driftloop.spec import PipelineSpec

__all__ = ["DEFAULT_MAX_ENTRIES", "FeatureComputer"]

DEFAULT_MAX_ENTRIES = 10_000
STATE_VERSION = 1

_RESUM_BELOW = 16  # windows holding at most this many entries are re-summed from them, not subtracted


class _Group:
    """One list of entries (cells) shared by windows of the same geometry.

    Sliding: one group for every sliding feature; the cell key is the event time. Bucketed (tumbling and
    hopping): one group per (size, step); the cell key is the integer bucket index floor(t / width).
    Cell lists in the state: [keys, counts, <one list per (field, statistic)>].
    """

    __slots__ = ("grain", "horizon", "ratio", "reads", "sliding", "span", "stats", "step", "width")

    def __init__(self, sliding: bool, width: float = 0.0, step: float = 0.0, ratio: int = 1, span: int = 0):
        self.sliding = sliding
        self.width = width  # bucket width (bucketed)
        self.step = step  # step: the window ends where t's step-bucket ends (bucketed)
        self.ratio = ratio  # buckets per step
        self.span = span  # buckets per window (bucketed)
        self.stats: list[tuple[int, Statistic]] = []  # (field index, statistic) per cell list after keys, counts
        self.reads: list[int] = []
        self.horizon = 0.0  # sliding: seconds of entries kept behind the latest event
        self.grain: float = 1  # beyond max_entries, cells merge onto a grid this wide (seconds or buckets)

    def own_key(self, t: float):
        return t if self.sliding else math.floor(t / self.width)

    def end_key(self, t: float):
        """The largest cell key in the window of an event at t."""
        if self.sliding:
            return t
        return (math.floor(t / self.step) + 1) * self.ratio - 1

    def cutoff(self, latest: float, lateness: float):
        """Cells with key <= this are in no window of an event at or after latest - lateness."""
        if self.sliding:
            return latest - lateness - self.horizon
        return self.end_key(latest - lateness) - self.span


class _Read:
    """One window over a group: the cells with key in (end_key(t) - span, end_key(t)].

    Its running aggregate (as of the entity's latest event) in the state is a flat list:
    [lo, removals, count, <per statistic: its slots> ...] (max/min take two: value, key of its cell);
    lo is the index of the first cell in the window.
    """

    __slots__ = ("group", "span", "stats")

    def __init__(self, group: int, span: float):
        self.group = group
        self.span = span
        # (statistic, cell list index, first slot in the running list, field index)
        self.stats: list[tuple[Statistic, int, int, int]] = []


def _plan_bucketed(size: float, step: float, max_entries: int) -> tuple[float, float, int, int]:
    """(bucket width, step, buckets per step, buckets per window) of a tumbling/hopping window."""
    size_ms, step_ms = round(size * 1000), round(step * 1000)
    if size_ms > 0 and step_ms > 0 and abs(size_ms - size * 1000) < 1e-6 and abs(step_ms - step * 1000) < 1e-6:
        g = math.gcd(size_ms, step_ms)
        if size_ms // g <= max_entries:
            return g / 1000, step, step_ms // g, size_ms // g
    return step, step, 1, max(1, math.ceil(size / step - 1e-9))


class FeatureComputer:
    """Computes the spec's windowed features per entity, one event at a time (see the module doc).

    allowed_lateness  seconds an event may be older than its entity's latest event and still get
                      exact windows (state keeps that much more history); default 0.
    max_entries       cap on each entry list of an entity's state; default 10,000.
    `update_source` holds the Python source compiled for this spec (`update`, and `features` for late
    events), for reading.
    """

    def __init__(self, spec: PipelineSpec, *, allowed_lateness: float = 0.0, max_entries: int = DEFAULT_MAX_ENTRIES):
        if allowed_lateness < 0 or not math.isfinite(allowed_lateness):
            raise ValueError("allowed_lateness must be a finite number of seconds >= 0")
        if max_entries < 4:
            raise ValueError("max_entries must be at least 4")
        self.spec = spec
        self.names: tuple[str, ...] = tuple(f.name for f in spec.features)
        self.allowed_lateness = float(allowed_lateness)
        self.max_entries = int(max_entries)
        self._ttl = float(spec.feature_ttl)
        self._fields: list[str] = []
        self._groups: list[_Group] = []
        self._reads: list[_Read] = []
        self._sliding = -1  # index of the sliding group, if any
        group_of: dict[tuple, int] = {}
        read_of: dict[tuple, int] = {}
        wanted: dict[int, dict[tuple[int, Statistic], None]] = {}  # read -> (field, statistic), first-use order
        features = []
        for f in spec.features:
            aggregation = AGGREGATIONS[f.agg]
            vi = self._field_index(f.field) if f.field is not None else -1
            if not aggregation.windowed:
                features.append((aggregation, -1, vi))
                continue
            w = f.window
            assert w is not None  # the spec validator requires a window of every windowed aggregation
            if w.kind == "sliding":
                gkey: tuple = ("sliding",)
                if gkey not in group_of:
                    group_of[gkey] = len(self._groups)
                    self._groups.append(_Group(True))
                    self._sliding = group_of[gkey]
                span = float(w.size)
            else:
                step = float(w.size if w.kind == "tumbling" or w.step is None else w.step)
                gkey = ("bucketed", float(w.size), step)
                if gkey not in group_of:
                    width, step, ratio, nspan = _plan_bucketed(float(w.size), step, self.max_entries)
                    group_of[gkey] = len(self._groups)
                    self._groups.append(_Group(False, width, step, ratio, nspan))
                span = self._groups[group_of[gkey]].span
            gi = group_of[gkey]
            rkey = (gi, span)
            if rkey not in read_of:
                read_of[rkey] = len(self._reads)
                self._reads.append(_Read(gi, span))
                self._groups[gi].reads.append(read_of[rkey])
                wanted[read_of[rkey]] = {}
            ri = read_of[rkey]
            for stat in aggregation.statistics:
                wanted[ri][(vi, stat)] = None
            features.append((aggregation, ri, vi))

        # cell lists per group: the union of what its reads need
        for g in self._groups:
            cell_stats: dict[tuple[int, Statistic], None] = {}
            for ri in g.reads:
                cell_stats.update(wanted[ri])
            g.stats = list(cell_stats)
            # the grid for merging beyond max_entries: half of max_entries cells over the retained range
            if g.sliding:
                g.horizon = max(self._reads[ri].span for ri in g.reads)
                g.grain = (g.horizon + self.allowed_lateness) / (self.max_entries // 2)
            else:
                retained = g.span + g.ratio * (math.ceil(self.allowed_lateness / g.step) + 1)
                g.grain = max(1, math.ceil(retained / (self.max_entries // 2)))
            cell_index = {fs: 2 + i for i, fs in enumerate(g.stats)}
            for ri in g.reads:
                r = self._reads[ri]
                slot = 3
                for vi, stat in wanted[ri]:
                    r.stats.append((stat, cell_index[(vi, stat)], slot, vi))
                    slot += stat.slots

        # per feature: (aggregation, source of each input its finish reads, in the compiled functions)
        plans = []
        for aggregation, ri, vi in features:
            inputs = {"value": f"v{vi}", "count": f"run{ri}[2]", "since": "since"}
            if ri >= 0:
                inputs.update(
                    {stat.name: f"run{ri}[{slot}]" for stat, _, slot, fvi in self._reads[ri].stats if fvi == vi}
                )
            plans.append((aggregation, {name: inputs[name] for name in aggregation.finish_inputs}))
        self._plans = tuple(plans)
        self._layout = self._layout_id()
        self._update, self.update_source = self._compile()
        # the compiled update, without the method's indirection
        self.update = self._update  # type: ignore[method-assign]

    def _field_index(self, name: str) -> int:
        if name not in self._fields:
            self._fields.append(name)
        return self._fields.index(name)

    def _layout_id(self) -> str:
        """A short id of the state layout; state of another layout (the spec's windows changed) starts afresh."""
        parts = [f"v{STATE_VERSION}", ",".join(self._fields)]
        for g in self._groups:
            geometry = "sliding" if g.sliding else f"b{g.width!r}/{g.step!r}x{g.ratio}/{g.span}"
            parts.append(
                geometry
                + ":"
                + ",".join(f"{vi}{stat.code}" for vi, stat in g.stats)
                + ":"
                + ",".join(
                    f"{self._reads[ri].span!r}/"
                    + "".join(f"{vi}{stat.code}" for stat, _, _, vi in self._reads[ri].stats)
                    for ri in g.reads
                )
            )
        return f"v{STATE_VERSION}-" + hashlib.blake2b("|".join(parts).encode(), digest_size=6).hexdigest()

    def new_state(self) -> dict:
        """The state of an entity with no events."""
        runs = []
        for r in self._reads:
            run: list = [0, 0, 0]
            for stat, _, _, _ in r.stats:
                run += stat.empty()
            runs.append(run)
        return {
            "layout": self._layout,
            "latest": None,
            "cells": [[[] for _ in range(2 + len(g.stats))] for g in self._groups],
            "runs": runs,
        }

    # -- the hot path -------------------------------------------------------------------------------

    def update(self, state: dict | None, event_time: float, values: dict[str, Any]) -> tuple[dict, dict[str, float]]:
        """Add one event of an entity; return (new state, this event's features in spec order).

        `state` is the entity's state from the previous call (None for a new entity); it is updated in
        place and returned. (The instance attribute `update` is this spec's compiled version of it.)
        """
        return self._update(state, event_time, values)

    def _compile(self) -> tuple[Callable[..., tuple[dict, dict[str, float]]], str]:
        """Python source of `update` specialised to this spec's plan, compiled once.

        The per-event work of an in-order event is straight-line code over the plan's constants (no
        loops over features, windows or statistics); out-of-order events go to `_update_late`. It does
        exactly what the generic helpers below describe, which the late path and the tests exercise.
        The features are finished by the aggregations' `finish`, inlined; `features` (the late path's)
        finishes them the same way from aggregates read off the entries.
        """
        ns: dict[str, Any] = {
            "floor": math.floor,
            "bisect_right": bisect_right,
            "_num": _num,
            "_clamp": clamp,
            "_bad_time": _bad_time,
            "_new_state": self.new_state,
            "_late": self._update_late,
            "_advance": self._advance,
            "_drop": self._drop,
            "_shrink": self._shrink,
            "LAYOUT": self._layout,
            "NAMES": self.names,
        }
        empty = self.new_state()["runs"]
        for ri, r in enumerate(self._reads):
            ns[f"R{ri}"] = r
            ns[f"E{ri}"] = tuple(empty[ri])
        code: list[str] = []

        def emit(indent: int, line: str) -> None:
            code.append("    " * indent + line)

        def emit_all(indent: int, lines: list[str]) -> None:
            for line in lines:
                emit(indent, line)

        emit(0, "def update(state, event_time, values):")
        emit(1, "t = float(event_time)")
        emit(1, "if t - t != 0.0:")
        emit(2, "_bad_time(event_time)")
        emit(1, 'if state is None or state.get("layout") != LAYOUT:')
        emit(2, "state = _new_state()")
        for vi, name in enumerate(self._fields):
            emit(1, f"v{vi} = values.get({name!r})")
            emit(1, f"if v{vi} is not None:")
            emit(2, f"if v{vi}.__class__ is not float:")
            emit(3, f"v{vi} = _num(v{vi})")
            emit(2, f"elif v{vi} - v{vi} != 0.0:")
            emit(3, f"v{vi} = None")
        vals = "[" + "".join(f"v{vi}, " for vi in range(len(self._fields))) + "]"
        emit(1, 'latest = state["latest"]')
        emit(1, "if latest is not None and t < latest:")
        emit(2, f"return state, dict(zip(NAMES, _late(state, t, {vals}, latest)))")
        emit(1, 'cells = state["cells"]')
        emit(1, 'runs = state["runs"]')

        # move each running window to this event's window: its aggregate is then the events so far
        for gi, g in enumerate(self._groups):
            emit(1, f"tl{gi} = cells[{gi}]")
            emit(1, f"k{gi} = tl{gi}[0]")
            for ri in g.reads:
                emit(1, f"run{ri} = runs[{ri}]")
            if not g.reads:
                continue
            emit(1, f"if k{gi}:")
            emit(2, f"n = len(k{gi})")
            emit(2, "end = t" if g.sliding else f"end = {_end_key_source(g, 't')}")
            for ri in g.reads:
                emit(2, f"cut = end - {self._reads[ri].span!r}")
                emit(2, f"lo = run{ri}[0]")
                emit(2, f"if lo < n and k{gi}[lo] <= cut:")
                emit(3, f"if k{gi}[-1] <= cut:  # every entry has left the window")
                emit(4, f"run{ri}[:] = E{ri}")
                emit(4, f"run{ri}[0] = n")
                emit(3, "else:")
                emit(4, f"_advance(R{ri}, tl{gi}, run{ri}, bisect_right(k{gi}, cut, lo))")

        # this event's features
        if any("since" in inputs for _, inputs in self._plans):
            emit(1, "if latest is None:")
            emit(2, f"since = {self._ttl!r}")
            emit(1, "else:")
            emit(2, "since = t - latest")
            emit(2, f"if since > {self._ttl!r}:")
            emit(3, f"since = {self._ttl!r}")
        features = self._finish_source(ns)
        emit_all(1, features)

        # store the event: into its cell (the last one, or a new one) and into every running window
        for gi, g in enumerate(self._groups):
            k, tl = f"k{gi}", f"tl{gi}"
            emit(1, "key = t" if g.sliding else f"key = floor(t / {g.width!r})")
            by_field: dict[int, list[tuple[int, Statistic]]] = {}
            for li, (vi, stat) in enumerate(g.stats, 2):
                by_field.setdefault(vi, []).append((li, stat))
            emit(1, f"if {k} and {k}[-1] == key:")
            emit(2, f"{tl}[1][-1] += 1")
            for vi, ops in by_field.items():
                emit(2, f"if v{vi} is not None:")
                for li, stat in ops:
                    emit_all(3, stat.add_to_cell_source(f"{tl}[{li}][-1]", f"v{vi}"))
            emit(1, "else:")
            emit(2, f"{k}.append(key)")
            emit(2, f"{tl}[1].append(1)")
            for li, (vi, stat) in enumerate(g.stats, 2):
                emit(2, f"{tl}[{li}].append({stat.cell_source(f'v{vi}')})")
            if not g.sliding:  # a new bucket: buckets may have left every window a later event can have
                oldest = f"(t - {self.allowed_lateness!r})" if self.allowed_lateness else "t"
                emit(2, f"cut = {_end_key_source(g, oldest)} - {g.span}")
                emit(2, f"if {k}[0] <= cut:")
                emit(3, f"_drop({gi}, {tl}, runs, bisect_right({k}, cut))")
            for ri in g.reads:
                r = self._reads[ri]
                emit(1, f"run{ri}[2] += 1")
                ops_by_field: dict[int, list[tuple[int, Statistic]]] = {}
                for stat, _, slot, vi in r.stats:
                    ops_by_field.setdefault(vi, []).append((slot, stat))
                for vi, ops in ops_by_field.items():
                    emit(1, f"if v{vi} is not None:")
                    for slot, stat in ops:
                        emit_all(2, stat.include_source(f"run{ri}", slot, f"v{vi}"))
            if g.sliding:  # entries that have left every window a later event can have
                keep = g.horizon + self.allowed_lateness
                emit(1, f"if {k}[0] <= t - {keep!r}:")
                emit(2, f"_drop({gi}, {tl}, runs, bisect_right({k}, t - {keep!r}))")
            emit(1, f"if len({k}) > {self.max_entries}:")
            emit(2, f"_shrink({gi}, {tl}, runs, t)")
        emit(1, 'state["latest"] = t')
        emit(1, "return state, {" + ", ".join(f"{name!r}: f{fi}" for fi, name in enumerate(self.names)) + "}")

        # the late path's features, from each read's aggregate over its window and the event's values
        emit(0, "")
        emit(0, "def features(aggs, vals, since):")
        for ri in range(len(self._reads)):
            emit(1, f"run{ri} = aggs[{ri}]")
        for vi in range(len(self._fields)):
            emit(1, f"v{vi} = vals[{vi}]")
        emit_all(1, features)
        emit(1, "return [" + ", ".join(f"f{fi}" for fi in range(len(self.names))) + "]")

        source = "\n".join(code) + "\n"
        exec(compile(source, f"<driftloop.features.windows update for spec {self.spec.name!r}>", "exec"), ns)
        ns["update"].__doc__ = FeatureComputer.update.__doc__
        self._features = ns["features"]
        return ns["update"], source

    def _finish_source(self, ns: dict[str, Any]) -> list[str]:
        """Statements setting f<i> to feature i: its aggregation's `finish`, inlined (or called), made finite."""
        lines = []
        for fi, (aggregation, inputs) in enumerate(self._plans):
            expression = inline(aggregation.finish, inputs, ns)
            if expression is None:
                ns[f"F{fi}"] = aggregation.finish
                expression = f"F{fi}({', '.join(inputs.values())})"
            lines += [f"f{fi} = {expression}", f"if f{fi} - f{fi} != 0.0:", f"    f{fi} = _clamp(f{fi})"]
        return lines

    def _update_late(self, state: dict, t: float, vals: list, latest: float) -> list[float]:
        """An event older than the entity's latest: read its windows from the entries, then store it."""
        cells = state["cells"]
        runs = state["runs"]
        ttl = self._ttl
        since = ttl
        if self._sliding >= 0:
            keys = cells[self._sliding][0]
            i = bisect_right(keys, t)
            if i:
                since = min(t - keys[i - 1], ttl)
        aggs = []
        for r in self._reads:
            g = self._groups[r.group]
            tl = cells[r.group]
            end = g.end_key(t)
            aggs.append(self._aggregate(r, tl, bisect_right(tl[0], end - r.span), bisect_right(tl[0], end)))
        out = self._features(aggs, vals, since)
        for gi, g in enumerate(self._groups):
            tl = cells[gi]
            key = g.own_key(t)
            if tl[0] and key < tl[0][-1] and key <= g.cutoff(latest, self.allowed_lateness):
                continue  # older than every window this state still serves
            self._insert(g, tl, runs, key, vals, latest)
            if len(tl[0]) > self.max_entries:
                self._shrink(gi, tl, runs, latest)
        return out

    def _drop(self, gi: int, tl: list, runs: list, n: int) -> None:
        """Forget the group's n oldest cells (all before every running window's start)."""
        for lst in tl:
            del lst[:n]
        for ri in self._groups[gi].reads:
            runs[ri][0] -= n

    def _shrink(self, gi: int, tl: list, runs: list, latest: float) -> None:
        """Merge the cells onto the group's grid, then recompute its running windows."""
        g = self._groups[gi]
        self._coarsen(g, tl)
        for ri in g.reads:
            runs[ri] = self._exact(self._reads[ri], tl, latest)

    def _insert(self, g: _Group, tl: list, runs: list, key, vals: list, latest: float) -> None:
        """Add a late event to its cell (new or existing), and to the running windows of the latest event that
        hold it."""
        keys = tl[0]
        pos = bisect_left(keys, key)
        new = pos == len(keys) or keys[pos] != key
        if new:
            keys.insert(pos, key)
            tl[1].insert(pos, 1)
            for li, (vi, stat) in enumerate(g.stats, 2):
                tl[li].insert(pos, stat.cell(vals[vi]))
        else:
            tl[1][pos] += 1
            for li, (vi, stat) in enumerate(g.stats, 2):
                if vals[vi] is not None:
                    tl[li][pos] = stat.merge(tl[li][pos], stat.cell(vals[vi]))
        end = g.end_key(latest)
        for ri in g.reads:
            r = self._reads[ri]
            run = runs[ri]
            if key <= end - r.span:  # before the latest event's window
                if new:
                    run[0] += 1
                continue
            run[2] += 1
            for stat, _, slot, vi in r.stats:
                if vals[vi] is not None:
                    stat.include(run, slot, vals[vi], key)

    def _advance(self, r: _Read, tl: list, run: list, lo: int) -> None:
        """Move the running window's start to cell `lo`, taking out the cells that left."""
        old = run[0]
        held = len(tl[0]) - lo
        removals = run[1] + lo - old
        if held <= _RESUM_BELOW or removals > held:  # small window, or as many removals as it holds
            run[:] = self._aggregate(r, tl, lo, len(tl[0]))
            return
        run[0] = lo
        run[1] = removals
        run[2] -= sum(tl[1][old:lo])
        for stat, li, slot, _ in r.stats:
            stat.remove(run, slot, tl[0], tl[li], old, lo)

    def _aggregate(self, r: _Read, tl: list, a: int, b: int) -> list:
        """The aggregate of cells [a, b) in the read's running-list layout (removal count 0)."""
        agg: list = [a, 0, sum(tl[1][a:b])]
        for stat, li, _, _ in r.stats:
            agg += stat.aggregate(tl[0], tl[li], a, b)
        return agg

    def _exact(self, r: _Read, tl: list, latest: float) -> list:
        g = self._groups[r.group]
        lo = bisect_right(tl[0], g.end_key(latest) - r.span)
        return self._aggregate(r, tl, lo, len(tl[0]))

    def _coarsen(self, g: _Group, tl: list) -> None:
        """Merge the cells onto a grid of g.grain (seconds, or buckets): one cell per grid step that has
        any, keyed by its latest key, holding the merged aggregates."""
        q = g.grain
        merges = [_later, operator.add] + [stat.merge for _, stat in g.stats]  # keys, counts, statistics
        out: list[list] = [[] for _ in tl]
        grid_prev = None
        for i, key in enumerate(tl[0]):
            grid = key // q
            if grid != grid_prev:
                grid_prev = grid
                for merged, lst in zip(out, tl):
                    merged.append(lst[i])
                continue
            for merged, lst, merge in zip(out, tl, merges):
                merged[-1] = merge(merged[-1], lst[i])
        for lst, merged in zip(tl, out):
            lst[:] = merged


def _end_key_source(g: _Group, t: str) -> str:
    """Python source of g.end_key(t) for a bucketed group."""
    if g.ratio == 1:
        return f"floor({t} / {g.step!r})"
    return f"(floor({t} / {g.step!r}) + 1) * {g.ratio} - 1"


def _num(value: Any) -> float | None:
    """A field value as a finite float, or None."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if x - x == 0.0 else None


def _bad_time(event_time: Any) -> None:
    raise ValueError(f"event time must be finite, got {event_time!r}")


def _later(a, b):
    return b


def _benchmark(argv: list[str] | None = None) -> None:
    """`python -m driftloop.features.windows`: update throughput on a spec (default: the demo spec)."""
    import argparse
    import random
    import time

    from driftloop.settings import DEMO_SPEC
    from driftloop.spec import load_spec

    parser = argparse.ArgumentParser(prog="python -m driftloop.features.windows", description=_benchmark.__doc__)
    parser.add_argument("--spec", default=str(DEMO_SPEC))
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--entities", type=int, default=1000)
    parser.add_argument("--hours", type=float, default=48.0, help="event-time span of the stream")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    spec = load_spec(args.spec)
    rng = random.Random(1)
    numeric = [name for name, f in spec.events.fields.items() if f.numeric]
    start = 1_700_000_000.0
    times = sorted(start + rng.uniform(0, args.hours * 3600) for _ in range(args.events))
    events = [
        (f"e{rng.randrange(args.entities)}", t, {name: round(rng.lognormvariate(3, 1), 2) for name in numeric})
        for t in times
    ]
    print(
        f"{spec.name}: {len(spec.features)} features, {args.events:,} events in time order, "
        f"{args.entities:,} entities over {args.hours:g} h"
    )
    for _ in range(args.repeat):
        computer = FeatureComputer(spec)
        update = computer.update
        states: dict[str, dict] = {}
        wall, cpu = time.perf_counter(), time.process_time()
        for entity, t, values in events:
            states[entity], _ = update(states.get(entity), t, values)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(
            f"  {args.events / wall:>10,.0f} events/s wall ({wall:.2f} s)   "
            f"{args.events / cpu:>10,.0f} events/s CPU ({cpu:.2f} s)"
        )


if __name__ == "__main__":
    _benchmark()
