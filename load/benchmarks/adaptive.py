"""The adaptive loop's benchmark: how fast and how well the full stack adapts to a drift, and how quiet it is
without one.

    python -m driftloop.load.benchmarks.adaptive [--phase drift|stationary|both] [--json-out FILE] [--png FILE] ...

prints one JSON object. Each phase starts its own full embedded stack the way a user does
(`driftloop up` as a child process, in a temporary data dir, ports 0, the demo spec), waits until the
control plane and the retrain worker consume, then plays the demo stream (load/demo.py: the calibrated
synthetic card-fraud stream, outcomes 50 events after their event) and reads back what the loop did
from the `audit` and `labeled` topics.

drift phase (default 1,000 events/s, abrupt concept drift at event 100,000), until a retrained version is
promoted and `--after-promotion` seconds more have been played, or `--timeout` seconds after the onset:

- detection delay, in events: how many drifted events (index >= onset) had their outcome joined
  (`labeled`.joined_at) when the first "retrain_triggered" after the onset was decided: the evidence
  of the new concept that existed, at most what the control plane had read. Partitions are consumed
  unevenly, so "the event whose outcome fired the detection" (the audit record's
  `details.concept_detections[].detected_on`, also reported, minus the onset) can even precede the
  onset while drifted outcomes from faster partitions did the work. Also reported: the newest joined
  event, the detector's outcome count (`at_event`) minus the onset, and the events produced between
  the onset and the trigger (wall clock: adds the pipeline's lag).
- new champion: seconds from the onset event's production to the "promoted" audit record, and to the
  first prediction served by the promoted version as champion (`labeled`.predicted_at).
- accuracy after the promotion against a model trained only on post-drift data: a model of the promoted
  version's kind (its flavor and estimator) is trained offline on the features and labels of the
  post-drift events predicted before the promotion (from `labeled`), then scored on exactly the events
  the promoted version served as champion after the promotion; River models score prequentially (each
  event predicted, then learned), as the live champion learns online, ONNX models in one batch. The
  live figure is the served decisions' accuracy on the same events.

stationary phase (default 200,000 events at 3,000 events/s, no drift, played after the warm-up that
trains the first model): the retrainings the trigger policy started (every "retrain_triggered" audit
record) once the control plane has judged the whole stream: a false alarm each.

Targets, printed beside each figure: detection <= 2,000 events, new champion <= 120 s after the onset,
accuracy within 2 points of the post-drift model (or better), 0 retrainings without drift.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
import uuid
from bisect import bisect_right
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from driftloop import __version__
from driftloop import settings as settings_module
from driftloop.errors import DriftloopError
from driftloop.follow import TopicFollower
from driftloop.load.demo import (
    DEMO_STREAM,
    LABEL_DELAY,
    ONSET,
    StreamPlayer,
    drifted_after,
    play,
    stream_start,
)
from driftloop.load.generator import DriftPlan, FraudStream
from driftloop.load.run_records import Labeled, decode_labeled, json_object, read_between
from driftloop.load.timeline import Outcomes, RunRecords, draw_timeline, epoch, is_promotion, timeline_facts
from driftloop.process import ManagedProcess
from driftloop.settings import DEMO_SPEC, Settings
from driftloop.spec import PipelineSpec, load_spec
from driftloop.stack import running_stack

TARGET_DETECTION_EVENTS = 2000
TARGET_CHAMPION_SECONDS = 120.0
TARGET_ACCURACY_POINTS = 2.0
TARGET_STATIONARY_RETRAININGS = 0
STACK_READY_SECONDS = 420.0  # `driftloop up` on a busy 2-core machine, then Faust's first group join


# --- the stack ------------------------------------------------------------------------------------


class Stack:
    """`driftloop up` in a temporary directory, with every port free-picked; stopped on exit."""

    def __init__(self, workdir: Path, say: Callable[[str], None]):
        self.workdir, self.say = workdir, say
        self.data_dir = workdir / "data"
        environment = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("DRIFTLOOP_") and k not in ("KAFKA_BOOTSTRAP_SERVERS", "MLFLOW_TRACKING_URI")
        }
        environment.update(
            DRIFTLOOP_DATA_DIR=str(self.data_dir),
            DRIFTLOOP_FEAST_REPO=str(workdir / "feature_repo"),
            DRIFTLOOP_BROKER_PORT="0",
            DRIFTLOOP_MLFLOW_PORT="0",
            DRIFTLOOP_METRICS_PORT="0",
            DRIFTLOOP_SUPERVISOR_PORT="0",
            DRIFTLOOP_SPEC=str(DEMO_SPEC),
        )
        self.process = ManagedProcess(
            "driftloop up", [sys.executable, "-m", "driftloop.cli", "up"], workdir / "up.log", env=environment
        )
        self.info: dict[str, Any] = {}

    def __enter__(self) -> Stack:
        started = time.monotonic()
        self.process.start()
        try:
            self.process.wait_ready(
                lambda: bool(running_stack(self.data_dir)) and self._logged("up.log", "stack is up"),
                timeout=STACK_READY_SECONDS,
                what="bringing the stack up",
            )
            self.info = running_stack(self.data_dir)
            # The control plane's consumers start at the end of the topics when they first join the group
            # (Faust waits for the join); a stream started before that is half unseen.
            self.process.wait_ready(
                lambda: (
                    self._logged("data/logs/control.log", "[^Worker]: Ready")
                    and self._logged("data/logs/retrain-worker.log", "consuming")
                ),
                timeout=STACK_READY_SECONDS,
                what="the control plane and retrain worker consuming",
            )
        except BaseException:
            self.process.stop()
            raise
        self.ready_seconds = round(time.monotonic() - started, 1)
        self.say(
            f"stack up and the loop consuming after {self.ready_seconds:.0f} s: {self.info.get('bootstrap')}, "
            f"MLflow {self.info.get('mlflow_tracking_uri')}"
        )
        return self

    def __exit__(self, *_exc: object) -> None:
        self.process.stop(grace=30)

    def _logged(self, relative: str, text: str) -> bool:
        try:
            return text in (self.workdir / relative).read_text(errors="replace")
        except OSError:
            return False

    @property
    def bootstrap(self) -> str:
        return self.info["bootstrap"]

    @property
    def tracking_uri(self) -> str:
        return self.info["mlflow_tracking_uri"]


def _default_settings() -> Settings:
    """The topic names the stack uses: its environment sets none."""
    return settings_module.load(environ={})


def _joined_outcomes(metrics_urls: list[str]) -> int:
    """Outcomes the workers have joined so far (their `driftloop_outcomes_total{result="joined"}`)."""
    from driftloop.status import scrape

    total = 0
    for url in metrics_urls:
        try:
            samples = scrape(url)
        except (OSError, ValueError):
            continue
        total += int(
            sum(
                value
                for labels, value in samples.get("driftloop_outcomes_total", [])
                if labels.get("result") == "joined"
            )
        )
    return total


def _event_index(event_id: str) -> int:
    return int(event_id.rsplit("-", 1)[1])


# --- the drift phase ------------------------------------------------------------------------------


def drift_phase(options: argparse.Namespace, workdir: Path, say: Callable[[str], None]) -> dict[str, Any]:
    spec = load_spec(DEMO_SPEC)
    settings = _default_settings()
    with Stack(workdir, say) as stack:
        stream = FraudStream(
            seed=options.seed,
            drift=DriftPlan("abrupt", options.onset, concept=True),
            start=stream_start(
                options.onset + int(options.rate * (options.timeout + 600)),
                1 / DEMO_STREAM["events_per_second"],
                time.time(),
            ),
            id_prefix=f"bench-{uuid.uuid4().hex[:6]}-",
            **DEMO_STREAM,
        )
        player = StreamPlayer(
            stream, stack.bootstrap, settings.topic_events, settings.topic_outcomes, label_delay=LABEL_DELAY
        )
        watch = TopicFollower(stack.bootstrap, settings.topic_audit, settings.partitions)
        state: dict[str, Any] = {"onset": None, "promoted": None}
        started = time.time()

        def tick() -> None:
            if state["onset"] is None and player.produced > options.onset:
                state["onset"] = player.sent_at[options.onset]
                say(f"onset: event {options.onset} produced")
            for record in watch.poll():
                if record.get("action") in (
                    "retrain_triggered",
                    "challenger_set",
                    "rejected",
                    "promoted",
                    "rolled_back",
                    "retrain_failed",
                ):
                    say(
                        f"{record.get('actor')} {record.get('action')} v{record.get('version')}: {record.get('reason')}"
                    )
                if (
                    is_promotion(record)
                    and state["onset"] is not None
                    and state["promoted"] is None
                    and epoch(record["at"]) >= state["onset"]
                ):
                    state["promoted"] = epoch(record["at"])

        def done() -> bool:
            if state["promoted"] is not None:
                return time.time() - state["promoted"] >= options.after_promotion
            return state["onset"] is not None and time.time() - state["onset"] >= options.timeout

        try:
            play(player, options.rate, until=done, on_tick=tick)
        finally:
            watch.close()
            player.flush(30)
        ended = time.time()
        time.sleep(3)  # the last outcomes' join
        say(f"played {player.produced:,} events in {ended - started:.0f} s; reading the run back")
        labeled = read_between(stack.bootstrap, settings.topic_labeled, started - 1, time.time(), decode_labeled)
        audit = read_between(stack.bootstrap, settings.topic_audit, started - 1, time.time(), json_object)
        drift = read_between(stack.bootstrap, settings.topic_drift, started - 1, time.time(), json_object)
        run = RunRecords(
            started - 1,
            ended,
            Outcomes.of(labeled, drifted_after(stream.id_prefix, options.onset)),
            _sorted(audit),
            _sorted(drift),
            spec.drift.drifted_share,
        )
        onset = state["onset"]
        if onset is None:
            raise DriftloopError("the drift phase ended before its onset event was produced")
        facts = timeline_facts(run, onset)
        if options.png:
            draw_timeline(
                run,
                facts,
                options.png,
                title=f"adaptive_bench: concept drift at event {options.onset:,} ({options.rate:g} events/s)",
            )
        promoted = next((r for r in run.audit if is_promotion(r) and epoch(r["at"]) >= onset), None)
        accuracy = (
            _accuracy_against_post_drift_model(
                spec, stack.tracking_uri, labeled, options.onset, int(promoted["version"]), epoch(promoted["at"])
            )
            if promoted is not None
            else None
        )
        return {
            "stack_ready_seconds": stack.ready_seconds,
            "rate_offered": options.rate,
            "rate_achieved": round(player.produced / (ended - started), 1),
            "events_produced": player.produced,
            "onset_event": options.onset,
            "stream": {
                **DEMO_STREAM,
                "label_delay_events": LABEL_DELAY,
                "seed": options.seed,
                "drift": "abrupt concept drift",
            },
            "detection": _detection(run, labeled, player.sent_at, onset, options.onset),
            "new_champion": _new_champion(facts),
            "accuracy": accuracy,
            "timeline": facts,
        }


def _sorted(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted((r for r in records if isinstance(r.get("at"), str)), key=lambda r: epoch(r["at"]))


def _detection(run: RunRecords, labeled: list[Labeled], sent_at: Any, onset: float, onset_event: int) -> dict[str, Any]:
    trigger = next((r for r in run.audit if r.get("action") == "retrain_triggered" and epoch(r["at"]) >= onset), None)
    result: dict[str, Any] = {"target_events": TARGET_DETECTION_EVENTS, "met": False, "delay_events": None}
    if trigger is None:
        return {**result, "triggered": False}
    at = epoch(trigger["at"])
    details = trigger.get("details") or {}
    detections = details.get("concept_detections") or []
    joined_by_then = [_event_index(r.event_id) for r in labeled if epoch(r.joined_at) <= at]
    drifted_joined = sum(index >= onset_event for index in joined_by_then)
    fired_on = [d["detected_on"]["event_id"] for d in detections if (d.get("detected_on") or {}).get("event_id")]
    return {
        **result,
        "triggered": True,
        "delay_events": drifted_joined,
        "method": "drifted events whose outcomes had been joined when the trigger was decided (the control "
        "plane had seen at most these)",
        "met": drifted_joined <= TARGET_DETECTION_EVENTS,
        "newest_joined_event_minus_onset": max(joined_by_then) - onset_event if joined_by_then else None,
        "fired_on_event_minus_onset": (min(_event_index(e) for e in fired_on) - onset_event) if fired_on else None,
        "outcomes_seen_minus_onset": [d["at_event"] - onset_event for d in detections if "at_event" in d],
        "events_produced_onset_to_trigger": bisect_right(sent_at, at) - onset_event,
        "seconds_after_onset": round(at - onset, 2),
        "reason_code": details.get("reason_code"),
        "concept_detections": detections,
        "sentence": trigger.get("reason"),
    }


def _new_champion(facts: dict[str, Any]) -> dict[str, Any]:
    seconds = facts["seconds_from_onset"]
    serving = seconds["new_champion_serving"]
    return {
        "promoted_version": facts["promoted_version"],
        "promoted_by": facts["promoted_by"],
        "promoted_seconds_after_onset": seconds["promotion"],
        "serving_seconds_after_onset": serving,
        "target_seconds": TARGET_CHAMPION_SECONDS,
        "met": serving is not None and serving <= TARGET_CHAMPION_SECONDS,
        "challenger_seconds_after_onset": seconds["challenger"],
        "detection_seconds_after_onset": seconds["detection"],
        "rollbacks": len(facts["rollbacks"]),
    }


def _accuracy_against_post_drift_model(
    spec: PipelineSpec, tracking_uri: str, labeled: list[Labeled], onset_event: int, version: int, promoted_at: float
) -> dict[str, Any]:
    """The promoted version's live accuracy after the promotion, against a model of its kind trained offline on
    the post-drift events predicted before the promotion, on the same events (module docstring)."""
    from mlflow.tracking import MlflowClient

    from driftloop.models.flavors import train, with_model
    from driftloop.models.registry import FLAVOR_TAG, version_info, version_tags

    flavor = version_tags(spec.model.name, version, tracking_uri=tracking_uri)[FLAVOR_TAG]
    run_id = version_info(spec.model.name, version, tracking_uri=tracking_uri).run_id
    estimator = MlflowClient(tracking_uri).get_run(run_id).data.params["estimator"]
    kind = with_model(spec, flavor, estimator)

    by_event = sorted(labeled, key=lambda r: _event_index(r.event_id))
    seen: set[str] = set()
    training, evaluation = [], []
    for record in by_event:
        if record.event_id in seen:  # a re-emitted prediction after a worker restart: the first one counts
            continue
        seen.add(record.event_id)
        predicted = epoch(record.predicted_at)
        if _event_index(record.event_id) >= onset_event and predicted < promoted_at:
            training.append(record)
        elif predicted >= promoted_at and record.variant == "champion" and record.model_version == version:
            evaluation.append(record)
    if not training or not evaluation:
        return {
            "promoted_version": version,
            "error": f"{len(training)} post-drift events before the promotion, "
            f"{len(evaluation)} served by v{version} after it",
        }
    rows, labels = [r.features for r in training], [r.label for r in training]
    started = time.perf_counter()
    model = train(kind, rows, labels)
    if not model.online:
        scores = model.predict_proba([r.features for r in evaluation])
    else:
        scores = np.empty(len(evaluation))
        for i, record in enumerate(evaluation):  # prequential, as the live champion learns online
            scores[i] = model.predict_proba([record.features])[0]
            model.learn([record.features], [record.label])
    seconds = time.perf_counter() - started
    truth = np.array([r.label for r in evaluation])
    offline = float(np.mean((scores >= spec.model.threshold) == truth))
    live = float(np.mean(np.array([r.decision for r in evaluation]) == truth))
    points = round((live - offline) * 100, 2)
    return {
        "promoted_version": version,
        "flavor": flavor,
        "estimator": estimator,
        "live_after_promotion": round(live, 4),
        "post_drift_model": round(offline, 4),
        "difference_points": points,
        "target_points": TARGET_ACCURACY_POINTS,
        "met": points >= -TARGET_ACCURACY_POINTS,
        "evaluated_events": len(evaluation),
        "post_drift_training_events": len(training),
        "post_drift_model_seconds": round(seconds, 1),
    }


# --- the stationary phase -------------------------------------------------------------------------


def _play_warm_up(
    player: StreamPlayer,
    stack: Stack,
    settings: Settings,
    rate: float,
    say: Callable[[str], None],
    timeout: float = 600.0,
) -> int:
    """Play the stream until the first trained model has replaced the demo's warm-up placeholder (its
    retraining is not a drift's); returns the events that took."""
    watch = TopicFollower(stack.bootstrap, settings.topic_audit, settings.partitions)
    deadline = time.time() + timeout
    try:

        def first_model() -> bool:
            if any(r.get("action") == "promoted" for r in watch.poll()):
                return True
            if time.time() > deadline:
                raise DriftloopError(f"no first model replaced the warm-up placeholder within {timeout:g} s")
            return False

        play(player, rate, until=first_model, on_tick=lambda: None)
    finally:
        watch.close()
    say(
        f"stationary: the first model replaced the placeholder after {player.produced:,} events; "
        f"the stationary stream is judged from here"
    )
    return player.produced


