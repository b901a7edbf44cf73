"""One Prometheus registry served on /metrics from a daemon thread: the worker's, the control plane's and
`driftloop up`'s own."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from driftloop.errors import DriftloopError


class MetricsEndpoint:
    def __init__(self, registry: CollectorRegistry, port_setting: str):
        self.registry = registry
        self.port_setting = port_setting  # the environment variable that moves it, for the error message
        self._served: tuple[WSGIServer, threading.Thread] | None = None

    def serve(self, port: int, host: str) -> int:
        """Serve on host:port (0 = a free port); returns the bound port."""
        if self._served is not None:
            raise RuntimeError("the metrics endpoint is already being served")
        try:
            self._served = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise DriftloopError(
                f"cannot serve metrics on {host}:{port}: {exc.strerror or exc} "
                f"(choose another {self.port_setting}, or 0 for a free one)"
            ) from exc
        return self._served[0].server_port

    def stop(self) -> None:
        """Close the socket and join the thread; a no-op when not serving."""
        if self._served is None:
            return
        server, thread = self._served
        server.shutdown()
        server.server_close()
        thread.join()
        self._served = None
