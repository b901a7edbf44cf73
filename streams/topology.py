"""Every topic and consumer group the workers use, derived from the settings and the spec."""

from __future__ import annotations

from dataclasses import dataclass

from driftloop.settings import Settings
from driftloop.spec import PipelineSpec


@dataclass(frozen=True)
class Topology:
    group: str  # the scoring/join consumer group
    events: str
    outcomes: str
    predictions: str
    events_dlq: str
    outcomes_dlq: str
    labeled: str
    pending: str  # internal: predictions + feature rows awaiting their outcome, keyed by event id
    outcomes_by_id: str  # internal: outcomes re-keyed with the join partition function
    entity_changelog: str  # internal: per-entity window state
    join_changelog: str  # internal: the join's waiting sides
    journal_changelog: str  # internal: each event record's outputs, written before they leave (journal.py)
    observations: str  # internal: each scored batch's model-input rows and data-quality counts, for drift

    @classmethod
    def of(cls, settings: Settings, spec: PipelineSpec) -> Topology:
        prefix = f"driftloop-{spec.name}"
        return cls(
            group=prefix,
            events=settings.topic_events,
            outcomes=settings.topic_outcomes,
            predictions=settings.topic_predictions,
            events_dlq=settings.topic_dlq,
            outcomes_dlq=settings.topic_outcomes_dlq,
            labeled=settings.topic_labeled,
            pending=f"{prefix}-pending",
            outcomes_by_id=f"{prefix}-outcomes-by-id",
            entity_changelog=f"{prefix}-entity-state-changelog",
            join_changelog=f"{prefix}-join-changelog",
            journal_changelog=f"{prefix}-journal-changelog",
            observations=f"{prefix}-observations",
        )

    @property
    def changelogs(self) -> tuple[str, ...]:
        """The compacted topics the worker's tables and journal persist to (created by their owners)."""
        return (self.entity_changelog, self.join_changelog, self.journal_changelog)

    @property
    def internal(self) -> tuple[str, ...]:
        """The internal topics created with the settings' partition count (changelogs are the tables' own)."""
        return (self.pending, self.outcomes_by_id, self.observations)
