"""The demo's synthetic card-fraud stream, with scripted drift, and a Kafka producer for it.

`FraudStream` yields `(event, outcome)` pairs shaped exactly like the demo spec
(`driftloop/specs/fraud.yaml`): events carry `event_id`, `user_id`, `event_time` (ISO-8601 UTC),
`amount`, `merchant_category`, `country`, `channel`, `card_present` and, usually,
`account_age_days`; outcomes are `{"event_id", "is_fraud": 0/1, "outcome_time"}`.

How the stream is made
----------------------
* Event time is simulated: each event advances the clock by `1/events_per_second` seconds
  (jittered by +-50%), so a user sees on average `events_per_second / users` transactions per
  second and the spec's windowed features (count in 10m, amount sums over 1h/24h, time since last)
  mean something. Users differ in activity, home country, spending scale and account age.
* Besides ordinary purchases the stream contains *sessions*: bursts of card-not-present
  transactions on one user's card, much closer together than that user's normal rhythm.
  - pattern "A" (classic account takeover): 2-6 high-amount purchases (median ~900) in
    electronics/travel/fashion, abroad in NG/BR/IN/other, on the web;
  - pattern "B" (card testing): 4-12 low-amount purchases (1-20) of digital_goods/gaming in the
    app, abroad in western Europe.
  Both patterns always occur, each making up 0.9 x `fraud_rate` of the events. The *concept*
  decides which pattern is fraud: before drift "A" is fraud and "B" is legitimate (in-app
  micro-purchases); after concept drift "B" is fraud and "A" is legitimate. So concept drift
  changes P(fraud | x) while P(x) stays the same. The remaining ~10% of fraud is "stealth": ordinary
  looking transactions labelled fraud, so no model is perfect.
* Covariate drift changes P(x) and leaves the labelling rule alone: every amount is scaled by
  `COVARIATE_AMOUNT_SCALE` and users buy abroad far more often (and in other countries).
* Victims of sessions are biased towards young accounts (half of them have one).
* Per-user windows: at the defaults (100 events/s over 2000 users) a card is used every ~20 s of
  simulated time, so time since last transaction, amount ratio to the mean and amount sums carry
  the burst signal, while the 10-minute count is busy for everyone; lower `events_per_second`
  (e.g. 5, a card used every ~7 min) for a realistic per-card rhythm where the count stands out too.

Everything is drawn from one `random.Random(seed)`: the same arguments give the same stream, and
iterating a `FraudStream` again starts it over. `start=None` means the fixed `DEFAULT_START`
(pass `datetime.now(timezone.utc)` for live-looking times).
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import os
import random
import sys
import time
from bisect import bisect
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypedDict

from driftloop import kafka
from driftloop.errors import DriftloopError

DEFAULT_START = datetime(2026, 11, 1, tzinfo=UTC)

CATEGORIES = ("grocery", "restaurants", "fuel", "travel", "electronics", "fashion", "gaming", "digital_goods", "other")
COUNTRIES = ("US", "GB", "DE", "FR", "NL", "ES", "IT", "BR", "IN", "NG", "other")
CHANNELS = ("pos", "web", "app")


class _Weighted:
    """A fixed weighted choice; `pick(rng)` draws like random.choices(..., cum_weights=...)[0], only faster."""

    __slots__ = ("values", "cumulative", "total")

    def __init__(self, values: tuple[str, ...], weights: tuple[float, ...]):
        self.values = values
        self.cumulative = list(itertools.accumulate(weights))
        self.total = self.cumulative[-1]

    def pick(self, rng: random.Random) -> str:
        return self.values[bisect(self.cumulative, rng.random() * self.total)]


# Ordinary purchases: category mix, and per category the median amount and the channel mix.
_LEGIT_CATEGORY = _Weighted(CATEGORIES, (0.25, 0.18, 0.12, 0.04, 0.05, 0.10, 0.04, 0.08, 0.14))
_CATEGORY_MEDIAN = {
    "grocery": 40.0,
    "restaurants": 30.0,
    "fuel": 50.0,
    "travel": 350.0,
    "electronics": 250.0,
    "fashion": 80.0,
    "gaming": 25.0,
    "digital_goods": 10.0,
    "other": 45.0,
}
_CHANNEL = {
    category: _Weighted(CHANNELS, weights)
    for category, weights in {  # pos, web, app
        "grocery": (0.85, 0.05, 0.10),
        "restaurants": (0.85, 0.05, 0.10),
        "fuel": (0.95, 0.0, 0.05),
        "travel": (0.10, 0.60, 0.30),
        "electronics": (0.40, 0.45, 0.15),
        "fashion": (0.50, 0.35, 0.15),
        "gaming": (0.05, 0.35, 0.60),
        "digital_goods": (0.02, 0.38, 0.60),
        "other": (0.60, 0.25, 0.15),
    }.items()
}
# Home countries of users, and where they buy when abroad (before / after covariate drift).
_HOME = _Weighted(COUNTRIES, (0.30, 0.12, 0.12, 0.10, 0.06, 0.08, 0.08, 0.05, 0.05, 0.02, 0.02))
_ABROAD = _Weighted(COUNTRIES, (0.22, 0.14, 0.10, 0.16, 0.06, 0.14, 0.12, 0.02, 0.02, 0.0, 0.02))
_ABROAD_SHIFTED = _Weighted(COUNTRIES, (0.06, 0.04, 0.04, 0.06, 0.02, 0.06, 0.04, 0.22, 0.20, 0.06, 0.20))
_ABROAD_SHARE, _ABROAD_SHARE_SHIFTED = 0.07, 0.35
COVARIATE_AMOUNT_SCALE = 2.5


@dataclass(frozen=True)
class _Pattern:
    name: str
    category: _Weighted
    country: _Weighted
    channel: _Weighted
    median_amount: float
    amount_sigma: float
    size: tuple[int, int]  # events per session, inclusive
    gap: tuple[float, float]  # gap between session events, as a share of the victim's mean inter-arrival time

    @property
    def mean_size(self) -> float:
        return (self.size[0] + self.size[1]) / 2


PATTERN_A = _Pattern(
    "A",
    _Weighted(("electronics", "travel", "fashion"), (0.5, 0.3, 0.2)),
    _Weighted(("NG", "BR", "IN", "other"), (0.3, 0.2, 0.2, 0.3)),
    _Weighted(CHANNELS, (0.0, 0.9, 0.1)),
    900.0,
    0.5,
    (2, 6),
    (0.01, 0.15),
)
PATTERN_B = _Pattern(
    "B",
    _Weighted(("digital_goods", "gaming"), (0.75, 0.25)),
    _Weighted(("GB", "DE", "FR", "ES", "IT", "NL"), (0.2, 0.2, 0.15, 0.15, 0.15, 0.15)),
    _Weighted(CHANNELS, (0.0, 0.1, 0.9)),
    5.0,
    0.5,
    (4, 12),
    (0.005, 0.06),
)
_STEALTH_SHARE = 0.1  # share of the fraud that looks like an ordinary purchase


class StreamShape(TypedDict):
    """FraudStream's shape arguments, as the calibrated demo stream gives them."""

    users: int
    fraud_rate: float
    events_per_second: float


