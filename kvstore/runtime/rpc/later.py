"""Handlers that answer through a reply callback instead of a future.

A request that waits on other nodes (a quorum write, a read of R replicas) is answered from
a storage or peer callback, many loop turns after its handler returned. A future costs a
done-callback per listener, and each of those is one more pass through the loop's queue; a
handler marked with :func:`replies_later` is given the reply callback itself instead:

    @replies_later
    def put(self, key, value, ctx=None, opts=None, *, reply=None):
        ...
        return LATER          # reply(result, None) or reply(None, error) comes later

The server passes ``reply`` (a :data:`Reply`) only to marked handlers; a marked handler may
still return a value, a future or a coroutine (when it cannot use the callback), and is
called without ``reply`` by everybody else (then it must not return LATER). The callback is
called exactly once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final, TypeVar

__all__ = ["LATER", "Gathered", "Reply", "replies_later", "takes_reply"]

Reply = Callable[[Any, BaseException | None], None]


class _Later:
    __slots__ = ()

    def __repr__(self) -> str:
        return "LATER"


LATER: Final = _Later()
"""What a marked handler returns when it will call ``reply``."""

_MARK = "kv_replies_later"
# Compiled (mypyc) methods take no attributes: those are known by their qualified name
# ("Coordinator.put"), which their bound methods and ``functools.wraps`` wrappers carry too.
_MARKED_METHODS: set[str] = set()

F = TypeVar("F", bound=Callable[..., Any])


def replies_later(fn: F) -> F:
    """Mark ``fn`` as taking a ``reply=`` keyword (see the module doc). Wrappers made with
    ``functools.wraps`` keep the mark."""
    try:
        setattr(fn, _MARK, True)
    except AttributeError:
        _MARKED_METHODS.add(fn.__qualname__)
    return fn


def takes_reply(fn: Callable[..., Any]) -> bool:
    return bool(getattr(fn, _MARK, False)) or getattr(fn, "__qualname__", None) in _MARKED_METHODS


class Gathered:
    """An answer made of slots that are filled one by one (``replica.many``'s ops, a batch's
    items): given to a reply callback, or a future, once every slot is in. ``left`` counts
    the slots still to come plus one until the caller has started them all (:meth:`answer`),
    so a slot answered at once cannot finish the whole early."""

    __slots__ = ("done", "left", "out", "reply")

    def __init__(self, out: list[Any], reply: Reply | None, pending: int = 0) -> None:
        self.out = out
        self.left = pending + 1
        self.reply = reply
        self.done: asyncio.Future[list[Any]] | None = None

    def one_less(self) -> None:
        """One slot is in."""
        self.left -= 1
        if self.left:
            return
        if self.reply is not None:
            reply, self.reply = self.reply, None
            reply(self.out, None)
        elif self.done is not None and not self.done.done():
            self.done.set_result(self.out)

    def answer(self) -> Any:
        """After every slot was started: the answer itself if all are in, else LATER (the
        reply callback gets it) or, without one, a future of it. Never calls the callback
        itself: an answer known here is returned, and the server sends it as it is."""
        self.left -= 1
        if not self.left:
            return self.out
        if self.reply is not None:
            return LATER
        self.done = asyncio.get_running_loop().create_future()
        return self.done
