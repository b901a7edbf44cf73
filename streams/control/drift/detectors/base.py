"""What a concept-drift detector is: knobs declared as fields, and `update(loss, event_time) -> Change | None`.

The concept monitor (streams/control/drift/concept.py) starts one detector per model version and feeds it
the per-event loss of that version's labeled outcomes, oldest first. The detector answers None, or a
`Change` when the loss ROSE significantly: a falling loss (a model learning online) is never concept
drift. A `Change` says where the rise started (the retraining trains from there) and the mean loss on
either side. A detector is a pydantic model: its fields are its knobs, read from the spec's
`drift.concept` mapping and validated there, so a bad knob is a spec error naming its path. The knobs
every detector has are `loss` and `loss_cap` (below); River's detectors do the statistics.

Feeding ADWIN (the default) a loss whose mean rises from 0.1 to 0.3 at event 2,000, then one that falls:

    >>> import random
    >>> from driftloop.streams.control.drift.detectors import concept_detector
    >>> rng = random.Random(1)
    >>> calm = [rng.uniform(0, 0.2) for _ in range(2000)]
    >>> worse = [rng.uniform(0, 0.6) for _ in range(1000)]
    >>> adwin = concept_detector({"detector": "adwin"}).started(history=20_000)
    >>> for event, loss in enumerate(calm + worse):
    ...     change = adwin.update(loss, event_time=f"event {event}")
    ...     if change:
    ...         print(f"at event {event}: the loss rose from {change.loss_before:.2f} to {change.loss_after:.2f}, "
    ...               f"from {change.change_point} on (window from {change.window_start})")
    at event 2079: the loss rose from 0.10 to 0.29, from event 2000 on (window from event 1856)
    >>> improving = concept_detector({"detector": "adwin"}).started(history=20_000)
    >>> [event for event, loss in enumerate(worse + calm) if improving.update(loss, f"event {event}")]
    []

A spec's detector is a frozen template; `started()` gives each watched model version its own copy
with fresh state, so the template itself is never fed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple, Self, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer, model_validator


class Change(NamedTuple):
    """A significant rise of the loss, as event times (passed to `update`) and mean losses."""

    change_point: str  # where the rise is estimated to start: a retraining trains from here
    window_start: str  # the oldest event the detector still weighed
    loss_before: float  # mean loss before the change point
    loss_after: float  # mean loss from the change point on


class ConceptDetector(BaseModel):
    """The protocol: subclasses declare their knobs as fields and implement `start` and `update`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    detector: str  # the registry name it was made under (`concept_detector`)
    # -log of the probability given to the true label, or the 0/1 error of the served decision
    loss: Literal["log_loss", "error"] = "log_loss"
    # one confidently wrong outcome must not weigh like a hundred (streams/control/drift/concept.py)
    loss_cap: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _cap_needs_log_loss(self) -> Self:
        if self.loss == "error" and "loss_cap" in self.model_fields_set:
            raise ValueError("loss_cap caps the log loss; the 0/1 error (loss: error) takes none")
        return self

    @model_serializer(mode="wrap")
    def _without_unused_cap(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        dumped = handler(self)
        if self.loss == "error":
            dumped.pop("loss_cap", None)  # so that a dumped detector reads back as the same spec
        return dumped

    @classmethod
    def knobs(cls) -> list[str]:
        """The keys a spec may give this detector besides `detector` (loss_cap only where it takes the log loss)."""
        takes_log_loss = "log_loss" in get_args(cls.model_fields["loss"].annotation)
        return [name for name in cls.model_fields if name != "detector" and (name != "loss_cap" or takes_log_loss)]

    def started(self, history: int) -> Self:
        """A copy with fresh state for one model version; `history` bounds the events a change estimate reads."""
        copy = self.model_copy()
        copy.start(history)
        return copy

    def start(self, history: int) -> None:
        """Set up the state (River's detector, recent losses); called once, on a fresh copy."""
        raise NotImplementedError

    def update(self, loss: float, event_time: str) -> Change | None:
        """Feed one outcome's loss; a Change when the loss rose significantly, else None."""
        raise NotImplementedError


def rise_start(losses: Sequence[float] | np.ndarray) -> int:
    """Where the single rise of the mean that best explains `losses` (oldest first) starts: an index.

    That is after the point where the cumulative sum of the losses' deviations from their mean is
    lowest (the least-squares split for one rise of the mean); with no rise inside, 0.
    """
    values = np.asarray(losses, dtype=float)
    split = int(np.argmin(np.cumsum(values - values.mean()))) + 1
    return split if split < len(values) else 0


def rise(window: Sequence[tuple[str, float]]) -> Change:
    """The Change that `rise_start` finds in (event time, loss) pairs, oldest first."""
    losses = np.array([loss for _, loss in window])
    split = rise_start(losses)
    before = float(losses[:split].mean()) if split else float(losses.mean())
    return Change(window[split][0], window[0][0], before, float(losses[split:].mean()))
