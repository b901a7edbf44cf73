"""The drift report: one JSON record per evaluation on the `drift` topic (key: the model name).

    {"contract": 1,
     "at": "2026-11-23T12:00:00.000Z",            # when the control plane evaluated
     "model_name": "card_fraud",
     "champion_version": 3,
     "evaluation": 42,                             # evaluations since the control plane started
     "window": {"events": 1000,                    # model-input rows in the data-drift window
                "first_event_time": ISO, "last_event_time": ISO},   # latest event time of its oldest / newest batch
     "data": {"status": "evaluated",               # | "collecting_reference" | "filling_window" | "not_evaluated"
              "reference": "model",                # the version's saved sample | "observed" (cold start)
              "reference_version": 3,              # whose reference (the champion's)
              "reference_rows": 5000, "window_events": 1000,
              "drifted_share": 0.1667,             # drifted columns / tested columns (null unless evaluated)
              "threshold_share": 0.15,             # spec drift.drifted_share
              "drifted": true,                     # drifted_share >= threshold_share
              "drifted_columns": ["amount", "country"],
              "features": {"amount": {"method": "wasserstein", "method_name": "Wasserstein distance (normed)",
                                      "score_kind": "distance", "score": 0.61, "threshold": 0.2, "drifted": true},
                           "country": {"method": "jensenshannon", ..., "score_kind": "distance"},
                           "account_age_days": {"method": null, "drifted": false,
                                                "skipped": "no values in the window"}},
              "seconds": 0.031},                   # time the evaluation took
     "concept": {"detector": "adwin", "loss": "log_loss",
                 "detections": [                   # since the previous report, every model version
                   {"version": 3, "variant": "champion", "detector": "adwin", "loss": "log_loss",
                    "at_event": 18234,             # that version's labeled events when it fired
                    "change_point_event_time": ISO,    # the estimated onset (train_from)
                    "window_start_event_time": ISO,    # the start of ADWIN's kept window
                    "loss_before": 0.045, "loss_after": 0.121}]},
     "quality": {"events": 1003, "valid": 998, "events_total": 250000,
                 "unseen_rate": 0.0, "missing_rate": 0.071, "out_of_range_rate": 0.002, "dlq_rate": 0.005,
                 "unseen": {field: rate}, "missing": {field: rate}, "dlq": {reason: count},
                 "limits": {"unseen_rate": 0.05, "missing_rate": 0.2, "dlq_rate": 0.05},
                 "flagged": []}}

"score" is the method's statistic: a p-value for "score_kind": "p_value" (drift when below the
threshold), a distance otherwise (drift at or above it). See streams/control/drift/data.py,
streams/control/drift/concept.py and streams/control/drift/quality.py for how each section is computed.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from driftloop.spec import PipelineSpec
from driftloop.streams.contracts import CONTRACT_VERSION, iso_time

_NO_WINDOW = {"events": 0, "first_event_time": None, "last_event_time": None}


def build_report(
    spec: PipelineSpec,
    *,
    champion_version: int | None,
    evaluation: int,
    data: dict[str, Any] | None,
    window: dict[str, Any] | None,
    detections: list[dict[str, Any]],
    quality: dict[str, Any],
    at: float,
) -> dict[str, Any]:
    """The drift report above; data None means no data-drift monitor could evaluate (no champion yet)."""
    return {
        "contract": CONTRACT_VERSION,
        "at": iso_time(at),
        "model_name": spec.model.name,
        "champion_version": champion_version,
        "evaluation": evaluation,
        "window": window or dict(_NO_WINDOW),
        "data": data
        if data is not None
        else {
            "status": "not_evaluated",
            "drifted_share": None,
            "drifted": False,
            "drifted_columns": [],
            "features": {},
        },
        "concept": {
            "detector": spec.drift.concept.detector,
            "loss": spec.drift.concept.loss,
            "detections": list(detections),
        },
        "quality": quality,
    }


def epoch(iso: str) -> float:
    """An ISO-8601 time from a report or a labeled record as epoch seconds."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
