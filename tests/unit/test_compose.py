"""docker-compose.yml wiring, checked by parsing alone: CI has a docker client but no engine.

Each test is a mistake that would otherwise surface only as a stack that starts and then does
nothing useful: a worker dialling the wrong broker address, MLflow pointed at the wrong database,
Prometheus scraping a port nobody listens on, a dependency started before it is ready.
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from tests.support import REPO
from tests.support.dashboards import dashboard_queries

COMPOSE_FILE = REPO / "docker-compose.yml"

SERVICES = {"kafka", "redis", "postgres", "mlflow", "keygen", "worker", "control", "retrain", "prometheus", "grafana"}
DRIFTLOOP_SERVICES = ("worker", "control", "retrain")  # the processes running driftloop commands
# The settings the compose stack may set: the documented names, i.e. the rows of the README's settings table.
DOCUMENTED_SETTINGS = set(re.findall(r"^\| `([A-Z][A-Z_]+)` \|", (REPO / "README.md").read_text(), re.MULTILINE))
# What `driftloop up` supervises, and what they need; compose must restart and health-check them too.
SUPERVISED = ("kafka", "redis", "postgres", "mlflow", *DRIFTLOOP_SERVICES)
HEARTBEAT_SERVICES = ("control", "retrain")  # no HTTP to ask: their healthcheck reads the file their loop touches
# What the image needs; these are project files, so the COPY list must be exactly this.
DOCKERFILE_COPIES = {
    "pyproject.toml",
    "constraints.txt",
    "README.md",
    "driftloop",
    "streams",
    "features",
    "models",
    "retrain",
    "load",
    "feature_repo",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def env(service: dict) -> dict[str, str]:
    """A service's environment as strings, whichever of the two compose syntaxes it uses."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
    return {key: None if value is None else str(value) for key, value in raw.items()}


def command(service: dict) -> list[str]:
    raw = service.get("command") or []
    return shlex.split(raw) if isinstance(raw, str) else [str(part) for part in raw]


def option(args: list[str], name: str) -> str:
    assert name in args, f"{name} missing from {args}"
    return args[args.index(name) + 1]


def depends_on(service: dict) -> dict[str, dict]:
    """depends_on as {target: options}; the list form means condition service_started."""
    raw = service.get("depends_on") or {}
    if isinstance(raw, list):
        return {target: {"condition": "service_started"} for target in raw}
    return {target: options or {"condition": "service_started"} for target, options in raw.items()}


def has_healthcheck(service: dict) -> bool:
    check = service.get("healthcheck")
    return bool(check) and not check.get("disable") and check.get("test") not in (None, ["NONE"])


def volume_mounts(service: dict) -> list[tuple[str | None, str]]:
    """(source, container path) for every mount, short or long syntax; source None if anonymous."""
    mounts = []
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            mounts.append((volume.get("source"), volume["target"]))
        else:
            parts = volume.split(":")
            mounts.append((parts[0], parts[1]) if len(parts) > 1 else (None, parts[0]))
    return mounts


def host_path(service: dict, container_path: str) -> Path:
    """The repo file bind-mounted at container_path (or at the directory containing it)."""
    for source, target in volume_mounts(service):
        if source and source.startswith(".") and (container_path == target or container_path.startswith(target + "/")):
            return REPO / source / Path(container_path).relative_to(target)
    raise AssertionError(f"nothing from the repo is mounted at {container_path}")


def published_ports(service: dict) -> list[str]:
    """Host ports a service publishes ("IP:HOST:CONTAINER", "HOST:CONTAINER" or long syntax)."""
    ports = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            if port.get("published") is not None:
                ports.append(str(port["published"]))
        else:
            parts = str(port).split("/")[0].split(":")
            if len(parts) >= 2:  # a bare "CONTAINER" gets a random host port: cannot clash
                ports.append(parts[-2])
    return ports


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """'NAME://host:port,...' as {NAME: (host, port)}."""
    result = {}
    for item in value.split(","):
        name, _, address = item.strip().partition("://")
        host, _, port = address.rpartition(":")
        result[name] = (host, int(port))
    return result


def test_all_services_present(services):
    assert SERVICES <= set(services), f"missing: {sorted(SERVICES - set(services))}"


