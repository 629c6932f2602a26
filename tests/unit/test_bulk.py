"""kvstore.bulk: the input lines of `kv load`, and put_all's give-up against a cluster it cannot
reach (a real socket on a port nobody listens on)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.bulk import BulkResult, parse_line, put_all
from kvstore.client import AsyncClient
from kvstore.errors import InvalidRequest


def test_tsv_lines() -> None:
    assert parse_line("tsv", "k\tv\n", "f:1") == (b"k", b"v")
    assert parse_line("tsv", "k\tv\twith\ttabs\r\n", "f:1") == (b"k", b"v\twith\ttabs")
    assert parse_line("tsv", "k\t\n", "f:1") == (b"k", b"")  # an empty value is a value
    assert parse_line("tsv", "caf\u00e9\t\u263a", "f:1") == ("caf\u00e9".encode(), "\u263a".encode())
    assert parse_line("tsv", "  \n", "f:1") is None
    for bad in ("no tab\n", "\tvalue-without-key\n"):
        with pytest.raises(InvalidRequest, match=r"^f:7: expected KEY<TAB>VALUE$"):
            parse_line("tsv", bad, "f:7")
    # Bytes that were not UTF-8 arrive as surrogates (surrogateescape): refused by line.
    with pytest.raises(InvalidRequest, match=r"^f:2: not UTF-8 text$"):
        parse_line("tsv", b"k\t\xff\n".decode("utf-8", "surrogateescape"), "f:2")


def test_jsonl_lines() -> None:
    assert parse_line("jsonl", '{"key": "a", "value": "b"}\n', "f:1") == (b"a", b"b")
    raw = bytes(range(256))
    b64 = base64.b64encode(raw).decode()
    assert parse_line("jsonl", json.dumps({"key": "a", "value_b64": b64}), "f:1") == (b"a", raw)
    cases = {
        "{not json": "not JSON",
        "[1, 2]": "expected",
        '{"key": "", "value": "x"}': "expected",
        '{"key": 5, "value": "x"}': "expected",
        '{"key": "a"}': 'one of "value"',
        '{"key": "a", "value": "x", "value_b64": "eA=="}': 'one of "value"',
        '{"key": "a", "value": 7}': 'one of "value"',
        '{"key": "a", "value_b64": "***"}': "not base64",
    }
    for line, why in cases.items():
        with pytest.raises(InvalidRequest, match=r"^f:3: ") as e:
            parse_line("jsonl", line, "f:3")
        assert why in str(e.value), (line, e.value)
    with pytest.raises(InvalidRequest, match="unknown input format"):
        parse_line("csv", "a,b", "f:1")


_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\t\n\r"), min_size=1)


@given(key=_text.filter(str.strip), value=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r")))
def test_tsv_round_trip(key: str, value: str) -> None:
    # What kv get-many prints for a text value, kv load reads back as the same bytes.
    assert parse_line("tsv", f"{key}\t{value}\n", "f:1") == (key.encode(), value.encode())


@given(key=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1), value=st.binary())
def test_jsonl_round_trip(key: str, value: bytes) -> None:
    line = json.dumps({"key": key, "value_b64": base64.b64encode(value).decode()})
    assert parse_line("jsonl", line, "f:1") == (key.encode(), value)


def _dead_addr() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nobody listens there now: every connect is refused
    return f"127.0.0.1:{port}"


@pytest.mark.parametrize("replace", [False, True])  # with replace, the reads fail first
def test_put_all_gives_up_on_a_cluster_it_cannot_reach(replace: bool) -> None:
    seen: list[tuple[int, int]] = []

    async def go() -> BulkResult:
        async with AsyncClient([_dead_addr()], timeout_s=1.0) as kv:
            items = ((b"k%06d" % i, b"v") for i in range(100_000))
            return await put_all(kv, items, concurrency=64, batch=16, give_up_after=100, replace=replace,
                                 on_progress=lambda w, f: seen.append((w, f)))

    res = asyncio.run(go())
    assert res.stopped == "failures"
    assert res.written == 0 and 100 <= res.failed < 1000  # the batches in flight fail too, no more
    assert "cannot reach" in (res.first_error or "") and "cannot reach" in (res.last_error or "")
    assert seen and seen[-1] == (0, res.failed)


def test_put_all_refuses_nonsense_settings() -> None:
    async def go() -> None:
        async with AsyncClient([_dead_addr()]) as kv:
            await put_all(kv, [], concurrency=0)

    with pytest.raises(InvalidRequest, match="at least 1"):
        asyncio.run(go())
