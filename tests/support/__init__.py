"""Helpers shared by the unit and integration tests (fixtures are in tests/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SPECS = REPO / "driftloop" / "specs"
ELEC2 = REPO.parent / "shared" / "data" / "elec2.csv"  # the shared elec2 dataset, beside the repository
KEY_ENV = "DRIFTLOOP_SIGNING_KEY_FILE"


def key_environ() -> dict[str, str]:
    """The session's signing key setting, for `settings.load(environ=...)`."""
    return {KEY_ENV: os.environ[KEY_ENV]}