def stationary_phase(options: argparse.Namespace, workdir: Path, say: Callable[[str], None]) -> dict[str, Any]:
    settings = _default_settings()
    with Stack(workdir, say) as stack:
        events = options.stationary_events
        # room in event time for the warm-up too (a lagging worker makes it take several times its 48,200 events)
        stream = FraudStream(
            seed=options.seed,
            start=stream_start(3 * events, 1 / DEMO_STREAM["events_per_second"], time.time()),
            id_prefix=f"bench-{uuid.uuid4().hex[:6]}-",
            **DEMO_STREAM,
        )
        player = StreamPlayer(
            stream, stack.bootstrap, settings.topic_events, settings.topic_outcomes, label_delay=LABEL_DELAY
        )
        warmup_events = _play_warm_up(player, stack, settings, options.stationary_rate, say)
        started = time.time()
        last = [started]

        def progress() -> None:
            if time.time() - last[0] >= 15:
                last[0] = time.time()
                say(f"stationary: {player.produced - warmup_events:,} of {events:,} events produced")

        play(player, options.stationary_rate, until=lambda: False, on_tick=progress, limit=events)
        produced_seconds = time.time() - started
        player.send_waiting_outcomes()
        player.flush(60)
        # Judge the whole stream: wait until the workers have joined (nearly) every outcome, or stop advancing.
        urls = stack.info.get("metrics_urls") or []
        joined, waited_from, previous = 0, time.monotonic(), -1
        while joined < 0.99 * player.produced and time.monotonic() - waited_from < options.settle:
            joined = _joined_outcomes(urls)
            if joined != previous:
                previous, waited_from = joined, time.monotonic()
            time.sleep(2)
        time.sleep(5)  # the control plane reads labeled after the workers wrote it
        audit = read_between(stack.bootstrap, settings.topic_audit, started - 1, time.time(), json_object)
        drift = read_between(stack.bootstrap, settings.topic_drift, started - 1, time.time(), json_object)
    triggered = [r for r in audit if r.get("action") == "retrain_triggered"]
    reasons: dict[str, int] = {}
    for record in triggered:
        code = str((record.get("details") or {}).get("reason_code"))
        reasons[code] = reasons.get(code, 0) + 1
    evaluated = [r for r in drift if (r.get("data") or {}).get("status") == "evaluated"]
    return {
        "stack_ready_seconds": stack.ready_seconds,
        "warmup_events": warmup_events,
        "events": player.produced - warmup_events,
        "rate_offered": options.stationary_rate,
        "rate_achieved": round((player.produced - warmup_events) / produced_seconds, 1),
        "outcomes_joined": joined,
        "drift_reports": len(drift),
        "data_drift_evaluations": len(evaluated),
        "data_drift_windows_drifted": sum(bool(r["data"].get("drifted")) for r in evaluated),
        "concept_detections": sum(len((r.get("concept") or {}).get("detections") or []) for r in drift),
        "retrainings_triggered": len(triggered),
        "by_reason": reasons,
        "target_retrainings": TARGET_STATIONARY_RETRAININGS,
        "met": len(triggered) <= TARGET_STATIONARY_RETRAININGS,
        "first_triggers": [r.get("reason") for r in triggered[:3]],
    }


