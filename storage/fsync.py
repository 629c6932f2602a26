"""The fsync policies of the engine (Redis's appendfsync names; storage/engine.py says what
each one does). A module of its own so that settings can check a policy name without
loading LevelDB."""

from __future__ import annotations

from typing import Final

__all__ = ["FSYNC_POLICIES"]

FSYNC_POLICIES: Final = ("always", "everysec", "no")
