"""The backtest's report: prequential figures of the loop and its baselines, the decisions, detection delays.

`summarize(run)` is the JSON (`driftloop backtest --json`), a function of the input, the spec and the options
only, so two runs with the same seed print the same JSON: timings are reported apart (`timing(run)`), and the
trigger's random request ids are replaced by their order of appearance (r1, r2, ...).

Figures are prequential, in event order: each event is scored before its label is learned (`prequential_metrics`,
the replay's). Baselines score the same feature rows: "never_retrained" is the initial model learning online
from the same outcomes at the same delay (what the live replay's never-retrained figure estimates), "static" the
initial model never learning.

Detection delay, per known drift point: events from the point to the first drift report that flagged drift on
the champion (a concept detection, or the data section drifted), with the first retraining triggered and the
first promotion after the point.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from driftloop.load.backtest.loop import Run
from driftloop.load.backtest.source import event_time
from driftloop.load.replay import prequential_metrics
from driftloop.streams.contracts import iso_time

_REQUEST_ID = re.compile(r"\b[0-9a-f]{32}\b")
_SHOWN_DECISIONS = ("retrain_triggered", "challenger_set", "rejected", "retrain_failed", "promoted", "rolled_back")


def summarize(run: Run) -> dict[str, Any]:
    rows, spec = run.source.rows, run.spec
    labels = [row.label for row in rows]
    threshold, name = spec.model.threshold, spec.model.name

    def predictions(score_of) -> list[dict[str, Any] | None]:
        return [
            None
            if s is None
            else {
                "decision": int(score_of(s) >= threshold),
                "score": score_of(s),
                "model_name": name,
                "model_version": s.version,
                "variant": s.variant,
            }
            for s in run.served
        ]

    loop = prequential_metrics(labels, predictions(lambda s: s.score))
    loop["variants"] = _variants(run, labels)
    baselines = {}
    for baseline in ("never_retrained", "static"):
        figures = prequential_metrics(labels, predictions(lambda s, b=baseline: getattr(s, b)))
        baselines[baseline] = {k: figures[k] for k in ("accuracy", "log_loss", "roc_auc", "deciles")}
    options = run.options
    ids: dict[str, str] = {}
    decisions = [
        {**d, "reason": _REQUEST_ID.sub(lambda m: ids.setdefault(m[0], f"r{len(ids) + 1}"), d["reason"])}
        for d in run.decisions
    ]
    return {
        "source": run.source.name,
        "spec": spec.name,
        "events": len(rows),
        "first_event_time": iso_time(event_time(rows[0])),
        "last_event_time": iso_time(event_time(rows[-1])),
        "label_delay": {"seconds": options.label_delay_seconds}
        if options.label_delay_seconds is not None
        else {"events": options.label_delay_events},
        "retrain_cost_seconds": options.retrain_cost,
        "loop": {k: v for k, v in loop.items() if k != "baselines"},
        "never_retrained": baselines["never_retrained"],
        "static": baselines["static"],
        "simple_baselines": loop["baselines"],
        "dead_letters": dict(sorted(run.dead_letters.items())),
        "drift_evaluations": run.evaluations,
        "retrainings": run.retrainings,
        "decision_counts": dict(sorted(Counter(f"{d['actor']}:{d['action']}" for d in decisions).items())),
        "decisions": decisions,
        "drift_points": [_delay(run, point) for point in run.source.drift_points],
    }


def _variants(run: Run, labels: list[int]) -> list[dict[str, Any]]:
    threshold = run.spec.model.threshold
    correct: dict[tuple[str, int], list[bool]] = {}
    for served, label in zip(run.served, labels):
        if served is not None:
            correct.setdefault((served.variant, served.version), []).append((served.score >= threshold) == label)
    return [
        {"variant": variant, "version": version, "events": len(hits), "accuracy": float(np.mean(hits))}
        for (variant, version), hits in sorted(correct.items())
    ]


def _delay(run: Run, point: int) -> dict[str, Any]:
    detected = next((d for d in run.detections if d["event_index"] >= point), None)
    triggered = _first(run, point, "retrain_triggered")
    promoted = _first(run, point, "promoted")
    return {
        "event_index": point,
        "detected_at": None if detected is None else detected["event_index"],
        "delay_events": None if detected is None else detected["event_index"] - point,
        "detected_by": None if detected is None else ("concept" if detected["concept"] else "data"),
        "retrain_triggered_at": triggered,
        "promoted_at": promoted,
    }


def _first(run: Run, point: int, action: str) -> int | None:
    return next((d["event_index"] for d in run.decisions if d["event_index"] >= point and d["action"] == action), None)


def timing(run: Run) -> dict[str, float]:
    seconds = {k: round(v, 2) for k, v in run.seconds.items()}
    loop = run.seconds.get("loop", 0.0)
    seconds["events_per_second"] = round(len(run.source.rows) / loop) if loop else 0.0
    return seconds


def render(summary: dict[str, Any], seconds: dict[str, float]) -> str:
    """The report as text tables."""
    loop, never, static = summary["loop"], summary["never_retrained"], summary["static"]
    delay = summary["label_delay"]
    lines = [
        f"backtest of {summary['source']} with spec {summary['spec']}: {summary['events']} events "
        f"({summary['first_event_time']} .. {summary['last_event_time']}), label delay "
        + (f"{delay['events']} events" if "events" in delay else f"{delay['seconds']:g} s of event time")
        + f", retraining cost {summary['retrain_cost_seconds']:g} s of event time",
        f"ran in {seconds.get('loop', 0):.1f} s ({seconds.get('events_per_second', 0):g} events/s; "
        f"retraining {seconds.get('retraining', 0):.1f} s, setup {seconds.get('setup', 0):.1f} s)",
        "",
        f"{'':<18}{'accuracy':>10}{'log loss':>10}{'ROC AUC':>10}",
    ]
    for label, figures in (("loop", loop), ("never retrained", never), ("static model", static)):
        lines.append(f"{label:<18}{_cell(figures['accuracy'])}{_cell(figures['log_loss'])}{_cell(figures['roc_auc'])}")
    if "arf_standalone" in summary:
        arf = summary["arf_standalone"]
        lines.append(f"{'ARF alone (lag 0)':<18}{_cell(arf['accuracy'])}{_cell(arf['log_loss'])}")
    simple = summary["simple_baselines"]
    lines.append(f"{'previous label':<18}{_cell(simple['previous_label'])}")
    lines.append(f"{'majority class':<18}{_cell(simple['majority_class'])}")
    lines += ["", "accuracy per tenth of the stream:", f"{'events':<18}{'loop':>10}{'never':>10}{'static':>10}"]
    for part, n, s in zip(loop["deciles"], never["deciles"], static["deciles"]):
        first, last = part["rows"]
        lines.append(f"{f'{first}-{last}':<18}{_cell(part['accuracy'])}{_cell(n['accuracy'])}{_cell(s['accuracy'])}")
    lines += ["", "per variant:"]
    for v in loop["variants"]:
        lines.append(f"  {v['variant']:<10} v{v['version']:<5} {v['events']:>8} events  accuracy {v['accuracy']:.4f}")
    lines += [
        "",
        f"{summary['drift_evaluations']} drift evaluations, {summary['retrainings']} retrainings; decisions: "
        + (", ".join(f"{k} {v}" for k, v in summary["decision_counts"].items()) or "none"),
    ]
    shown = [d for d in summary["decisions"] if d["action"] in _SHOWN_DECISIONS]
    for d in shown[:30]:
        version = f" v{d['version']}" if d["version"] is not None else ""
        lines.append(f"  event {d['event_index']:>7}  {d['event_time']}  {d['action']}{version}: {d['reason']}")
    if len(shown) > 30:
        lines.append(f"  ... {len(shown) - 30} more (--json lists every decision)")
    for p in summary["drift_points"]:
        lines.append(
            f"drift at event {p['event_index']}: "
            + (
                f"detected at {p['detected_at']} ({p['delay_events']} events later, {p['detected_by']} drift)"
                if p["detected_at"] is not None
                else "not detected"
            )
            + f"; retraining triggered at {p['retrain_triggered_at']}, promoted at {p['promoted_at']}"
        )
    if summary["dead_letters"]:
        lines.append(f"dead-lettered: {summary['dead_letters']}")
    return "\n".join(lines)


def _cell(value: float | None, width: int = 10) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.4f}"


def write_png(run: Run, summary: dict[str, Any], path: str | Path, window: int = 1000) -> Path:
    """The demo's timeline (load/timeline.py) by event index: rolling accuracy per variant, the decisions, drift."""
    from driftloop.load.timeline import Outcomes, RunRecords, draw_timeline

    served = [(i, s) for i, s in enumerate(run.served) if s is not None]
    rows, threshold = run.source.rows, run.spec.model.threshold
    outcomes = Outcomes(
        np.array([i for i, _ in served], dtype=np.float64),
        np.array([(s.score >= threshold) == rows[i].label for i, s in served], dtype=bool),
        np.array([s.variant == "canary" for _, s in served], dtype=bool),
        np.array([s.version for _, s in served], dtype=np.int64),
    )
    # the timeline draws by epoch seconds: here an event's index stands for its time, so the x axis counts events
    audit = [{"at": iso_time(d["event_index"]), "action": d["action"]} for d in summary["decisions"]]
    drift = [{"at": iso_time(r["event_index"]), "data": r["data"], "concept": r["concept"]} for r in run.reports]
    records = RunRecords(0.0, float(len(rows)), outcomes, audit, drift, run.spec.drift.drifted_share)
    points = summary["drift_points"]
    facts = {"onset": iso_time(points[0]["event_index"])} if points else {}
    title = f"driftloop backtest: {summary['source']}, spec {summary['spec']}"
    return draw_timeline(records, facts, path, title=title, window=window, x_label="events")
