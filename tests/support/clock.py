"""Shared test helpers: clock."""

from __future__ import annotations


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now
