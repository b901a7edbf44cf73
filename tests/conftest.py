"""Shared fixtures: a real Kafka-compatible broker, the local Redis/Postgres services when present, a signing
key, a template MLflow database. Shared helpers are in tests/support/.

Tests are grouped by kind: tests/unit/ run in-process; tests/integration/ start a broker, servers or
driftloop processes. Every test in tests/integration/, and every test that asks for a broker or a service
fixture, carries the `integration` marker (`-m "not integration"` runs the rest).
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from pathlib import Path

# Before any test module imports Feast directly (tests/unit/test_feast_repo.py does): `import feast` sets
# PROMETHEUS_MULTIPROC_DIR, and a prometheus_client imported after that keeps every metric in shared files,
# so each WorkerMetrics of the session would read the counts of the ones before it.
import prometheus_client  # noqa: F401
import pytest

from driftloop.kafka import wait_for_broker
from driftloop.models import registry
from driftloop.signing import create_key
from tests.support import KEY_ENV
from tests.support.models import DEMO

SERVICE_FIXTURES = {"kafka_bootstrap", "redis_url", "postgres_url"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "integration" in item.path.parts or SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.integration)


def _docker_reachable() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:  # no socket, no permission, no daemon: all mean "no engine here"
        return False


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session", autouse=True)
def signing_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One signing key for the session, named in the environment: what tests register is signed with the key
    the components they start verify with, as in one stack (`key_environ()` for settings built by hand)."""
    path = tmp_path_factory.mktemp("signing") / "signing.key"
    create_key(path)
    os.environ[KEY_ENV] = str(path)
    yield path
    os.environ.pop(KEY_ENV, None)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> str:
    """KAFKA_BOOTSTRAP_SERVERS if set; else a testcontainers Kafka if Docker answers; else embedded Tansu."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        wait_for_broker(external)
        yield external
        return
    if _docker_reachable():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("confluentinc/cp-kafka:7.6.0").with_kraft() as container:
            yield container.get_bootstrap_server()
        return
    from driftloop.broker import EmbeddedBroker

    broker = EmbeddedBroker(0, tmp_path_factory.mktemp("broker"))
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture
def unique() -> str:
    """A short unique suffix, so tests sharing the session broker never share topics or groups."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def redis_url() -> str:
    if not _port_open("127.0.0.1", 6379):
        pytest.skip("Redis is not reachable on 127.0.0.1:6379 (the Redis online-store configuration needs it)")
    return "redis://127.0.0.1:6379/0"


@pytest.fixture
def postgres_url(unique: str) -> str:
    """A fresh database on the local PostgreSQL, dropped afterwards."""
    if not _port_open("127.0.0.1", 5432):
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432 (the Postgres MLflow backend needs it)")
    import psycopg2

    name = f"driftloop_{unique}"
    admin = psycopg2.connect(host="127.0.0.1", port=5432, dbname="test", user=os.environ.get("PGUSER", "postgres"))
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{os.environ.get('PGUSER', 'postgres')}@127.0.0.1:5432/{name}"
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def empty_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite database with its schema created once per session (the migrations take seconds);
    tests copy it, never write to it."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def tracking(tmp_path: Path, empty_mlflow_db: Path) -> str:
    shutil.copyfile(empty_mlflow_db, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    # the experiment's artifacts go under tmp_path, not into ./mlruns of the repo
    registry.ensure_experiment(DEMO.name, tracking_uri=uri, artifact_location=str(tmp_path / "artifacts"))
    return uri
