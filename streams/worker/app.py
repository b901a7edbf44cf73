"""`driftloop worker`: one scoring/join worker process, assembled from the settings and the spec.

Start-up order: broker reachable -> topics (public and internal) -> state changelogs -> the Feast
objects applied -> a champion in the registry (a cold-start River model is registered when there is
none) -> model router (follows the aliases) -> Feast writer -> metrics endpoint -> the batch loop,
until `stop` is set. Shutdown
checkpoints (everything produced is acknowledged, offsets committed) and leaves the group at once.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import socket
import threading
from collections.abc import Callable
from contextlib import ExitStack
from typing import TYPE_CHECKING

from driftloop import kafka
from driftloop.errors import DriftloopError
from driftloop.features.feast.repo import feature_view_name, feature_view_version
from driftloop.features.feast.writer import FeastWriter
from driftloop.models.bootstrap import ensure_champion_apart
from driftloop.models.live_metrics import LiveMetrics
from driftloop.models.registry import when_reachable
from driftloop.models.routing import ModelRouter
from driftloop.models.trusted import refusal_record
from driftloop.settings import Settings
from driftloop.signing import SigningKey, key_path, load_key
from driftloop.spec import load_spec
from driftloop.stack import resolve_endpoints
from driftloop.streams import contracts
from driftloop.streams.state.changelog import ChangelogTable
from driftloop.streams.state.journal import OutputJournal
from driftloop.streams.state.store import StateMemory
from driftloop.streams.topology import Topology
from driftloop.streams.worker.breaker import Breakers, Change
from driftloop.streams.worker.join import OutcomeJoiner, join_table
from driftloop.streams.worker.learner import LabeledLearner
from driftloop.streams.worker.loop import Pipeline
from driftloop.streams.worker.metrics import WorkerMetrics
from driftloop.streams.worker.scoring import EventScorer

if TYPE_CHECKING:
    from driftloop.models.provenance import ModelRefused

# What a worker imports is what it keeps in memory for its life: none of these imports MLflow, pandas,
# pyarrow or River (tests/unit/test_worker_imports.py); a River model's own import brings River when one
# is loaded.

_LOG = logging.getLogger("driftloop.streams.worker.app")
# Feast's online store is at most this much (plus one write) behind the stream. Writing each entity's
# latest row once a second, not as often as the writer can, cut the writer's CPU by about a third at
# 5,000 events/s (fewer, larger writes: an entity seen several times a second is written once).
FEAST_WRITE_INTERVAL = 1.0


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives threads that allocate at once malloc arenas of their own, up to 8 per core, and memory
    freed in one arena serves no other: in a worker holding 100,000 entities and 2 million waiting
    joins, 16 arenas held 184 MB (librdkafka's, RocksDB's and the state writer's threads). Other C
    libraries (musl) have no such knob: nothing to do there."""
    try:
        ctypes.CDLL(None).mallopt(_M_ARENA_MAX, arenas)
    except (OSError, AttributeError):
        pass


_M_ARENA_MAX = -8  # glibc's malloc.h


def _partition_count(bootstrap: str, topic: str) -> int:
    metadata = kafka.admin(bootstrap).list_topics(topic, timeout=15)
    return len(metadata.topics[topic].partitions)


