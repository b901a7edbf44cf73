"""Feast must not turn driftloop's Prometheus metrics into shared files (`import feast` sets
PROMETHEUS_MULTIPROC_DIR): in this process, nor in the processes it starts."""

import os
import subprocess
import sys

CHECK = """
import os
from driftloop.features.feast import repo  # every Feast import of driftloop goes through this package
import feast  # noqa: F401
from driftloop.streams.worker.metrics import WorkerMetrics
one, two = WorkerMetrics(), WorkerMetrics()
one.events_predicted(5)
from prometheus_client import generate_latest
print("shared" if b'driftloop_events_total{result="predicted"} 5.0' in generate_latest(two.registry) else "own")
print(os.environ.get("PROMETHEUS_MULTIPROC_DIR", ""))
"""


def _run(code: str, env: dict[str, str]) -> list[str]:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.split("\n")


def test_workers_keep_their_own_counters_after_feast_is_imported_and_children_do_not_inherit_feasts_dir():
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PROMETHEUS_MULTIPROC")}
    verdict, feast_dir = _run(CHECK, clean)[:2]
    assert verdict == "own"
    assert "feast_metrics_" in feast_dir  # Feast did set it, in the parent
    # a driftloop child started with that environment (as `driftloop up` starts its children)
    inherited = {**clean, "PROMETHEUS_MULTIPROC_DIR": feast_dir, "PROMETHEUS_MULTIPROCESS_DIR": feast_dir}
    child = _run(
        "import os, driftloop\nprint(os.environ.get('PROMETHEUS_MULTIPROC_DIR', ''))\n"
        "import prometheus_client.values as v\nprint(v.ValueClass.__name__)",
        inherited,
    )
    assert child[:2] == ["", "MutexValue"]
