"""One settings object, read from an optional YAML file and then the environment (environment wins).

Every setting is declared once in SETTINGS; the loader, its error messages and the README's
configuration table (checked by a test) all come from that declaration.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml

from driftloop.errors import DriftloopError

DEMO_SPEC = Path(__file__).parent / "specs" / "fraud.yaml"
LOOPBACK = "127.0.0.1"  # where every server driftloop starts listens unless DRIFTLOOP_BIND_HOST says otherwise
CONFIG_FILE_ENV = "DRIFTLOOP_CONFIG"


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a TCP port between 0 and 65535 (0 = pick a free one)")
    return value


def _at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise ValueError(f"must be a whole number of at least {minimum}")
        return value

    return parse


_positive_int = _at_least(1)
_count = _at_least(0)


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return text

    return parse


def _bootstrap(text: str) -> str:
    for server in text.split(","):
        host, sep, port = server.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"{server!r} is not host:port (comma-separated for several brokers)")
    return text


def _url(*schemes: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if urlparse(text).scheme not in schemes:
            raise ValueError(f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}")
        return text

    return parse


def _topic(text: str) -> str:
    if not text or len(text) > 249 or not all(c.isalnum() or c in "._-" for c in text):
        raise ValueError("must be a Kafka topic name (letters, digits, '.', '_', '-'; at most 249)")
    return text


def _ip_address(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(
            "must be an IP address: 127.0.0.1 (this host only) or 0.0.0.0 (every interface, as in a container)"
        ) from None


def _existing_file(text: str) -> Path:
    path = Path(text).expanduser()
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    return path


def _path(text: str) -> Path:
    return Path(text).expanduser()


def _level(text: str) -> str:
    return _choice("DEBUG", "INFO", "WARNING", "ERROR")(text.upper())


@dataclass(frozen=True)
class Setting:
    name: str  # attribute name and the key in the YAML config file
    env: str
    parse: Callable[[str], Any]
    default: str | None
    help: str


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "kafka_bootstrap_servers",
        "KAFKA_BOOTSTRAP_SERVERS",
        _bootstrap,
        None,
        "Kafka bootstrap servers (host:port,...). Unset: the CLI starts the embedded Tansu broker.",
    ),
    Setting(
        "mlflow_tracking_uri",
        "MLFLOW_TRACKING_URI",
        _url("http", "https", "sqlite", "postgresql", "file"),
        None,
        "MLflow tracking/registry URI. Unset: `driftloop up` serves MLflow on a SQLite backend in the data dir.",
    ),
    Setting(
        "data_dir",
        "DRIFTLOOP_DATA_DIR",
        _path,
        ".driftloop",
        "Where local state lives: MLflow database and artifacts, Feast registry and stores, logs.",
    ),
    Setting(
        "spec",
        "DRIFTLOOP_SPEC",
        _existing_file,
        str(DEMO_SPEC),
        "Pipeline spec (YAML). Default: the shipped card-fraud demo spec.",
    ),
    Setting(
        "feast_repo",
        "DRIFTLOOP_FEAST_REPO",
        _path,
        "feature_repo",
        "Feast repository directory (feature_store.yaml + definitions derived from the spec).",
    ),
    Setting(
        "online_store",
        "DRIFTLOOP_ONLINE_STORE",
        _choice("sqlite", "redis"),
        "sqlite",
        "Feast online store: sqlite (file in the data dir) or redis.",
    ),
    Setting(
        "redis_url",
        "DRIFTLOOP_REDIS_URL",
        _url("redis", "rediss"),
        "redis://127.0.0.1:6379/0",
        "Redis for the Feast online store when DRIFTLOOP_ONLINE_STORE=redis.",
    ),
    Setting(
        "broker_port",
        "DRIFTLOOP_BROKER_PORT",
        _port,
        "9092",
        "Port of the embedded broker on 127.0.0.1 (0 = a free port).",
    ),
    Setting(
        "mlflow_port",
        "DRIFTLOOP_MLFLOW_PORT",
        _port,
        "5000",
        "Port of the MLflow server/UI that `driftloop up` starts on 127.0.0.1 (0 = a free port).",
    ),
    Setting(
        "metrics_port",
        "DRIFTLOOP_METRICS_PORT",
        _port,
        "9100",
        "Port of the worker's Prometheus /metrics endpoint (0 = a free port).",
    ),
    Setting(
        "bind_host",
        "DRIFTLOOP_BIND_HOST",
        _ip_address,
        LOOPBACK,
        "Address every server driftloop starts listens on (the worker's /metrics, the embedded broker, the "
        "MLflow server). 0.0.0.0 in containers, so other containers reach them (docker-compose.yml sets it).",
    ),
    Setting(
        "supervisor_port",
        "DRIFTLOOP_SUPERVISOR_PORT",
        _port,
        "9101",
        "Port of `driftloop up`'s own Prometheus /metrics on 127.0.0.1: restarts of its children, which of "
        "them are up (0 = a free port).",
    ),
    Setting(
        "control_metrics_port",
        "DRIFTLOOP_CONTROL_METRICS_PORT",
        _port,
        "9102",
        "Port of the control plane's Prometheus /metrics on 127.0.0.1: its decisions, drift evaluations, "
        "retraining durations and the canary trial (0 = a free port).",
    ),
    Setting(
        "max_restarts",
        "DRIFTLOOP_MAX_RESTARTS",
        _count,
        "5",
        "Restarts of one crashed child (worker, control plane, retrain worker, MLflow) that `driftloop up` "
        "makes within 5 minutes; its next exit stops the stack (0: any exit does).",
    ),
    Setting(
        "partitions",
        "DRIFTLOOP_PARTITIONS",
        _positive_int,
        None,
        "Partitions for the topics driftloop creates. Unset: 4 with KAFKA_BOOTSTRAP_SERVERS, 1 on the embedded "
        "broker (it serves one worker, and each partition adds to its cost per fetch).",
    ),
    Setting("topic_events", "DRIFTLOOP_TOPIC_EVENTS", _topic, "events", "Input events topic."),
    Setting("topic_outcomes", "DRIFTLOOP_TOPIC_OUTCOMES", _topic, "outcomes", "Ground-truth outcomes topic."),
    Setting("topic_predictions", "DRIFTLOOP_TOPIC_PREDICTIONS", _topic, "predictions", "Predictions topic."),
    Setting(
        "topic_labeled",
        "DRIFTLOOP_TOPIC_LABELED",
        _topic,
        "labeled",
        "Joined prediction + features + outcome records (the training log).",
    ),
    Setting("topic_drift", "DRIFTLOOP_TOPIC_DRIFT", _topic, "drift", "Drift reports."),
    Setting("topic_audit", "DRIFTLOOP_TOPIC_AUDIT", _topic, "audit", "Every autonomous or operator decision."),
    Setting(
        "topic_retrain_requests",
        "DRIFTLOOP_TOPIC_RETRAIN_REQUESTS",
        _topic,
        "retrain-requests",
        "Retraining requests from the trigger policy.",
    ),
    Setting(
        "signing_key_file",
        "DRIFTLOOP_SIGNING_KEY_FILE",
        _path,
        None,
        "File with the secret key that signs model versions and control records (HMAC-SHA256); the MLflow "
        "registry and Kafka never see it. Unset: `signing.key` in the data dir, which `driftloop up` and "
        "`driftloop keygen` create (mode 0600).",
    ),
    Setting(
        "state_cache_mb",
        "DRIFTLOOP_STATE_CACHE_MB",
        _at_least(8),
        "64",
        "Memory (MB) a worker's state may use beyond its data on disk: RocksDB's block cache and memtables, "
        "and the values changed since the last checkpoint (past their share a checkpoint is taken early). "
        "Window state and the join table live in RocksDB under the data dir, whatever their size.",
    ),
    Setting("log_level", "DRIFTLOOP_LOG_LEVEL", _level, "INFO", "Log level."),
    Setting(
        "heartbeat_file",
        "DRIFTLOOP_HEARTBEAT_FILE",
        _path,
        None,
        "A file the control plane and the retrain worker touch every 5 s while their loop runs, for a "
        "container healthcheck (one process per file). Unset: none.",
    ),
)


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap_servers: str | None
    mlflow_tracking_uri: str | None
    data_dir: Path
    spec: Path
    feast_repo: Path
    online_store: str
    redis_url: str
    broker_port: int
    mlflow_port: int
    metrics_port: int
    bind_host: str
    supervisor_port: int
    control_metrics_port: int
    max_restarts: int
    partitions: int
    topic_events: str
    topic_outcomes: str
    topic_predictions: str
    topic_labeled: str
    topic_drift: str
    topic_audit: str
    topic_retrain_requests: str
    signing_key_file: Path | None
    state_cache_mb: int
    log_level: str
    heartbeat_file: Path | None
    source: str = field(default="defaults", compare=False)

    @property
    def topic_dlq(self) -> str:
        return f"{self.topic_events}.dlq"

    @property
    def topic_outcomes_dlq(self) -> str:
        return f"{self.topic_outcomes}.dlq"

    @property
    def topics(self) -> tuple[str, ...]:
        return (
            self.topic_events,
            self.topic_dlq,
            self.topic_outcomes,
            self.topic_outcomes_dlq,
            self.topic_predictions,
            self.topic_labeled,
            self.topic_drift,
            self.topic_audit,
            self.topic_retrain_requests,
        )

    def replace(self, **changes: Any) -> Settings:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Settings(**values)


_BY_NAME = {s.name: s for s in SETTINGS}
_BY_ENV = {s.env: s for s in SETTINGS}


def load(config_file: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None) -> Settings:
    """Defaults, then the YAML file (argument or $DRIFTLOOP_CONFIG), then the environment."""
    environ = dict(os.environ if environ is None else environ)
    raw: dict[str, tuple[str, str]] = {}  # name -> (text, where it came from)
    config_file = config_file or environ.get(CONFIG_FILE_ENV)
    if config_file:
        for key, value in _read_config_file(Path(config_file)).items():
            raw[key] = ("" if value is None else str(value), f"{config_file}: {key}")
    for env, setting in _BY_ENV.items():
        if env in environ and environ[env] != "":
            raw[setting.name] = (environ[env], env)
    unknown = sorted(k for k in environ if k.startswith("DRIFTLOOP_") and k not in _BY_ENV and k != CONFIG_FILE_ENV)
    if unknown:
        raise DriftloopError(f"unknown setting {unknown[0]} (known: {', '.join(sorted(_BY_ENV))})")

    values: dict[str, Any] = {}
    for setting in SETTINGS:
        text, where = raw.get(setting.name, (setting.default, setting.env))
        if text is None:
            values[setting.name] = None
            continue
        try:
            values[setting.name] = setting.parse(text)
        except ValueError as exc:
            reason = str(exc) if not str(exc).startswith("invalid literal") else "must be a whole number"
            raise DriftloopError(f"invalid setting {where}={text!r}: {reason}") from None
    if values["partitions"] is None:
        values["partitions"] = _default_partitions(values["kafka_bootstrap_servers"])
    return Settings(**values, source=str(config_file) if config_file else "environment")


def _default_partitions(kafka_bootstrap_servers: str | None) -> int:
    """Several partitions let several workers share a topic on Kafka. The embedded broker serves the one
    worker `driftloop up` starts, and lists every batch a partition holds on every fetch of it: a producer
    makes a batch per partition, and 9 minutes into the demo the broker took 103 % of a core on 4
    partitions, 12 % on 1."""
    return 4 if kafka_bootstrap_servers else 1


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        content = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise DriftloopError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise DriftloopError(f"config file {path}{where}: not valid YAML") from None
    if not isinstance(content, dict):
        raise DriftloopError(f"config file {path}: must be a mapping of setting names to values")
    for key in content:
        if key not in _BY_NAME:
            raise DriftloopError(f"config file {path}: unknown setting {key!r} (known: {', '.join(_BY_NAME)})")
    return content