def run_worker(
    settings: Settings,
    stop: threading.Event,
    *,
    worker_id: str | None = None,
    on_ready: Callable[[int], None] | None = None,
) -> None:
    """Run one worker until `stop` is set; `on_ready(metrics_port)` is called once it consumes."""
    _limit_malloc_arenas()
    # Feast logs every registry cache refresh (each 5 s) at INFO: noise in a long-running worker's log.
    logging.getLogger("feast").setLevel(logging.WARNING)
    spec = load_spec(settings.spec)
    key = load_key(key_path(settings))
    worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
    bootstrap, tracking_uri = resolve_endpoints(settings)
    kafka.wait_for_broker(bootstrap, timeout=15)
    topology = Topology.of(settings, spec)
    kafka.ensure_topics(bootstrap, settings.topics + topology.internal, settings.partitions)
    join_partitions = _partition_count(bootstrap, topology.pending)
    if _partition_count(bootstrap, topology.outcomes_by_id) != join_partitions:
        raise DriftloopError(f"{topology.pending} and {topology.outcomes_by_id} must have the same partition count")
    event_partitions = _partition_count(bootstrap, topology.events)
    # Each partition's state on local disk, shared by every worker of this host (a partition has one owner)
    state_dir, memory = settings.data_dir / "state", StateMemory(settings.state_cache_mb)
    entity_states = ChangelogTable(
        "entity-state",
        topology.entity_changelog,
        event_partitions,
        directory=state_dir,
        memory=memory,
        keep_written=True,  # an entity that sent an event is likely to send the next
    )
    joins = join_table(topology.join_changelog, join_partitions, directory=state_dir, memory=memory)
    journal = OutputJournal(topology.journal_changelog, event_partitions, directory=state_dir, memory=memory)
    entity_states.ensure_changelog(bootstrap)
    joins.ensure_changelog(bootstrap)
    journal.ensure_changelog(bootstrap)

    # A worker restarted beside a restarting MLflow (`driftloop up` restarts both) waits for it.
    champion = when_reachable(
        lambda: ensure_champion_apart(spec, tracking_uri, key=key),
        tracking_uri=tracking_uri,
        what="finding the champion",
        stop=stop,
    )
    _LOG.info("champion of %s is v%d", spec.model.name, champion.version)
    with ExitStack() as cleanup:
        for table in (entity_states, joins, journal.table):  # after the last checkpoint, which runs inside
            cleanup.callback(table.close)
        metrics = WorkerMetrics()
        metrics.info(worker_id=worker_id, spec=spec.name)
        memory.on_write = lambda seconds: metrics.stage("store_write", seconds)
        router = ModelRouter(
            spec, tracking_uri, key=key, on_refused=_refusal_reporter(settings, bootstrap, key, metrics, worker_id)
        )
        when_reachable(router.start, tracking_uri=tracking_uri, what="loading the served models", stop=stop)
        cleanup.callback(router.stop)
        port = metrics.serve(settings.metrics_port, settings.bind_host)
        cleanup.callback(metrics.stop_serving)

        def feast_written(rows: int, seconds: float) -> None:
            metrics.feast_rows(rows)
            metrics.stage("feast_write", seconds)

        feast = FeastWriter(
            settings,
            spec,
            separate_process=True,
            apply_repo=True,  # idempotent; a worker started without `driftloop up` (compose) needs it
            write_interval=FEAST_WRITE_INTERVAL,
            on_write=feast_written,
        )
        cleanup.callback(feast.close)
        learner = LabeledLearner(
            bootstrap,
            topology.labeled,
            router,
            LiveMetrics(threshold=spec.model.threshold),
            group=topology.group,
            metrics=metrics,
        )
        cleanup.callback(learner.close)
        scorer = EventScorer(
            spec,
            entity_states,
            router,
            feature_view=feature_view_name(spec),
            feature_view_version=feature_view_version(spec),
            journal=journal,
            breakers=None if spec.slo.fallback == "none" else Breakers(spec.slo),
        )
        breaker_audit = _breaker_reporter(settings, bootstrap, key, spec.model.name, worker_id)
        cleanup.callback(breaker_audit.flush, 10)
        pipeline = Pipeline(
            spec,
            topology,
            bootstrap,
            scorer=scorer,
            joiner=OutcomeJoiner(spec, joins),
            entity_states=entity_states,
            join_table=joins,
            journal=journal,
            feast_sink=feast,
            metrics=metrics,
            learner=learner,
            join_partitions=join_partitions,
            worker_id=worker_id,
            on_breaker=breaker_audit,
        )
        # Start-up leaves hundreds of thousands of long-lived objects (its libraries, models): frozen, the
        # cyclic collector never rescans them, which paused the loop (docs/benchmarks.md).
        gc.collect()
        gc.freeze()
        # A collection is due when more tracked objects were made than freed since the last one. A batch of
        # 2,000 events holds ~20,000 until it is released: above that, only lasting growth (the tables')
        # triggers one, a tenth as often (docs/benchmarks.md, 8 Dec).
        gc.set_threshold(50_000, 10, 10)
        _LOG.info("worker %s consuming %s and %s; metrics on :%d", worker_id, topology.events, topology.outcomes, port)
        if on_ready is not None:
            on_ready(port)
        pipeline.run(stop)


class _BreakerAudit:
    """Audits `breaker_opened` / `breaker_closed` (signed) without holding up the loop: the records go out
    with the producer's next poll, and a delivery failure is logged."""

    def __init__(self, producer, topic: str, key: SigningKey, model_name: str, worker_id: str):
        self.producer, self.topic, self.key = producer, topic, key
        self.model_name, self.worker_id = model_name, worker_id

    def __call__(self, change: Change) -> None:
        record = contracts.audit(
            actor="worker",
            action=change.action,
            model_name=self.model_name,
            reason=change.reason,
            version=change.version,
            details={"worker": self.worker_id},
        )
        headers = contracts.signature_headers(self.key, self.topic, record)
        self.producer.produce(self.topic, record, self.model_name.encode(), headers=headers, on_delivery=self._sent)
        self.producer.poll(0)

    def _sent(self, error, message) -> None:
        if error is not None:
            _LOG.error("an audit record did not reach %s: %s", self.topic, error.str())

    def flush(self, timeout: float) -> None:
        self.producer.flush(timeout)


def _breaker_reporter(
    settings: Settings, bootstrap: str, key: SigningKey, model_name: str, worker_id: str
) -> _BreakerAudit:
    return _BreakerAudit(
        kafka.producer(bootstrap, **{"linger.ms": 0}), settings.topic_audit, key, model_name, worker_id
    )


def _refusal_reporter(
    settings: Settings, bootstrap: str, key: SigningKey, metrics: WorkerMetrics, worker_id: str
) -> Callable[[ModelRefused, int | None], None]:
    """What the router calls on a refused model: count it and audit `model_refused` (signed)."""
    producer = kafka.producer(bootstrap)

    def report(refusal: ModelRefused, serving: int | None) -> None:
        metrics.model_refused()
        record = refusal_record("worker", refusal, serving, worker=worker_id)
        producer.produce(
            settings.topic_audit,
            value=record,
            key=refusal.name.encode(),
            headers=contracts.signature_headers(key, settings.topic_audit, record),
        )
        if producer.flush(10):
            _LOG.error("the audit record model_refused of v%d did not reach %s", refusal.version, settings.topic_audit)

    return report
