"""`driftloop bench --slo`: the latency objective and the circuit breaker, each on a data plane of its own.

- load step: a worker (load/benchmarks/worker_process.py) is offered the demo events at 2,000 events/s
  for `step_seconds`, then at 20,000 events/s for `step_seconds`, then at 2,000 again for twice that
  (`--step-from`, `--step-to`): long enough after the drop for a backlog left by the step to drain.
  Every event's latency is its prediction's Kafka timestamp minus its own (as in the latency phase of
  load/benchmarks/data_plane.py); the p99 of the events sent in each second is reported, and the time
  from the step until the p99 is back under the spec's objective (`slo.p99_ms`) for good: the start of
  the first second after the step from which every later second's p99 is under it, to the end of the
  run (None: never), and so also how long after the drop that was. The worker's batch size and fetch
  wait, as its controller steers them, are read from /metrics every second.
- slow model: a worker serving the demo champion is offered the lower rate for `3 x step_seconds`;
  after `step_seconds` a River model made slow on purpose (load/benchmarks/slow_model.py: 5 ms more per
  event, until `step_seconds` after it became champion) is registered as champion, the old champion as
  `previous` (the spec's default fallback). Reported from the `audit` topic and the predictions: when the
  breaker opened and closed, relative to the alias move and to the end of the slowness, the predictions
  per second by variant and version, and the p99 before, during and after.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from confluent_kafka import OFFSET_BEGINNING, TopicPartition

from driftloop import kafka
from driftloop.errors import DriftloopError
from driftloop.load.benchmarks.data_plane import READER_FETCH_WAIT_MS, ChildCall, demo_events, send_paced
from driftloop.load.benchmarks.worker_process import DataPlaneWorkers

TARGET_BACK_UNDER_S = 30.0  # after a 10x load step, the p99 is back under the objective within this
SLOW_DELAY_S = 0.005  # per event, while the slow model is slow
GAUGES = ("driftloop_batch_size_limit", "driftloop_fetch_wait_seconds", "driftloop_slo_burn_rate")


class _Served(msgspec.Struct):
    event_id: Any = None
    variant: str | None = None
    model_version: int | None = None


_decode_served = msgspec.json.Decoder(_Served).decode


def offer_in_steps(
    bootstrap: str,
    input_topic: str,
    output_topic: str,
    offered: list[tuple[bytes, bytes, str]],
    steps: list[tuple[float, float]],
    patience: float,
) -> dict[str, Any]:
    """Offer events at each (rate, seconds) of `steps` in turn while reading the predictions, then read on
    until every event is predicted or none was for `patience` seconds. Per second of sending: events,
    p99 latency (ms) and predictions by "variant vN"."""
    sent_ms: dict[str, int] = {}
    failures: list[str] = []
    producer = kafka.producer(bootstrap, on_delivery=lambda err, _msg: failures.append(err.str()) if err else None)
    producer.list_topics(input_topic, timeout=15)
    consumer = kafka.consumer(
        bootstrap,
        f"bench-slo-reader-{uuid.uuid4().hex[:10]}",
        **{"enable.auto.commit": False, "fetch.wait.max.ms": READER_FETCH_WAIT_MS},
    )
    partitions = consumer.list_topics(output_topic, timeout=15).topics[output_topic].partitions
    consumer.assign([TopicPartition(output_topic, p, OFFSET_BEGINNING) for p in partitions])
    served: dict[str, tuple[int, str]] = {}  # event id -> (output timestamp ms, "variant vN")
    unexpected = 0

    def read(timeout: float) -> int:
        nonlocal unexpected
        got = 0
        for message in consumer.consume(10_000, timeout=timeout):
            if message.error() is not None:
                continue
            try:
                prediction = _decode_served(message.value() or b"")
            except msgspec.DecodeError:
                unexpected += 1
                continue
            event_id = str(prediction.event_id)
            if event_id not in sent_ms or event_id in served:
                unexpected += 1
                continue
            served[event_id] = (message.timestamp()[1], f"{prediction.variant} v{prediction.model_version}")
            got += 1
        return got

    try:
        read(0.2)
        started = time.time()
        step_start, step_offset = started, 0
        for rate, seconds in steps:
            count = min(len(offered) - step_offset, round(rate * seconds))
            send_paced(producer, input_topic, offered[step_offset : step_offset + count], rate, sent_ms, read)
            step_offset += count
            step_start = max(time.time(), step_start + seconds)
            while time.time() < step_start:  # a step that sent its events early still lasts its time
                producer.poll(0)
                read(0.01)
        if producer.flush(30) or failures:
            raise DriftloopError(f"bench: offered events were not delivered ({failures[:1] or 'flush timed out'})")
        last_progress = time.monotonic()
        while len(served) < len(sent_ms) and time.monotonic() - last_progress < patience:
            if read(0.5):
                last_progress = time.monotonic()
    finally:
        consumer.close()
    by_second: dict[int, list[int]] = defaultdict(list)
    variants: dict[int, Counter] = defaultdict(Counter)
    for event_id, at_ms in sent_ms.items():
        second = int((at_ms / 1000) - started)
        if event_id in served:
            out_ms, variant = served[event_id]
            by_second[second].append(out_ms - at_ms)
            variants[second][variant] += 1
    per_second = [
        {"second": s, "events": len(by_second[s]), "p99_ms": _p99(by_second[s]), "served_by": dict(variants[s])}
        for s in sorted(by_second)
    ]
    return {
        "started": started,
        "offered": len(sent_ms),
        "missing": len(sent_ms) - len(served),
        "unexpected": unexpected,
        "per_second": per_second,
    }


def _p99(latencies_ms: list[int]) -> float | None:
    if not latencies_ms:
        return None
    ordered = sorted(latencies_ms)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def _phase_p99(per_second: list[dict[str, Any]], start: float, end: float) -> float | None:
    """The worst second's p99 among the seconds in [start, end)."""
    values = [s["p99_ms"] for s in per_second if start <= s["second"] < end and s["p99_ms"] is not None]
    return max(values, default=None)


