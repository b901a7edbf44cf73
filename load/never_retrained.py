"""A replay's "never retrained" baseline: the model that was champion when the replay started, kept all along.

    baseline = NeverRetrained.at_start(settings, spec)       # before the first event is produced
    ...                                                      # the replay runs
    figures = baseline.score(bootstrap, settings.topic_labeled, row_of, expected, delay_rows, timeout)

`at_start` loads the version the `champion` alias points at from the MLflow registry (signature-verified).
`score` reads the `labeled` topic from its beginning and

1. brings the snapshot to where the serving workers had it when the replay started: an online (River)
   model learns, in order, every labeled record joined after the version was registered and before the
   replay started, the rule the workers follow (`ModelRouter.learn`);
2. scores this run's labeled records (their `features`: the exact rows the pipeline scored) in row order,
   prequentially: each row is predicted, and an online model learns it `delay_rows` rows later, as the
   live model learns from outcomes arriving after their events. An ONNX model only predicts.

So the figure answers "what if the loop had never retrained or promoted anything" on the rows the live
pipeline answered, beside the live pipeline's own accuracy on those same rows (the labeled records'
decisions). It is None-safe: without MLflow or a champion the reason is reported instead of figures.
"""

from __future__ import annotations

import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
from confluent_kafka import OFFSET_BEGINNING, KafkaError, TopicPartition

from driftloop import kafka
from driftloop.load.run_records import Labeled, decode_labeled
from driftloop.models.registry import LoadedModel, load_alias
from driftloop.settings import Settings
from driftloop.signing import key_path, load_key
from driftloop.spec import PipelineSpec
from driftloop.stack import running_stack

CHAMPION = "champion"


@dataclass
class NeverRetrained:
    spec: PipelineSpec
    champion: LoadedModel | None
    problem: str | None  # why there is no champion to score
    started_ms: int  # the replay's start: labeled records joined before it are history

    @classmethod
    def at_start(cls, settings: Settings, spec: PipelineSpec) -> NeverRetrained:
        started_ms = int(time.time() * 1000)
        tracking_uri = settings.mlflow_tracking_uri or running_stack(settings.data_dir).get("mlflow_tracking_uri")
        if not tracking_uri:
            return cls(
                spec, None, "no MLflow tracking URI (MLFLOW_TRACKING_URI or a running `driftloop up`)", started_ms
            )
        try:
            champion = load_alias(
                spec.model.name, CHAMPION, tracking_uri=tracking_uri, key=load_key(key_path(settings))
            )
        except Exception as exc:  # the replay itself must not fail for its baseline
            return cls(
                spec, None, f"cannot load the champion from {tracking_uri}: {str(exc).splitlines()[0]}", started_ms
            )
        if champion is None:
            return cls(spec, None, f"model {spec.model.name!r} has no champion in {tracking_uri}", started_ms)
        return cls(spec, champion, None, started_ms)

    def score(
        self,
        bootstrap: str,
        labeled_topic: str,
        row_of: Mapping[str, int],
        expected: int,
        delay_rows: int,
        timeout: float,
    ) -> dict[str, Any]:
        """The baseline's figures (module docstring); waits up to `timeout` s without news for `expected`
        labeled records of this run."""
        if self.champion is None:
            return {"model_version": None, "problem": self.problem}
        history, run = (
            _read_labeled(
                bootstrap, labeled_topic, row_of, self.champion.created_ms, self.started_ms, expected, timeout
            )
            if expected
            else ([], {})
        )
        model = self.champion.model
        if model.online and history:
            model.learn([r.features for r in history], [r.label for r in history])
        rows = sorted(run)
        threshold = self.spec.model.threshold
        decisions = np.empty(len(rows), dtype=np.int64)
        pending: deque[Labeled] = deque()
        for i, row in enumerate(rows):
            record = run[row]
            decisions[i] = int(model.predict_proba([record.features])[0] >= threshold)
            if model.online:
                pending.append(record)
                if len(pending) > delay_rows:
                    learned = pending.popleft()
                    model.learn([learned.features], [learned.label])
        labels = np.array([run[row].label for row in rows], dtype=np.int64)
        live = np.array([run[row].decision for row in rows], dtype=np.int64)
        return {
            "model_version": self.champion.version,
            "flavor": model.flavor,
            "learning": f"online, each row learned {delay_rows} rows after it was predicted"
            if model.online
            else "none (a batch-trained model)",
            "caught_up_rows": len(history) if model.online else 0,
            "rows": len(rows),
            "accuracy": float(np.mean(decisions == labels)) if len(rows) else None,
            "live_accuracy": float(np.mean(live == labels)) if len(rows) else None,
            "live_model_versions": sorted({run[row].model_version for row in rows}),
        }


def _read_labeled(
    bootstrap: str,
    topic: str,
    row_of: Mapping[str, int],
    registered_ms: int,
    started_ms: int,
    expected: int,
    timeout: float,
) -> tuple[list[Labeled], dict[int, Labeled]]:
    """(history: records joined in [registered_ms, started_ms), in time order; this run's records by row).

    Reads from the beginning to the end of every partition, then on until `expected` records of the run
    are there or none came for `timeout` seconds (the last outcomes' join may still be under way)."""
    # A busy Tansu answers fetches that wait less than its read takes with nothing, indefinitely.
    consumer = kafka.consumer(
        bootstrap,
        f"driftloop-replay-baseline-{uuid.uuid4().hex[:10]}",
        **{"enable.auto.commit": False, "enable.partition.eof": True, "fetch.wait.max.ms": 500},
    )
    history: list[tuple[int, Labeled]] = []
    run: dict[int, Labeled] = {}
    try:
        metadata = consumer.list_topics(topic, timeout=15).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            return [], {}
        partitions = metadata.partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        unread = set(partitions)
        last_message = last_of_run = time.monotonic()
        while True:
            messages = consumer.consume(10_000, timeout=0.2)
            now = time.monotonic()
            if messages:
                last_message = now
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        unread.discard(message.partition())
                    continue
                try:
                    record = decode_labeled(message.value() or b"")
                except msgspec.DecodeError:
                    continue
                row = row_of.get(record.event_id)
                if row is not None:
                    if row not in run:  # a prediction re-emitted after a worker restart: the first counts
                        run[row] = record
                        last_of_run = now
                    continue
                stamp = message.timestamp()[1]
                if registered_ms <= stamp < started_ms:
                    history.append((stamp, record))
            if unread:
                if now - last_message > max(timeout, 30):
                    break  # a partition that never reports its end: give up rather than hang the replay
            elif len(run) >= expected or now - last_of_run > timeout:
                break
    finally:
        consumer.close()
    history.sort(key=lambda pair: pair[0])
    return [record for _, record in history], run
