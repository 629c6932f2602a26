"""What the clients do, and how the final state is read back.

    set          Jepsen's Riak test: one key holds a set; each op adds a unique integer by
                 read-modify-write, merging siblings by union, and puts with the read's context.
    register     many keys; writes are read-modify-write with a unique value (the context of
                 the read says which values the write replaces), reads are plain gets.
    independent  each op writes a fresh key once, blind (no context).
    deletes      a few keys; each op adds a unique value blindly (put without context, so it
                 becomes a sibling of what is there), reads, or deletes with the context of a
                 read, recording the values that read saw (exactly what the delete removes).
                 Keys are deleted and re-added over and over while tombstones are collected.
    counters     a few counter data types (kvstore.core.crdt); each op increments one by a
                 random 1..5 or fetches it. The final value must lie within the acknowledged
                 increments and those plus the ones whose outcome is unknown.
    sets         a few set data types; each op adds a unique integer, fetches, or removes a
                 member the fetch saw, with the fetch's context (so exactly that add).

Outcome of a write as the client sees it: ``ok`` when acked; ``fail`` only when it certainly
was not stored (its read failed so it was never sent, the request was refused as invalid, or
no node was ever reached); ``info`` otherwise (Unavailable, Timeout, or a connection lost after
sending: it may be on some replicas and may still spread).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from jepsen_lite.history import Event, History
from kvstore.client import AsyncClient
from kvstore.errors import InvalidRequest, KVError, Unreachable
from kvstore.runtime.rpc import was_sent

__all__ = ["WORKLOADS", "Counter", "Ctx", "Workload", "final_reads", "make_workload", "write_outcome"]

# How a final read turns a key into its recorded value (the default: the union of siblings).
FinalValue = Callable[[AsyncClient, str, int], Awaitable[Any]]


class Counter:
    """Unique integers for values (one per run, shared by every client)."""

    def __init__(self) -> None:
        self.n = 0

    def next(self) -> int:
        self.n += 1
        return self.n


def write_outcome(e: KVError) -> str:
    if isinstance(e, InvalidRequest):
        return "fail"
    if isinstance(e, Unreachable) and not was_sent(e):
        return "fail"
    return "info"


def _err(e: BaseException) -> str:
    code = getattr(e, "code", type(e).__name__)
    return f"{code}: {e}" if str(e) else str(code)


def _ints(raw: bytes) -> list[Any]:
    """A stored value as the integers it holds; anything foreign is kept, as text, so the
    checker can call it unexpected rather than the harness silently dropping it."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return [f"?{raw[:64].hex()}"]
    if isinstance(doc, int):
        return [doc]
    if isinstance(doc, list) and all(isinstance(x, int) for x in doc):
        return list(doc)
    return [f"?{raw[:64].hex()}"]


def _union(values: Iterable[bytes]) -> list[Any]:
    out: set[Any] = set()
    for v in values:
        out.update(_ints(v))
    return sorted(out, key=lambda x: (isinstance(x, str), x if isinstance(x, int) else 0, str(x)))


@dataclass
class Ctx:
    """One worker's view while it runs an operation; remembers the invocation in flight so a
    worker that abandons an operation (harness timeout, end of run) can record it as info."""

    history: History
    client_id: int
    process: int
    rng: random.Random
    pending: Event | None = None

    notes: dict[str, Any] | None = None

    def invoke(self, f: str, key: str, value: Any = None) -> Event:
        self.notes = None
        self.pending = self.history.invoke(self.process, f, key=key, value=value, client=self.client_id)
        return self.pending

    def note(self, **kw: Any) -> None:
        """Facts about the operation in flight that its completion must carry even if it is
        abandoned (e.g. what a delete's read saw, hence what the delete may remove)."""
        self.notes = {**(self.notes or {}), **kw}

    def complete(self, type_: str, **kw: Any) -> str:
        assert self.pending is not None
        self.history.complete(self.pending, type_, **{**(self.notes or {}), **kw})
        self.pending = None
        self.notes = None
        return type_

    def abandon(self, reason: str) -> bool:
        if self.pending is None:
            return False
        self.complete("info", error=reason)
        return True


class Workload(Protocol):
    name: str

    async def step(self, c: AsyncClient, ctx: Ctx) -> str:
        """One operation, recorded in the history; returns its completion type."""
        ...

    def final_keys(self) -> list[str]:
        ...


async def _read(c: AsyncClient, ctx: Ctx, key: str) -> str:
    """One recorded read: the union of the sibling values it saw."""
    ctx.invoke("read", key)
    try:
        res = await c.get(key)
    except KVError as e:
        return ctx.complete("fail", error=_err(e))
    return ctx.complete("ok", value=_union(res.values))


async def _siblings_union(c: AsyncClient, key: str, r: int) -> Any:
    return _union((await c.get(key, r=r)).values)


