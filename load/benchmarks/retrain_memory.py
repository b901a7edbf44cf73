"""Peak memory of building a retraining's training set from a replayed table, on the retrain worker's code path.

    python -m driftloop.load.benchmarks.retrain_memory DATA.csv --spec SPEC [--entity-value V] [--rows-per-file N]
        [--window-events N] [--limit-mb MB] [--json-out FILE]

prints one JSON object. The table becomes events as `driftloop replay` makes them (`replay.table_rows`),
each event gets the row the worker scores (`featurise.Featuriser`), and the rows are written to a fresh
Feast repository as the worker's Feast writer leaves them: one offline parquet file per `--rows-per-file`
rows (the writer makes one per second, so about the replay's rate; the elec2 replay that ran a worker out
of memory had left 303 files for 33,508 rows). Each row's `labeled` record goes to a topic of a broker
(KAFKA_BOOTSTRAP_SERVERS, else an embedded one on a free port). Then a child process does what the retrain
worker does for a request without `train_from`: `OfflineHistory(...)`, `read_window(...)` and
`build_training_set(...)`. Its peak RSS (the kernel's ru_maxrss, as the child reports it at the end) is
the measurement; the parent also samples it and kills the child above `--limit-mb`, so a join that would
take the machine down is reported as "killed" instead.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any, cast

import psutil

from driftloop import kafka
from driftloop import settings as settings_module
from driftloop.settings import Settings
from driftloop.spec import PipelineSpec, load_spec
from driftloop.streams.contracts import iso_time
from driftloop.streams.worker.validation import Rejection


def _settings(workdir: Path, bootstrap: str, spec_path: Path, topic: str) -> Settings:
    return settings_module.load(
        environ={
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "DRIFTLOOP_DATA_DIR": str(workdir / "data"),
            "DRIFTLOOP_FEAST_REPO": str(workdir / "feature_repo"),
            "DRIFTLOOP_SPEC": str(spec_path),
            "DRIFTLOOP_PARTITIONS": "1",
            "DRIFTLOOP_TOPIC_LABELED": topic,
        }
    )


def _labeled(spec: PipelineSpec, event_id: str, entity: Any, event_time: float, row: dict, label: int) -> bytes:
    """A `labeled` record as streams/worker/join.py writes it (score and times made up: the training set
    ignores them)."""
    return json.dumps(
        {
            "contract": 1,
            "event_id": event_id,
            "entity": str(entity),
            "event_time": iso_time(event_time),
            "score": 0.5,
            "decision": 1,
            "label": label,
            "model_name": spec.model.name,
            "model_version": 1,
            "variant": "champion",
            "features": row,
            "outcome_time": iso_time(event_time),
            "predicted_at": iso_time(event_time),
            "joined_at": iso_time(event_time),
            "latency_ms": 1.0,
            "model_ms": 0.1,
        }
    ).encode()


def prepare(settings: Settings, spec: PipelineSpec, table: Path, entity_value: str, rows_per_file: int) -> dict:
    """Feast repo, offline files and labeled topic for the replayed table; returns what was written."""
    from driftloop.features.feast.repo import apply
    from driftloop.features.feast.writer import FeastWriter
    from driftloop.features.rows import Featuriser
    from driftloop.load.replay import read_table, table_rows

    apply(settings, spec)
    bootstrap = cast(str, settings.kafka_bootstrap_servers)  # _settings names one
    kafka.ensure_topics(bootstrap, [settings.topic_labeled], 1)
    events = table_rows(
        spec, read_table(table), origin=str(table), run_id=uuid.uuid4().hex[:8], entity_value=entity_value
    )
    featuriser = Featuriser(spec)
    writer = FeastWriter(settings, spec)
    producer = kafka.producer(bootstrap, **{"linger.ms": 50})
    pending: list[dict] = []
    files = rows = 0
    try:
        for replayed in events:
            event, row = featuriser.featurise(json.dumps(replayed.event).encode())
            if isinstance(event, Rejection) or row is None:
                continue
            rows += 1
            pending.append({spec.events.entity: event.entity, "event_timestamp": event.event_time, **row})
            producer.produce(
                settings.topic_labeled,
                key=str(event.entity).encode(),
                value=_labeled(spec, event.event_id, event.entity, event.event_time, row, replayed.label),
            )
            producer.poll(0)
            if len(pending) == rows_per_file:
                writer.write(pending)
                files, pending = files + 1, []
        if pending:
            writer.write(pending)
            files += 1
    finally:
        writer.close()
    if producer.flush(60):
        raise SystemExit("the labeled records were not all delivered")
    return {"table_rows": len(events), "scored_rows": rows, "offline_files": files}


def _build(settings: Settings, spec: PipelineSpec, results) -> None:
    """In the measured child: exactly the retrain worker's steps for a request without train_from."""
    from driftloop.features.feast.offline import OfflineHistory
    from driftloop.retrain.training_set import build_training_set, read_window

    history = OfflineHistory(settings, spec)
    before = psutil.Process().memory_info().rss
    started = time.perf_counter()
    window = read_window(
        cast(str, settings.kafka_bootstrap_servers),  # _settings names one
        settings.topic_labeled,
        spec,
        None,
        group=f"retrain-memory-{uuid.uuid4().hex[:8]}",
        timeout=300,
    )
    read = time.perf_counter() - started
    data = build_training_set(history, window, spec, None)
    results.put(
        {
            "rss_before_mb": round(before / 2**20),
            "read_window_seconds": round(read, 2),
            "build_seconds": round(time.perf_counter() - started - read, 2),
            "rows": len(data),
            "from_feast": data.from_feast,
            "from_labeled": data.from_labeled,
            "feast_mismatches": data.feast_mismatches,
            "labeled_read": window.read,
            # the kernel's own peak for this process (KiB on Linux), not a sample
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        }
    )


