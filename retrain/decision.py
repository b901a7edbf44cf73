"""What a retraining decides, from its training window and the champion: candidates trained, validated on the
newest rows, gated, logged and registered (`train_and_decide`), then the alias step and its audit records
(`conclude`).

The Kafka retrain worker (retrain/worker.py) and the event-time backtest (load/backtest/) both call these:
they differ only in where the window comes from (`labeled` + Feast, or the backtest's own labeled rows) and
how the audit records travel (a signed Kafka record, or a call into the in-process control plane).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from driftloop.models.bootstrap import CHAMPION
from driftloop.models.inputs import rows_to_frame
from driftloop.models.registry import LoadedModel, aliases, set_alias, set_version_tag
from driftloop.models.routing import CHALLENGER
from driftloop.retrain.registration import record
from driftloop.retrain.train import train_candidates, train_spec_model
from driftloop.retrain.training_set import TrainingSet
from driftloop.retrain.validate import METRICS, catch_up, gate, holdout_metrics, holdout_size, score
from driftloop.schema import model_inputs
from driftloop.signing import SigningKey
from driftloop.spec import PipelineSpec
from driftloop.streams import contracts
from driftloop.streams.control.promotion import alias_moves

_LOG = logging.getLogger("driftloop.retrain.decision")
CHALLENGER_SET_TAG = "driftloop.challenger_set_at"  # when a retraining pointed `challenger` at the version
Audit = Callable[..., None]  # audit(action, reason, request, *, version=None, details=None)


@dataclass(frozen=True)
class Retrained:
    """A registered candidate and the gate's verdict on it."""

    version: int
    run_id: str
    winner: str  # the candidate's name, e.g. river_logistic_regression
    passed: bool
    reason: str  # the gate's sentence
    warmup: bool
    train_rows: int
    holdout_rows: int
    results: dict[str, dict[str, float | None]]  # per candidate (and "champion"): holdout metrics
    champion_version: int | None


def train_and_decide(
    spec: PipelineSpec,
    *,
    tracking_uri: str,
    key: SigningKey,
    request: Mapping[str, Any],
    data: TrainingSet,
    champion: LoadedModel | None,
    warmup: bool,
    timings: dict[str, float],
    drift_html: bool = True,
) -> Retrained:
    """Train on the oldest part of `data`, compare with the champion on the newest, gate, log and register
    (with the Evidently HTML report of the run unless `drift_html` is False)."""
    uri = tracking_uri
    held = holdout_size(len(data), spec.retrain.holdout_share)
    cut = len(data) - held
    train_rows, train_labels = data.rows[:cut], data.labels[:cut]
    holdout_rows, holdout_labels = data.rows[cut:], data.labels[cut:]

    champion_version = None if champion is None else champion.version
    candidates = (train_spec_model if warmup else train_candidates)(spec, train_rows, train_labels)
    step = time.perf_counter()
    served = [i for i, row in enumerate(data.window.rows[cut:]) if row.served_version == champion_version]
    if champion is not None and len(served) >= held // 2:
        # The champion as it really served: the scores it gave live, after all the online learning it
        # did since registration (a replay from the registered snapshot would only see this window).
        # The candidates are scored on the same events.
        holdout_rows = [holdout_rows[i] for i in served]
        holdout_labels = [holdout_labels[i] for i in served]
        results = {c.name: score(c.model, holdout_rows, holdout_labels, spec) for c in candidates}
        results["champion"] = holdout_metrics(
            [data.window.rows[cut + i].served_score for i in served], holdout_labels, spec.model.threshold
        )
    else:  # a new champion that served little of the holdout: score its registered snapshot, caught up
        results = {c.name: score(c.model, holdout_rows, holdout_labels, spec) for c in candidates}
        if champion is not None:
            catch_up(champion.model, champion.created_ms, train_rows, train_labels, data.joined_ms[:cut])
            results["champion"] = score(champion.model, holdout_rows, holdout_labels, spec)
    timings["validate_seconds"] = time.perf_counter() - step
    decision = gate(
        spec,
        {c.name: results[c.name] for c in candidates},
        None if warmup else results.get("champion"),
        champion_version,
    )
    winner = next(c for c in candidates if c.name == decision.winner)
    _LOG.info(
        "request %s: holdout of %d rows: %s; gate %s: %s",
        request["request_id"],
        held,
        _summary(results),
        "passed" if decision.passed else "failed",
        decision.reason,
    )

    columns = model_inputs(spec)
    if champion is not None and champion.reference is not None and len(champion.reference):
        drift_reference, reference_name = champion.reference, f"champion v{champion_version} reference sample"
    else:
        drift_reference, reference_name = rows_to_frame(columns, train_rows), "training rows"
    current = _columnar_rows(request.get("current_rows"))
    drift_current = rows_to_frame(columns, current or holdout_rows)
    params = {
        "window_first_event_time": contracts.iso_time(data.event_times[0]),
        "window_last_event_time": contracts.iso_time(data.event_times[-1]),
        "rows": len(data),
        "train_rows": cut,
        "holdout_rows": held,
        "candidates": ",".join(f"{c.spec.model.flavor}:{c.spec.model.estimator}" for c in candidates),
        "winner": winner.name,
        "gate_metric": spec.retrain.gate_metric,
        "min_improvement": spec.retrain.min_improvement,
        "champion_version": champion_version,
        "drift_reference": reference_name,
        "drift_current": "request current_rows" if current else "holdout rows",
    }
    metrics: dict[str, float | None] = {
        f"{model}.{metric}": values[metric] for model, values in results.items() for metric in METRICS
    }
    metrics.update(
        {
            "rows_from_feast": data.from_feast,
            "rows_from_labeled": data.from_labeled,
            "feast_mismatches": data.feast_mismatches,
            "labeled_duplicates": data.window.duplicates,
            **{f"{c.name}.train_seconds": c.seconds for c in candidates},
            **timings,
        }
    )
    step = time.perf_counter()
    info = record(
        spec,
        tracking_uri=uri,
        key=key,
        request=request,
        winner=winner,
        passed=decision.passed,
        reason=decision.reason,
        params=params,
        metrics=metrics,
        reference_rows=train_rows[-spec.drift.reference_size :],
        drift_reference=drift_reference,
        drift_current=drift_current,
        fingerprint=data.fingerprint,
        drift_html=drift_html,
    )
    _LOG.info(
        "request %s: registered %s v%d (%s, run %s) in %.1fs",
        request["request_id"],
        spec.model.name,
        info.version,
        winner.name,
        info.run_id,
        time.perf_counter() - step,
    )
    return Retrained(
        info.version,
        info.run_id,
        winner.name,
        decision.passed,
        decision.reason,
        warmup,
        cut,
        held,
        results,
        champion_version,
    )


