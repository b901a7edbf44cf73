"""A circuit breaker per model version: while a version fails, a fallback serves its events.

No Kafka and no model here: the scorer (streams/worker/scoring.py) asks a version's `Breaker` how many
of a batch's events the model may score (`admits`), scores them, and reports the call (`record`); the
events the model was not admitted to are served by the fallback the spec names (`slo.fallback`). The
time is an argument, so a test drives a breaker with a fake clock.

A scoring call *fails* when the model could not score more than `max_error_rate` of its rows, or when
the call took longer than `max_call_ms` (each of its events waited that long); otherwise it is good.
Good calls count as evidence only once, since the last failing call, they have scored `probe_events`
events between them: a slow model is fast on two events, and a batch's size is the traffic's, not the
model's. The rules, in order:

1. Closed (the model serves everything): `failures` failing calls without enough evidence between them
   open the breaker; enough evidence clears the count. One slow call is noise (a collection pause, a
   busy machine); several are the model. While the count is above zero the model scores only the first
   `probe_events` events of a batch, as when half-open: a slow model's next batches would hold the
   events that piled up behind its last slow call, and each would be slower than the one before.
2. Open: the model scores nothing for `open_for` seconds; then the breaker is half-open.
3. Half-open: the model scores the first `probe_events` events of each batch (it serves those it
   scores). Enough evidence closes the breaker; a failing call opens it for another `open_for`.

Opening (from closed) and closing are `Change`s, with a one-sentence reason: the worker audits them
(`breaker_opened`, `breaker_closed`) and counts them.
"""

from __future__ import annotations

from dataclasses import dataclass

from driftloop.spec import SloSpec

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
STATES = (CLOSED, HALF_OPEN, OPEN)  # the order of the driftloop_breaker_state gauge's values


@dataclass(frozen=True)
class Change:
    version: int
    action: str  # "breaker_opened" | "breaker_closed"
    reason: str


class Breaker:
    """One model version's breaker (the rules in the module docstring)."""

    def __init__(
        self,
        version: int,
        *,
        max_error_rate: float,
        max_call_ms: float,
        failures: int,
        open_for: float,
        probe_events: int,
    ):
        self.version = version
        self.max_error_rate, self.max_call_ms = max_error_rate, max_call_ms
        self.failures, self.open_for, self.probe_events = failures, open_for, probe_events
        self.state = CLOSED
        self.failing = 0  # failing calls without enough evidence between them, while closed
        self.good_rows = 0  # events scored by good calls since the last failing call
        self._good_seconds = 0.0  # ... and those calls' time
        self._reopen_at = 0.0

    def admits(self, events: int, now: float) -> int:
        """How many of a batch's `events` the model may score now (the first ones); the fallback serves the rest."""
        if self.state == OPEN and now >= self._reopen_at:  # rule 2
            self.state = HALF_OPEN
        if self.state == OPEN:
            return 0
        if self.state == CLOSED and not self.failing:
            return events
        return min(events, self.probe_events)  # half-open, or closed after a failing call

    def record(self, rows: int, errors: int, seconds: float, now: float, error: str | None = None) -> Change | None:
        """One scoring call of `rows` rows, `errors` of which the model could not score (the first
        error's text in `error`), that took `seconds`; returns the change it caused, if any."""
        why = self._failure(rows, errors, seconds, error)
        if why is None:
            self.good_rows += rows
            self._good_seconds += seconds
            if self.good_rows < self.probe_events:
                return None
            if self.state == HALF_OPEN:  # rule 3
                change = Change(
                    self.version,
                    "breaker_closed",
                    f"v{self.version} scored {self.good_rows} probe events in {self._good_seconds * 1000:.1f} ms "
                    f"without errors; it serves again",
                )
                self.state, self.failing = CLOSED, 0
                return change
            self.failing = 0  # rule 1
            return None
        self.good_rows, self._good_seconds = 0, 0.0
        if self.state == HALF_OPEN:  # rule 3
            self._open(now)
            return None
        if self.state != CLOSED:
            return None
        self.failing += 1
        if self.failing < self.failures:
            return None
        failing = self.failing
        self._open(now)
        return Change(
            self.version,
            "breaker_opened",
            f"v{self.version} failed {failing} scoring calls (last: {why}); the fallback serves "
            f"its events and it is probed again in {self.open_for:g}s",
        )

    def _open(self, now: float) -> None:
        self.state, self.failing, self.good_rows, self._good_seconds = OPEN, 0, 0, 0.0
        self._reopen_at = now + self.open_for

    def _failure(self, rows: int, errors: int, seconds: float, error: str | None) -> str | None:
        """Why the call failed, or None when it did not."""
        if rows and errors / rows > self.max_error_rate:
            return f"{errors} of {rows} events could not be scored ({error or 'no detail'})"
        if seconds * 1000 > self.max_call_ms:
            return f"a call took {seconds * 1000:.0f} ms, over the {self.max_call_ms:g} ms budget"
        return None


class Breakers:
    """The breakers of every version a worker has scored with, made on first use from the spec's `slo.breaker`."""

    def __init__(self, slo: SloSpec):
        self.slo = slo
        self._by_version: dict[int, Breaker] = {}

    def of(self, version: int) -> Breaker:
        breaker = self._by_version.get(version)
        if breaker is None:
            b = self.slo.breaker
            breaker = self._by_version[version] = Breaker(
                version,
                max_error_rate=b.max_error_rate,
                max_call_ms=self.slo.max_call_ms,
                failures=b.failures,
                open_for=b.open_for,
                probe_events=b.probe_events,
            )
        return breaker

    def states(self) -> dict[int, str]:
        return {version: breaker.state for version, breaker in self._by_version.items()}

    def keep(self, versions: set[int]) -> None:
        """Forget the breakers of versions no longer served."""
        for version in set(self._by_version) - versions:
            del self._by_version[version]
