"""The timeline of a run: how accurate the served models were while the world drifted, and what the loop did.

    run = read_run(bootstrap, settings, since, until)        # labeled, audit and drift records of the run
    facts = timeline_facts(run, onset)                       # when things happened, accuracy per phase
    draw_timeline(run, facts, "timeline.png", title=...)     # the PNG

or `write_timeline(...)`, which does all three. Times are wall-clock epoch seconds; `onset` is when the
first drifted event was produced (the demo records it). When the caller can tell drifted events by their
id (`is_drifted(event_id)`, the demo can: its ids count events), the phases are split by event rather than
by time, and the moment the first drifted event was scored is marked too: a pipeline that lags behind its
input scores the drift later than it was produced, and its partitions may lag unevenly.

The PNG's upper panel is the rolling accuracy (decision == label over the last `window` outcomes) of
each variant, champion and canary, by the wall time of the prediction, with vertical markers for the
drift onset and the loop's decisions from the audit topic: retraining triggered, challenger set,
promoted, rolled back. The lower panel is the data-drift share of each drift report (with the spec's
threshold) and the concept-drift detections.

The facts (a JSON-able dict, see `timeline_facts`): detection is the first "retrain_triggered" at or
after the onset; challenger the first "challenger_set" after that; promotion the first "promoted"
after the onset by the promotion controller or an operator (`is_promotion`: not a warm-up's);
new_champion_serving the first prediction of the promoted version. Accuracy before the drift is over the
last `window` champion outcomes of events before the drift (the online model has learned by then);
after the drift over the champion outcomes of drifted events predicted until the promotion (the old
model, learning online, on the new concept); after the promotion over the promoted version's champion
outcomes predicted after it.
Without `is_drifted`, the events before the drift are those predicted before the onset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from driftloop.load.run_records import json_object, read_between
from driftloop.settings import Settings
from driftloop.streams.contracts import iso_time

DEFAULT_WINDOW = 1000  # outcomes in the rolling accuracy
_PLOTTED_POINTS = 3000  # per line: enough for the eye, and the PNG stays quick to draw
_SILENCE_SECONDS = 30.0  # a run whose outcomes stop this long before its end (a lagging join): the PNG says so


class _LabeledFields(msgspec.Struct):
    """The fields of a labeled record (streams/worker/join.py) the timeline reads."""

    event_id: str
    predicted_at: str
    decision: int
    label: int
    variant: str
    model_version: int


_decode_labeled = msgspec.json.Decoder(_LabeledFields).decode


@dataclass(frozen=True)
class Outcomes:
    """Labeled records as columns, in prediction order."""

    predicted_at: np.ndarray  # epoch seconds (float64)
    correct: np.ndarray  # decision == label (bool)
    canary: np.ndarray  # served as the canary (bool); else by the champion
    version: np.ndarray  # model version that served it (int64)
    drifted: np.ndarray | None = None  # the event is past the drift (bool), when the caller can tell

    @classmethod
    def of(cls, records: list[Any], is_drifted: Callable[[str], bool] | None = None) -> Outcomes:
        """From labeled records (anything with the fields of `_LabeledFields`)."""
        predicted_at = np.array([epoch(r.predicted_at) for r in records], dtype=np.float64)
        order = np.argsort(predicted_at, kind="stable")
        drifted = None if is_drifted is None else np.array([is_drifted(r.event_id) for r in records], dtype=bool)
        return cls(
            predicted_at[order],
            np.array([r.decision == r.label for r in records], dtype=bool)[order],
            np.array([r.variant == "canary" for r in records], dtype=bool)[order],
            np.array([r.model_version for r in records], dtype=np.int64)[order],
            None if drifted is None else drifted[order],
        )

    def __len__(self) -> int:
        return len(self.predicted_at)


@dataclass(frozen=True)
class RunRecords:
    since: float
    until: float
    outcomes: Outcomes
    audit: list[dict[str, Any]]  # in time order
    drift: list[dict[str, Any]]  # in time order
    drifted_share_threshold: float | None = None  # the spec's drift.drifted_share, for the lower panel


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def read_run(
    bootstrap: str,
    settings: Settings,
    since: float,
    until: float,
    *,
    drifted_share_threshold: float | None = None,
    is_drifted: Callable[[str], bool] | None = None,
) -> RunRecords:
    """The labeled, audit and drift records written between `since` and `until` (epoch seconds)."""
    labeled = read_between(bootstrap, settings.topic_labeled, since, until, _decode_labeled)
    audit = read_between(bootstrap, settings.topic_audit, since, until, json_object)
    drift = read_between(bootstrap, settings.topic_drift, since, until, json_object)
    return RunRecords(
        since, until, Outcomes.of(labeled, is_drifted), _by_time(audit), _by_time(drift), drifted_share_threshold
    )


def _by_time(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    timed = [r for r in records if isinstance(r.get("at"), str)]
    return sorted(timed, key=lambda r: epoch(r["at"]))


# --- facts ----------------------------------------------------------------------------------------


def is_promotion(record: dict[str, Any]) -> bool:
    """A new champion by the promotion controller or an operator; not the warm-up model replacing the
    placeholder (actor "retrain"), which answers no drift."""
    return record.get("action") == "promoted" and record.get("actor") != "retrain"


def _first(audit: list[dict[str, Any]], action: str, after: float | None) -> dict[str, Any] | None:
    if after is None:
        return None
    matches = is_promotion if action == "promoted" else (lambda r: r.get("action") == action)
    return next((r for r in audit if matches(r) and epoch(r["at"]) >= after), None)


def _at(record: dict[str, Any] | None) -> float | None:
    return None if record is None else epoch(record["at"])


def _accuracy(correct: np.ndarray) -> float | None:
    return round(float(correct.mean()), 4) if len(correct) else None


def timeline_facts(run: RunRecords, onset: float, window: int = DEFAULT_WINDOW) -> dict[str, Any]:
    """When the loop reacted to the drift at `onset`, and how accurate the champion was in each phase."""
    audit, outcomes = run.audit, run.outcomes
    detection = _first(audit, "retrain_triggered", onset)
    challenger = _first(audit, "challenger_set", _at(detection))
    promotion = _first(audit, "promoted", onset)
    promoted_at = _at(promotion)
    promoted_version = promotion.get("version") if promotion else None

    champion = ~outcomes.canary
    at = outcomes.predicted_at
    drifted = outcomes.drifted if outcomes.drifted is not None else at >= onset
    before = outcomes.correct[champion & ~drifted][-window:]
    drifted_until = promoted_at if promoted_at is not None else run.until
    after_drift = champion & drifted & (at < drifted_until)
    first_scored = float(at[outcomes.drifted][0]) if outcomes.drifted is not None and outcomes.drifted.any() else None
    if promoted_version is not None:
        after_drift &= outcomes.version != promoted_version
        served = champion & (outcomes.version == promoted_version) & (at >= promoted_at)
    else:
        served = np.zeros(len(outcomes), dtype=bool)
    new_champion_serving = float(at[served][0]) if served.any() else None

    times = {
        "drift_first_scored": first_scored,
        "detection": _at(detection),
        "challenger": _at(challenger),
        "promotion": promoted_at,
        "new_champion_serving": new_champion_serving,
    }
    return {
        "onset": iso_time(onset),
        "drift_first_scored": _iso(first_scored),
        "detection": _iso(times["detection"]),
        "detection_reason": (detection or {}).get("details", {}).get("reason_code"),
        "challenger": _iso(times["challenger"]),
        "challenger_version": challenger.get("version") if challenger else None,
        "promotion": _iso(promoted_at),
        "promoted_version": promoted_version,
        "promoted_by": promotion.get("actor") if promotion else None,
        "new_champion_serving": _iso(new_champion_serving),
        "rollbacks": [
            {"at": r["at"], "version": r.get("version"), "actor": r.get("actor"), "reason": r.get("reason")}
            for r in audit
            if r.get("action") == "rolled_back"
        ],
        "seconds_from_onset": {
            name: None if value is None else round(value - onset, 2) for name, value in times.items()
        },
        "accuracy_before_drift": _accuracy(before),
        "accuracy_after_drift": _accuracy(outcomes.correct[after_drift]),
        "accuracy_after_promotion": _accuracy(outcomes.correct[served]),
        "outcomes": {
            "before_drift": int(len(before)),
            "after_drift": int(after_drift.sum()),
            "after_promotion": int(served.sum()),
            "all": len(outcomes),
        },
        "window": window,
    }


def _iso(moment: float | None) -> str | None:
    return None if moment is None else iso_time(moment)


# --- drawing --------------------------------------------------------------------------------------

# audit action -> (legend label, colour, line style); drawn as vertical lines in both panels
_MARKERS = {
    "retrain_triggered": ("retraining triggered (drift detected)", "tab:orange", "-"),
    "challenger_set": ("retrained model ready (challenger)", "tab:purple", "-."),
    "promoted": ("promoted: new champion", "tab:green", "-"),
    "rolled_back": ("rolled back", "black", ":"),
}


def rolling_accuracy(correct: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last `window` values at each position (of all values so far, before there are that many)."""
    sums = np.cumsum(correct, dtype=np.float64)
    lagged = np.zeros_like(sums)
    lagged[window:] = sums[:-window] if len(sums) > window else []
    counts = np.minimum(np.arange(1, len(sums) + 1), window)
    return (sums - lagged) / counts


