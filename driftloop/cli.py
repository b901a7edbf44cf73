"""The `driftloop` command."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from driftloop import __version__
from driftloop import settings as settings_module
from driftloop.errors import DriftloopError


def _say(line: str) -> None:
    print(f"driftloop: {line}", flush=True)


def cmd_up(config: settings_module.Settings, args: argparse.Namespace) -> int:
    from driftloop.live import display_for
    from driftloop.stack import run_stack

    display = display_for(sys.stdout, _say, "driftloop up --demo" if args.demo else "driftloop up")
    run_stack(config, _say, demo_rate=args.demo_rate if args.demo else None, display=display)
    return 0


def cmd_broker(config: settings_module.Settings, _args: argparse.Namespace) -> int:
    """Only the embedded broker, for people who bring their own workers."""
    import signal

    from driftloop.broker import EmbeddedBroker
    from driftloop.stack import Stopped, _raise_stopped

    config.data_dir.mkdir(parents=True, exist_ok=True)
    broker = EmbeddedBroker(config.broker_port, config.data_dir / "logs", config.bind_host)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _raise_stopped)
    try:
        broker.start()
        _say(f"embedded broker ready; bootstrap address: {broker.bootstrap}")
        print(broker.bootstrap, flush=True)
        broker.wait_ready(lambda: False, timeout=float("inf"), what="being stopped")
    except Stopped:
        _say("broker stopped")
    finally:
        broker.stop()
    return 0


def cmd_mlflow(config: settings_module.Settings, _args: argparse.Namespace) -> int:
    """Only the MLflow server + UI over the configured (or local SQLite) backend."""
    import signal

    from driftloop.mlflow_server import MlflowServer, backend_store_uri
    from driftloop.stack import Stopped, _raise_stopped

    config.data_dir.mkdir(parents=True, exist_ok=True)
    server = MlflowServer(
        backend_store_uri(config.mlflow_tracking_uri, config.data_dir),
        config.data_dir,
        config.mlflow_port,
        config.bind_host,
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _raise_stopped)
    try:
        server.start()
        _say(f"MLflow UI at {server.url}")
        server.wait_ready(lambda: False, timeout=float("inf"), what="being stopped")
    except Stopped:
        _say("MLflow server stopped")
    finally:
        server.stop()
    return 0


def _stop_on_signals() -> threading.Event:
    """An event that SIGTERM or Ctrl-C sets. Call it before a worker's imports (seconds of MLflow, River,
    onnxruntime): a SIGTERM during them used to kill the process (exit -15) instead of stopping it."""
    import signal

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: stop.set())
    return stop


def _interrupt_on_signals() -> None:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt, even in a process started with SIGINT ignored (anything
    launched in the background by a shell without job control is): a watch or tail ends on either."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.default_int_handler)


def cmd_worker(config: settings_module.Settings, _args: argparse.Namespace) -> int:
    """One scoring/join worker; SIGTERM or Ctrl-C checkpoints and leaves the consumer group."""
    stop = _stop_on_signals()

    from driftloop.process import client_address
    from driftloop.streams.worker.app import run_worker

    run_worker(
        config,
        stop,
        on_ready=lambda port: _say(
            f"worker consuming; metrics at http://{client_address(config.bind_host, port)}/metrics"
        ),
    )
    _say("worker stopped after a final checkpoint")
    return 0


def cmd_control(config: settings_module.Settings, _args: argparse.Namespace) -> int:
    """The control plane (drift agent, trigger policy, promotion controller): one per pipeline."""
    from driftloop.spec import load_spec
    from driftloop.stack import resolve_endpoints
    from driftloop.streams.control.app import run_control_plane

    bootstrap, tracking_uri = resolve_endpoints(config)
    run_control_plane(config, load_spec(config.spec), bootstrap, tracking_uri)
    return 0


def cmd_retrain_worker(config: settings_module.Settings, _args: argparse.Namespace) -> int:
    """Consumes retrain requests; SIGTERM or Ctrl-C stops it between requests (an unfinished one is redone)."""
    stop = _stop_on_signals()

    from driftloop.retrain.worker import run_retrain_worker
    from driftloop.stack import resolve_endpoints

    bootstrap, tracking_uri = resolve_endpoints(config)
    run_retrain_worker(config, stop, bootstrap=bootstrap, tracking_uri=tracking_uri)
    _say("retrain worker stopped")
    return 0


def _operator_action(config: settings_module.Settings, act: Callable[..., bytes]) -> int:
    """Run an alias move and publish its audit record (signed), as the automatic decisions are; a refused
    model moves nothing and is audited `model_refused`."""
    import json

    from driftloop import kafka
    from driftloop.models.provenance import ModelRefused
    from driftloop.models.trusted import refusal_record
    from driftloop.signing import key_path, load_key
    from driftloop.spec import load_spec
    from driftloop.stack import resolve_endpoints
    from driftloop.streams.contracts import signature_headers

    bootstrap, tracking_uri = resolve_endpoints(config)
    key = load_key(key_path(config))
    producer = kafka.producer(bootstrap)

    def publish(record: bytes, failure: str) -> None:
        producer.produce(config.topic_audit, record, headers=signature_headers(key, config.topic_audit, record))
        if producer.flush(15) > 0:
            raise DriftloopError(f"{failure}, but its audit record did not reach {config.topic_audit}")

    try:
        record = act(load_spec(config.spec), tracking_uri, key)
    except ModelRefused as refusal:
        publish(refusal_record("operator", refusal), "the model was refused")
        raise DriftloopError(f"{refusal}; no alias moved") from None
    publish(record, "the alias moved")
    _say(json.loads(record)["reason"])
    return 0


def cmd_promote(config: settings_module.Settings, args: argparse.Namespace) -> int:
    from driftloop.streams.control.promotion.operator import promote

    return _operator_action(config, lambda spec, uri, key: promote(spec, uri, args.version, key))


def cmd_rollback(config: settings_module.Settings, args: argparse.Namespace) -> int:
    from driftloop.streams.control.promotion.operator import rollback

    return _operator_action(config, lambda spec, uri, key: rollback(spec, uri, args.to_version, key))


def cmd_sign(config: settings_module.Settings, args: argparse.Namespace) -> int:
    """Vouch for a version registered before driftloop signed versions."""
    from driftloop.models import registry
    from driftloop.streams.contracts import audit

    def sign(spec, uri, key) -> bytes:
        registry.sign_version(spec.model.name, args.version, tracking_uri=uri, key=key)
        return audit(
            actor="operator",
            action="signed",
            model_name=spec.model.name,
            version=args.version,
            reason=f"operator signed v{args.version}, vouching for its files as they are in the registry",
        )

    return _operator_action(config, sign)


def cmd_keygen(config: settings_module.Settings, _args: argparse.Namespace) -> int:
    """Create the signing key (mode 0600) unless one exists; every process of a stack must read the same file."""
    from driftloop.signing import create_key, key_path, load_key

    path = key_path(config)
    created = create_key(path)
    load_key(path)  # an existing file must be a usable key too
    _say(f"{'created the' if created else 'kept the existing'} signing key {path}")
    return 0


def cmd_status(config: settings_module.Settings, args: argparse.Namespace) -> int:
    import json

    if args.watch:
        return _watch_status(config, args)
    from driftloop.loop_status import collect_loop, render_loop
    from driftloop.spec import load_spec
    from driftloop.stack import resolve_endpoints
    from driftloop.status import collect, collect_children, metrics_urls, render

    summary = collect(args.urls or metrics_urls(config))
    summary["supervisor"] = collect_children(config)
    try:
        bootstrap, tracking_uri = resolve_endpoints(config)
    except DriftloopError as exc:  # workers given by URL only: their metrics are still the status
        summary["loop"], loop_text = None, f"loop        not shown: {exc}"
    else:
        summary["loop"] = collect_loop(config, load_spec(config.spec), bootstrap, tracking_uri)
        loop_text = render_loop(summary["loop"])
    print(json.dumps(summary, indent=2) if args.json else f"{render(summary)}\n{loop_text}", flush=True)
    return 0


def _watch_status(config: settings_module.Settings, args: argparse.Namespace) -> int:
    """The live view of `driftloop up` for a stack running elsewhere (another terminal, compose), until Ctrl-C."""
    import time

    from driftloop.live import LiveView, display_for
    from driftloop.spec import load_spec
    from driftloop.stack import resolve_endpoints
    from driftloop.status import collect_children, metrics_urls

    if args.json:
        raise DriftloopError("--watch shows a live view; --json prints one summary: choose one")
    if args.backlog < 0:
        raise DriftloopError("--backlog cannot be negative")
    bootstrap, tracking_uri = resolve_endpoints(config)
    spec = load_spec(config.spec)
    view = LiveView(
        display_for(sys.stdout, _say, f"driftloop status --watch: {spec.name}"),
        bootstrap=bootstrap,
        tracking_uri=tracking_uri,
        model_name=spec.model.name,
        audit_topic=config.topic_audit,
        drift_topic=config.topic_drift,
        partitions=config.partitions,
        metrics_urls=lambda: args.urls or metrics_urls(config),
        children=lambda: collect_children(config),
        pulse_every=args.interval,
        backlog=args.backlog,
    )
    _interrupt_on_signals()
    try:
        view.open()
        while True:
            view.tick()
            time.sleep(0.25)
    except KeyboardInterrupt:  # how a watch is meant to end
        return 0
    finally:
        view.close()


def cmd_check_spec(config: settings_module.Settings, args: argparse.Namespace) -> int:
    from driftloop.spec import load_spec

    path = args.spec or config.spec
    spec = load_spec(path)
    _say(
        f"{path}: spec {spec.name!r} is valid: {len(spec.events.fields)} event fields, "
        f"{len(spec.features)} windowed features, model {spec.model.flavor}/{spec.model.estimator} "
        f"on {len(spec.model_inputs)} inputs"
    )
    return 0


def cmd_init_spec(config: settings_module.Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from driftloop.init_spec import Choices, init_spec

    table = Path(args.data)
    output = Path(args.output) if args.output else Path(f"{table.stem}.yaml")
    choices = Choices(
        label=args.label,
        id=args.id,
        entity=args.entity,
        time=args.time,
        time_step=args.time_step,
        flavor=args.flavor,
        estimator=args.estimator,
        name=args.name,
    )
    written = init_spec(table, output, choices, force=args.force, say=_say)
    _say(
        f"wrote {written}: check it with `driftloop check-spec {written}`, then replay the table on a stack "
        f"started with DRIFTLOOP_SPEC={written}: `driftloop replay {table} --spec {written}`"
    )
    return 0


def cmd_replay(config: settings_module.Settings, args: argparse.Namespace) -> int:
    import json
    from datetime import datetime

    from driftloop.load.replay import replay
    from driftloop.spec import load_spec

    try:
        start = datetime.fromisoformat(args.start) if args.start else None
    except ValueError:
        raise DriftloopError(f"--start {args.start!r} is not an ISO-8601 time") from None
    report = replay(
        config,
        args.data,
        spec=load_spec(args.spec) if args.spec else None,
        label_delay=args.label_delay,
        label_delay_seconds=args.label_delay_seconds,
        rate=args.rate,
        limit=args.limit,
        entity_value=args.entity_value,
        start=start,
        time_step=args.time_step,
        timeout=args.timeout,
        progress=not args.json,
    )
    print(json.dumps(report.as_dict()) if args.json else report.render(), flush=True)
    return 0


def cmd_backtest(config: settings_module.Settings, args: argparse.Namespace) -> int:
    from driftloop.load.backtest.command import run_backtest

    return run_backtest(args)


def cmd_tail(config: settings_module.Settings, args: argparse.Namespace) -> int:
    import os

    from driftloop.console import format_record, tail
    from driftloop.stack import resolve_bootstrap

    def show(message: Any) -> None:
        print(format_record(message, as_json=args.json, key_separator=args.key_separator), flush=True)

    _interrupt_on_signals()
    try:
        tail(
            resolve_bootstrap(config),
            args.topic,
            from_beginning=args.from_beginning,
            limit=args.limit,
            exit_at_end=args.exit_at_end,
            show=show,
            announce=lambda line: print(f"driftloop: {line}", file=sys.stderr, flush=True),
        )
    except KeyboardInterrupt:  # how a tail is meant to end
        pass
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def cmd_produce(config: settings_module.Settings, args: argparse.Namespace) -> int:
    from driftloop.console import produce
    from driftloop.stack import resolve_bootstrap

    result = produce(
        resolve_bootstrap(config),
        args.topic,
        sys.stdin.buffer,
        key_separator=args.key_separator,
        report=lambda line: print(f"driftloop: {line}", file=sys.stderr, flush=True),
    )
    skipped = f"; {result.skipped} lines not sent (above)" if result.skipped else ""
    print(f"driftloop: sent {result.records} records to {args.topic}{skipped}", file=sys.stderr, flush=True)
    return 1 if result.skipped else 0


def cmd_bench(config: settings_module.Settings, args: argparse.Namespace) -> int:
    """The data plane against raw passthrough on one broker; one JSON object on stdout."""
    from driftloop.load.benchmarks.data_plane import run_cli

    return run_cli(config, args)


def positive(kind: type) -> Callable[[str], Any]:
    """An argparse type: a number of `kind` above zero (also used by the load tools' own CLIs)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {kind.__name__}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
        return value

    return parse


def _duration(text: str) -> float:
    from driftloop.spec import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="driftloop", description=__doc__)
    parser.add_argument("--version", action="version", version=f"driftloop {__version__}")
    parser.add_argument("--config", help="YAML settings file (default: $DRIFTLOOP_CONFIG); environment wins over it")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = commands.add_parser(
        "up",
        help="start the stack: embedded broker, MLflow, Feast, topics, a worker, the "
        "control plane and a retrain worker",
    )
    up.add_argument(
        "--demo",
        action="store_true",
        help="also run the demo: a synthetic card-fraud stream with a concept drift, until a retrained "
        "model is promoted; then a timeline PNG in the data dir",
    )
    up.add_argument(
        "--demo-rate",
        type=positive(float),
        default=500.0,
        metavar="EPS",
        help="events per second of the demo stream (default 500)",
    )
    up.set_defaults(run=cmd_up)
    commands.add_parser("broker", help="run only the embedded broker and print its bootstrap address").set_defaults(
        run=cmd_broker
    )
    commands.add_parser("mlflow", help="run only the MLflow tracking server and UI").set_defaults(run=cmd_mlflow)
    commands.add_parser(
        "worker", help="run one scoring/join worker against the configured or running stack"
    ).set_defaults(run=cmd_worker)
    commands.add_parser(
        "control", help="run the control plane: drift agent, retrain trigger, canary promotion"
    ).set_defaults(run=cmd_control)
    commands.add_parser(
        "retrain-worker", help="run a worker that turns retrain requests into MLflow versions"
    ).set_defaults(run=cmd_retrain_worker)
    promote = commands.add_parser("promote", help="make a version the champion (default: the challenger)")
    promote.add_argument("version", nargs="?", type=positive(int), help="model version (default: the challenger)")
    promote.set_defaults(run=cmd_promote)
    rollback = commands.add_parser(
        "rollback", help="drop the challenger, or without one return to the previous champion"
    )
    rollback.add_argument(
        "--to",
        dest="to_version",
        type=positive(int),
        metavar="VERSION",
        help="the version to make champion again (default: the alias `previous`)",
    )
    rollback.set_defaults(run=cmd_rollback)
    sign = commands.add_parser(
        "sign",
        help="sign a version registered before driftloop signed versions, after "
        "checking it is yours (anyone who reaches MLflow can register one)",
    )
    sign.add_argument("version", type=positive(int), help="model version")
    sign.set_defaults(run=cmd_sign)
    commands.add_parser(
        "keygen",
        help="create the key that signs models and control records, unless it exists "
        "(DRIFTLOOP_SIGNING_KEY_FILE, default <data dir>/signing.key)",
    ).set_defaults(run=cmd_keygen)
    check = commands.add_parser("check-spec", help="validate a pipeline spec")
    check.add_argument("spec", nargs="?", help="spec file (default: $DRIFTLOOP_SPEC)")
    check.set_defaults(run=cmd_check_spec)
    status = commands.add_parser(
        "status", help="summarize the workers' /metrics, the registry aliases, drift and decisions"
    )
    status.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    status.add_argument(
        "--watch",
        action="store_true",
        help="keep watching until Ctrl-C: events/s, lag, p99, who serves which share, the last drift "
        "evaluation, and every decision as it lands (a panel in a terminal, lines elsewhere)",
    )
    status.add_argument(
        "--interval",
        type=positive(float),
        metavar="S",
        help="with --watch: seconds between looks at the workers (default 2 in a terminal, 15 elsewhere)",
    )
    status.add_argument(
        "--backlog",
        type=int,
        default=5,
        metavar="N",
        help="with --watch: the last N decisions made before it started, first (default 5)",
    )
    status.add_argument(
        "--url",
        dest="urls",
        action="extend",
        nargs="+",
        metavar="URL",
        help="a worker's metrics URL (default: $DRIFTLOOP_METRICS_PORT on 127.0.0.1, "
        "and the workers `driftloop up` lists in <data dir>/stack.json)",
    )
    status.set_defaults(run=cmd_status)
    init = commands.add_parser(
        "init-spec",
        help="write a commented pipeline spec from a CSV/Parquet table",
        description="Read a table and write a spec for it: field types and ranges from the "
        "data, the label, generated id/entity/time where the table has none, a "
        "time step, windows within the feature TTL and a model, each explained "
        "in a comment.",
    )
    init.add_argument("data", help="the table: a .csv or .parquet file")
    init.add_argument("-o", "--output", metavar="SPEC", help="where to write the spec (default: <table name>.yaml)")
    init.add_argument("--force", action="store_true", help="replace the output file if it exists")
    init.add_argument("--label", metavar="COLUMN", help="the 0/1 label column (default: guessed, and said)")
    init.add_argument(
        "--id",
        metavar="COLUMN",
        help="the event id column (default: one named like an id with a value per row, else generated by replay)",
    )
    init.add_argument(
        "--entity",
        metavar="COLUMN",
        help="the entity column (default: one named like user_id, customer_id, ..., else one entity for every row)",
    )
    init.add_argument(
        "--time",
        metavar="COLUMN",
        help="the event time column (default: the first column of times, else generated by replay)",
    )
    init.add_argument(
        "--time-step",
        type=_duration,
        metavar="DURATION",
        help="how far apart the rows are, e.g. 1d for a daily table (default: the median gap of the "
        "time column; required without one)",
    )
    init.add_argument(
        "--flavor",
        choices=_AcceptedFlavors(),
        metavar="FLAVOR",  # a metavar, so that building the parser does not list (and import) the flavors
        default="river",
        help="the model flavor: one the spec validator accepts (default: river, which learns online and starts cold)",
    )
    init.add_argument(
        "--estimator", default="logistic_regression", help="the flavor's estimator (default: logistic_regression)"
    )
    init.add_argument("--name", help="the pipeline and model name (default: from the table's file name)")
    init.set_defaults(run=cmd_init_spec)
    replay = commands.add_parser(
        "replay",
        help="backtest the running pipeline on a CSV/Parquet table",
        description="Turn each row of the table into an event and an outcome on the "
        "running stack, then score the predictions that come back.",
    )
    replay.add_argument("data", help="the table: a .csv or .parquet file")
    replay.add_argument("--spec", help="pipeline spec that maps columns to events (default: $DRIFTLOOP_SPEC)")
    delay = replay.add_mutually_exclusive_group()
    delay.add_argument(
        "--label-delay",
        type=int,
        default=0,
        metavar="N",
        help="produce each outcome N events after its event (default 0: right after it)",
    )
    delay.add_argument(
        "--label-delay-seconds",
        type=positive(float),
        metavar="S",
        help="produce each outcome S wall-clock seconds after its event",
    )
    replay.add_argument(
        "--rate", type=positive(float), metavar="EPS", help="events per second (default: as fast as possible)"
    )
    replay.add_argument("--limit", type=positive(int), metavar="N", help="replay only the first N rows")
    replay.add_argument(
        "--entity-value",
        metavar="V",
        help="the entity of every event when the table has no entity column (default: the spec's "
        "replay.entity_value, else all)",
    )
    replay.add_argument(
        "--start",
        metavar="ISO",
        help="event time of the first row when the table has no time "
        "column (default: the last row at the latest whole step)",
    )
    replay.add_argument(
        "--time-step",
        type=_duration,
        metavar="DURATION",
        help="event-time distance between rows without a time column (default: the spec's replay.time_step)",
    )
    replay.add_argument(
        "--timeout",
        type=positive(float),
        default=30.0,
        metavar="S",
        help="give up on the rows still unanswered after S seconds without a prediction or "
        "dead letter of this run (default: 30)",
    )
    replay.add_argument("--json", action="store_true", help="print the report as one JSON object, without progress")
    replay.set_defaults(run=cmd_replay)
    backtest = commands.add_parser(
        "backtest",
        help="run the whole loop on a table or a River generator, in event time, in one process",
        description="Drive validation, windows, scoring, the outcome join, online learning, drift monitors, the "
        "trigger, retraining and promotion through the live code with a virtual event-time clock: no broker, a "
        "throwaway MLflow registry. Prints prequential figures, every decision and the baselines.",
    )
    backtest.add_argument("data", help="a .csv or .parquet table, or river:sea / river:agrawal")
    backtest.add_argument("--spec", help="pipeline spec (default for river:NAME: driftloop/specs/river_NAME.yaml)")
    backtest_delay = backtest.add_mutually_exclusive_group()
    backtest_delay.add_argument(
        "--label-delay",
        type=int,
        default=1,
        metavar="N",
        help="join each outcome after the next N events were scored (default 1; 0: right after its event)",
    )
    backtest_delay.add_argument(
        "--label-delay-seconds",
        type=_duration,
        metavar="DURATION",
        help="join each outcome this much event time after its event (e.g. 30m, 1d) instead",
    )
    backtest.add_argument(
        "--retrain-cost",
        type=_duration,
        metavar="DURATION",
        help="event time a retraining takes: its challenger appears this much later (default: none)",
    )
    backtest.add_argument("--limit", type=positive(int), metavar="N", help="only the first N rows of a table")
    backtest.add_argument(
        "--drift-points", metavar="I,J,...", help="event indices of known drift points, for the detection delay"
    )
    backtest.add_argument("--events", type=positive(int), default=20_000, metavar="N", help="river:*: events drawn")
    backtest.add_argument("--drift-at", type=positive(int), metavar="N", help="river:*: the concept switches here")
    backtest.add_argument(
        "--drift-width", type=positive(int), default=1, metavar="W", help="river:*: 1 abrupt (default), else gradual"
    )
    backtest.add_argument("--seed", type=int, default=0, help="river:*: the generator's seed (default 0)")
    backtest.add_argument(
        "--tick-events",
        type=positive(int),
        default=100,
        metavar="N",
        help="events between the control plane's observations and registry reads (default 100)",
    )
    backtest.add_argument("--registry", metavar="URI", help="an MLflow server to use (default: a throwaway SQLite one)")
    backtest.add_argument("--png", metavar="FILE", help="also draw the timeline to FILE")
    backtest.add_argument(
        "--arf", action="store_true", help="also score River's ARF alone on the raw fields, with immediate labels"
    )
    backtest.add_argument("--json", action="store_true", help="print the report as one JSON object")
    backtest.add_argument("--verbose", action="store_true", help="keep the components' log lines")
    backtest.set_defaults(run=cmd_backtest)
    tail_parser = commands.add_parser(
        "tail",
        help="print a topic's records as they arrive (kcat -C for any broker)",
        description="Print a topic's records, one per line, as they arrive: new ones (default) or all from the "
        "beginning, until Ctrl-C.",
    )
    tail_parser.add_argument("topic")
    tail_parser.add_argument("--from-beginning", action="store_true", help="start at each partition's first record")
    tail_parser.add_argument("-n", dest="limit", type=positive(int), metavar="N", help="stop after N records")
    tail_parser.add_argument(
        "-e",
        "--exit-at-end",
        action="store_true",
        help="stop once every partition's end is reached instead of waiting for more",
    )
    tail_parser.add_argument(
        "--json",
        action="store_true",
        help="one JSON object per record: topic, partition, offset, timestamp_ms, key, value",
    )
    tail_parser.add_argument("--key-separator", metavar="SEP", help="print the key, SEP, then the value")
    tail_parser.set_defaults(run=cmd_tail)
    produce_parser = commands.add_parser(
        "produce",
        help="send the lines of stdin to a topic (kcat -P for any broker)",
        description="Send each line of stdin as one record's value; exits 1 when a line could not be sent (each "
        "is reported).",
    )
    produce_parser.add_argument("topic")
    produce_parser.add_argument(
        "--key-separator", metavar="SEP", help="the part of each line before the first SEP is the record's key"
    )
    produce_parser.set_defaults(run=cmd_produce)
    bench = commands.add_parser(
        "bench",
        help="benchmark the data plane against passthroughs (JSON on stdout)",
        description="Throughput and produce->prediction latency of the data plane, beside "
        "bytes and JSON consume->produce loops on the same broker.",
    )
    bench.add_argument(
        "--events",
        type=positive(int),
        default=100_000,
        metavar="N",
        help="events pre-loaded for the throughput phase (default 100000)",
    )
    bench.add_argument(
        "--rate-events-per-s",
        type=positive(float),
        default=5000.0,
        metavar="EPS",
        help="events per second offered in the latency phase (default 5000)",
    )
    bench.add_argument(
        "--latency-seconds",
        type=positive(float),
        default=10.0,
        metavar="S",
        help="length of the latency phase (default 10)",
    )
    bench.add_argument(
        "--partitions",
        type=positive(int),
        metavar="P",
        help="partitions of the benchmark's topics (default: $DRIFTLOOP_PARTITIONS)",
    )
    bench.add_argument(
        "--workers",
        type=int,
        choices=(1, 2),
        default=1,
        help="2: also run two worker processes in one group and report the scale-out factor "
        "(default partitions then: 4)",
    )
    bench.add_argument(
        "--entities",
        type=positive(int),
        default=0,
        metavar="N",
        help="with --pending: a worker first loaded with N active entities ...",
    )
    bench.add_argument(
        "--pending",
        type=positive(int),
        default=0,
        metavar="M",
        help="... and M predictions waiting for their labels; reports its memory and the time to "
        "have its state back after kill -9",
    )
    bench.add_argument(
        "--slo",
        action="store_true",
        help="also: a load step from 2000 to 20000 events/s (time until the p99 is back under the spec's "
        "slo.p99_ms) and a champion made slow on purpose (its circuit breaker opening and closing)",
    )
    bench.add_argument(
        "--step-seconds",
        type=positive(float),
        default=20.0,
        metavar="S",
        help="with --slo: length of each phase (default 20; the load step's last phase lasts twice that)",
    )
    bench.add_argument(
        "--step-from",
        type=positive(float),
        default=2000.0,
        metavar="EPS",
        help="with --slo: events per second before and after the load step (default 2000)",
    )
    bench.add_argument(
        "--step-to",
        type=positive(float),
        default=20_000.0,
        metavar="EPS",
        help="with --slo: events per second during the load step (default 20000)",
    )
    bench.add_argument(
        "--quix-python",
        metavar="PYTHON",
        help="also run Quix Streams' stateful job (per-user count/sum/max in RocksDB) with this interpreter, "
        "which must have quixstreams installed (its own virtualenv: its pins differ from driftloop's)",
    )
    bench.add_argument("--json-out", metavar="FILE", help="also write the JSON report to FILE")
    bench.set_defaults(run=cmd_bench)
    return parser


class _AcceptedFlavors:
    """init-spec's --flavor choices, read only when a command line is checked against them: importing the
    model flavors takes a second and a half, which every command (a worker's SIGTERM handler too) waited for."""

    def __iter__(self) -> Iterator[str]:
        from driftloop.init_spec import accepted_flavors

        return iter(accepted_flavors())

    def __contains__(self, flavor: object) -> bool:
        return flavor in tuple(self)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = settings_module.load(args.config)
        logging.basicConfig(level=config.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return args.run(config, args)
    except DriftloopError as exc:
        print(f"driftloop: error: {exc}" + (f"; fix: {exc.fix}" if exc.fix else ""), file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
