"""The embedded Tansu broker: starts on loopback, answers metadata, refuses a taken port, leaves nothing behind."""

import socket

import psutil
import pytest

from driftloop.broker import EmbeddedBroker
from driftloop.errors import DriftloopError
from driftloop.kafka import broker_answers
from driftloop.process import reserve_port


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


def test_a_port_whose_last_server_just_stopped_is_free_again(tmp_path):
    # The server closes first, as a stopped stack's servers do: its side of the connection stays in
    # TIME_WAIT for a minute, which must not stop `driftloop up` from starting again at once. The
    # server sets SO_REUSEADDR as uvicorn (MLflow) and Tansu (tokio) do; the kernel requires it of both.
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()
        client.recv(1)  # the server's FIN: the client closes second, leaving the server side in TIME_WAIT
        client.close()
    assert reserve_port(port, "DRIFTLOOP_BROKER_PORT", "127.0.0.1") == port


def test_missing_binary_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("CALF_TANSU_BIN", str(tmp_path / "no-such-tansu"))
    with pytest.raises(DriftloopError, match="embedded broker binary not found"):
        EmbeddedBroker(0, tmp_path)
