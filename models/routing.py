"""Which model serves which entity, kept in step with the MLflow registry aliases.

- `champion` serves every event, except that while the alias `challenger` exists (and the spec's
  canary is not in shadow mode) a stable share (`canary.share`) is served by it as the `canary`: the
  events whose id hashes into that share (`canary.assign: event`, the default, which splits any stream,
  even one of a single entity), or the entities whose id does (`canary.assign: entity`: an entity stays
  on one variant, but a stream of few entities splits unevenly or not at all). In shadow mode the challenger is
  loaded as `shadow`: it scores every event beside the champion and serves none.
- A background thread reads the aliases every `poll_seconds` (default 2 s, so a move in the MLflow UI
  or by `driftloop promote` takes effect within one poll plus the load time). A version is loaded
  (downloaded, signature-verified) before it is swapped in, so scoring never waits for the registry.
  When the registry is unreachable, the worker keeps serving what it has, says so in the log and tries
  again on the next poll.
- A version that fails verification (models/trusted.py) is never loaded: the champion keeps serving
  what it served (a canary or shadow goes), and `on_refused(refusal, serving_version)` is called once
  per version (the worker audits `model_refused` and counts it). When nothing serves yet (start-up),
  a refused champion is replaced by the last version that verifies: `previous`, then the others, newest
  first; the worker starts on it and says so, and exits only when no version verifies.
- The `fallback` (spec `slo.fallback`) serves the events of a version whose circuit breaker is open
  (streams/worker/breaker.py): the version the `previous` alias names (loaded like the others, when it
  is not the champion), or a cold-start model of the spec's `flavor:estimator`, built once at start-up
  (version 0: it is not registered) and learning online like the served models.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from driftloop.errors import DriftloopError
from driftloop.models.flavors import Model, new_model, with_model
from driftloop.models.provenance import ModelRefused
from driftloop.models.registry import aliases
from driftloop.models.trusted import PREVIOUS, TrustedVersions
from driftloop.signing import SigningKey, configured_key
from driftloop.spec import PipelineSpec

CHAMPION, CHALLENGER, FALLBACK = "champion", "challenger", "fallback"
_LOG = logging.getLogger("driftloop.models.routing")
_BUCKETS = 10_000


@dataclass(frozen=True)
class Serving:
    variant: str  # "champion" | "canary" | "shadow" | "fallback"
    version: int
    model: Model
    created_ms: int


class ModelRouter:
    def __init__(
        self,
        spec: PipelineSpec,
        tracking_uri: str,
        *,
        poll_seconds: float = 2.0,
        key: SigningKey | None = None,
        on_refused: Callable[[ModelRefused, int | None], None] | None = None,
    ):
        self.spec = spec
        self.tracking_uri = tracking_uri
        self.poll_seconds = poll_seconds
        # Scoring has no use for the versions' reference samples (the control plane reads them).
        self.trusted = TrustedVersions(spec.model.name, tracking_uri, key or configured_key(), references=False)
        self.on_refused = on_refused
        self._serving: dict[str, Serving] = {}
        self._spec_fallback: Serving | None = None  # slo.fallback as flavor:estimator
        self._canary_buckets = int(spec.canary.share * _BUCKETS)
        self._by_event = spec.canary.assign == "event"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    # -- the hot path -------------------------------------------------------------------------------

    def variant_for(self, entity: str, event_id: str) -> str:
        if "canary" not in self._serving:
            return CHAMPION
        key = event_id if self._by_event else entity
        return "canary" if zlib.crc32(key.encode()) % _BUCKETS < self._canary_buckets else CHAMPION

    def serving(self, variant: str) -> Serving:
        """What serves `variant` now; the champion when the variant left service after `variant_for` named it
        (the refresh thread swaps the whole table between the two calls, e.g. when a promotion ends a canary)."""
        current = self._serving
        return current.get(variant) or current[CHAMPION]

    def learn(self, rows: Sequence[Mapping[str, Any]], labels: Sequence[int], times_ms: Sequence[int]) -> int:
        """Online models in service learn from labelled rows joined after they were registered.

        The time filter makes a restarted worker's replay of the labeled log bring a loaded snapshot
        back to where it was, without teaching it rows it was trained on. Returns rows learned.
        """
        learned = 0
        for serving in {id(s.model): s for s in self._serving.values()}.values():
            if not serving.model.online:
                continue
            fresh = [i for i, t in enumerate(times_ms) if t >= serving.created_ms]
            if len(fresh) == len(rows):
                serving.model.learn(rows, labels)
            elif fresh:
                serving.model.learn([rows[i] for i in fresh], [labels[i] for i in fresh])
            learned += len(fresh)
        return learned

    @property
    def fallback(self) -> Serving | None:
        """What serves the events of a version whose breaker is open, if anything."""
        return self._serving.get(FALLBACK)

    @property
    def variants(self) -> dict[str, Serving]:
        return dict(self._serving)

    # -- keeping up with the registry ---------------------------------------------------------------

    def refresh(self) -> list[str]:
        """Align the served models with the aliases now; returns what changed, for the log and audit."""
        wanted = aliases(self.spec.model.name, tracking_uri=self.tracking_uri)
        if CHAMPION not in wanted:
            raise DriftloopError(f"model {self.spec.model.name}: the registry has no {CHAMPION!r} alias")
        targets = {CHAMPION: wanted[CHAMPION]}
        if CHALLENGER in wanted and wanted[CHALLENGER] != wanted[CHAMPION]:
            targets["shadow" if self.spec.canary.shadow else "canary"] = wanted[CHALLENGER]
        if self.spec.slo.fallback == PREVIOUS and wanted.get(PREVIOUS, wanted[CHAMPION]) != wanted[CHAMPION]:
            targets[FALLBACK] = wanted[PREVIOUS]
        changes = []
        serving = dict(self._serving)
        for variant, version in targets.items():
            current = serving.get(variant)
            if current is not None and current.version == version:
                continue
            reuse = next((s for s in serving.values() if s.version == version), None)
            try:
                loaded = (reuse.model, reuse.created_ms) if reuse else self._loaded(version)
            except ModelRefused as refusal:
                if variant == CHAMPION and current is None:
                    version, loaded = self._fallback(refusal, wanted)
                elif variant == CHAMPION and current is not None:
                    self._refused(refusal, current.version)
                    continue
                else:  # the challenger alias left the version served: so does the canary (or shadow)
                    self._refused(refusal, None)
                    if current is not None:
                        changes.append(f"{variant}: v{serving.pop(variant).version} -> -")
                    continue
            serving[variant] = Serving(variant, version, *loaded)
            changes.append(f"{variant}: v{current.version if current else '-'} -> v{version}")
        if self._spec_fallback is not None:
            targets[FALLBACK] = 0
            serving[FALLBACK] = self._spec_fallback
        for variant in set(serving) - set(targets):
            changes.append(f"{variant}: v{serving.pop(variant).version} -> -")
        self._serving = serving  # one reference swap: the scoring thread sees the old or the new set
        return changes

    def _loaded(self, version: int) -> tuple[Model, int]:
        loaded = self.trusted.load(version)
        return loaded.model, loaded.created_ms

    def _fallback(self, refusal: ModelRefused, wanted: dict[str, int]) -> tuple[int, tuple[Model, int]]:
        """Nothing serves and the champion is refused: the last version that verifies, or an error."""
        found, others = self.trusted.fallback(wanted, self.trusted.load)
        for other in others:
            self._refused(other, found.version if found else None)
        if found is None:
            raise DriftloopError(
                f"{refusal}; no other version of {self.spec.model.name} verifies either, so there "
                f"is nothing safe to serve"
            ) from None
        which = "previous" if wanted.get(PREVIOUS) == found.version else "the newest version that verifies"
        _LOG.warning(
            "champion v%d is refused (%s): serving v%d (%s) instead",
            refusal.version,
            refusal.reason,
            found.version,
            which,
        )
        self._refused(refusal, found.version)
        return found.version, (found.model, found.created_ms)

    def _refused(self, refusal: ModelRefused, serving: int | None) -> None:
        if not refusal.news:
            return
        _LOG.warning("%s (still serving %s)", refusal, f"v{serving}" if serving is not None else "nothing for it")
        if self.on_refused is not None:
            self.on_refused(refusal, serving)

    def start(self) -> None:
        """Load the current aliases (raising if that fails), then follow them in the background."""
        named = self.spec.slo.fallback_model
        if named is not None:
            model = new_model(with_model(self.spec, *named))
            self._spec_fallback = Serving(FALLBACK, 0, model, int(time.time() * 1000))
        for change in self.refresh():
            _LOG.info("serving %s", change)
        self._thread = threading.Thread(target=self._follow, name="driftloop-model-router", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                for change in self.refresh():
                    _LOG.info("serving %s", change)
                self.last_error = None
            except Exception as exc:  # registry down: keep serving what is loaded
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if message != self.last_error:
                    _LOG.warning(
                        "model registry: %s; still serving %s",
                        message,
                        {v: s.version for v, s in self._serving.items()},
                    )
                self.last_error = message
