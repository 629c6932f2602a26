"""Loading many keys through the client library: ``put_all`` and the input formats of
``kv load``.

``put_all`` keeps ``concurrency`` puts in flight as ``put_many`` calls of ``batch`` keys
each (the client groups each call by coordinator, so no put takes a forwarding hop); every
key is still its own quorum write with its own outcome. A put that fails is counted, not
retried: a blind put whose reply was lost may have landed, and a second one would stand
beside it as a sibling. After ``give_up_after`` failures in a row (a cluster down or
unreachable) the load stops instead of failing every key that is left, one by one.
With ``replace``, each batch is read first and every put carries the context its read saw,
so the loaded value supersedes what the key held: loading the same input twice leaves one
value per key instead of two siblings (a write between the read and the put still stands
beside it, as any write with a context would).

The input formats are parsed line by line, and a line that is not one of them is an error
that names the line, so that a caller can check a whole file before writing any of it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import itertools
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvstore.errors import InvalidRequest, KVError

if TYPE_CHECKING:
    from kvstore.client import AsyncClient

__all__ = ["FORMATS", "BulkResult", "parse_line", "put_all"]

FORMATS = ("tsv", "jsonl")

# The caller's view of the load so far: (keys written, keys failed).
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class BulkResult:
    written: int
    failed: int
    first_error: str | None  # the first failure, as "KEY: error"
    secs: float
    # Why keys were left unsent, if any were: "max_secs", or "failures" (give_up_after
    # failures in a row, the last of them in ``last_error``).
    stopped: str | None = None
    last_error: str | None = None


def parse_line(fmt: str, line: str, where: str) -> tuple[bytes, bytes] | None:
    """The (key, value) of one input line, None for a blank one. ``where`` ("FILE:LINE")
    starts the InvalidRequest a malformed line raises.

    tsv: ``KEY<TAB>VALUE`` (what ``kv get-many`` prints), both taken as UTF-8 text; the
    value may hold tabs, the key may not. jsonl: ``{"key": ..., "value": ...}``, or
    ``"value_b64"`` instead of ``"value"`` for bytes that are not text."""
    text = line.rstrip("\r\n")
    if not text.strip():
        return None
    if fmt == "tsv":
        key, tab, value = text.partition("\t")
        if not tab or not key:
            raise InvalidRequest(f"{where}: expected KEY<TAB>VALUE")
        return _utf8(key, where), _utf8(value, where)
    if fmt != "jsonl":
        raise InvalidRequest(f"unknown input format {fmt!r} (one of: {', '.join(FORMATS)})")
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise InvalidRequest(f"{where}: not JSON ({e})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("key"), str) or not doc["key"]:
        raise InvalidRequest(f'{where}: expected {{"key": "...", "value": "..."}}')
    k = _utf8(doc["key"], where)
    if isinstance(doc.get("value"), str) and "value_b64" not in doc:
        return k, _utf8(doc["value"], where)
    if isinstance(doc.get("value_b64"), str) and "value" not in doc:
        try:
            return k, base64.b64decode(doc["value_b64"], validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest(f"{where}: value_b64 is not base64") from None
    raise InvalidRequest(f'{where}: expected one of "value" (text) or "value_b64" (base64)')


def _utf8(s: str, where: str) -> bytes:
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, from input that was not UTF-8
        raise InvalidRequest(f"{where}: not UTF-8 text") from None


async def put_all(
    client: AsyncClient,
    items: Iterable[tuple[bytes, bytes]],
    *,
    concurrency: int = 512,
    batch: int = 64,
    bucket: str | None = None,
    ttl_s: float | None = None,
    replace: bool = False,
    max_secs: float | None = None,
    give_up_after: int = 1024,
    on_progress: Progress | None = None,
    progress_every_s: float = 0.2,
) -> BulkResult:
    """Write every ``(key, value)`` of ``items`` (read as they are needed, so a generator
    over a large file is never held whole), ``concurrency`` puts in flight. ``on_progress``
    is called about every ``progress_every_s`` and once at the end."""
    if concurrency < 1 or batch < 1 or give_up_after < 1:
        raise InvalidRequest("concurrency, batch and give_up_after must be at least 1")
    source: Iterator[tuple[bytes, bytes]] = iter(items)
    written = 0
    failed = 0
    in_a_row = 0  # failures since the last success
    first_error: str | None = None
    last_error: str | None = None
    t0 = time.perf_counter()
    deadline = None if max_secs is None else t0 + max_secs
    stopped: str | None = None

    def fail(key: bytes, e: KVError) -> None:
        nonlocal failed, in_a_row, stopped, first_error, last_error
        failed += 1
        in_a_row += 1
        last_error = f"{key.decode('utf-8', 'backslashreplace')}: {e}"
        if first_error is None:
            first_error = last_error
        if in_a_row >= give_up_after and stopped is None:
            stopped = "failures"

    async def worker() -> None:
        nonlocal written, in_a_row, stopped
        chunk: list[Any]
        while stopped is None:
            if deadline is not None and time.perf_counter() >= deadline:
                if next(source, None) is not None:
                    stopped = "max_secs"
                return
            chunk = list(itertools.islice(source, batch))  # one task runs at a time: no lock
            if not chunk:
                return
            try:
                if replace:
                    chunk = await _with_contexts(client, chunk, bucket, fail)
                    if not chunk:
                        continue
                results = await client.put_many(chunk, bucket=bucket, ttl_s=ttl_s)
            except KVError as e:
                for key, *_ in chunk:
                    fail(key, e)
                continue
            for (key, *_), r in zip(chunk, results, strict=True):
                if isinstance(r, KVError):
                    fail(key, r)
                else:
                    written += 1
                    in_a_row = 0

    batch = min(batch, concurrency)
    workers = [asyncio.ensure_future(worker()) for _ in range(concurrency // batch)]
    try:
        while True:
            _, pending = await asyncio.wait(workers, timeout=progress_every_s)
            if on_progress is not None:
                on_progress(written, failed)
            if not pending:
                break
        for w in workers:
            w.result()  # a bug in a worker (not a KVError) surfaces here
    finally:
        for w in workers:
            w.cancel()
    if stopped == "failures" and next(source, None) is None:
        stopped = None  # the failures were the last keys: none was left unsent
    return BulkResult(
        written, failed, first_error, time.perf_counter() - t0, stopped,
        last_error if stopped == "failures" else None,
    )


async def _with_contexts(
    client: AsyncClient, chunk: list[Any], bucket: str | None, fail: Callable[[bytes, KVError], None]
) -> list[tuple[bytes, bytes, bytes | None]]:
    """``chunk``'s items with the context a read of each key saw (None: the key is absent).
    A key whose read failed is counted as failed and left out: written blind, it could add
    a sibling, the very thing ``replace`` is asked to avoid."""
    reads = await client.get_many([key for key, _ in chunk], bucket=bucket)
    out: list[tuple[bytes, bytes, bytes | None]] = []
    for (key, value), r in zip(chunk, reads, strict=True):
        if isinstance(r, KVError):
            fail(key, r)
        else:
            out.append((key, value, r.context if r.context else None))
    return out
