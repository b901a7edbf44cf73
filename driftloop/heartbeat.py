"""A file a long-running loop touches as it turns ($DRIFTLOOP_HEARTBEAT_FILE), so a container healthcheck
can tell a process whose loop runs from one that is stuck: the control plane and the retrain worker serve
no HTTP a healthcheck could ask instead."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

_LOG = logging.getLogger("driftloop.heartbeat")


class Heartbeat:
    def __init__(self, path: Path | None, every: float = 5.0, clock: Callable[[], float] = time.monotonic):
        self.path, self.every, self.clock = path, every, clock
        self._last: float | None = None

    def beat(self) -> None:
        """Touch the file, at most once per `every` seconds; nothing without a path."""
        now = self.clock()
        if self.path is None or (self._last is not None and now - self._last < self.every):
            return
        self._last = now
        try:
            self.path.touch()
        except OSError as exc:  # a wrong path must not stop the loop it reports on
            _LOG.warning("cannot touch the heartbeat file %s: %s", self.path, exc.strerror or exc)