def back_under(per_second: list[dict[str, Any]], start: float, end: float, objective_ms: float) -> float | None:
    """Seconds from `start` until the first second from which every second's p99 up to `end` is within the
    objective; None when the last second before `end` is still over it."""
    window = [s for s in per_second if start <= s["second"] < end and s["p99_ms"] is not None]
    recovered = None
    for s in reversed(window):
        if s["p99_ms"] > objective_ms:
            break
        recovered = s["second"]
    return None if recovered is None else round(recovered - start, 1)


class _Sampler:
    """The workers' steering gauges, read from /metrics once a second while a child call runs."""

    def __init__(self, system: DataPlaneWorkers):
        self.urls = list(system._metrics)

    def during(self, call: ChildCall, started_after: float) -> list[dict[str, Any]]:
        from prometheus_client.parser import text_string_to_metric_families

        samples = []
        while not call.ready(1.0):
            row: dict[str, Any] = {"at_s": round(time.time() - started_after, 1)}
            for url in self.urls:
                try:
                    text = urllib.request.urlopen(url, timeout=2).read().decode()
                except OSError:
                    continue
                for family in text_string_to_metric_families(text):
                    if family.name in GAUGES:
                        row[family.name.removeprefix("driftloop_")] = family.samples[0].value
            samples.append(row)
        return samples


def load_step(system: DataPlaneWorkers, step_seconds: float, low: float, high: float, say) -> dict[str, Any]:
    steps = [(low, step_seconds), (high, step_seconds), (low, 2 * step_seconds)]
    count = sum(round(rate * seconds) for rate, seconds in steps)
    say(f"slo: load step: generating {count} events")
    with ChildCall(demo_events, count) as generating:
        events = generating.result()
    say(f"slo: load step: {low:g} -> {high:g} -> {low:g} events/s, " + ", ".join(f"{s:g}s" for _, s in steps))
    system.start()
    try:
        began = time.time()
        with ChildCall(
            offer_in_steps, system.bootstrap, system.input_topic, system.output_topic, events, steps, 60.0
        ) as call:
            gauges = _Sampler(system).during(call, began)
            offered = call.result()
    finally:
        system.stop()
    objective = system.spec.slo.p99_ms
    per_second = offered["per_second"]
    high_end, run_end = 2 * step_seconds, 4 * step_seconds
    recovered = back_under(per_second, step_seconds, run_end, objective)
    return {
        "objective_p99_ms": objective,
        "steps": [{"events_per_s": rate, "seconds": seconds} for rate, seconds in steps],
        "offered": offered["offered"],
        "missing": offered["missing"],
        "unexpected": offered["unexpected"],
        "worst_second_p99_ms": {
            "before_step": _phase_p99(per_second, 0, step_seconds),
            "high": _phase_p99(per_second, step_seconds, high_end),
            "after": _phase_p99(per_second, high_end, run_end),
        },
        "back_under_objective_after_step_s": recovered,
        "back_under_objective_after_drop_s": None
        if recovered is None
        else max(round(recovered - step_seconds, 1), 0.0),
        "target_back_under_s": TARGET_BACK_UNDER_S,
        "met": recovered is not None and recovered <= TARGET_BACK_UNDER_S,
        "per_second": [{k: v for k, v in s.items() if k != "served_by"} for s in per_second],
        "steering": gauges,
    }


