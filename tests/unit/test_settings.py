import re

import pytest

from driftloop import settings
from driftloop.errors import DriftloopError
from tests.support import REPO


def test_defaults_need_no_external_services():
    config = settings.load(environ={})
    assert config.kafka_bootstrap_servers is None  # embedded broker
    assert config.mlflow_tracking_uri is None  # local SQLite MLflow
    assert config.online_store == "sqlite"
    assert config.spec == settings.DEMO_SPEC
    assert config.topic_dlq == "events.dlq"
    assert config.topic_outcomes_dlq == "outcomes.dlq"
    assert len(set(config.topics)) == 9


def test_partitions_default_to_one_on_the_embedded_broker_and_four_on_kafka(tmp_path):
    assert settings.load(environ={}).partitions == 1
    assert settings.load(environ={"KAFKA_BOOTSTRAP_SERVERS": "kafka:9092"}).partitions == 4
    file = tmp_path / "c.yaml"
    file.write_text("partitions: 3\n")
    assert settings.load(file, environ={}).partitions == 3  # set explicitly, it is kept either way
    assert settings.load(environ={"KAFKA_BOOTSTRAP_SERVERS": "kafka:9092", "DRIFTLOOP_PARTITIONS": "2"}).partitions == 2


def test_environment_wins_over_config_file(tmp_path):
    file = tmp_path / "driftloop.yaml"
    file.write_text("partitions: 8\ntopic_events: tx\nonline_store: redis\n")
    config = settings.load(file, environ={"DRIFTLOOP_PARTITIONS": "2"})
    assert config.partitions == 2
    assert config.topic_events == "tx" and config.topic_dlq == "tx.dlq"
    assert config.online_store == "redis"


def test_config_file_from_environment(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("kafka_bootstrap_servers: 'broker:9092'\n")
    assert settings.load(environ={"DRIFTLOOP_CONFIG": str(file)}).kafka_bootstrap_servers == "broker:9092"


@pytest.mark.parametrize(
    "env, value, fragment",
    [
        ("DRIFTLOOP_PARTITIONS", "zero", "must be a whole number"),
        ("DRIFTLOOP_PARTITIONS", "0", "at least 1"),
        ("DRIFTLOOP_BROKER_PORT", "70000", "TCP port"),
        ("DRIFTLOOP_ONLINE_STORE", "dynamo", "sqlite, redis"),
        ("KAFKA_BOOTSTRAP_SERVERS", "localhost", "host:port"),
        ("MLFLOW_TRACKING_URI", "mlflow:5000", "http://"),
        ("DRIFTLOOP_TOPIC_EVENTS", "bad topic", "topic name"),
        ("DRIFTLOOP_SPEC", "/nonexistent/spec.yaml", "no such file"),
        ("DRIFTLOOP_LOG_LEVEL", "LOUD", "DEBUG"),
        ("DRIFTLOOP_BIND_HOST", "localhost", "must be an IP address"),
    ],
)
def test_invalid_value_names_the_setting(env, value, fragment):
    with pytest.raises(DriftloopError) as error:
        settings.load(environ={env: value})
    message = str(error.value)
    assert env in message and fragment in message and "\n" not in message


def test_unknown_settings_are_refused(tmp_path):
    with pytest.raises(DriftloopError, match="unknown setting DRIFTLOOP_PARTITION "):
        settings.load(environ={"DRIFTLOOP_PARTITION": "3"})
    file = tmp_path / "c.yaml"
    file.write_text("partitons: 3\n")
    with pytest.raises(DriftloopError, match="unknown setting 'partitons'"):
        settings.load(file, environ={})


def test_config_file_errors_are_one_line(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("partitions: [1,\n")
    with pytest.raises(DriftloopError, match=r"c.yaml line \d+: not valid YAML"):
        settings.load(file, environ={})
    with pytest.raises(DriftloopError, match="cannot read config file"):
        settings.load(tmp_path / "missing.yaml", environ={})


def test_readme_configuration_table_matches_settings():
    """The README's table is the user's reference: every setting, its variable and its default."""
    readme = (REPO / "README.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([A-Z_]+)` \| ([^|]*) \|", readme, re.M)}
    for setting in settings.SETTINGS:
        assert setting.env in rows, f"{setting.env} missing from README configuration table"
        if setting.default is not None and setting.name != "spec":
            assert f"`{setting.default}`" in rows[setting.env], setting.env
    assert set(rows) - {s.env for s in settings.SETTINGS} <= {"DRIFTLOOP_CONFIG"}