def conclude(
    spec: PipelineSpec,
    tracking_uri: str,
    request: Mapping[str, Any],
    retrained: Retrained,
    data: TrainingSet,
    *,
    audit: Audit,
    is_placeholder: Callable[[int], bool],
    now: float,
    seconds: float,
) -> None:
    """Audit `registered`, then point `challenger` at a passed version (or, after a warm-up, `champion`), or
    audit it `rejected`. `champion` is otherwise never touched: promotion is another component's decision."""
    audit(
        "registered",
        f"{retrained.winner} trained on {retrained.train_rows} rows, validated on {retrained.holdout_rows}",
        request,
        version=retrained.version,
        details={
            "run_id": retrained.run_id,
            "candidate": retrained.winner,
            "metrics": retrained.results,
            "champion_version": retrained.champion_version,
            "rows_from_feast": data.from_feast,
            "rows_from_labeled": data.from_labeled,
            "dataset_fingerprint": data.fingerprint,
            "seconds": round(seconds, 2),
        },
    )
    if retrained.passed and retrained.warmup:
        replace_placeholder(
            spec,
            tracking_uri,
            request,
            retrained.version,
            retrained.reason,
            audit=audit,
            is_placeholder=is_placeholder,
            now=now,
        )
    elif retrained.passed:
        set_challenger(spec, tracking_uri, request, retrained.version, retrained.reason, audit=audit, now=now)
    else:
        _LOG.info("request %s: v%d rejected: %s", request["request_id"], retrained.version, retrained.reason)
        audit("rejected", retrained.reason, request, version=retrained.version)


def set_challenger(
    spec: PipelineSpec,
    tracking_uri: str,
    request: Mapping[str, Any],
    version: int,
    reason: str,
    *,
    audit: Audit,
    now: float,
) -> None:
    name, uri = spec.model.name, tracking_uri
    set_alias(name, CHALLENGER, version, tracking_uri=uri)
    set_version_tag(name, version, CHALLENGER_SET_TAG, contracts.iso_time(now), tracking_uri=uri)
    _LOG.info("request %s: %s v%d is the challenger: %s", request["request_id"], name, version, reason)
    audit("challenger_set", reason, request, version=version)


def replace_placeholder(
    spec: PipelineSpec,
    tracking_uri: str,
    request: Mapping[str, Any],
    version: int,
    reason: str,
    *,
    audit: Audit,
    is_placeholder: Callable[[int], bool],
    now: float,
) -> None:
    name, uri = spec.model.name, tracking_uri
    current = aliases(name, tracking_uri=uri)
    placeholder = current.get(CHAMPION)
    if placeholder is None or not is_placeholder(placeholder):
        # someone chose a champion meanwhile: the warm-up model competes like any other
        set_challenger(spec, tracking_uri, request, version, reason, audit=audit, now=now)
        return
    state = alias_moves.apply_marked(
        name, uri, version, "promoted", current, alias_moves.promotion(version, current, now), now
    )
    _LOG.info(
        "request %s: %s v%d replaced the warm-up placeholder v%d as champion",
        request["request_id"],
        name,
        version,
        placeholder,
    )
    audit(
        "promoted",
        f"the first trained model replaces the warm-up placeholder v{placeholder}: {reason}",
        request,
        version=version,
        details={"from": current, "to": state},
    )


def _columnar_rows(columns: Mapping[str, list[Any]] | None) -> list[dict[str, Any]]:
    if not columns:
        return []
    names = list(columns)
    return [dict(zip(names, values)) for values in zip(*(columns[name] for name in names))]


def _summary(results: Mapping[str, Mapping[str, float | None]]) -> str:
    return "; ".join(
        f"{model} "
        + ", ".join(
            f"{metric} {value:.4f}" if value is not None else f"{metric} n/a" for metric, value in values.items()
        )
        for model, values in results.items()
    )