async def _final_read(c: AsyncClient, history: History, key: str, r: int, slot: int, read: FinalValue) -> bool:
    inv = history.invoke(f"final-{slot}", "read", key=key)
    try:
        value = await read(c, key, r)
    except KVError as e:
        history.complete(inv, "fail", value=None, error=_err(e))
        return False
    history.complete(inv, "ok", value=value)
    return True


async def final_reads(
    c: AsyncClient, history: History, keys: list[str], *, r: int, deadline: float,
    concurrency: int = 8, read: FinalValue | None = None,
) -> list[str]:
    """Read every key at R=r, retrying each until it succeeds or the loop time passes the
    deadline; returns the keys that could not be read. ``read`` gives the recorded value
    (default: the union of the sibling values; data type workloads fetch)."""
    reader = read or _siblings_union
    loop = asyncio.get_running_loop()
    slots: asyncio.Queue[int] = asyncio.Queue()
    for i in range(max(1, concurrency)):
        slots.put_nowait(i)
    failed: list[str] = []

    async def one(key: str) -> None:
        # A slot is a reader process: one operation at a time each, as the history requires.
        slot = await slots.get()
        try:
            delay = 0.2
            while True:
                if await _final_read(c, history, key, r, slot, reader):
                    return
                if loop.time() > deadline:
                    failed.append(key)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
        finally:
            slots.put_nowait(slot)

    await asyncio.gather(*(one(k) for k in keys))
    return failed


class SetWorkload:
    name = "set"
    KEY = "jepsen-set"

    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    async def step(self, c: AsyncClient, ctx: Ctx) -> str:
        v = self.counter.next()
        ctx.invoke("add", self.KEY, v)
        try:
            res = await c.get(self.KEY)
        except KVError as e:
            return ctx.complete("fail", error="read: " + _err(e))
        merged = set(_union(res.values))
        merged.add(v)
        body = json.dumps(sorted(x for x in merged if isinstance(x, int)), separators=(",", ":"))
        try:
            await c.put(self.KEY, body, context=res.context)
        except KVError as e:
            return ctx.complete(write_outcome(e), error=_err(e))
        return ctx.complete("ok")

    def final_keys(self) -> list[str]:
        return [self.KEY]


class RegisterWorkload:
    name = "register"

    def __init__(self, counter: Counter, keys: int = 16, read_fraction: float = 0.5) -> None:
        self.counter = counter
        self.keys = [f"reg-{i}" for i in range(keys)]
        self.read_fraction = read_fraction

    async def step(self, c: AsyncClient, ctx: Ctx) -> str:
        key = ctx.rng.choice(self.keys)
        if ctx.rng.random() < self.read_fraction:
            return await _read(c, ctx, key)
        v = self.counter.next()
        ctx.invoke("write", key, v)
        try:
            res = await c.get(key)
        except KVError as e:
            return ctx.complete("fail", error="read: " + _err(e))
        observed = _union(res.values)
        try:
            await c.put(key, str(v), context=res.context)
        except KVError as e:
            return ctx.complete(write_outcome(e), error=_err(e), observed=observed)
        return ctx.complete("ok", observed=observed)

    def final_keys(self) -> list[str]:
        return list(self.keys)


class IndependentWorkload:
    name = "independent"

    def __init__(self, counter: Counter) -> None:
        self.counter = counter
        self.attempted: list[str] = []

    async def step(self, c: AsyncClient, ctx: Ctx) -> str:
        v = self.counter.next()
        key = f"ind-{v}"
        self.attempted.append(key)
        ctx.invoke("write", key, v)
        try:
            await c.put(key, str(v))
        except KVError as e:
            return ctx.complete(write_outcome(e), error=_err(e))
        return ctx.complete("ok")

    def final_keys(self) -> list[str]:
        return list(self.attempted)


class DeletesWorkload:
    """Adds (blind puts of unique values), reads, and deletes with a read's context.

    A delete's completion carries ``observed``: the values its read returned. The delete
    covers exactly those (its context is that read's), so the checker knows which acked adds
    it was allowed to remove, and that every add it did not observe must outlive it.
    """

    name = "deletes"

    def __init__(self, counter: Counter, keys: int = 8, add_fraction: float = 0.5,
                 delete_fraction: float = 0.25) -> None:
        self.counter = counter
        self.keys = [f"del-{i}" for i in range(keys)]
        self.add_fraction = add_fraction
        self.delete_fraction = delete_fraction

    async def step(self, c: AsyncClient, ctx: Ctx) -> str:
        key = ctx.rng.choice(self.keys)
        x = ctx.rng.random()
        if x < self.add_fraction:
            v = self.counter.next()
            ctx.invoke("add", key, v)
            try:
                await c.put(key, str(v))  # no context: a sibling of whatever is there
            except KVError as e:
                return ctx.complete(write_outcome(e), error=_err(e))
            return ctx.complete("ok")
        if x < self.add_fraction + self.delete_fraction:
            ctx.invoke("delete", key)
            try:
                res = await c.get(key)
            except KVError as e:
                return ctx.complete("fail", error="read: " + _err(e), observed=[])
            # Noted before sending: an abandoned delete must still say what it may remove.
            ctx.note(observed=_union(res.values))
            try:
                await c.delete(key, context=res.context)
            except KVError as e:
                return ctx.complete(write_outcome(e), error=_err(e))
            return ctx.complete("ok")
        return await _read(c, ctx, key)

    def final_keys(self) -> list[str]:
        return list(self.keys)