# --- the command ----------------------------------------------------------------------------------


def run(options: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "command": "python -m driftloop.load.benchmarks.adaptive " + " ".join(sys.argv[1:]),
        "driftloop": __version__,
        "machine": {
            "cores": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average_at_start": [round(v, 2) for v in os.getloadavg()],
        },
        "spec": DEMO_SPEC.name,
        "targets": {
            "detection_events": TARGET_DETECTION_EVENTS,
            "champion_seconds": TARGET_CHAMPION_SECONDS,
            "accuracy_points": TARGET_ACCURACY_POINTS,
            "stationary_retrainings": TARGET_STATIONARY_RETRAININGS,
        },
    }
    with ExitStack() as cleanup:
        workdir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="driftloop-adaptive-")))
        if options.phase in ("drift", "both"):
            result["drift"] = drift_phase(options, workdir / "drift", say)
        if options.phase in ("stationary", "both"):
            result["stationary"] = stationary_phase(options, workdir / "stationary", say)
    met = []
    if "drift" in result:
        drift = result["drift"]
        met += [
            drift["detection"]["met"],
            drift["new_champion"]["met"],
            bool(drift["accuracy"] and drift["accuracy"].get("met")),
        ]
    if "stationary" in result:
        met.append(result["stationary"]["met"])
    result["targets_met"] = all(met)
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m driftloop.load.benchmarks.adaptive", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--phase",
        choices=("drift", "stationary", "both"),
        default="both",
        help="which phase to run (default both, each on its own fresh stack)",
    )
    parser.add_argument("--rate", type=float, default=1000.0, help="drift phase: events/s (default 1000)")
    parser.add_argument("--onset", type=int, default=ONSET, help=f"drift phase: first drifted event (default {ONSET})")
    parser.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="drift phase: stop this many seconds after the onset without a promotion (default 600)",
    )
    parser.add_argument(
        "--after-promotion",
        type=float,
        default=60.0,
        help="drift phase: seconds played after the promotion, to judge the new champion (default 60)",
    )
    parser.add_argument(
        "--stationary-events", type=int, default=200_000, help="stationary phase: events (default 200000)"
    )
    parser.add_argument(
        "--stationary-rate", type=float, default=3000.0, help="stationary phase: events/s (default 3000)"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=120.0,
        help="stationary phase: wait at most this long without progress for the outcomes' join",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--png", help="drift phase: also draw its timeline to this PNG")
    parser.add_argument("--json-out", help="also write the JSON report to this file")
    return parser


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    say = lambda line: print(f"driftloop: adaptive_bench: {line}", file=sys.stderr, flush=True)  # noqa: E731
    # SIGTERM unwinds like Ctrl-C, so the stacks this run started are stopped either way.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        result = run(options, say)
    except DriftloopError as exc:
        print(f"driftloop: adaptive_bench: error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    text = json.dumps(result, indent=2, default=str)
    if options.json_out:
        Path(options.json_out).write_text(text + "\n")
    print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
