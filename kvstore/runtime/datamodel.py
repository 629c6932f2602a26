"""The coordinator's path for requests that use the data model: a bucket, a conditional
write, a TTL. Requests without any of those never come here (``messages.DataOptions``), so the
default bucket's hot path is what it was.

Per bucket: the preference list is the first N of the ring's (N ≤ the cluster's; see
kvstore.core.bucket for what anti-entropy does with the rest), R, W and conflict mode are the
bucket's unless the request overrides R or W, records are bounded by the bucket's limits,
and the bucket's ``ttl_s`` applies to writes that give none.

Conditional writes read first (an R-quorum read, as a delete without context does) and
write with the context of that read:

* ``if_none_match``: refused with PreconditionFailed("exists") when the read finds a live
  value; otherwise the write supersedes whatever tombstones or expired values it saw.
* ``if_not_modified``: refused with PreconditionFailed("modified") unless the read's context
  is exactly the given one.

They are checks at one coordinator, not transactions: two writers on the two sides of a
partition (or racing between the read and the write) can both pass, and their writes
become siblings, as in Riak.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from kvstore.core import bucket as b
from kvstore.core import messages as m
from kvstore.core import vclock
from kvstore.core.bucket import BucketProps
from kvstore.errors import InvalidRequest, PreconditionFailed, Unavailable, UnknownBucket

if TYPE_CHECKING:
    from kvstore.runtime.coordinator import Coordinator

# What the coordinator needs of the bucket registry (kvstore.runtime.buckets).
BucketLookup = Callable[[str | None], BucketProps]


class DataModel:
    def __init__(self, c: Coordinator, buckets: BucketLookup | None) -> None:
        self.c = c
        s = c.s
        self.default = b.default_props(s.limits, s.r, s.w, s.conflict)
        self.lookup: BucketLookup = buckets or self._default_only

    def _default_only(self, bucket: str | None) -> BucketProps:
        if bucket is None:
            return self.default
        raise UnknownBucket(f"no bucket {bucket!r}", bucket=bucket)

    def _bucket(self, opts: m.DataOptions) -> BucketProps:
        props = self.lookup(opts.bucket)
        if opts.quorum is not None and opts.quorum > props.n:
            raise InvalidRequest(f"quorum {opts.quorum} is more than bucket {props.name!r}'s n ({props.n})")
        return props

    def _place(self, props: BucketProps, bucket: str | None, key: bytes) -> tuple[Any, int, tuple[str, ...], bytes]:
        skey = b.storage_key(bucket, key)
        ring, p, pref = self.c._locate(skey)
        return ring, p, pref[: props.n], skey

    # ------------------------------------------------------------------ reads
    def get(self, key: bytes, opts: m.DataOptions, forwarded: bool) -> Awaitable[dict[str, Any]]:
        c = self.c
        props = self._bucket(opts)
        _, p, pref, skey = self._place(props, opts.bucket, key)
        if c.name not in pref:
            if forwarded:
                raise Unavailable("forwarded get reached a node outside the preference list", required=1)
            return c._forward(m.FWD_GET, pref, [key, m.options_to_wire(opts, "r")], True)
        c.counters.gets += 1
        return c._read(p, pref, skey, opts, r=props.r, lww=props.lww)

    # ------------------------------------------------------------------ writes
    def write(
        self, key: bytes, value: bytes | None, raw_ctx: Any, opts: m.DataOptions, fwd: str, forwarded: bool
    ) -> Awaitable[dict[str, Any]]:
        c = self.c
        props = self._bucket(opts)
        if value is None and opts.if_none_match:
            raise InvalidRequest("if_none_match applies to puts (a delete of an absent key does nothing already)")
        if value is not None and props.datatype != "none":
            raise InvalidRequest(
                f"bucket {props.name!r} holds {props.datatype}s: update them with the data type operations "
                "(kv incr/add/remove/register/map), not put"
            )
        if value is None and opts.ttl_s is not None:
            raise InvalidRequest("ttl_ms applies to puts")
        if value is not None and len(value) > props.max_record_bytes:
            raise InvalidRequest(
                f"value is {len(value)} bytes, over bucket {props.name!r}'s max_record_bytes ({props.max_record_bytes})"
            )
        ctx_bytes = m.check_context(raw_ctx)
        ctx = vclock.decode_context(ctx_bytes)
        ring, p, pref, skey = self._place(props, opts.bucket, key)
        if c.name not in pref:
            if forwarded:
                raise Unavailable("forwarded write reached a node outside the preference list", required=1)
            params: list[Any] = [key] + ([value] if fwd == m.FWD_PUT else [])
            params += [ctx_bytes, m.options_to_wire(opts, "w")]
            return c._forward(fwd, pref, params, False)
        c.counters.puts += 1
        ttl_s = props.ttl_s if opts.ttl_s is None else opts.ttl_s
        ttl_ms = round(ttl_s * 1000) if value is not None else 0
        if opts.if_none_match or opts.if_not_modified is not None or (value is None and not ctx):
            return self._read_then_write(ring, p, pref, skey, value, opts, props, ttl_ms)
        return c._coordinate_write(
            ring, p, pref, skey, value, ctx, opts,
            w=props.w, lww=props.lww, limits=props.limits(c.limits), ttl_ms=ttl_ms,
        )

    async def _read_then_write(
        self, ring: Any, p: int, pref: tuple[str, ...], skey: bytes, value: bytes | None,
        opts: m.DataOptions, props: BucketProps, ttl_ms: int,
    ) -> dict[str, Any]:
        c = self.c
        found = await c._read(p, pref, skey, m.Options(None, opts.strict, opts.timeout_s), r=props.r, lww=props.lww)
        seen = vclock.decode_context(found["context"])
        if opts.if_none_match and found["values"]:
            raise PreconditionFailed(
                f"key exists ({len(found['values'])} value(s)); if_none_match writes only absent keys",
                reason="exists", context=found["context"],
            )
        if opts.if_not_modified is not None and seen != vclock.decode_context(opts.if_not_modified):
            raise PreconditionFailed(
                "key was modified since the given context (read it again and retry)",
                reason="modified", context=found["context"],
            )
        if value is None and not found["values"]:
            return {"context": found["context"]}  # absent, deleted or expired: nothing to delete
        return await c._coordinate_write(
            ring, p, pref, skey, value, seen, opts,
            w=props.w, lww=props.lww, limits=props.limits(c.limits), ttl_ms=ttl_ms,
        )