def _thin(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    if len(arrays[0]) <= _PLOTTED_POINTS:
        return arrays
    keep = np.linspace(0, len(arrays[0]) - 1, _PLOTTED_POINTS).astype(np.int64)
    return tuple(a[keep] for a in arrays)


def draw_timeline(
    run: RunRecords, facts: dict[str, Any], path: str | Path, *, title: str, window: int = DEFAULT_WINDOW
) -> Path:
    """Write the PNG (see the module docstring) and return its path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a server
    from matplotlib import pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    zero = run.since
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(11, 6.5), height_ratios=(3, 1), layout="constrained")
    try:
        outcomes = run.outcomes
        lowest: float | None = None  # of the accuracy lines, past a cold start
        for canary, label, colour in ((False, "champion", "tab:blue"), (True, "canary (challenger)", "tab:red")):
            chosen = outcomes.canary == canary
            if chosen.sum() < 2:
                continue
            accuracy = rolling_accuracy(outcomes.correct[chosen], window)
            # A model starting cold climbs from nowhere: the scale starts once it reached its usual level.
            settled = accuracy[int(np.argmax(accuracy >= np.median(accuracy))) :]
            lowest = float(settled.min()) if lowest is None else min(lowest, float(settled.min()))
            x, y = _thin(outcomes.predicted_at[chosen] - zero, accuracy)
            top.plot(x, y, color=colour, linewidth=1.2 if not canary else 0.9, label=f"{label}: accuracy")
        if len(outcomes) and run.until - outcomes.predicted_at[-1] > _SILENCE_SECONDS:
            top.annotate(
                "no outcome joined for later predictions (yet)",
                (outcomes.predicted_at[-1] - zero, 0.02),
                xycoords=("data", "axes fraction"),
                xytext=(4, 0),
                textcoords="offset points",
                fontsize=8,
                color="tab:blue",
            )
        top.set_ylabel(f"accuracy over the last {window}\noutcomes of each variant")
        top.set_ylim(0.0 if lowest is None else max(0.0, lowest - 0.1), 1.02)
        top.grid(alpha=0.3)
        top.set_title(title)

        drift = [r for r in run.drift if (r.get("data") or {}).get("drifted_share") is not None]
        if drift:
            bottom.plot(
                [epoch(r["at"]) - zero for r in drift],
                [r["data"]["drifted_share"] for r in drift],
                color="tab:gray",
                marker=".",
                markersize=3,
                linewidth=0.8,
                label="data drift: share of drifted input columns",
            )
        if run.drifted_share_threshold is not None:
            bottom.axhline(
                run.drifted_share_threshold,
                color="tab:gray",
                linestyle="--",
                linewidth=0.8,
                label="data-drift threshold (spec)",
            )
        detections = [epoch(r["at"]) - zero for r in run.drift if (r.get("concept") or {}).get("detections")]
        if detections:
            bottom.plot(
                detections,
                [1.0] * len(detections),
                linestyle="none",
                marker="v",
                color="tab:red",
                label="concept drift detected (loss rose)",
            )
        bottom.set_ylim(-0.05, 1.1)
        bottom.set_ylabel("drift")
        bottom.grid(alpha=0.3)
        bottom.set_xlabel(f"seconds since the run started ({iso_time(zero)}), wall clock, by prediction time")

        onset = epoch(facts["onset"]) - zero
        scored = facts.get("drift_first_scored")
        for axis in (top, bottom):
            axis.axvline(
                onset,
                color="tab:red",
                linestyle="--",
                linewidth=1.5,
                label="drift onset (first drifted event produced)" if axis is top else None,
            )
            if scored is not None:
                axis.axvline(
                    epoch(scored) - zero,
                    color="tab:red",
                    linestyle=":",
                    linewidth=1.5,
                    label="first drifted event scored" if axis is top else None,
                )
            seen: set[str] = set()
            for record in run.audit:
                style = _MARKERS.get(record.get("action", ""))
                if style is None:
                    continue
                label, colour, line = style
                first = record["action"] not in seen and axis is top
                seen.add(record["action"])
                axis.axvline(
                    epoch(record["at"]) - zero,
                    color=colour,
                    linestyle=line,
                    linewidth=1.3,
                    label=label if first else None,
                )
        if facts.get("promotion") and facts.get("promoted_version") is not None:
            top.annotate(
                f"v{facts['promoted_version']}",
                (epoch(facts["promotion"]) - zero, 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(3, -12),
                textcoords="offset points",
                color="tab:green",
            )
        top.legend(loc="lower left", fontsize=8, framealpha=0.9)
        if bottom.get_legend_handles_labels()[0]:
            bottom.legend(loc="upper left", fontsize=8, framealpha=0.9)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def write_timeline(
    bootstrap: str,
    settings: Settings,
    since: float,
    until: float,
    onset: float,
    path: str | Path,
    *,
    title: str,
    drifted_share_threshold: float | None = None,
    window: int = DEFAULT_WINDOW,
    is_drifted: Callable[[str], bool] | None = None,
) -> dict[str, Any]:
    """Read the run from the broker, draw the PNG at `path`, and return the facts (with "png": the path)."""
    run = read_run(
        bootstrap, settings, since, until, drifted_share_threshold=drifted_share_threshold, is_drifted=is_drifted
    )
    facts = timeline_facts(run, onset, window)
    draw_timeline(run, facts, path, title=title, window=window)
    return {**facts, "png": str(path)}
