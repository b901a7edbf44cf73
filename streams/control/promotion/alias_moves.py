"""Promotion and rollback as ordered registry steps, shared by the controller and the operator commands.

A move is a list of small idempotent steps (set an alias, delete an alias, tag a version) so that
a caller interrupted by an unreachable registry can run the remaining steps later, and can tell
which alias states it passed through. The orders are chosen so that the alias `champion` always
exists: it is overwritten, never deleted, and `previous` is written before it.

Aliases: `champion` (served), `challenger` (on trial), `previous` (the champion before the last
promotion, what a rollback returns to).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from driftloop.models import registry
from driftloop.streams.contracts import iso_time

CHAMPION, CHALLENGER, PREVIOUS = "champion", "challenger", "previous"
PROMOTED_AT_TAG = "driftloop.promoted_at"
REJECTED_TAG = "driftloop.rejected"
# Written by the operator commands before they move aliases: the alias state they are about to
# create. The controller recognises that state when it polls and does not audit it a second time.
OPERATOR_CHANGE_TAG = "driftloop.operator_change"


@dataclass(frozen=True)
class SetAlias:
    alias: str
    version: int


@dataclass(frozen=True)
class DeleteAlias:
    alias: str


@dataclass(frozen=True)
class TagVersion:
    version: int
    key: str
    value: str


Step = SetAlias | DeleteAlias | TagVersion


def promotion(version: int, aliases: dict[str, int], at: float) -> list[Step]:
    """Make `version` the champion: the old champion becomes `previous`, a challenger on `version` goes."""
    steps: list[Step] = []
    old = aliases.get(CHAMPION)
    if old is not None and old != version:
        steps.append(SetAlias(PREVIOUS, old))
    steps += [SetAlias(CHAMPION, version), TagVersion(version, PROMOTED_AT_TAG, iso_time(at))]
    if aliases.get(CHALLENGER) == version:
        steps.append(DeleteAlias(CHALLENGER))
    return steps


def rejection(version: int, reason: str) -> list[Step]:
    """End the challenger's trial: tag why first, so the version never loses its alias unexplained."""
    return [TagVersion(version, REJECTED_TAG, reason), DeleteAlias(CHALLENGER)]


def restoration(version: int, aliases: dict[str, int], reason: str) -> list[Step]:
    """Point `champion` back at an earlier `version` and tag the demoted champion rejected.

    `previous` is used up when it is the version restored, so a second rollback cannot bounce
    back to the demoted one.
    """
    steps: list[Step] = [SetAlias(CHAMPION, version)]
    demoted = aliases.get(CHAMPION)
    if demoted is not None:
        steps.append(TagVersion(demoted, REJECTED_TAG, reason))
    if aliases.get(PREVIOUS) == version:
        steps.append(DeleteAlias(PREVIOUS))
    if aliases.get(CHALLENGER) == version:
        steps.append(DeleteAlias(CHALLENGER))
    return steps


def operator_marker(version: int, action: str, after: dict[str, int], at: float) -> TagVersion:
    return TagVersion(
        version,
        OPERATOR_CHANGE_TAG,
        json.dumps({"action": action, "at": iso_time(at), "aliases": after}, sort_keys=True),
    )


def read_operator_marker(tags: dict[str, str]) -> dict | None:
    try:
        marker = json.loads(tags[OPERATOR_CHANGE_TAG])
    except (KeyError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def after(aliases: dict[str, int], steps: list[Step]) -> dict[str, int]:
    """The aliases once `steps` have run."""
    state = dict(aliases)
    for step in steps:
        if isinstance(step, SetAlias):
            state[step.alias] = step.version
        elif isinstance(step, DeleteAlias):
            state.pop(step.alias, None)
    return state


def describe(version: int | None) -> str:
    return "none" if version is None else f"v{version}"


def apply(step: Step, model_name: str, tracking_uri: str) -> None:
    if isinstance(step, SetAlias):
        registry.set_alias(model_name, step.alias, step.version, tracking_uri=tracking_uri)
    elif isinstance(step, DeleteAlias):
        registry.delete_alias(model_name, step.alias, tracking_uri=tracking_uri)
    else:
        registry.set_version_tag(model_name, step.version, step.key, step.value, tracking_uri=tracking_uri)


def apply_marked(
    model_name: str, tracking_uri: str, version: int, action: str, current: dict[str, int], steps: list[Step], at: float
) -> dict[str, int]:
    """Run `steps` after tagging `version` with the state they create, so the promotion controller knows the
    change is audited by whoever made it (an operator command, a warm-up promotion); returns that state."""
    state = after(current, steps)
    for step in [operator_marker(version, action, state, at), *steps]:
        apply(step, model_name, tracking_uri)
    return state
