"""driftloop: a streaming ML pipeline on Kafka that keeps its models right while the world changes."""

import os

__version__ = "0.1.0"

# MLflow's usage telemetry phones home from a thread and, when that fails (an offline host), sets and
# deletes a variable in os.environ while other threads iterate it (requests does, for proxies): a
# retraining's log-batch then died of KeyError('_MLFLOW_TELEMETRY_SESSION_ID'). Off unless asked for.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
