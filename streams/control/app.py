"""`driftloop control`: the control plane, a Faust app whose agents watch drift and canaries.

Agents (one consumer group, `driftloop-<spec>-control`; run one control process per pipeline):

    <observations>  -> drift agent: data drift (Evidently) + data-quality drift per evaluation window
    labeled         -> drift agent: concept drift (River detectors on the loss stream)
                    -> promotion agent: canary vs champion on the same period's outcomes
    audit           -> the trigger policy learns when a retraining finished (debounce, cooldown)
    timer (1 s)     -> registry aliases: champion changes reset the drift reference, challengers
                       start canary trials, moves made in the MLflow UI are audited

Each evaluation publishes a report on the `drift` topic; every decision goes to `audit`; a decision to
retrain goes to `retrain-requests`. The decisions themselves live in `ControlPlane` (plain Python,
driftloop.streams.control.plane); the agents only move records. All of `ControlPlane`'s work (Evidently
evaluations, registry calls) runs on one executor thread, so Faust's event loop never blocks and the
decisions never race each other.

These streams are low-volume (observations are one record per scored batch; labeled is one record per
outcome) so Faust's per-event stream path is fast enough here; the scoring hot path is the batch worker.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import faust

from driftloop.heartbeat import Heartbeat
from driftloop.process import client_address
from driftloop.settings import Settings
from driftloop.signing import key_path, load_key
from driftloop.spec import PipelineSpec
from driftloop.streams import contracts
from driftloop.streams.control.metrics import ControlMetrics
from driftloop.streams.control.plane import ControlPlane, Output
from driftloop.streams.topology import Topology

_LOG = logging.getLogger("driftloop.streams.control.app")


def build_app(
    settings: Settings, spec: PipelineSpec, bootstrap: str, tracking_uri: str, metrics: ControlMetrics | None = None
) -> faust.App:
    """The Faust app; `metrics` (served by the caller) follow every decision."""
    topology = Topology.of(settings, spec)
    app = faust.App(
        f"{topology.group}-control",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        web_enabled=False,
        topic_partitions=settings.partitions,
        topic_replication_factor=1,
        producer_acks=-1,
        # Tansu completes a group's first join after half the session timeout: Faust's 60 s default
        # kept the control plane deaf for 30 s after start (driftloop.kafka uses 6 s for the same reason)
        broker_session_timeout=6.0,
        # a new control plane judges what happens from now on, not the whole history of the topics
        consumer_auto_offset_reset="latest",
        datadir=str(settings.data_dir / "faust"),
    )
    key = load_key(key_path(settings))
    control = ControlPlane(spec, tracking_uri, key=key, audit_topic=settings.topic_audit)
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="driftloop-control")
    heartbeat = Heartbeat(settings.heartbeat_file)
    model_key = spec.model.name.encode()
    names = {"drift": settings.topic_drift, "audit": settings.topic_audit, "retrain": settings.topic_retrain_requests}
    outputs = {kind: app.topic(name, value_serializer="raw") for kind, name in names.items()}

    def decide(method, *args: Any) -> list[Output]:
        produced = method(*args)
        if metrics is not None:  # here, on the decision thread: the state read is the one this call left
            trial = control.promotion.trial
            metrics.observe(
                produced,
                in_flight=control.policy.in_flight,
                last_finished=control.policy.last_finished,
                trial=None if trial is None else trial.summary(),
                now=time.time(),
            )
        return produced

    async def run(method, *args: Any) -> None:
        produced: list[Output] = await asyncio.get_running_loop().run_in_executor(executor, decide, method, *args)
        for kind, value in produced:  # signed: the retrain worker and this agent act only on signed records
            await outputs[kind].send(
                key=model_key,
                value=value,
                headers=contracts.signature_headers(key, names[kind], value),  # type: ignore[arg-type]  # all bytes
            )

    @app.agent(app.topic(topology.observations, value_serializer="raw"), name="drift-observations")
    async def observations(stream):
        async for batch in stream.take(200, within=0.5):
            await run(control.on_observations, batch)

    @app.agent(app.topic(topology.labeled, value_serializer="raw"), name="drift-and-canary-outcomes")
    async def labeled(stream):
        async for batch in stream.take(2000, within=0.5):
            await run(control.on_labeled, batch)

    @app.agent(app.topic(settings.topic_audit, value_serializer="raw"), name="retrain-outcomes")
    async def audit(stream):
        async for events in stream.take_events(100, within=0.5):  # events: the signature is a header
            await run(control.on_audit, [(event.value, event.headers) for event in events])

    @app.timer(1.0)
    async def tick():
        await run(control.on_tick)
        heartbeat.beat()  # after the tick: the event loop and the decision thread both turn

    @app.on_before_shutdown.connect  # type: ignore[arg-type]  # Faust's stubs want signal= by name; it comes in kwargs
    async def _stop(_app, **_kwargs):
        executor.shutdown(wait=True, cancel_futures=True)

    return app


def run_control_plane(settings: Settings, spec: PipelineSpec, bootstrap: str, tracking_uri: str) -> None:
    """Run until SIGTERM/SIGINT (Faust's worker handles both and leaves the group)."""
    from faust.worker import Worker

    # MLflow's HTTP client otherwise retries a down server for minutes per call; the control plane
    # polls every second anyway, so it should fail fast and try again on the next tick.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    metrics = ControlMetrics()
    port = metrics.endpoint.serve(settings.control_metrics_port, settings.bind_host)
    _LOG.info("control plane metrics at http://%s/metrics", client_address(settings.bind_host, port))
    try:
        app = build_app(settings, spec, bootstrap, tracking_uri, metrics)
        Worker(app, loglevel=settings.log_level.lower(), redirect_stdouts=False, quiet=True).execute_from_commandline()
    finally:
        metrics.endpoint.stop()
