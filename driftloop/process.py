"""Child processes that never outlive the CLI that started them."""

from __future__ import annotations

import ctypes
import ipaddress
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from driftloop.errors import DriftloopError

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child before exec: if the CLI is SIGKILLed it cannot clean up, so the kernel
    # sends the child SIGTERM instead. The child also gets its own session so stop() can signal
    # its whole process group (MLflow's server forks workers).
    os.setsid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True)
class Readiness:
    """When a started process counts as ready: `check(process)` returns True within `timeout` seconds."""

    check: Callable[[ManagedProcess], bool]
    what: str  # says what `check` waits for, in error messages: "answering HTTP at ..."
    timeout: float


class ManagedProcess:
    """A named child process with a log file, a readiness check and an orderly stop."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        readiness: Readiness | None = None,
    ):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.env = env
        self.readiness = readiness
        self.popen: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self) -> None:
        """Spawn the process and wait until it is ready."""
        self.spawn()
        self.wait_until_ready()

    def spawn(self) -> None:
        """Start the process (again, after it exited) without waiting for it to be ready."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            try:
                self.popen = subprocess.Popen(
                    self.argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=self.env,
                    preexec_fn=_die_with_parent,
                )
            except OSError as exc:
                raise DriftloopError(f"cannot start {self.name} ({self.argv[0]}): {exc.strerror}") from None

    def wait_until_ready(self) -> None:
        """Wait for the readiness check given at construction (nothing to wait for without one)."""
        readiness = self.readiness
        if readiness is not None:
            self.wait_ready(lambda: readiness.check(self), readiness.timeout, readiness.what)

    def wait_ready(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll `check` until it returns True; fail clearly if the process dies or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen is not None and self.popen.poll() is not None:
                raise DriftloopError(
                    f"{self.name} exited with code {self.popen.returncode} before {what}; "
                    f"last log line: {self.last_log_line()!r} (log: {self.log_path})"
                )
            if check():
                return
            time.sleep(0.2)
        self.stop()
        raise DriftloopError(f"{self.name} did not become ready ({what}) within {timeout:.0f}s (log: {self.log_path})")

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def ready(self) -> bool:
        """Whether the readiness check passes now (always, without one)."""
        return self.readiness is None or self.readiness.check(self)

    def returncode(self) -> int | None:
        """The exit code (negative: minus the signal that killed it); None while it runs or before it started."""
        return None if self.popen is None else self.popen.poll()

    def log_since_start(self) -> str:
        """What the process logged since it was last spawned (the log file is appended to, not replaced)."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL whatever is left of it."""
        if self.popen is None:
            return
        pgid = self.popen.pid  # setsid made the child its own group leader
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            try:
                self.popen.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            if not _group_alive(pgid):
                break
            # The leader exited but its forked workers linger: give them the same grace.
            _wait_group_gone(pgid, wait)
            if not _group_alive(pgid):
                break
        self.popen = None

    def last_log_line(self) -> str:
        try:
            lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return ""
        return lines[-1].strip() if lines else ""


def describe_exit(returncode: int) -> str:
    """ "code 1", or "signal 9" for a process a signal killed (kill -9, the kernel's OOM killer)."""
    return f"signal {-returncode}" if returncode < 0 else f"code {returncode}"


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_group_gone(pgid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)


def reserve_port(port: int, setting: str, host: str) -> int:
    """Return `port` if `host` has it free (or a free port for 0); a clear error if it is taken."""
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As the servers themselves bind (uvicorn, Tansu): connections of a server stopped a moment ago
        # linger in TIME_WAIT for a minute and do not make the port taken; a listener still does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise DriftloopError(
                f"port {port} on {host} is taken; set {setting} to another port (0 picks a free one)"
            ) from None
        return sock.getsockname()[1]


def client_address(bind_host: str, port: int) -> str:
    """host:port where a client on this machine reaches a server listening on bind_host:port (a server
    on every interface, 0.0.0.0 or ::, is reached on loopback)."""
    address = ipaddress.ip_address(bind_host)
    if address.is_unspecified:
        address = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def listen_address(bind_host: str, port: int) -> str:
    """host:port to listen on, bracketed for IPv6."""
    return f"[{bind_host}]:{port}" if ipaddress.ip_address(bind_host).version == 6 else f"{bind_host}:{port}"
