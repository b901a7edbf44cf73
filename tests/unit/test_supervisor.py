"""The supervisor's restart policy on real child processes, its delays shortened to keep the tests quick.

`driftloop up` under supervision as a whole (kill -9 of each of its children) is tests/integration/test_supervision.py.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import psutil
import pytest

from driftloop.errors import DriftloopError
from driftloop.process import ManagedProcess, Readiness
from driftloop.status import scrape
from driftloop.supervisor import Restart, RestartPolicy, Supervisor, SupervisorMetrics

QUICK = RestartPolicy(max_restarts=2, window=60.0, first_delay=0.1, max_delay=0.4, healthy_after=1.0)
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
# Runs until killed the first time; from then on fails at start, as a server whose port was taken would.
FAILS_AFTER_FIRST_RUN = """
import os, sys, time
if os.path.exists(sys.argv[1]):
    print("cannot go on: port taken", flush=True)
    sys.exit(3)
open(sys.argv[1], "w").close()
time.sleep(60)
"""


class Watched:
    """A real Supervisor, with what it said and the restarts it reported kept for the test."""

    def __init__(self, tmp_path, policy: RestartPolicy = QUICK):
        self.tmp_path = tmp_path
        self.said: list[str] = []
        self.restarts: list[Restart] = []
        self.metrics = SupervisorMetrics()
        self.supervisor = Supervisor(policy, self.said.append, self.restarts.append, self.metrics)
        self.processes: list[ManagedProcess] = []

    def start(
        self, label: str, argv: list[str], ends_stack: str | None = None, readiness: Readiness | None = None
    ) -> ManagedProcess:
        process = ManagedProcess(label, argv, self.tmp_path / f"{label}.log", readiness=readiness)
        self.processes.append(process)
        process.start()
        self.supervisor.add(label, process, ends_stack)
        return process

    def check_until(self, done, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"not done within {timeout}s; said: {self.said}"
            self.supervisor.check()
            time.sleep(0.02)

    def times_back(self, label: str) -> int:
        return sum(line.startswith(f"{label} is back: ready ") for line in self.said)


@pytest.fixture
def watched(tmp_path):
    watched = Watched(tmp_path)
    yield watched
    for process in watched.processes:
        process.stop(grace=1)


def test_a_killed_child_is_restarted_with_the_same_command_counted_and_reported(watched, tmp_path):
    process = watched.start("sleeper", SLEEPER)
    killed = process.popen.pid
    os.kill(killed, signal.SIGKILL)
    watched.check_until(lambda: watched.times_back("sleeper") == 1)

    assert watched.said[0] == f"sleeper exited (signal 9); restarting in 0.1s (restart 1; log: {tmp_path}/sleeper.log)"
    assert watched.restarts == [Restart("sleeper", "signal 9", -9, 1, 0.1, tmp_path / "sleeper.log")]
    assert process.running() and process.popen.pid != killed
    assert psutil.Process(process.popen.pid).cmdline() == SLEEPER
    port = watched.metrics.serve(0, "127.0.0.1")
    try:
        samples = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        watched.metrics.stop_serving()
    assert samples["driftloop_child_restarts_total"] == [({"child": "sleeper"}, 1.0)]
    assert samples["driftloop_child_up"] == [({"child": "sleeper"}, 1.0)]


def test_a_crash_loop_stops_with_one_error_naming_the_child_its_last_words_and_log(watched, tmp_path):
    ran = tmp_path / "ran"
    watched.start(
        "server",
        [sys.executable, "-c", FAILS_AFTER_FIRST_RUN, str(ran)],
        readiness=Readiness(lambda _: ran.exists(), "running", timeout=20),
    )
    os.kill(watched.processes[0].popen.pid, signal.SIGKILL)
    started = time.monotonic()
    with pytest.raises(DriftloopError) as stopped:
        watched.check_until(lambda: False)
    assert str(stopped.value) == (
        "server is crash-looping: it exited (code 3) after 2 restarts in the last 1 minutes "
        "(DRIFTLOOP_MAX_RESTARTS=2); "
        f"stopping the stack; its last log line: 'cannot go on: port taken' (log: {tmp_path}/server.log)"
    )
    # 0.1 s, then 0.2 s: the delay doubles
    assert [r.delay for r in watched.restarts] == [0.1, 0.2]
    assert [r.exit_status for r in watched.restarts] == ["signal 9", "code 3"]
    assert time.monotonic() - started >= 0.3
    assert not watched.processes[0].running()


def test_a_child_that_ends_the_stack_is_never_restarted_and_is_seen_first(watched, tmp_path):
    broker = watched.start("broker", SLEEPER, ends_stack="it held every record")
    worker = watched.start("worker", SLEEPER)
    os.kill(worker.popen.pid, signal.SIGKILL)
    os.kill(broker.popen.pid, signal.SIGKILL)
    time.sleep(0.2)
    with pytest.raises(DriftloopError) as stopped:
        watched.supervisor.check()
    assert str(stopped.value) == (
        f"broker exited (signal 9); it held every record: stopping the stack (log: {tmp_path}/broker.log)"
    )
    assert watched.said == [] and watched.restarts == []


def test_the_delay_doubles_up_to_its_cap_and_is_reset_by_a_healthy_run(tmp_path):
    watched = Watched(
        tmp_path, RestartPolicy(max_restarts=10, window=60.0, first_delay=0.1, max_delay=0.2, healthy_after=1.0)
    )
    process = watched.start("sleeper", SLEEPER)
    try:
        for restart in range(1, 4):
            os.kill(process.popen.pid, signal.SIGKILL)
            watched.check_until(lambda restart=restart: len(watched.restarts) == restart)
        watched.check_until(lambda: watched.times_back("sleeper") == 3)
        time.sleep(1.1)  # ready for longer than healthy_after
        watched.supervisor.check()
        os.kill(process.popen.pid, signal.SIGKILL)
        watched.check_until(lambda: len(watched.restarts) == 4)
    finally:
        process.stop(grace=1)
    assert [r.delay for r in watched.restarts] == [0.1, 0.2, 0.2, 0.1]


def test_a_restarted_child_that_never_gets_ready_is_stopped_and_restarted(watched, tmp_path):
    hung = tmp_path / "hung"
    process = watched.start("hung", SLEEPER, readiness=Readiness(lambda _: not hung.exists(), "answering", timeout=1))
    hung.touch()  # from now on it never answers
    os.kill(process.popen.pid, signal.SIGKILL)
    watched.check_until(lambda: len(watched.restarts) == 2, timeout=30)
    assert watched.said[1].startswith("hung exited (not answering within 1s); restarting in 0.2s (restart 2; ")
    assert watched.restarts[1].returncode is None
