"""One canary trial: the challenger against the champion on labelled events of the same period.

Two modes, from the spec's `canary.shadow`:

- canary (default): a share of the entities is served by the challenger (`variant: "canary"` in
  the labelled record); its error rate (decision != label) is compared with the champion's on the
  other entities by Fisher's exact test.
- shadow: the champion serves everything and the challenger scores the same events without being
  served (the labelled record's `shadow: {"model_version", "score"}`); the paired errors are
  compared by the exact McNemar test, which counts only the events where the two disagree.

When the test is run. Testing after every event and stopping at the first p < alpha would make a
false promotion several times likelier than alpha. So the trial looks at fixed points only, when
the smaller arm reaches min_samples, 2x, 4x, ... and finally max_samples, and each look uses
alpha / (number of looks) (Bonferroni): the chance of promoting a challenger that is no better
than the champion stays below alpha over the whole trial (likewise for rolling back one that is no
worse). Simulated at the defaults (looks at 300, 600, ..., 4800, 5000; both arms at 5 % error):
3.5 % of trials promote, against 27 % when testing at alpha every 50 events. At each look: promote
when the challenger is significantly better, roll back when it is significantly worse, roll back
at the last look when neither, else wait for the next.

The trial's length: with `canary.max_length` (labelled events observed, or the event time they span, since
the trial started), a trial still undecided then is rolled back. A trial that cannot reach its sample
size says so once (outcome "starved", audited `trial_starved`) and goes on: when the canary arm has no
event although the champion's reached `canary.min_samples` (entity assignment on a stream of few
entities), or when, at the rate so far, the smaller arm would reach `canary.min_samples` only after
`canary.max_length` (checked once a tenth of it has passed).

Guardrails do not wait for a look: once the challenger has min(50, min_samples) events, an error
rate above `max_error_rate` or a p95 latency above `max_latency_ms` (the model's own scoring time per
event, the records' `model_ms`, when present: end-to-end latency includes queueing both arms share)
rolls it back at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from driftloop.spec import CanarySpec, duration_text
from driftloop.streams.contracts import iso_time
from driftloop.streams.control.drift.report import epoch
from driftloop.streams.control.promotion.significance import fisher_fewer_errors, mcnemar_fewer_errors

GUARDRAIL_MIN_SAMPLES = 50  # enough events that one unlucky error cannot trip the error-rate guardrail


@dataclass(frozen=True)
class Outcome:
    kind: str  # "promote" | "roll_back" | "wait" | "starved"
    reason: str  # one sentence, for the audit record
    details: dict[str, Any]


@dataclass
class _Arm:
    samples: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def add(self, error: bool, latency_ms: float | None) -> None:
        self.samples += 1
        self.errors += error
        if latency_ms is not None:
            self.latencies_ms.append(float(latency_ms))

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.samples if self.samples else None

    @property
    def latency_p95_ms(self) -> float | None:
        return float(np.percentile(self.latencies_ms, 95)) if self.latencies_ms else None

    def summary(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "errors": self.errors,
            "error_rate": self.error_rate,
            "latency_p95_ms": self.latency_p95_ms,
        }


def look_schedule(min_samples: int, max_samples: int) -> list[int]:
    """Arm sizes at which the test runs: min_samples doubling while below max_samples, then max_samples."""
    looks, size = [], min_samples
    while size < max_samples:
        looks.append(size)
        size *= 2
    return looks + [max_samples]


class CanaryTrial:
    def __init__(self, policy: CanarySpec, threshold: float, champion: int, challenger: int, started_at: float):
        self.policy = policy
        self.threshold = threshold
        self.champion = champion
        self.challenger = challenger
        self.started_at = started_at
        self.shadow = policy.shadow
        self.looks = look_schedule(policy.min_samples, policy.max_samples)
        self.look_alpha = policy.alpha / len(self.looks)
        self._next_look = 0
        self.champion_arm, self.challenger_arm = _Arm(), _Arm()
        # shadow mode: the events on which exactly one of the two models was wrong
        self.challenger_right_champion_wrong = self.challenger_wrong_champion_right = 0
        self._guarded_samples = 0
        self.finished = False
        self.seen = 0  # labelled events observed since the trial started, of any version
        self._first_event_time: float | None = None
        self._latest_event_time: float | None = None
        self.starved = False  # whether the trial has said it cannot reach its sample size

    @property
    def spanned(self) -> float:
        """Seconds of event time between the first and the newest labelled event the trial observed."""
        if self._first_event_time is None or self._latest_event_time is None:
            return 0.0
        return self._latest_event_time - self._first_event_time

    def add(self, record: dict[str, Any]) -> bool:
        """Count one labelled record towards the trial's length, and towards an arm if it belongs to this trial's
        two versions; False when it does not."""
        if self.finished:
            return False
        self.seen += 1
        event_time = epoch(record["event_time"])
        self._first_event_time = min(event_time, self._first_event_time or event_time)
        self._latest_event_time = max(event_time, self._latest_event_time or event_time)
        label = int(record["label"])
        served_error = int(record["decision"]) != label
        variant, version = record.get("variant"), record.get("model_version")
        if self.shadow:
            shadow = record.get("shadow") or {}
            if variant != "champion" or version != self.champion or shadow.get("model_version") != self.challenger:
                return False
            challenger_error = int(shadow["score"] >= self.threshold) != label
            self.champion_arm.add(served_error, record.get("model_ms"))
            self.challenger_arm.add(challenger_error, shadow.get("model_ms"))
            self.challenger_right_champion_wrong += served_error and not challenger_error
            self.challenger_wrong_champion_right += challenger_error and not served_error
            return True
        if variant == "canary" and version == self.challenger:
            self.challenger_arm.add(served_error, record.get("model_ms"))
        elif variant == "champion" and version == self.champion:
            self.champion_arm.add(served_error, record.get("model_ms"))
        else:
            return False
        return True

    def p_values(self) -> tuple[float, float]:
        """(p that the challenger errs less than the champion, p that it errs more)."""
        if self.shadow:
            return (
                mcnemar_fewer_errors(self.challenger_right_champion_wrong, self.challenger_wrong_champion_right),
                mcnemar_fewer_errors(self.challenger_wrong_champion_right, self.challenger_right_champion_wrong),
            )
        challenger, champion = self.challenger_arm, self.champion_arm
        return (
            fisher_fewer_errors(challenger.errors, challenger.samples, champion.errors, champion.samples),
            fisher_fewer_errors(champion.errors, champion.samples, challenger.errors, challenger.samples),
        )

    def decide(self) -> Outcome | None:
        """What to do now: promote, roll back, report an inconclusive look ("wait"), or nothing (None)."""
        if self.finished:
            return None
        if self.challenger_arm.samples != self._guarded_samples:  # only the challenger's events can trip one
            self._guarded_samples = self.challenger_arm.samples
            guardrail = self._guardrail()
            if guardrail is not None:
                return self._finish("roll_back", guardrail)
        starved = None if self.starved else self._starvation()
        if starved is not None:
            self.starved = True
            return Outcome("starved", starved, self.summary())
        compared = min(self.champion_arm.samples, self.challenger_arm.samples)
        if compared < self.looks[self._next_look]:
            return self._too_long()
        p_better, p_worse = self.p_values()
        if p_better < self.look_alpha:
            return self._finish(
                "promote", f"{self._comparison()}: significantly better ({self._significance(p_better)})"
            )
        if p_worse < self.look_alpha:
            return self._finish(
                "roll_back", f"{self._comparison()}: significantly worse ({self._significance(p_worse)})"
            )
        not_yet = (
            f"{self._comparison()}; p={p_better:.2g} (better), {p_worse:.2g} (worse), needed < {self.look_alpha:.2g}"
        )
        if self._next_look == len(self.looks) - 1:
            return self._finish(
                "roll_back",
                f"no significant difference after {compared:,} labelled events per arm (canary.max_samples): {not_yet}",
            )
        self._next_look += 1
        return Outcome(
            "wait",
            f"not significant yet: {not_yet}; next look at {self.looks[self._next_look]:,} events per arm",
            self.summary(),
        )

    def _too_long(self) -> Outcome | None:
        """Roll back a trial that reached canary.max_length undecided."""
        longest = self.policy.max_length
        if longest is None or not longest.reached(self.seen, self.spanned):
            return None
        return self._finish(
            "roll_back",
            f"no decision within canary.max_length {longest} ({self.seen:,} labelled events over "
            f"{duration_text(self.spanned)} of event time): {self._comparison()}",
        )

    def _starvation(self) -> str | None:
        """Why the trial cannot reach its sample size, or None while it can."""
        policy, smaller = self.policy, min(self.champion_arm.samples, self.challenger_arm.samples)
        # By this many champion events the share would have put min_samples on the canary; fewer is no sign yet
        # (the workers load the challenger within their poll, and events scored before it count for the champion).
        starved_after = policy.min_samples * (1 - policy.share) / policy.share
        if not self.shadow and self.challenger_arm.samples == 0 and self.champion_arm.samples >= starved_after:
            advice = (
                "canary.assign is entity and a stream of few entities may put none on the canary: use canary.assign: "
                "event"
                if policy.assign == "entity"
                else "are the workers serving the challenger?"
            )
            return (
                f"challenger v{self.challenger}'s canary arm got 0 of the {self.seen:,} labelled events since the "
                f"trial started (canary.share {policy.share:g}, canary.assign {policy.assign}): it cannot reach "
                f"canary.min_samples {policy.min_samples}; {advice}"
            )
        longest = policy.max_length
        if longest is None or smaller >= policy.min_samples:
            return None
        events, seconds = self.seen, self.spanned
        elapsed, limit = (events, longest.events) if longest.events is not None else (seconds, longest.seconds)
        assert limit is not None  # a span sets exactly one of the two
        if elapsed < limit / 10:
            return None  # too early to project a rate
        projected = elapsed * policy.min_samples / smaller if smaller else float("inf")
        if projected <= limit:
            return None
        when = (
            "never, at none so far"
            if not smaller
            else (
                f"after about {projected:,.0f} labelled events"
                if longest.events is not None
                else f"after about {duration_text(projected)} of event time"
            )
        )
        return (
            f"the smaller arm of challenger v{self.challenger}'s trial has {smaller:,} labelled events after "
            f"{events:,} ({duration_text(seconds)} of event time): at this rate it reaches canary.min_samples "
            f"{policy.min_samples} {when}, beyond canary.max_length {longest}, so the trial will roll back undecided; "
            f"raise canary.share or canary.max_length"
        )

    @property
    def test_name(self) -> str:
        return "exact McNemar" if self.shadow else "Fisher exact"

    def summary(self) -> dict[str, Any]:
        p_better, p_worse = self.p_values()
        summary = {
            "mode": "shadow" if self.shadow else "canary",
            "test": self.test_name,
            "champion_version": self.champion,
            "challenger_version": self.challenger,
            "started_at": iso_time(self.started_at),
            "champion": self.champion_arm.summary(),
            "challenger": self.challenger_arm.summary(),
            "p_better": p_better,
            "p_worse": p_worse,
            "looks": self.looks,
            "next_look": None if self.finished else self.looks[self._next_look],
            "look_alpha": self.look_alpha,
            "labelled_events": self.seen,
            "event_time_spanned": duration_text(self.spanned),
        }
        if self.shadow:
            summary["discordant"] = {
                "challenger_right_champion_wrong": self.challenger_right_champion_wrong,
                "challenger_wrong_champion_right": self.challenger_wrong_champion_right,
            }
        return summary

    def _guardrail(self) -> str | None:
        arm = self.challenger_arm
        if arm.samples < min(GUARDRAIL_MIN_SAMPLES, self.policy.min_samples):
            return None
        if arm.error_rate is not None and arm.error_rate > self.policy.max_error_rate:
            return (
                f"guardrail: challenger v{self.challenger} was wrong on {arm.error_rate:.1%} of {arm.samples:,} "
                f"labelled events (canary.max_error_rate {self.policy.max_error_rate:.1%})"
            )
        p95 = arm.latency_p95_ms
        if p95 is not None and p95 > self.policy.max_latency_ms:
            return (
                f"guardrail: challenger v{self.challenger}'s p95 latency is {p95:.0f} ms over {arm.samples:,} "
                f"labelled events (canary.max_latency_ms {self.policy.max_latency_ms:g})"
            )
        return None

    def _significance(self, p: float) -> str:
        return (
            f"one-sided {self.test_name} p={p:.2g} < {self.look_alpha:.2g}: alpha {self.policy.alpha:g} "
            f"over {len(self.looks)} looks"
        )

    def _comparison(self) -> str:
        challenger, champion = self.challenger_arm, self.champion_arm
        return (
            f"challenger v{self.challenger} wrong on {challenger.error_rate:.2%} of {challenger.samples:,} "
            f"labelled events, champion v{self.champion} on {champion.error_rate:.2%} of {champion.samples:,}"
        )

    def _finish(self, kind: str, reason: str) -> Outcome:
        self.finished = True
        return Outcome(kind, reason, self.summary())
