"""What an operator can do by hand: promote a version, roll back a challenger or a champion.

Each function moves the registry aliases (in the same safe orders as the promotion controller, see
`alias_moves`) and returns the audit record (actor "operator") for the caller to publish. Before
moving anything it tags the acted-on version with the alias state it is about to create, so the
promotion controller recognises the change and does not audit it a second time. Misuse (nothing
to promote, unknown version, already the champion) raises DriftloopError before anything moves, and
so does a version that would become the champion but fails verification (`ModelRefused`: unsigned, or
its files or tags not what driftloop signed), so a worker's next restart can never meet it.
"""

from __future__ import annotations

import time

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

from driftloop.errors import DriftloopError
from driftloop.models import registry
from driftloop.signing import SigningKey
from driftloop.spec import PipelineSpec
from driftloop.streams.contracts import audit
from driftloop.streams.control.promotion import alias_moves
from driftloop.streams.control.promotion.alias_moves import CHALLENGER, CHAMPION, PREVIOUS, Step, describe

ROLLED_BACK_BY_OPERATOR = "rolled back by operator"


def promote(spec: PipelineSpec, tracking_uri: str, version: int | None, key: SigningKey | None = None) -> bytes:
    """Make `version` (None: the current challenger) the champion; the old champion becomes `previous`."""
    name = spec.model.name
    current = registry.aliases(name, tracking_uri=tracking_uri)
    if version is None:
        version = current.get(CHALLENGER)
        if version is None:
            raise DriftloopError(f"model {name} has no challenger to promote; name the version to promote")
    _require_version(name, version, tracking_uri)
    if current.get(CHAMPION) == version:
        raise DriftloopError(f"model {name} v{version} is already the champion")
    registry.verify_version(name, version, tracking_uri=tracking_uri, key=key)
    now = time.time()
    steps = alias_moves.promotion(version, current, now)
    reason = f"operator promoted v{version} to champion (was {describe(current.get(CHAMPION))})"
    return _carry_out(spec, tracking_uri, "promoted", version, reason, current, steps, now)


def rollback(spec: PipelineSpec, tracking_uri: str, to_version: int | None, key: SigningKey | None = None) -> bytes:
    """Undo the latest change.

    With a challenger (and no `to_version`): end its trial and tag it rejected; the champion stays.
    Otherwise: point `champion` back at `to_version`, or at `previous` when none is given, and tag
    the demoted champion rejected.
    """
    name = spec.model.name
    current = registry.aliases(name, tracking_uri=tracking_uri)
    champion, challenger = current.get(CHAMPION), current.get(CHALLENGER)
    now = time.time()
    if to_version is None and challenger is not None and challenger != champion:
        steps = alias_moves.rejection(challenger, ROLLED_BACK_BY_OPERATOR)
        reason = f"operator rolled back challenger v{challenger}; champion stays {describe(champion)}"
        return _carry_out(spec, tracking_uri, "rolled_back", challenger, reason, current, steps, now)
    target = current.get(PREVIOUS) if to_version is None else to_version
    if target is None:
        raise DriftloopError(
            f"model {name} has no challenger and no previous champion to roll back to; name the version to roll back to"
        )
    _require_version(name, target, tracking_uri)
    if target == champion:
        raise DriftloopError(f"model {name} v{target} is already the champion")
    registry.verify_version(name, target, tracking_uri=tracking_uri, key=key)
    steps = alias_moves.restoration(target, current, f"{ROLLED_BACK_BY_OPERATOR} to v{target}")
    reason = f"operator rolled champion back from {describe(champion)} to v{target}"
    return _carry_out(spec, tracking_uri, "rolled_back", target, reason, current, steps, now)


def _carry_out(
    spec: PipelineSpec,
    tracking_uri: str,
    action: str,
    version: int,
    reason: str,
    current: dict[str, int],
    steps: list[Step],
    at: float,
) -> bytes:
    after = alias_moves.apply_marked(spec.model.name, tracking_uri, version, action, current, steps, at)
    return audit(
        actor="operator",
        action=action,
        model_name=spec.model.name,
        reason=reason,
        version=version,
        details={"from": current, "to": after},
        at=at,
    )


def _require_version(name: str, version: int, tracking_uri: str) -> None:
    try:
        registry.version_info(name, version, tracking_uri=tracking_uri)
    except MlflowException as exc:
        if exc.error_code != ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            raise
        raise DriftloopError(f"model {name} has no version {version}") from None
