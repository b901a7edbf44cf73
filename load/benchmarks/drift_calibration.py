"""Calibrating the drift loop on the demo stream: false alarms on a stationary stream, detection delays.

    python -m driftloop.load.benchmarks.drift_calibration [--spec FILE] [--stationary-events 200000] [--seeds 3]
        [--json-out FILE]

prints one JSON object. Each run plays the control plane's part in-process, as streams/control/plane.py does
it live, on the synthetic fraud stream (load/generator.py) with the demo spec, or with --spec a copy of it
whose `drift` knobs (drift.concept, drift.data_thresholds, ...) are to be calibrated:

- events are validated and get their windowed features as the worker computes them
  (`load.featurise.Featuriser`), and are scored by the champion the live pipeline would have:
  a River spec's cold-start model, learning online from each outcome `LABEL_DELAY` events later, as
  workers learn from `labeled`; for an ONNX spec (the demo's) the cold-start River placeholder until
  `model.warmup` of outcomes with full feature windows is in, then (as version 2) the spec's model
  trained on them, as the warm-up retraining does;
- every `BATCH` events make one observation batch (rows, counts, latest event time) for the
  data-drift and quality monitors; every outcome makes one labeled record for the concept monitor;
- a drift report is built when the data monitor is due or a concept detection on the champion
  arrives, and the trigger policy judges it, on event time as the live control plane does; the first
  retraining stays "in flight", so later ones show up as declined-but-due and are counted as
  `retrainings_due`.

Runs: "stationary" (no drift: every retraining due is a false alarm), "concept" (abrupt concept
drift at each of `--concept-onsets`: delay from onset, counting all events, to the first concept
detection on the champion and to the triggered retraining) and "covariate" (abrupt covariate drift at
`ONSET`, after the data monitor's warm-up: delay to the sustained data-drift trigger). Besides the
configured detector, each run feeds the same outcomes to every registered detector on each loss it
takes (the spec's detector with the spec's knobs, the others at their defaults), to compare them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import statistics
import sys
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any, get_args

from evidently.legacy.calculations.stattests import wasserstein_stat_test

from driftloop.features.rows import Featuriser
from driftloop.load.generator import DriftPlan, FraudStream, StreamShape, encode
from driftloop.models.bootstrap import placeholder_spec
from driftloop.models.flavors import flavor_of, new_model, train
from driftloop.models.inputs import rows_to_frame
from driftloop.schema import model_inputs
from driftloop.settings import DEMO_SPEC
from driftloop.spec import PipelineSpec, load_spec
from driftloop.streams.contracts import iso_time
from driftloop.streams.control.drift.concept import ConceptDriftMonitor
from driftloop.streams.control.drift.data import DataDriftMonitor, warmup_seconds
from driftloop.streams.control.drift.detectors import DETECTORS, ConceptDetector, concept_detector, detector_class
from driftloop.streams.control.drift.quality import QualityMonitor
from driftloop.streams.control.drift.report import build_report
from driftloop.streams.control.trigger import TriggerPolicy
from driftloop.streams.worker.validation import Rejection

# The demo stream's parameters: 2,000 cards, 5% fraud, one event every 2 s of event time (each card
# used about every 67 min), so the spec's 24 h windows fill after 43,200 events instead of never.
DEMO_STREAM: StreamShape = {"users": 2000, "fraud_rate": 0.05, "events_per_second": 0.5}
LABEL_DELAY = 50  # outcomes arrive this many events after their event, as in `driftloop up --demo`
BATCH = 100  # events per observation batch
# Well after the 43,200-event window warm-up, the first model (5,000 outcomes later, then its training,
# which a lagging live pipeline delays) and the data-drift reference
ONSET = 100_000
AFTER_ONSET = 10_000  # events a drift run goes on after the onset


STATIONARY = DriftPlan("none", 0)


def demo_stream(seed: int, drift: DriftPlan = STATIONARY) -> FraudStream:
    return FraudStream(seed=seed, drift=drift, **DEMO_STREAM)


def scored_batches(spec: PipelineSpec, stream: FraudStream, events: int):
    """Yield (observation batch, labeled records released during it, events so far), like the data plane.

    The champion (module docstring) scores each event; the labeled records carry the score served at
    prediction time and the version that served it, and so does each batch.
    """
    featuriser = Featuriser(spec)
    inputs = spec.model_inputs
    warming_up = not flavor_of(spec.model.flavor).cold_start
    model, version = new_model(placeholder_spec(spec) if warming_up else spec), 1
    full_from: float | None = None  # event time from which every feature window is full
    warmup_rows: list[dict[str, Any]] = []
    warmup_labels: list[int] = []
    threshold = spec.model.threshold
    waiting: deque[tuple[dict[str, Any], dict[str, Any], float]] = deque()
    batch, labeled = _new_batch(inputs, version), []
    for index, (event_doc, outcome) in enumerate(itertools.islice(stream, events), start=1):
        event, row = featuriser.featurise(encode(event_doc))
        if isinstance(event, Rejection):
            batch["dlq"][event.reason] += 1
        elif row is not None:  # always, for a valid event
            if full_from is None:
                full_from = event.event_time + warmup_seconds(spec)
            score = float(model.predict_proba([row])[0])
            for name in inputs:
                batch["rows"][name].append(row[name])
            batch["valid"] += 1
            batch["unseen"].update(event.unseen)
            batch["missing"].update(event.missing)
            batch["event_time_max"] = max(batch["event_time_max"] or 0.0, event.event_time)
            waiting.append(
                (
                    {
                        "event_id": event.event_id,
                        "entity": event.entity,
                        "event_time": iso_time(event.event_time),
                        "score": score,
                        "decision": int(score >= threshold),
                        "label": outcome["is_fraud"],
                        "model_version": version,
                        "variant": "champion",
                    },
                    row,
                    event.event_time,
                )
            )
        while len(waiting) > LABEL_DELAY:
            record, row, event_time = waiting.popleft()
            if model.online:
                model.learn([row], [record["label"]])
            labeled.append(record)
            if warming_up and full_from is not None and event_time >= full_from:
                warmup_rows.append(row)
                warmup_labels.append(record["label"])
                if spec.model.warmup.reached(len(warmup_rows), event_time - full_from):
                    model, version, warming_up = train(spec, warmup_rows, warmup_labels), 2, False
        if index % BATCH == 0:
            yield batch, labeled, index
            batch, labeled = _new_batch(inputs, version), []


def _new_batch(inputs, version: int) -> dict[str, Any]:
    return {
        "contract": 1,
        "worker": "calibration",
        "valid": 0,
        "dlq": Counter(),
        "unseen": Counter(),
        "missing": Counter(),
        "champion_version": version,
        "event_time_max": None,
        "rows": {name: [] for name in inputs},
    }


def _with_detector(spec: PipelineSpec, detector: ConceptDetector) -> PipelineSpec:
    return spec.model_copy(update={"drift": spec.drift.model_copy(update={"concept": detector})})


def compared_detectors(spec: PipelineSpec) -> dict[str, ConceptDetector]:
    """Every registered detector on each loss it takes: the spec's own with the spec's knobs, others at defaults."""
    compared = {}
    for name in DETECTORS:
        template = spec.drift.concept if name == spec.drift.concept.detector else concept_detector({"detector": name})
        for loss in get_args(detector_class(name).model_fields["loss"].annotation):
            compared[f"{name}/{loss}"] = template.model_copy(update={"loss": loss})
    return compared


def simulate(spec: PipelineSpec, stream: FraudStream, events: int, onset: int | None = None) -> dict[str, Any]:
    """One run of the control plane over `events` events of `stream` (see the module docstring)."""
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731 - the newest event time, the live control plane's policy clock
    empty = rows_to_frame(model_inputs(spec), [])
    data = DataDriftMonitor(spec, empty, 1)
    quality, concept, policy = QualityMonitor(spec), ConceptDriftMonitor(spec), TriggerPolicy(spec, clock=clock)
    compared = {
        name: ConceptDriftMonitor(_with_detector(spec, detector)) for name, detector in compared_detectors(spec).items()
    }
    first_detection: dict[str, dict[str, Any]] = {}
    detections_before_onset: Counter = Counter()
    detections: list[dict[str, Any]] = []
    evaluations, seconds, shares, due, triggered = 0, [], [], [], []
    default_shares = []  # the same windows judged at Evidently's own Wasserstein threshold
    reference_ready_at = first_model_at = None
    started = time.perf_counter()
    for batch, labeled, index in scored_batches(spec, stream, events):
        now[0] = max(now[0], batch["event_time_max"] or now[0])
        quality.add(batch)
        if batch["valid"]:
            data.add(batch["rows"], batch["event_time_max"])
        if reference_ready_at is None and data.has_reference:
            reference_ready_at = index
        if first_model_at is None and batch["champion_version"] != 1:
            first_model_at = index
        champion_detected = False
        for record in labeled:
            for name, monitor in compared.items():
                found = monitor.update(record)
                if found is None:
                    continue
                if onset is not None and index < onset:
                    detections_before_onset[name] += 1
                elif name not in first_detection:
                    first_detection[name] = {
                        "events": index,
                        "delay": index - onset if onset else None,
                        "at_event": found["at_event"],
                        "change_point_event_time": found["change_point_event_time"],
                        "loss_before": found["loss_before"],
                        "loss_after": found["loss_after"],
                    }
            detection = concept.update(record)
            if detection is not None:
                detections.append(detection)
                champion_detected = True
        if not (data.due() or champion_detected):
            continue
        if not flavor_of(spec.model.flavor).cold_start and batch["champion_version"] == 1:
            continue  # the warm-up placeholder: the live policy only waits for the first model then
        evaluations += 1
        section = data.evaluate()
        if section["status"] == "evaluated":
            seconds.append(section["seconds"])
            shares.append(section["drifted_share"])
            default_shares.append(_share_at_evidently_default(section["features"]))
        report = build_report(
            spec,
            champion_version=batch["champion_version"],
            evaluation=evaluations,
            data=section,
            window=data.window_info(),
            detections=detections,
            quality=quality.evaluate(),
            at=clock(),
        )
        detections = []
        decision = policy.decide(report, current_rows=data.current_rows())
        if decision.reason is not None:
            due.append(
                {
                    "events": index,
                    "reason": decision.reason,
                    "declined": decision.declined,
                    "sentence": decision.sentence,
                }
            )
        if decision.trigger:
            triggered.append(due[-1])
    return {
        "events": events,
        "onset": onset,
        "stream": {
            "seed": stream.seed,
            **DEMO_STREAM,
            "drift": stream.drift.kind,
            "covariate": stream.drift.covariate,
            "concept": stream.drift.concept,
        },
        "reference_ready_at_event": reference_ready_at,
        "first_model_at_event": first_model_at,
        "evaluations": evaluations,
        "data_drift": {
            "evaluated": len(shares),
            "drifted_windows": sum(s >= spec.drift.drifted_share for s in shares),
            "max_drifted_share": max(shares, default=None),
            "evaluate_seconds": _summary(seconds),
            "at_evidently_default_threshold": {
                "drifted_windows": sum(s >= spec.drift.drifted_share for s in default_shares),
                "sustained_runs": _sustained_runs(default_shares, spec),
            },
        },
        "retrainings_triggered": len(triggered),
        "retrainings_due": len(due),
        "first_retraining": triggered[0] if triggered else None,
        "first_concept_detection": first_detection,
        "concept_detections_before_onset": dict(detections_before_onset),
        "wall_seconds": round(time.perf_counter() - started, 1),
    }


def _share_at_evidently_default(features: dict[str, dict[str, Any]]) -> float:
    tested = [f for f in features.values() if f["method"] is not None]
    drifted = [
        f
        for f in tested
        if (f["score"] >= wasserstein_stat_test.default_threshold if f["method"] == "wasserstein" else f["drifted"])
    ]
    return len(drifted) / len(tested) if tested else 0.0


def _sustained_runs(shares: list[float], spec: PipelineSpec) -> int:
    """How often drifted_share stayed at or above the spec's share for sustained_windows evaluations."""
    runs = consecutive = 0
    for share in shares:
        consecutive = consecutive + 1 if share >= spec.drift.drifted_share else 0
        if consecutive == spec.drift.sustained_windows:
            runs, consecutive = runs + 1, 0
    return runs


