"""Request parsing and the record bounds a write is judged by (kvstore.core.messages)."""

from __future__ import annotations

import pytest

from kvstore.core import messages as m
from kvstore.core import vclock
from kvstore.errors import TooLarge

LIMITS = m.Limits(64, 1024, 3, max_record_bytes=4096, max_siblings=5, warn_siblings=3)


def _blind(n: int, value: bytes = b"v") -> vclock.Obj:
    obj: vclock.Obj | None = None
    for i in range(n):
        obj = vclock.update(obj, {}, value, "a", i)
    assert obj is not None
    return obj


def _judge(obj: vclock.Obj, key: bytes = b"k") -> str | None:
    return m.check_record(key, obj, len(vclock.encode(obj)), LIMITS)


def test_small_records_pass_silently() -> None:
    assert _judge(_blind(2)) is None


def test_many_siblings_warn_then_are_refused() -> None:
    warning = _judge(_blind(3))
    assert warning is not None and "3 siblings" in warning and "5" in warning
    assert _judge(_blind(5)) is not None
    with pytest.raises(TooLarge) as ei:
        _judge(_blind(6), b"hot")
    e = ei.value
    assert e.code == "too_large"
    assert "b'hot'" in e.message and "6 siblings" in e.message and "limit of 5 (max_siblings)" in e.message
    assert "context" in e.message
    assert e.extra == {"siblings": 6, "limit": 5}


def test_large_records_are_refused_with_their_size() -> None:
    obj = _blind(4, b"x" * 1024)
    size = len(vclock.encode(obj))
    assert size > LIMITS.max_record_bytes
    with pytest.raises(TooLarge) as ei:
        _judge(obj)
    assert f"{size} bytes (4 siblings)" in ei.value.message and "limit of 4096 (max_record_bytes)" in ei.value.message


def test_a_write_with_context_resolves_a_key_at_its_bound() -> None:
    full = _blind(5)
    resolved = vclock.update(full, vclock.context_of(full), b"one", "a", 99)
    assert _judge(resolved) is None


def test_long_keys_are_shortened_in_the_message() -> None:
    with pytest.raises(TooLarge) as ei:
        _judge(_blind(6), b"k" * 10_000)
    assert len(ei.value.message) < 400


def test_data_model_options_round_trip_and_leave_plain_requests_plain() -> None:
    from kvstore.config import Settings
    from kvstore.core import messages as mm

    lim = Settings().limits
    plain = mm.parse_options({"w": 2, "timeout_ms": 100}, "w", lim)
    assert type(plain) is mm.Options
    assert mm.parse_options(None, "r", lim) == mm.Options()
    o = mm.DataOptions(2, False, None, "users", True, None, 1.5)
    wire = mm.options_to_wire(o, "w")
    assert wire == {"w": 2, "bucket": "users", "if_none_match": True, "ttl_ms": 1500}
    back = mm.parse_options(wire, "w", lim)
    assert back == o and isinstance(back, mm.DataOptions)
    assert mm.parse_options({"bucket": "default"}, "r", lim).bucket is None
    assert mm.parse_options({"ttl_ms": 0}, "w", lim).ttl_s == 0.0


@pytest.mark.parametrize(
    ("opts", "kind", "message"),
    [
        ({"ttl_ms": 5}, "r", "writes only"),
        ({"if_none_match": True}, "r", "writes only"),
        ({"if_none_match": 1}, "w", "true or false"),
        ({"if_none_match": True, "if_not_modified": b"x"}, "w", "cannot be combined"),
        ({"ttl_ms": -1}, "w", "ttl_ms must be in"),
        ({"bucket": 3}, "w", "must be a string"),
    ],
)
def test_bad_data_model_options(opts: dict[str, object], kind: str, message: str) -> None:
    from kvstore.config import Settings
    from kvstore.core import messages as mm
    from kvstore.errors import InvalidRequest as IR

    with pytest.raises(IR, match=message):
        mm.parse_options(opts, kind, Settings().limits)
