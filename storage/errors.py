"""Errors raised by the local store.

storage/ knows nothing of kvstore/, so its one error lives here; kvstore.errors.StorageError
subclasses it so that callers above see a single hierarchy.
"""

from __future__ import annotations


class StorageError(Exception):
    """The local store cannot do what was asked: names the path and the cause."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path
