"""Supervision of the children `driftloop up` started: restart what crashed, end the stack on what cannot be.

A restartable child (worker, control plane, retrain worker, MLflow server) that exits is stopped for good
first (its whole process group: MLflow's server and the worker leave processes behind that would keep
its port), then spawned again with the same command and environment, so on the same ports, after a
delay: 1 s, doubling up to 30 s, and 1 s again once it had been ready for a minute before it exited.
Every restart is one line through `say`, one call of `on_restart` (the stack publishes an audit record)
and one count of `driftloop_child_restarts_total{child}`. A child that exits again after
`max_restarts` restarts within 5 minutes is crash-looping: the stack stops. A child that ends the
stack (the memory-only broker, the demo) is never restarted.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from driftloop.errors import DriftloopError
from driftloop.metrics_endpoint import MetricsEndpoint
from driftloop.process import ManagedProcess, describe_exit

RESTARTS_METRIC = "driftloop_child_restarts_total"
UP_METRIC = "driftloop_child_up"


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int = 5  # within `window` seconds; the next exit stops the stack
    window: float = 300.0
    first_delay: float = 1.0
    max_delay: float = 30.0
    healthy_after: float = 60.0  # ready this long before it exited, a child's restart waits first_delay again


@dataclass(frozen=True)
class Restart:
    """One restart, as `on_restart` receives it."""

    child: str  # the label: worker, control, retrain-worker, mlflow
    exit_status: str  # "code 1", "signal 9", or why it was stopped
    returncode: int | None  # None when it was stopped for not getting ready
    restarts: int  # of this child since the stack started, this one included
    delay: float
    log_path: Path


class SupervisorMetrics:
    """`driftloop up`'s own Prometheus metrics: per child, its restarts and whether it is up."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._restarts = Counter(
            RESTARTS_METRIC.removesuffix("_total"),
            "Restarts of a child of driftloop up after it exited",
            ["child"],
            registry=self.registry,
        )
        self._up = Gauge(
            UP_METRIC,
            "1 while the child runs and is ready, 0 while it is down or starting",
            ["child"],
            registry=self.registry,
        )
        self._endpoint = MetricsEndpoint(self.registry, "DRIFTLOOP_SUPERVISOR_PORT")

    def track(self, child: str) -> None:
        self._restarts.labels(child)  # exposed as 0 from the start, not only after the first restart
        self._up.labels(child).set(1)

    def restarted(self, child: str) -> None:
        self._restarts.labels(child).inc()

    def set_up(self, child: str, up: bool) -> None:
        self._up.labels(child).set(1 if up else 0)

    def serve(self, port: int, host: str) -> int:
        """Serve /metrics on host:port (0 = a free port) from a daemon thread; returns the bound port."""
        return self._endpoint.serve(port, host)

    def stop_serving(self) -> None:
        self._endpoint.stop()


class _Child:
    def __init__(self, label: str, process: ManagedProcess, ends_stack: str | None, policy: RestartPolicy, now: float):
        self.label, self.process, self.ends_stack = label, process, ends_stack
        self.restarts = 0
        self.recent: deque[float] = deque()  # when it was restarted, within the policy's window
        self.delay = policy.first_delay
        self.spawned_at = now
        self.ready_since: float | None = now  # added once ready
        self.exited_at: float | None = None
        self.exit_status = ""
        self.returncode: int | None = None
        self.restart_at: float | None = None  # set while it waits for its restart


class Supervisor:
    def __init__(
        self,
        policy: RestartPolicy,
        say: Callable[[str], None],
        on_restart: Callable[[Restart], None],
        metrics: SupervisorMetrics,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.policy, self.say, self.on_restart, self.metrics, self.clock = policy, say, on_restart, metrics, clock
        self._children: list[_Child] = []

    def add(self, label: str, process: ManagedProcess, ends_stack: str | None = None) -> None:
        """Watch a started, ready child; `ends_stack` says why its exit ends the stack (None: restart it)."""
        self._children.append(_Child(label, process, ends_stack, self.policy, self.clock()))
        self.metrics.track(label)

    def watch(self, poll_seconds: float = 0.25, on_tick: Callable[[], None] = lambda: None) -> None:
        """Supervise until a child ends the stack (DriftloopError); only a signal ends it otherwise. `on_tick`
        runs after every look at the children (the live view)."""
        while True:
            self.check()
            on_tick()
            time.sleep(poll_seconds)

    def check(self) -> None:
        """One look at every child: what ends the stack first, so a broker's death is never a restart's cause."""
        for child in self._children:
            code = child.process.returncode()
            if child.ends_stack is not None and code is not None:
                status = describe_exit(code)
                raise DriftloopError(
                    f"{child.process.name} exited ({status}); {child.ends_stack}: stopping the "
                    f"stack{_last_words(child.process, status)} (log: {child.process.log_path})"
                )
        for child in self._children:
            if child.ends_stack is None:
                self._check(child, self.clock())

    def _check(self, child: _Child, now: float) -> None:
        if child.restart_at is not None:
            if now >= child.restart_at:
                self._respawn(child, now)
            return
        code = child.process.returncode()
        status = None if code is None else describe_exit(code)
        if status is None and child.ready_since is None:
            readiness = child.process.readiness
            if child.process.ready():
                assert child.exited_at is not None  # only a restarted child waits to be ready here
                child.ready_since = now
                self.metrics.set_up(child.label, True)
                self.say(f"{child.process.name} is back: ready {now - child.exited_at:.1f}s after it exited")
            elif readiness is not None and now - child.spawned_at > readiness.timeout:
                status = f"not {readiness.what} within {readiness.timeout:.0f}s"
        if status is not None:
            self._exited(child, status, code, now)

    def _exited(self, child: _Child, status: str, code: int | None, now: float) -> None:
        process = child.process
        process.stop()  # the rest of its process group too: a leftover would hold its port
        self.metrics.set_up(child.label, False)
        while child.recent and child.recent[0] <= now - self.policy.window:
            child.recent.popleft()
        if len(child.recent) >= self.policy.max_restarts:
            raise DriftloopError(
                f"{process.name} is crash-looping: it exited ({status}) after {len(child.recent)} restarts in the "
                f"last {self.policy.window / 60:g} minutes (DRIFTLOOP_MAX_RESTARTS={self.policy.max_restarts}); "
                f"stopping the stack{_last_words(process, status)} (log: {process.log_path})"
            )
        if child.ready_since is not None and now - child.ready_since >= self.policy.healthy_after:
            child.delay = self.policy.first_delay
        child.exited_at, child.exit_status, child.returncode, child.ready_since = now, status, code, None
        child.restart_at = now + child.delay
        self.say(
            f"{process.name} exited ({status}); restarting in {child.delay:g}s "
            f"(restart {child.restarts + 1}; log: {process.log_path})"
        )

    def _respawn(self, child: _Child, now: float) -> None:
        child.process.spawn()
        child.restarts += 1
        child.recent.append(now)
        child.spawned_at, child.restart_at = now, None
        delay, child.delay = child.delay, min(child.delay * 2, self.policy.max_delay)
        self.metrics.restarted(child.label)
        self.on_restart(
            Restart(child.label, child.exit_status, child.returncode, child.restarts, delay, child.process.log_path)
        )


def _last_words(process: ManagedProcess, status: str) -> str:
    """A process that exited with a code usually said why last (a traceback's last line); a signal did not."""
    line = process.last_log_line() if status.startswith("code") else ""
    return f"; its last log line: {line!r}" if line else ""
