"""Verified reads for processes that poll the registry: a refused version is remembered, never retried hot.

`TrustedVersions(name, tracking_uri, key)` wraps registry.load_version / load_reference. A version that fails
verification (`ModelRefused`) is remembered: asking for it again raises the refusal at once, without a
download, until `recheck_seconds` (10 min) have passed; then it is verified once more (a key fixed by a
restart is the usual cure, and a version's files never change legitimately). Only the first refusal of a
version is `news`, so each process audits `model_refused` once per version, not once per poll.

`fallback(aliases, read)` finds what to serve when the champion is refused and nothing is served yet: the
alias `previous`, then every other version newest first, the first one that verifies.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TypeVar

from driftloop.models.provenance import ModelRefused
from driftloop.models.registry import LoadedModel, VerifiedReference, load_reference, load_version, versions
from driftloop.signing import SigningKey

CHAMPION, PREVIOUS = "champion", "previous"
RECHECK_SECONDS = 600.0
Read = TypeVar("Read")


class TrustedVersions:
    def __init__(
        self,
        name: str,
        tracking_uri: str,
        key: SigningKey,
        *,
        recheck_seconds: float = RECHECK_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        references: bool = True,
    ):
        self.name, self.tracking_uri, self.key = name, tracking_uri, key
        self.references = references  # whether `load` reads each version's reference sample
        self.recheck_seconds, self.clock = recheck_seconds, clock
        self._refused: dict[int, tuple[str, float]] = {}  # version -> (reason, when to verify it again)

    def load(self, version: int) -> LoadedModel:
        return self._checked(
            version,
            lambda: load_version(
                self.name, version, tracking_uri=self.tracking_uri, key=self.key, reference=self.references
            ),
        )

    def reference(self, version: int) -> VerifiedReference:
        return self._checked(
            version, lambda: load_reference(self.name, version, tracking_uri=self.tracking_uri, key=self.key)
        )

    def fallback(
        self, aliases: Mapping[str, int], read: Callable[[int], Read]
    ) -> tuple[Read | None, list[ModelRefused]]:
        """The first of `previous`, then the other versions newest first, that `read` (self.load or
        self.reference) accepts; with the refusals met on the way (to report the news among them)."""
        refusals: list[ModelRefused] = []
        tried = {aliases.get(CHAMPION)}
        previous = [aliases[PREVIOUS]] if PREVIOUS in aliases else []
        for version in [*previous, *versions(self.name, tracking_uri=self.tracking_uri)]:
            if version in tried:
                continue
            tried.add(version)
            try:
                return read(version), refusals
            except ModelRefused as refusal:
                refusals.append(refusal)
        return None, refusals

    def _checked(self, version: int, fetch: Callable[[], Read]) -> Read:
        remembered = self._refused.get(version)
        if remembered is not None and self.clock() < remembered[1]:
            raise ModelRefused(self.name, version, remembered[0], news=False)
        try:
            result = fetch()
        except ModelRefused as refusal:
            refusal.news = remembered is None
            self._refused[version] = (refusal.reason, self.clock() + self.recheck_seconds)
            raise
        self._refused.pop(version, None)
        return result


def refusal_record(actor: str, refusal: ModelRefused, serving: int | None = None, **details: object) -> bytes:
    """The audit record `model_refused` (actor: "worker" | "control" | "retrain" | "operator")."""
    from driftloop.streams.contracts import audit

    return audit(
        actor=actor,
        action="model_refused",
        model_name=refusal.name,
        reason=str(refusal),
        version=refusal.version,
        details={"refused_because": refusal.reason, "serving": serving, **details},
    )
