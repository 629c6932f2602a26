"""The retry policy (kvstore/retry.py): which failures go on to the next node."""

from __future__ import annotations

import pytest

from kvstore.errors import (
    InvalidRequest,
    KVError,
    NotOwner,
    StorageError,
    Timeout,
    TooLarge,
    Unavailable,
    Unreachable,
)
from kvstore.retry import Demoted, RetryPolicy

NOT_SENT = Unreachable("connection refused", sent=False)
SENT = Unreachable("connection lost after the write")


@pytest.mark.parametrize(
    ("exc", "read", "write"),
    [
        (NOT_SENT, True, True),
        (SENT, True, False),
        (Timeout("no reply"), True, False),
        (Unavailable("1 of 2", answered=1, required=2), True, False),
        (InvalidRequest("bad key"), False, False),
        (TooLarge("value"), False, False),
        (NotOwner("stale ring"), False, False),
        (StorageError("disk full"), False, False),
        (ValueError("not ours"), False, False),
    ],
)
def test_the_table(exc: BaseException, read: bool, write: bool) -> None:
    p = RetryPolicy()
    assert p.try_next(exc, idempotent=True) is read
    assert p.try_next(exc, idempotent=False) is write


def test_a_peer_unreachable_from_the_wire_counts_as_sent() -> None:
    # The peer's own Unreachable says nothing of this hop: its outcome is unknown.
    assert not RetryPolicy().try_next(Unreachable("from a peer"), idempotent=False)


def test_unavailable_can_be_final_even_for_reads() -> None:
    p = RetryPolicy(retry_unavailable=False)
    assert not p.try_next(Unavailable("no quorum"), idempotent=True)
    assert p.try_next(Timeout("late"), idempotent=True)


@pytest.mark.parametrize(
    ("exc", "demoted"),
    [(Timeout("x"), True), (Unavailable("x"), True), (NOT_SENT, False), (SENT, False), (KVError("x"), False)],
)
def test_which_failures_demote(exc: BaseException, demoted: bool) -> None:
    assert RetryPolicy().demotes(exc) is demoted


def test_demoted_nodes_go_last_until_their_time_is_up() -> None:
    d = Demoted(2.0)
    assert d.order(["a", "b", "c"], 0.0) == ["a", "b", "c"]
    d.add("a", 10.0)
    d.add("b", 11.0)
    assert d.order(["a", "b", "c"], 11.5) == ["c", "a", "b"]
    assert d.order(["a", "b", "c"], 12.5) == ["a", "c", "b"]
    assert d.order(["a", "b", "c"], 13.5) == ["a", "b", "c"]