@dataclass(frozen=True)
class DriftPlan:
    """When and how the stream drifts.

    kind: "none"; "abrupt" (switch at `onset`); "gradual" (from `onset` the new regime takes over
    linearly over `width` events: each draw uses it with probability (index - onset) / width);
    "recurring" (from `onset` the regimes alternate every `width` events: new, old, new, ...).
    covariate: the input distribution shifts (amount scale, country mix); concept: the fraud
    pattern changes (pattern "A" -> "B", see the module docstring).
    """

    kind: Literal["none", "abrupt", "gradual", "recurring"]
    onset: int
    width: int = 5000
    covariate: bool = False
    concept: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ("none", "abrupt", "gradual", "recurring"):
            raise ValueError(f"drift kind must be none, abrupt, gradual or recurring, not {self.kind!r}")
        if self.onset < 0:
            raise ValueError("drift onset must be >= 0")
        if self.width < 1:
            raise ValueError("drift width must be >= 1")

    def new_share(self, index: int) -> float:
        """Probability that the event at `index` follows the drifted regime."""
        if self.kind == "none" or index < self.onset:
            return 0.0
        if self.kind == "abrupt":
            return 1.0
        if self.kind == "gradual":
            return min(1.0, (index - self.onset + 1) / (self.width + 1))
        return 1.0 if ((index - self.onset) // self.width) % 2 == 0 else 0.0  # recurring

    def phase(self, index: int) -> str:
        """'pre' (old regime), 'post' (drifted regime) or 'mixing' (gradual transition) at `index`."""
        share = self.new_share(index)
        return "pre" if share == 0.0 else "post" if share == 1.0 else "mixing"


class FraudStream:
    """An endless, deterministic iterable of `(event, outcome)` pairs; see the module docstring."""

    def __init__(
        self,
        seed: int = 7,
        users: int = 2000,
        fraud_rate: float = 0.03,
        drift: DriftPlan = DriftPlan("none", 0),
        start: datetime | None = None,
        events_per_second: float = 100.0,
        *,
        id_prefix: str | None = None,
    ):
        if users < 1:
            raise ValueError("users must be >= 1")
        if not 0.0 <= fraud_rate <= 0.5:
            raise ValueError("fraud_rate must be between 0 and 0.5")
        if not events_per_second > 0:
            raise ValueError("events_per_second must be > 0")
        if start is not None and start.tzinfo is None:
            raise ValueError("start must be timezone-aware (UTC)")
        self.seed = seed
        self.users = users
        self.fraud_rate = fraud_rate
        self.drift = drift
        self.start = (start or DEFAULT_START).astimezone(UTC)
        self.events_per_second = events_per_second
        self.id_prefix = f"e{seed}-" if id_prefix is None else id_prefix

    def phase(self, index: int) -> str:
        return self.drift.phase(index)

    def take(self, count: int) -> list[tuple[dict[str, Any], dict[str, Any]]]:
        return list(itertools.islice(self, count))

    def __iter__(self) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
        rng = random.Random(self.seed)
        users = self._make_users(rng)
        activity_cum = list(itertools.accumulate(u["activity"] for u in users))
        total_activity = activity_cum[-1]
        young = [i for i, u in enumerate(users) if u["age"] < 180] or list(range(len(users)))
        mean_gap = 1.0 / self.events_per_second
        # Each pattern makes up `session_share` of the events; starts happen only on slots that are
        # not taken by an ongoing session, hence the 1 / (1 - 2 * session_share).
        session_share = self.fraud_rate * (1 - _STEALTH_SHARE)
        free = 1 - 2 * session_share
        start_a = session_share / (free * PATTERN_A.mean_size)
        start_b = session_share / (free * PATTERN_B.mean_size)
        stealth = self.fraud_rate * _STEALTH_SHARE / free
        t0 = self.start.timestamp()
        clock = 0.0  # simulated seconds since start
        pending: list[tuple[float, int, dict[str, Any]]] = []  # (due, tiebreak, session event)
        order = itertools.count()
        drift = self.drift

        for index in itertools.count():
            clock += mean_gap * (0.5 + rng.random())
            shifted = drift.covariate and rng.random() < drift.new_share(index)
            if pending and pending[0][0] <= clock:
                _, _, planned = heapq.heappop(pending)
                user, label, attrs = planned["user"], planned["label"], planned["attrs"]
            else:
                draw = rng.random()
                if draw < start_a + start_b:
                    pattern = PATTERN_A if draw < start_a else PATTERN_B
                    if rng.random() < 0.5:  # half the victims are young accounts
                        user = rng.choice(young)
                    else:  # the others as likely as their share of the traffic
                        user = min(len(users) - 1, bisect(activity_cum, rng.random() * total_activity))
                    new_concept = drift.concept and rng.random() < drift.new_share(index)
                    label = int(pattern is (PATTERN_B if new_concept else PATTERN_A))
                    size = rng.randint(*pattern.size)
                    user_gap = total_activity / (self.events_per_second * users[user]["activity"])  # mean, seconds
                    due = clock
                    for _ in range(size - 1):
                        due += user_gap * rng.uniform(*pattern.gap) + mean_gap
                        attrs = self._session_attrs(rng, pattern, users[user], shifted)
                        heapq.heappush(pending, (due, next(order), {"user": user, "label": label, "attrs": attrs}))
                    attrs = self._session_attrs(rng, pattern, users[user], shifted)
                else:
                    user = bisect(activity_cum, rng.random() * total_activity)
                    user = min(user, len(users) - 1)
                    attrs = self._legit_attrs(rng, users[user], shifted)
                    label = int(rng.random() < stealth)
            profile = users[user]
            when = t0 + clock
            event: dict[str, Any] = {
                "event_id": f"{self.id_prefix}{index}",
                "user_id": profile["id"],
                "event_time": _iso(when),
                **attrs,
            }
            if rng.random() >= profile["missing_age"]:
                event["account_age_days"] = min(36500, profile["age"] + int(clock // 86400))
            outcome = {
                "event_id": event["event_id"],
                "is_fraud": label,
                "outcome_time": _iso(when + rng.uniform(60.0, 600.0)),
            }
            yield event, outcome

    def _make_users(self, rng: random.Random) -> list[dict[str, Any]]:
        users = []
        width = len(str(self.users - 1))
        for k in range(self.users):
            young = rng.random() < 0.15
            users.append(
                {
                    "id": f"u-{k:0{width}d}",
                    "activity": max(0.05, rng.gammavariate(2.0, 0.5)),  # relative transaction rate
                    "home": _HOME.pick(rng),
                    "scale": math.exp(rng.gauss(0.0, 0.4)),  # spending level
                    "age": rng.randint(0, 179) if young else min(36000, int(rng.lognormvariate(6.8, 0.9)) + 180),
                    "missing_age": 0.02 if rng.random() < 0.8 else 0.3,  # some sources rarely send it
                }
            )
        return users

    @staticmethod
    def _legit_attrs(rng: random.Random, user: dict[str, Any], shifted: bool) -> dict[str, Any]:
        category = _LEGIT_CATEGORY.pick(rng)
        channel = _CHANNEL[category].pick(rng)
        country = user["home"]
        if rng.random() < (_ABROAD_SHARE_SHIFTED if shifted else _ABROAD_SHARE):
            country = (_ABROAD_SHIFTED if shifted else _ABROAD).pick(rng)
        amount = _CATEGORY_MEDIAN[category] * user["scale"] * rng.lognormvariate(0.0, 0.6)
        card_present = channel == "pos" and rng.random() < 0.97
        return _attrs(amount * (COVARIATE_AMOUNT_SCALE if shifted else 1.0), category, country, channel, card_present)

    @staticmethod
    def _session_attrs(rng: random.Random, pattern: _Pattern, user: dict[str, Any], shifted: bool) -> dict[str, Any]:
        category = pattern.category.pick(rng)
        country = user["home"]
        while country == user["home"]:
            country = pattern.country.pick(rng)
        channel = pattern.channel.pick(rng)
        amount = pattern.median_amount * rng.lognormvariate(0.0, pattern.amount_sigma)
        if pattern is PATTERN_B:
            amount = min(20.0, max(1.0, amount))
        return _attrs(amount * (COVARIATE_AMOUNT_SCALE if shifted else 1.0), category, country, channel, False)


def _attrs(amount: float, category: str, country: str, channel: str, card_present: bool) -> dict[str, Any]:
    return {
        "amount": round(min(1_000_000.0, max(0.01, amount)), 2),
        "merchant_category": category,
        "country": country,
        "channel": channel,
        "card_present": card_present,
    }


def _iso(epoch_seconds: float) -> str:
    millis = int(round(epoch_seconds * 1000))
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(millis // 1000)) + f".{millis % 1000:03d}Z"


def encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode()


def produce(
    stream: Iterable[tuple[dict[str, Any], dict[str, Any]]],
    bootstrap: str,
    events_topic: str,
    outcomes_topic: str,
    count: int,
    rate: float | None = None,
    label_delay_events: int = 0,
    flush_timeout: float = 60.0,
) -> dict[str, Any]:
    """Produce `count` events (key user_id) and their outcomes (key event_id) as JSON.

    rate: events per wall-clock second (None: as fast as possible). label_delay_events: each
    outcome is produced after that many further events (the last ones after the last event).
    Returns JSON-able stats; raises DriftloopError when any record could not be delivered.
    """
    if count < 0 or label_delay_events < 0:
        raise ValueError("count and label_delay_events must be >= 0")
    if rate is not None and not rate > 0:
        raise ValueError("rate must be > 0 (or None for as fast as possible)")
    failures: list[str] = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            failures.append(str(err))

    producer = kafka.producer(bootstrap, on_delivery=delivered)
    waiting: deque[dict[str, Any]] = deque()
    produced_events = produced_outcomes = frauds = 0
    started = time.perf_counter()
    for index, (event, outcome) in enumerate(itertools.islice(stream, count)):
        if rate is not None:
            ahead = started + index / rate - time.perf_counter()
            if ahead > 0.001:
                time.sleep(ahead)
        _send(producer, events_topic, event["user_id"], encode(event))
        produced_events += 1
        frauds += outcome["is_fraud"]
        waiting.append(outcome)
        if len(waiting) > label_delay_events:
            late = waiting.popleft()
            _send(producer, outcomes_topic, late["event_id"], encode(late))
            produced_outcomes += 1
        producer.poll(0)
    while waiting:
        late = waiting.popleft()
        _send(producer, outcomes_topic, late["event_id"], encode(late))
        produced_outcomes += 1
    remaining = producer.flush(flush_timeout)
    seconds = time.perf_counter() - started
    if remaining or failures:
        raise DriftloopError(
            f"{remaining} records still queued and {len(failures)} failed after flushing to "
            f"{bootstrap}" + (f"; first failure: {failures[0]}" if failures else "")
        )
    return {
        "events": produced_events,
        "outcomes": produced_outcomes,
        "frauds": frauds,
        "seconds": round(seconds, 3),
        "events_per_s": round(produced_events / seconds, 1) if seconds else None,
    }


def _send(producer: Any, topic: str, key: str, value: bytes) -> None:
    while True:
        try:
            producer.produce(topic, value=value, key=key.encode())
            return
        except BufferError:  # local queue full: let deliveries drain
            producer.poll(0.05)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m driftloop.load.generator", description="Produce the synthetic card-fraud stream to Kafka."
    )
    parser.add_argument(
        "--bootstrap",
        default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
        required="KAFKA_BOOTSTRAP_SERVERS" not in os.environ,
    )
    parser.add_argument("--events", type=int, default=10_000, help="number of events (default 10000)")
    parser.add_argument("--events-topic", default=os.environ.get("DRIFTLOOP_TOPIC_EVENTS", "events"))
    parser.add_argument("--outcomes-topic", default=os.environ.get("DRIFTLOOP_TOPIC_OUTCOMES", "outcomes"))
    parser.add_argument("--rate", type=float, default=None, help="events per second (default: unlimited)")
    parser.add_argument("--label-delay-events", type=int, default=0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--fraud-rate", type=float, default=0.03)
    parser.add_argument("--drift", choices=("none", "abrupt", "gradual", "recurring"), default="none")
    parser.add_argument("--onset", type=int, default=0)
    parser.add_argument("--width", type=int, default=5000)
    parser.add_argument("--covariate", action="store_true", help="the drift shifts the input distribution")
    parser.add_argument("--no-concept", action="store_true", help="the drift leaves the fraud pattern alone")
    parser.add_argument("--now", action="store_true", help="start event time now instead of DEFAULT_START")
    args = parser.parse_args(argv)
    try:
        plan = DriftPlan(args.drift, args.onset, args.width, covariate=args.covariate, concept=not args.no_concept)
        stream = FraudStream(
            args.seed, args.users, args.fraud_rate, plan, start=datetime.now(UTC) if args.now else None
        )
        kafka.wait_for_broker(args.bootstrap)
        stats = produce(
            stream,
            args.bootstrap,
            args.events_topic,
            args.outcomes_topic,
            args.events,
            rate=args.rate,
            label_delay_events=args.label_delay_events,
        )
    except (DriftloopError, ValueError) as exc:
        print(f"driftloop: error: {exc}", file=sys.stderr, flush=True)
        return 2
    print(json.dumps(stats), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
