"""Reads of a key whose only replica is its coordinator (N=1) are answered from the local
copy without a request machine (kvstore.core.request.answered_alone): on a live node they
must still show siblings, contexts, deletes, expiries and the cluster's conflict mode
exactly as the machine did, and refuse a quorum the cluster cannot give."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kvstore.client import Client
from kvstore.core import vclock
from kvstore.errors import KVError
from kvstore.testing.processes import LocalCluster, wait_until


def test_a_lone_replica_answers_siblings_contexts_deletes_and_expiries(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, nodes=1, n=1, r=1, w=1) as c:
        c.start_all()
        with Client(c.addrs(), timeout_s=10.0) as kv:
            assert kv.get(b"absent").values == [] and kv.get(b"absent").context == b""
            kv.put(b"k", b"a")
            kv.put(b"k", b"b")  # blind: a sibling of the first
            both = kv.get(b"k")
            assert sorted(both.values) == [b"a", b"b"]
            assert set(vclock.decode_context(both.context).values()) == {2}
            # A write with the read's context replaces both siblings.
            kv.put(b"k", b"c", context=both.context)
            one = kv.get(b"k")
            assert one.values == [b"c"]
            kv.delete(b"k", context=one.context)
            gone = kv.get(b"k")
            assert gone.values == [] and gone.context != b""  # the tombstone's context
            # A value with a TTL is stored through the data path, read through this one.
            kv.put(b"t", b"short", ttl_s=0.5)
            assert kv.get(b"t").values == [b"short"]
            time.sleep(0.6)
            wait_until(lambda: kv.get(b"t").values == [], 10, 0.1, "the expired value to read as absent")
            with pytest.raises(KVError) as e:
                kv.get(b"k", r=2)  # one replica cannot give two replies
            assert e.value.code == "invalid_request"


def test_a_lone_replica_under_lww_shows_one_value(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, nodes=1, n=1, r=1, w=1, extra=["--conflict", "lww"]) as c:
        c.start_all()
        with Client(c.addrs(), timeout_s=10.0) as kv:
            kv.put(b"k", b"first")
            kv.put(b"k", b"second")
            assert kv.get(b"k").values == [b"second"]
