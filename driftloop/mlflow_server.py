"""The MLflow tracking server + UI that `driftloop up` runs when MLflow is not an external HTTP server."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

from driftloop.errors import DriftloopError
from driftloop.process import ManagedProcess, Readiness, client_address, reserve_port
from driftloop.settings import LOOPBACK


def backend_store_uri(tracking_uri: str | None, data_dir: Path) -> str:
    """The database MLflow keeps runs and the registry in: the configured one, or SQLite in the data dir."""
    if tracking_uri is None:
        return f"sqlite:///{(data_dir / 'mlflow.db').resolve()}"
    return tracking_uri


def http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class MlflowServer(ManagedProcess):
    def __init__(self, backend_uri: str, data_dir: Path, port: int, host: str = LOOPBACK):
        self.port = reserve_port(port, "DRIFTLOOP_MLFLOW_PORT", host)
        self.url = f"http://{client_address(host, self.port)}"
        artifacts = (data_dir / "mlartifacts").resolve()
        super().__init__(
            "MLflow server",
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                backend_uri,
                "--artifacts-destination",
                str(artifacts),
                "--serve-artifacts",
                "--host",
                host,
                "--port",
                str(self.port),
                "--workers",
                "1",
            ],
            data_dir / "logs" / "mlflow.log",
            env=_server_env(),
            # The timeout allows for the first start, which migrates the database schema (slow on a slow disk).
            readiness=Readiness(lambda _: http_ok(f"{self.url}/health"), f"answering HTTP at {self.url}", timeout=120),
        )


def _server_env() -> dict[str, str]:
    """MLflow 3's job execution (GenAI jobs, trace roll-ups; driftloop uses neither) adds 8 processes and slows
    the server's start-up, which is how long a crashed server's restart keeps the registry away (two starts
    each on this busy machine: 9-17 s without, 14-28 s with); off unless the environment says otherwise."""
    return {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}


def require_reachable(tracking_uri: str) -> None:
    if not http_ok(f"{tracking_uri.rstrip('/')}/health", timeout=5):
        raise DriftloopError(f"MLflow at MLFLOW_TRACKING_URI={tracking_uri} does not answer /health")
