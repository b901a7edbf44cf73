"""`driftloop up`: start what is not configured externally, in order, and stop it all in reverse."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from driftloop import kafka
from driftloop.broker import EmbeddedBroker
from driftloop.errors import DriftloopError
from driftloop.follow import LogFollower
from driftloop.kafka import broker_answers, ensure_topics, wait_for_broker
from driftloop.mlflow_server import MlflowServer, backend_store_uri, http_ok, require_reachable
from driftloop.models import registry_rest
from driftloop.process import ManagedProcess, Readiness, client_address, reserve_port
from driftloop.settings import Settings
from driftloop.signing import create_key, key_path, load_key
from driftloop.spec import PipelineSpec, load_spec
from driftloop.streams import contracts
from driftloop.supervisor import Restart, RestartPolicy, Supervisor, SupervisorMetrics

if TYPE_CHECKING:  # the live view reads the workers' status, which reads stack.json through this module
    from driftloop.live import Display, LiveView

CONTROL_PLANE_READY = "[^Worker]: Ready"  # Faust's worker, once its agents are assigned
RETRAIN_WORKER_READY = "retrain worker for model"
# Why these children's exit ends the stack instead of a restart.
BROKER_ENDS_STACK = "it held every record in memory, so they are gone and no restart brings them back"
DEMO_ENDS_STACK = "the stack was started for the demo"


class Stopped(Exception):
    """Raised in the main thread by SIGTERM/SIGINT so the ExitStack unwinds in order."""


@dataclass
class StackInfo:
    bootstrap: str
    mlflow_tracking_uri: str
    spec: str
    topics: list[str]
    pid: int
    metrics_urls: list[str]
    supervisor_metrics_url: str  # restarts of the children, which of them are up
    control_metrics_url: str  # the control plane's decisions, retrainings and canary trial

    def write(self, data_dir: Path) -> Path:
        path = data_dir / "stack.json"
        path.write_text(json.dumps(asdict(self), indent=2))
        return path


def running_stack(data_dir: Path) -> dict:
    """What a running `driftloop up` recorded in `<data_dir>/stack.json` (bootstrap, MLflow URI, worker
    metrics URLs); {} when none is running, or while one is still writing the file."""
    try:
        recorded = json.loads((data_dir / "stack.json").read_text())
    except (OSError, ValueError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


def resolve_endpoints(settings: Settings) -> tuple[str, str]:
    """(bootstrap, MLflow tracking URI): the settings, else what a running `driftloop up` recorded."""
    recorded = running_stack(settings.data_dir)
    bootstrap = settings.kafka_bootstrap_servers or recorded.get("bootstrap")
    tracking_uri = settings.mlflow_tracking_uri or recorded.get("mlflow_tracking_uri")
    if not bootstrap or not tracking_uri:
        missing = "KAFKA_BOOTSTRAP_SERVERS" if not bootstrap else "MLFLOW_TRACKING_URI"
        raise DriftloopError(
            f"{missing} is not set and no running `driftloop up` recorded it in {settings.data_dir / 'stack.json'}"
        )
    return bootstrap, tracking_uri


def resolve_bootstrap(settings: Settings) -> str:
    """KAFKA_BOOTSTRAP_SERVERS, else the broker of a running `driftloop up` (its stack.json); checked to answer."""
    if settings.kafka_bootstrap_servers:
        wait_for_broker(settings.kafka_bootstrap_servers, timeout=10)
        return settings.kafka_bootstrap_servers
    stack_file = settings.data_dir / "stack.json"
    bootstrap = running_stack(settings.data_dir).get("bootstrap")
    if not bootstrap:
        raise DriftloopError(
            f"no running stack: start `driftloop up` (it writes {stack_file}) or set KAFKA_BOOTSTRAP_SERVERS"
        )
    if not broker_answers(bootstrap):
        raise DriftloopError(
            f"no Kafka broker answers at {bootstrap} (from {stack_file}); is `driftloop up` still running?"
        )
    return bootstrap


def _raise_stopped(signum: int, _frame: object) -> None:
    raise Stopped(signal.Signals(signum).name)


def run_stack(
    settings: Settings,
    say: Callable[[str], None],
    ready: Callable[[StackInfo], None] | None = None,
    demo_rate: float | None = None,
    display: Display | None = None,
) -> None:
    """Bring the stack up, report it, then supervise it until SIGTERM/SIGINT or a child ends it, showing it
    on `display` meanwhile (driftloop/live.py)."""
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in (signal.SIGTERM, signal.SIGINT)}
    started = time.time()
    try:
        with ExitStack() as stack:
            spec = load_spec(settings.spec)
            settings.data_dir.mkdir(parents=True, exist_ok=True)
            _ensure_signing_key(settings, say)
            metrics = SupervisorMetrics()
            supervisor_port = metrics.serve(
                reserve_port(settings.supervisor_port, "DRIFTLOOP_SUPERVISOR_PORT", settings.bind_host),
                settings.bind_host,
            )
            stack.callback(metrics.stop_serving)
            bootstrap, broker = _start_broker(settings, stack, say)
            supervisor = Supervisor(
                RestartPolicy(max_restarts=settings.max_restarts),
                say,
                _restart_auditor(bootstrap, settings.topic_audit, spec, say),
                metrics,
            )
            if broker is not None:
                supervisor.add("broker", broker, ends_stack=BROKER_ENDS_STACK)
            tracking_uri = _start_mlflow(settings, stack, supervisor, say)
            _apply_feast(settings, spec, say)
            created = ensure_topics(bootstrap, settings.topics, settings.partitions)
            say(
                f"topics ready ({len(settings.topics)}, {len(created)} created, "
                f"{settings.partitions} partitions each): {', '.join(settings.topics)}"
            )
            metrics_url = _start_worker(settings, bootstrap, tracking_uri, stack, supervisor, say)
            control_url = _start_adaptive_loop(settings, bootstrap, tracking_uri, stack, supervisor, say)
            info = StackInfo(
                bootstrap,
                tracking_uri,
                str(settings.spec),
                list(settings.topics),
                os.getpid(),
                [metrics_url],
                f"http://{client_address(settings.bind_host, supervisor_port)}/metrics",
                control_url,
            )
            stack.callback((settings.data_dir / "stack.json").unlink, missing_ok=True)
            info.write(settings.data_dir)
            story = None
            if demo_rate is not None:
                story = _start_demo(settings, bootstrap, tracking_uri, demo_rate, stack, supervisor, say)
            say("stack is up; Ctrl-C (or SIGTERM) stops it")
            if ready is not None:
                ready(info)
            if display is None:
                supervisor.watch()
                return
            view = _live_view(settings, spec, info, display, started, story)
            stack.callback(view.close)  # first of all: a demo's last lines are shown before the children stop
            view.open()
            supervisor.watch(on_tick=view.tick)
    except Stopped as stop:
        say(f"{stop.args[0]} received: stopped everything this command started")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _ensure_signing_key(settings: Settings, say: Callable[[str], None]) -> None:
    """The key every child signs and verifies with: the configured file, else one made in the data dir."""
    path = key_path(settings)
    if settings.signing_key_file is None and create_key(path):
        say(f"created the signing key {path.resolve()} (mode 0600): it signs models and control records")
    load_key(path)


def _start_broker(
    settings: Settings, stack: ExitStack, say: Callable[[str], None]
) -> tuple[str, EmbeddedBroker | None]:
    """(bootstrap, the embedded broker, or None when Kafka is configured)."""
    if settings.kafka_bootstrap_servers:
        wait_for_broker(settings.kafka_bootstrap_servers, timeout=15)
        say(f"using Kafka at {settings.kafka_bootstrap_servers}")
        return settings.kafka_bootstrap_servers, None
    broker = EmbeddedBroker(settings.broker_port, settings.data_dir / "logs", settings.bind_host)
    stack.callback(broker.stop)
    broker.start()
    say(f"embedded broker (Tansu, memory-only) ready at {broker.bootstrap}")
    return broker.bootstrap, broker


def _restart_auditor(
    bootstrap: str, topic: str, spec: PipelineSpec, say: Callable[[str], None]
) -> Callable[[Restart], None]:
    """What publishes each restart on the audit topic, as every other decision of the loop is."""
    producer = kafka.producer(bootstrap)

    def publish(restart: Restart) -> None:
        code = restart.returncode
        record = contracts.audit(
            actor="supervisor",
            action="child_restarted",
            model_name=spec.model.name,
            reason=f"{restart.child} exited ({restart.exit_status}); restarted after {restart.delay:g}s",
            details={
                "child": restart.child,
                "exit_code": code if code is not None and code >= 0 else None,
                "signal": -code if code is not None and code < 0 else None,
                "exit": restart.exit_status,
                "restarts": restart.restarts,
                "log": str(restart.log_path),
            },
        )
        producer.produce(topic, record, key=spec.model.name.encode())
        if producer.flush(5) > 0:  # the restart happened all the same: say so rather than stop the stack
            say(f"could not publish the audit record of {restart.child}'s restart on {topic}")

    return publish


def _start_mlflow(settings: Settings, stack: ExitStack, supervisor: Supervisor, say: Callable[[str], None]) -> str:
    uri = settings.mlflow_tracking_uri
    if registry_rest.is_server(uri):
        require_reachable(uri)
        say(f"using MLflow at {uri}")
        return uri
    server = MlflowServer(
        backend_store_uri(uri, settings.data_dir), settings.data_dir, settings.mlflow_port, settings.bind_host
    )
    stack.callback(server.stop)
    server.start()
    supervisor.add("mlflow", server)
    backend = server.argv[server.argv.index("--backend-store-uri") + 1]
    say(f"MLflow tracking server and UI at {server.url} (backend: {_redact(backend)})")
    return server.url


def _apply_feast(settings: Settings, spec: PipelineSpec, say: Callable[[str], None]) -> None:
    from driftloop.features.feast.repo import apply, feature_view_name  # feast is slow to import

    apply(settings, spec)
    say(
        f"feast apply: feature view {feature_view_name(spec)!r} in {settings.feast_repo} "
        f"(online store: {settings.online_store})"
    )


def _child_env(settings: Settings, bootstrap: str, tracking_uri: str, **extra: str) -> dict[str, str]:
    """A child's environment: pointed at what this stack runs, with absolute paths, and the stack's
    partition count (the default depends on KAFKA_BOOTSTRAP_SERVERS, which a child always has)."""
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "DRIFTLOOP_DATA_DIR": str(settings.data_dir.resolve()),
        "DRIFTLOOP_SPEC": str(settings.spec.resolve()),
        "DRIFTLOOP_FEAST_REPO": str(settings.feast_repo.resolve()),
        "DRIFTLOOP_SIGNING_KEY_FILE": str(key_path(settings).resolve()),
        "DRIFTLOOP_PARTITIONS": str(settings.partitions),
        "DRIFTLOOP_BIND_HOST": settings.bind_host,
        **extra,
    }


def _start_worker(
    settings: Settings,
    bootstrap: str,
    tracking_uri: str,
    stack: ExitStack,
    supervisor: Supervisor,
    say: Callable[[str], None],
) -> str:
    """One `driftloop worker` child; ready when its metrics answer (on the same port after a restart)."""
    port = reserve_port(settings.metrics_port, "DRIFTLOOP_METRICS_PORT", settings.bind_host)
    env = _child_env(settings, bootstrap, tracking_uri, DRIFTLOOP_METRICS_PORT=str(port))
    url = f"http://{client_address(settings.bind_host, port)}/metrics"
    # First start registers a cold-start champion in MLflow and restores state: allow for it.
    worker = ManagedProcess(
        "worker",
        [sys.executable, "-m", "driftloop.cli", "worker"],
        settings.data_dir / "logs" / "worker.log",
        env=env,
        readiness=Readiness(lambda _: http_ok(url), f"serving metrics at {url}", timeout=180),
    )
    stack.callback(worker.stop)
    worker.start()
    supervisor.add("worker", worker)
    say(f"worker scoring {settings.topic_events} -> {settings.topic_predictions}; metrics at {url}")
    return url


def _start_adaptive_loop(
    settings: Settings,
    bootstrap: str,
    tracking_uri: str,
    stack: ExitStack,
    supervisor: Supervisor,
    say: Callable[[str], None],
) -> str:
    """The control plane (drift agent, trigger, promotion) and a retrain worker, as children; returns the
    control plane's metrics URL (on the same port after a restart)."""
    port = reserve_port(settings.control_metrics_port, "DRIFTLOOP_CONTROL_METRICS_PORT", settings.bind_host)
    env = _child_env(
        settings, bootstrap, tracking_uri, DRIFTLOOP_LOG_LEVEL="INFO", DRIFTLOOP_CONTROL_METRICS_PORT=str(port)
    )
    children = []
    for name, command, ready_line in (
        ("control plane", "control", CONTROL_PLANE_READY),
        ("retrain worker", "retrain-worker", RETRAIN_WORKER_READY),
    ):
        # Ready = consuming: a demo started before would drift while nobody watches.
        child = ManagedProcess(
            name,
            [sys.executable, "-m", "driftloop.cli", command],
            settings.data_dir / "logs" / f"{command}.log",
            env=env,
            readiness=_logs(ready_line, timeout=180),
        )
        stack.callback(child.stop)
        child.spawn()  # both start at once: each takes seconds of imports
        children.append((command, child))
    for command, child in children:
        child.wait_until_ready()
        supervisor.add(command, child)
    url = f"http://{client_address(settings.bind_host, port)}/metrics"
    say(
        f"control plane watching drift and canaries ({settings.topic_drift}, {settings.topic_audit}; metrics at "
        f"{url}); retrain worker consuming {settings.topic_retrain_requests}"
    )
    return url