def _summary(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    return {
        "median": round(statistics.median(ordered), 4),
        "p95": round(ordered[int(0.95 * (len(ordered) - 1))], 4),
        "max": round(ordered[-1], 4),
    }


def _run(job: tuple[Path, str, int, int, int | None]) -> dict[str, Any]:
    spec_path, kind, seed, events, onset = job
    spec = load_spec(spec_path)
    if onset is None:  # a stationary run
        return {"run": kind, **simulate(spec, demo_stream(seed), events)}
    plan = DriftPlan("abrupt", onset, covariate=kind == "covariate", concept=kind == "concept")
    return {"run": kind, **simulate(spec, demo_stream(seed, plan), onset + AFTER_ONSET, onset=onset)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m driftloop.load.benchmarks.drift_calibration", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--spec",
        type=Path,
        default=DEMO_SPEC,
        help="the demo spec, or a copy with other drift knobs (default: the demo's)",
    )
    parser.add_argument("--stationary-events", type=int, default=200_000)
    parser.add_argument("--seeds", type=int, default=3, help="runs of each kind, seeds 1..N (default 3)")
    parser.add_argument(
        "--concept-onsets",
        default="60000,80000,100000",
        help="onsets of the concept-drift runs, comma-separated (default 60000,80000,100000: after the first model)",
    )
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--json-out", help="also write the JSON here")
    args = parser.parse_args(argv)
    spec = load_spec(args.spec)
    seeds = range(1, args.seeds + 1)
    jobs: list[tuple[Path, str, int, int, int | None]]
    jobs = [(args.spec, "stationary", seed, args.stationary_events, None) for seed in seeds]
    jobs += [(args.spec, "concept", seed, 0, int(onset)) for onset in args.concept_onsets.split(",") for seed in seeds]
    jobs += [(args.spec, "covariate", seed, 0, ONSET) for seed in seeds]
    with multiprocessing.get_context("spawn").Pool(args.processes) as pool:
        runs = pool.map(_run, jobs)
    result = {
        "spec": args.spec.name,
        "drift": spec.drift.model_dump(),
        "warmup_seconds": warmup_seconds(spec),
        "label_delay_events": LABEL_DELAY,
        "batch_events": BATCH,
        "runs": runs,
    }
    text = json.dumps(result, indent=2, default=str)
    if args.json_out:
        with open(args.json_out, "w") as fh:
            fh.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
