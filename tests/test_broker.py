"""The embedded Tansu broker: starts on loopback, answers metadata, refuses a taken port, leaves nothing behind."""

import socket

import psutil
import pytest

from driftloop.broker import EmbeddedBroker
from driftloop.errors import DriftloopError
from driftloop.kafka import broker_answers

pytestmark = pytest.mark.integration


def test_starts_answers_metadata_and_stops_cleanly(tmp_path):
    broker = EmbeddedBroker(0, tmp_path)
    broker.start()
    pid = broker.popen.pid
    try:
        assert broker.bootstrap.startswith("127.0.0.1:")
        assert broker_answers(broker.bootstrap)
    finally:
        broker.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not broker_answers(broker.bootstrap, timeout=1)


def test_taken_port_is_a_clear_error(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(DriftloopError, match=f"port {port} on 127.0.0.1 is taken; set DRIFTLOOP_BROKER_PORT"):
            EmbeddedBroker(port, tmp_path)


def test_missing_binary_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CALF_TANSU_BIN", str(tmp_path / "no-such-tansu"))
    with pytest.raises(DriftloopError, match="embedded broker binary not found"):
        EmbeddedBroker(0, tmp_path)
