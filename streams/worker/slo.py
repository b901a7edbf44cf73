"""The latency objective's two halves: steering the worker's batches, and measuring how fast it burns.

No Kafka here: the loop (streams/worker/loop.py) tells `BatchController` about each released batch and
asks it how many records to consume next and how long to wait for them; `SloBurn` is told every
event's latency. Both take the time as an argument, so a test drives them with a fake clock, and a
backtest could drive them with event time.

`BatchController` decides once every `interval` seconds, from the batches released since its last
decision, by these rules, in order (AIMD on the batch size, the fetch wait halved or grown by 1 ms):

1. No batch was released: nothing changes (an idle worker keeps what it learned).
2. A backlog: a batch came back full (the broker held more than was asked for), or the window's p99
   latency less the slowest batch's service time was over the other half of the objective (events
   waited before they were consumed; a fetch often returns fewer records than asked for, even
   behind a backlog). The batch size grows by `step`, not above `max_batch`: behind a backlog an
   event's latency is mostly its wait in the broker, and a larger batch spends less per event on the
   per-batch costs (a consume call, a journal write, a produce poll), so the backlog drains sooner.
3. Otherwise, when the slowest batch took longer than its service budget (`SERVICE_SHARE` of the
   objective, from consumed to produced): the batch size is halved, not below `min_batch`. Every event
   of a batch waits for all of it, so without a backlog a batch slower than its share of the objective
   breaks the objective alone, and a smaller one leaves the broker sooner.
4. The fetch wait (how long a consume call waits for a batch to fill): halved, not below `MIN_FETCH_WAIT`, when the
   window's p99 latency was over the objective (waiting for fuller batches is latency the objective
   cannot spare); grown by 1 ms, not above `max_fetch_wait`, when the p99 was under half the objective
   and no batch was full (at low rates fuller batches cost less per event, and the objective has room).
   The floor is 5 ms (`MIN_FETCH_WAIT`): with 1 ms a worker whose p99 was high because its CPU was
   busy made batches of a few events, each with a consume call, a journal record and a drift
   observation of its own, and its p99 rose further (driftloop bench, 1 partition, 5,000 events/s:
   227 ms with a 1 ms floor, 106 ms with 5 ms; at 2,000 events/s 127 ms against 79 ms with 10 ms).

`SloBurn` keeps per-second counts of the events over and within the objective for a rolling window:
the share over it, and the error-budget burn rate, that share divided by the 1% a p99 objective allows
(1.0: the budget lasts exactly the window; 10: it is gone in a tenth of it).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

SERVICE_SHARE = 0.5  # of the objective, for one batch's own processing; the rest is queueing and fetching
ALLOWED_OVER = 0.01  # a p99 objective lets 1% of the events be slower
MIN_FETCH_WAIT = 0.005  # rule 4 halves the wait down to this (or to `max_fetch_wait`, if lower) ...
SPIN_GUARD = 0.001  # ... and never below this: a consume call that never waited would spin an idle core


@dataclass(frozen=True)
class Setting:
    batch_size: int
    fetch_wait: float  # seconds


class BatchController:
    """AIMD batch size and fetch wait that hold a p99 latency objective (the rules in the module docstring)."""

    def __init__(
        self,
        objective: float,
        *,
        min_batch: int,
        max_batch: int,
        max_fetch_wait: float,
        step: int | None = None,
        interval: float = 1.0,
        now: float = 0.0,
    ):
        self.objective = objective  # seconds
        self.min_batch, self.max_batch = min_batch, max_batch
        self.max_fetch_wait = max_fetch_wait
        self.step = step if step is not None else max(1, max_batch // 10)
        self.interval = interval
        # starts where the worker ran before it had an objective: full batches, a short wait
        self.batch_size = max_batch
        self.fetch_wait = self._bounded(MIN_FETCH_WAIT)
        self._decide_at = now + interval
        self._batches = 0
        self._slowest = 0.0
        self._full = False
        self._latencies: list[float] = []
        self.decisions: dict[int, int] = {rule: 0 for rule in (2, 3, 4)}  # how often each rule changed something

    @property
    def setting(self) -> Setting:
        return Setting(self.batch_size, self.fetch_wait)

    def observe(self, *, asked: int, consumed: int, service: float, latencies: list[float], now: float) -> Setting:
        """One released batch: how many records were asked for and came, its service time (seconds) and
        its events' latencies; returns the setting for the next consume call."""
        self._batches += 1
        self._slowest = max(self._slowest, service)
        self._full = self._full or consumed >= asked
        self._latencies.extend(latencies)
        return self.tick(now)

    def tick(self, now: float) -> Setting:
        if now < self._decide_at:
            return self.setting
        self._decide_at = now + self.interval
        if not self._batches:  # rule 1
            return self.setting
        budget = self.objective * SERVICE_SHARE
        p99 = _quantile(self._latencies, 0.99)
        waited = p99 is not None and p99 - self._slowest > self.objective - budget
        if self._full or waited:  # rule 2
            self._batch(min(self.max_batch, self.batch_size + self.step), 2)
        elif self._slowest > budget:  # rule 3
            self._batch(max(self.min_batch, self.batch_size // 2), 3)
        if p99 is not None and p99 > self.objective:  # rule 4
            self._wait(self.fetch_wait / 2)
        elif p99 is not None and p99 < self.objective / 2 and not self._full:
            self._wait(min(self.max_fetch_wait, self.fetch_wait + 0.001))
        self._batches, self._slowest, self._full, self._latencies = 0, 0.0, False, []
        return self.setting

    def _batch(self, size: int, rule: int) -> None:
        if size != self.batch_size:
            self.batch_size = size
            self.decisions[rule] += 1

    def _bounded(self, seconds: float) -> float:
        return max(min(max(seconds, MIN_FETCH_WAIT), self.max_fetch_wait), SPIN_GUARD)

    def _wait(self, seconds: float) -> None:
        seconds = self._bounded(seconds)
        if seconds != self.fetch_wait:
            self.fetch_wait = seconds
            self.decisions[4] += 1


class SloBurn:
    """Events over and within the objective, per second, over a rolling window."""

    def __init__(self, objective: float, window: float):
        self.objective, self.window = objective, window
        self._seconds: deque[list[int]] = deque()  # [second, events, over], oldest first
        self._events = self._over = 0

    def observe(self, latencies: list[float], now: float) -> int:
        """Count a batch of event latencies (seconds); returns how many were over the objective."""
        if not latencies:
            self._expire(now)
            return 0
        objective = self.objective
        over = sum(1 for latency in latencies if latency > objective)
        second = int(now)
        if self._seconds and self._seconds[-1][0] == second:
            bucket = self._seconds[-1]
            bucket[1] += len(latencies)
            bucket[2] += over
        else:
            self._seconds.append([second, len(latencies), over])
        self._events += len(latencies)
        self._over += over
        self._expire(now)
        return over

    def _expire(self, now: float) -> None:
        oldest = now - self.window
        while self._seconds and self._seconds[0][0] + 1 <= oldest:
            _second, events, over = self._seconds.popleft()
            self._events -= events
            self._over -= over

    def share_over(self, now: float) -> float:
        """The window's share of events slower than the objective (0 with no events)."""
        self._expire(now)
        return self._over / self._events if self._events else 0.0

    def burn_rate(self, now: float) -> float:
        """How many times faster than allowed the window spends the error budget."""
        return self.share_over(now) / ALLOWED_OVER

    def events(self, now: float) -> int:
        self._expire(now)
        return self._events


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
