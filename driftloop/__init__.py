"""driftloop: a streaming ML pipeline on Kafka that keeps its models right while the world changes."""

import os
import tempfile

__version__ = "0.1.0"

# MLflow's usage telemetry phones home from a thread and, when that fails (an offline host), sets and
# deletes a variable in os.environ while other threads iterate it (requests does, for proxies): a
# retraining's log-batch then died of KeyError('_MLFLOW_TELEMETRY_SESSION_ID'). Off unless asked for.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

# `import feast` points prometheus_client at a temporary directory of its own (PROMETHEUS_MULTIPROC_DIR),
# which switches every later metric, here and in child processes, to values kept in files: two workers
# in one process would share counters. A process started by another that imported Feast drops them.
for _name in ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR"):
    if (
        os.path.basename(os.environ.get(_name, "")).startswith("feast_metrics_")
        and os.path.dirname(os.environ[_name]) == tempfile.gettempdir()
    ):
        del os.environ[_name]