def test_kafka_runs_kraft_without_zookeeper(compose, services):
    kafka = env(services["kafka"])
    assert {"broker", "controller"} <= set(kafka["KAFKA_PROCESS_ROLES"].split(","))
    # No ZooKeeper service, image or setting anywhere (comments aside).
    assert "zookeeper" not in yaml.safe_dump(compose).lower()
    # The quorum voter must be this node, at the port its CONTROLLER listener binds.
    voter_id, _, voter = kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    assert voter_id == kafka["KAFKA_NODE_ID"]
    host, _, port = voter.rpartition(":")
    assert host == "kafka" and int(port) == listeners(kafka["KAFKA_LISTENERS"])["CONTROLLER"][1]


def test_kafka_does_not_auto_create_topics(services):
    assert env(services["kafka"])["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_kafka_healthcheck_asks_the_broker(services):
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in " ".join(services["kafka"]["healthcheck"]["test"])


def test_kafka_host_listener_is_published_on_its_advertised_port(services):
    kafka = env(services["kafka"])
    bound = listeners(kafka["KAFKA_LISTENERS"])
    for name, (host, port) in listeners(kafka["KAFKA_ADVERTISED_LISTENERS"]).items():
        assert bound[name][1] == port, f"{name} advertises port {port} but binds {bound[name][1]}"
        if host == "localhost":
            assert str(port) in published_ports(services["kafka"]), f"{name} advertises localhost:{port} unpublished"


def test_depends_on_waits_for_health(services):
    for name, service in services.items():
        for target, options in depends_on(service).items():
            assert target in services, f"{name} depends on unknown service {target}"
            if has_healthcheck(services[target]):
                assert options.get("condition") == "service_healthy", f"{name} should wait for {target} healthy"


def test_every_awaited_service_has_a_healthcheck(services):
    awaited = {
        target
        for service in services.values()
        for target, options in depends_on(service).items()
        if options.get("condition") != "service_completed_successfully"
    }  # one-shot jobs finish instead
    assert {"kafka", "redis", "postgres", "mlflow"} <= awaited
    for target in awaited:
        assert has_healthcheck(services[target]), f"{target} is waited on but has no healthcheck"


def test_no_undocumented_settings(services):
    worker = env(services["worker"])
    assert set(worker) <= DOCUMENTED_SETTINGS, f"undocumented: {sorted(set(worker) - DOCUMENTED_SETTINGS)}"
    # driftloop refuses to start on an unknown DRIFTLOOP_* variable, whichever service sets it.
    for name, service in services.items():
        stray = {key for key in env(service) if key.startswith("DRIFTLOOP_")} - DOCUMENTED_SETTINGS
        assert not stray, f"{name} sets unknown {sorted(stray)}"


@pytest.mark.parametrize("name", DRIFTLOOP_SERVICES)
def test_driftloop_settings_are_real_settings(services, name):
    from driftloop.settings import SETTINGS

    known = {setting.env for setting in SETTINGS}
    assert set(env(services[name])) <= known


@pytest.mark.parametrize("name", DRIFTLOOP_SERVICES)
def test_driftloop_commands_exist(services, name):
    from driftloop.cli import build_parser

    program, command_name = services[name]["command"][:2]
    assert program == "driftloop"
    build_parser().parse_args([command_name])  # exits (fails the test) on an unknown command


@pytest.mark.parametrize("name", DRIFTLOOP_SERVICES)
def test_driftloop_reaches_kafka_on_its_internal_listener(services, name):
    kafka = env(services["kafka"])
    advertised = set(listeners(kafka["KAFKA_ADVERTISED_LISTENERS"]).values())
    for server in env(services[name])["KAFKA_BOOTSTRAP_SERVERS"].split(","):
        host, _, port = server.strip().rpartition(":")
        assert host == "kafka", f"{server} is not the kafka service"
        assert (host, int(port)) in advertised, f"{server} is not an advertised listener"


@pytest.mark.parametrize("name", DRIFTLOOP_SERVICES)
def test_driftloop_reaches_mlflow(services, name):
    mlflow = command(services["mlflow"])
    uri = urlparse(env(services[name])["MLFLOW_TRACKING_URI"])
    assert uri.scheme == "http" and uri.hostname == "mlflow"
    assert uri.port == int(option(mlflow, "--port"))
    assert option(mlflow, "--host") == "0.0.0.0", "MLflow must listen beyond its own container"
    # MLflow 3 answers 403 to Host headers outside --allowed-hosts (default: localhost, private IPs).
    allowed = option(mlflow, "--allowed-hosts").split(",")
    assert "*" in allowed or any(
        fnmatch.fnmatch(uri.netloc, pattern) if "*" in pattern else uri.netloc == pattern for pattern in allowed
    ), f"{uri.netloc} is not in --allowed-hosts {allowed}"


def test_mlflow_healthcheck_probes_health(services):
    assert "http://localhost:5000/health" in " ".join(services["mlflow"]["healthcheck"]["test"])


def test_mlflow_backend_is_the_postgres_service(services):
    postgres = env(services["postgres"])
    uri = urlparse(option(command(services["mlflow"]), "--backend-store-uri"))
    assert uri.scheme.startswith("postgresql") and uri.hostname == "postgres" and (uri.port or 5432) == 5432
    assert uri.username == postgres["POSTGRES_USER"]
    assert uri.password == postgres["POSTGRES_PASSWORD"]
    assert uri.path.lstrip("/") == postgres["POSTGRES_DB"]


def test_worker_spec_is_shipped_in_the_image(services):
    # The Dockerfile copies the repo's driftloop/ to /app/driftloop/.
    spec = Path(env(services["worker"])["DRIFTLOOP_SPEC"])
    assert (REPO / spec.relative_to("/app")).is_file()


def scrape_targets(services) -> set[str]:
    """host:port of every target the compose file's Prometheus scrapes."""
    prometheus = services["prometheus"]
    config_path = next(
        (arg.split("=", 1)[1] for arg in command(prometheus) if arg.startswith("--config.file=")),
        "/etc/prometheus/prometheus.yml",  # the image's default
    )
    config = yaml.safe_load(host_path(prometheus, config_path).read_text())
    targets = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            targets.update(static.get("targets", []))
        for dns in job.get("dns_sd_configs", []):
            targets.update(f"{name}:{dns['port']}" for name in dns["names"])
    return targets


def test_prometheus_scrapes_the_control_plane_metrics_port(services):
    port = env(services["control"])["DRIFTLOOP_CONTROL_METRICS_PORT"]
    assert f"control:{port}" in scrape_targets(services)
    assert port in [str(exposed) for exposed in services["control"].get("expose", [])]


def test_prometheus_scrapes_the_worker_metrics_port(services):
    targets = scrape_targets(services)
    metrics_port = env(services["worker"])["DRIFTLOOP_METRICS_PORT"]
    assert f"worker:{metrics_port}" in targets
    assert metrics_port in [str(port) for port in services["worker"].get("expose", [])]
    # driftloop's servers listen on loopback by default: Prometheus, in another container, needs more
    assert env(services["worker"])["DRIFTLOOP_BIND_HOST"] == "0.0.0.0"


def test_grafana_datasource_is_the_prometheus_service(services):
    grafana = services["grafana"]
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    urls = [
        source["url"]
        for file in sorted((provisioning / "datasources").glob("*.y*ml"))
        for source in yaml.safe_load(file.read_text()).get("datasources", [])
        if source["type"] == "prometheus"
    ]
    assert urls and all(urlparse(url).hostname == "prometheus" for url in urls), urls
    # Grafana talks to Prometheus inside the network: its container port, not a published one.
    assert all(urlparse(url).port == 9090 for url in urls), urls


def test_grafana_dashboards_load(services):
    grafana = services["grafana"]
    provisioning = host_path(grafana, "/etc/grafana/provisioning")
    datasource_uids = {
        source.get("uid")
        for file in (provisioning / "datasources").glob("*.y*ml")
        for source in yaml.safe_load(file.read_text()).get("datasources", [])
    }
    paths = [
        provider["options"]["path"]
        for file in (provisioning / "dashboards").glob("*.y*ml")
        for provider in yaml.safe_load(file.read_text()).get("providers", [])
    ]
    assert paths
    for path in paths:
        dashboards = sorted(host_path(grafana, path).glob("*.json"))
        assert dashboards, f"no dashboard JSON behind provider path {path}"
        for file in dashboards:
            dashboard = json.loads(file.read_text())
            assert dashboard.get("title"), file
            # A panel naming a datasource uid that is not provisioned shows "datasource not found".
            for panel in dashboard.get("panels", []):
                source = panel.get("datasource")
                if isinstance(source, dict) and source.get("type") == "prometheus":
                    assert source["uid"].startswith("$") or source["uid"] in datasource_uids, (file, source)


def exposed_series() -> dict[str, set[str]]:
    """{series name: its label names} as a worker, the control plane and `driftloop up` expose them, every
    metric having been fed once."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from driftloop.models.live_metrics import LiveMetrics
    from driftloop.streams.control.metrics import ControlMetrics
    from driftloop.streams.worker.metrics import STAGES, WorkerMetrics
    from driftloop.supervisor import SupervisorMetrics

    metrics = WorkerMetrics()
    metrics.info(worker_id="w", spec="s")
    metrics.batch(1, dict.fromkeys(STAGES, 0.001))
    metrics.events_predicted(1)
    metrics.dead_lettered("invalid_json")
    metrics.predictions(1, "champion", 1)
    metrics.unseen_categories("country")
    metrics.missing_values("channel")
    metrics.event_latencies([0.01])
    metrics.feast_rows(1)
    metrics.outcomes("joined")
    metrics.join_pending(predictions=1, outcomes=1)
    metrics.consumer_lag({("events", 0): 1})
    metrics.model_versions({("m", "champion"): 1})
    metrics.bad_records("labeled")
    live = LiveMetrics(threshold=0.5)
    live.update(1, 1, 0.9)
    metrics.live_metrics(live.snapshot())
    supervisor = SupervisorMetrics()
    supervisor.track("worker")
    control = ControlMetrics()
    control.observe(
        [("audit", b'{"actor": "trigger", "action": "retrain_triggered"}')],
        in_flight=None,
        last_finished=None,
        trial={"champion": {"samples": 1}, "challenger": {"samples": 1}},
        now=0.0,
    )
    series: dict[str, set[str]] = {}
    for registry in (metrics.registry, supervisor.registry, control.registry):
        for family in text_string_to_metric_families(generate_latest(registry).decode()):
            for sample in family.samples:
                series.setdefault(sample.name, set()).update(sample.labels)
    return series


def test_grafana_dashboards_query_only_what_driftloop_exposes():
    # A misspelt metric or label is no error in Grafana, only a panel that stays empty forever.
    series = exposed_series()
    queries = dashboard_queries()
    assert queries
    for title, expr in queries:
        names = set(re.findall(r"\bdriftloop_\w+", expr))
        assert names, f"{title}: {expr} queries no driftloop metric"
        assert names <= set(series), f"{title}: driftloop exposes no {sorted(names - set(series))}"
        labels = set().union(*(series[name] for name in names))
        grouped = {
            label.strip()
            for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr)
            for label in group.split(",")
            if label.strip()
        }
        selected = {
            label
            for selector in re.findall(r"\{([^}]*)\}", expr)
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector)
        }
        assert grouped | selected <= labels, f"{title}: {expr} uses labels {sorted((grouped | selected) - labels)}"


def test_host_path_mounts_exist(compose, services):
    declared = set(compose.get("volumes") or {})
    for name, service in services.items():
        for source, _ in volume_mounts(service):
            if source is None:
                continue
            if source.startswith("."):
                assert (REPO / source).exists(), f"{name} mounts missing {source}"
            elif not source.startswith("/"):
                assert source in declared, f"{name} uses undeclared named volume {source}"


def dockerfile_copy_sources() -> list[str]:
    sources = []
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if not re.match(r"\s*COPY\s", line, re.IGNORECASE):
            continue
        args = line.split(None, 1)[1].strip()
        parts = json.loads(args) if args.startswith("[") else args.split()
        sources += [part.rstrip("/") for part in parts[:-1] if not part.startswith("--")]
    return sources


def test_dockerfile_copies_exactly_the_project_files():
    sources = dockerfile_copy_sources()
    assert len(sources) == len(set(sources)), "a file is copied twice"
    assert set(sources) == DOCKERFILE_COPIES
    ignored = {line.strip().rstrip("/") for line in (REPO / ".dockerignore").read_text().splitlines()}
    assert not ignored & set(sources), f".dockerignore hides {sorted(ignored & set(sources))} from COPY"


def test_dockerfile_copies_existing_files():
    # The listed project files are written alongside this one; anything else copied must already exist.
    for source in set(dockerfile_copy_sources()) - DOCKERFILE_COPIES:
        assert (REPO / source).exists(), source


def test_no_host_port_published_twice(services):
    seen: dict[str, str] = {}
    for name, service in services.items():
        for port in published_ports(service):
            assert port not in seen, f"host port {port} published by {seen[port]} and {name}"
            seen[port] = name


def _compose_plugin() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _compose_plugin(), reason="the docker compose CLI plugin is not installed")
def test_docker_compose_config_accepts_the_file():
    # `config` only resolves and validates the file: it needs no Docker engine.
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE_FILE), "config", "-q"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
