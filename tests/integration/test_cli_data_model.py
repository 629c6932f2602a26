"""`kv bucket …`, BUCKET/KEY addressing, conditional and TTL flags, get-many/put-many, as a
user types them, against real node processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from kvstore.testing.processes import LocalCluster, wait_until


def kv(node: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "--node", node, *args],
        capture_output=True, text=True, timeout=60, env={**os.environ},
    )


def test_bucket_commands_and_keys_addressed_as_bucket_slash_key(tmp_path: Path) -> None:
    with LocalCluster(tmp_path, nodes=2, n=2, r=1, w=1) as c:
        c.start_all()
        n1, n2 = c.addrs("n1", "n2")
        # A key with a slash before the bucket exists: a default-bucket key, as always.
        assert kv(n1, "put", "users/alice", "old-style").returncode == 0
        made = kv(n1, "bucket", "create", "users", "n=1", "conflict=lww", "--json")
        assert made.returncode == 0, made.stderr
        assert json.loads(made.stdout)["conflict"] == "lww"
        bad = kv(n1, "bucket", "create", "broken", "n=9")
        assert bad.returncode == 2 and "n must be in 1..2" in bad.stderr
        wait_until(lambda: kv(n2, "bucket", "show", "users").returncode == 0, 30, what="n2 to know the bucket")
        listed = kv(n2, "bucket", "list", "--json")
        assert [b["name"] for b in json.loads(listed.stdout)] == ["default", "users"]
        # Now users/alice is alice in bucket users; the old key is still there by --bucket default.
        assert kv(n2, "put", "users/alice", "new").returncode == 0
        assert kv(n1, "get", "users/alice").stdout == "new\n"
        assert kv(n1, "get", "alice", "--bucket", "users").stdout == "new\n"
        assert kv(n1, "get", "users/alice", "--bucket", "default").stdout == "old-style\n"
        refused = kv(n1, "bucket", "set", "users", "n=2")
        assert refused.returncode == 1 and "cannot change" in refused.stderr, refused.stderr
        assert kv(n1, "bucket", "set", "users", "ttl_s=30").returncode == 0
        shown = kv(n1, "bucket", "show", "users")
        assert "ttl_s = 30.0" in shown.stdout and "n = 1" in shown.stdout

        # Conditional writes: exit 4 when the condition does not hold.
        assert kv(n1, "put", "lock", "me", "--if-none-match").returncode == 0
        again = kv(n2, "put", "lock", "you", "--if-none-match")
        assert again.returncode == 4 and "exists" in again.stderr
        ctx = json.loads(kv(n1, "get", "lock", "--json").stdout)["context"]
        assert kv(n1, "put", "lock", "me2", "--if-not-modified", ctx).returncode == 0
        assert kv(n1, "put", "lock", "me3", "--if-not-modified", ctx).returncode == 4

        # TTL from the command line.
        assert kv(n1, "put", "brief", "x", "--ttl", "0.5").returncode == 0
        wait_until(lambda: kv(n1, "get", "brief").returncode == 1, 30, what="brief to expire")

        # Batches.
        assert kv(n1, "put-many", "a=1", "b=2", "c=3", "--bucket", "users").returncode == 0
        got = kv(n2, "get-many", "a", "b", "c", "zz", "--bucket", "users")
        assert got.returncode == 1  # zz is not found
        assert got.stdout.splitlines() == ["a\t1", "b\t2", "c\t3"]
