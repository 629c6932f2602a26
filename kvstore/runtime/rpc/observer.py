"""What an RPC server tells about the calls it answers, method by method.

    server = RpcServer(handlers, observers={"put": PutStats(), ...})

The server calls :meth:`CallObserver.arrived` when a request for the method is about to be
handled and, for an observer with ``timed`` set, :meth:`CallObserver.answered` once its
reply (or error) is known, with the seconds since the request's chunk was read. Handlers
stay as they are: a metrics layer wrapping each of them cost every request two calls
through Python's protocol with keywords, a reply wrapper and two clock reads (~5k
instructions of a ~60k put); the server already holds the reply callback and reads the
clock once per chunk, so it can tell the same for far less.

Subclasses must be cheap and must not raise: they run inline on the request path.
"""

from __future__ import annotations

from typing import Any

__all__ = ["CallObserver"]


class CallObserver:
    """The base does nothing. A native (compiled) class: the server's calls into it, and
    into subclasses compiled with it, are direct rather than through Python's protocol."""

    def __init__(self, timed: bool = False) -> None:
        self.timed = timed

    def arrived(self, params: list[Any]) -> None:
        """A request with these params is about to be handled (notifications too)."""

    def answered(self, seconds: float, result: Any, exc: BaseException | None) -> None:
        """Its reply is known (``exc``: the error it is answered with, an InvalidRequest for
        a call whose params do not fit the handler). Only for ``timed`` observers, requests
        only."""
