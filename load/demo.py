"""The scripted demo `driftloop up --demo` runs: a fraud stream that drifts, and the loop catching it.

    python -m driftloop.load.demo [--rate 1000] [--onset 100000] [--timeout 600] [--mlflow-url URL] ...

1. Produces the synthetic card-fraud stream (load/generator.py) at `--rate` events per second, each
   outcome `--label-delay` events after its event, with an abrupt concept drift at event `--onset`
   (the fraud pattern changes; the inputs' distribution does not), and notes the wall time at which
   the first drifted event went out.
2. Follows the audit topic and prints the loop's decisions as they come: retraining triggered,
   challenger set, canary trial, promoted or rolled back.
3. Once a "promoted" record (`is_promotion`: not the warm-up's) appears after the onset, goes on
   `--after-promotion` seconds (so the new champion has outcomes to be judged on), then writes the
   timeline PNG (load/timeline.py) to `<data dir>/demo-timeline.png` and prints where it is and where
   the MLflow UI shows the retraining runs (experiment = spec name) and the model versions (registered
   model = spec.model.name).
4. Keeps producing the drifted stream until SIGTERM/SIGINT, and then exits 0.

Without a promotion `--timeout` seconds after the onset it writes the PNG anyway, says so on stderr
and exits 1.

The stream's defaults are the calibrated demo stream (`load/benchmarks/drift_calibration.py`): 2,000 cards, 5 %
fraud, one event every 2 s of event time, so the spec's 24 h windows fill after 43,200 events; the first
model is trained on the 5,000 outcomes after that (the placeholder serves until then), and the default
onset falls well after it and after the data-drift reference. Event time runs ahead
of the wall clock (2,000 simulated seconds per second at 1,000 events/s), so the stream starts far
enough in the past that the scripted part never reaches the present; should a long-running demo
get there, it slows down rather than send events from the future (the validator dead-letters those).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import urllib.parse
import urllib.request
import uuid
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from driftloop import kafka
from driftloop import settings as settings_module
from driftloop.cli import positive
from driftloop.errors import DriftloopError
from driftloop.follow import TopicFollower
from driftloop.load.generator import DriftPlan, FraudStream, StreamShape, _send, encode
from driftloop.load.timeline import DEFAULT_WINDOW, epoch, is_promotion, write_timeline
from driftloop.loop_status import decision_line
from driftloop.models import registry_rest
from driftloop.settings import Settings
from driftloop.spec import PipelineSpec, load_spec
from driftloop.stack import running_stack

TIMELINE_FILE = "demo-timeline.png"
# The calibrated demo stream of load/benchmarks/drift_calibration.py (DEMO_STREAM, LABEL_DELAY, ONSET), repeated here
# because importing that module loads Evidently (seconds); tests/integration/test_demo.py checks they agree.
DEMO_STREAM: StreamShape = {"users": 2000, "fraud_rate": 0.05, "events_per_second": 0.5}
LABEL_DELAY = 50
ONSET = 100_000
_PROGRESS_SECONDS = 15.0
# Like an upstream service batching its sends. At 500 events/s the default 5 ms linger makes batches of
# one or two records, each of which the embedded broker pays for when it stores it and again, in
# proportion to the batches a partition holds, in every fetch: at 5 ms it spent a core from the first
# minute and the worker fell behind after the drift onset. Adds up to 100 ms to the latency shown.
_LINGER_MS = 100
_QUIET_ACTIONS = frozenset({"canary_waiting", "retrain_declined"})  # progress noise, not decisions worth a line
# Marks the lines that repeat an audit record: `driftloop up --demo` shows those from the topic itself.
DECISION = "decision: "


class Stopped(Exception):
    """SIGTERM/SIGINT: raised in the main thread so the demo stops wherever it is."""


def _raise_stopped(signum: int, _frame: object) -> None:
    raise Stopped(signal.Signals(signum).name)


def stream_start(events: int, event_seconds: float, now: float) -> datetime:
    """When a stream must start so that `events` events, `event_seconds` of event time apart on average, end
    before `now`: with a tenth to spare, as the gaps are random (and sum to more than their mean about half
    the time)."""
    return datetime.fromtimestamp(now - 1.1 * events * event_seconds, UTC)


class StreamPlayer:
    """Produces a FraudStream's events, each outcome `label_delay` events after its event.

    `sent_at[i]` is the wall time event i was handed to the producer. Never sends an event whose event
    time lies ahead of the wall clock: `produce` stops short instead.
    """

    def __init__(
        self, stream: FraudStream, bootstrap: str, events_topic: str, outcomes_topic: str, *, label_delay: int
    ):
        self.bootstrap = bootstrap
        self.events_topic, self.outcomes_topic = events_topic, outcomes_topic
        self.label_delay = label_delay
        self.failures: list[str] = []
        self.producer = kafka.producer(bootstrap, on_delivery=self._delivered, **{"linger.ms": _LINGER_MS})
        self.sent_at = array("d")
        self._pairs: Iterator[tuple[dict[str, Any], dict[str, Any]]] = iter(stream)
        self._next = next(self._pairs)
        self._waiting: deque[dict[str, Any]] = deque()

    @property
    def produced(self) -> int:
        return len(self.sent_at)

    def _delivered(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self.failures.append(str(err))

    def produce(self, count: int) -> int:
        """Produce up to `count` events now; returns how many (fewer once event time reaches the present)."""
        now = time.time()
        done = 0
        while done < count:
            event, outcome = self._next
            if epoch(event["event_time"]) > now:
                break
            _send(self.producer, self.events_topic, event["user_id"], encode(event))
            self.sent_at.append(time.time())
            self._waiting.append(outcome)
            if len(self._waiting) > self.label_delay:
                late = self._waiting.popleft()
                _send(self.producer, self.outcomes_topic, late["event_id"], encode(late))
            self._next = next(self._pairs)
            done += 1
        self.producer.poll(0)
        if self.failures:
            raise DriftloopError(f"producing to {self.bootstrap} failed: {self.failures[0]}")
        return done

    def send_waiting_outcomes(self) -> None:
        """The outcomes still held back for their delay, now: a finite stream ends with all of its outcomes."""
        while self._waiting:
            late = self._waiting.popleft()
            _send(self.producer, self.outcomes_topic, late["event_id"], encode(late))

    def flush(self, timeout: float) -> int:
        """Deliver what is queued (the outcomes still waiting for their delay stay unsent); returns what is left."""
        return self.producer.flush(timeout)


def play(
    player: StreamPlayer,
    rate: float | None,
    *,
    until: Callable[[], bool],
    on_tick: Callable[[], None],
    tick: float = 0.05,
    limit: int | None = None,
) -> None:
    """Produce at `rate` events/s (None: as fast as the producer goes) until `until()` or `limit` more events,
    calling `on_tick` every `tick` seconds or so."""
    started, base = time.monotonic(), player.produced
    last_tick = started
    while not until() and (limit is None or player.produced - base < limit):
        now = time.monotonic()
        due = (base + int((now - started) * rate)) if rate is not None else player.produced + 2000
        if limit is not None:
            due = min(due, base + limit)
        wanted = min(due - player.produced, 2000)
        made = player.produce(wanted) if wanted > 0 else 0
        if now - last_tick >= tick:
            on_tick()
            last_tick = now
        if made < wanted or wanted <= 0:
            time.sleep(min(tick, max(1 / rate, 0.005)) if rate else tick)


def drifted_after(prefix: str, onset: int) -> Callable[[str], bool]:
    """Tells the drifted events of a FraudStream by id (`<prefix><index>`): those at or past the onset."""

    def is_drifted(event_id: str) -> bool:
        return (
            event_id.startswith(prefix) and event_id[len(prefix) :].isdigit() and int(event_id[len(prefix) :]) >= onset
        )

    return is_drifted


def mlflow_links(tracking_uri: str | None, spec: PipelineSpec) -> list[str]:
    """Lines saying where the MLflow UI shows the retraining runs and the model versions."""
    if not registry_rest.is_server(tracking_uri):
        return [
            f"MLflow runs: experiment {spec.name!r}, model versions: registered model {spec.model.name!r} "
            f"(tracking URI {tracking_uri or 'unknown'}; `driftloop mlflow` serves a UI over it)"
        ]
    base = tracking_uri.rstrip("/")
    # MLflow's REST API rather than its client: a courtesy lookup must cost a second, not an import and retries.
    query = urllib.parse.urlencode({"experiment_name": spec.name})
    try:
        with urllib.request.urlopen(f"{base}/api/2.0/mlflow/experiments/get-by-name?{query}", timeout=5) as answer:
            experiment_id = json.loads(answer.read())["experiment"]["experiment_id"]
        runs = f"{base}/#/experiments/{experiment_id}"
    except (OSError, ValueError, KeyError) as exc:  # 404 (no experiment yet) is an HTTPError, an OSError
        runs = f"{base} (experiment {spec.name!r}: {type(exc).__name__}: {str(exc)[:80]})"
    return [f"MLflow UI: retraining runs at {runs}", f"MLflow UI: model versions at {base}/#/models/{spec.model.name}"]


def _facts_line(facts: dict[str, Any]) -> str:
    after = facts["seconds_from_onset"]

    def moment(name: str) -> str:
        return "not yet" if after[name] is None else f"+{after[name]:.0f} s"

    def accuracy(name: str) -> str:
        value = facts[f"accuracy_{name}"]
        return "n/a" if value is None else f"{value:.3f}"

    return (
        f"drift onset {facts['onset']}; first drifted event scored {moment('drift_first_scored')}, detected "
        f"{moment('detection')}, challenger "
        f"{moment('challenger')}, promoted {moment('promotion')}, new champion serving "
        f"{moment('new_champion_serving')}; accuracy before the drift {accuracy('before_drift')}, after it "
        f"{accuracy('after_drift')}, after the promotion {accuracy('after_promotion')}"
    )


def run_demo(args: argparse.Namespace, settings: Settings, spec: PipelineSpec, say: Callable[[str], None]) -> int:
    """The demo (module docstring); returns the exit code. Raises Stopped on SIGTERM/SIGINT."""
    bootstrap = args.bootstrap
    kafka.wait_for_broker(bootstrap, timeout=15)
    kafka.ensure_topics(bootstrap, [settings.topic_events, settings.topic_outcomes], settings.partitions)
    scripted = args.onset + int(args.rate * (args.timeout + args.after_promotion + 3600))
    stream = FraudStream(
        seed=args.seed,
        users=args.users,
        fraud_rate=args.fraud_rate,
        drift=DriftPlan("abrupt", args.onset, concept=True),
        start=stream_start(scripted, 1 / args.event_time_rate, time.time()),
        events_per_second=args.event_time_rate,
        id_prefix=f"demo-{uuid.uuid4().hex[:6]}-",
    )
    is_drifted = drifted_after(stream.id_prefix, args.onset)
    player = StreamPlayer(
        stream, bootstrap, settings.topic_events, settings.topic_outcomes, label_delay=args.label_delay
    )
    watch = TopicFollower(bootstrap, settings.topic_audit, settings.partitions)
    png = Path(args.data_dir) / TIMELINE_FILE
    started = time.time()
    state: dict[str, Any] = {"onset": None, "promotion": None, "progress": started}
    say(
        f"producing the fraud stream at {args.rate:g} events/s to {settings.topic_events} (outcomes "
        f"{args.label_delay} events later to {settings.topic_outcomes}); concept drift at event {args.onset:,}, "
        f"in about {args.onset / args.rate:.0f} s"
    )

    def tick() -> None:
        moment = time.time()
        if state["onset"] is None and player.produced > args.onset:
            onset = state["onset"] = player.sent_at[args.onset]
            say(
                f"drift onset: event {args.onset:,} (the first of the new fraud pattern) went out at "
                f"{datetime.fromtimestamp(onset, UTC).isoformat(timespec='seconds')}"
            )
        for record in watch.poll():
            if record.get("action") not in _QUIET_ACTIONS:
                say(f"{DECISION}{decision_line(record)}")
            if (
                is_promotion(record)
                and state["onset"] is not None
                and state["promotion"] is None
                and isinstance(record.get("at"), str)
                and epoch(record["at"]) >= state["onset"]
            ):
                state["promotion"] = epoch(record["at"])
        if moment - state["progress"] >= _PROGRESS_SECONDS:
            state["progress"] = moment
            say(f"{player.produced:,} events produced in {moment - started:.0f} s")

    def scripted_part_over() -> bool:
        if state["promotion"] is not None:
            return time.time() - state["promotion"] >= args.after_promotion
        return state["onset"] is not None and time.time() - state["onset"] >= args.timeout

    try:
        play(player, args.rate, until=scripted_part_over, on_tick=tick)
        say(f"writing the timeline of the run ({player.produced:,} events) ...")
        facts = write_timeline(
            bootstrap,
            settings,
            started - 1,
            time.time(),
            state["onset"],
            png,
            title=f"driftloop demo: {spec.model.name}, concept drift at event {args.onset:,} ({args.rate:g} events/s)",
            drifted_share_threshold=spec.drift.drifted_share,
            window=args.window,
            is_drifted=is_drifted,
        )
        say(f"timeline: {png.resolve()}")
        say(_facts_line(facts))
        for line in mlflow_links(args.mlflow_url, spec):
            say(line)
        if state["promotion"] is None:
            print(
                f"driftloop: demo: error: no retrained model was promoted within {args.timeout:g} s of the drift "
                f"onset; the timeline shows how far the loop got: {png.resolve()}",
                file=sys.stderr,
                flush=True,
            )
            return 1
        say("the loop adapted; the drifted stream goes on until Ctrl-C (or SIGTERM)")
        play(player, args.rate, until=lambda: False, on_tick=tick)  # ends only by Stopped
        return 0
    finally:
        watch.close()
        player.flush(2)


def _share(text: str) -> float:
    value = positive(float)(text)
    if value > 0.5:
        raise argparse.ArgumentTypeError(f"{text!r} must be at most 0.5")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m driftloop.load.demo",
        description="The scripted demo of `driftloop up --demo`: a synthetic card-fraud stream with an abrupt "
        "concept drift, until the loop has promoted a retrained model; then a timeline PNG, and the "
        "stream goes on until stopped.",
    )
    parser.add_argument(
        "--bootstrap",
        help="Kafka bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS, else the running `driftloop up`'s)",
    )
    parser.add_argument(
        "--mlflow-url",
        help="MLflow tracking server, for the UI links (default: "
        "$MLFLOW_TRACKING_URI, else the running `driftloop up`'s)",
    )
    parser.add_argument("--data-dir", help=f"where {TIMELINE_FILE} goes (default: $DRIFTLOOP_DATA_DIR)")
    parser.add_argument(
        "--rate", type=positive(float), default=1000.0, metavar="EPS", help="events per second (default 1000)"
    )
    parser.add_argument(
        "--onset",
        type=int,
        default=ONSET,
        metavar="N",
        help=f"index of the first drifted event (default {ONSET}: after the 24 h windows' warm-up, "
        f"the first model and the drift reference)",
    )
    parser.add_argument(
        "--label-delay",
        type=int,
        default=LABEL_DELAY,
        metavar="N",
        help=f"outcomes follow their event by N events (default {LABEL_DELAY})",
    )
    parser.add_argument(
        "--timeout",
        type=positive(float),
        default=600.0,
        metavar="S",
        help="give up when nothing is promoted S seconds after the onset (default 600)",
    )
    parser.add_argument(
        "--after-promotion",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds of stream after the promotion before the timeline is drawn (default 30)",
    )
    parser.add_argument("--seed", type=int, default=7, help="random seed of the stream (default 7)")
    parser.add_argument(
        "--users",
        type=positive(int),
        default=DEMO_STREAM["users"],
        help=f"cards in the stream (default {DEMO_STREAM['users']})",
    )
    parser.add_argument(
        "--fraud-rate",
        type=_share,
        default=DEMO_STREAM["fraud_rate"],
        help=f"share of fraudulent events (default {DEMO_STREAM['fraud_rate']})",
    )
    parser.add_argument(
        "--event-time-rate",
        type=positive(float),
        default=DEMO_STREAM["events_per_second"],
        metavar="EPS",
        help="events per second of simulated event time (default "
        f"{DEMO_STREAM['events_per_second']}: the 24 h windows fill after "
        f"{int(86400 * DEMO_STREAM['events_per_second']):,} events)",
    )
    parser.add_argument(
        "--window",
        type=positive(int),
        default=DEFAULT_WINDOW,
        metavar="N",
        help=f"outcomes in the timeline's rolling accuracy (default {DEFAULT_WINDOW})",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.onset < 0 or args.label_delay < 0 or args.after_promotion < 0:
        print(
            "driftloop: demo: error: --onset, --label-delay and --after-promotion cannot be negative",
            file=sys.stderr,
            flush=True,
        )
        return 2
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    say = lambda line: print(f"driftloop: demo: {line}", flush=True)  # noqa: E731
    try:
        settings = settings_module.load()
        recorded = running_stack(settings.data_dir)
        args.bootstrap = args.bootstrap or settings.kafka_bootstrap_servers or recorded.get("bootstrap")
        args.mlflow_url = args.mlflow_url or settings.mlflow_tracking_uri or recorded.get("mlflow_tracking_uri")
        args.data_dir = args.data_dir or str(settings.data_dir)
        if not args.bootstrap:
            raise DriftloopError("no broker: pass --bootstrap, set KAFKA_BOOTSTRAP_SERVERS or start `driftloop up`")
        return run_demo(args, settings, load_spec(settings.spec), say)
    except Stopped as stop:
        say(f"{stop.args[0]} received: stopped")
        return 0
    except DriftloopError as exc:
        print(f"driftloop: demo: error: {exc}", file=sys.stderr, flush=True)
        return 2
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
