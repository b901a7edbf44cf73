"""The promotion controller: runs each challenger's canary trial and promotes or rolls it back.

The control plane hosts one `PromotionController` per pipeline and feeds it two things:

- `observe_aliases(aliases)` about once a second, with the registry's current aliases. A new (or
  changed) `challenger` next to a `champion` starts a trial from that moment; only labelled events
  predicted from then on count, so both arms cover the same period. An alias change the controller
  did not make itself is audited as an operator's (`alias_moved`: how a move in the MLflow UI gets
  on the audit topic), unless it was already audited where it was made: by `driftloop promote` /
  `rollback` (they leave an `driftloop.operator_change` tag naming the state they created) or by
  the retraining worker setting a fresh challenger (a version tagged `driftloop.origin=retrain`).
- `update(labeled_record)` for every record on the `labeled` topic; see `canary_trial` for the
  statistics and the guardrails.

Both return audit records (bytes, `contracts.audit`) for the control plane to publish: actor
"promotion" with action "trial_started", "canary_waiting" (at each inconclusive look), "trial_starved"
(once, when the trial cannot reach its sample size), "promoted" or "rolled_back"; actor "operator" with "alias_moved".

A decision is carried out as registry steps (`alias_moves`). When the registry is unreachable the
decision stays pending and the remaining steps are retried on later calls (at most once every
`RETRY_SECONDS`); its audit record is returned once, when the last step has succeeded. If someone
else moves the champion or the challenger meanwhile, their move wins and the pending decision is
dropped (and logged).

The control plane may read the aliases in one thread while the controller writes them in
another, so a snapshot can predate the controller's own latest writes: a snapshot equal to a
state the controller itself left less than `STALE_SNAPSHOT_SECONDS` ago is taken as stale, not
as someone moving the aliases back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from driftloop.models import registry
from driftloop.models.bootstrap import ORIGIN_TAG
from driftloop.spec import PipelineSpec
from driftloop.streams.contracts import audit, iso_time
from driftloop.streams.control.promotion import alias_moves
from driftloop.streams.control.promotion.alias_moves import CHALLENGER, CHAMPION, REJECTED_TAG, Step, describe
from driftloop.streams.control.promotion.trial import CanaryTrial

STALE_SNAPSHOT_SECONDS = 10.0
RETRY_SECONDS = 1.0  # between attempts on an unreachable registry: update() runs per labelled event
_LOG = logging.getLogger("driftloop.streams.control.promotion.controller")
_ACTIONS = {"promote": "promoted", "roll_back": "rolled_back"}
_ASSIGNED = {"event": "events", "entity": "entities"}  # what canary.assign splits
_NOTICES = {"wait": "canary_waiting", "starved": "trial_starved"}  # outcomes that leave the trial running


@dataclass
class _Pending:
    action: str  # "promoted" | "rolled_back"
    version: int  # the challenger
    champion: int  # the champion it was tried against
    reason: str
    details: dict[str, Any]
    steps: list[Step]
    decided_at: float
    failed_attempts: int = 0
    last_error: str | None = None
    last_failure_at: float = float("-inf")

    def survives(self, aliases: dict[str, int]) -> bool:
        """Whether aliases someone else moved still leave this decision meaningful.

        Until a decision's last step the challenger alias stays on its version, and the champion is
        the old one or, halfway through a promotion, the challenger's version.
        """
        return aliases.get(CHALLENGER) == self.version and aliases.get(CHAMPION) in (self.champion, self.version)

    def summary(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "version": self.version,
            "reason": self.reason,
            "decided_at": iso_time(self.decided_at),
            "failed_attempts": self.failed_attempts,
            "last_error": self.last_error,
        }


@dataclass
class _OwnStates:
    """Alias states the controller's own writes left behind, and when: to recognise stale snapshots."""

    entries: list[tuple[dict[str, int], float]] = field(default_factory=list)

    def left(self, state: dict[str, int], at: float) -> None:
        self.entries.append((dict(state), at))

    def contains(self, state: dict[str, int], now: float) -> bool:
        self.entries = [(s, t) for s, t in self.entries if now - t <= STALE_SNAPSHOT_SECONDS]
        return any(s == state for s, _ in self.entries)


