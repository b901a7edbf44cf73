"""The backtest's virtual clock: event time, advanced by the loop to each event's time as it is processed."""

from __future__ import annotations


class VirtualClock:
    """A `clock` callable for the decision classes: returns the event time the loop has reached."""

    def __init__(self, start: float):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, moment: float) -> None:
        """Move to `moment`; event time never runs backwards (the source refuses unsorted tables)."""
        if moment > self.now:
            self.now = moment
