"""The data plane as `driftloop bench` measures it: `driftloop worker` processes on a pipeline of their own.

Each worker is its own process (`python -m driftloop.cli worker`, as `driftloop up` starts it), so its
memory is its own to measure and it can be killed and restarted: `DataPlaneWorkers` prepares the
pipeline (topics, Feast repository, a signing key and the demo's champion, trained on a warm-up
slice of the stream and registered with an MLflow server of its own over SQLite, as `driftloop up` runs
it, all under `work_dir`), starts
`workers` processes in one consumer group, reads their stage timings from /metrics, their memory
from /proc, and restarts the first one after `kill -9`.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, cast

from driftloop import kafka
from driftloop.errors import DriftloopError
from driftloop.mlflow_server import MlflowServer, backend_store_uri

STAGE_METRIC = "driftloop_stage_seconds"
READY_LINE = re.compile(r"worker consuming; metrics at (http://\S+/metrics)")
# streams/worker/loop.py logs this once a worker has restored what it was assigned
RESTORED_LINE = re.compile(
    r"assigned (\d+) partitions; restored (\d+) entity states, (\d+) journal chunks and "
    r"(\d+) waiting join entries in ([\d.]+)s"
)
START_PATIENCE_S = 180.0
SETTLE_S = 3.0  # three checkpoint intervals


class DataPlaneWorkers:
    """`workers` worker processes of one pipeline under `work_dir`."""

    def __init__(
        self,
        bootstrap: str,
        run: str,
        partitions: int,
        work_dir: Path,
        workers: int = 1,
        spec_changes: dict[str, Any] | None = None,
    ):
        import yaml

        from driftloop import settings as settings_module
        from driftloop.spec import load_spec
        from driftloop.streams.topology import Topology

        self.kind = "data_plane" if workers == 1 else f"data_plane_{workers}_workers"
        self.workers = workers
        work_dir.mkdir(parents=True, exist_ok=True)
        self.work_dir = work_dir
        spec = yaml.safe_load(settings_module.DEMO_SPEC.read_text())  # the demo events need the demo spec
        spec["name"] = spec["model"]["name"] = f"bench_{run}"  # own internal topics, group and model
        spec.update(spec_changes or {})
        spec_path = work_dir / "spec.yaml"
        spec_path.write_text(yaml.safe_dump(spec))
        # A server, as the workers of `driftloop up` and docker-compose.yml have: they read it over HTTP.
        self.registry = MlflowServer(backend_store_uri(None, work_dir), work_dir, 0)
        self.environ = {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "MLFLOW_TRACKING_URI": self.registry.url,
            "DRIFTLOOP_DATA_DIR": str(work_dir / "data"),
            "DRIFTLOOP_FEAST_REPO": str(work_dir / "feature_repo"),
            "DRIFTLOOP_SPEC": str(spec_path),
            "DRIFTLOOP_METRICS_PORT": "0",
            "DRIFTLOOP_PARTITIONS": str(partitions),
            **{
                f"DRIFTLOOP_TOPIC_{name.upper()}": f"bench-{run}-{name}"
                for name in ("events", "outcomes", "predictions", "labeled", "drift", "audit", "retrain_requests")
            },
        }
        self.settings = settings_module.load(environ=self.environ)
        self.spec = load_spec(spec_path)
        topology = Topology.of(self.settings, self.spec)
        self.bootstrap = bootstrap
        self.input_topic, self.output_topic = topology.events, topology.predictions
        self.dead_letter_topic: str | None = topology.events_dlq
        self.topics = [*self.settings.topics, *topology.internal, *topology.changelogs]
        self._processes: list[subprocess.Popen] = []
        self._logs: list[Path] = []
        self._metrics: list[str] = []
        self.model: dict[str, Any] | None = None  # the champion it scores with, once prepared
        self.balanced_at_ms: float | None = None

    def prepare(self, warmup: list[tuple[dict[str, Any], int]]) -> None:
        """Topics, Feast objects, a signing key and a champion trained on `warmup` (row, label) pairs."""
        from driftloop.features.feast.repo import apply as feast_apply
        from driftloop.models.bootstrap import ensure_champion
        from driftloop.signing import create_key, key_path, load_key

        self.registry.start()
        feast_apply(self.settings, self.spec)
        create_key(key_path(self.settings))  # a pipeline of its own, so a signing key of its own
        kafka.ensure_topics(self.bootstrap, self.settings.topics, self.settings.partitions)
        # The demo's steady state: its own model (gradient boosting, ONNX) as champion, trained on a
        # warm-up slice of the stream, not the River placeholder that serves only until the first training.
        tracking_uri = cast(str, self.settings.mlflow_tracking_uri)  # self.environ names it
        champion = ensure_champion(self.spec, tracking_uri, warmup=warmup, key=load_key(key_path(self.settings)))
        self.model = {
            "name": self.spec.model.name,
            "version": champion.version,
            "flavor": self.spec.model.flavor,
            "estimator": self.spec.model.estimator,
            "trained_on_events": len(warmup),
        }

    def start(self) -> None:
        """Start the workers and return once each has its share of the partitions, noting when
        (`balanced_at_ms`): a second worker joins after the first has begun, and the rebalance that
        follows is not the throughput of two workers."""
        for index in range(self.workers):
            self._spawn(index)
        for index in range(self.workers):
            self._wait_ready(index)
        partitions = 4 * self.settings.partitions  # events, outcomes and the two join topics
        deadline = time.monotonic() + START_PATIENCE_S
        while True:
            latest = [RESTORED_LINE.findall(log.read_text(errors="replace")) for log in self._logs]
            shares = [int(lines[-1][0]) if lines else 0 for lines in latest]
            if all(shares) and sum(shares) == partitions:
                if self.workers > 1:  # one worker never rebalances: its clock starts with its first output
                    self.balanced_at_ms = time.time() * 1000
                return
            if time.monotonic() > deadline:
                raise DriftloopError(
                    f"bench: the workers did not share the partitions within {START_PATIENCE_S:.0f}s "
                    f"(they hold {shares} of {partitions})"
                )
            time.sleep(0.1)

    def _spawn(self, index: int) -> None:
        log = self.work_dir / f"worker-{index}.log"
        # Without a developer's own DRIFTLOOP_* settings, which would override the pipeline's.
        environ = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTLOOP_")}
        with log.open("ab") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "driftloop.cli", "worker"],
                env={**environ, **self.environ},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # its own group: kill -9 takes its Feast writer too
        if index < len(self._processes):
            self._processes[index], self._logs[index] = process, log
        else:
            self._processes.append(process)
            self._logs.append(log)

    def _wait_ready(self, index: int, since: int = 0) -> str:
        """The metrics URL once worker `index` logs that it consumes (after byte `since` of its log)."""
        deadline = time.monotonic() + START_PATIENCE_S
        while time.monotonic() < deadline:
            found = READY_LINE.search(self._logs[index].read_text(errors="replace")[since:])
            if found:
                url = found.group(1)
                if index < len(self._metrics):
                    self._metrics[index] = url
                else:
                    self._metrics.append(url)
                return url
            if self._processes[index].poll() is not None:
                raise DriftloopError(
                    f"bench: worker {index} exited with {self._processes[index].returncode}: {self._log_tail(index)}"
                )
            time.sleep(0.05)
        raise DriftloopError(
            f"bench: worker {index} did not start within {START_PATIENCE_S:.0f}s: {self._log_tail(index)}"
        )

    def _log_tail(self, index: int) -> str:
        return self._logs[index].read_text(errors="replace")[-2000:]

    def loop_threads(self) -> list[tuple[int, int]]:
        return [(process.pid, process.pid) for process in self._processes]  # each worker's loop is its main thread

    def stage_seconds(self) -> dict[str, dict[str, float]]:
        """{stage: {"sum": seconds, "count": observations}} from the workers' /metrics, added up."""
        from prometheus_client.parser import text_string_to_metric_families

        stages: dict[str, dict[str, float]] = {}
        for url in self._metrics:
            text = urllib.request.urlopen(url, timeout=10).read().decode()
            for family in text_string_to_metric_families(text):
                if family.name != STAGE_METRIC:
                    continue
                for sample in family.samples:
                    suffix = sample.name.removeprefix(STAGE_METRIC)
                    if suffix in ("_sum", "_count"):
                        stage = stages.setdefault(sample.labels["stage"], {})
                        stage[suffix[1:]] = stage.get(suffix[1:], 0.0) + sample.value
        return stages

    def memory(self) -> dict[str, Any]:
        """Resident memory now and at its peak (VmHWM) of each worker process and, apart, its Feast writer."""
        workers = [process_memory(p.pid) for p in self._processes]
        writers = [process_memory(child) for p in self._processes for child in _children(p.pid)]
        return {
            "worker_rss_mb": [w["rss_mb"] for w in workers],
            "worker_peak_rss_mb": [w["peak_rss_mb"] for w in workers],
            "feast_writer_peak_rss_mb": [w["peak_rss_mb"] for w in writers],
            "state_dir_mb": round(_size(self.work_dir / "data" / "state") / 2**20, 1),
        }

    def restart_first(self) -> dict[str, Any]:
        """`kill -9` worker 0 (and its Feast writer) and start it again on the same data dir; returns once it
        has restored its assigned state (logged after the group's rebalance), timed from the new process's
        start: imports, models, Feast writer, the group join (which waits out the dead member's session)
        and the restore itself."""
        time.sleep(SETTLE_S)  # its last checkpoint commits what it did: the restart shows restoring, not replaying
        os.killpg(self._processes[0].pid, signal.SIGKILL)
        self._processes[0].wait(30)
        since = self._logs[0].stat().st_size
        spawned = time.time()
        self._spawn(0)
        self._wait_ready(0, since)
        consuming_s = time.time() - spawned
        deadline = time.monotonic() + START_PATIENCE_S
        while not (restored := RESTORED_LINE.search(self._logs[0].read_text(errors="replace")[since:])):
            if time.monotonic() > deadline or self._processes[0].poll() is not None:
                raise DriftloopError(f"bench: the restarted worker restored nothing: {self._log_tail(0)}")
            time.sleep(0.05)
        partitions, states, chunks, waiting, seconds = restored.groups()
        return {
            "process_start_to_restored_s": round(time.time() - spawned, 2),
            "process_start_to_consuming_s": round(consuming_s, 2),
            "restored": {
                "partitions": int(partitions),
                "entity_states": int(states),
                "journal_chunks": int(chunks),
                "waiting_joins": int(waiting),
                "restore_s": float(seconds),
            },
        }

    def stop(self) -> None:
        """Stop the workers (a worker that does not exit cleanly is an error), then the MLflow server."""
        try:
            self._stop_workers()
        finally:
            self.registry.stop()

    def _stop_workers(self) -> None:
        for process in self._processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        failed = []
        for index, process in enumerate(self._processes):
            try:
                code = process.wait(90)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                code = process.wait(10)
            if code != 0:
                failed.append(f"worker {index} exited with {code}: {self._log_tail(index)}")
        if failed:
            raise DriftloopError(f"bench: {failed[0]}")


def process_memory(pid: int) -> dict[str, float | None]:
    """Resident set now and its peak (VmRSS, VmHWM from /proc) of one process, in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mb": fields.get("VmRSS"), "peak_rss_mb": fields.get("VmHWM")}


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _size(directory: Path) -> int:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) if directory.exists() else 0
