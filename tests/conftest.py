"""Shared fixtures: a real Kafka-compatible broker, and the local Redis/Postgres services when present."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from driftloop.kafka import wait_for_broker
from driftloop.signing import create_key

REPO = Path(__file__).resolve().parents[1]
KEY_ENV = "DRIFTLOOP_SIGNING_KEY_FILE"


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


def key_environ() -> dict[str, str]:
    """The session's signing key setting, for `settings.load(environ=...)`."""
    return {KEY_ENV: os.environ[KEY_ENV]}


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
