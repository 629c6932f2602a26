"""Errors raised by the local store.

storage/ knows nothing of kvstore/, so its one error lives here, apart from kvstore's
hierarchy: the node turns it into ``kvstore.errors.StorageError`` where it calls the engine,
and ``kvstore.errors.to_wire`` reports one that reaches the wire under the same code.
"""

from __future__ import annotations


class StorageError(Exception):
    """The local store cannot do what was asked: names the path and the cause."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path