def slow_model(system: DataPlaneWorkers, step_seconds: float, rate: float, warmup, say) -> dict[str, Any]:
    from driftloop.load.benchmarks.slow_model import river_spec, stalling_model
    from driftloop.models.registry import register, set_alias
    from driftloop.signing import key_path, load_key

    steps = [(rate, 3 * step_seconds)]
    count = round(rate * 3 * step_seconds)
    say(f"slo: slow model: generating {count} events")
    with ChildCall(demo_events, count) as generating:
        events = generating.result()
    say(f"slo: slow model: {rate:g} events/s for {3 * step_seconds:g}s; a slow champion after {step_seconds:g}s")
    if system.model is None:
        raise DriftloopError("bench: the slow-model pipeline has no champion (prepare it first)")
    spec, settings, champion = system.spec, system.settings, system.model["version"]
    tracking = system.environ["MLFLOW_TRACKING_URI"]
    rows, labels = [row for row, _ in warmup], [label for _, label in warmup]
    system.start()
    try:
        with ChildCall(
            offer_in_steps, system.bootstrap, system.input_topic, system.output_topic, events, steps, 60.0
        ) as call:
            call.ready(step_seconds)
            switch = system.work_dir / "slow"
            switch.touch()
            slow = stalling_model(spec, rows, labels, switch, delay=SLOW_DELAY_S)
            key = load_key(key_path(settings))
            version = register(
                slow, river_spec(spec), tracking_uri=tracking, reference_rows=rows[:500], key=key
            ).version
            set_alias(spec.model.name, "previous", champion, tracking_uri=tracking)
            set_alias(spec.model.name, "champion", version, tracking_uri=tracking)
            moved = time.time()
            call.ready(step_seconds)
            switch.unlink()
            slow_until = time.time()
            offered = call.result()
    finally:
        system.stop()
    audit = [
        record
        for record in kafka.read_topic(system.bootstrap, settings.topic_audit, decode=json.loads)
        if record.get("action", "").startswith("breaker_")
    ]
    started = offered["started"]
    per_second = offered["per_second"]
    totals: Counter = Counter()
    for s in per_second:
        totals.update(s["served_by"])

    def at(record) -> float:
        return datetime.fromisoformat(record["at"]).timestamp()

    opened = [r for r in audit if r["action"] == "breaker_opened" and r["version"] == version]
    closed = [r for r in audit if r["action"] == "breaker_closed" and r["version"] == version]
    return {
        "slow_version": version,
        "fallback_version": champion,
        "slow_ms_per_event": SLOW_DELAY_S * 1000,
        "alias_moved_at_s": round(moved - started, 1),
        "slow_until_s": round(slow_until - started, 1),
        "breaker_opened_after_alias_move_s": round(at(opened[0]) - moved, 2) if opened else None,
        "breaker_closed_after_slowness_ended_s": round(at(closed[0]) - slow_until, 2) if closed else None,
        "audit": [{"action": r["action"], "version": r["version"], "reason": r["reason"]} for r in audit],
        "predictions_by_variant": dict(totals),
        "worst_second_p99_ms": {
            "before": _phase_p99(per_second, 0, moved - started),
            "slow": _phase_p99(per_second, moved - started, slow_until - started),
            "after": _phase_p99(per_second, slow_until - started, 3 * step_seconds),
        },
        "offered": offered["offered"],
        "missing": offered["missing"],
        "unexpected": offered["unexpected"],
        "per_second": per_second,
    }


def run_slo(
    bootstrap: str, run: str, partitions: int, work: Path, steps: tuple[float, float, float], warmup, say
) -> dict:
    """Both scenarios, each on a data plane of its own under `work`; steps: (seconds, low rate, high rate)."""
    step_seconds, low, high = steps
    stepping = DataPlaneWorkers(bootstrap, f"{run}step", partitions, work / "slo-step")
    slowing = DataPlaneWorkers(bootstrap, f"{run}slow", partitions, work / "slo-slow")
    try:
        stepping.prepare(warmup)
        slowing.prepare(warmup)
        return {
            "load_step": load_step(stepping, step_seconds, low, high, say),
            "slow_model": slow_model(slowing, step_seconds, low, warmup, say),
            "topics": stepping.topics + slowing.topics,
        }
    finally:  # their MLflow servers, whatever happened
        stepping.registry.stop()
        slowing.registry.stop()
