"""The coordinator's replica calls of one loop turn, one frame per peer.

Every request machine's sends of a turn (kvstore.core.request lists them in its Ready) are
queued here and go out at the end of the turn as one ``replica.many`` call per peer and
timeout, answered by one reply listing each op's outcome. Under pipelined load that turns
hundreds of calls a turn, each with its own frame, message id, future and deadline entry
on both ends, into a handful: the per-call cost the replicas and the coordinator pay for
the same writes. Each op still has its own outcome (the replica applies them one by one),
and a call that fails fails every op in it with the same reason, as separate calls would.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any, Final

from kvstore.core import messages as m
from kvstore.errors import KVError, ProtocolError, StorageError, UnknownMethod, from_wire
from kvstore.runtime.rpc import RpcClient
from storage.errors import StorageError as StorageFailure

# (reason, result): reason None on success, else what the quorum records.
Answer = Callable[[str | None, Any], None]

# Past these an open batch is sent and a new one started: well inside max_frame_bytes and
# the frame element limit, and small enough that one slow op does not hold many others.
MAX_BATCH_OPS: Final = 512
MAX_BATCH_BYTES: Final = 1024 * 1024


def reason_of(err: BaseException | None) -> str | None:
    """None if the call succeeded, else the reason the quorum records."""
    if err is None:
        return None
    if isinstance(err, StorageFailure | StorageError):
        return f"storage: {err}"  # the path and the cause (disk full, read-only …)
    return err.code if isinstance(err, KVError) else type(err).__name__


class _Batch:
    __slots__ = ("addr", "answers", "bytes", "ops", "timeout_s")

    def __init__(self, addr: str, timeout_s: float) -> None:
        self.addr = addr
        self.timeout_s = timeout_s
        self.ops: list[list[Any]] = []
        self.answers: list[Answer] = []
        self.bytes = 0


class Outbox:
    def __init__(self, rpc: RpcClient, addr_of: Callable[[str], str]) -> None:
        self.rpc = rpc
        self.addr_of = addr_of
        # One open batch per peer: a request with its own timeout to a peer whose batch has
        # another one sends that batch early (rare), so the key is the node name alone (a
        # (node, timeout) key cost a tuple hash and compare, float included, per op).
        self._open: dict[str, _Batch] = {}
        # Ops in the open batches, kept as they come and go: asked after every chunk of
        # client requests (kvstore.runtime.node), often one request per chunk.
        self._queued = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.calls = 0  # replica.many calls sent
        self.ops = 0  # ops carried by them
        self._added = 0  # ops queued, ever
        self._added_at_check = 0  # _added when flush_if_grown last looked
        # Peers that answered replica.many with unknown_method (a node of an older version,
        # during a rolling upgrade): they get one call per op, as before.
        self._single: set[str] = set()

    @property
    def queued(self) -> int:
        """Ops waiting in open batches (sent at the end of the turn or by :meth:`flush`)."""
        return self._queued

    def put(self, node: str, p: int, key: bytes, record: bytes, hint_for: str | None, timeout_s: float, answer: Answer) -> None:
        self._add(node, timeout_s, [m.MANY_PUT, p, key, record, hint_for], len(key) + len(record), answer)

    def get(self, node: str, p: int, key: bytes, timeout_s: float, answer: Answer) -> None:
        self._add(node, timeout_s, [m.MANY_GET, p, key], len(key), answer)

    def _add(self, node: str, timeout_s: float, op: list[Any], size: int, answer: Answer) -> None:
        b = self._open.get(node)
        if b is not None and b.timeout_s != timeout_s:
            del self._open[node]
            self._queued -= len(b.ops)
            self._send(b)
            b = None
        if b is None:
            try:
                addr = self.addr_of(node)
            except KVError as e:
                answer(reason_of(e), None)
                return
            if not self._open:
                loop = self._loop
                if loop is None or loop.is_closed():
                    loop = self._loop = asyncio.get_running_loop()
                loop.call_soon(self.flush)
            b = self._open[node] = _Batch(addr, timeout_s)
        b.ops.append(op)
        b.answers.append(answer)
        b.bytes += size
        self._queued += 1
        self._added += 1
        if len(b.ops) >= MAX_BATCH_OPS or b.bytes >= MAX_BATCH_BYTES:
            del self._open[node]
            self._queued -= len(b.ops)
            self._send(b)

    def flush_if_grown(self, min_ops: int, min_bytes: int) -> None:
        """Send the open batches now if ``min_ops`` or more ops were queued since the last
        call (what one chunk of client requests added, not what the turn has queued so
        far), or if they carry ``min_bytes`` or more in all."""
        grown = self._added - self._added_at_check
        self._added_at_check = self._added
        if self._queued and (grown >= min_ops or self._open_bytes() >= min_bytes):
            self.flush()

    def _open_bytes(self) -> int:
        """What the open batches carry (keys and records): one per peer, so a short sum."""
        total = 0
        for b in self._open.values():
            total += b.bytes
        return total

    def flush(self) -> None:
        """Send every open batch (called once at the end of the turn that opened the first)."""
        if not self._open:
            return
        batches = list(self._open.values())
        self._open.clear()
        self._queued = 0
        # Written now, not one more loop turn later by the client's own flush (held, the
        # client schedules none).
        rpc = self.rpc
        rpc.hold()
        try:
            for b in batches:
                self._send(b)
        finally:
            rpc.release()

    def _send(self, b: _Batch) -> None:
        if b.addr in self._single:
            self._send_singly(b)
            return
        self.calls += 1
        self.ops += len(b.ops)
        # A callback, not a future: the answers are used as the reply is read, not a loop
        # turn later (kvstore.runtime.rpc.client.ReplySink).
        try:
            self.rpc.request_cb(b.addr, m.REPLICA_MANY, [b.ops], b.timeout_s, _ManyDone(self, b))
        except KVError as e:
            reason = reason_of(e)
            for answer in b.answers:
                answer(reason, None)

    def _send_singly(self, b: _Batch) -> None:
        for op, answer in zip(b.ops, b.answers, strict=True):
            method = m.REPLICA_PUT if op[0] == m.MANY_PUT else m.REPLICA_GET
            try:
                self.rpc.request_cb(b.addr, method, op[1:], b.timeout_s, functools.partial(_deliver_one, answer))
            except KVError as e:
                answer(reason_of(e), None)


def _deliver_one(answer: Answer, result: Any, err: BaseException | None) -> None:
    if isinstance(err, asyncio.CancelledError):
        answer("cancelled", None)
    elif err is not None:
        answer(reason_of(err), None)
    else:
        answer(None, result)


def _deliver(answers: list[Answer], results: Any, err: BaseException | None) -> None:
    if isinstance(err, asyncio.CancelledError):
        for answer in answers:
            answer("cancelled", None)
        return
    if err is None and (type(results) is not list or len(results) != len(answers)):
        err = ProtocolError(f"replica.many: {len(answers)} ops answered with {type(results).__name__}")
    if err is not None or results is None:
        reason = reason_of(err)
        for answer in answers:
            answer(reason, None)
        return
    # Indexed: compiled, zip(..., strict=True) is a call through Python's protocol with a
    # keyword, per batch. The lengths are equal (checked above).
    for i in range(len(answers)):
        answer = answers[i]
        r = results[i]
        if type(r) is list and len(r) == 2 and r[0] == 0:
            answer(None, r[1])
        elif type(r) is list and len(r) == 2:
            answer(reason_of(from_wire(r[1])), None)
        else:
            answer("protocol", None)


class _ManyDone:
    """A replica.many call's reply callback. A callable, not a closure: compiled, a closure
    is an environment object and a function object per batch."""

    __slots__ = ("batch", "outbox")

    def __init__(self, outbox: Outbox, batch: _Batch) -> None:
        self.outbox = outbox
        self.batch = batch

    def __call__(self, results: Any, err: BaseException | None) -> None:
        b = self.batch
        if isinstance(err, UnknownMethod):
            self.outbox._single.add(b.addr)
            self.outbox._send_singly(b)
        else:
            _deliver(b.answers, results, err)