def _logs(line: str, timeout: float) -> Readiness:
    """Ready once the process logged `line` since it was (re)started."""
    return Readiness(lambda process: line in process.log_since_start(), f"logging {line!r}", timeout)


def _start_demo(
    settings: Settings,
    bootstrap: str,
    tracking_uri: str,
    rate: float,
    stack: ExitStack,
    supervisor: Supervisor,
    say: Callable[[str], None],
) -> LogFollower:
    """The scripted demo (load/demo.py): the synthetic card-fraud stream at `rate` events/s with an
    abrupt concept drift, until the loop has promoted a retrained model; then the timeline PNG. Returns
    what follows its story in its log (the log is appended to: from where this run starts)."""
    log = settings.data_dir / "logs" / "demo.log"
    story = LogFollower(log, log.stat().st_size if log.exists() else 0)
    demo = ManagedProcess(
        "demo",
        [
            sys.executable,
            "-m",
            "driftloop.load.demo",
            "--bootstrap",
            bootstrap,
            "--rate",
            str(rate),
            "--mlflow-url",
            tracking_uri,
            "--data-dir",
            str(settings.data_dir.resolve()),
        ],
        log,
        env=_child_env(settings, bootstrap, tracking_uri),
    )
    stack.callback(demo.stop)
    demo.start()
    supervisor.add("demo", demo, ends_stack=DEMO_ENDS_STACK)
    say(
        f"demo: synthetic fraud stream at {rate:g} events/s with a concept drift; its story follows here (and in {log})"
    )
    return story


def _live_view(
    settings: Settings, spec: PipelineSpec, info: StackInfo, display: Display, started: float, story: LogFollower | None
) -> LiveView:
    """The view of this stack: its decisions since it started, its workers, its children, the demo's story."""
    from driftloop.live import LiveView
    from driftloop.status import collect_children

    return LiveView(
        display,
        bootstrap=info.bootstrap,
        tracking_uri=info.mlflow_tracking_uri,
        model_name=spec.model.name,
        audit_topic=settings.topic_audit,
        drift_topic=settings.topic_drift,
        partitions=settings.partitions,
        metrics_urls=lambda: info.metrics_urls,
        children=lambda: collect_children(settings),
        decisions_since=started,
        story=story,
    )


def _redact(uri: str) -> str:
    # Never print a database password.
    if "@" in uri and "://" in uri:
        scheme, rest = uri.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return uri