class PromotionController:
    """`clock` is wall time live: it paces registry retries and dates the trial's start, which is compared with
    the records' `predicted_at` (wall time too). A trial's length is event time, read from the records."""

    def __init__(self, spec: PipelineSpec, tracking_uri: str, clock: Callable[[], float] = time.time):
        self.spec = spec
        self.tracking_uri = tracking_uri
        self.clock = clock
        self.model_name = spec.model.name
        self.trial: CanaryTrial | None = None
        self._aliases: dict[str, int] | None = None  # the registry's aliases, as far as the controller knows
        self._own_states = _OwnStates()
        self._pending: _Pending | None = None
        self._last_decision: dict[str, Any] | None = None
        self._operator_markers_seen: set[tuple[int, str]] = set()

    # -- inputs -------------------------------------------------------------------------------------

    def observe_aliases(self, aliases: dict[str, int]) -> list[bytes]:
        out = self._carry_out_pending()
        snapshot = {alias: int(version) for alias, version in aliases.items()}
        if self._aliases is None:  # first look: this is the state we start from, nobody moved anything
            self._aliases = snapshot
            return out + self._align_trial()
        if snapshot == self._aliases or self._own_states.contains(snapshot, self.clock()):
            return out
        before, self._aliases = self._aliases, snapshot
        if self._pending is not None and not self._pending.survives(snapshot):
            _LOG.warning(
                "aliases moved by someone else (%s -> %s) before the registry took %s of v%d; dropping that decision",
                before,
                snapshot,
                self._pending.action,
                self._pending.version,
            )
            self._pending = None
        if not self._audited_elsewhere(before, snapshot):
            out.append(self._alias_moved(before, snapshot))
        return out + self._align_trial()

    def update(self, labeled_record: dict[str, Any]) -> list[bytes]:
        out = self._carry_out_pending()
        trial = self.trial
        if trial is None or trial.finished:
            return out
        if datetime.fromisoformat(labeled_record["predicted_at"]).timestamp() < trial.started_at:
            return out
        trial.add(labeled_record)  # every record counts towards the trial's length, so decide even if not its arms'
        outcome = trial.decide()
        if outcome is None:
            return out
        if outcome.kind in _NOTICES:
            _LOG.log(logging.WARNING if outcome.kind == "starved" else logging.INFO, "%s", outcome.reason)
            return out + [self._audit(_NOTICES[outcome.kind], trial.challenger, outcome.reason, outcome.details)]
        action = _ACTIONS[outcome.kind]
        now = self.clock()
        steps = (
            alias_moves.promotion(trial.challenger, self._aliases or {}, now)
            if action == "promoted"
            else alias_moves.rejection(trial.challenger, outcome.reason)
        )
        self._pending = _Pending(action, trial.challenger, trial.champion, outcome.reason, outcome.details, steps, now)
        _LOG.info("%s v%d: %s", action, trial.challenger, outcome.reason)
        return out + self._carry_out_pending()

    def state(self) -> dict[str, Any]:
        """For `driftloop status`: the aliases, the running trial, a pending and the last decision."""
        aliases = self._aliases or {}
        return {
            "model_name": self.model_name,
            "mode": "shadow" if self.spec.canary.shadow else "canary",
            "aliases": dict(aliases),
            "champion": aliases.get(CHAMPION),
            "challenger": aliases.get(CHALLENGER),
            "trial": None if self.trial is None else self.trial.summary(),
            "pending": None if self._pending is None else self._pending.summary(),
            "last_decision": self._last_decision,
        }

    # -- carrying out decisions ---------------------------------------------------------------------

    def _carry_out_pending(self) -> list[bytes]:
        pending = self._pending
        if pending is None or self.clock() - pending.last_failure_at < RETRY_SECONDS:
            return []
        while pending.steps:
            step = pending.steps[0]
            try:
                alias_moves.apply(step, self.model_name, self.tracking_uri)
            except Exception as exc:  # registry down or refusing: keep the decision, retry on the next call
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if message != pending.last_error:
                    _LOG.warning(
                        "model registry: %s; %s of v%d stays pending", message, pending.action, pending.version
                    )
                pending.failed_attempts += 1
                pending.last_error = message
                pending.last_failure_at = self.clock()
                return []
            before = self._aliases or {}
            self._aliases = alias_moves.after(before, [step])
            if self._aliases != before:
                self._own_states.left(before, self.clock())
            pending.steps.pop(0)
        self._pending = None
        now = self.clock()
        self._last_decision = {
            "action": pending.action,
            "version": pending.version,
            "reason": pending.reason,
            "at": iso_time(now),
        }
        details = {
            **pending.details,
            "decided_at": iso_time(pending.decided_at),
            "aliases": dict(self._aliases or {}),
            "failed_registry_attempts": pending.failed_attempts,
        }
        return [self._audit(pending.action, pending.version, pending.reason, details)] + self._align_trial()

    # -- following the aliases ----------------------------------------------------------------------

    def _align_trial(self) -> list[bytes]:
        """Start, keep or end the trial so that it matches the current champion and challenger."""
        champion, challenger = (self._aliases or {}).get(CHAMPION), (self._aliases or {}).get(CHALLENGER)
        wanted = (
            (champion, challenger)
            if champion is not None and challenger is not None and champion != challenger
            else None
        )
        running = None if self.trial is None else (self.trial.champion, self.trial.challenger)
        if wanted == running:
            return []
        if wanted is None:
            self.trial = None
            return []
        champion, challenger = wanted
        self.trial = CanaryTrial(self.spec.canary, self.spec.model.threshold, champion, challenger, self.clock())
        canary = self.spec.canary
        how = (
            "in shadow: it scores every event without serving it"
            if canary.shadow
            else f"serving {canary.share:.0%} of the {_ASSIGNED[canary.assign]} as the canary"
        )
        reason = f"trial of challenger v{challenger} against champion v{champion} started, {how}"
        return [self._audit("trial_started", challenger, reason, self.trial.summary())]

    def _audited_elsewhere(self, before: dict[str, int], after: dict[str, int]) -> bool:
        """Whether this alias change was made by someone who audits it: an operator command or retraining."""
        try:
            tags = {
                version: registry.version_tags(self.model_name, version, tracking_uri=self.tracking_uri)
                for version in set(before.values()) | set(after.values())
            }
        except Exception:  # cannot tell: audit it rather than miss it
            return False
        for version, version_tags in tags.items():
            marker = alias_moves.read_operator_marker(version_tags)
            key = (version, str(marker.get("at")) if marker else "")
            if marker and marker.get("aliases") == after and key not in self._operator_markers_seen:
                self._operator_markers_seen.add(key)
                return True
        new_challenger = after.get(CHALLENGER)
        if new_challenger is None or new_challenger == before.get(CHALLENGER):
            return False
        others_unchanged = {k: v for k, v in before.items() if k != CHALLENGER} == {
            k: v for k, v in after.items() if k != CHALLENGER
        }
        challenger_tags = tags.get(new_challenger, {})
        return others_unchanged and challenger_tags.get(ORIGIN_TAG) == "retrain" and REJECTED_TAG not in challenger_tags

    def _alias_moved(self, before: dict[str, int], after: dict[str, int]) -> bytes:
        changes = [
            f"{alias} {describe(before.get(alias))} -> {describe(after.get(alias))}"
            for alias in sorted(set(before) | set(after))
            if before.get(alias) != after.get(alias)
        ]
        reason = f"aliases moved outside driftloop (e.g. in the MLflow UI): {', '.join(changes)}"
        _LOG.info(reason)
        return audit(
            actor="operator",
            action="alias_moved",
            model_name=self.model_name,
            reason=reason,
            version=after.get(CHAMPION),
            details={"from": before, "to": after},
            at=self.clock(),
        )

    def _audit(self, action: str, version: int, reason: str, details: dict[str, Any]) -> bytes:
        return audit(
            actor="promotion",
            action=action,
            model_name=self.model_name,
            reason=reason,
            version=version,
            details=details,
            at=self.clock(),
        )