def _members(value: list[bytes]) -> list[Any]:
    """A set's members as the integers the workload added (anything else kept as text)."""
    out: list[Any] = []
    for m in value:
        try:
            out.append(int(m))
        except ValueError:
            out.append(f"?{bytes(m)[:64].hex()}")
    return sorted(out, key=lambda x: (isinstance(x, str), x if isinstance(x, int) else 0, str(x)))


class CountersWorkload:
    """Increments (by 1..5, recorded as the op's value) and fetches of a few counters."""

    name = "counters"

    def __init__(self, counter: Counter, keys: int = 4, read_fraction: float = 0.2) -> None:
        self.keys = [f"ctr-{i}" for i in range(keys)]
        self.read_fraction = read_fraction

    async def step(self, c: AsyncClient, ctx: Ctx) -> str:
        key = ctx.rng.choice(self.keys)
        if ctx.rng.random() < self.read_fraction:
            ctx.invoke("read", key)
            try:
                res = await c.fetch(key, "counter")
            except KVError as e:
                return ctx.complete("fail", error=_err(e))
            return ctx.complete("ok", value=res.value)
        n = ctx.rng.randint(1, 5)
        ctx.invoke("incr", key, n)
        try:
            await c.incr(key, n)
        except KVError as e:
            return ctx.complete(write_outcome(e), error=_err(e))
        return ctx.complete("ok")

    @staticmethod
    async def final_value(c: AsyncClient, key: str, r: int) -> Any:
        return (await c.fetch(key, "counter", r=r)).value

    def final_keys(self) -> list[str]:
        return list(self.keys)


class SetsWorkload:
    """Adds of unique integers to a few sets, fetches, and removes of a member a fetch saw
    (with that fetch's context: the remove covers exactly that member's one add)."""

    name = "sets"

    def __init__(self, counter: Counter, keys: int = 4, add_fraction: float = 0.6,
                 remove_fraction: float = 0.2) -> None:
        self.counter = counter
        self.keys = [f"crdt-set-{i}" for i in range(keys)]
        self.add_fraction = add_fraction
        self.remove_fraction = remove_fraction

    async def step(self, c: AsyncClient, ctx: Ctx) -> str:
        key = ctx.rng.choice(self.keys)
        x = ctx.rng.random()
        if x < self.add_fraction:
            v = self.counter.next()
            ctx.invoke("add", key, v)
            try:
                await c.add(key, str(v))
            except KVError as e:
                return ctx.complete(write_outcome(e), error=_err(e))
            return ctx.complete("ok")
        ctx.invoke("read", key)
        try:
            res = await c.fetch(key, "set")
        except KVError as e:
            return ctx.complete("fail", error=_err(e))
        seen = _members(res.value)
        outcome = ctx.complete("ok", value=seen)
        ints = [m for m in seen if isinstance(m, int)]
        if x >= self.add_fraction + self.remove_fraction or not ints:
            return outcome
        victim = ctx.rng.choice(ints)
        ctx.invoke("remove", key, victim)
        try:
            await c.remove(key, str(victim), context=res.context)
        except KVError as e:
            return ctx.complete(write_outcome(e), error=_err(e))
        return ctx.complete("ok")

    @staticmethod
    async def final_value(c: AsyncClient, key: str, r: int) -> Any:
        return _members((await c.fetch(key, "set", r=r)).value)

    def final_keys(self) -> list[str]:
        return list(self.keys)


WORKLOADS = ("set", "register", "independent", "deletes", "counters", "sets")


def make_workload(name: str, counter: Counter, *, keys: int = 16) -> Workload:
    if name == "set":
        return SetWorkload(counter)
    if name == "register":
        return RegisterWorkload(counter, keys=keys)
    if name == "independent":
        return IndependentWorkload(counter)
    if name == "deletes":
        return DeletesWorkload(counter, keys=keys)
    # A few keys: contention between coordinators is the point.
    if name == "counters":
        return CountersWorkload(counter, keys=min(keys, 4))
    if name == "sets":
        return SetsWorkload(counter, keys=min(keys, 4))
    raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")
