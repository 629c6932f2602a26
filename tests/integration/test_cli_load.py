"""`kv load` as a user types it, against real node processes: a file and standard input, both
formats, a bad line that changes nothing, a value the nodes refuse, a second load with and
without --replace, a cluster that is down."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

from kvstore.testing.processes import LocalCluster


def kv(node: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", "--node", node, *args],
        capture_output=True, text=True, timeout=120, env={**os.environ}, input=stdin,
    )


def test_load_writes_every_key_and_a_bad_input_writes_none(tmp_path: Path) -> None:
    data = tmp_path / "keys.tsv"
    data.write_text("".join(f"k{i:05d}\tvalue {i}\twith a tab\n" for i in range(3000)) + "\n")
    blob = bytes(range(256))
    jsonl = tmp_path / "keys.jsonl"
    jsonl.write_text(json.dumps({"key": "text", "value": "caf\u00e9"}) + "\n"
                     + json.dumps({"key": "blob", "value_b64": base64.b64encode(blob).decode()}) + "\n")
    bad = tmp_path / "bad.tsv"
    bad.write_text("first\t1\nsecond\t2\nthe third line has no tab\nfourth\t4\n")
    big = tmp_path / "big.tsv"
    big.write_text("small\tv\nhuge\t" + "x" * (2 * 1024 * 1024) + "\nafter\tw\n")
    (tmp_path / "c").mkdir()
    with LocalCluster(tmp_path / "c", nodes=3) as c:
        c.start_all()
        n1, n3 = c.addrs("n1", "n3")

        done = kv(n1, "load", str(data), "--json")
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)
        assert doc["keys"] == doc["written"] == 3000 and doc["failed"] == 0 and doc["stopped"] is None
        got = kv(n3, "get-many", "k00000", "k01500", "k02999")
        assert got.stdout.splitlines() == [f"k{i:05d}\tvalue {i}\twith a tab" for i in (0, 1500, 2999)]

        assert kv(n1, "load", str(jsonl), "--format", "jsonl").returncode == 0
        assert kv(n3, "get", "text").stdout == "caf\u00e9\n"
        fetched = kv(n3, "get", "blob", "--json")
        assert json.loads(fetched.stdout)["values"] == [blob.decode("utf-8", "backslashreplace")]

        piped = kv(n1, "load", "-", stdin="from-stdin\tyes\n")
        assert piped.returncode == 0 and "loaded 1 of 1 keys" in piped.stderr
        assert kv(n3, "get", "from-stdin").stdout == "yes\n"

        # Checked whole before the first write: the line is named and nothing was stored.
        refused = kv(n1, "load", str(bad))
        assert refused.returncode == 2
        assert refused.stderr.strip() == f"kv: {bad}:3: expected KEY<TAB>VALUE"
        assert kv(n3, "get", "first").returncode == 1

        # A value the nodes refuse fails alone; the rest are written. Exit 3, the key named.
        partly = kv(n1, "load", str(big))
        assert partly.returncode == 3
        assert "1 puts failed (first: huge: value is 2097152 bytes" in partly.stderr
        assert kv(n3, "get", "after").stdout == "w\n" and kv(n3, "get", "huge").returncode == 1

        # A second load of the same keys: blind puts stand beside what is there (siblings, as
        # DVV keeps concurrent writes); --replace reads first and supersedes it.
        again = tmp_path / "again.tsv"
        again.write_text("k00000\tsecond\nk00001\tsecond\nnew-key\tfresh\n")
        assert kv(n1, "load", str(again), "--replace").returncode == 0
        assert kv(n3, "get", "k00000").stdout == "second\n" and kv(n3, "get", "new-key").stdout == "fresh\n"
        assert kv(n1, "load", str(again)).returncode == 0
        both = kv(n3, "get", "k00001", "--json")
        assert sorted(json.loads(both.stdout)["values"]) == ["second", "second"], both.stdout
        assert kv(n1, "load", str(again), "--replace").returncode == 0
        assert json.loads(kv(n3, "get", "k00001", "--json").stdout)["values"] == ["second"]

        missing = kv(n1, "load", str(tmp_path / "nope.tsv"))
        assert missing.returncode == 2 and "nope.tsv" in missing.stderr
        c.stop("n1")
        c.stop("n2")
        c.stop("n3")
        down = kv(n1, "load", str(data), "--timeout", "1")
        assert down.returncode == 3
        assert "gave up after" in down.stderr and "cannot reach" in down.stderr, down.stderr