def measure(settings: Settings, spec: PipelineSpec, limit_mb: float) -> dict:
    """Run `_build` in a spawned child; its peak RSS, or how far it got before being killed at `limit_mb`."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    child = context.Process(target=_build, args=(settings, spec, results), name="training-set")
    started = time.monotonic()
    child.start()
    sampled_peak = 0
    killed = False
    handle = psutil.Process(child.pid)
    while child.is_alive():
        try:
            rss = handle.memory_info().rss
        except psutil.NoSuchProcess:
            break
        sampled_peak = max(sampled_peak, rss)
        if rss > limit_mb * 2**20:
            child.kill()
            killed = True
            break
        time.sleep(0.05)
    child.join()
    outcome: dict[str, Any] = {
        "seconds": round(time.monotonic() - started, 1),
        "sampled_peak_rss_mb": round(sampled_peak / 2**20),
    }
    if killed:
        outcome["killed_above_mb"] = limit_mb
    elif child.exitcode != 0:
        outcome["exit_code"] = child.exitcode
    else:
        outcome.update(results.get(timeout=10))
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m driftloop.load.benchmarks.retrain_memory", description=__doc__.split("\n")[0]
    )
    parser.add_argument("table", type=Path, help="the .csv or .parquet table to replay")
    parser.add_argument("--spec", type=Path, required=True, help="the pipeline spec that maps it to events")
    parser.add_argument(
        "--entity-value",
        help="the entity of every row, as for `driftloop replay` (default: the spec's replay.entity_value)",
    )
    parser.add_argument(
        "--rows-per-file",
        type=int,
        default=110,
        help="rows per offline file, as the worker writes them once a second (default 110)",
    )
    parser.add_argument("--window-events", type=int, help="override the spec's retrain.window_events")
    parser.add_argument("--limit-mb", type=float, default=6144, help="kill the measured child above this RSS")
    parser.add_argument("--json-out", type=Path, help="also write the JSON report here")
    options = parser.parse_args(argv)
    spec = load_spec(options.spec)
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="driftloop-retrain-memory-")))
        spec_path = options.spec
        if options.window_events is not None:
            retrain = spec.retrain.model_copy(update={"window_events": options.window_events})
            spec = spec.model_copy(update={"retrain": retrain})
        bootstrap = settings_module.load().kafka_bootstrap_servers
        if bootstrap is None:
            from driftloop.broker import EmbeddedBroker

            broker = EmbeddedBroker(0, workdir / "logs")
            stack.callback(broker.stop)
            broker.start()
            bootstrap = broker.bootstrap
        settings = _settings(workdir, bootstrap, spec_path, f"labeled-{uuid.uuid4().hex[:8]}")
        report = {
            "table": str(options.table),
            "spec": str(options.spec),
            "window_events": spec.retrain.window_events,
            **prepare(settings, spec, options.table, options.entity_value, options.rows_per_file),
        }
        report["training_set"] = measure(settings, spec, options.limit_mb)
    text = json.dumps(report)
    print(text, flush=True)
    if options.json_out:
        options.json_out.write_text(text + "\n")
    return 0 if "rows" in report["training_set"] else 1


if __name__ == "__main__":
    sys.exit(main())
